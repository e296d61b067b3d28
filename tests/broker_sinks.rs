//! Sinks that are brokers, end to end against the real brokers: a webhook event goes through
//! `ofe run` to `sink.kafka`, `sink.nats` (core and JetStream), `sink.mqtt`, `sink.redis` and
//! `sink.amqp`, and a plain client of each broker reads it back in that protocol's CloudEvents
//! binding. A message the broker cannot place (an AMQP exchange bound to no queue) is retried,
//! then dead-lettered with the reason. Each test needs its broker's variable (`scripts/test.sh`
//! starts them); unset, it is skipped and says so.

mod support;

use std::time::Duration;

use support::{Receiver, Running, manifests};

/// A webhook `fleet` and a Trigger `out` sending its events to `sink` (YAML, flow style),
/// with `more` subscriber lines.
fn pipeline(ns: &str, sink: &str, more: &str) -> String {
    support::webhook_source(ns, "fleet", "telemetry")
        + &support::trigger(
            ns,
            "out",
            "    all: { eventSource: fleet, event: telemetry }",
            &format!(
                "  - condition: all\n    sink: {sink}\n    \
                 delivery: {{ retry: 2, backoffPolicy: linear, backoffDelay: PT0.1S }}\n{more}"
            ),
        )
}

/// Starts `ofe run` on `yaml` and posts event `id` for vehicle `v-7`.
async fn run_and_post(yaml: &str, ns: &str, id: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), yaml);
    let run = Running::start(&folder, &dir.path().join("data")).await;
    let url = format!("http://{}/{ns}/fleet/telemetry", run.webhooks);
    let headers = [
        ("ce-id", id),
        ("ce-source", "/cars"),
        ("ce-type", "com.example.telemetry"),
        ("ce-subject", "v-7"),
    ];
    support::post_event(&url, &headers, r#"{"vehicleId":"v-7","speed":131}"#.into()).await;
    (run, dir)
}

async fn within<T>(what: &str, find: impl AsyncFn() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(found) = find().await {
            return found;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "nothing {what} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn kafka_sink_produces_binary_mode_records_keyed_by_cel() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    let ns = support::unique_namespace();
    let topic = format!("sink-{ns}");
    let sink =
        format!("{{ kafka: {{ brokers: \"{brokers}\", topic: {topic}, key: data.vehicleId }} }}");
    let (_run, _dir) = run_and_post(&pipeline(&ns, &sink, ""), &ns, "k-1").await;
    let found = support::kafka_find(&brokers, &topic, |r| {
        Some((r.header("ce_id"), r.header("ce_type"), r.header("content-type"), r.key, r.payload))
    })
    .await
    .expect("a record on the topic within 30 s");
    assert_eq!(found.0.as_deref(), Some("k-1"));
    assert_eq!(found.1.as_deref(), Some("com.example.telemetry"));
    assert_eq!(found.2.as_deref(), Some("application/json"));
    assert_eq!(found.3.as_deref(), Some("v-7"), "the key from `data.vehicleId`");
    assert_eq!(found.4.as_deref(), Some(r#"{"vehicleId":"v-7","speed":131}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn nats_sink_publishes_to_core_nats_and_to_a_jetstream_stream() {
    use futures::StreamExt as _;
    let url = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let client = async_nats::connect(&url).await.expect("NATS must be reachable at OFE_TEST_NATS");
    let core = format!("sink.core.{ns}");
    let mut subscriber = client.subscribe(core.clone()).await.expect("subscribe");
    // A stream of the test's own for the JetStream sink.
    let js = async_nats::jetstream::new(client.clone());
    let stored = format!("sink.js.{ns}");
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: format!("SINK_{ns}").to_uppercase(),
            subjects: vec![stored.clone()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let second = format!(
        "  - condition: all\n    sink: {{ nats: {{ url: \"{url}\", subject: {stored}, jetstream: true }} }}\n"
    );
    let sink = format!("{{ nats: {{ url: \"{url}\", subject: {core} }} }}");
    let (_run, _dir) = run_and_post(&pipeline(&ns, &sink, &second), &ns, "n-1").await;

    let message = tokio::time::timeout(Duration::from_secs(30), subscriber.next())
        .await
        .expect("a core NATS message within 30 s")
        .expect("message");
    let header = |m: &async_nats::Message, name: &str| {
        m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string())
    };
    assert_eq!(header(&message, "ce-id").as_deref(), Some("n-1"));
    assert_eq!(header(&message, "ce-subject").as_deref(), Some("v-7"));
    assert_eq!(&message.payload[..], br#"{"vehicleId":"v-7","speed":131}"#);

    let kept = within("in the stream", async || {
        let info = stream.clone().info().await.ok()?.clone();
        (info.state.messages > 0).then_some(info.state.messages)
    })
    .await;
    assert_eq!(kept, 1, "one message in the stream");
    let raw = stream.get_last_raw_message_by_subject(&stored).await.expect("the stored message");
    let headers = raw.headers;
    assert_eq!(headers.get("ce-id").map(|v| v.as_str()), Some("n-1"));
    assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("/cars n-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mqtt),
    ignore = "needs OFE_TEST_MQTT (scripts/test.sh starts the services)"
)]
async fn mqtt_sink_publishes_structured_events_acknowledged_by_the_broker() {
    let url = support::broker_var("OFE_TEST_MQTT");
    let ns = support::unique_namespace();
    let topic = format!("sink/{ns}");
    let address = url.trim_start_matches("mqtt://").trim_start_matches("tcp://");
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let options =
        rumqttc::MqttOptions::new(format!("reader-{ns}"), host, port.parse().expect("port"));
    let (reader, mut events) = rumqttc::AsyncClient::new(options, 64);
    reader.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = tx.send(p);
            }
        }
    });
    // Subscribed before anything is published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sink = format!("{{ mqtt: {{ url: \"tcp://{address}\", topic: \"{topic}\", qos: 2 }} }}");
    let (_run, _dir) = run_and_post(&pipeline(&ns, &sink, ""), &ns, "m-1").await;
    let message = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an MQTT message within 30 s")
        .expect("message");
    let event: serde_json::Value =
        serde_json::from_slice(&message.payload).expect("structured JSON");
    assert_eq!(event["id"], "m-1");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["data"], serde_json::json!({"vehicleId": "v-7", "speed": 131}));
    assert_eq!(message.qos, rumqttc::QoS::AtLeastOnce, "as the reader subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis),
    ignore = "needs OFE_TEST_REDIS (scripts/test.sh starts the services)"
)]
async fn redis_sink_adds_entries_the_redis_source_reads_back() {
    use redis::AsyncCommands as _;
    let url = support::broker_var("OFE_TEST_REDIS");
    let ns = support::unique_namespace();
    let stream = format!("sink-{ns}");
    let host = url.trim_start_matches("redis://").trim_end_matches('/');
    let sink = format!("{{ redis: {{ redisHost: \"{host}\", stream: {stream}, maxLen: 1000 }} }}");
    let (_run, _dir) = run_and_post(&pipeline(&ns, &sink, ""), &ns, "r-1").await;
    let mut redis = redis::Client::open(url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable at OFE_TEST_REDIS");
    let entries = within("in the stream", async || {
        let found: redis::streams::StreamRangeReply =
            redis.clone().xrange_all(&stream).await.ok()?;
        (!found.ids.is_empty()).then_some(found.ids)
    })
    .await;
    assert_eq!(entries.len(), 1);
    let field = |name: &str| -> Option<String> { entries[0].get(name) };
    assert_eq!(field("ce_id").as_deref(), Some("r-1"));
    assert_eq!(field("ce_type").as_deref(), Some("com.example.telemetry"));
    assert_eq!(field("datacontenttype").as_deref(), Some("application/json"));
    assert_eq!(field("data").as_deref(), Some(r#"{"vehicleId":"v-7","speed":131}"#));
    let _: () = redis.del(&stream).await.expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_amqp),
    ignore = "needs OFE_TEST_AMQP (scripts/test.sh starts the services)"
)]
async fn amqp_sink_is_confirmed_and_routed_or_dead_lettered() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    let url = support::broker_var("OFE_TEST_AMQP");
    let ns = support::unique_namespace();
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be reachable at OFE_TEST_AMQP");
    let channel = connection.create_channel().await.expect("channel");
    let (exchange, unbound, queue) =
        (format!("sink-{ns}"), format!("nowhere-{ns}"), format!("fleet-{ns}"));
    for name in [&exchange, &unbound] {
        let options =
            ExchangeDeclareOptions { durable: false, auto_delete: false, ..Default::default() };
        channel
            .exchange_declare(
                name.as_str().into(),
                lapin::ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .expect("exchange");
    }
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "fleet.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let (receiver, base) = Receiver::start().await;
    let unroutable = format!(
        "  - condition: all\n    sink: {{ amqp: {{ url: \"{url}\", exchange: {unbound}, routingKey: fleet.v7 }} }}\n    \
         deadLetterSink: {{ uri: \"{base}/dlq\" }}\n    \
         delivery: {{ retry: 1, backoffDelay: PT0.05S }}\n"
    );
    let sink =
        format!("{{ amqp: {{ url: \"{url}\", exchange: {exchange}, routingKey: fleet.v7 }} }}");
    let (_run, _dir) = run_and_post(&pipeline(&ns, &sink, &unroutable), &ns, "a-1").await;
    let message = within("in the queue", async || {
        channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .ok()
            .flatten()
    })
    .await;
    let headers = message.properties.headers().clone().expect("headers");
    let header = |name: &str| {
        headers.inner().get(name).and_then(|v| match v {
            lapin::types::AMQPValue::LongString(s) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        })
    };
    assert_eq!(header("cloudEvents_id").as_deref(), Some("a-1"));
    assert_eq!(header("cloudEvents_type").as_deref(), Some("com.example.telemetry"));
    assert_eq!(message.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(&message.data[..], br#"{"vehicleId":"v-7","speed":131}"#);

    receiver
        .wait_for(Duration::from_secs(30), "the unroutable event's dead letter", |r| {
            !r.on("/dlq").is_empty()
        })
        .await;
    let dead = &receiver.on("/dlq")[0];
    assert_eq!(dead.header("ce-id"), "a-1");
    assert_eq!(dead.header("ce-ofeerrorattempts"), "2");
    assert!(
        dead.header("ce-ofeerrorreason").contains("routed the message to no queue"),
        "{}",
        dead.header("ce-ofeerrorreason")
    );
}

#[test]
fn validate_names_a_kafka_key_that_does_not_compile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml =
        pipeline("default", "{ kafka: { brokers: \"k:9092\", topic: t, key: \"data.id +\" } }", "");
    let folder = manifests(dir.path(), &yaml);
    let out = support::ofe().args(["validate", "-f"]).arg(&folder).output().expect("validate");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("spec.subscribers[0].sink.kafka.key: "), "{text}");
    assert!(text.contains("column"), "a CEL error points at its column: {text}");
}
