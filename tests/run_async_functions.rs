//! A subscriber's `topic` reaches async functions that consume the bus's broker directly: a
//! JetStream consumer on `ofe.topic.<namespace>.<topic>`, or a Kafka consumer of the bus topic
//! that keeps the records whose `ofe_subject` header names the topic. Both get the CloudEvent
//! in binary mode, one hop further than the event that fired.

mod support;

use std::time::Duration;

use futures::StreamExt as _;
use support::{KillOnDrop, free_addr, manifests, start_ofe, wait_ready};

/// Every second a cron event, which the Trigger publishes to topic `orders-out`.
fn to_topic(ns: &str) -> String {
    support::clock(ns, None)
        + &support::trigger(
            ns,
            "route",
            "    tick: { eventSource: clock, event: tick }",
            "  - condition: tick\n    topic: orders-out",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn a_jetstream_consumer_reads_a_topic() {
    let url = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = to_topic(&ns) + &support::jetstream_bus(&ns, &url);
    let listen = free_addr();
    let _ofe =
        KillOnDrop(start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen));
    wait_ready(listen).await;

    // The async function: a plain JetStream pull consumer, no ofe code.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let stream = js.get_stream("OFE").await.expect("ofe's stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("ofe.topic.{ns}.orders-out"),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
        .await
        .expect("an event on the topic in time")
        .expect("a message")
        .expect("no error");
    let headers = message.headers.clone().expect("binary-mode headers");
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(header("ce-type").as_deref(), Some("io.openfunction.events.cron"));
    assert_eq!(header("ce-ofehops").as_deref(), Some("1"));
    assert!(header("ce-id").is_some_and(|id| !id.is_empty()));
    let body: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON data");
    assert_eq!(body["schedule"], "@every 1s");
    message.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn a_kafka_consumer_reads_a_topic() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    let ns = support::unique_namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = to_topic(&ns) + &support::kafka_bus(&ns, &brokers);
    let listen = free_addr();
    let _ofe =
        KillOnDrop(start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen));
    wait_ready(listen).await;

    // The async function: a plain Kafka consumer of the bus topic, no ofe code.
    let subject = format!("ofe.topic.{ns}.orders-out");
    let topic = format!("ofe-{ns}.events");
    let found = support::kafka_find(&brokers, &topic, move |r| {
        (r.header("ofe_subject").as_deref() == Some(subject.as_str()))
            .then(|| (r.header("ce_type"), r.header("ce_ofehops")))
    })
    .await
    .expect("an event on the topic within 30 s");
    assert_eq!(found.0.as_deref(), Some("io.openfunction.events.cron"));
    assert_eq!(found.1.as_deref(), Some("1"));
}
