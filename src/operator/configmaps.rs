//! `schema.configMapKeyRef`: the JSON Schema of an EventSource event, read from a ConfigMap.
//!
//! Before each reconcile, every such reference is replaced by the schema it names (the key's
//! value, JSON or YAML), as `secretKeyRef`s are by their values. ConfigMaps are read one by one
//! (`get`), on every reconcile, not watched. One that is missing, lacks the key, or holds no
//! JSON or YAML leaves the reference in place: the EventSource is then invalid, its status
//! says which ConfigMap, and the log says why.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use ofe_crds::diagnostic::Location;
use ofe_crds::manifest::{Manifest, Resource, resolve_schema_refs};

use super::reconcile::Snapshot;

/// Replaces the `schema.configMapKeyRef`s of `snapshot`'s EventSources by their schemas.
pub async fn resolve(client: &Client, snapshot: &mut Snapshot) {
    let mut fetched: HashMap<(String, String), Result<ConfigMap, String>> = HashMap::new();
    for resource in &mut snapshot.resources {
        let Resource::EventSource(_) = resource else { continue };
        let Ok(value) = resource.to_value() else { continue };
        let names = referenced(&value["spec"]);
        if names.is_empty() {
            continue;
        }
        let namespace = resource.namespace().unwrap_or_default().to_string();
        for name in names {
            let id = (namespace.clone(), name.clone());
            if fetched.contains_key(&id) {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let got = match api.get_opt(&name).await {
                Ok(Some(map)) => Ok(map),
                Ok(None) => Err(format!(
                    "ConfigMap {namespace}/{name} does not exist; create it, or correct `name`"
                )),
                Err(e) => Err(format!("cannot read ConfigMap {namespace}/{name}: {e}")),
            };
            fetched.insert(id, got);
        }
        let lookup = |ns: &str, name: &str, key: &str| -> Result<String, String> {
            let map = fetched
                .get(&(ns.to_string(), name.to_string()))
                .cloned()
                .unwrap_or_else(|| Err(format!("ConfigMap {ns}/{name} was not read")))?;
            map.data.and_then(|d| d.get(key).cloned()).ok_or_else(|| {
                format!(
                    "ConfigMap {ns}/{name} has no key `{key}` in its data; add it, or correct `key`"
                )
            })
        };
        let mut manifest = Manifest {
            origin: Location { file: "cluster".into(), document: 0 },
            resource: resource.clone(),
        };
        let problems = resolve_schema_refs(&mut manifest, &lookup, true);
        if problems.is_empty() {
            *resource = manifest.resource;
        } else {
            for problem in problems {
                tracing::warn!(eventsource = %resource.key().name, field = %problem.path, reason = %problem.message, "cannot read a schema's ConfigMap");
            }
        }
    }
}

/// The ConfigMaps `schema.configMapKeyRef`s under `spec` name.
fn referenced(spec: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut spec = spec.clone();
    ofe_crds::manifest::each_object(&mut spec, "spec", &mut |map, path| {
        if path.ends_with(".schema")
            && let Some(name) =
                map.get("configMapKeyRef").and_then(|r| r.get("name")).and_then(|n| n.as_str())
        {
            out.push(name.to_string());
        }
    });
    out
}
