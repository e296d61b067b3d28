//! `ofe validate` and `ofe crds`, run as a user would.

mod support;

use std::path::PathBuf;

use support::ofe;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Each sample is a standalone manifest (two of them reuse the name `my-eventsource`), so each
/// file is validated on its own.
#[test]
fn validate_accepts_every_openfunction_sample_unchanged() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("tests/fixtures/openfunction"))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 7);
    for file in files {
        let out = ofe().args(["validate", "-f"]).arg(&file).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} failed:\n{stderr}\n{stdout}", file.display());
        assert!(stdout.contains("0 errors"), "{stdout}");
        if file.ends_with("eventbus-natsstreaming.yaml") {
            assert!(stderr.contains("warning: NATS Streaming is end-of-life"), "{stderr}");
        }
    }
}

#[test]
fn validate_accepts_every_example() {
    for example in [
        "examples/cron-to-function",
        "examples/webhook-to-function",
        "examples/vehicle-telemetry/manifests.yaml",
        "examples/chain/manifests.yaml",
        "examples/amqp-to-function/manifests.yaml",
    ] {
        let out = ofe().args(["validate", "-f"]).arg(repo(example)).output().expect("run");
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn broken_condition_is_rejected_with_file_path_and_column() {
    let file = repo("tests/fixtures/broken/trigger.yaml");
    let out = ofe().args(["validate", "-f"]).arg(&file).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "a broken condition must exit 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want =
        format!("{}:document 2: spec.subscribers[1].condition: does not compile", file.display());
    assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    assert!(stderr.contains("(column 9)"), "{stderr}");
    assert!(
        stderr.contains("\n    tick && && tick\n            ^"),
        "caret must point at column 9:\n{stderr}"
    );
}

#[test]
fn validate_reports_each_kind_of_mistake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = r#"
apiVersion: events.openfunction.io/v1alpha1
kind: EventSource
metadata: { name: nowhere }
spec:
  cron:
    tick: { schedule: "every five seconds" }
  mqtt:
    cars: { url: "http://broker", topic: cars }
    trucks: { url: "ssl://broker", topic: trucks, caCert: /nonexistent/ca.pem }
  kafka:
    orders: { brokers: "127.0.0.1:9092", authRequired: false }
---
apiVersion: events.openfunction.io/v1alpha1
kind: Trigger
metadata: { name: t }
spec:
  eventBus: default
  inputs:
    event-a: { eventSource: missing, event: e }
  subscribers:
  - condition: event_b
    sink: {}
---
apiVersion: events.openfunction.io/v1alpha1
kind: Trigger
metadata: { name: t2 }
spec:
  eventBus: default
  correlationKey: "data.id +"
  inputs:
    a: { eventSource: missing, event: e }
  subscribers:
  - condition: a
    sink: { ref: { apiVersion: core.openfunction.io/v1beta2, kind: Function, name: f } }
    delivery:
      retry: -1
      backoffPolicy: quadratic
      backoffDelay: soon
      orderKey: "data.("
      maxConcurrency: 0
---
apiVersion: events.openfunction.io/v1alpha1
kind: EventBus
metadata: { name: fast }
spec:
  memory: { maxBytes: 1000, maxAge: soon }
---
apiVersion: events.openfunction.io/v1alpha1
kind: Trigger
metadata: { name: t3 }
spec:
  eventBus: default
  inputs:
    a: { eventSource: missing, event: e }
  subscribers:
  - condition: a
    sink: { uri: "http://exa mple.com/x" }
  - condition: a
    sink: { uri: "ftp://files.example.com/x" }
"#;
    let path = support::manifests(dir.path(), yaml).join("all.yaml");
    let out = ofe().args(["validate", "-f"]).arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    assert_eq!(
        stderr.matches("spec.kafka.orders.topic").count(),
        1,
        "a field the manifest check and the source both reject is reported once:\n{stderr}"
    );
    for want in [
        format!("{p}:document 1: spec: neither eventBus nor sink is set"),
        format!("{p}:document 1: spec.cron.tick.schedule:"),
        format!(
            "{p}:document 1: spec.mqtt.cars.url: has the scheme `http://`, which is not MQTT's; use tcp://"
        ),
        format!(
            "{p}:document 1: spec.mqtt.trucks.caCert: is neither PEM text nor a readable PEM file"
        ),
        format!("{p}:document 1: spec.kafka.orders.topic: is required; name the topic to consume"),
        format!("{p}:document 2: spec.inputs.event-a: `event-a` is not a valid CEL identifier"),
        format!("{p}:document 2: spec.subscribers[0].sink: neither uri nor ref is set"),
        format!("{p}:document 2: spec.subscribers[0].condition: `event_b` is not an input"),
        format!("{p}:document 2: spec.inputs.event-a: warning: no EventSource `default/missing`"),
        format!("{p}:document 3: spec.correlationKey: does not compile"),
        format!("{p}:document 3: spec.subscribers[0].delivery.retry: is -1; use 0 or more"),
        format!("{p}:document 3: spec.subscribers[0].delivery.backoffPolicy: is `quadratic`"),
        format!("{p}:document 3: spec.subscribers[0].delivery.backoffDelay: `soon`"),
        format!("{p}:document 3: spec.subscribers[0].delivery.orderKey: does not compile"),
        format!("{p}:document 3: spec.subscribers[0].delivery.maxConcurrency: is 0"),
        format!(
            "{p}:document 3: spec.subscribers[0].sink.ref: warning: Function `f` is resolved in \
             Kubernetes mode; standalone, `ofe run` needs --ref-url-template"
        ),
        format!("{p}:document 4: spec.memory.maxAge:"),
        format!("{p}:document 4: spec.memory.maxBytes: must be at least 1048576 (1 MiB)"),
        format!(
            "{p}:document 5: spec.subscribers[0].sink.uri: `http://exa mple.com/x` is not a \
             valid URL (invalid international domain name); write the full URL"
        ),
        format!(
            "{p}:document 5: spec.subscribers[1].sink.uri: `ftp://files.example.com/x` is not \
             an absolute http:// or https:// URL; write the full URL"
        ),
    ] {
        assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    }
}

#[test]
fn crds_prints_the_committed_files() {
    let out = ofe().arg("crds").output().expect("run");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf8");
    let mut committed = String::new();
    for file in [
        "events.openfunction.io_eventsources.yaml",
        "events.openfunction.io_eventbus.yaml",
        "events.openfunction.io_clustereventbus.yaml",
        "events.openfunction.io_triggers.yaml",
    ] {
        committed.push_str("---\n");
        committed
            .push_str(&std::fs::read_to_string(repo("crds/generated").join(file)).expect("read"));
    }
    assert_eq!(printed, committed, "`ofe crds` must print exactly the committed CRDs");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&printed).expect("valid YAML");
    assert_eq!(docs.len(), 4);
    assert!(
        docs.iter().all(|d| d["apiVersion"] == "apiextensions.k8s.io/v1"
            && d["kind"] == "CustomResourceDefinition")
    );
}

/// What `ofe run` cannot start in standalone mode is refused with the file, document, field
/// path and fix, and a non-zero exit.
#[test]
fn run_refusals_name_file_document_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: { name: t }\nspec:\n  eventBus: default\n  \
             inputs: { a: { eventSource: s, event: e } }\n  subscribers:\n  - condition: a\n    \
             sink: { ref: { apiVersion: core.openfunction.io/v1beta1, kind: Function, name: f } }\n",
            "document 1: spec.subscribers[0].sink.ref: Function `f` can only be resolved in Kubernetes mode; use `uri`",
        ),
        (
            "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: { name: logs }\nspec:\n  eventBus: default\n  \
             redis: { orders: { redisHost: \"127.0.0.1:9\", redisPassword: \"\" } }\n",
            "document 1: EventSource `logs`: spec.redis.orders: set exactly one of `stream: <name>`",
        ),
    ];
    for (i, (yaml, want)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, yaml).expect("write");
        let out = ofe()
            .args(["run", "-f"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join(format!("data{i}")))
            .args(["--listen", &support::free_addr().to_string(), "--log-level", "error"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ofe run must refuse case {i}");
        let want = format!("{}:{want}", file.display());
        assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    }
}

/// A `secretKeyRef` is read by `ofe operator`; `ofe validate` says so, and `ofe run`, which has
/// no Secrets to read, refuses it and names the field to set instead.
#[test]
fn secret_key_refs_are_for_the_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("signed.yaml");
    std::fs::write(
        &file,
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: { name: signed }\nspec:\n  eventBus: default\n  webhook:\n    hook:\n      \
         hmac: { secretKeyRef: { secret: { name: hook, key: key } } }\n",
    )
    .expect("write");
    let out = ofe().args(["validate", "-f"]).arg(&file).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("spec.webhook.hook.hmac.secretKeyRef.secret")
            && stderr.contains("ofe operator"),
        "{stderr}"
    );
    let out = ofe()
        .args(["run", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ofe run refuses a secretKeyRef");
    assert!(
        stderr.contains("spec.webhook.hook.hmac.secretKeyRef.secret")
            && stderr.contains("set `secret` itself"),
        "{stderr}"
    );

    // A field that takes no credential cannot be read from a Secret.
    std::fs::write(
        &file,
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: { name: signed }\nspec:\n  eventBus: default\n  webhook:\n    hook:\n      \
         secretKeyRef: { path: { name: hook, key: key } }\n",
    )
    .expect("write");
    let out = ofe().args(["validate", "-f"]).arg(&file).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`path` is not a credential field"), "{stderr}");
}

/// A Trigger may read another namespace's EventSource or topic only when that namespace
/// shares it (`allowedNamespaces`); otherwise `ofe validate` (and so `ofe run` and the
/// operator) refuses it, naming the field and the fix.
#[test]
fn inputs_from_another_namespace_need_its_leave() {
    let source = |allowed: &str| {
        format!(
            "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
             metadata: {{ name: fleet, namespace: vehicles }}\n\
             spec:\n  eventBus: default\n  cron:\n    tick: {{ schedule: \"@every 1s\" }}\n{allowed}"
        )
    };
    let writer = |allowed: &str| {
        format!(
            "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
             metadata: {{ name: publish, namespace: vehicles }}\n\
             spec:\n  eventBus: default\n  inputs:\n    t: {{ eventSource: fleet, event: tick }}\n\
             \x20 subscribers:\n  - condition: t\n    topic: positions\n{allowed}"
        )
    };
    let reader = "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: { name: spy, namespace: billing }\n\
         spec:\n  eventBus: default\n  inputs:\n\
         \x20   ticks: { namespace: vehicles, eventSource: fleet, event: tick }\n\
         \x20   places: { namespace: vehicles, topic: positions }\n\
         \x20 subscribers:\n  - condition: ticks || places\n    sink: { uri: \"http://127.0.0.1:9/\" }\n";
    let validate = |yaml: String| {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("all.yaml");
        std::fs::write(&file, yaml).expect("write");
        let out = ofe().args(["validate", "-f"]).arg(&file).output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (code, stderr) = validate(source("") + &writer("") + reader);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "spec.inputs.ticks.namespace: reads EventSource `vehicles/fleet`, which does not \
             share its events with namespace `billing`; add `billing` to its spec.allowedNamespaces"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "spec.inputs.places.namespace: reads topic `positions` of namespace `vehicles`, and \
             no Trigger publishing it there shares it with namespace `billing`"
        ),
        "{stderr}"
    );

    let shared = "  allowedNamespaces: [billing]\n";
    let (code, stderr) =
        validate(source(shared) + &writer("  allowedNamespaces: [\"*\"]\n") + reader);
    assert_eq!(code, Some(0), "{stderr}");

    // An EventSource that is not there cannot have given its leave.
    let (code, stderr) = validate(writer(shared) + reader);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("which is not among these resources"), "{stderr}");
}
