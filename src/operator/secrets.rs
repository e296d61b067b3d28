//! `secretKeyRef`: credential fields read from Kubernetes Secrets.
//!
//! Before each reconcile, every `secretKeyRef` entry of every resource is replaced by the value
//! it names: a field that takes a value (a password, a token, PEM text) gets the value; a field
//! that takes a file path (`caFile`, `certFile`, `keyFile`, `credentialsFile`) gets the path of
//! a file under the data directory that holds it, named after a hash of the value, so that a
//! changed Secret changes the resource and the parts using it restart with the new value.
//! Secrets are read on every reconcile (at least every `--resync`), not watched: watching every
//! Secret of the cluster would need `list`/`watch` on all of them. Values never reach logs or
//! status; a failure names the Secret and key, never the value.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use ofe_crds::validate::secret_refs;

use super::reconcile::Snapshot;

/// A Secret's value by namespace, name and key, or why there is none.
type Values = ofe_runtime::SecretValues;

/// Replaces the `secretKeyRef`s of `snapshot`'s resources by their values, writing files under
/// `files`; records per resource that uses Secrets whether they all resolved.
pub async fn resolve(client: &Client, snapshot: &mut Snapshot, files: &Path) {
    let mut values: Values = HashMap::new();
    let mut secrets: HashMap<(String, String), Result<Secret, String>> = HashMap::new();
    let mut resolved = Vec::with_capacity(snapshot.resources.len());
    for resource in std::mem::take(&mut snapshot.resources) {
        let Ok(mut value) = resource.to_value() else {
            resolved.push(resource);
            continue;
        };
        let refs = secret_refs(&value["spec"]);
        if refs.is_empty() {
            resolved.push(resource);
            continue;
        }
        let own = resource.namespace().unwrap_or_default().to_string();
        for r in &refs {
            let namespace = r.namespace.clone().unwrap_or_else(|| own.clone());
            let id = (namespace.clone(), r.name.clone());
            if !secrets.contains_key(&id) {
                let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let got = match api.get_opt(&r.name).await {
                    Ok(Some(secret)) => Ok(secret),
                    Ok(None) => Err(format!(
                        "Secret {namespace}/{} does not exist; create it, or correct `name`",
                        r.name
                    )),
                    Err(e) => Err(format!("cannot read Secret {namespace}/{}: {e}", r.name)),
                };
                secrets.insert(id.clone(), got);
            }
            let value = match &secrets[&id] {
                Err(e) => Err(e.clone()),
                Ok(secret) => match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
                    None => Err(format!(
                        "Secret {namespace}/{} has no key `{}`; add it, or correct `key`",
                        r.name, r.key
                    )),
                    Some(bytes) => String::from_utf8(bytes.0.clone()).map_err(|_| {
                        format!("the key `{}` of Secret {namespace}/{} is not text", r.key, r.name)
                    }),
                },
            };
            values.insert((namespace, r.name.clone(), r.key.clone()), value);
        }
        let key = resource.key();
        let dir = files.join(format!("{}-{}-{}", key.kind, key.namespace, key.name));
        let errors: Vec<String> = ofe_runtime::fill_secrets(&mut value, &own, &values, &dir)
            .into_iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect();
        let outcome = if errors.is_empty() {
            match resource.same_kind_from(value) {
                Ok(filled) => {
                    resolved.push(filled);
                    Ok(())
                }
                Err(e) => {
                    resolved.push(resource);
                    Err(format!("after reading the Secrets: {e}"))
                }
            }
        } else {
            resolved.push(resource);
            Err(errors.join("; "))
        };
        snapshot.secrets.insert(key, outcome);
    }
    snapshot.resources = resolved;
}
