//! The `deploy/` manifests are valid Kubernetes objects: each document reads as its typed
//! Kubernetes API object and writes back the same (so a misspelt or misplaced field, which the
//! API server would drop or refuse, fails here), the CRDs are the ones `ofe crds` generates,
//! the Deployment's arguments are ones `ofe` takes, and the example EventBus passes
//! `ofe validate`. This is the offline check; `tests/kube.rs` applies the same files to a real
//! kube-apiserver.

mod support;

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).expect("read");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `doc` read as `T` and written back is `doc` again.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, at: &str) {
    let typed: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{at}: {} does not fit its schema: {e}", e.path()));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(&back, doc, "{at}: a field is unknown, misplaced or of the wrong type");
}

#[test]
fn deploy_manifests_are_valid_kubernetes_objects() {
    let mut kinds = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .expect("deploy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in &files {
        for (i, doc) in documents(file).iter().enumerate() {
            let at = format!("{}:document {}", file.display(), i + 1);
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "Namespace" => round_trips::<Namespace>(doc, &at),
                "ServiceAccount" => round_trips::<ServiceAccount>(doc, &at),
                "ClusterRole" => round_trips::<ClusterRole>(doc, &at),
                "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(doc, &at),
                "Role" => round_trips::<Role>(doc, &at),
                "RoleBinding" => round_trips::<RoleBinding>(doc, &at),
                "Deployment" => round_trips::<Deployment>(doc, &at),
                "Service" => round_trips::<Service>(doc, &at),
                "CustomResourceDefinition" => round_trips::<CustomResourceDefinition>(doc, &at),
                other => panic!("{at}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for wanted in ["Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment", "Service"]
    {
        assert!(kinds.iter().any(|k| k == wanted), "deploy/ has a {wanted}");
    }
}

#[test]
fn deploy_crds_are_the_generated_ones() {
    let generated: Vec<Value> =
        serde_saphyr::from_multiple(&ofe_crds::crd::all_yaml().expect("CRDs")).expect("YAML");
    let generated: Vec<Value> = generated.into_iter().filter(|d| !d.is_null()).collect();
    assert_eq!(
        documents(&deploy().join("01-crds.yaml")),
        generated,
        "deploy/01-crds.yaml is stale: regenerate it with \
         `(echo '# ...'; ofe crds) > deploy/01-crds.yaml`"
    );
}

#[test]
fn the_deployment_runs_arguments_ofe_takes() {
    let docs = documents(&deploy().join("03-deployment.yaml"));
    let container = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    // Environment the Deployment sets must parse too: clap reads it for the flags.
    let mut command = support::ofe();
    for env in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (env["name"].as_str(), env["value"].as_str()) {
            command.env(name, value);
        }
    }
    let output = command.args(&args).arg("--help").output().expect("run ofe");
    assert!(
        output.status.success(),
        "`ofe {}` is refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_example_eventbus_passes_validation() {
    let output = support::ofe()
        .args(["validate", "-f"])
        .arg(deploy().join("examples"))
        .output()
        .expect("run ofe validate");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_keda_example_scales_on_the_lag_gauge() {
    let docs = documents(&deploy().join("keda/scaledobject.yaml"));
    assert_eq!(docs.len(), 1);
    let scaled = &docs[0];
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["kind"], "ScaledObject");
    assert!(scaled["spec"]["scaleTargetRef"]["name"].is_string());
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let metadata = &trigger["metadata"];
    // KEDA reads every metadata value as a string.
    for (name, value) in metadata.as_object().expect("metadata") {
        assert!(value.is_string(), "triggers[0].metadata.{name} must be a string for KEDA");
    }
    let query = metadata["query"].as_str().expect("query");
    // The gauge the Trigger runner samples (trigger/src/metrics.rs), with its labels.
    assert!(query.contains("ofe_trigger_bus_lag{"), "{query}");
    for label in ["namespace=", "trigger=", "subscriber="] {
        assert!(query.contains(label), "{query} selects by {label}");
    }
}
