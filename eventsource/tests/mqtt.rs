//! The MQTT source against a real broker. `OFE_TEST_MQTT` names it (e.g.
//! `mqtt://127.0.0.1:1883`); unset, the test skips and says so.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader;
use ofe_crds::MqttSpec;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventbus::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::mqtt::MqttSource;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_messages_reach_the_bus_as_cloudevents() {
    let Ok(url) = std::env::var("OFE_TEST_MQTT") else {
        eprintln!("skipped: OFE_TEST_MQTT is not set (run `eval \"$(scripts/services.sh)\"`)");
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let spec = MqttSpec {
        url: url.replace("mqtt://", "tcp://"),
        topic: format!("ofe-test/{run}/#"),
        qos: Some(1),
        ..Default::default()
    };
    let source = MqttSource::new("ns", "fleet", "telemetry", &spec).expect("source");
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let mut options =
        SubscribeOptions::new("test", vec![Subject::event("ns", "fleet", "telemetry")]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(source.run(Arc::new(bus.clone()), SourceMetrics::default(), shutdown.clone()));

    let broker = ofe_eventsource::mqtt::parse_url(&spec.url).expect("url");
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(format!("pub-{run}"), broker.host, broker.port), 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let topic = format!("ofe-test/{run}/vehicle/42");
    // MQTT drops messages nobody has subscribed to yet: publish a warm-up message until one
    // arrives, so the source's subscription exists before the real ones are sent.
    let mut ready = false;
    for _ in 0..100 {
        client.publish(&topic, QoS::AtLeastOnce, false, "warm-up").await.expect("publish");
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            d.ack().await.expect("ack");
            ready = true;
            break;
        }
    }
    assert!(ready, "the MQTT source never received a message");
    // Drain warm-ups still in flight.
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        d.ack().await.expect("ack");
    }
    let plain = br#"{"vehicleId":"42","speed":131}"#.to_vec();
    client.publish(&topic, QoS::AtLeastOnce, false, plain.clone()).await.expect("publish");
    let structured = r#"{"specversion":"1.0","id":"ce-7","source":"/fleet/42","type":"com.example.telemetry","traceparent":"00-aa-bb-01","data":{"speed":99}}"#;
    client.publish(&topic, QoS::AtLeastOnce, false, structured).await.expect("publish");

    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event")
            .expect("delivery")
    };
    let first = next().await;
    assert_eq!(first.event.ty(), "io.openfunction.events.mqtt");
    assert_eq!(first.event.subject(), Some(topic.as_str()), "the MQTT topic is the subject");
    assert_eq!(first.event.datacontenttype(), Some("application/json"));
    assert_eq!(ofe_eventbus::event::data_bytes(&first.event), plain, "payload bytes unchanged");
    assert_eq!(
        first.event.extension("ofeeventsource").map(ToString::to_string).as_deref(),
        Some("fleet")
    );
    let second = next().await;
    assert_eq!(second.event.id(), "ce-7", "a CloudEvent keeps its id");
    assert_eq!(second.event.source().to_string(), "/fleet/42");
    assert_eq!(second.event.ty(), "com.example.telemetry");
    assert_eq!(
        second.event.extension("traceparent").map(ToString::to_string).as_deref(),
        Some("00-aa-bb-01")
    );
    shutdown.cancel();
    task.await.expect("source stops on shutdown");
    bus.close().await.expect("close");
}
