//! The Kafka backend passes the backend suite against a real Kafka-protocol broker.
//!
//! `OFE_TEST_KAFKA` names the bootstrap broker (e.g. `127.0.0.1:9092`); unset, every test skips
//! and says so. Each test uses a topic of its own.

use std::sync::Arc;

use ofe_eventbus::EventBus;
use ofe_eventbus::kafka::{KafkaBus, KafkaConfig};
use ofe_eventbus::testing;

fn brokers() -> String {
    testing::broker_var("OFE_TEST_KAFKA")
}

fn config(brokers: &str, test: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.topic_prefix = format!("ofe-test-{test}-{}", uuid::Uuid::new_v4().simple());
    config
}

async fn connect(config: KafkaConfig) -> KafkaBus {
    let brokers = config.brokers.clone();
    KafkaBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("OFE_TEST_KAFKA={brokers} is set but: {e}"))
}

async fn bus(test: &str) -> Arc<dyn EventBus> {
    Arc::new(connect(config(&brokers(), test)).await)
}

// Consumer groups need a few seconds to form; tansu mishandles a rebalance mid-stream.
ofe_eventbus::conformance_suite!(
    connect: bus("suite").await,
    settle: std::time::Duration::from_secs(5),
    needs: ofe_test_kafka = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn restart_resumes_after_the_last_ack() {
    let brokers = brokers();
    let config = config(&brokers, "restart");
    let reopen: testing::Reopen = Box::new(move || {
        let config = config.clone();
        Box::pin(async move { Arc::new(connect(config).await) as Arc<dyn EventBus> })
    });
    testing::restart_resumes_after_the_last_ack(reopen, "restart").await;
}

/// A Kafka-protocol broker of our own, on a free port with a file store, that the test can kill
/// and start again.
struct Broker {
    binary: String,
    port: u16,
    store: tempfile::TempDir,
    child: std::process::Child,
    /// Further broker flags, kept across restarts.
    extra: Vec<String>,
}

impl Broker {
    fn start(binary: &str, port: u16, store: &tempfile::TempDir) -> std::process::Child {
        Self::start_with(binary, port, store, &[])
    }

    fn start_with(
        binary: &str,
        port: u16,
        store: &tempfile::TempDir,
        extra: &[String],
    ) -> std::process::Child {
        testing::start_kafka_broker(binary, port, store.path(), extra)
    }

    async fn wait(port: u16) {
        testing::wait_port(port, "the test broker").await;
    }

    /// A broker of its own from `OFE_TEST_KAFKA_SERVER` on a free port with a fresh store, ready;
    /// `extra` flags apply from the first restart on.
    async fn launch(extra: &[&str]) -> Self {
        let binary = testing::broker_var("OFE_TEST_KAFKA_SERVER");
        let port = ofe_eventbus::testing::free_port();
        let store = tempfile::tempdir().expect("tempdir");
        let child = Self::start(&binary, port, &store);
        let extra = extra.iter().map(ToString::to_string).collect();
        let broker = Self { binary, port, store, child, extra };
        Self::wait(port).await;
        broker
    }

    /// kill -9, then start again on the same port and store.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        self.child = Self::start_with(&self.binary, self.port, &self.store, &self.extra);
        Self::wait(self.port).await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker is killed and restarted while events flow: every event whose publish was
/// acknowledged is delivered, and the subscription recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn broker_restart_loses_nothing() {
    let mut broker = Broker::launch(&[]).await;
    let port = broker.port;
    let bus = connect(config(&format!("127.0.0.1:{port}"), "restart")).await;
    testing::broker_restart_loses_nothing(&bus, &testing::unique("restart"), || broker.restart())
        .await;
}

/// The bus tells when its brokers stop answering and when they answer again: what turns a
/// resource's `BusConnected` false, with the reason, and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn the_connection_follows_the_broker() {
    use ofe_eventbus::{Connection, EventBus};
    use std::time::Duration;
    let mut broker = Broker::launch(&[]).await;
    let port = broker.port;
    let bus = connect(config(&format!("127.0.0.1:{port}"), "connection")).await;
    let mut connection = bus.connection();
    assert_eq!(*connection.borrow(), Connection::Up);
    let _ = broker.child.kill();
    let _ = broker.child.wait();
    let lost = tokio::time::timeout(
        Duration::from_secs(30),
        connection.wait_for(|c| matches!(c, Connection::Lost(_))),
    )
    .await
    .expect("the loss is reported in time")
    .expect("the bus is alive")
    .clone();
    let Connection::Lost(why) = lost else { unreachable!("waited for Lost") };
    assert!(why.contains(&format!("127.0.0.1:{port}")), "the reason names the brokers: {why}");
    broker.child = Broker::start_with(&broker.binary, port, &broker.store, &broker.extra);
    Broker::wait(port).await;
    tokio::time::timeout(Duration::from_secs(30), connection.wait_for(|c| *c == Connection::Up))
        .await
        .expect("the return is reported in time")
        .expect("the bus is alive");
}

/// SASL/SCRAM against a broker that requires authentication: the right password works end to
/// end. (A wrong password is not checked here: tansu does not answer a failed SCRAM exchange in
/// a way librdkafka reports, so the client only retries; against Kafka, librdkafka reports
/// `SASL authentication failed`, which `KafkaBus::connect` turns into an immediate error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn sasl_scram() {
    use ofe_eventbus::kafka::KafkaSasl;
    use std::time::Duration;
    // Create the user (SCRAM-SHA-512, tansu's default) on an open broker, then require
    // authentication; the store keeps the user across the restart.
    let mut broker = Broker::launch(&["--authentication"]).await;
    let (port, binary) = (broker.port, broker.binary.clone());
    let created = std::process::Command::new(&binary)
        .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{port}"), "ofe", "s3cret"])
        .status()
        .expect("tansu user create");
    assert!(created.success(), "creating the SCRAM user failed");
    broker.restart().await;
    let sasl = |password: &str| {
        let mut config = config(&format!("127.0.0.1:{port}"), "sasl");
        config.sasl = Some(KafkaSasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: "ofe".into(),
            password: password.into(),
        });
        config
    };
    let bus = connect(sasl("s3cret")).await;
    let s = ofe_eventbus::Subject::event("ns", "sasl", "e");
    let mut sub = testing::subscribe(&bus, "sasl-c", &s, 8).await;
    bus.publish(&s, &testing::sample_event("sasl-1", 1)).await.expect("publish with SASL");
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("in time")
        .expect("delivery");
    d.ack().await.expect("ack");
    drop(broker);
}

/// Replicas share join state through the compacted topic: one sees what another wrote, a
/// stale write loses for every reader, and a replica that starts later reads the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn replicas_share_state_and_agree_on_who_won() {
    use ofe_eventbus::StateError;
    let brokers = brokers();
    let config = config(&brokers, "state-replicas");
    let first = connect(config.clone()).await;
    let second = connect(config.clone()).await;
    let (a, b) = (
        first.state_store().await.expect("state").expect("a store"),
        second.state_store().await.expect("state").expect("a store"),
    );
    let key = ofe_eventbus::state_key(&["ns", "join", "0", "car-1"]);
    let created = a.put(&key, b"telemetry".to_vec(), None).await.expect("create");
    let mut seen = None;
    for _ in 0..100 {
        seen = b.get(&key).await.expect("get");
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = seen.expect("the other replica reads the write");
    assert_eq!((seen.value.as_slice(), seen.revision), (&b"telemetry"[..], created));
    let updated = b.put(&key, b"telemetry+alarm".to_vec(), Some(created)).await.expect("update");
    assert!(
        matches!(a.put(&key, b"stale".to_vec(), Some(created)).await, Err(StateError::Conflict)),
        "a write from the replaced revision loses"
    );
    let late = connect(config).await;
    let c = late.state_store().await.expect("state").expect("a store");
    let got = c.get(&key).await.expect("get").expect("a value");
    assert_eq!((got.value.as_slice(), got.revision), (&b"telemetry+alarm"[..], updated));
}

/// Two buses (two `topicPrefix`es) on one cluster each see only their own events, with
/// consumer groups and state topics of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn two_buses_on_one_cluster_keep_apart() {
    let brokers = brokers();
    let first = connect(config(&brokers, "team-a")).await;
    let second = connect(config(&brokers, "team-b")).await;
    testing::two_buses_on_one_broker_keep_apart(&first, &second, &testing::unique("teams")).await;
}
