//! Loading and checking manifests, shared by `ofe validate`, `ofe run` and the operator: the
//! structural checks (`ofe_crds::validate`), each EventSource kind's own (`ofe_eventsource`),
//! the CEL conditions (`ofe_trigger`), and whether this build has each bus.

use std::path::PathBuf;

use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::manifest::{self, Manifest, Resource};

use crate::secrets::LocalSecrets;

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
/// `secrets`: for `ofe run`, where a `secretKeyRef` is read from the variables and files
/// [`LocalSecrets`] names, and is an error when neither has it; `ofe validate` (`None`) only
/// warns, since the manifests may be meant for the operator.
pub fn load_and_check(paths: &[PathBuf], secrets: Option<&LocalSecrets>) -> Checked {
    let mut set = manifest::load(paths);
    let mut diagnostics = set.diagnostics;
    let maps = set.config_maps;
    let lookup = |ns: &str, name: &str, key: &str| manifest::config_map_value(&maps, ns, name, key);
    for m in &mut set.manifests {
        diagnostics.extend(manifest::resolve_schema_refs(m, &lookup, secrets.is_some()));
    }
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
            Resource::EventSource(es) => {
                found.extend(ofe_eventsource::check(es));
                found.extend(ofe_trigger::check_sink("spec.sink", es.spec.sink.as_ref()));
            }
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
