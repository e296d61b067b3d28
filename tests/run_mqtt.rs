//! `ofe run` with an MQTT EventSource: kill -9 during a QoS 1 stream, then a restart, loses
//! nothing the broker handed over. `OFE_TEST_MQTT` names the broker; unset, the test skips.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use support::{Receiver, free_addr, manifests, start_ofe, terminate, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_mqtt_qos1_stream_loses_nothing() {
    let Some(url) = support::broker_var("OFE_TEST_MQTT") else { return };
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = format!("ofe-e2e/{ns}/telemetry");
    let broker = url.replace("mqtt://", "tcp://");
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: {{ name: fleet, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  mqtt:\n    telemetry: {{ url: \"{broker}\", topic: \"{topic}\", qos: 1 }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    telemetry: { eventSource: fleet, event: telemetry }",
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{base}/slow\" }}"),
    );
    let folder = manifests(dir.path(), &yaml);
    let data = dir.path().join("data");
    let listen = free_addr();
    let mut first = start_ofe(&folder, &data, listen);
    wait_ready(listen).await;

    let address = broker.trim_start_matches("tcp://").to_string();
    let (host, port) = address
        .rsplit_once(':')
        .map_or((address.as_str(), 1883), |(h, p)| (h, p.parse().unwrap_or(1883)));
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(format!("pub-{ns}"), host, port), 64);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // MQTT drops messages nobody has subscribed to yet: publish warm-ups until one reaches the
    // function, so the source's subscription exists before the counted stream starts.
    let warm = |r: &Receiver| r.on("/slow").iter().any(|x| &x.body[..] == b"warm-up");
    for _ in 0..100 {
        if warm(&receiver) {
            break;
        }
        client.publish(&topic, QoS::AtLeastOnce, false, "warm-up").await.expect("publish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver.wait_for(Duration::from_secs(10), "a warm-up message at the function", warm).await;
    let total = 30u32;
    let publish = |range: std::ops::Range<u32>| {
        let (client, topic) = (client.clone(), topic.clone());
        async move {
            for n in range {
                client
                    .publish(&topic, QoS::AtLeastOnce, false, format!("{{\"n\":{n}}}"))
                    .await
                    .expect("publish");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    publish(0..13).await;
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    // The broker keeps the persistent session's messages while ofe is down.
    publish(13..21).await;
    let listen = free_addr();
    let mut second = start_ofe(&folder, &data, listen);
    publish(21..total).await;
    wait_ready(listen).await;
    let numbers = |r: &Receiver| -> BTreeSet<u32> {
        r.on("/slow")
            .iter()
            .filter_map(|x| serde_json::from_slice::<serde_json::Value>(&x.body).ok())
            .filter_map(|v| v["n"].as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    receiver
        .wait_for(Duration::from_secs(60), "every published message at the function", |r| {
            numbers(r).len() == total as usize
        })
        .await;
    let deliveries = receiver.on("/slow").iter().filter(|r| &r.body[..] != b"warm-up").count();
    println!(
        "kill -9 during MQTT QoS 1: {total} published, all {total} delivered ({deliveries} deliveries, {} duplicates)",
        deliveries - total as usize
    );
    assert!(terminate(&mut second).success());
}
