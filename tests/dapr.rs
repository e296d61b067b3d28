//! The async half of OpenFunction's "sync function → async function" chain: a Trigger
//! subscriber's `topic` reaches an app through Dapr, as OpenFunction's async functions (Dapr
//! apps) receive events. daprd 1.16, built from source (`OFE_TEST_DAPRD`), runs in
//! self-hosted mode with a `pubsub.jetstream` component on the NATS that ofe's bus uses
//! (`topicMode: structured`), and a declarative subscription to the topic's subject.
//! Every attribute, extension and the data the webhook was sent reach the app.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{KillOnDrop, Receiver, free_addr, manifests, terminate, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_daprd, ofe_test_nats)),
    ignore = "needs OFE_TEST_DAPRD, OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn a_topic_reaches_an_async_function_through_dapr() {
    let daprd = support::broker_var("OFE_TEST_DAPRD");
    let nats = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");

    // ofe: a webhook, and a Trigger publishing each event to topic `alerts`.
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: gateway, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    telemetry: {{ path: /telemetry }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    telemetry: { eventSource: gateway, event: telemetry }",
        "  - condition: telemetry\n    topic: alerts",
    ) + &format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {ns} }}\n\
         spec:\n  jetstream:\n    url: \"{nats}\"\n    topicMode: structured\n"
    );
    let (listen, hooks) = (free_addr(), free_addr());
    let mut ofe = KillOnDrop(support::start_ofe_with_webhooks(
        &manifests(dir.path(), &yaml),
        &dir.path().join("data"),
        listen,
        hooks,
    ));
    wait_ready(listen).await;

    // The async function: an app that Dapr calls with each event of its subscription.
    let (app, base) = Receiver::start().await;
    let app_port = base.rsplit(':').next().expect("a port").to_string();
    let resources = dir.path().join("dapr");
    std::fs::create_dir(&resources).expect("mkdir");
    let topic = format!("ofe.topic.{ns}.alerts");
    std::fs::write(
        resources.join("pubsub.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{ name: ofe }}\n\
             spec:\n  type: pubsub.jetstream\n  version: v1\n  metadata:\n\
             \x20 - {{ name: natsURL, value: \"{nats}\" }}\n\
             \x20 - {{ name: durableName, value: \"dapr-{ns}\" }}\n"
        ),
    )
    .expect("write the component");
    std::fs::write(
        resources.join("subscription.yaml"),
        format!(
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{ name: alerts }}\n\
             spec:\n  pubsubname: ofe\n  topic: {topic}\n  routes: {{ default: /alerts }}\n"
        ),
    )
    .expect("write the subscription");
    let port = || ofe_eventbus::testing::free_port().to_string();
    let log = dir.path().join("daprd.log");
    let _dapr = KillOnDrop(
        Command::new(&daprd)
            .args(["--app-id", "alerts-fn", "--app-port", &app_port, "--app-protocol", "http"])
            .arg("--resources-path")
            .arg(&resources)
            .args(["--dapr-http-port", &port(), "--dapr-grpc-port", &port()])
            .args(["--dapr-internal-grpc-port", &port(), "--metrics-port", &port()])
            .args(["--placement-host-address", "", "--scheduler-host-address", ""])
            .args(["--log-level", "info"])
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start daprd"),
    );

    // An event in, as a sync function's caller would send it.
    let sent = support::http()
        .post(format!("http://{hooks}/telemetry"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "overspeed-0001")
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
    let daprd_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = std::time::Instant::now();
    while app.on("/alerts").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing reached the app through Dapr; daprd's log:\n{}",
            daprd_log()
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
