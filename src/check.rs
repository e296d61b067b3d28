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

/// Where `ofe run` finds the values `secretKeyRef`s name, having no Kubernetes Secrets: the
/// variable `OFE_SECRET_<NAME>_<KEY>` (the Secret's name and key in upper case, every other
/// character `_`), else the file `<dir>/<name>/<key>` (the layout of mounted Secrets).
pub struct LocalSecrets {
    /// `--secrets-dir`, if given.
    pub dir: Option<PathBuf>,
    /// Where values of fields that take a file path (`caFile`, …) are written.
    pub files: PathBuf,
}

impl LocalSecrets {
    /// The variable that holds key `key` of Secret `name`.
    pub fn variable(name: &str, key: &str) -> String {
        let upper = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                .collect()
        };
        format!("OFE_SECRET_{}_{}", upper(name), upper(key))
    }

    /// The value of key `key` of Secret `name`, or where to put it. A file's trailing line
    /// break is not part of the value (`echo secret > file` adds one).
    fn read(&self, name: &str, key: &str, field: &str) -> Result<String, String> {
        let variable = Self::variable(name, key);
        if let Ok(value) = std::env::var(&variable) {
            return Ok(value);
        }
        let file = self.dir.as_ref().map(|dir| dir.join(name).join(key));
        if let Some(file) = &file {
            match std::fs::read_to_string(file) {
                Ok(value) => return Ok(value.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "reads key `{key}` of Secret `{name}` from {}, which cannot be read \
                         ({e}); make it readable by ofe, or set {variable}",
                        file.display()
                    ));
                }
            }
        }
        let file = match &file {
            Some(file) => format!("write it to {}", file.display()),
            None => format!("write it to <dir>/{name}/{key} and pass --secrets-dir <dir>"),
        };
        Err(format!(
            "reads key `{key}` of Secret `{name}`, which `ofe run` looks for in the variable \
             {variable} and in files: set the variable, {file}, or set `{field}` itself"
        ))
    }

    /// Sets the fields `m`'s `secretKeyRef`s name; what cannot be set, as diagnostics.
    fn resolve(&self, m: &mut Manifest) -> Vec<Diagnostic> {
        let Ok(mut value) = m.resource.to_value() else { return Vec::new() };
        let refs = ofe_crds::validate::secret_refs(&value["spec"]);
        if refs.is_empty() {
            return Vec::new();
        }
        let own =
            m.resource.namespace().unwrap_or(ofe_crds::manifest::DEFAULT_NAMESPACE).to_string();
        let mut values = std::collections::HashMap::new();
        let mut out = Vec::new();
        for r in refs {
            match self.read(&r.name, &r.key, &r.field) {
                Ok(v) => {
                    let ns = r.namespace.clone().unwrap_or_else(|| own.clone());
                    values.insert((ns, r.name.clone(), r.key.clone()), Ok(v));
                }
                Err(e) => {
                    let path = format!("{}.secretKeyRef.{}", r.object, r.field);
                    out.push(Diagnostic::error(path, e).at(&m.origin));
                }
            }
        }
        if !out.is_empty() {
            return out;
        }
        let r = &m.resource;
        let dir = self.files.join(format!("{}-{own}-{}", r.kind(), r.name()));
        let errors = crate::operator::secrets::fill(&mut value, &own, &values, &dir);
        out.extend(errors.into_iter().map(|e| Diagnostic::error("spec", e).at(&m.origin)));
        match m.resource.same_kind_from(value) {
            Ok(resource) if out.is_empty() => m.resource = resource,
            Ok(_) => {}
            Err(e) => out.push(Diagnostic::error("spec", e.to_string()).at(&m.origin)),
        }
        out
    }
}

/// Loads `paths` and runs every check: structure, CEL conditions, cron schedules, and
/// references between resources.
/// `secrets`: for `ofe run`, where a `secretKeyRef` is read from the variables and files
/// [`LocalSecrets`] names, and is an error when neither has it; `ofe validate` (`None`) only
/// warns, since the manifests may be meant for the operator.
pub fn load_and_check(paths: &[PathBuf], secrets: Option<&LocalSecrets>) -> Checked {
    let mut set = manifest::load(paths);
    let mut diagnostics = set.diagnostics;
    match secrets {
        Some(secrets) => {
            for m in &mut set.manifests {
                diagnostics.extend(secrets.resolve(m));
            }
        }
        None => {
            for m in &set.manifests {
                let value = m.resource.to_value().unwrap_or_default();
                for r in ofe_crds::validate::secret_refs(&value["spec"]) {
                    let path = format!("{}.secretKeyRef.{}", r.object, r.field);
                    let message = format!(
                        "read from the Kubernetes Secret `{}` by `ofe operator`, and by `ofe run` \
                         from the variable {} or the file <--secrets-dir>/{}/{}",
                        r.name,
                        LocalSecrets::variable(&r.name, &r.key),
                        r.name,
                        r.key
                    );
                    diagnostics.push(Diagnostic::warning(path, message).at(&m.origin));
                }
            }
        }
    }
    diagnostics.extend(check_manifests(&set.manifests));
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
            // Each kind's fields are checked in its folder, once.
            Resource::EventSource(es) => found.extend(ofe_eventsource::check(es)),
            Resource::EventBus(b) => found.extend(bus_check(&b.spec)),
            Resource::ClusterEventBus(b) => found.extend(bus_check(&b.spec.0)),
        }
        diagnostics.extend(found.into_iter().map(|d| d.at(&m.origin)));
    }
    diagnostics.extend(ofe_crds::validate::check_set(manifests));
    diagnostics
}

/// Whether this build has the backend an EventBus asks for.
fn bus_check(spec: &ofe_crds::EventBusSpec) -> Option<Diagnostic> {
    match ofe_eventbus::open::check(spec)? {
        ofe_eventbus::OpenError::Invalid { path, message } => {
            Some(Diagnostic::error(path, message))
        }
        other => Some(Diagnostic::error("spec", other.to_string())),
    }
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
    let checked = load_and_check(paths, None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_secrets_come_from_the_variable_then_the_file_and_say_where_to_put_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("kafka")).expect("mkdir");
        std::fs::write(dir.path().join("kafka").join("password"), "from-file\r\n").expect("write");
        // A key that is a folder cannot be read: the error says so, not "write it there".
        std::fs::create_dir_all(dir.path().join("kafka").join("odd")).expect("mkdir");
        let secrets = LocalSecrets { dir: Some(dir.path().into()), files: dir.path().join("f") };
        assert_eq!(
            LocalSecrets::variable("kafka-credentials", "tls.key"),
            "OFE_SECRET_KAFKA_CREDENTIALS_TLS_KEY"
        );
        assert_eq!(secrets.read("kafka", "password", "saslPassword"), Ok("from-file".into()));
        let missing = secrets.read("kafka", "user", "saslUsername").expect_err("missing");
        assert!(
            missing.contains("OFE_SECRET_KAFKA_USER")
                && missing.contains(&dir.path().join("kafka/user").display().to_string())
                && missing.contains("set `saslUsername` itself"),
            "{missing}"
        );
        let unreadable = secrets.read("kafka", "odd", "saslPassword").expect_err("a folder");
        assert!(unreadable.contains("cannot be read"), "{unreadable}");
        let without_dir = LocalSecrets { dir: None, files: dir.path().join("f") };
        let hint = without_dir.read("kafka", "password", "saslPassword").expect_err("no dir");
        assert!(hint.contains("--secrets-dir"), "{hint}");
    }
}
