//! The fault suite: ofe keeps its promises while things break. Each scenario drives the real
//! binary with a sustained stream and prints what it did and what it counted (run with
//! `cargo nextest run --test faults --no-capture` to see the counts).
//!
//! - `kill -9` of ofe every few seconds during a webhook stream, on the embedded bus, on
//!   JetStream and on Kafka: every event the webhook acknowledged (202) reaches the function;
//!   duplicates stay within what was in flight plus what settled just before each kill.
//! - `kill -9` after every event was delivered and the bus was quiet: nothing comes again.
//! - The function is down for 30 s: nothing is lost, and nothing is dead-lettered that a
//!   retry could deliver.
//! - The function takes 2 s per request: memory stays bounded, and the webhook pushes back
//!   (503) instead of a queue growing without end.
//! - Poison events (data a CEL filter cannot read, a broken CloudEvent, an oversized body, an
//!   event the function refuses): each goes to the dead-letter path or back to its sender,
//!   with the reason, while the rest flows.
//!
//! - The bus's broker (NATS JetStream, Kafka) is killed mid-stream and restarted 3 s later:
//!   the webhook refuses what the bus cannot take meanwhile, and every event it acknowledged
//!   reaches the function.
//! - The MQTT broker an EventSource reads restarts mid-stream: every message it acknowledged
//!   to its publisher, before and after, reaches the function.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use support::{KillOnDrop, Receiver, free_addr, manifests, start_ofe_with_webhooks, wait_ready};

/// A webhook EventSource `hook` (event `in`) and a Trigger `route` sending everything to
/// `BASE/fn`, on the EventBus `bus` (YAML appended; empty for the embedded bus).
fn stream_yaml(ns: &str, base: &str, subscriber_extra: &str, bus: &str) -> String {
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: hook, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    in: {{ maxPayloadSize: 4096 }}\n"
    ) + &support::trigger(
        ns,
        "route",
        "    all: { eventSource: hook, event: in }",
        &format!("  - condition: all\n    sink: {{ uri: \"{base}/fn\" }}\n{subscriber_extra}"),
    ) + bus
}

/// POSTs event `id` to the webhook in binary mode with JSON `data`; the status, or `None`
/// when nothing answered (ofe is down).
async fn post(client: &reqwest::Client, url: &str, id: &str, data: &str) -> Option<StatusCode> {
    send(client, url, &[("ce-id", id), ("content-type", "application/json")], data.to_string())
        .await
        .map(|(status, _)| status)
}

/// POSTs `body` with the binary-mode headers of a `faults.event` from `/faults`, replaced or
/// completed by `headers`; the status and the answer's text.
async fn send(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Option<(StatusCode, String)> {
    let mut all: BTreeMap<&str, &str> =
        [("ce-specversion", "1.0"), ("ce-source", "/faults"), ("ce-type", "faults.event")]
            .into_iter()
            .collect();
    all.extend(headers.iter().copied());
    let mut request = client.post(url).body(body).timeout(Duration::from_secs(5));
    for (name, value) in all {
        request = request.header(name, value);
    }
    let answer = request.send().await.ok()?;
    let status = StatusCode::from_u16(answer.status().as_u16()).ok()?;
    Some((status, answer.text().await.unwrap_or_default()))
}

/// Sends events `{prefix}-0` .. `{prefix}-{total-1}` to `url`, one every `every`, each until
/// the webhook answers 202 (retrying refusals and a process that is down); returns the ids
/// acknowledged and how many attempts were refused or unanswered.
async fn stream(
    url: String,
    prefix: &'static str,
    total: usize,
    every: Duration,
) -> (BTreeSet<String>, usize) {
    let client = support::http();
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for n in 0..total {
        let id = format!("{prefix}-{n}");
        let started = Instant::now();
        loop {
            match post(&client, &url, &id, &format!("{{\"n\":{n}}}")).await {
                Some(StatusCode::ACCEPTED) => break,
                _ => refused += 1,
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{id} was never accepted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acknowledged.insert(id);
        tokio::time::sleep(every).await;
    }
    (acknowledged, refused)
}

/// The `ce-id`s `receiver` got on `path`, with how often each came.
fn arrivals(receiver: &Receiver, path: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for got in receiver.on(path) {
        *seen.entry(got.header("ce-id")).or_insert(0) += 1;
    }
    seen
}

/// Waits (up to `limit`) until every id of `acknowledged` reached the function (`/fn`);
/// how many distinct events arrived, and how many deliveries repeated one.
async fn all_arrive(
    receiver: &Receiver,
    acknowledged: &BTreeSet<String>,
    limit: Duration,
) -> (usize, usize) {
    receiver
        .wait_for(limit, "every acknowledged event at the function", |r| {
            let seen = arrivals(r, "/fn");
            acknowledged.iter().all(|id| seen.contains_key(id))
        })
        .await;
    let seen = arrivals(receiver, "/fn");
    let deliveries: usize = seen.values().sum();
    (seen.len(), deliveries - seen.len())
}

/// A running `ofe run` on fixed addresses, so a restart takes over the webhook's port.
struct Process {
    folder: PathBuf,
    data: PathBuf,
    listen: SocketAddr,
    webhooks: SocketAddr,
    child: KillOnDrop,
}

impl Process {
    async fn start(folder: &Path, data: &Path) -> Self {
        let (listen, webhooks) = (free_addr(), free_addr());
        let child = KillOnDrop(start_ofe_with_webhooks(folder, data, listen, webhooks));
        wait_ready(listen).await;
        Self { folder: folder.into(), data: data.into(), listen, webhooks, child }
    }

    fn hook_url(&self, ns: &str) -> String {
        format!("http://{}/{ns}/hook/in", self.webhooks)
    }

    /// SIGKILL, then the same process again on the same data and ports; when it was killed.
    async fn kill_9_and_restart(&mut self) -> Instant {
        self.child.0.kill().expect("kill -9");
        let killed = Instant::now();
        self.child.0.wait().expect("reap");
        self.child = KillOnDrop(start_ofe_with_webhooks(
            &self.folder,
            &self.data,
            self.listen,
            self.webhooks,
        ));
        wait_ready(self.listen).await;
        killed
    }

    /// The process's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Deliveries the scenarios allow in flight at once (`delivery.maxConcurrency`): what a crash
/// may find unsettled.
const IN_FLIGHT: usize = 16;

/// How long a delivery that settled may still be unrecorded when the process dies: the bus
/// writes settled positions every 100 ms; the rest is the write's own time.
const SETTLED_WINDOW: Duration = Duration::from_millis(250);

/// The subscriber settings of the kill scenarios.
fn bounded_in_flight() -> String {
    format!("    delivery: {{ maxConcurrency: {IN_FLIGHT} }}\n")
}

/// The redeliveries a crash at each of `kills` may cause: what was in flight, plus what had
/// settled within [`SETTLED_WINDOW`] before it (counted from what the function received).
fn redelivery_bound(receiver: &Receiver, kills: &[Instant]) -> usize {
    let arrived: Vec<Instant> = receiver.on("/fn").iter().map(|r| r.at).collect();
    kills
        .iter()
        .map(|kill| {
            let settled = arrived
                .iter()
                .filter(|at| **at <= *kill && kill.duration_since(**at) <= SETTLED_WINDOW)
                .count();
            IN_FLIGHT + settled
        })
        .sum()
}

/// `ofe run` in a namespace of its own, with the webhook stream of [`stream_yaml`] on the bus
/// `bus(namespace)` defines and [`IN_FLIGHT`] deliveries at once: the namespace, the function,
/// the data folder (kept while the scenario runs) and the process.
async fn bounded_stream(
    bus: impl FnOnce(&str) -> String,
) -> (String, Receiver, tempfile::TempDir, Process) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = stream_yaml(&ns, &base, &bounded_in_flight(), &bus(&ns));
    let ofe = Process::start(&manifests(dir.path(), &yaml), &dir.path().join("data")).await;
    (ns, receiver, dir, ofe)
}

/// `kill -9` `kills` times, `every` apart, while events stream in at 100/s; then every
/// acknowledged event must reach the function, and the duplicates must stay within what was
/// in flight and just settled at each kill.
async fn kill_9_repeatedly(
    name: &str,
    bus: impl FnOnce(&str) -> String,
    kills: u32,
    every: Duration,
) {
    let (ns, receiver, _dir, mut ofe) = bounded_stream(bus).await;
    let total = (every.as_secs_f64() * f64::from(kills + 1) * 100.0) as usize;
    let sender = tokio::spawn(stream(ofe.hook_url(&ns), "e", total, Duration::from_millis(10)));
    let mut killed = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(every).await;
        killed.push(ofe.kill_9_and_restart().await);
    }
    let (acknowledged, refused) = sender.await.expect("sender");
    let (delivered, duplicates) =
        all_arrive(&receiver, &acknowledged, Duration::from_secs(90)).await;
    let bound = redelivery_bound(&receiver, &killed);
    println!(
        "kill -9 ×{kills} every {every:?} on the {name} bus: {} acknowledged ({refused} attempts \
         refused or unanswered while down), {} delivered, 0 lost, {} duplicate deliveries \
         (bound: {bound} = {IN_FLIGHT} in flight per kill + what settled in the {SETTLED_WINDOW:?} \
         before each)",
        acknowledged.len(),
        delivered,
        duplicates
    );
    assert!(duplicates <= bound, "{duplicates} duplicates exceed the bound of {bound}");
}

/// Every event delivered, a quiet spell, then `kill -9` and a restart: nothing was in flight
/// and nothing settled just before, so nothing may come again. (Before settled positions
/// reached the OS at once, the embedded bus replayed almost all of them.)
async fn kill_9_after_quiet_replays_nothing(name: &str, bus: impl FnOnce(&str) -> String) {
    let (ns, receiver, _dir, mut ofe) = bounded_stream(bus).await;
    let (acknowledged, _) = stream(ofe.hook_url(&ns), "e", 300, Duration::from_millis(5)).await;
    all_arrive(&receiver, &acknowledged, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = ofe.kill_9_and_restart().await;
    // A marker sent after the restart arrives after anything the restart would replay.
    let (marker, _) = stream(ofe.hook_url(&ns), "after-restart", 1, Duration::ZERO).await;
    all_arrive(&receiver, &marker, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = arrivals(&receiver, "/fn");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let bound = redelivery_bound(&receiver, &[killed]) - IN_FLIGHT;
    println!(
        "kill -9 after 2 s of quiet on the {name} bus: {} acknowledged, {} delivered, 0 lost, \
         {duplicates} duplicate deliveries (bound: {bound}, nothing in flight or just settled)",
        acknowledged.len(),
        seen.len() - marker.len(),
    );
    assert!(duplicates <= bound, "{duplicates} settled events came again after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_quiet_replays_nothing_on_the_embedded_bus() {
    kill_9_after_quiet_replays_nothing("embedded", |_| String::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn kill_9_after_quiet_replays_nothing_on_jetstream() {
    let url = support::broker_var("OFE_TEST_NATS");
    kill_9_after_quiet_replays_nothing("JetStream", |ns| support::jetstream_bus(ns, &url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn kill_9_after_quiet_replays_nothing_on_kafka() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    kill_9_after_quiet_replays_nothing("Kafka", |ns| support::kafka_bus(ns, &brokers)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_few_seconds_loses_nothing_on_the_embedded_bus() {
    kill_9_repeatedly("embedded", |_| String::new(), 4, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn kill_9_every_few_seconds_loses_nothing_on_jetstream() {
    let url = support::broker_var("OFE_TEST_NATS");
    kill_9_repeatedly(
        "JetStream",
        |ns| support::jetstream_bus(ns, &url),
        4,
        Duration::from_secs(3),
    )
    .await;
}

/// Kafka consumer groups take seconds to form, and a killed member holds its partitions until
/// its session (10 s) times out: the kills come further apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka),
    ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
)]
async fn kill_9_every_few_seconds_loses_nothing_on_kafka() {
    let brokers = support::broker_var("OFE_TEST_KAFKA");
    kill_9_repeatedly("Kafka", |ns| support::kafka_bus(ns, &brokers), 2, Duration::from_secs(12))
        .await;
}

/// Starts a broker on a port, with a store.
type StartBroker = Box<dyn Fn(u16, &Path) -> std::process::Child + Send>;

/// A broker of the test's own, on a free port with a store of its own, that can be killed
/// and started again on both.
struct Broker {
    start: StartBroker,
    port: u16,
    store: tempfile::TempDir,
    child: KillOnDrop,
}

impl Broker {
    async fn launch(start: impl Fn(u16, &Path) -> std::process::Child + Send + 'static) -> Self {
        let port = free_addr().port();
        let store = tempfile::tempdir().expect("tempdir");
        let child = KillOnDrop(start(port, store.path()));
        ofe_testkit::wait_port(port, "the test's broker").await;
        Self { start: Box::new(start), port, store, child }
    }

    /// `kill -9` of the broker, `down` of silence, and the broker again on its port and store;
    /// when it was killed.
    async fn restart_after(&mut self, down: Duration) -> Instant {
        self.child.0.kill().expect("kill -9 the broker");
        let killed = Instant::now();
        self.child.0.wait().expect("reap");
        tokio::time::sleep(down).await;
        self.child = KillOnDrop((self.start)(self.port, self.store.path()));
        ofe_testkit::wait_port(self.port, "the restarted broker").await;
        killed
    }
}

/// The bus's broker is killed (`kill -9`) while events stream in at 100/s, and comes back
/// 3 s later: the webhook refuses what the bus cannot take meanwhile (503, retried by the
/// sender), and every event it acknowledged reaches the function.
async fn bus_broker_restarts_mid_stream(
    name: &str,
    mut broker: Broker,
    bus: impl Fn(&str, u16) -> String,
) {
    let (ns, receiver, _dir, ofe) = bounded_stream(|ns| bus(ns, broker.port)).await;
    let sender = tokio::spawn(stream(ofe.hook_url(&ns), "e", 800, Duration::from_millis(10)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = arrivals(&receiver, "/fn").len();
    let killed = broker.restart_after(Duration::from_secs(3)).await;
    let back = Instant::now();
    let (acknowledged, refused) = sender.await.expect("sender");
    let (delivered, duplicates) =
        all_arrive(&receiver, &acknowledged, Duration::from_secs(120)).await;
    // Settlements sent to a dead broker are lost like a crashed process's: the bound is the same.
    let bound = redelivery_bound(&receiver, &[killed]);
    println!(
        "{name} broker kill -9 and restart after 3 s, mid-stream: {} acknowledged ({before} \
         delivered before the kill; webhook requests refused while it was down: {refused}), {} delivered, \
         0 lost, {} duplicate deliveries (bound: {bound}); all in {:.1} s after it came back",
        acknowledged.len(),
        delivered,
        duplicates,
        back.elapsed().as_secs_f64()
    );
    assert!(duplicates <= bound, "{duplicates} duplicates exceed the bound of {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn the_jetstream_broker_restarts_mid_stream_and_nothing_is_lost() {
    let binary = support::broker_var("OFE_TEST_NATS_SERVER");
    let broker = Broker::launch(move |port, store| {
        ofe_testkit::start_nats_server(&binary, port, store, &[])
    })
    .await;
    bus_broker_restarts_mid_stream("JetStream", broker, |ns, port| {
        support::jetstream_bus(ns, &format!("nats://127.0.0.1:{port}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_kafka_server),
    ignore = "needs OFE_TEST_KAFKA_SERVER (scripts/test.sh starts the services)"
)]
async fn the_kafka_broker_restarts_mid_stream_and_nothing_is_lost() {
    let binary = support::broker_var("OFE_TEST_KAFKA_SERVER");
    let broker = Broker::launch(move |port, store| {
        ofe_testkit::start_kafka_broker(&binary, port, store, &[])
    })
    .await;
    bus_broker_restarts_mid_stream("Kafka", broker, |ns, port| {
        support::kafka_bus(ns, &format!("127.0.0.1:{port}"))
    })
    .await;
}

/// Publishes `payloads` to `topic` at QoS 1 with a client of its own, one every 5 ms, and
/// returns once the broker has acknowledged (PUBACK) every one. While the broker is away, the
/// client reconnects, and then sends again what it had not had acknowledged (a persistent
/// session).
async fn publish_acknowledged(port: u16, client_id: String, topic: String, payloads: Vec<String>) {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut events) = rumqttc::AsyncClient::new(options, payloads.len() + 8);
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = acked.clone();
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let total = payloads.len();
    for payload in payloads {
        client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    while acked.load(Ordering::SeqCst) < total {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the broker did not acknowledge every message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poller.abort();
}

/// The MQTT broker ofe reads from restarts (SIGTERM, as in an upgrade; it keeps its sessions
/// on disk) right after a burst, while ofe is still taking it in, and is back 3 s later:
/// every message the broker acknowledged to its publisher, before and after, reaches the
/// function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mosquitto_server),
    ignore = "needs OFE_TEST_MOSQUITTO_SERVER (scripts/test.sh starts the services)"
)]
async fn the_mqtt_broker_restarts_mid_stream_and_nothing_is_lost() {
    let binary = support::broker_var("OFE_TEST_MOSQUITTO_SERVER");
    let mut broker = Broker::launch(move |port, store| {
        let config = store.join("mosquitto.conf");
        let text = format!(
            // `user`: started as root, mosquitto would drop to its own user, which cannot
            // write the session store in the test's directory.
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\nuser {}\n\
             persistence_location {}/\nautosave_interval 1\n",
            std::env::var("USER").unwrap_or_else(|_| "root".into()),
            store.display()
        );
        std::fs::write(&config, text).expect("mosquitto.conf");
        std::process::Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("OFE_TEST_MOSQUITTO_SERVER={binary}: {e}"))
    })
    .await;
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let topic = format!("fleet/{ns}/telemetry");
    let url = format!("tcp://127.0.0.1:{}", broker.port);
    let yaml = support::mqtt_to_sink(&ns, "fleet", &url, &topic, &format!("{base}/fn"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ofe = Process::start(&manifests(dir.path(), &yaml), &dir.path().join("data")).await;
    support::wait_ready_status(ofe.listen, "EventSource", "fleet", "True").await;
    let payloads = |range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|n| format!("{{\"vehicle\":\"v{}\",\"n\":{n}}}", n % 7)).collect()
    };
    let total = 1000;
    let publisher = tokio::spawn(publish_acknowledged(
        broker.port,
        format!("publisher-{ns}"),
        topic,
        payloads(0..total),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = receiver.on("/fn").len();
    // SIGTERM: the broker writes its sessions, queued messages included, before it exits.
    let pid = broker.child.0.id().to_string();
    let stopped = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let stopped_at = Instant::now();
    assert!(stopped.success());
    broker.child.0.wait().expect("reap");
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.child = KillOnDrop((broker.start)(broker.port, broker.store.path()));
    ofe_testkit::wait_port(broker.port, "the restarted broker").await;
    let back = Instant::now();
    publisher.await.expect("publisher");
    let wanted: BTreeSet<String> = payloads(0..total).into_iter().collect();
    let start = Instant::now();
    loop {
        let got: BTreeSet<String> = receiver
            .on("/fn")
            .iter()
            .map(|x| String::from_utf8_lossy(&x.body).into_owned())
            .collect();
        let missing: Vec<&String> = wanted.difference(&got).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {total} acknowledged messages never reached the function; the first: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries = receiver.on("/fn").len();
    // The broker hands back what ofe had not acknowledged to it; the bus knows those events
    // by their derived ids. The bound is the crash bound, at the broker's stop.
    let bound = redelivery_bound(&receiver, &[stopped_at]);
    let duplicates = deliveries - total;
    println!(
        "MQTT broker restart mid-stream (SIGTERM, back after 3 s): {total} messages the broker \
         acknowledged to their publisher ({before} at the function when it stopped), {total} \
         delivered, 0 lost, {duplicates} duplicate deliveries (bound: {bound}); all in {:.1} s \
         after it came back",
        back.elapsed().as_secs_f64()
    );
    assert!(duplicates <= bound, "{duplicates} duplicates exceed the bound of {bound}");
}

/// Deliveries that repeated an event, among the ids a troubled function recorded (only its
/// successful answers): nothing crashed, so the bound is 0.
fn repeated(seen: &std::sync::Mutex<Vec<String>>) -> usize {
    let seen = seen.lock().expect("lock");
    let distinct: BTreeSet<&String> = seen.iter().collect();
    seen.len() - distinct.len()
}

/// What a troubled function does while its trouble lasts.
#[derive(Clone, Copy)]
enum Trouble {
    /// Answers 503.
    Down,
    /// Takes 2 s per request.
    Slow,
}

/// A function that records each event's id, and has `trouble` while `now` is set.
async fn troubled_function(
    trouble: Trouble,
    now: Arc<AtomicBool>,
) -> (Arc<std::sync::Mutex<Vec<String>>>, String) {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let (seen, now) = (seen.clone(), now.clone());
            async move {
                if now.load(Ordering::SeqCst) {
                    match trouble {
                        Trouble::Down => return StatusCode::SERVICE_UNAVAILABLE,
                        Trouble::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
                    }
                }
                let id = headers.get("ce-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                seen.lock().expect("lock").push(id.to_string());
                StatusCode::OK
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, base)
}

/// Waits until every id of `wanted` is in `seen`; panics after a minute.
async fn wait_all(seen: &std::sync::Mutex<Vec<String>>, wanted: &BTreeSet<String>) {
    let start = Instant::now();
    loop {
        let got: BTreeSet<String> = seen.lock().expect("lock").iter().cloned().collect();
        if wanted.is_subset(&got) {
            return;
        }
        let (have, want) = (got.intersection(wanted).count(), wanted.len());
        assert!(start.elapsed() < Duration::from_secs(60), "{have} of {want} arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The function answers 503 for 30 s: with retries that outlast it, every event arrives
/// once it is back, and none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_down_for_30_seconds_loses_nothing() {
    let down = Arc::new(AtomicBool::new(true));
    let (seen, base) = troubled_function(Trouble::Down, down.clone()).await;
    let outage = Instant::now();
    let (dead, dead_base) = Receiver::start().await;
    let retries = format!(
        "    deadLetterSink: {{ uri: \"{dead_base}/dead\" }}\n    \
         delivery: {{ retry: 100, backoffPolicy: linear, backoffDelay: PT0.5S }}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &stream_yaml("default", &base, &retries, ""));
    let ofe = Process::start(&folder, &dir.path().join("data")).await;
    let (acknowledged, _) =
        stream(ofe.hook_url("default"), "e", 300, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    wait_all(&seen, &acknowledged).await;
    assert!(dead.on("/dead").is_empty(), "nothing was dead-lettered that a retry could deliver");
    let metrics = support::get(&format!("http://{}/metrics", ofe.listen)).await;
    let retried = support::counter(
        &metrics,
        "ofe_trigger_delivery_retries_total{namespace=\"default\",trigger=\"route\"",
    );
    let duplicates = repeated(&seen);
    println!(
        "function down for 30 s: {} acknowledged, {} delivered {:.1} s after it came back, \
         0 lost, {duplicates} duplicate deliveries (bound: 0), {retried} retries, 0 dead-lettered",
        acknowledged.len(),
        acknowledged.len(),
        back.elapsed().as_secs_f64()
    );
    assert_eq!(duplicates, 0, "a successful delivery was repeated");
}

/// The function takes 2 s per request (4 at a time) while 1 KiB events are offered at
/// 200/s for 15 s: the bus's backlog limit makes the webhook answer 503 instead of a queue
/// growing, ofe's memory stays bounded, and once the function is fast again every accepted
/// event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_function_pushes_back_on_the_source_with_bounded_memory() {
    let slow = Arc::new(AtomicBool::new(true));
    let (seen, base) = troubled_function(Trouble::Slow, slow.clone()).await;
    let bus = "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
               metadata: { name: default, namespace: default }\n\
               spec:\n  embedded: { maxBytes: 1048576 }\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "    delivery: { maxConcurrency: 4 }\n";
    let folder = manifests(dir.path(), &stream_yaml("default", &base, extra, bus));
    let ofe = Process::start(&folder, &dir.path().join("data")).await;
    let url = ofe.hook_url("default");
    let client = support::http();
    let padding = "x".repeat(1000);
    let (mut accepted, mut pushed_back, mut peak_kib) = (BTreeSet::new(), 0, 0);
    let start_kib = ofe.rss_kib();
    let started = Instant::now();
    for n in 0..3000 {
        let id = format!("e-{n}");
        let data = format!("{{\"n\":{n},\"pad\":\"{padding}\"}}");
        match post(&client, &url, &id, &data).await {
            Some(StatusCode::ACCEPTED) => {
                accepted.insert(id);
            }
            Some(StatusCode::SERVICE_UNAVAILABLE) => pushed_back += 1,
            other => panic!("unexpected answer to {id}: {other:?}"),
        }
        if n % 100 == 0 {
            peak_kib = peak_kib.max(ofe.rss_kib());
        }
        let due = started + Duration::from_millis(5 * (n + 1));
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    assert!(pushed_back > 0, "the webhook never pushed back ({} accepted)", accepted.len());
    // 3000 events of 1 KiB were offered; a queue taking them all would hold 3 MiB and more.
    assert!(accepted.len() < 1000, "{} accepted: the backlog was not bounded", accepted.len());
    assert!(peak_kib < start_kib + 64 * 1024, "memory grew from {start_kib} KiB to {peak_kib} KiB");
    slow.store(false, Ordering::SeqCst);
    wait_all(&seen, &accepted).await;
    let duplicates = repeated(&seen);
    println!(
        "slow function (2 s per request, 4 at a time), 3000 events offered at 200/s: {} accepted, \
         {pushed_back} pushed back with 503, memory {start_kib} KiB at start and at most \
         {peak_kib} KiB, all {} delivered once the function was fast again, 0 lost, \
         {duplicates} duplicate deliveries (bound: 0)",
        accepted.len(),
        accepted.len()
    );
    assert_eq!(duplicates, 0, "a successful delivery was repeated");
}

/// Poison events do not block the stream: data a CEL filter cannot read is filtered out, a
/// broken CloudEvent and an oversized body go back to their sender with the reason, and an
/// event the function keeps failing on goes to the dead-letter sink with the reason, while
/// the good events around them all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_take_the_dead_letter_path_while_the_rest_flows() {
    let (receiver, base) = Receiver::start().await;
    let yaml = String::from(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: { name: hook, namespace: default }\n\
         spec:\n  eventBus: default\n  webhook:\n    in: { maxPayloadSize: 4096 }\n",
    ) + &support::trigger(
        "default",
        "route",
        "    fast:\n      eventSource: hook\n      event: in\n      filters:\n        - cel: \"type == 'faults.event' && data.speed > 120.0\"\n\
         \x20   reject:\n      eventSource: hook\n      event: in\n      filters:\n        - exact: { type: faults.reject }",
        &format!(
            "  - condition: fast\n    sink: {{ uri: \"{base}/fn\" }}\n    \
             deadLetterSink: {{ uri: \"{base}/poison\" }}\n\
             \x20 - condition: reject\n    sink: {{ uri: \"{base}/fail\" }}\n    \
             deadLetterSink: {{ uri: \"{base}/dead\" }}\n    delivery: {{ retry: 1, backoffDelay: PT0.1S }}\n"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ofe = Process::start(&manifests(dir.path(), &yaml), &dir.path().join("data")).await;
    let url = ofe.hook_url("default");
    let client = support::http();
    let json = |id: &str| {
        vec![("ce-id", id.to_string()), ("content-type", "application/json".to_string())]
    };
    let (mut good, mut answers) = (Vec::new(), BTreeMap::new());
    for round in 0..20 {
        let id = format!("good-{round}");
        let headers = json(&id);
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _) = send(&client, &url, &h, "{\"speed\":150}".into()).await.expect("answer");
        assert_eq!(status, StatusCode::ACCEPTED);
        good.push(id);
        // Data no filter can read as JSON.
        let garbled = format!("garbled-{round}");
        let poison: Vec<(&str, &str, String, &str)> = vec![
            ("unreadable data", &garbled, "{not json".into(), "application/json"),
            ("broken CloudEvent", "broken", "{}".into(), "application/json"),
            ("oversized body", "big", "x".repeat(8192), "text/plain"),
        ];
        for (what, id, body, content_type) in poison {
            let mut h = vec![("ce-id", id), ("content-type", content_type)];
            if what == "broken CloudEvent" {
                h.push(("ce-specversion", "0.9"));
            }
            let (status, reason) = send(&client, &url, &h, body).await.expect("answer");
            answers.entry(what).or_insert_with(|| (status, reason.trim().to_string()));
        }
        let reject = format!("reject-{round}");
        let h = [
            ("ce-id", reject.as_str()),
            ("ce-type", "faults.reject"),
            ("content-type", "application/json"),
        ];
        let (status, _) = send(&client, &url, &h, "{}".into()).await.expect("answer");
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    receiver
        .wait_for(Duration::from_secs(30), "the good events and the dead letters", |r| {
            r.on("/fn").len() >= 20 && r.on("/dead").len() >= 20 && r.on("/poison").len() >= 20
        })
        .await;
    let delivered: BTreeSet<String> =
        receiver.on("/fn").iter().map(|r| r.header("ce-id")).collect();
    assert_eq!(
        delivered,
        good.iter().cloned().collect(),
        "exactly the good events reach the function"
    );
    for dead in receiver.on("/dead") {
        assert!(dead.header("ce-id").starts_with("reject-"), "{}", dead.header("ce-id"));
        assert_eq!(dead.header("ce-ofeerrorcode"), "500");
        assert!(
            dead.header("ce-ofeerrorreason").contains("HTTP 500"),
            "{}",
            dead.header("ce-ofeerrorreason")
        );
    }
    let (status, reason) = &answers["unreadable data"];
    assert_eq!(*status, StatusCode::ACCEPTED, "the bus takes it: only the filter cannot read it");
    // Data the filter cannot read goes to the dead letter of the subscriber whose filter
    // reads it, with the reason, and never to its function.
    let poisoned = receiver.on("/poison");
    let why = poisoned.first().map(|p| p.header("ce-ofeerrorreason")).unwrap_or_default();
    for p in &poisoned {
        assert!(p.header("ce-id").starts_with("garbled-"), "{}", p.header("ce-id"));
        assert!(
            p.header("ce-ofeerrorreason").contains("not the JSON its content type"),
            "{}",
            p.header("ce-ofeerrorreason")
        );
        // No attempt was made: no response, no attempts.
        assert_eq!(
            (p.header("ce-ofeerrorcode"), p.header("ce-ofeerrorattempts")),
            ("0".into(), "0".into())
        );
    }
    let (status, reason_broken) = &answers["broken CloudEvent"];
    assert_eq!(*status, StatusCode::BAD_REQUEST, "{reason_broken}");
    let (status_big, reason_big) = &answers["oversized body"];
    assert_eq!(*status_big, StatusCode::PAYLOAD_TOO_LARGE, "{reason_big}");
    let metrics = support::get(&format!("http://{}/metrics", ofe.listen)).await;
    let dead_lettered = support::counter(
        &metrics,
        "ofe_trigger_events_dead_lettered_total{namespace=\"default\",trigger=\"route\",subscriber=\"0\"",
    );
    assert!(
        dead_lettered >= 20,
        "the unreadable events count as dead-lettered: {dead_lettered}\n{metrics}"
    );
    println!(
        "poison events, 20 rounds: 20 good delivered; 20 unreadable-data events accepted ({reason}) \
         and dead-lettered ({why}); 20 broken CloudEvents answered {status} ({reason_broken}); 20 \
         oversized bodies answered {status_big} ({reason_big}); 20 events the function fails on \
         dead-lettered with their reason"
    );
}

/// The stream's leader among three NATS servers is killed (`kill -9`) mid-stream and started
/// again 8 s later, under two ofe replicas that share the R3 stream and its durable consumers,
/// each taking half of a webhook stream. Every event a webhook acknowledged reaches the
/// function; duplicates stay within what the replicas had in flight plus what settled just
/// before the kill; each replica's log tells what happened in a few lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_nats_cluster, ofe_test_nats_server)),
    ignore = "needs OFE_TEST_NATS_CLUSTER, OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn the_nats_stream_leader_dies_under_two_replicas_and_nothing_is_lost() {
    let urls = support::broker_var("OFE_TEST_NATS_CLUSTER");
    let cluster = PathBuf::from(support::broker_var("OFE_TEST_NATS_CLUSTER_DIR"));
    let server = support::broker_var("OFE_TEST_NATS_SERVER");
    let ns = support::unique_namespace();
    let stream_name = format!("r3-{ns}");
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A short ack wait, so a delivery whose ack died with the leader comes again within the
    // scenario and is counted.
    let bus = format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {ns} }}\nspec:\n  jetstream:\n    \
         url: \"{urls}\"\n    stream: {stream_name}\n    replicas: 3\n    ackWait: 5s\n"
    );
    let folder = manifests(dir.path(), &stream_yaml(&ns, &base, &bounded_in_flight(), &bus));
    let replica = |name: &str| {
        let (listen, webhooks) = (free_addr(), free_addr());
        let log = dir.path().join(format!("{name}.log"));
        let child = support::ofe_run(&folder, &dir.path().join(name), listen)
            .args(["--webhook-listen", &webhooks.to_string()])
            .args(["--log-level", "info,lsm_tree=warn,fjall=warn"])
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ofe run");
        (KillOnDrop(child), listen, format!("http://{webhooks}/{ns}/hook/in"), log)
    };
    let (_a, listen_a, hook_a, log_a) = replica("a");
    wait_ready(listen_a).await;
    let (_b, listen_b, hook_b, log_b) = replica("b");
    wait_ready(listen_b).await;

    // The leader, as the cluster reports it.
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let leader = || {
        let (js, name) = (js.clone(), stream_name.clone());
        async move {
            let mut stream = js.get_stream(&name).await.ok()?;
            stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
        }
    };
    let per_replica = 1000;
    let senders = [
        tokio::spawn(stream(hook_a, "a", per_replica, Duration::from_millis(10))),
        tokio::spawn(stream(hook_b, "b", per_replica, Duration::from_millis(10))),
    ];
    tokio::time::sleep(Duration::from_secs(4)).await;
    let old = leader().await.expect("the stream has a leader");
    let pid = std::fs::read_to_string(cluster.join(format!("{old}.pid"))).expect("pid file");
    let killed = Instant::now();
    let status = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -9 {old}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Started again as services.sh started it, and left running for later tests.
    let config = cluster.join(format!("{old}.conf"));
    #[expect(
        clippy::zombie_processes,
        reason = "the server outlives the test, as services.sh's did"
    )]
    let _restarted = std::process::Command::new(&server)
        .arg("-c")
        .arg(&config)
        .stdout(std::fs::File::create(cluster.join(format!("{old}.restarted.log"))).expect("log"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restart the NATS server");
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for sender in senders {
        let (ids, r) = sender.await.expect("sender");
        acknowledged.extend(ids);
        refused += r;
    }
    all_arrive(&receiver, &acknowledged, Duration::from_secs(90)).await;
    // Deliveries whose acks died with the leader come again after the ack wait.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let seen = arrivals(&receiver, "/fn");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    // Two replicas: each may have had IN_FLIGHT deliveries whose acks were lost.
    let bound = redelivery_bound(&receiver, &[killed]) + IN_FLIGHT;
    let new = leader().await.unwrap_or_default();
    let story = |log: &Path| -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    };
    let (story_a, story_b) = (story(&log_a), story(&log_b));
    println!(
        "NATS cluster, stream leader {old} killed, back 8 s later (new leader {new}): {} acknowledged \
         ({refused} attempts refused meanwhile), all delivered, {duplicates} duplicates (bound {bound}); \
         the replicas' warnings and errors:\n  a: {story_a:#?}\n  b: {story_b:#?}",
        acknowledged.len(),
    );
    assert!(duplicates <= bound, "{duplicates} duplicates exceed the bound of {bound}");
    for (name, story) in [("a", &story_a), ("b", &story_b)] {
        assert!(story.len() <= 10, "replica {name}'s log is a flood, not a story: {story:#?}");
    }
}
