//! `deploy/` and the CRDs against a real kube-apiserver (`OFE_TEST_KUBECONFIG`, started by
//! `scripts/services.sh`), through kubectl as a user types it: `kubectl apply -f deploy/` works,
//! the CRDs' validation rules compile within the server's CEL cost budget, they admit every
//! example and OpenFunction sample, and they refuse broken resources with the rule's message.

mod support;

use std::path::{Path, PathBuf};

use support::cluster::{kubectl, try_kubectl};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
#[cfg_attr(
    not(ofe_test_kubeconfig),
    ignore = "needs OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
fn kubectl_apply_deploy_succeeds() {
    let deploy = root().join("deploy");
    let out = kubectl(&["apply", "-f", &deploy.display().to_string()]);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/triggers.events.openfunction.io",
        "customresourcedefinition.apiextensions.k8s.io/eventsources.events.openfunction.io",
        "clusterrole.rbac.authorization.k8s.io/ofe",
        "deployment.apps/ofe",
        "service/ofe",
    ] {
        assert!(out.contains(object), "{object} was not applied:\n{out}");
    }
    let crds = deploy.join("01-crds.yaml").display().to_string();
    kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &crds]);
    // The ServiceAccount may do what the operator does, and no more than that.
    let as_ofe = "--as=system:serviceaccount:ofe-system:ofe";
    for (verb, resource, expected) in [
        ("watch", "triggers.events.openfunction.io", "yes"),
        ("patch", "triggers.events.openfunction.io --subresource=status", "yes"),
        ("update", "leases.coordination.k8s.io -n ofe-system", "yes"),
        ("update", "triggers.events.openfunction.io", "no"),
        ("list", "secrets", "no"),
    ] {
        let mut args = vec!["auth", "can-i", as_ofe, verb];
        args.extend(resource.split(' '));
        let (_, answer) = try_kubectl(&args);
        assert_eq!(answer.trim(), expected, "can ofe {verb} {resource}?");
    }
}

/// Every manifest document of `file`, each written to a file of its own in `dir`.
fn documents(file: &Path, dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(file).expect("read");
    text.split("\n---")
        .filter(|d| d.contains("kind:"))
        .enumerate()
        .map(|(i, doc)| {
            let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("doc");
            let path = dir.join(format!("{name}-{i}.yaml"));
            std::fs::write(&path, doc).expect("write");
            path
        })
        .collect()
}

/// What `kubectl apply --dry-run=server` says of `file`, in its own namespace or else in `ns`:
/// the server runs every validation, the CRDs' CEL rules among them, and stores nothing.
fn dry_run(file: &Path, ns: &str) -> (bool, String) {
    let doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(file).expect("read")).expect("YAML");
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or(ns);
    try_kubectl(&["apply", "--dry-run=server", "-n", ns, "-f", &file.display().to_string()])
}

/// Installs the CRDs and creates namespace `ns`.
fn prepare(ns: &str) {
    let crds = root().join("deploy/01-crds.yaml").display().to_string();
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crds]);
    kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &crds]);
    let (_, _) = try_kubectl(&["create", "namespace", ns]);
}

#[test]
#[cfg_attr(
    not(ofe_test_kubeconfig),
    ignore = "needs OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
fn the_api_server_admits_every_example_and_openfunction_sample() {
    let ns = support::unique_namespace();
    prepare(&ns);
    // Examples that name their own namespace.
    for named in ["shop", "telemetry"] {
        let (_, _) = try_kubectl(&["create", "namespace", named]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files: Vec<PathBuf> = [
        "tests/fixtures/openfunction",
        "examples/cron-to-function",
        "examples/buses",
        "deploy/examples",
    ]
    .iter()
    .flat_map(|d| std::fs::read_dir(root().join(d)).expect("dir").map(|e| e.expect("entry").path()))
    .chain(
        [
            "examples/vehicle-telemetry/manifests.yaml",
            "examples/chain/manifests.yaml",
            "examples/webhook-to-function/manifests.yaml",
            "examples/amqp-to-function/manifests.yaml",
        ]
        .map(|f| root().join(f)),
    )
    .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    .collect();
    files.sort();
    let mut checked = 0;
    for file in files {
        for doc in documents(&file, dir.path()) {
            let (admitted, out) = dry_run(&doc, &ns);
            assert!(admitted, "{} was refused:\n{out}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} documents checked");
}

#[test]
#[cfg_attr(
    not(ofe_test_kubeconfig),
    ignore = "needs OFE_TEST_KUBECONFIG (scripts/test.sh starts the services)"
)]
fn the_api_server_refuses_broken_resources_with_the_rules_message() {
    let ns = support::unique_namespace();
    prepare(&ns);
    let head = "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: { name: t }\nspec:\n  eventBus: default\n";
    let cases = [
        (
            format!("{head}  inputs: {{ a: {{ topic: x, eventSource: s }} }}\n  subscribers: [ {{ condition: a, topic: out }} ]\n"),
            "an input reads either a topic, or an eventSource and its event",
        ),
        (
            format!("{head}  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a }} ]\n"),
            "a subscriber needs a sink, a topic, or both",
        ),
        (
            format!("{head}  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a, sink: {{}} }} ]\n"),
            "set uri, ref to a Knative Service or an OpenFunction Function, or a broker",
        ),
        (
            format!("{head}  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a, topic: o, delivery: {{ retry: -1 }} }} ]\n"),
            "retry must be 0 or more",
        ),
        (
            format!("{head}  inputs: {{ a: {{ eventSource: s, event: e }} }}\n  subscribers: [ {{ condition: a, topic: o, delivery: {{ backoffPolicy: quadratic }} }} ]\n"),
            "Unsupported value: \"quadratic\"",
        ),
        (
            format!("{head}  inputs: {{}}\n  subscribers: []\n"),
            "inputs is empty",
        ),
        (
            "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: { name: s }\nspec:\n  cron: { tick: { schedule: '@every 1s' } }\n".to_string(),
            "set eventBus to publish to a bus, sink to call a function, or both",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (yaml, message)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("broken-{i}.yaml"));
        std::fs::write(&file, yaml).expect("write");
        let (admitted, out) = dry_run(&file, &ns);
        assert!(!admitted, "admitted:\n{yaml}");
        assert!(out.contains(message), "want `{message}` in the refusal:\n{out}");
    }
}
