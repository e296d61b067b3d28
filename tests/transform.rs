//! Subscriber transforms against `ofe run`, on the embedded bus, JetStream and Kafka:
//! telemetry posted to a webhook reaches the function reshaped (`{vehicle, kmh, at}`, a new
//! `type` and `subject`, an extension removed), a transform on a topic sink reshapes what the
//! next Trigger reads, and an event the transform cannot evaluate goes to the dead letter
//! with the reason and never to the function. `OFE_TEST_NATS` and `OFE_TEST_KAFKA` name the
//! brokers; unset, those tests skip and say so.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Receiver, Running, manifests, trigger};

/// Posts telemetry event `id` with JSON `data` to the fleet's webhook.
async fn post(webhooks: SocketAddr, ns: &str, id: &str, data: serde_json::Value) {
    let url = format!("http://{webhooks}/{ns}/fleet/telemetry");
    let headers = [
        ("ce-id", id),
        ("ce-source", "/cars"),
        ("ce-type", "com.example.telemetry"),
        ("ce-time", "2026-12-03T10:00:00Z"),
        ("ce-trace", "t-1"),
    ];
    support::post_event(&url, &headers, data.to_string()).await;
}

/// The fleet's webhook; Trigger `alerts` sends overspeed telemetry reshaped to `/alert`;
/// Trigger `shape` puts every event, reshaped, on topic `shaped`, which Trigger `feed`
/// delivers to `/feed`.
fn pipeline(ns: &str, base: &str, bus: &str) -> String {
    let transform = "    transform:\n      \
         data: '{\"vehicle\": data.vehicleId, \"kmh\": data.speed, \"at\": time}'\n      \
         attributes:\n        \
           type: \"'com.example.overspeed'\"\n        \
           subject: data.vehicleId\n        \
           trace: \"\"";
    support::webhook_source(ns, "fleet", "telemetry")
        + &trigger(
            ns,
            "alerts",
            "    fast:\n      eventSource: fleet\n      event: telemetry\n      \
         filters: [ { cel: \"data.speed > 120.0\" } ]",
            &format!(
                "  - condition: fast\n    sink: {{ uri: \"{base}/flaky\" }}\n    \
             delivery: {{ retry: 0 }}\n{transform}"
            ),
        )
        + &trigger(
            ns,
            "shape",
            "    all: { eventSource: fleet, event: telemetry }",
            "  - condition: all\n    topic: shaped\n    transform:\n      \
         data: '{\"vehicle\": data.vehicleId}'\n      \
         attributes: { type: \"'com.example.shaped'\" }",
        )
        + &trigger(
            ns,
            "feed",
            "    shaped: { topic: shaped }",
            &format!("  - condition: shaped\n    sink: {{ uri: \"{base}/feed\" }}"),
        )
        + bus
}

async fn transforms(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &pipeline(&ns, &base, &bus(&ns)));
    let run = Running::start(&folder, &dir.path().join("data")).await;

    post(run.webhooks, &ns, "t-1", serde_json::json!({"vehicleId": "v-7", "speed": 131.5})).await;
    // Fast, but without the field the transform reads: it cannot be built.
    post(run.webhooks, &ns, "t-2", serde_json::json!({"speed": 150})).await;
    post(run.webhooks, &ns, "t-3", serde_json::json!({"vehicleId": "v-8", "speed": 90})).await;
    receiver
        .wait_for(Duration::from_secs(30), "the alert and the fed events", |r| {
            !r.on("/flaky").is_empty() && r.on("/feed").len() >= 2
        })
        .await;

    let alerts = receiver.on("/flaky");
    assert_eq!(alerts.len(), 1, "only t-1 is fast and can be reshaped");
    let alert = &alerts[0];
    let body: serde_json::Value = serde_json::from_slice(&alert.body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"vehicle": "v-7", "kmh": 131.5, "at": "2026-12-03T10:00:00+00:00"})
    );
    assert_eq!(alert.header("ce-id"), "t-1");
    assert_eq!(alert.header("ce-type"), "com.example.overspeed");
    assert_eq!(alert.header("ce-subject"), "v-7");
    assert_eq!(alert.header("content-type"), "application/json");
    assert_eq!(alert.header("ce-trace"), "", "the empty expression removed the extension");

    // The topic sink's transform shaped what the next Trigger read; t-2, which it could not
    // shape, went to that subscriber's dead letter instead.
    let mut fed: Vec<(String, String, String)> = receiver
        .on("/feed")
        .iter()
        .map(|r| {
            (r.header("ce-id"), r.header("ce-type"), String::from_utf8_lossy(&r.body).into_owned())
        })
        .collect();
    fed.sort();
    assert_eq!(
        fed,
        [
            ("t-1".into(), "com.example.shaped".into(), r#"{"vehicle":"v-7"}"#.into()),
            ("t-3".into(), "com.example.shaped".into(), r#"{"vehicle":"v-8"}"#.into()),
        ]
    );

    // The event it could not build waits in the dead-letter store, as it came, with why.
    let listed =
        support::tool(run.listen, &["deadletters", "list", "-n", &ns, "--trigger", "alerts"]);
    assert!(listed.contains("id=t-2"), "{listed}");
    assert!(listed.contains("transform.data:"), "the reason names the field: {listed}");
    let shown = support::tool(
        run.listen,
        &["deadletters", "show", "-n", &ns, "--trigger", "alerts", "--id", "t-2"],
    );
    assert!(shown.contains("\"speed\": 150"), "the original data is kept: {shown}");

    // A letter the sink refused holds the event as it came; a redrive transforms it again.
    receiver.set_flaky(true);
    post(run.webhooks, &ns, "t-4", serde_json::json!({"vehicleId": "v-9", "speed": 140})).await;
    let letters =
        || support::tool(run.listen, &["deadletters", "list", "-n", &ns, "--trigger", "alerts"]);
    for _ in 0..100 {
        if letters().contains("id=t-4") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = support::tool(
        run.listen,
        &["deadletters", "show", "-n", &ns, "--trigger", "alerts", "--id", "t-4"],
    );
    assert!(shown.contains("com.example.telemetry"), "kept as it came: {shown}");
    receiver.set_flaky(false);
    support::tool(
        run.listen,
        &["deadletters", "redrive", "-n", &ns, "--trigger", "alerts", "--id", "t-4"],
    );
    let redriven: Vec<_> =
        receiver.on("/flaky").into_iter().filter(|r| r.header("ce-id") == "t-4").collect();
    let last = redriven.last().expect("redriven to the sink");
    assert_eq!(last.header("ce-type"), "com.example.overspeed");
    let body: serde_json::Value = serde_json::from_slice(&last.body).expect("JSON body");
    assert_eq!(body["vehicle"], "v-9", "{body}");
}

on_every_bus!(transforms:
    transforms_on_the_embedded_bus,
    transforms_on_jetstream,
    transforms_on_kafka
);
