//! The MQTT source against a real broker. `OFE_TEST_MQTT` names it (e.g.
//! `mqtt://127.0.0.1:1883`); unset, the test skips and says so.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader;
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_crds::MqttSpec;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::mqtt::MqttSource;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mqtt),
    ignore = "needs OFE_TEST_MQTT (scripts/test.sh starts the services)"
)]
async fn mqtt_messages_reach_the_bus_as_cloudevents() {
    let url = ofe_testkit::broker_var("OFE_TEST_MQTT");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let spec = MqttSpec {
        url: url.replace("mqtt://", "tcp://"),
        topic: format!("ofe-test/{run}/#"),
        qos: Some(1),
        ..Default::default()
    };
    // A client id of its own: the shared broker keeps each persistent session, and would
    // replay to a reused id the messages a previous run left queued.
    let source = MqttSource::new("ns", "fleet", "telemetry", &spec)
        .expect("source")
        .with_client_id(format!("ofe-test-{run}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let mut options =
        SubscribeOptions::new("test", vec![Subject::event("ns", "fleet", "telemetry")]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let broker = ofe_eventsource::mqtt::parse_url(&spec.url).expect("url");
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(format!("pub-{run}"), broker.host, broker.port), 16);
    let topic = format!("ofe-test/{run}/vehicle/42");
    // The broker's last value, retained before the source subscribes (the broker has it once
    // it acknowledges), and replayed on subscribe: not an event by default.
    client.publish(&topic, QoS::AtLeastOnce, true, "retained-old").await.expect("publish");
    loop {
        let polled = tokio::time::timeout(Duration::from_secs(10), events.poll()).await;
        let event = polled.expect("the broker acknowledges").expect("MQTT connection");
        if matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) {
            break;
        }
    }
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(source.run(Arc::new(bus.clone()), SourceMetrics::default(), shutdown.clone()));
    let not_retained = |d: &ofe_core::Delivery| {
        assert_ne!(
            ofe_core::event::data_bytes(&d.event),
            b"retained-old".to_vec(),
            "a retained message became an event (retain: false)"
        );
    };
    // MQTT drops messages nobody has subscribed to yet: publish a warm-up message until one
    // arrives, so the source's subscription exists before the real ones are sent.
    let mut ready = false;
    for _ in 0..100 {
        client.publish(&topic, QoS::AtLeastOnce, false, "warm-up").await.expect("publish");
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            not_retained(&d);
            d.ack().await.expect("ack");
            ready = true;
            break;
        }
    }
    assert!(ready, "the MQTT source never received a message");
    // Drain warm-ups still in flight.
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        not_retained(&d);
        d.ack().await.expect("ack");
    }
    let plain = br#"{"vehicleId":"42","speed":131}"#.to_vec();
    client.publish(&topic, QoS::AtLeastOnce, false, plain.clone()).await.expect("publish");
    let structured = r#"{"specversion":"1.0","id":"ce-7","source":"/fleet/42","type":"com.example.telemetry","traceparent":"00-aa-bb-01","data":{"speed":99}}"#;
    client.publish(&topic, QoS::AtLeastOnce, false, structured).await.expect("publish");

    let mut next = async || ofe_testkit::next_within(&mut sub, Duration::from_secs(10)).await;
    let first = next().await;
    assert_eq!(first.event.ty(), "io.openfunction.events.mqtt");
    assert_eq!(first.event.subject(), Some(topic.as_str()), "the MQTT topic is the subject");
    assert_eq!(first.event.datacontenttype(), Some("application/json"));
    assert_eq!(ofe_core::event::data_bytes(&first.event), plain, "payload bytes unchanged");
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
    client.publish(&topic, QoS::AtLeastOnce, true, "").await.expect("clear the retained message");
    bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mqtt),
    ignore = "needs OFE_TEST_MQTT (scripts/test.sh starts the services)"
)]
async fn mqtt5_binary_mode_and_shared_subscriptions() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let url = ofe_testkit::broker_var("OFE_TEST_MQTT");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("ofe-test5/{run}/car");
    let broker = ofe_eventsource::mqtt::parse_url(&url).expect("url");
    let (client, mut events) = rumqttc::v5::AsyncClient::new(
        rumqttc::v5::MqttOptions::new(format!("pub5-{run}"), broker.host, broker.port),
        64,
    );
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;

    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let subjects = vec![Subject::event("ns", "a", "t"), Subject::event("ns", "b", "t")];
    let mut options = SubscribeOptions::new("test", subjects);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let shutdown = CancellationToken::new();
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    // Two replicas (here: two EventSources) in one share group split the traffic.
    let mut tasks = Vec::new();
    for (name, id) in [("a", "replica-a"), ("b", "replica-b")] {
        let spec = MqttSpec {
            url: url.clone(),
            topic: topic.clone(),
            qos: Some(1),
            protocol_version: Some("5".into()),
            share_group: Some(format!("g{run}")),
            clean_session: Some(true),
            ..Default::default()
        };
        let source = MqttSource::new("ns", name, "t", &spec)
            .expect("source")
            .with_client_id(format!("{id}-{run}"));
        tasks.push(tokio::spawn(source.run(
            shared.clone(),
            SourceMetrics::default(),
            shutdown.clone(),
        )));
    }
    // Wait until both replicas are subscribed: warm-ups until each has taken one.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        client.publish(&topic, qos, false, "warm-up").await.expect("publish");
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            seen.insert(d.subject.to_string());
            d.ack().await.expect("ack");
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both replicas of the share group receive messages");
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        d.ack().await.expect("ack");
    }

    // Binary mode: attributes as user properties, data content type as the content type.
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![
            ("specversion".into(), "1.0".into()),
            ("id".into(), "m5-1".into()),
            ("source".into(), "/fleet/car-5".into()),
            ("type".into(), "com.example.telemetry".into()),
            (
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
            ("fleet".into(), "north".into()),
        ],
        ..Default::default()
    };
    let mut total = 0;
    for n in 0..10 {
        let mut props = properties.clone();
        props.user_properties[1].1 = format!("m5-{n}");
        client
            .publish_with_properties(&topic, qos, false, format!("{{\"n\":{n}}}"), props)
            .await
            .expect("publish");
    }
    let mut by_replica = std::collections::BTreeMap::<String, usize>::new();
    let mut ids = std::collections::BTreeSet::new();
    while total < 10 {
        let d = ofe_testkit::next_within(&mut sub, Duration::from_secs(10)).await;
        assert_eq!(d.event.source().to_string(), "/fleet/car-5", "binary mode keeps the source");
        assert_eq!(d.event.ty(), "com.example.telemetry");
        assert_eq!(d.event.datacontenttype(), Some("application/json"));
        assert_eq!(
            d.event.extension("traceparent").map(ToString::to_string).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(d.event.extension("fleet").map(ToString::to_string).as_deref(), Some("north"));
        ids.insert(d.event.id().to_string());
        *by_replica.entry(d.subject.to_string()).or_default() += 1;
        d.ack().await.expect("ack");
        total += 1;
    }
    assert_eq!(ids.len(), 10, "each message reached exactly one replica: {ids:?}");
    println!("MQTT 5 share group split 10 messages as {by_replica:?}");
    shutdown.cancel();
    for task in tasks {
        task.await.expect("source stops on shutdown");
    }
    bus.close().await.expect("close");
}
