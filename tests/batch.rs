//! Batch delivery (`delivery.batch`), against `ofe run` on every bus and a real HTTP server:
//! events reach the sink as CloudEvents JSON batches (`application/cloudevents-batch+json`)
//! of at most `maxSize`, the last one sent after `maxWait`; a failing batch is retried whole
//! (the same body and `Idempotency-Key`), then each of its events goes to the dead letter
//! with the reason. `ofe validate` refuses what a batch cannot do.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Receiver, Running, manifests};

const EVENTS: usize = 25;

fn pipeline(ns: &str, base: &str, bus: &str) -> String {
    let batch = "batch: { maxSize: 10, maxWait: 1s }";
    support::webhook_source(ns, "fleet", "telemetry")
        + &support::trigger(
            ns,
            "batched",
            "    all: { eventSource: fleet, event: telemetry }",
            &format!(
                "  - condition: all\n    sink: {{ uri: \"{base}/fn\", headers: {{ X-Fleet: north }} }}\n    \
                 delivery: {{ {batch} }}\n\
                 \x20 - condition: all\n    sink: {{ uri: \"{base}/fail\" }}\n    \
                 deadLetterSink: {{ uri: \"{base}/dlq\" }}\n    \
                 delivery: {{ retry: 1, backoffPolicy: linear, backoffDelay: PT0.05S, {batch} }}"
            ),
        )
        + bus
}

/// The events of one batch request: (id, data).
fn batch_of(body: &[u8]) -> Vec<(String, serde_json::Value)> {
    let events: Vec<serde_json::Value> = serde_json::from_slice(body).expect("a JSON array");
    events
        .into_iter()
        .map(|e| {
            assert_eq!(e["specversion"], "1.0", "{e}");
            assert_eq!(e["type"], "com.example.telemetry", "{e}");
            (e["id"].as_str().expect("id").to_string(), e["data"].clone())
        })
        .collect()
}

async fn batches(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &pipeline(&ns, &base, &bus(&ns)));
    let run = Running::start(&folder, &dir.path().join("data")).await;
    let url = format!("http://{}/{ns}/fleet/telemetry", run.webhooks);
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("e-{i}")).collect();
    futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let headers =
            [("ce-id", id.as_str()), ("ce-source", "/cars"), ("ce-type", "com.example.telemetry")];
        let url = url.clone();
        async move { support::post_event(&url, &headers, format!(r#"{{"n":{i}}}"#)).await }
    }))
    .await;

    let count =
        |path: &str| -> usize { receiver.on(path).iter().map(|r| batch_of(&r.body).len()).sum() };
    receiver
        .wait_for(Duration::from_secs(30), "every event in batches", |_| count("/fn") == EVENTS)
        .await;
    let requests = receiver.on("/fn");
    let mut seen = BTreeMap::new();
    for request in &requests {
        assert_eq!(request.header("content-type"), "application/cloudevents-batch+json");
        assert_eq!(request.header("x-fleet"), "north", "the sink's headers go with a batch");
        let events = batch_of(&request.body);
        assert!(events.len() <= 10, "a batch holds at most maxSize: {}", events.len());
        for (id, data) in events {
            let n: usize = id.trim_start_matches("e-").parse().expect("id");
            assert_eq!(data, serde_json::json!({"n": n}), "the data as JSON");
            assert!(seen.insert(id, ()).is_none(), "each event once");
        }
    }
    assert_eq!(seen.len(), EVENTS);
    assert!(
        requests.len() < EVENTS && requests.len() >= EVENTS.div_ceil(10),
        "{} requests for {EVENTS} events in batches of 10",
        requests.len()
    );

    // The failing sink: each batch twice (the attempt and one retry, whole), then each event
    // dead-lettered on its own, with the reason.
    receiver
        .wait_for(Duration::from_secs(30), "every event dead-lettered", |r| {
            r.on("/dlq").len() == EVENTS
        })
        .await;
    let failed = receiver.on("/fail");
    assert_eq!(count("/fail"), 2 * EVENTS, "every batch attempted twice");
    let mut attempts: BTreeMap<String, Vec<&axum::body::Bytes>> = BTreeMap::new();
    for request in &failed {
        attempts.entry(request.header("idempotency-key")).or_default().push(&request.body);
    }
    for (key, bodies) in &attempts {
        assert!(!key.is_empty(), "a batch carries an Idempotency-Key");
        assert_eq!(bodies.len(), 2, "the retry resends the batch: {key}");
        assert_eq!(bodies[0], bodies[1], "the same batch, whole");
    }
    let dead = receiver.on("/dlq");
    let mut dead_ids: Vec<String> = dead.iter().map(|r| r.header("ce-id")).collect();
    dead_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(dead_ids, expected, "each event of each batch, once");
    for letter in &dead {
        assert_eq!(letter.header("ce-ofeerrorcode"), "500");
        assert_eq!(letter.header("ce-ofeerrorattempts"), "2");
        assert_eq!(letter.header("ce-ofeerrordest"), format!("{base}/fail"));
    }
}

on_every_bus!(batches: batches_on_embedded, batches_on_jetstream, batches_on_kafka);

#[test]
fn validate_refuses_what_a_batch_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::webhook_source("default", "fleet", "telemetry")
        + &support::trigger(
            "default",
            "bad",
            "    all: { eventSource: fleet, event: telemetry }",
            "  - condition: all\n    sink: { uri: \"http://fn/{data.id}\" }\n    \
             delivery: { batch: { maxSize: 0, maxWait: 0s } }",
        );
    let folder = manifests(dir.path(), &yaml);
    let out = support::ofe().args(["validate", "-f"]).arg(&folder).output().expect("validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for expected in [
        "spec.subscribers[0].delivery.batch.maxSize: is 0; use 1 to 10000 events a batch",
        "spec.subscribers[0].delivery.batch.maxWait: is zero",
        "spec.subscribers[0].delivery.batch: one request carries the whole batch",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
