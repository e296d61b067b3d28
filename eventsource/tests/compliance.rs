//! The source compliance suite (`ofe_testkit::sources`) for the Redis stream and NATS
//! JetStream sources, each against a server of the test's own, so that dropping every
//! connection disturbs no other test. `OFE_TEST_REDIS_SERVER` and `OFE_TEST_NATS_SERVER` name
//! the binaries; unset, the tests skip and say so. (The AMQP source runs the suite in
//! `tests/amqp.rs`.)

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ofe_testkit::sources::{Upstream, source_compliance};
use ofe_testkit::{ChildGuard, free_port, wait_port};
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
struct Nats {
    binary: String,
    port: u16,
    store: tempfile::TempDir,
    server: Mutex<Option<ChildGuard>>,
}

impl Nats {
    async fn start() -> Self {
        let binary = ofe_testkit::broker_var("OFE_TEST_NATS_SERVER");
        let port = free_port();
        let store = tempfile::tempdir().expect("tempdir");
        let server = ofe_testkit::start_nats_server(&binary, port, store.path(), &[]);
        wait_port(port, "nats-server").await;
        Self { binary, port, store, server: Mutex::new(Some(ChildGuard(server))) }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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
        let old = self.server.lock().expect("lock").take();
        drop(old);
        // The port frees as the old server exits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let server =
            ofe_testkit::start_nats_server(&self.binary, self.port, self.store.path(), &[]);
        *self.server.lock().expect("lock") = Some(ChildGuard(server));
        wait_port(self.port, "nats-server (restarted)").await;
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
