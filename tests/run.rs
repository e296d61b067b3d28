//! `ofe run` end to end: cron → embedded bus → Trigger → HTTP functions, crash safety, and
//! dead letters. Each test runs the real binary against receivers on loopback.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{Receiver, counter, free_addr, get, manifests, start_ofe, terminate, wait_ready};

fn clock(sink: Option<&str>) -> String {
    support::clock("default", sink)
}

fn trigger(name: &str, inputs: &str, subscribers: &str) -> String {
    support::trigger("default", name, inputs, subscribers)
}

fn cron_and_trigger(base: &str, subscribers: &str) -> String {
    support::cron_and_trigger("default", base, subscribers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_events_reach_the_function_as_cloudevents() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = cron_and_trigger(&base, "  - condition: tick\n    sink: { uri: \"BASE/fn\" }");
    let listen = free_addr();
    let mut ofe = start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "3 events at the function", |r| r.on("/fn").len() >= 3)
        .await;
    for got in receiver.on("/fn") {
        assert_eq!(got.header("ce-specversion"), "1.0");
        assert_eq!(got.header("ce-type"), "io.openfunction.events.cron");
        assert_eq!(
            got.header("ce-source"),
            "/apis/events.openfunction.io/v1alpha1/namespaces/default/eventsources/clock"
        );
        assert!(!got.header("ce-id").is_empty());
        assert_eq!(got.header("ce-ofeeventsource"), "clock");
        assert_eq!(got.header("content-type"), "application/json");
        let body: serde_json::Value = serde_json::from_slice(&got.body).expect("JSON body");
        assert_eq!(body["schedule"], "@every 1s");
    }
    assert_eq!(get(&format!("http://{listen}/healthz")).await, "ok\n");
    let metrics = get(&format!("http://{listen}/metrics")).await;
    assert!(
        counter(
            &metrics,
            "ofe_trigger_events_delivered_total{namespace=\"default\",trigger=\"route\""
        ) >= 3,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "ofe_eventsource_events_published_total{namespace=\"default\",eventsource=\"clock\""
        ) >= 3,
        "{metrics}"
    );
    let status = terminate(&mut ofe);
    assert!(status.success(), "graceful shutdown must exit 0, got {status}");
}

/// kill -9 in the middle, then a restart on the same data directory: every event the bus had
/// acknowledged (counted by the published metric just before the kill) reaches the function.
/// The function answers slowly, so some deliveries are in flight when the kill lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_no_acknowledged_event() {
    let (receiver, base) = Receiver::start().await;
    let yaml = cron_and_trigger(&base, "  - condition: tick\n    sink: { uri: \"BASE/slow\" }");
    let report =
        support::kill_9_scenario(&yaml, "default", &receiver, Duration::from_secs(30)).await;
    println!(
        "kill -9: {} events acknowledged by the bus before the kill, {} of them fully delivered; \
         after restart all arrived ({} deliveries, {} distinct, {} duplicates)",
        report.published,
        report.delivered_before,
        report.deliveries,
        report.distinct,
        report.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_is_retried_then_dead_lettered_while_others_keep_receiving() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let subscribers = "  - condition: tick\n    sink: { uri: \"BASE/fail\" }\n    deadLetterSink: { uri: \"BASE/dead\" }\n  - condition: tick\n    sink: { uri: \"BASE/ok\" }";
    let yaml = cron_and_trigger(&base, subscribers);
    let listen = free_addr();
    let mut ofe = start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "a dead letter", |r| !r.on("/dead").is_empty())
        .await;
    let dead = &receiver.on("/dead")[0];
    let id = dead.header("ce-id");
    assert_eq!(dead.header("ce-ofeerrorcode"), "500");
    assert_eq!(dead.header("ce-ofeerrordest"), format!("{base}/fail"));
    assert!(
        dead.header("ce-ofeerrorreason").starts_with("HTTP 500"),
        "{}",
        dead.header("ce-ofeerrorreason")
    );
    assert_eq!(dead.header("ce-ofeerrorattempts"), "6");
    let attempts = receiver.on("/fail").iter().filter(|r| r.header("ce-id") == id).count();
    assert_eq!(attempts, 6, "1 attempt + 5 retries before dead-lettering");
    // The healthy subscriber kept receiving while the failing one retried (about 6 s).
    assert!(
        receiver.on("/ok").len() >= 5,
        "the other subscriber was held back: {}",
        receiver.on("/ok").len()
    );
    let metrics = get(&format!("http://{listen}/metrics")).await;
    assert!(
        counter(
            &metrics,
            "ofe_trigger_events_dead_lettered_total{namespace=\"default\",trigger=\"route\",subscriber=\"0\"}"
        ) >= 1,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "ofe_trigger_delivery_retries_total{namespace=\"default\",trigger=\"route\",subscriber=\"0\"}"
        ) >= 5,
        "{metrics}"
    );
    assert!(terminate(&mut ofe).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_subscribers_feed_a_second_trigger_and_eventsource_sinks_work() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = clock(Some(&format!("{base}/direct")))
        + &trigger(
            "first",
            "    tick: { eventSource: clock, event: tick }",
            "  - condition: tick\n    topic: metrics",
        )
        + &trigger(
            "second",
            "    metrics: { topic: metrics }",
            &format!("  - condition: metrics\n    sink: {{ uri: \"{base}/async\" }}"),
        );
    let listen = free_addr();
    let mut ofe = start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "events on both paths", |r| {
            r.on("/direct").len() >= 2 && r.on("/async").len() >= 2
        })
        .await;
    // The chained event is the original: same id and source.
    let direct: BTreeSet<String> =
        receiver.on("/direct").iter().map(|r| r.header("ce-id")).collect();
    assert!(receiver.on("/async").iter().any(|r| direct.contains(&r.header("ce-id"))));
    assert!(terminate(&mut ofe).success());
}

/// A CloudEvent POSTed in binary mode to a webhook EventSource reaches the function through a
/// Trigger with its id, source, type and extensions unchanged; a plain body arrives wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_cloudevents_keep_their_attributes_end_to_end() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: { name: gateway }\n\
                spec:\n  eventBus: default\n  webhook:\n    telemetry: { path: /telemetry }\n"
        .to_string()
        + &trigger(
            "route",
            "    telemetry: { eventSource: gateway, event: telemetry }",
            &format!("  - condition: telemetry\n    sink: {{ uri: \"{base}/fn\" }}"),
        );
    let (listen, hooks) = (free_addr(), free_addr());
    let mut ofe = support::start_ofe_with_webhooks(
        &manifests(dir.path(), &yaml),
        &dir.path().join("data"),
        listen,
        hooks,
    );
    wait_ready(listen).await;
    let http = support::http();
    let sent = http
        .post(format!("http://{hooks}/telemetry"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "vehicle-42-0001")
        .header("ce-source", "/fleet/vehicle-42")
        .header("ce-type", "com.example.telemetry")
        .header("ce-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("content-type", "application/json")
        .body(r#"{"vehicleId":"42","speed":131}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(sent.status(), 202);
    let plain =
        http.post(format!("http://{hooks}/telemetry")).body("hello").send().await.expect("post");
    assert_eq!(plain.status(), 202);
    receiver
        .wait_for(Duration::from_secs(20), "both events at the function", |r| {
            r.on("/fn").len() >= 2
        })
        .await;
    let got = receiver.on("/fn");
    let ce = got
        .iter()
        .find(|r| r.header("ce-id") == "vehicle-42-0001")
        .expect("the CloudEvent arrived");
    assert_eq!(ce.header("ce-source"), "/fleet/vehicle-42");
    assert_eq!(ce.header("ce-type"), "com.example.telemetry");
    assert_eq!(
        ce.header("ce-traceparent"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(ce.header("content-type"), "application/json");
    assert_eq!(&ce.body[..], br#"{"vehicleId":"42","speed":131}"#);
    let wrapped = got
        .iter()
        .find(|r| r.header("ce-id") != "vehicle-42-0001")
        .expect("the plain body arrived");
    assert_eq!(wrapped.header("ce-type"), "io.openfunction.events.webhook");
    assert_eq!(&wrapped.body[..], b"hello");
    assert!(terminate(&mut ofe).success());
}

/// Standalone, a `sink.ref` to a Function resolves through `--ref-url-template`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_ref_resolves_through_the_url_template() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = support::unique_namespace();
    let yaml = support::cron_and_trigger(
        &ns,
        &base,
        "  - condition: tick\n    sink: { ref: { apiVersion: core.openfunction.io/v1beta2, kind: Function, name: front } }",
    );
    let listen = free_addr();
    let _ofe = support::KillOnDrop(
        support::ofe()
            .args(["run", "-f"])
            .arg(manifests(dir.path(), &yaml))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &listen.to_string(), "--log-level", "warn"])
            .args(["--ref-url-template", &format!("{base}/{{namespace}}/{{kind}}/{{name}}")])
            .spawn()
            .expect("start ofe"),
    );
    wait_ready(listen).await;
    let path = format!("/{ns}/function/front");
    receiver
        .wait_for(Duration::from_secs(20), "an event at the resolved URL", |r| {
            !r.on(&path).is_empty()
        })
        .await;
}
