//! The ofe test kit: the behaviour every [`EventBus`] backend must show (the conformance
//! suite, below), the behaviour every EventSource kind must show ([`sources`]), and the broker
//! processes and certificates the tests use.
//!
//! The conformance suite is reusable async checks.
//!
//! Each check takes a bus and a unique prefix (so checks can share one broker) and panics with
//! a description of what went wrong. A backend runs the whole suite with
//! [`crate::conformance_suite!`] from its integration tests, e.g. `eventbus/tests/embedded.rs`.

pub mod sources;

/// Generates one `#[tokio::test]` per check of the suite. `$connect` is an async block giving
/// `Arc<dyn EventBus>`; `$settle` is how long consumer groups need to form. With
/// `needs: cfg = "reason"`, the tests are ignored with that reason unless the build saw the
/// service variable behind `cfg` (see `build-support/test_services.rs`).
#[macro_export]
macro_rules! conformance_suite {
    (connect: $connect:expr, settle: $settle:expr $(, needs: $cfg:ident = $why:literal)? $(,)?) => {
        $crate::conformance_suite!(@each [$($cfg = $why)?] $connect;
            delivers_in_order_with_filter,
            reads_several_subjects_and_only_those,
            nack_redelivers_after_delay,
            dropped_delivery_is_redelivered,
            in_flight_is_bounded,
            large_events_round_trip,
            duplicates_are_delivered_once,
            delivers_once_past_max_deliver,
            state_is_compare_and_set,
            lag_counts_what_is_not_settled,
            lag_counts_a_deep_backlog,
            starts_at_a_time_and_removes_consumers,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[cfg_attr(not($cfg), ignore = $why)])?
        async fn same_name_shares_other_name_gets_all() {
            let bus = $connect;
            let prefix = $crate::unique("share");
            $crate::same_name_shares_other_name_gets_all(bus, &prefix, $settle).await;
        }
    };
    (@each $needs:tt $connect:expr; $($name:ident),* $(,)?) => {$(
        $crate::conformance_suite!(@test $needs $name $connect);
    )*};
    (@test [$($cfg:ident = $why:literal)?] $name:ident $connect:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[cfg_attr(not($cfg), ignore = $why)])?
        async fn $name() {
            let bus = $connect;
            let prefix = $crate::unique(stringify!($name));
            $crate::$name(bus.as_ref(), &prefix).await;
            let _ = bus.close().await;
        }
    };
}

/// The state store keeps values across reads and refuses writes from a stale revision.
pub async fn state_is_compare_and_set(bus: &dyn EventBus, prefix: &str) {
    use ofe_core::StateError;
    // Every backend keeps one: Trigger joins depend on it.
    let store = bus
        .state_store()
        .await
        .expect("state store")
        .unwrap_or_else(|| panic!("the {} backend keeps no state store", bus.backend()));
    let key = ofe_core::state_key(&[prefix, "vehicle 7"]);
    assert_eq!(store.get(&key).await.expect("get"), None);
    let first = store.put(&key, b"one".to_vec(), None).await.expect("create");
    assert!(
        matches!(store.put(&key, b"again".to_vec(), None).await, Err(StateError::Conflict)),
        "creating an existing key conflicts"
    );
    let second = store.put(&key, b"two".to_vec(), Some(first)).await.expect("update");
    assert_ne!(first, second);
    assert!(
        matches!(store.put(&key, b"stale".to_vec(), Some(first)).await, Err(StateError::Conflict)),
        "a write from a stale revision conflicts"
    );
    let got = store.get(&key).await.expect("get").expect("a value");
    assert_eq!((got.value.as_slice(), got.revision), (&b"two"[..], second));
    store.delete(&key).await.expect("delete");
    assert_eq!(store.get(&key).await.expect("get"), None);
    store.put(&key, b"three".to_vec(), None).await.expect("create after delete");
}

/// A consumer's lag counts the events of its subjects it has not acknowledged, waiting or in
/// flight, and falls as it acknowledges them; an unknown consumer has none to report. Kafka
/// keeps one topic for every subject and no count per subject, so there the lag also counts
/// the other subjects' records up to the group's committed offset.
pub async fn lag_counts_what_is_not_settled(bus: &dyn EventBus, prefix: &str) {
    let a = Subject::event("ns", &format!("{prefix}-src"), "a");
    let b = Subject::event("ns", &format!("{prefix}-src"), "b");
    let consumer = format!("{prefix}-c");
    assert_eq!(bus.lag(&format!("{prefix}-nobody")).await.expect("lag"), None);
    let mut sub = subscribe(bus, &consumer, &a, 4).await;
    publish_n(bus, &a, &format!("{prefix}-a"), 10).await;
    publish_n(bus, &b, &format!("{prefix}-b"), 5).await;
    let others = if bus.backend() == "kafka" { 5 } else { 0 };
    expect_lag(bus, &consumer, 10, others).await;
    // Four in flight: still not settled.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next_within(&mut sub, PATIENCE).await);
    }
    expect_lag(bus, &consumer, 10, others).await;
    for d in held {
        d.ack().await.expect("ack");
    }
    expect_lag(bus, &consumer, 6, others).await;
    for _ in 0..6 {
        next_within(&mut sub, PATIENCE).await.ack().await.expect("ack");
    }
    // Kafka commits past the other subject's records once the group has read them.
    expect_lag(bus, &consumer, 0, 0).await;
}

/// A backlog deeper than any recent-records index is still counted exactly: 600 events of
/// the consumer's subject interleaved with 600 of another.
pub async fn lag_counts_a_deep_backlog(bus: &dyn EventBus, prefix: &str) {
    let a = Subject::event("ns", &format!("{prefix}-src"), "a");
    let b = Subject::event("ns", &format!("{prefix}-src"), "b");
    let consumer = format!("{prefix}-c");
    let mut sub = subscribe(bus, &consumer, &a, 1).await;
    for i in 0..600 {
        for subject in [&a, &b] {
            let id = format!("{prefix}-{subject}-{i}");
            bus.publish(subject, &sample_event(&id, i)).await.expect("publish");
        }
    }
    let others = if bus.backend() == "kafka" { 600 } else { 0 };
    expect_lag(bus, &consumer, 600, others).await;
    next_within(&mut sub, PATIENCE).await.ack().await.expect("ack");
    expect_lag(bus, &consumer, 599, others).await;
}

/// Waits until `consumer`'s lag is `want`, or on Kafka up to `others` more: the records of
/// other subjects that the group has not committed past yet, which it skips at its own pace
/// (another partition's may all be committed while its own wait). Panics with the last value
/// after [`PATIENCE`].
async fn expect_lag(bus: &dyn EventBus, consumer: &str, want: u64, others: u64) {
    let start = std::time::Instant::now();
    loop {
        let lag = bus.lag(consumer).await.unwrap_or_else(|e| panic!("lag of {consumer}: {e}"));
        if lag.is_some_and(|lag| (want..=want + others).contains(&lag)) {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "lag of {consumer}: want {want} (up to {others} more), have {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bus whose consumer has fallen behind by its size limit refuses new events from sources
/// (`Unavailable`, naming `fix`) instead of dropping any it holds; hops inside ofe (queues)
/// are still taken; once the consumer has settled what it had, publishing resumes, and every
/// accepted event arrived in order. Returns how many were accepted before the refusal.
pub async fn a_full_bus_refuses_rather_than_drop(bus: &dyn EventBus, fix: &str) -> u64 {
    let s = Subject::event("ns", "src", "e");
    let mut slow = subscribe(bus, "slow", &s, 10_000).await;
    let mut accepted = 0;
    let refusal = loop {
        match bus.publish(&s, &sample_event(&format!("e-{accepted}"), accepted)).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "the bus never refused a publish");
    };
    assert!(matches!(refusal, ofe_core::BusError::Unavailable { .. }), "{refusal:?}");
    assert!(refusal.to_string().contains(fix), "the refusal says the fix: {refusal}");
    let queue = Subject::queue("ns", "t", "0");
    bus.publish(&queue, &sample_event("hop", 0)).await.expect("a queue publish is taken");
    for i in 0..accepted {
        let d = next_within(&mut slow, PATIENCE).await;
        assert_eq!(d.event.id(), format!("e-{i}"), "nothing accepted was dropped");
        d.ack().await.expect("ack");
    }
    bus.publish(&s, &sample_event("after", 0)).await.expect("room again once settled");
    assert_eq!(next_within(&mut slow, PATIENCE).await.event.id(), "after");
    accepted
}

/// Starts `nats-server` (`binary`, from `OFE_TEST_NATS_SERVER`) with JetStream on
/// `127.0.0.1:port`, storing under `store`, with `extra` flags; its output is discarded.
pub fn start_nats_server(
    binary: &str,
    port: u16,
    store: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    quiet(
        std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .args(extra),
        "OFE_TEST_NATS_SERVER",
        binary,
    )
}

/// Starts an Apache Kafka broker through the launcher of `OFE_TEST_KAFKA_SERVER`
/// (`scripts/peers/kafka-broker.sh`) for clients on `127.0.0.1:port`, keeping its log and settings
/// in `store` (formatted at the first start, reused by a restart), with the launcher's further
/// arguments `extra` (`--protocol`, `KEY=VALUE` settings, `--add-scram`). Its output is discarded.
pub fn start_kafka_broker(
    binary: &str,
    port: u16,
    store: &std::path::Path,
    extra: &[String],
) -> std::process::Child {
    quiet(
        std::process::Command::new(binary).arg(store).arg(port.to_string()).args(extra),
        "OFE_TEST_KAFKA_SERVER",
        binary,
    )
}

/// Spawns `command` with its output discarded; panics naming `var=binary` if it cannot.
fn quiet(command: &mut std::process::Command, var: &str, binary: &str) -> std::process::Child {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{var}={binary}: {e}"))
}

/// A free TCP port on loopback, for a broker a test runs itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// A prefix unique to this run, so leftovers of earlier runs on a shared broker never match.
pub fn unique(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};

use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions, Subscription};

/// How long a check waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A CloudEvent with the given id and a JSON body `{"n": n}`.
pub fn sample_event(id: &str, n: u64) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("ofe-test")
        .ty("ofe.test")
        .data("application/json", serde_json::json!({ "n": n }))
        .build()
        .unwrap_or_else(|e| panic!("test event builds: {e}"))
}

/// Subscribes from the start of the bus.
pub async fn subscribe(
    bus: &dyn EventBus,
    consumer: &str,
    subject: &Subject,
    max_in_flight: usize,
) -> Box<dyn Subscription> {
    let mut options = SubscribeOptions::new(consumer, vec![subject.clone()]);
    options.max_in_flight = max_in_flight;
    options.start = StartPosition::All;
    bus.subscribe(options).await.unwrap_or_else(|e| panic!("subscribe {consumer}: {e}"))
}

async fn next_id(sub: &mut Box<dyn Subscription>) -> (String, ofe_core::Delivery) {
    let delivery = next_within(sub, PATIENCE).await;
    (delivery.event.id().to_string(), delivery)
}

/// The next delivery; panics if none comes within `wait`.
pub async fn next_within(sub: &mut Box<dyn Subscription>, wait: Duration) -> ofe_core::Delivery {
    tokio::time::timeout(wait, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {wait:?}"))
        .unwrap_or_else(|e| panic!("subscription failed: {e}"))
}

/// The value of a test variable such as `OFE_TEST_NATS`. A test that needs one is ignored
/// when the build did not see it (`build-support/test_services.rs`), so an unset variable
/// here means the test was forced to run: it fails, naming the variable, rather than pass
/// without having run.
pub fn broker_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set, and this test needs it: run scripts/test.sh, which starts the \
             services, or `eval \"$(scripts/services.sh)\"` before cargo test"
        ),
    }
}

/// A process a test started (a broker of its own, `ofe run`): killed when dropped, so a
/// failing test leaves nothing behind.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Publishes `body` with `properties` to `exchange` (`""`: the default exchange, where `key` is
/// the queue) on an AMQP channel in confirm mode, and waits for the broker's confirm.
pub async fn amqp_publish(
    channel: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"))
        .await
        .unwrap_or_else(|e| panic!("the broker's confirm: {e}"));
}

/// How an [`OwnServer`] starts: its process on `port`, storing under the path.
type Launch = dyn Fn(u16, &std::path::Path) -> std::process::Child + Send + Sync;

/// A server process of the test's own on a free port, whose store outlives its restarts: a
/// [`OwnServer::restart`] (kill -9, then the same command again) drops every connection and
/// keeps what the server had stored.
pub struct OwnServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    what: &'static str,
    store: tempfile::TempDir,
    launch: Box<Launch>,
    child: std::sync::Mutex<Option<ChildGuard>>,
}

impl OwnServer {
    /// Starts `launch(port, store)` on a free port with a fresh store, and waits until it
    /// listens; `what` names it in failures.
    pub async fn start(
        what: &'static str,
        launch: impl Fn(u16, &std::path::Path) -> std::process::Child + Send + Sync + 'static,
    ) -> Self {
        let port = free_port();
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("a store for {what}: {e}"));
        let child = ChildGuard(launch(port, store.path()));
        wait_port(port, what).await;
        Self {
            port,
            what,
            store,
            launch: Box::new(launch),
            child: std::sync::Mutex::new(Some(child)),
        }
    }

    /// kill -9, then the same command on the same port and store; returns once it listens.
    pub async fn restart(&self) {
        let old = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        drop(old);
        // The port frees as the old process exits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let child = ChildGuard((self.launch)(self.port, self.store.path()));
        *self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        wait_port(self.port, self.what).await;
    }
}

/// Waits until something listens on `127.0.0.1:port`; panics naming `what` after two minutes.
pub async fn wait_port(port: u16, what: &str) {
    // Two minutes: a JVM broker (Kafka) that formats its store first takes several seconds to
    // listen, and far longer when a test file starts several at once on two loaded cores (a
    // minute was once not enough in a full run).
    for _ in 0..2400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not open port {port}");
}

/// Asserts that nothing is delivered within `wait`.
pub async fn assert_quiet(sub: &mut Box<dyn Subscription>, wait: Duration) {
    if let Ok(Ok(d)) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected no delivery, got {}", d.event.id());
    }
}

async fn publish_n(bus: &dyn EventBus, subject: &Subject, prefix: &str, n: u64) {
    for i in 0..n {
        bus.publish(subject, &sample_event(&format!("{prefix}-{i}"), i))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
    }
}

/// One consumer receives every event of its subject, in publish order, and none of another.
pub async fn delivers_in_order_with_filter(bus: &dyn EventBus, prefix: &str) {
    let a = Subject::event("ns", &format!("{prefix}-src"), "a");
    let b = Subject::event("ns", &format!("{prefix}-src"), "b");
    let mut sub = subscribe(bus, &format!("{prefix}-c"), &a, 1).await;
    for i in 0..20 {
        let subject = if i % 2 == 0 { &a } else { &b };
        bus.publish(subject, &sample_event(&format!("{prefix}-{i}"), i)).await.expect("publish");
    }
    for i in (0..20).step_by(2) {
        let (id, d) = next_id(&mut sub).await;
        assert_eq!(id, format!("{prefix}-{i}"), "order or filter broken");
        assert_eq!(d.subject, a);
        d.ack().await.expect("ack");
    }
    assert_quiet(&mut sub, Duration::from_millis(200)).await;
}

/// A consumer that starts at a time (a replay) reads exactly the events stored at or after
/// it; what the bus retains names an oldest event no later than the first; a removed
/// consumer starts afresh when subscribed again under its name.
pub async fn starts_at_a_time_and_removes_consumers(bus: &dyn EventBus, prefix: &str) {
    let subject = Subject::event("ns", &format!("{prefix}-src"), "a");
    for i in 0..5 {
        bus.publish(&subject, &sample_event(&format!("{prefix}-early-{i}"), i))
            .await
            .expect("publish");
    }
    // Brokers stamp in milliseconds, some from their own clock: leave a clear gap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        bus.publish(&subject, &sample_event(&format!("{prefix}-late-{i}"), i))
            .await
            .expect("publish");
    }
    let consumer = format!("{prefix}-replay");
    let mut options = SubscribeOptions::new(consumer.clone(), vec![subject.clone()]);
    options.start = StartPosition::Time(from);
    let mut sub = bus.subscribe(options.clone()).await.expect("subscribe at a time");
    for i in 0..5 {
        let (id, d) = next_id(&mut sub).await;
        assert_eq!(id, format!("{prefix}-late-{i}"), "exactly the events from the time on");
        d.ack().await.expect("ack");
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    let retained = bus.retained(std::slice::from_ref(&subject)).await.expect("retained");
    if let Some(oldest) = retained.oldest {
        assert!(oldest <= from, "the oldest event held ({oldest}) is no later than the first");
    }
    drop(sub);
    bus.remove_consumer(&consumer).await.expect("remove the consumer");
    bus.remove_consumer(&consumer).await.expect("removing it again is no error");
    // Gone with its position: under the same name it starts where it is told again.
    let mut sub = bus.subscribe(options).await.expect("subscribe again");
    let (id, d) = next_id(&mut sub).await;
    assert_eq!(id, format!("{prefix}-late-0"), "a removed consumer kept no position");
    d.ack().await.expect("ack");
    drop(sub);
    bus.remove_consumer(&consumer).await.expect("clean up");
}

/// A consumer named as the runtime names them (with `.`), reading two of three subjects whose
/// names need escaping, receives each of its two in order and nothing of the third. This is
/// a Trigger with two inputs; on a server that cannot filter by several subjects (NATS 2.9)
/// the backend must still deliver only these.
pub async fn reads_several_subjects_and_only_those(bus: &dyn EventBus, prefix: &str) {
    let source = format!("{prefix}.src");
    let (a, b, c) = (
        Subject::event("ns", &source, "a.x"),
        Subject::event("ns", &source, "b"),
        Subject::event("ns", &source, "c"),
    );
    let mut options =
        SubscribeOptions::new(format!("trigger.ns.{prefix}.0"), vec![a.clone(), b.clone()]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.unwrap_or_else(|e| panic!("subscribe: {e}"));
    for i in 0..30u64 {
        let subject = [&a, &b, &c][(i % 3) as usize];
        bus.publish(subject, &sample_event(&format!("{prefix}-{i}"), i)).await.expect("publish");
    }
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (id, d) = next_id(&mut sub).await;
        match &d.subject {
            s if *s == a => from_a.push(id),
            s if *s == b => from_b.push(id),
            other => panic!("{id} came from {other}, which the consumer does not read"),
        }
        d.ack().await.expect("ack");
    }
    let expect = |rest: u64| -> Vec<String> {
        (0..30).filter(|i| i % 3 == rest).map(|i| format!("{prefix}-{i}")).collect()
    };
    assert_eq!(from_a, expect(0), "the first subject's events, in order");
    assert_eq!(from_b, expect(1), "the second subject's events, in order");
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
}

/// Two buses on one broker (two teams' EventBuses: two streams, two topic prefixes) each see
/// exactly their own events, although both use the same subjects and consumer names, and
/// their state stores are apart.
pub async fn two_buses_on_one_broker_keep_apart(
    first: &dyn EventBus,
    second: &dyn EventBus,
    prefix: &str,
) {
    let subject = Subject::event("ns", &format!("{prefix}-src"), "e");
    let consumer = format!("trigger.ns.{prefix}.0");
    let mut subs = Vec::new();
    for bus in [first, second] {
        subs.push(subscribe(bus, &consumer, &subject, 16).await);
    }
    for (i, bus) in [first, second].into_iter().enumerate() {
        for n in 0..3u64 {
            let id = format!("{prefix}-bus{i}-{n}");
            bus.publish(&subject, &sample_event(&id, n)).await.expect("publish");
        }
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        for n in 0..3 {
            let (id, d) = next_id(sub).await;
            assert_eq!(id, format!("{prefix}-bus{i}-{n}"), "bus {i} sees its own events only");
            d.ack().await.expect("ack");
        }
        assert_quiet(sub, Duration::from_millis(300)).await;
    }
    let key = ofe_core::state_key(&[prefix, "shared key"]);
    let stores = [first.state_store().await, second.state_store().await];
    if let [Ok(Some(one)), Ok(Some(two))] = &stores {
        one.put(&key, b"first".to_vec(), None).await.expect("first bus writes");
        assert_eq!(two.get(&key).await.expect("read"), None, "the second bus's state is apart");
        two.put(&key, b"second".to_vec(), None).await.expect("second bus writes its own");
    }
}

/// A nacked delivery comes back after its delay, with its attempt count raised.
pub async fn nack_redelivers_after_delay(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let mut sub = subscribe(bus, &format!("{prefix}-c"), &s, 8).await;
    publish_n(bus, &s, prefix, 1).await;
    let (id, d) = next_id(&mut sub).await;
    assert_eq!(d.attempt, 1);
    let nacked_at = std::time::Instant::now();
    d.nack(Duration::from_millis(300)).await.expect("nack");
    let (again, d) = next_id(&mut sub).await;
    assert_eq!(again, id);
    assert_eq!(d.attempt, 2, "attempt count must grow on redelivery");
    assert!(nacked_at.elapsed() >= Duration::from_millis(250), "redelivered before its delay");
    d.ack().await.expect("ack");
    assert_quiet(&mut sub, Duration::from_millis(400)).await;
}

/// A delivery dropped without ack (a consumer that died) is delivered again.
pub async fn dropped_delivery_is_redelivered(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let consumer = format!("{prefix}-c");
    let mut first = subscribe(bus, &consumer, &s, 8).await;
    publish_n(bus, &s, prefix, 3).await;
    let (id0, d0) = next_id(&mut first).await;
    d0.ack().await.expect("ack");
    let (id1, d1) = next_id(&mut first).await;
    drop(d1);
    drop(first);
    let mut second = subscribe(bus, &consumer, &s, 8).await;
    let mut seen = HashSet::new();
    for _ in 0..2 {
        let (id, d) = next_id(&mut second).await;
        seen.insert(id);
        d.ack().await.expect("ack");
    }
    assert!(seen.contains(&id1), "the unacked event {id1} was lost");
    assert!(!seen.contains(&id0), "the acked event {id0} came back");
}

/// Two subscriptions with one name split the events; another name gets all of them. Events
/// carry 16 different `partitionkey`s, so backends that share by partition (Kafka) can split
/// them. `settle` is how long to let consumer groups form before publishing.
pub async fn same_name_shares_other_name_gets_all(
    bus: Arc<dyn EventBus>,
    prefix: &str,
    settle: Duration,
) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let shared = format!("{prefix}-shared");
    let one = subscribe(bus.as_ref(), &shared, &s, 4).await;
    let two = subscribe(bus.as_ref(), &shared, &s, 4).await;
    let other = subscribe(bus.as_ref(), &format!("{prefix}-other"), &s, 64).await;
    let (a, b, all) =
        (tokio::spawn(drain(one)), tokio::spawn(drain(two)), tokio::spawn(drain(other)));
    tokio::time::sleep(settle).await;
    for i in 0..40u64 {
        let mut event = sample_event(&format!("{prefix}-{i}"), i);
        event.set_extension("partitionkey", format!("key-{}", i % 16));
        bus.publish(&s, &event).await.expect("publish");
    }
    let (a, b, all) = (a.await.expect("join"), b.await.expect("join"), all.await.expect("join"));
    let union: HashSet<_> = a.iter().chain(&b).cloned().collect();
    assert_eq!(union.len(), a.len() + b.len(), "shared consumer delivered an event twice");
    assert_eq!(union.len(), 40, "shared consumer lost events");
    assert!(!a.is_empty() && !b.is_empty(), "one member got nothing: {} / {}", a.len(), b.len());
    assert_eq!(all.len(), 40, "a second consumer name must get every event");
}

/// Acks everything until the subscription is quiet for a second (after waiting patiently for
/// the first delivery); returns the ids.
async fn drain(mut sub: Box<dyn Subscription>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut wait = PATIENCE;
    while let Ok(Ok(d)) = tokio::time::timeout(wait, sub.next()).await {
        ids.push(d.event.id().to_string());
        // Hold each delivery a moment, so that both members of a shared consumer get a share.
        tokio::time::sleep(Duration::from_millis(2)).await;
        d.ack().await.expect("ack");
        wait = Duration::from_secs(1);
    }
    ids
}

/// A consumer never has more than `max_in_flight` unacknowledged deliveries.
pub async fn in_flight_is_bounded(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let mut sub = subscribe(bus, &format!("{prefix}-c"), &s, 3).await;
    publish_n(bus, &s, prefix, 10).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_id(&mut sub).await.1);
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    let first = held.remove(0);
    first.ack().await.expect("ack");
    let (_, d) = next_id(&mut sub).await;
    held.push(d);
    for d in held {
        d.ack().await.expect("ack");
    }
}

/// Events of 1 MiB go through intact.
pub async fn large_events_round_trip(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let mut sub = subscribe(bus, &format!("{prefix}-c"), &s, 8).await;
    let body = vec![b'x'; 1 << 20];
    let event = EventBuilderV10::new()
        .id(format!("{prefix}-big"))
        .source("ofe-test")
        .ty("ofe.test")
        .data("application/octet-stream", body.clone())
        .build()
        .expect("event");
    bus.publish(&s, &event).await.expect("publish 1 MiB");
    let (_, d) = next_id(&mut sub).await;
    let got: Vec<u8> = match d.event.data() {
        Some(cloudevents::Data::Binary(b)) => b.clone(),
        other => panic!("unexpected data {other:?}"),
    };
    assert_eq!(got.len(), body.len());
    assert!(got == body, "1 MiB body corrupted");
    d.ack().await.expect("ack");
}

/// Publishing the same `source` + `id` twice on one subject delivers it once; the same event
/// on another subject is a different placement, not a duplicate.
pub async fn duplicates_are_delivered_once(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let mut sub = subscribe(bus, &format!("{prefix}-c"), &s, 8).await;
    let event = sample_event(&format!("{prefix}-same"), 1);
    bus.publish(&s, &event).await.expect("publish");
    bus.publish(&s, &event).await.expect("publish again");
    bus.publish(&s, &sample_event(&format!("{prefix}-other"), 2)).await.expect("publish");
    let (first, d) = next_id(&mut sub).await;
    assert_eq!(first, format!("{prefix}-same"));
    d.ack().await.expect("ack");
    let (second, d) = next_id(&mut sub).await;
    assert_eq!(second, format!("{prefix}-other"), "the republished event was delivered twice");
    d.ack().await.expect("ack");
    let elsewhere = Subject::topic("ns", &format!("{prefix}-topic"));
    let mut topic_sub = subscribe(bus, &format!("{prefix}-t"), &elsewhere, 8).await;
    bus.publish(&elsewhere, &event).await.expect("publish to a topic");
    let (moved, d) = next_id(&mut topic_sub).await;
    assert_eq!(
        moved,
        format!("{prefix}-same"),
        "the same event under another subject is not a duplicate"
    );
    d.ack().await.expect("ack");
}

/// For backends whose broker drops duplicates: `publish` says so and returns the first
/// event's sequence.
pub async fn publish_reports_duplicates(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let event = sample_event(&format!("{prefix}-same"), 1);
    let first = bus.publish(&s, &event).await.expect("publish");
    let second = bus.publish(&s, &event).await.expect("publish again");
    assert!(!first.duplicate);
    assert!(second.duplicate, "second publish of the same id must be recognised");
    assert_eq!(first.sequence, second.sequence);
}

/// Opens a fresh handle to the same bus, as a restarted process would.
pub type Reopen =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Arc<dyn EventBus>> + Send + Sync>;

/// A restarted process resumes at the first unacknowledged event: acked events stay acked,
/// unacked ones come back, and publishing continues.
pub async fn restart_resumes_after_the_last_ack(reopen: Reopen, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let consumer = format!("{prefix}-c");
    {
        let bus = reopen().await;
        let mut sub = subscribe(bus.as_ref(), &consumer, &s, 16).await;
        publish_n(bus.as_ref(), &s, prefix, 10).await;
        for i in 0..4 {
            let (id, d) = next_id(&mut sub).await;
            assert_eq!(id, format!("{prefix}-{i}"));
            d.ack().await.expect("ack");
        }
        let (held, d) = next_id(&mut sub).await;
        assert_eq!(held, format!("{prefix}-4"));
        std::mem::forget(d); // as if the process died holding it
        bus.close().await.expect("close");
    }
    let bus = reopen().await;
    let mut sub = subscribe(bus.as_ref(), &consumer, &s, 16).await;
    bus.publish(&s, &sample_event(&format!("{prefix}-10"), 10))
        .await
        .expect("publish after restart");
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let (id, d) = next_id(&mut sub).await;
        if !seen.contains(&id) {
            seen.push(id);
        }
        d.ack().await.expect("ack");
    }
    let want: Vec<String> = (4..=10).map(|i| format!("{prefix}-{i}")).collect();
    let mut sorted = seen.clone();
    sorted.sort_by_key(|id| id.rsplit('-').next().and_then(|n| n.parse::<u32>().ok()));
    assert_eq!(
        sorted, want,
        "after a restart every unacked event must come back, and no acked one"
    );
    bus.close().await.expect("close");
}

/// With `max_deliver` set, a delivery is still made the `max_deliver + 1`-th time, so its owner
/// can hand it to the dead-letter path.
pub async fn delivers_once_past_max_deliver(bus: &dyn EventBus, prefix: &str) {
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let mut options = SubscribeOptions::new(format!("{prefix}-c"), vec![s.clone()]);
    options.start = StartPosition::All;
    options.max_deliver = Some(2);
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    publish_n(bus, &s, prefix, 1).await;
    for attempt in 1..=3 {
        let (_, d) = next_id(&mut sub).await;
        assert_eq!(d.attempt, attempt);
        if attempt < 3 {
            d.nack(Duration::ZERO).await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
    }
}

/// Publishes 40 events, restarting the broker with `restart` after the first 20 and publishing
/// through the outage as a source does (retrying until acknowledged); then every acknowledged
/// event must be delivered to a subscription opened before the restart.
pub async fn broker_restart_loses_nothing<F, Fut>(bus: &dyn EventBus, prefix: &str, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let s = Subject::event("ns", &format!("{prefix}-src"), "e");
    let mut sub = subscribe(bus, &format!("{prefix}-c"), &s, 64).await;
    let mut restart = Some(restart);
    let mut acked = Vec::new();
    for i in 0..40u64 {
        if i == 20
            && let Some(restart) = restart.take()
        {
            restart().await;
        }
        let id = format!("{prefix}-{i}");
        for _ in 0..100 {
            if bus.publish(&s, &sample_event(&id, i)).await.is_ok() {
                acked.push(id.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(acked.len(), 40, "publishing never recovered after the broker restart");
    let mut received = HashSet::new();
    while received.len() < acked.len() {
        let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!("stalled after {} of {} events", received.len(), acked.len())
            })
            .expect("delivery");
        received.insert(d.event.id().to_string());
        d.ack().await.expect("ack");
    }
    let missing: Vec<_> = acked.iter().filter(|id| !received.contains(*id)).collect();
    assert!(missing.is_empty(), "lost across the broker restart: {missing:?}");
}

/// Makes, with the `openssl` command, a CA (`ca.pem`) and a server certificate for 127.0.0.1
/// (`server.pem`, `server.key`) signed by it, in `dir`.
pub fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=ofe-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}
