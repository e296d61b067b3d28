//! `secretKeyRef`: credential fields whose values come from elsewhere. The operator reads
//! Kubernetes Secrets; `ofe run` reads variables and files ([`LocalSecrets`]). Either way
//! [`fill`] puts the values in place: a field that takes a value (a password, a token, PEM
//! text) gets the value; a field that takes a file path (`caFile`, `certFile`, `keyFile`,
//! `credentialsFile`) gets the path of a file holding it. Values never reach logs or status; a
//! failure names the Secret and key, never the value.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::manifest::Manifest;
use ofe_crds::validate::SECRET_FILE_FIELDS;
use serde_json::Value;

/// A Secret's value by namespace, name and key, or why there is none.
pub type SecretValues = HashMap<(String, String, String), Result<String, String>>;

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
    pub(crate) fn resolve(&self, m: &mut Manifest) -> Vec<Diagnostic> {
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
        let errors = fill(&mut value, &own, &values, &dir);
        out.extend(errors.into_iter().map(|d| d.at(&m.origin)));
        match m.resource.same_kind_from(value) {
            Ok(resource) if out.is_empty() => m.resource = resource,
            Ok(_) => {}
            Err(e) => out.push(Diagnostic::error("spec", e.to_string()).at(&m.origin)),
        }
        out
    }
}

/// Sets every field a `secretKeyRef` under `value["spec"]` names from `values`, and removes
/// the `secretKeyRef`s; returns what could not be set, each at its field path. A field that
/// takes a file path gets a file under `dir` holding the value (named after a hash of the value, so a changed value restarts what uses it).
pub fn fill(
    value: &mut Value,
    namespace: &str,
    values: &SecretValues,
    dir: &Path,
) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let Some(spec) = value.get_mut("spec") else { return errors };
    ofe_crds::manifest::each_object(spec, "spec", &mut |map, path| {
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
                Err(e) => errors.push(Diagnostic::error(format!("{path}.secretKeyRef.{field}"), e)),
            }
        }
    });
    errors
}

/// Writes `content` to a file for the field at `path`, named after a hash of the content (a
/// changed value is a new path, so what uses it restarts); readable by this process only.
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
fn values(entries: &[(&str, &str, &str, Result<&str, &str>)]) -> SecretValues {
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
        assert_eq!(errors, [Diagnostic::error("spec.kafka.orders.secretKeyRef.saslPassword", why)]);
    }

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
