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
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: {{ name: fleet, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  kafka:\n    telemetry: {{ brokers: \"{brokers}\", topic: \"{topic}\", authRequired: false, initialOffset: earliest }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    telemetry: { eventSource: fleet, event: telemetry }",
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{base}/slow\" }}"),
    );
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
