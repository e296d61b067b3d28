//! The Kafka backend passes the backend suite against a real Kafka-protocol broker.
//!
//! `OFE_TEST_KAFKA` names the bootstrap broker (e.g. `127.0.0.1:9092`); unset, every test skips
//! and says so. Each test uses a topic of its own.

use std::sync::Arc;

use cloudevents::AttributesReader;

use ofe_core::EventBus;
use ofe_eventbus::kafka::{KafkaBus, KafkaConfig};
use ofe_testkit as testing;

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

// A consumer group takes a few seconds to form.
ofe_testkit::conformance_suite!(
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

/// An Apache Kafka broker of our own, on a free port with a store of its own, that the test can
/// kill and start again.
struct Broker {
    binary: String,
    port: u16,
    store: tempfile::TempDir,
    child: std::process::Child,
    /// The launcher's further arguments (protocol, settings, users), kept across restarts.
    extra: Vec<String>,
}

impl Broker {
    fn start(&self) -> std::process::Child {
        testing::start_kafka_broker(&self.binary, self.port, self.store.path(), &self.extra)
    }

    async fn wait(port: u16) {
        testing::wait_port(port, "the test broker").await;
    }

    /// A broker of its own from `OFE_TEST_KAFKA_SERVER` on a free port with a fresh store,
    /// started with the launcher's arguments `extra`, and listening.
    async fn launch(extra: &[&str]) -> Self {
        let binary = testing::broker_var("OFE_TEST_KAFKA_SERVER");
        let port = ofe_testkit::free_port();
        let store = tempfile::tempdir().expect("tempdir");
        let extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
        let child = testing::start_kafka_broker(&binary, port, store.path(), &extra);
        let broker = Self { binary, port, store, child, extra };
        Self::wait(port).await;
        broker
    }

    /// kill -9, then start again on the same port and store.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        self.child = self.start();
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
    use ofe_core::{Connection, EventBus};
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
    broker.child = broker.start();
    Broker::wait(port).await;
    tokio::time::timeout(Duration::from_secs(30), connection.wait_for(|c| *c == Connection::Up))
        .await
        .expect("the return is reported in time")
        .expect("the bus is alive");
}

/// Publishes one event and reads it back through `bus`: the whole path works.
async fn round_trip(bus: &KafkaBus, name: &str) {
    use std::time::Duration;
    let s = ofe_core::Subject::event("ns", name, "e");
    let mut sub = testing::subscribe(bus, &format!("{name}-c"), &s, 8).await;
    bus.publish(&s, &testing::sample_event(&format!("{name}-1"), 1)).await.expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("in time")
        .expect("delivery");
    assert_eq!(d.event.id(), format!("{name}-1"));
    d.ack().await.expect("ack");
}

/// SASL/SCRAM against a broker whose client listener requires it: the right password works end
/// to end, and a wrong one fails `connect` within seconds, saying the broker refused and which
/// settings to check, instead of retrying until a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn sasl_scram_and_a_wrong_password() {
    use ofe_eventbus::kafka::KafkaSasl;
    use std::time::{Duration, Instant};
    let broker = Broker::launch(&[
        "--protocol",
        "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.client.scram-sha-512.sasl.jaas.config=\
         org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "--add-scram",
        "SCRAM-SHA-512=[name=ofe,password=s3cret]",
    ])
    .await;
    let sasl = |password: &str| {
        let mut config = config(&format!("127.0.0.1:{}", broker.port), "sasl");
        config.sasl = Some(KafkaSasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: "ofe".into(),
            password: password.into(),
        });
        config
    };
    round_trip(&connect(sasl("s3cret")).await, "sasl").await;

    let started = Instant::now();
    let refused = match KafkaBus::connect(sasl("wrong")).await {
        Ok(_) => panic!("a wrong password connected"),
        Err(e) => e,
    };
    let took = started.elapsed();
    assert!(matches!(refused, ofe_core::BusError::Config { .. }), "{refused:?}");
    let text = refused.to_string();
    assert!(text.contains("refused the connection"), "{text}");
    assert!(text.contains("Authentication failed"), "the broker's reason: {text}");
    assert!(text.contains("spec.kafka.sasl"), "the fix: {text}");
    assert!(took < Duration::from_secs(10), "failed fast, not by timeout: {took:?}");
}

/// TLS: a broker whose client listener speaks only TLS, with a certificate from a CA of the
/// test's own. With that CA the bus works end to end; without it (the system's CAs) the
/// handshake fails, and `connect` says so at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn tls_with_the_brokers_ca() {
    use ofe_core::TlsFiles;
    let certs = tempfile::tempdir().expect("tempdir");
    testing::certificates(certs.path());
    // Kafka reads a PEM key store: the (PKCS#8, unencrypted) key followed by the certificate.
    let key = std::fs::read_to_string(certs.path().join("server.key")).expect("key");
    let cert = std::fs::read_to_string(certs.path().join("server.pem")).expect("cert");
    let store = certs.path().join("keystore.pem");
    std::fs::write(&store, format!("{key}{cert}")).expect("write the key store");
    let broker = Broker::launch(&[
        "--protocol",
        "SSL",
        "ssl.keystore.type=PEM",
        &format!("ssl.keystore.location={}", store.display()),
    ])
    .await;
    let tls = |ca: Option<std::path::PathBuf>| {
        let mut config = config(&format!("127.0.0.1:{}", broker.port), "tls");
        config.tls = Some(TlsFiles { ca_file: ca, client: None });
        config
    };
    round_trip(&connect(tls(Some(certs.path().join("ca.pem")))).await, "tls").await;
    let refused = match KafkaBus::connect(tls(None)).await {
        Ok(_) => panic!("connected without trusting the broker's CA"),
        Err(e) => e,
    };
    let text = refused.to_string();
    assert!(text.contains("refused the connection") && text.contains("SSL"), "{text}");
}

/// Replicas share join state through the compacted topic: one sees what another wrote, a
/// stale write loses for every reader, and a replica that starts later reads the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn replicas_share_state_and_agree_on_who_won() {
    use ofe_core::StateError;
    let brokers = brokers();
    let config = config(&brokers, "state-replicas");
    let first = connect(config.clone()).await;
    let second = connect(config.clone()).await;
    let (a, b) = (
        first.state_store().await.expect("state").expect("a store"),
        second.state_store().await.expect("state").expect("a store"),
    );
    let key = ofe_core::state_key(&["ns", "join", "0", "car-1"]);
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

/// A second member joins a consumer group while the first consumes a steady stream: Kafka moves
/// partitions to it mid-stream. Nothing is lost, the newcomer takes a share, and each key's
/// events are first seen in the order they were published (a partition moves with its
/// unsettled events, which may come again: those are counted as duplicates, never reordered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn a_member_joining_mid_stream_loses_nothing_and_keeps_order_per_key() {
    use cloudevents::{EventBuilder, EventBuilderV10};
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;
    const KEYS: u64 = 6;
    const PER_KEY: u64 = 150;
    let brokers = brokers();
    let config = config(&brokers, "rebalance");
    let first = connect(config.clone()).await;
    let subject = ofe_core::Subject::event("ns", "rebalance", "e");
    // (member, key, n) in the order the members received them, across both.
    let seen: Arc<Mutex<Vec<(usize, u64, u64)>>> = Arc::default();
    let consume = |member: usize, mut sub: Box<dyn ofe_core::Subscription>| {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(d) = sub.next().await {
                let (key, n) = d
                    .event
                    .id()
                    .split_once('-')
                    .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)))
                    .expect("ids are KEY-N");
                seen.lock().expect("lock").push((member, key, n));
                // A little work per event, so the first member still holds unsettled events
                // when its partitions are taken.
                tokio::time::sleep(Duration::from_millis(2)).await;
                d.ack().await.expect("ack");
            }
        })
    };
    let a = consume(0, testing::subscribe(&first, "rebalance", &subject, 32).await);
    let publisher = {
        let (bus, subject) = (first.clone(), subject.clone());
        tokio::spawn(async move {
            for n in 0..PER_KEY {
                for key in 0..KEYS {
                    let event = EventBuilderV10::new()
                        .id(format!("{key}-{n}"))
                        .source("ofe-test")
                        .ty("ofe.test")
                        .extension("partitionkey", format!("vehicle-{key}"))
                        .build()
                        .expect("event");
                    bus.publish(&subject, &event).await.expect("publish");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The second member joins a second into the three-second stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = connect(config).await;
    let b = consume(1, testing::subscribe(&second, "rebalance", &subject, 32).await);
    publisher.await.expect("the publisher");
    let all = KEYS * PER_KEY;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let distinct: HashSet<(u64, u64)> =
            seen.lock().expect("lock").iter().map(|&(_, k, n)| (k, n)).collect();
        if distinct.len() as u64 == all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost across the rebalance: {} of {all} events arrived",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.abort();
    b.abort();
    let seen = seen.lock().expect("lock").clone();
    let by_second = seen.iter().filter(|&&(m, _, _)| m == 1).count();
    assert!(by_second > 0, "the member that joined took no partition");
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut first_seen = HashSet::new();
    for &(_, key, n) in &seen {
        if first_seen.insert((key, n)) {
            if let Some(&before) = last.get(&key) {
                assert!(n == before + 1, "key {key}: {n} first arrived after {before}");
            } else {
                assert_eq!(n, 0, "key {key} began at {n}");
            }
            last.insert(key, n);
        }
    }
    println!(
        "rebalance mid-stream: {all} events, {} deliveries ({} duplicates), {by_second} to the member that joined",
        seen.len(),
        seen.len() as u64 - all
    );
}
