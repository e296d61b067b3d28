//! Loading and checking manifests, shared by `ofe validate` and `ofe run`.

use std::path::PathBuf;
use std::process::ExitCode;

use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::manifest::{self, Manifest, Resource};

/// Every resource found, and every problem with them.
pub struct Checked {
    /// Resources that parsed.
    pub manifests: Vec<Manifest>,
    /// Problems, errors and warnings, each naming file, document and field.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads `paths` and runs every check: structure, CEL conditions, cron schedules, and
/// references between resources.
/// `standalone`: for `ofe run`, which has no Kubernetes Secrets to read, so a `secretKeyRef`
/// is an error; `ofe validate` only warns, since the manifests may be meant for the operator.
pub fn load_and_check(paths: &[PathBuf], standalone: bool) -> Checked {
    let set = manifest::load(paths);
    let mut diagnostics = set.diagnostics;
    diagnostics.extend(check_manifests(&set.manifests));
    for m in &set.manifests {
        let value = m.resource.to_value().unwrap_or_default();
        for r in ofe_crds::validate::secret_refs(&value["spec"]) {
            let path = format!("{}.secretKeyRef.{}", r.object, r.field);
            let d = if standalone {
                Diagnostic::error(
                    path,
                    format!(
                        "reads the Kubernetes Secret `{}`, which only `ofe operator` can; \
                         set `{}` itself to run standalone",
                        r.name, r.field
                    ),
                )
            } else {
                Diagnostic::warning(
                    path,
                    format!("read from the Kubernetes Secret `{}` by `ofe operator`", r.name),
                )
            };
            diagnostics.push(d.at(&m.origin));
        }
    }
    Checked { manifests: set.manifests, diagnostics }
}

/// Every check of parsed resources, each finding attributed to its resource's origin; the
/// operator runs exactly these on what the API server holds.
pub fn check_manifests(manifests: &[Manifest]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for m in manifests {
        let mut found = ofe_crds::validate::check_resource(&m.resource);
        match &m.resource {
            Resource::Trigger(t) => found.extend(ofe_trigger::check(t)),
            Resource::EventSource(es) => {
                // Making the sources repeats some manifest checks; say each field once.
                let extra: Vec<_> = ofe_eventsource::check(es)
                    .into_iter()
                    .filter(|d| found.iter().all(|f| f.path != d.path))
                    .collect();
                found.extend(extra);
            }
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => {}
        }
        diagnostics.extend(found.into_iter().map(|d| d.at(&m.origin)));
    }
    diagnostics.extend(ofe_crds::validate::check_set(manifests));
    diagnostics
}

/// Prints diagnostics, errors first.
pub fn report(diagnostics: &[Diagnostic]) {
    for d in diagnostics.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    for d in diagnostics.iter().filter(|d| !d.is_error()) {
        eprintln!("{d}");
    }
}

/// `ofe validate`: prints every problem; exit status 1 on any error.
pub fn validate_command(paths: &[PathBuf]) -> ExitCode {
    let checked = load_and_check(paths, false);
    report(&checked.diagnostics);
    let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = checked.diagnostics.len() - errors;
    println!(
        "{} resources checked: {errors} error{}, {warnings} warning{}",
        checked.manifests.len(),
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
