//! The dead-letter store against `ofe run`: with no `deadLetterSink` or `deadLetterTopic`, an
//! event whose sink fails for good is kept on the bus in the subscriber's dead-letter topic,
//! with the reason, where a Trigger (or a function on the broker) can read it; opting out
//! drops it, as before. On the embedded bus, JetStream and Kafka (`OFE_TEST_NATS`,
//! `OFE_TEST_KAFKA`; unset, those tests skip and say so).

mod support;

use std::time::Duration;

use support::{KillOnDrop, Receiver, free_addr, manifests, start_ofe, wait_ready};

/// The clock's ticks to a failing sink (one retry), and a Trigger `rescue` reading the
/// default dead-letter topic of `route`'s subscriber 0 into `BASE/dead`.
fn failing(ns: &str, base: &str, store: bool) -> String {
    let opt_out = if store { "" } else { ", deadLetterStore: false" };
    support::cron_and_trigger(
        ns,
        base,
        &format!(
            "  - condition: tick\n    sink: {{ uri: \"BASE/fail\" }}\n    \
             delivery: {{ retry: 1, backoffDelay: PT0.05S{opt_out} }}"
        ),
    ) + &support::trigger(
        ns,
        "rescue",
        &format!("    dead: {{ topic: \"{}\" }}", ofe_trigger::dead_letter_topic("route", 0)),
        &format!("  - condition: dead\n    sink: {{ uri: \"{base}/dead\" }}"),
    )
}

async fn kept_on_the_bus(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &(failing(&ns, &base, true) + &bus(&ns)));
    let listen = free_addr();
    let _ofe = KillOnDrop(start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "a dead letter read from the bus", |r| {
            !r.on("/dead").is_empty()
        })
        .await;
    let dead = receiver.on("/dead")[0].clone();
    assert_eq!(dead.header("ce-ofeerrorcode"), "500", "the sink's answer");
    assert_eq!(dead.header("ce-ofeerrorattempts"), "2", "the first attempt and one retry");
    assert_eq!(dead.header("ce-ofeerrordest"), format!("{base}/fail"));
    assert_eq!(dead.header("ce-ofeeventsource"), "clock", "the original event");
    let id = dead.header("ce-id");
    assert!(
        receiver.on("/fail").iter().any(|r| r.header("ce-id") == id),
        "the dead letter is the event that failed"
    );
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    let dead_lettered = support::counter(&metrics, "ofe_trigger_events_dead_lettered_total{");
    assert!(dead_lettered > 0, "counted as dead-lettered: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_kept_on_the_embedded_bus() {
    kept_on_the_bus(|_| String::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn a_failed_event_is_kept_on_jetstream() {
    let url = support::broker_var("OFE_TEST_NATS");
    kept_on_the_bus(|ns| support::jetstream_bus(ns, &url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn a_failed_event_is_kept_on_kafka() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    kept_on_the_bus(|ns| support::kafka_bus(ns, &brokers)).await;
}

/// `deadLetterStore: false` drops what fails for good, logged and counted, as Knative does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_drops_the_event() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &failing(&ns, &base, false));
    let listen = free_addr();
    let _ofe = KillOnDrop(start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "three failed events", |r| r.on("/fail").len() >= 6)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(receiver.on("/dead").is_empty(), "nothing is kept");
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    assert!(support::counter(&metrics, "ofe_trigger_events_dropped_total{") > 0, "{metrics}");
}
