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
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use ofe_crds::validate::{SECRET_FILE_FIELDS, secret_refs};
use serde_json::Value;

use super::reconcile::{Snapshot, key_of};

/// A Secret's value by namespace, name and key, or why there is none.
type Values = HashMap<(String, String, String), Result<String, String>>;

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
        let key = key_of(&resource);
        let dir = files.join(format!("{}-{}-{}", key.kind, key.namespace, key.name));
        let errors = fill(&mut value, &own, &values, &dir);
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

/// Sets every field a `secretKeyRef` under `value["spec"]` names from `values`, and removes
/// the `secretKeyRef`s; returns what could not be set, each naming its field.
pub fn fill(value: &mut Value, namespace: &str, values: &Values, dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(spec) = value.get_mut("spec") else { return errors };
    super::reconcile::each_object(spec, "spec", &mut |map, path| {
        let Some(Value::Object(refs)) = map.remove("secretKeyRef") else { return };
        for (field, selector) in refs {
            let text = |k: &str| selector.get(k).and_then(Value::as_str).unwrap_or_default();
            let ns = selector.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
            let id = (ns.to_string(), text("name").to_string(), text("key").to_string());
            let found = values.get(&id).cloned().unwrap_or_else(|| Err("not read".into()));
            let set = found.and_then(|v| {
                if SECRET_FILE_FIELDS.contains(&field.as_str()) {
                    write_file(dir, &format!("{path}.{field}"), &v)
                        .map(|p| Value::String(p.display().to_string()))
                } else {
                    Ok(Value::String(v))
                }
            });
            match set {
                Ok(v) => {
                    map.insert(field, v);
                }
                Err(e) => errors.push(format!("{path}.secretKeyRef.{field}: {e}")),
            }
        }
    });
    errors
}

/// Writes `content` to a file for the field at `path`, named after a hash of the content (a
/// changed value is a new path); readable by this process only.
fn write_file(dir: &Path, path: &str, content: &str) -> Result<PathBuf, String> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut hasher);
    let name: String =
        path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let file = dir.join(format!("{name}-{:016x}", hasher.finish()));
    if file.exists() {
        return Ok(file);
    }
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&file)?, content.as_bytes())
    };
    write().map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(file)
}

/// The values of a test, as `resolve` would have read them.
#[cfg(test)]
pub fn values(entries: &[(&str, &str, &str, Result<&str, &str>)]) -> Values {
    entries
        .iter()
        .map(|(ns, name, key, v)| {
            (
                (ns.to_string(), name.to_string(), key.to_string()),
                v.map(str::to_string).map_err(str::to_string),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_take_the_secret_values_and_files_hold_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bus = json!({"spec": {"jetstream": {
            "url": "nats://nats:4222",
            "auth": {"user": "ofe", "secretKeyRef": {"password": {"name": "nats", "key": "password"}}},
            "tls": {"secretKeyRef": {"caFile": {"name": "nats-tls", "key": "ca.crt", "namespace": "certs"}}},
        }}});
        let values = values(&[
            ("ns", "nats", "password", Ok("s3cret")),
            ("certs", "nats-tls", "ca.crt", Ok("-----BEGIN CERTIFICATE-----")),
        ]);
        assert!(fill(&mut bus, "ns", &values, dir.path()).is_empty());
        assert_eq!(bus["spec"]["jetstream"]["auth"], json!({"user": "ofe", "password": "s3cret"}));
        let ca = bus["spec"]["jetstream"]["tls"]["caFile"].as_str().expect("a path");
        assert_eq!(std::fs::read_to_string(ca).expect("file"), "-----BEGIN CERTIFICATE-----");
        assert!(bus["spec"]["jetstream"]["tls"].get("secretKeyRef").is_none());
    }

    #[test]
    fn a_missing_secret_is_named_without_any_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = json!({"spec": {"kafka": {"orders": {
            "brokers": "k:9092", "authRequired": true, "saslUsername": "ofe",
            "secretKeyRef": {"saslPassword": {"name": "kafka", "key": "password"}},
        }}}});
        let why = "Secret ns/kafka does not exist; create it, or correct `name`";
        let values = values(&[("ns", "kafka", "password", Err(why))]);
        let errors = fill(&mut source, "ns", &values, dir.path());
        assert_eq!(errors, [format!("spec.kafka.orders.secretKeyRef.saslPassword: {why}")]);
    }
}
