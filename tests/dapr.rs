//! The async half of OpenFunction's "sync function → async function" chain: a Trigger
//! subscriber's `topic` reaches an app through Dapr, as OpenFunction's async functions (Dapr
//! apps) receive events. daprd 1.16, built from source (`OFE_TEST_DAPRD`), runs in
//! self-hosted mode with a `pubsub.jetstream` component on the NATS that ofe's bus uses
//! (`topicMode: structured`), and a declarative subscription to the topic's subject.
//! The apps: a plain Dapr app (HTTP), which sees every attribute, extension and the data the
//! webhook was sent; and an OpenFunction async function on functions-framework-go's Async
//! runtime (gRPC), which sees what its Dapr TopicEvent carries.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{KillOnDrop, Receiver, free_addr, manifests, terminate, wait_ready};

/// `ofe run` in namespace `ns`: a webhook, and a Trigger publishing each event to topic
/// `alerts` on a JetStream bus at `nats` with `topicMode: structured`. Returns the process, the
/// webhook's URL, and the topic's subject (what a Dapr app subscribes to).
async fn ofe_publishing_to_a_topic(
    ns: &str,
    nats: &str,
    dir: &Path,
) -> (KillOnDrop, String, String) {
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: gateway, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    telemetry: {{ path: /telemetry }}\n"
    ) + &support::trigger(
        ns,
        "route",
        "    telemetry: { eventSource: gateway, event: telemetry }",
        "  - condition: telemetry\n    topic: alerts",
    ) + &format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {ns} }}\n\
         spec:\n  jetstream:\n    url: \"{nats}\"\n    topicMode: structured\n"
    );
    let (listen, hooks) = (free_addr(), free_addr());
    let ofe = KillOnDrop(support::start_ofe_with_webhooks(
        &manifests(dir, &yaml),
        &dir.join("data"),
        listen,
        hooks,
    ));
    wait_ready(listen).await;
    (ofe, format!("http://{hooks}/telemetry"), format!("ofe.topic.{ns}.alerts"))
}

/// daprd for app `app_id` on `app_port` (`protocol` http or grpc), with a `pubsub.jetstream`
/// component `ofe` on `nats`, and `subscription` (YAML, or empty for an app that subscribes
/// itself) in its resources; its gRPC port is `grpc_port`, its log `log`.
fn daprd(
    dir: &Path,
    nats: &str,
    (app_id, app_port, protocol): (&str, &str, &str),
    subscription: &str,
    grpc_port: &str,
    log: &Path,
) -> KillOnDrop {
    let resources = dir.join(format!("dapr-{app_id}"));
    std::fs::create_dir(&resources).expect("mkdir");
    std::fs::write(
        resources.join("pubsub.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{ name: ofe }}\n\
             spec:\n  type: pubsub.jetstream\n  version: v1\n  metadata:\n\
             \x20 - {{ name: natsURL, value: \"{nats}\" }}\n\
             \x20 - {{ name: durableName, value: \"dapr-{app_id}-{}\" }}\n",
            // A durable of its own: a durable named by an earlier run filters another subject.
            uuid::Uuid::new_v4().simple()
        ),
    )
    .expect("write the component");
    if !subscription.is_empty() {
        std::fs::write(resources.join("subscription.yaml"), subscription).expect("write");
    }
    let port = || ofe_testkit::free_port().to_string();
    KillOnDrop(
        Command::new(support::broker_var("OFE_TEST_DAPRD"))
            .args(["--app-id", app_id, "--app-port", app_port, "--app-protocol", protocol])
            .arg("--resources-path")
            .arg(&resources)
            .args(["--dapr-http-port", &port(), "--dapr-grpc-port", grpc_port])
            .args(["--dapr-internal-grpc-port", &port(), "--metrics-port", &port()])
            .args(["--placement-host-address", "", "--scheduler-host-address", ""])
            .args(["--log-level", "info"])
            .stdout(std::fs::File::create(log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start daprd"),
    )
}

/// POSTs one binary-mode CloudEvent with an extension and JSON data to the webhook `url`.
async fn send_overspeed(url: &str, id: &str) {
    let sent = support::http()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/fleet/vehicle-42")
        .header("ce-type", "com.example.overspeed")
        .header("ce-subject", "trip-7")
        .header("ce-vehicleid", "42")
        .header("content-type", "application/json")
        .body(r#"{"kmh":131}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(sent.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_daprd, ofe_test_nats)),
    ignore = "needs OFE_TEST_DAPRD, OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn a_topic_reaches_a_dapr_app_with_every_attribute() {
    let nats = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut ofe, webhook, topic) = ofe_publishing_to_a_topic(&ns, &nats, dir.path()).await;
    // The app: Dapr calls it with each event of its declarative subscription.
    let (app, base) = Receiver::start().await;
    let app_port = base.rsplit(':').next().expect("a port").to_string();
    let subscription = format!(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{ name: alerts }}\n\
         spec:\n  pubsubname: ofe\n  topic: {topic}\n  routes: {{ default: /alerts }}\n"
    );
    let log = dir.path().join("daprd.log");
    let grpc = ofe_testkit::free_port().to_string();
    let _dapr =
        daprd(dir.path(), &nats, ("alerts-app", &app_port, "http"), &subscription, &grpc, &log);
    send_overspeed(&webhook, "overspeed-0001").await;
    let start = std::time::Instant::now();
    while app.on("/alerts").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing reached the app through Dapr; daprd's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivery = &app.on("/alerts")[0];
    let event: Value =
        serde_json::from_slice(&delivery.body).expect("Dapr posts a JSON CloudEvent");
    assert_eq!(event["id"], "overspeed-0001", "{event}");
    assert_eq!(event["source"], "/fleet/vehicle-42");
    assert_eq!(event["type"], "com.example.overspeed");
    assert_eq!(event["subject"], "trip-7");
    assert_eq!(event["vehicleid"], "42");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["kmh"], 131);
    println!("the Dapr app received: {event}");
    assert!(terminate(&mut ofe.0).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_daprd, ofe_test_nats, ofe_test_go_peers)),
    ignore = "needs OFE_TEST_DAPRD, OFE_TEST_NATS, OFE_TEST_GO_PEERS (scripts/test.sh starts the services)"
)]
async fn a_topic_reaches_an_openfunction_async_function() {
    let nats = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut ofe, webhook, topic) = ofe_publishing_to_a_topic(&ns, &nats, dir.path()).await;
    // daprd first: the function connects to it as a Dapr client when it starts.
    let app_port = ofe_testkit::free_port().to_string();
    let grpc = ofe_testkit::free_port().to_string();
    let log = dir.path().join("daprd.log");
    let _dapr = daprd(dir.path(), &nats, ("alerts-fn", &app_port, "grpc"), "", &grpc, &log);
    // What OpenFunction sets in an async function's pod: its input is the topic, through the
    // pub/sub component `ofe`.
    let context = serde_json::json!({
        "name": "alerts-fn", "version": "v1", "port": app_port, "runtime": "Async",
        "inputs": {"alerts": {"uri": topic, "componentName": "ofe", "componentType": "pubsub.jetstream"}},
        "outputs": {},
    });
    let record = dir.path().join("function.jsonl");
    let peers = std::path::PathBuf::from(support::broker_var("OFE_TEST_GO_PEERS"));
    let _function = KillOnDrop(
        Command::new(peers.join("of-function"))
            .env("FUNC_CONTEXT", context.to_string())
            .env("POD_NAME", "alerts-fn-0")
            .env("POD_NAMESPACE", "default")
            .env("DAPR_GRPC_PORT", &grpc)
            .env("OFE_RECORD", &record)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the async function"),
    );
    // Dapr subscribes once it has asked the app for its subscriptions; events sent before
    // wait in the stream, since the component's consumer starts at its beginning.
    send_overspeed(&webhook, "overspeed-0002").await;
    let start = std::time::Instant::now();
    let event: Value = loop {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str(line).expect("JSON");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing reached the async function; daprd's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The framework hands a function Dapr's TopicEvent: the attributes it has fields for. (The
    // Dapr Go SDK 1.5 gRPC service that functions-framework-go v0.5.0 builds on leaves its
    // `subject` empty, and a TopicEvent has no extensions: the HTTP app above sees both.)
    assert_eq!(event["id"], "overspeed-0002", "{event}");
    assert_eq!(event["source"], "/fleet/vehicle-42");
    assert_eq!(event["type"], "com.example.overspeed");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["kmh"], 131);
    assert_eq!(event["topic"], topic.as_str());
    println!("the async function received: {event}");
    assert!(terminate(&mut ofe.0).success());
}
