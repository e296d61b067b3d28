//! The source compliance suite (`ofe_testkit::sources`) for the broker kinds: Redis streams and
//! pub/sub, NATS JetStream and core NATS, MQTT and Kafka, each against a server of the test's
//! own, so that dropping every connection disturbs no other test. `OFE_TEST_REDIS_SERVER`,
//! `OFE_TEST_NATS_SERVER`, `OFE_TEST_MOSQUITTO_SERVER` and `OFE_TEST_KAFKA_SERVER` name the
//! servers; unset, the tests skip and say so. (The AMQP source runs the suite in
//! `tests/amqp.rs`. Cron has no upstream to send through, and the webhook's sender is told
//! directly, with 202 or 503: `tests/cron.rs` and `tests/webhook.rs` check those.)

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ofe_testkit::sources::{Guarantee, Upstream, source_compliance};
use ofe_testkit::{ChildGuard, OwnServer, free_port, wait_port};
use redis::AsyncCommands as _;

/// A redis-server of the test's own.
struct Redis {
    port: u16,
    _server: ChildGuard,
}

impl Redis {
    async fn start() -> Self {
        let binary = ofe_testkit::broker_var("OFE_TEST_REDIS_SERVER");
        let port = free_port();
        let server = ChildGuard(
            Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("OFE_TEST_REDIS_SERVER={binary}: {e}")),
        );
        wait_port(port, "redis-server").await;
        Self { port, _server: server }
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }
}

#[async_trait]
impl Upstream for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({
            "redisHost": format!("127.0.0.1:{}", self.port), "redisPassword": "",
            "stream": input, "consumerGroup": format!("g-{input}"), "initialOffset": "earliest",
            // A restarted source takes back what its stopped self held within seconds.
            "processingTimeout": "1s", "redeliverInterval": "1s",
        })
    }

    async fn send(&self, input: &str, _key: &str, body: &[u8]) {
        // A stream entry's id is the server's: Redis gives the sender no name for it.
        let mut c = self.connection().await;
        let _: String = c.xadd(input, "*", &[("data", body)]).await.expect("xadd");
    }

    async fn unacknowledged(&self, input: &str) -> Option<u64> {
        let mut c = self.connection().await;
        let groups: redis::Value =
            redis::cmd("XINFO").arg("GROUPS").arg(input).query_async(&mut c).await.ok()?;
        let redis::Value::Array(groups) = groups else { return Some(0) };
        let mut held = 0;
        for group in groups {
            let fields: Vec<(String, redis::Value)> = match group {
                redis::Value::Map(pairs) => pairs
                    .into_iter()
                    .filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v)))
                    .collect(),
                redis::Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|kv| {
                        let key = redis::from_redis_value::<String>(kv[0].clone()).ok()?;
                        Some((key, kv.get(1)?.clone()))
                    })
                    .collect(),
                _ => continue,
            };
            for (name, value) in fields {
                if name == "pending" || name == "lag" {
                    held += redis::from_redis_value::<u64>(value).unwrap_or(0);
                }
            }
        }
        Some(held)
    }

    async fn drop_connections(&self) {
        let mut c = self.connection().await;
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut c)
            .await
            .expect("CLIENT KILL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis_server),
    ignore = "needs OFE_TEST_REDIS_SERVER (scripts/test.sh starts the services)"
)]
async fn the_redis_stream_source_passes_the_source_compliance_suite() {
    let redis = Redis::start().await;
    source_compliance(&redis).await;
}

/// A nats-server of the test's own, with JetStream, restarted on the same store to drop
/// every connection.
struct Nats(OwnServer);

impl Nats {
    async fn start() -> Self {
        let binary = ofe_testkit::broker_var("OFE_TEST_NATS_SERVER");
        Self(
            OwnServer::start("nats-server", move |port, store| {
                ofe_testkit::start_nats_server(&binary, port, store, &[])
            })
            .await,
        )
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url()).await.expect("nats");
        async_nats::jetstream::new(client)
    }

    /// The stream holding `input`'s subject, created on first use.
    async fn stream(&self, input: &str) -> async_nats::jetstream::stream::Stream {
        self.jetstream()
            .await
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: format!("S-{input}"),
                subjects: vec![format!("{input}.>")],
                ..Default::default()
            })
            .await
            .expect("stream")
    }
}

#[async_trait]
impl Upstream for Nats {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({
            "url": self.url(), "subject": format!("{input}.>"),
            "jetstream": { "stream": format!("S-{input}"), "durable": format!("d-{input}"), "initialOffset": "earliest" },
        })
    }

    async fn send(&self, input: &str, key: &str, body: &[u8]) {
        self.stream(input).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", key);
        self.jetstream()
            .await
            .publish_with_headers(format!("{input}.v1"), headers, body.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    async fn unacknowledged(&self, input: &str) -> Option<u64> {
        let stream = self.stream(input).await;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&format!("d-{input}")).await.ok()?;
        let info = consumer.info().await.ok()?;
        Some(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0))
    }

    async fn drop_connections(&self) {
        self.0.restart().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn the_nats_jetstream_source_passes_the_source_compliance_suite() {
    let nats = Nats::start().await;
    source_compliance(&nats).await;
}

/// Redis pub/sub: the same server, a channel instead of a stream.
struct RedisPubSub(Redis);

#[async_trait]
impl Upstream for RedisPubSub {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtMostOnce
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({
            "redisHost": format!("127.0.0.1:{}", self.0.port), "redisPassword": "",
            "channel": input,
        })
    }

    async fn send(&self, input: &str, _key: &str, body: &[u8]) {
        let mut c = self.0.connection().await;
        let _: u64 = c.publish(input, body).await.expect("publish");
    }

    async fn unacknowledged(&self, _input: &str) -> Option<u64> {
        None
    }

    async fn drop_connections(&self) {
        let mut c = self.0.connection().await;
        for kind in ["pubsub", "normal"] {
            let _: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg(kind)
                .query_async(&mut c)
                .await
                .expect("CLIENT KILL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis_server),
    ignore = "needs OFE_TEST_REDIS_SERVER (scripts/test.sh starts the services)"
)]
async fn the_redis_pubsub_source_passes_the_source_compliance_suite() {
    let redis = RedisPubSub(Redis::start().await);
    source_compliance(&redis).await;
}

/// Core NATS: the same server, a plain subscription.
struct NatsCore(Nats);

#[async_trait]
impl Upstream for NatsCore {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtMostOnce
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({ "url": self.0.url(), "subject": format!("{input}.>") })
    }

    async fn send(&self, input: &str, _key: &str, body: &[u8]) {
        let client = async_nats::connect(self.0.url()).await.expect("nats");
        client.publish(format!("{input}.v1"), body.to_vec().into()).await.expect("publish");
        client.flush().await.expect("flush");
    }

    async fn unacknowledged(&self, _input: &str) -> Option<u64> {
        None
    }

    async fn drop_connections(&self) {
        self.0.drop_connections().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn the_core_nats_source_passes_the_source_compliance_suite() {
    let nats = NatsCore(Nats::start().await);
    source_compliance(&nats).await;
}

/// A Mosquitto of the test's own that keeps its sessions on disk, so that a restart (which
/// drops every connection) keeps the source's persistent session and what is queued for it.
struct Mosquitto {
    binary: String,
    port: u16,
    dir: tempfile::TempDir,
    server: Mutex<Option<std::process::Child>>,
}

impl Mosquitto {
    async fn start() -> Self {
        let binary = ofe_testkit::broker_var("OFE_TEST_MOSQUITTO_SERVER");
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            // Started as root, Mosquitto would switch to its own user, who cannot write in
            // the test's directory: it keeps the user it is started as.
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nuser root\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("config");
        let mosquitto = Self { binary, port, dir, server: Mutex::new(None) };
        mosquitto.launch().await;
        mosquitto
    }

    async fn launch(&self) {
        let server = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("OFE_TEST_MOSQUITTO_SERVER={}: {e}", self.binary));
        *self.server.lock().expect("lock") = Some(server);
        wait_port(self.port, "mosquitto").await;
    }

    /// Stops the broker as an operator would (SIGTERM), so that it writes its sessions out.
    fn stop(&self) {
        if let Some(mut server) = self.server.lock().expect("lock").take() {
            let pid = server.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            if server.wait().is_err() {
                let _ = server.kill();
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.lock().expect("lock").take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

#[async_trait]
impl Upstream for Mosquitto {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({ "url": format!("tcp://127.0.0.1:{}", self.port), "topic": format!("{input}/#"), "qos": 1 })
    }

    async fn send(&self, input: &str, key: &str, body: &[u8]) {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let options = MqttOptions::new(ofe_testkit::unique("sender"), "127.0.0.1", self.port);
        let (client, mut events) = AsyncClient::new(options, 4);
        client
            .publish(format!("{input}/{key}"), QoS::AtLeastOnce, false, body.to_vec())
            .await
            .expect("publish");
        // Sent once the broker acknowledges it.
        loop {
            let polled = tokio::time::timeout(Duration::from_secs(10), events.poll()).await;
            match polled.expect("the broker acknowledges").expect("MQTT connection") {
                Event::Incoming(Packet::PubAck(_)) => break,
                _ => continue,
            }
        }
        let _ = client.disconnect().await;
    }

    async fn unacknowledged(&self, _input: &str) -> Option<u64> {
        // MQTT has no way to ask a broker what it holds for a session.
        None
    }

    async fn drop_connections(&self) {
        self.stop();
        assert!(
            self.dir.path().join("mosquitto.db").exists(),
            "Mosquitto did not write its sessions out, so the restart would lose them"
        );
        self.launch().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mosquitto_server),
    ignore = "needs OFE_TEST_MOSQUITTO_SERVER (scripts/test.sh starts the services)"
)]
async fn the_mqtt_source_passes_the_source_compliance_suite() {
    let mosquitto = Mosquitto::start().await;
    source_compliance(&mosquitto).await;
}

/// An Apache Kafka broker of the test's own, restarted (kill -9) on the same store to drop
/// every connection.
struct Kafka(OwnServer);

impl Kafka {
    async fn start() -> Self {
        let binary = ofe_testkit::broker_var("OFE_TEST_KAFKA_SERVER");
        Self(
            OwnServer::start("the test's Kafka broker", move |port, store| {
                ofe_testkit::start_kafka_broker(&binary, port, store, &[])
            })
            .await,
        )
    }

    fn client(&self) -> rdkafka::ClientConfig {
        let mut client = rdkafka::ClientConfig::new();
        client
            .set("bootstrap.servers", format!("127.0.0.1:{}", self.0.port))
            .set("broker.address.family", "v4");
        client
    }
}

#[async_trait]
impl Upstream for Kafka {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn prepare(&self, input: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            self.client().create().expect("admin");
        let created = admin
            .create_topics(
                [&NewTopic::new(input, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("the test's broker answers");
        for result in created {
            result.unwrap_or_else(|(topic, e)| panic!("cannot create topic {topic}: {e}"));
        }
    }

    fn spec(&self, input: &str) -> serde_json::Value {
        serde_json::json!({
            "brokers": format!("127.0.0.1:{}", self.0.port), "topic": input,
            "authRequired": false, "initialOffset": "earliest",
        })
    }

    async fn send(&self, input: &str, key: &str, body: &[u8]) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = self.client().set("acks", "all").create().expect("producer");
        producer
            .send(FutureRecord::to(input).key(key).payload(body), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }

    async fn unacknowledged(&self, _input: &str) -> Option<u64> {
        // The group's committed offset would tell, but the group is the source's to name;
        // the suite's stop-and-restart check shows the same thing.
        None
    }

    async fn drop_connections(&self) {
        self.0.restart().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn the_kafka_source_passes_the_source_compliance_suite() {
    let kafka = Kafka::start().await;
    source_compliance(&kafka).await;
}
