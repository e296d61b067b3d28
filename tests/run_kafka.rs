//! `ofe run` with its bus on Kafka. `OFE_TEST_KAFKA` names the brokers; unset, the test skips
//! and says so.

mod support;

use support::Receiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn example_runs_on_kafka() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    support::example_flow_on_bus(|ns| support::kafka_bus(ns, &brokers), async |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn kill_9_during_a_kafka_stream_loses_nothing() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let topic = format!("ofe-e2e-{ns}");
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &brokers).set("broker.address.family", "v4");
    let admin: AdminClient<DefaultClientContext> = client.create().expect("admin");
    admin
        .create_topics(
            [&NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await
        .expect("Kafka must be reachable at OFE_TEST_KAFKA");
    let producer: FutureProducer = client.set("acks", "all").create().expect("producer");
    let yaml = support::kafka_source_to_sink(&ns, &brokers, &topic, &format!("{base}/slow"));
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = support::manifests(dir.path(), &yaml);
    let total = 30;
    let deliveries = support::kill_9_during_stream(&folder, &receiver, total, |payload| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let key = payload.len().to_string();
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer.send(record, std::time::Duration::from_secs(10)).await.expect("produce");
        }
    })
    .await;
    println!(
        "kill -9 during a Kafka stream: {total} produced, all {total} delivered ({deliveries} deliveries, {} duplicates)",
        deliveries - total as usize
    );
}

/// The Kafka broker goes away under `ofe run` for a few seconds: the log says that the bus is
/// unreachable and reachable again, once each, and carries no ERROR lines from librdkafka
/// itself (which, left alone, logs several a second while a broker is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn a_broker_outage_is_a_clear_pair_of_lines_not_a_flood() {
    use std::time::Duration;
    let binary = support::broker_var("OFE_TEST_KAFKA_SERVER");
    let port = ofe_testkit::free_port();
    let store = tempfile::tempdir().expect("tempdir");
    let start = || ofe_testkit::start_kafka_broker(&binary, port, store.path(), &[]);
    let mut broker = ofe_testkit::ChildGuard(start());
    ofe_testkit::wait_port(port, "the test's Kafka broker").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, receiver, mut ofe, listen, log) = support::logged_cron_flow(dir.path(), |ns| {
        support::kafka_bus(ns, &format!("127.0.0.1:{port}"))
    })
    .await;
    receiver
        .wait_for(Duration::from_secs(40), "deliveries before the outage", |r| {
            !r.on("/fn").is_empty()
        })
        .await;
    broker.0.kill().expect("kill the broker");
    broker.0.wait().expect("reap");
    support::wait_ready_status(listen, "Trigger", "route", "False").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker = ofe_testkit::ChildGuard(start());
    support::wait_ready_status(listen, "Trigger", "route", "True").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The log of the outage, before the process stops (stopping closes its clients).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(support::terminate(&mut ofe).success());
    drop(broker);
    let librdkafka: Vec<&str> =
        text.lines().filter(|l| l.contains("ERROR") && l.contains("librdkafka")).collect();
    assert!(librdkafka.is_empty(), "librdkafka's own errors reached the log:\n{text}");
    let count = |what: &str| text.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count("Kafka bus unreachable"), 1, "{text}");
    assert_eq!(count("Kafka bus reachable again"), 1, "{text}");
}
