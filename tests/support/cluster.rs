//! The real Kubernetes API server the operator's tests run against: kube-apiserver with etcd,
//! started on loopback by `scripts/services.sh`, which exports `OFE_TEST_KUBECONFIG` (a
//! cluster-admin kubeconfig), `OFE_TEST_KUBECTL` and `OFE_TEST_KUBE_AUDIT_LOG`.
//!
//! The test itself acts as cluster admin. `ofe operator` gets a kubeconfig with a token of the
//! ServiceAccount `ofe-system/ofe` that `deploy/02-rbac.yaml` binds, so the real server's RBAC
//! decides what it may do. The server's audit log records that account's every request; the
//! token's id tells one operator's requests from another test's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use serde_json::{Value, json};

/// One request the operator made, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The resource, with its subresource: `triggers/status`.
    pub resource: String,
    /// The namespace, `""` for a cluster-wide request.
    pub namespace: String,
}

/// The API server, as the test's cluster admin.
pub struct Cluster {
    client: kube::Client,
    kubeconfig: PathBuf,
    audit_log: PathBuf,
    /// The ids of the ServiceAccount tokens this test handed out.
    tokens: Mutex<Vec<String>>,
}

/// `kubectl` with the admin kubeconfig and `args`: whether it succeeded, and its output
/// (standard output, then standard error).
pub fn try_kubectl(args: &[&str]) -> (bool, String) {
    let kubectl = super::broker_var("OFE_TEST_KUBECTL");
    let kubeconfig = super::broker_var("OFE_TEST_KUBECONFIG");
    let out = std::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("OFE_TEST_KUBECTL={kubectl}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `kubectl` with the admin kubeconfig and `args`; panics with its output if it fails.
pub fn kubectl(args: &[&str]) -> String {
    let (ok, text) = try_kubectl(args);
    assert!(ok, "kubectl {args:?} failed:\n{text}");
    text
}

/// Installs what a cluster admin installs before the operator runs: `deploy/`'s namespace,
/// CRDs and RBAC, once per test process, and waits until the CRDs are served.
fn install_deploy() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let file = |name: &str| deploy.join(name).display().to_string();
        let (ns, crds, rbac) =
            (file("00-namespace.yaml"), file("01-crds.yaml"), file("02-rbac.yaml"));
        // Server-side apply: several test processes may install at once.
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &ns,
            "-f",
            &crds,
            "-f",
            &rbac,
        ]);
        kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &crds]);
    });
}

/// `group/version/plural` (or `version/plural` for the core group) as an API resource.
fn resource(collection: &str) -> ApiResource {
    let parts: Vec<&str> = collection.split('/').collect();
    let (group, version, plural) = match parts.as_slice() {
        [version, plural] => ("", *version, *plural),
        [group, version, plural] => (*group, *version, *plural),
        _ => panic!("not a collection: {collection}"),
    };
    // The kind only names objects in requests that carry a body; these never do.
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, ""), plural)
}

impl Cluster {
    /// Connects as cluster admin and installs `deploy/`'s CRDs and RBAC.
    pub async fn connect() -> Self {
        let kubeconfig = PathBuf::from(super::broker_var("OFE_TEST_KUBECONFIG"));
        let audit_log = PathBuf::from(super::broker_var("OFE_TEST_KUBE_AUDIT_LOG"));
        install_deploy();
        let config = kube::config::Kubeconfig::read_from(&kubeconfig)
            .unwrap_or_else(|e| panic!("OFE_TEST_KUBECONFIG={}: {e}", kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .expect("a client configuration from OFE_TEST_KUBECONFIG");
        let client = kube::Client::try_from(config).expect("a Kubernetes client");
        Self { client, kubeconfig, audit_log, tokens: Mutex::default() }
    }

    /// Installs a CRD of `tests/fixtures/kube/` (`file`) and waits until it is served.
    pub fn install(&self, file: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube").join(file);
        let path = path.display().to_string();
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path]);
        kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &path]);
    }

    /// A kubeconfig in `dir` for `ofe operator`: a fresh token of the ServiceAccount
    /// `ofe-system/ofe`, so the operator has exactly the rights `deploy/02-rbac.yaml` grants.
    pub async fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let accounts = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
            self.client.clone(),
            "ofe-system",
        );
        let request = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        }))
        .expect("a TokenRequest");
        let token = accounts
            .create_token_request("ofe", &Default::default(), &request)
            .await
            .expect("a token of ServiceAccount ofe-system/ofe")
            .status
            .and_then(|status| status.token)
            .expect("the token");
        // The token's id (`jti`) is what the audit log names as its credential.
        let claims = token.split('.').nth(1).expect("a JWT");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).expect("base64url"),
        )
        .expect("JSON claims");
        let jti = claims["jti"].as_str().expect("a token id").to_string();
        self.tokens.lock().expect("lock").push(jti);
        let admin: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&self.kubeconfig).expect("read"))
                .expect("the admin kubeconfig");
        let cluster = &admin["clusters"][0]["cluster"];
        let path = dir.join(format!("kubeconfig-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{ server: \"{}\", certificate-authority: \"{}\" }}\n\
                 users:\n- name: ofe\n  user: {{ token: \"{token}\" }}\ncontexts:\n- name: ofe\n  context: {{ cluster: test, user: ofe }}\ncurrent-context: ofe\n",
                cluster["server"].as_str().expect("server"),
                cluster["certificate-authority"].as_str().expect("CA file"),
            ),
        )
        .expect("write the kubeconfig");
        path
    }

    /// Creates or updates every document of `yaml` (server-side apply, as `kubectl apply
    /// --server-side` does), creating the namespaces they name first.
    pub async fn apply_yaml(&self, yaml: &str) {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("YAML");
        for doc in docs.into_iter().filter(|d| d.is_object()) {
            self.apply(doc).await;
        }
    }

    /// Creates or updates `object`.
    pub async fn apply(&self, object: Value) {
        let (api_version, kind) = (
            object["apiVersion"].as_str().expect("apiVersion"),
            object["kind"].as_str().expect("kind"),
        );
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the server does not serve {api_version} {kind}: {e}"));
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
            Scope::Namespaced => {
                let ns = object["metadata"]["namespace"].as_str().unwrap_or("default");
                self.namespace(ns).await;
                Api::namespaced_with(self.client.clone(), ns, &resource)
            }
        };
        api.patch(&name, &PatchParams::apply("ofe-test").force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }

    /// Creates namespace `ns` unless it exists.
    async fn namespace(&self, ns: &str) {
        let api = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone());
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        api.patch(ns, &PatchParams::apply("ofe-test"), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
    }

    /// Deletes an object; whether it existed.
    pub async fn delete(&self, collection: &str, namespace: &str, name: &str) -> bool {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource(collection));
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => false,
            Err(e) => panic!("delete {collection} {namespace}/{name}: {e}"),
        }
    }

    /// The stored object, if any.
    pub async fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource(collection));
        let object = api
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get {collection} {namespace}/{name}: {e}"))?;
        Some(serde_json::to_value(object).expect("JSON"))
    }

    /// Every object of a collection, in every namespace.
    pub async fn list(&self, collection: &str) -> Vec<Value> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource(collection));
        let list = api
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list {collection}: {e}"));
        list.items.into_iter().map(|o| serde_json::to_value(o).expect("JSON")).collect()
    }

    /// Every resource request the operators of this test made (by their tokens), from the
    /// server's audit log. Panics naming any request RBAC refused.
    pub async fn requests(&self) -> BTreeSet<ApiCall> {
        // The log backend writes each event as it completes; give the last ones a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tokens: Vec<String> =
            self.tokens.lock().expect("lock").iter().map(|t| format!("JTI={t}")).collect();
        let log = std::fs::read_to_string(&self.audit_log).unwrap_or_else(|e| {
            panic!("OFE_TEST_KUBE_AUDIT_LOG={}: {e}", self.audit_log.display())
        });
        let mut calls = BTreeSet::new();
        for line in log.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
            let credential = &event["user"]["extra"]["authentication.kubernetes.io/credential-id"];
            let ours = credential
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| tokens.iter().any(|t| id == t.as_str())));
            // Requests without an object (discovery, /version) are not RBAC rules' business.
            let object = &event["objectRef"];
            if !ours || object.is_null() {
                continue;
            }
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let mut resource = text(&object["resource"]);
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let call = ApiCall {
                verb: text(&event["verb"]),
                group: text(&object["apiGroup"]),
                resource,
                namespace: text(&object["namespace"]),
            };
            assert_ne!(
                event["responseStatus"]["code"], 403,
                "the API server refused the operator {call:?}: deploy/02-rbac.yaml lacks a rule"
            );
            calls.insert(call);
        }
        calls
    }
}
