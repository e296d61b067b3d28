//! `ofe run` with its bus on Kafka. `OFE_TEST_KAFKA` names the brokers; unset, the test skips
//! and says so.

mod support;

use support::Receiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runs_on_kafka() {
    let Some(brokers) = support::broker_var("OFE_TEST_KAFKA") else { return };
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let yaml = support::cron_and_trigger(
        &ns,
        &base,
        "  - condition: tick\n    sink: { uri: \"BASE/fn\" }",
    ) + &support::kafka_bus(&ns, &brokers);
    support::example_flow_on_broker(&yaml, &ns, &receiver).await;
}
