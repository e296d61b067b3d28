//! `ofe run` with an MQTT EventSource: kill -9 during a QoS 1 stream, then a restart, loses
//! nothing the broker handed over. `OFE_TEST_MQTT` names the broker; unset, the test skips.

mod support;

use rumqttc::QoS;
use support::{Receiver, manifests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mqtt),
    ignore = "needs OFE_TEST_MQTT (scripts/test.sh starts the services)"
)]
async fn kill_9_during_an_mqtt_qos1_stream_loses_nothing() {
    let url = support::broker_var("OFE_TEST_MQTT");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = format!("ofe-e2e/{ns}/telemetry");
    let broker = url.replace("mqtt://", "tcp://");
    let yaml = support::mqtt_to_sink(&ns, "fleet", &broker, &topic, &format!("{base}/slow"));
    let folder = manifests(dir.path(), &yaml);
    let client = support::mqtt_publisher(&broker, &format!("pub-{ns}"));
    let total = 30;
    // The broker keeps the persistent session's messages while ofe is down.
    let deliveries = support::kill_9_during_stream(&folder, &receiver, total, |payload| {
        let (client, topic) = (client.clone(), topic.clone());
        async move {
            client.publish(&topic, QoS::AtLeastOnce, false, payload).await.expect("publish");
        }
    })
    .await;
    println!(
        "kill -9 during MQTT QoS 1: {total} published, all {total} delivered ({deliveries} deliveries, {} duplicates)",
        deliveries - total as usize
    );
}
