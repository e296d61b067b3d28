//! The Kafka source against a real broker. `OFE_TEST_KAFKA` names it (e.g. `127.0.0.1:9092`);
//! unset, the test skips and says so.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader;
use ofe_core::{Delivery, EventBus, StartPosition, Subject, SubscribeOptions, Subscription};
use ofe_crds::KafkaSpec;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::kafka::KafkaSource;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header { key, value: Some(value.as_bytes()) })
    })
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    ofe_testkit::next_within(sub, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn kafka_messages_reach_the_bus_and_offsets_follow_the_bus() {
    let brokers = ofe_testkit::broker_var("OFE_TEST_KAFKA");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("ofe-src-{run}");
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &brokers).set("broker.address.family", "v4");
    let admin: AdminClient<DefaultClientContext> = client.create().expect("admin");
    admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("Kafka must be reachable at OFE_TEST_KAFKA");
    let producer: FutureProducer = client.clone().set("acks", "all").create().expect("producer");
    let send = async |key: Option<&str>, payload: &str, h: OwnedHeaders| {
        let mut record = FutureRecord::<str, str>::to(&topic).payload(payload).headers(h);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(10)).await.expect("produce");
    };
    send(Some("v42"), r#"{"vehicleId":"v42","speed":131}"#, OwnedHeaders::new()).await;
    send(
        None,
        r#"{"speed":99}"#,
        headers(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "bin-1"),
            ("ce_source", "/fleet/v7"),
            ("ce_type", "com.example.telemetry"),
            ("ce_traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("ce_fleet", "north"),
            ("content-type", "application/json"),
        ]),
    )
    .await;
    send(
        None,
        r#"{"specversion":"1.0","id":"st-1","source":"/fleet/v8","type":"com.example.s","data":{"a":1}}"#,
        headers(&[("content-type", "application/cloudevents+json")]),
    )
    .await;
    // Claims binary mode but has no id: flagged, not dropped, and the stream goes on.
    send(None, "x", headers(&[("ce_specversion", "1.0"), ("ce_type", "t")])).await;

    let spec = KafkaSpec {
        brokers: brokers.clone(),
        topic: Some(topic.clone()),
        initial_offset: Some("earliest".into()),
        ..Default::default()
    };
    let default = KafkaSource::new("ns", "fleet", "telemetry", &spec).expect("source");
    assert_eq!(default.group(), "ofe-ns-fleet-telemetry", "a group per EventSource and event");
    // A group of its own for this run: the shared broker remembers static members of earlier
    // runs, and a reused group would wait for their sessions to expire.
    let spec = KafkaSpec { consumer_group: Some(format!("ofe-test-{run}")), ..spec };
    let source = KafkaSource::new("ns", "fleet", "telemetry", &spec).expect("source");
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let mut options =
        SubscribeOptions::new("test", vec![Subject::event("ns", "fleet", "telemetry")]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    let metrics = SourceMetrics::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.clone().run(shared.clone(), metrics.clone(), shutdown.clone()));

    let plain = next(&mut sub).await;
    assert_eq!(plain.event.ty(), "io.openfunction.events.kafka");
    assert_eq!(plain.event.subject(), Some(topic.as_str()), "the topic is the subject");
    assert_eq!(plain.event.datacontenttype(), Some("application/json"));
    assert_eq!(
        plain.event.extension("partitionkey").map(ToString::to_string).as_deref(),
        Some("v42"),
        "the message key is the partition key"
    );
    assert_eq!(
        ofe_core::event::data_bytes(&plain.event),
        br#"{"vehicleId":"v42","speed":131}"#.to_vec()
    );
    let binary = next(&mut sub).await;
    assert_eq!(binary.event.id(), "bin-1", "binary mode keeps the id");
    assert_eq!(binary.event.source().to_string(), "/fleet/v7");
    assert_eq!(binary.event.ty(), "com.example.telemetry");
    assert_eq!(
        binary.event.extension("traceparent").map(ToString::to_string).as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(binary.event.extension("fleet").map(ToString::to_string).as_deref(), Some("north"));
    assert_eq!(
        binary.event.extension("ofeeventsource").map(ToString::to_string).as_deref(),
        Some("fleet")
    );
    let structured = next(&mut sub).await;
    assert_eq!(structured.event.id(), "st-1");
    assert_eq!(structured.event.ty(), "com.example.s");
    let invalid = next(&mut sub).await;
    let reason = invalid.event.extension("ofeinvalid").map(ToString::to_string);
    assert!(reason.as_deref().is_some_and(|r| r.contains("binary-mode")), "{reason:?}");
    assert_eq!(ofe_core::event::data_bytes(&invalid.event), b"x".to_vec());
    for d in [plain, binary, structured, invalid] {
        d.ack().await.expect("ack");
    }
    shutdown.cancel();
    task.await.expect("source stops on shutdown");

    // The group committed what the bus has: a new consumer in the same group starts after it.
    send(None, "after-restart", OwnedHeaders::new()).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(shared, metrics.clone(), shutdown.clone()));
    // The restarted member has the same static instance id; the broker may hand its partitions back
    // only after the old member's session (10 s) times out, so allow for that and a rebalance.
    let resumed = ofe_testkit::next_within(&mut sub, Duration::from_secs(60)).await;
    assert_eq!(ofe_core::event::data_bytes(&resumed.event), b"after-restart".to_vec());
    resumed.ack().await.expect("ack");
    // The bus would drop repeats by id, so count what the source took from Kafka instead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let labels = ofe_eventsource::metrics::EventLabels::new("ns", "fleet", "kafka", "telemetry");
    assert_eq!(
        metrics.received.get_or_create(&labels).get(),
        5,
        "the restarted consumer read only the message after the commit"
    );
    shutdown.cancel();
    task.await.expect("source stops on shutdown");
    bus.close().await.expect("close");
}
