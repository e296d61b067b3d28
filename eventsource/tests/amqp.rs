//! The AMQP source against a real RabbitMQ (Debian's `rabbitmq-server`): the source compliance
//! suite on a node of the test's own (`OFE_TEST_AMQP_SERVER`, the launcher), and the
//! CloudEvents AMQP binding on the shared one (`OFE_TEST_AMQP`). Unset, the tests skip and say
//! so.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::AttributesReader as _;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_eventbus::embedded::{EmbeddedBus, MemoryConfig};
use ofe_eventsource::amqp::AmqpSource;
use ofe_eventsource::{SourceHost, SourceMetrics};
use ofe_testkit::sources::{Upstream, source_compliance};
use ofe_testkit::{ChildGuard, PATIENCE, free_port, next_within, unique, wait_port};
use tokio_util::sync::CancellationToken;

/// A RabbitMQ node of the test's own, and a connection to publish with.
struct Rabbit {
    launcher: String,
    dir: tempfile::TempDir,
    port: u16,
    _node: ChildGuard,
}

impl Rabbit {
    async fn start() -> Self {
        let launcher = ofe_testkit::broker_var("OFE_TEST_AMQP_SERVER");
        let dir = tempfile::tempdir().expect("tempdir");
        // The node also takes the next port, for its Erlang distribution.
        let port = loop {
            let port = free_port();
            if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let node = ChildGuard(
            Command::new(&launcher)
                .arg(dir.path())
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("OFE_TEST_AMQP_SERVER={launcher}: {e}")),
        );
        wait_port(port, "rabbitmq").await;
        Self { launcher, dir, port, _node: node }
    }

    /// `rabbitmqctl ARGS` against this node; its output.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.launcher)
            .arg("ctl")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

async fn connect(url: &str) -> (Connection, lapin::Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Publishes `body` to queue `queue` through the default exchange, with `properties`.
async fn publish(channel: &lapin::Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    ofe_testkit::amqp_publish(channel, "", queue, body, properties.with_delivery_mode(2)).await;
}

#[async_trait]
impl Upstream for Rabbit {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({ "url": url(self.port), "queue": input, "declare": true, "prefetch": 16 })
    }

    async fn send(&self, input: &str, key: &str, body: &[u8]) {
        // A connection per message: the suite has the broker drop every connection, this
        // one's too. The suite may send before the source declared the queue: declare it too
        // (the same durable queue; declaring is idempotent).
        let (_connection, channel) = connect(&url(self.port)).await;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(input.into(), durable, FieldTable::default()).await.expect("declare");
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(key))
            .with_content_type("application/json".into());
        publish(&channel, input, body, properties).await;
    }

    async fn unacknowledged(&self, input: &str) -> Option<u64> {
        let listing = self.ctl(&["list_queues", "-q", "name", "messages"]);
        let held = listing.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(input)).then(|| fields.next()?.parse().ok())?
        });
        Some(held.unwrap_or(0))
    }

    async fn drop_connections(&self) {
        self.ctl(&["close_all_connections", "the compliance suite drops every connection"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_amqp_server),
    ignore = "needs OFE_TEST_AMQP_SERVER (scripts/test.sh starts the services)"
)]
async fn the_amqp_source_passes_the_source_compliance_suite() {
    let rabbit = Rabbit::start().await;
    source_compliance(&rabbit).await;
}

/// CloudEvents published in the AMQP binding's binary mode (`cloudEvents_` headers, as the
/// binding now names them, and `cloudEvents:` as it first did) and structured mode keep
/// every attribute as sent; a plain message is wrapped, with the routing key as `subject`;
/// and a queue bound to a topic exchange gets only what its routing key matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_amqp),
    ignore = "needs OFE_TEST_AMQP (scripts/test.sh starts the services)"
)]
async fn cloudevents_keep_their_attributes_and_the_binding_filters() {
    let url = ofe_testkit::broker_var("OFE_TEST_AMQP");
    let (exchange, queue) = (unique("fleet"), unique("alerts"));
    let spec: ofe_crds::AmqpSpec = serde_json::from_value(serde_json::json!({
        "url": url, "queue": queue, "declare": true, "exchange": exchange,
        "exchangeType": "topic", "routingKey": "vehicle.*.alert",
    }))
    .expect("spec");
    let source = AmqpSource::new("ns", "cars", "alerts", &spec).expect("source");
    let bus = Arc::new(EmbeddedBus::in_memory(MemoryConfig::default()));
    let mut options =
        SubscribeOptions::new(unique("reader"), vec![Subject::event("ns", "cars", "alerts")]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(bus.clone(), SourceMetrics::default(), shutdown.clone()));
    let (_connection, channel) = connect(&url).await;
    // The source declares and binds as it connects; publishing before that would go nowhere.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let (_c, probe) = connect(&url).await;
        if probe.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the source never declared its queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to = |key: &str, body: &'static [u8], properties: BasicProperties| {
        let (channel, exchange, key) = (channel.clone(), exchange.clone(), key.to_string());
        async move { ofe_testkit::amqp_publish(&channel, &exchange, &key, body, properties).await }
    };
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "binary-1"),
        ("cloudEvents_source", "/vehicles/7"),
        ("cloudEvents_type", "com.example.overspeed"),
        ("cloudEvents:subject", "vehicle 7"),
        ("cloudEvents_fleet", "north"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let binary = BasicProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into());
    to("vehicle.7.alert", br#"{"speed":131}"#, binary).await;
    to("vehicle.7.position", b"not for this queue", BasicProperties::default()).await;
    let structured =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    let body = br#"{"specversion":"1.0","id":"structured-1","source":"/vehicles/8","type":"com.example.overspeed","data":{"speed":140}}"#;
    to("vehicle.8.alert", body, structured).await;
    to("vehicle.9.alert", b"plain text", BasicProperties::default().with_message_id("m-9".into()))
        .await;

    let d = next_within(&mut sub, PATIENCE).await;
    let e = &d.event;
    assert_eq!(
        (e.id(), e.source().as_str(), e.ty()),
        ("binary-1", "/vehicles/7", "com.example.overspeed")
    );
    assert_eq!(e.subject(), Some("vehicle 7"), "the `cloudEvents:` prefix is read too");
    assert_eq!(e.extension("fleet").map(ToString::to_string).as_deref(), Some("north"));
    assert_eq!(e.datacontenttype(), Some("application/json"));
    d.ack().await.expect("ack");
    let d = next_within(&mut sub, PATIENCE).await;
    assert_eq!((d.event.id(), d.event.source().as_str()), ("structured-1", "/vehicles/8"));
    d.ack().await.expect("ack");
    let d = next_within(&mut sub, PATIENCE).await;
    let e = &d.event;
    assert_eq!(e.ty(), ofe_eventsource::amqp::AMQP_EVENT_TYPE);
    assert_eq!(e.subject(), Some("vehicle.9.alert"), "the routing key");
    assert_eq!(
        e.source().as_str(),
        "/apis/events.openfunction.io/v1alpha1/namespaces/ns/eventsources/cars"
    );
    d.ack().await.expect("ack");
    ofe_testkit::assert_quiet(&mut sub, Duration::from_millis(500)).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(PATIENCE, task).await;
}

/// Refused credentials show on the source's condition with the broker's reason, and the
/// password never appears in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_amqp),
    ignore = "needs OFE_TEST_AMQP (scripts/test.sh starts the services)"
)]
async fn refused_credentials_are_reported_without_the_password() {
    let url = ofe_testkit::broker_var("OFE_TEST_AMQP").replace("guest:guest", "guest:n0t-the-pw");
    let spec: ofe_crds::AmqpSpec =
        serde_json::from_value(serde_json::json!({ "url": url, "queue": unique("q") }))
            .expect("spec");
    let es: ofe_crds::EventSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "events.openfunction.io/v1alpha1", "kind": "EventSource",
        "metadata": { "name": "refused", "namespace": "ns" },
        "spec": { "amqp": { "orders": spec } },
    }))
    .expect("eventsource");
    let health = ofe_core::health::Health::default();
    let stop = CancellationToken::new();
    let bus: Arc<dyn EventBus> = Arc::new(EmbeddedBus::in_memory(MemoryConfig::default()));
    let _tasks = ofe_eventsource::spawn(
        &es,
        bus,
        &SourceHost { health: health.clone(), ..Default::default() },
        &stop,
    )
    .expect("spawn");
    let key = ofe_core::health::ResourceKey::new("EventSource", "ns", "refused");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let message = loop {
        let conditions = health.conditions(&key);
        if let Some(c) =
            conditions.iter().find(|c| c.r#type == "SourceConnected" && c.status == "False")
        {
            break c.message.clone().unwrap_or_default();
        }
        assert!(tokio::time::Instant::now() < deadline, "never reported: {conditions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    assert!(
        message.contains("ACCESS_REFUSED")
            || message.contains("access refused")
            || message.contains("auth"),
        "{message}"
    );
    assert!(!message.contains("n0t-the-pw"), "{message}");
}
