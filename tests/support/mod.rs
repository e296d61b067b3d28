//! Helpers for tests that drive the `ofe` binary: a recording HTTP receiver, and process
//! control.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};

/// One request the receiver saw.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// A header as text, or "".
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }
}

/// An HTTP server on a free loopback port that records every request. It answers 500 on
/// `/fail`, 500 on `/flaky` while [`Receiver::set_flaky`] says so (or since a request to
/// `/control/break`, until one to `/control/restore`: for a browser test's script), and 200
/// elsewhere.
#[derive(Clone, Default)]
pub struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    flaky: Arc<std::sync::atomic::AtomicBool>,
}

/// Records a request (the receiver's handler, for servers of a test's own).
pub async fn record(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    match path.as_str() {
        "/control/break" => r.set_flaky(true),
        "/control/restore" => r.set_flaky(false),
        _ => {}
    }
    let fail =
        path == "/fail" || (path == "/flaky" && r.flaky.load(std::sync::atomic::Ordering::SeqCst));
    let slow = path == "/slow";
    let status = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    let at = Instant::now();
    let status_code = status.as_u16();
    r.seen.lock().expect("lock").push(Received { path, headers, body, at, status: status_code });
    if slow {
        // Keeps deliveries in flight, so a crash lands while some are unacknowledged.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    status
}

impl Receiver {
    /// Starts the receiver; returns it and its base URL.
    pub async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = Self::default();
        let app = Router::new().fallback(record).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, format!("http://{addr}"))
    }

    /// Makes `/flaky` fail (`true`) or answer 200 (`false`).
    pub fn set_flaky(&self, failing: bool) {
        self.flaky.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Everything received on `path`.
    pub fn on(&self, path: &str) -> Vec<Received> {
        self.seen.lock().expect("lock").iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until `done` holds for what was received, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `ofe run` on a folder, with its endpoint and webhook addresses; killed when dropped.
pub struct Running {
    /// The process.
    pub ofe: KillOnDrop,
    /// Its endpoint.
    pub listen: SocketAddr,
    /// Its webhook listener.
    pub webhooks: SocketAddr,
}

impl Running {
    /// Starts `ofe run` on `folder` with `data`, on free ports, and waits until it is ready.
    pub async fn start(folder: &Path, data: &Path) -> Self {
        let (listen, webhooks) = (free_addr(), free_addr());
        let ofe = KillOnDrop(start_ofe_with_webhooks(folder, data, listen, webhooks));
        wait_ready(listen).await;
        Self { ofe, listen, webhooks }
    }
}

/// Three tests that run `$scenario(bus)` on the embedded bus, on JetStream
/// (`OFE_TEST_NATS`) and on Kafka (`OFE_TEST_KAFKA`), where `bus(namespace)` gives the
/// EventBus manifest; unset, the broker tests skip and say so.
#[macro_export]
macro_rules! on_every_bus {
    ($scenario:ident: $embedded:ident, $jetstream:ident, $kafka:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $scenario(|_| String::new()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(ofe_test_nats),
            ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
        )]
        async fn $jetstream() {
            let url = support::broker_var("OFE_TEST_NATS");
            $scenario(|ns| support::jetstream_bus(ns, &url)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(ofe_test_kafka),
            ignore = "needs OFE_TEST_KAFKA (scripts/test.sh starts the services)"
        )]
        async fn $kafka() {
            let brokers = support::broker_var("OFE_TEST_KAFKA");
            $scenario(|ns| support::kafka_bus(ns, &brokers)).await;
        }
    };
}

/// Posts event `order-N` (JSON `{"n":N}`) to the webhook `hook` of EventSource `ingest` in
/// `ns`, retrying while the webhook is not up yet.
pub async fn post_order(webhooks: SocketAddr, ns: &str, n: u32) {
    post_order_with(webhooks, ns, n, &[]).await;
}

/// [`post_order`] with more headers (`ce-<extension>` ones, for instance).
pub async fn post_order_with(webhooks: SocketAddr, ns: &str, n: u32, headers: &[(&str, &str)]) {
    let id = format!("order-{n}");
    let mut all = vec![("ce-id", id.as_str()), ("ce-source", "test"), ("ce-type", "order")];
    all.extend_from_slice(headers);
    post_event(&format!("http://{webhooks}/{ns}/ingest/hook"), &all, format!("{{\"n\":{n}}}"))
        .await;
}

/// POSTs a binary-mode CloudEvent with JSON `body` and `headers` (`ce-id`, `ce-source`,
/// `ce-type` and any more) to the webhook at `url`, retrying while it is not up yet.
pub async fn post_event(url: &str, headers: &[(&str, &str)], body: String) {
    for _ in 0..50 {
        let mut request = http().post(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let sent = request
            .header("ce-specversion", "1.0")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the webhook at {url} did not take {headers:?}");
}

/// A webhook EventSource `name` in `ns` serving event `event` (at `/<ns>/<name>/<event>`).
pub fn webhook_source(ns: &str, name: &str, event: &str) -> String {
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: {name}, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    {event}: {{}}\n"
    )
}

/// A webhook EventSource `ingest` and a Trigger `orders` delivering its events one at a time
/// (so order is defined) to `SINK`, with `delivery` settings added, on the bus `bus` gives.
pub fn orders_pipeline(ns: &str, sink: &str, delivery: &str, bus: &str) -> String {
    webhook_source(ns, "ingest", "hook")
        + &trigger(
            ns,
            "orders",
            "    hook: { eventSource: ingest, event: hook }",
            &format!(
                "  - condition: hook\n    sink: {{ uri: \"{sink}\" }}\n    \
             delivery: {{ maxConcurrency: 1{delivery} }}"
            ),
        )
        + bus
}

/// Runs `ofe ARGS --endpoint http://LISTEN`, which must succeed; returns what it printed.
pub fn tool(listen: SocketAddr, args: &[&str]) -> String {
    let endpoint = format!("http://{listen}");
    let output = ofe().args(args).args(["--endpoint", &endpoint]).output().expect("run ofe");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "ofe {args:?}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The value of the first sample of `metric` whose labels include `label` on `/metrics`.
pub async fn gauge(listen: SocketAddr, metric: &str, label: &str) -> Option<u64> {
    let metrics = get(&format!("http://{listen}/metrics")).await;
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// A free loopback port (bound then released), for a child process to listen on.
pub fn free_addr() -> SocketAddr {
    // Below the kernel's ephemeral range (32768 and up): a port from there, free when asked,
    // can be taken by any outgoing connection (a Kafka client opens many) before the child
    // binds it, and the child then exits with "address in use" while the test waits a
    // minute for it. Each test process starts at its own place in 20000..32000 and never
    // hands out a port twice; the services' fixed ports are below 20000.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = u32::try_from(u64::from(std::process::id()) * 7919 % 12_000).unwrap_or(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 12_000, "no free test port left in 20000..32000");
        let port = 20_000 + (start + n) % 12_000;
        let Ok(port) = u16::try_from(port) else { continue };
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("addr");
        }
    }
}

/// The `ofe` binary built for these tests.
pub fn ofe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ofe"))
}

/// `ofe run` on `manifests` with `data_dir`, serving its endpoint on `listen`, its standard
/// output discarded: the command every start below builds on, for a test to add to.
pub fn ofe_run(manifests: &Path, data_dir: &Path, listen: SocketAddr) -> Command {
    let mut command = ofe();
    command
        .args(["run", "-f"])
        .arg(manifests)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &listen.to_string()])
        .stdout(Stdio::null());
    command
}

/// Starts `ofe run` on `manifests` with `data_dir`, serving metrics on `listen`.
pub fn start_ofe(manifests: &Path, data_dir: &Path, listen: SocketAddr) -> Child {
    start_ofe_with_webhooks(manifests, data_dir, listen, free_addr())
}

/// [`start_ofe`], serving webhooks on `webhooks`.
pub fn start_ofe_with_webhooks(
    manifests: &Path,
    data_dir: &Path,
    listen: SocketAddr,
    webhooks: SocketAddr,
) -> Child {
    ofe_run(manifests, data_dir, listen)
        // OFE_TEST_LOG (e.g. `info`) shows the process's logs when a test needs debugging.
        .arg("--log-level")
        .arg(std::env::var("OFE_TEST_LOG").unwrap_or_else(|_| "error".into()))
        .args(["--webhook-listen", &webhooks.to_string()])
        .spawn()
        .expect("spawn ofe run")
}

/// Waits until `ofe run` answers `/healthz` on `listen` (its signal handlers are installed by
/// then). A minute: on Kafka, ofe is ready once it has joined each consumer group, and with
/// the whole suite loading two cores beside the broker's JVM a restart once took over 30 s
/// (alone it takes a few).
pub async fn wait_ready(listen: SocketAddr) {
    let start = Instant::now();
    while get(&format!("http://{listen}/healthz")).await != "ok\n" {
        assert!(start.elapsed() < Duration::from_secs(60), "ofe did not become ready on {listen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `ofe run` like [`start_ofe`], logging at `info` into `log`.
pub fn start_ofe_logged(
    manifests: &Path,
    data_dir: &Path,
    listen: SocketAddr,
    log: &Path,
) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    ofe_run(manifests, data_dir, listen)
        .args(["--log-level", "info,lsm_tree=warn,fjall=warn"])
        .env("NO_COLOR", "1")
        .stderr(file)
        .spawn()
        .expect("spawn ofe run")
}

/// A cron flow logged at `info`: `clock` and a Trigger `route` delivering each tick to the
/// function, on the EventBus `bus(namespace)` defines, started and ready. Returns the
/// namespace, the function, the process, its address and its log file (in `dir`).
pub async fn logged_cron_flow(
    dir: &Path,
    bus: impl FnOnce(&str) -> String,
) -> (String, Receiver, Child, SocketAddr, std::path::PathBuf) {
    let ns = unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let subscribers = "  - condition: tick\n    sink: { uri: \"BASE/fn\" }";
    let yaml = cron_and_trigger(&ns, &base, subscribers) + &bus(&ns);
    let (listen, log) = (free_addr(), dir.join("ofe.log"));
    let ofe = start_ofe_logged(&manifests(dir, &yaml), &dir.join("data"), listen, &log);
    wait_ready(listen).await;
    (ns, receiver, ofe, listen, log)
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    child.wait().expect("wait for ofe")
}

/// An HTTP client for tests (with the process's TLS provider installed, which reqwest needs).
pub fn http() -> reqwest::Client {
    ofe_core::install_crypto_provider();
    reqwest::Client::new()
}

/// GETs a URL on loopback and returns the body, or "" on failure.
pub async fn get(url: &str) -> String {
    match http().get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of a Prometheus counter line starting with `prefix` (labels included), or 0.
pub fn counter(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Writes manifests into a temp folder as one file.
pub fn manifests(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let folder = dir.join("manifests");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("all.yaml"), yaml).expect("write manifests");
    folder
}

/// The `clock` EventSource in `namespace`: `tick` every second on bus `default`, optionally
/// with its own sink.
pub fn clock(namespace: &str, sink: Option<&str>) -> String {
    let sink = sink.map(|uri| format!("  sink: {{ uri: \"{uri}\" }}\n")).unwrap_or_default();
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: clock, namespace: {namespace} }}\n\
         spec:\n  eventBus: default\n  cron:\n    tick: {{ schedule: \"@every 1s\" }}\n{sink}"
    )
}

/// A Kafka EventSource `fleet` in `namespace` whose event `telemetry` reads `topic` on
/// `brokers` from the earliest offset, and a Trigger `route` sending it to `sink`.
pub fn kafka_source_to_sink(namespace: &str, brokers: &str, topic: &str, sink: &str) -> String {
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\nmetadata: {{ name: fleet, namespace: {namespace} }}\n\
         spec:\n  eventBus: default\n  kafka:\n    telemetry: {{ brokers: \"{brokers}\", topic: \"{topic}\", authRequired: false, initialOffset: earliest }}\n"
    ) + &trigger(
        namespace,
        "route",
        "    telemetry: { eventSource: fleet, event: telemetry }",
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{sink}\" }}"),
    )
}

/// A Trigger in `namespace` on bus `default`; `inputs` and `subscribers` are YAML lines at
/// two-space indent.
pub fn trigger(namespace: &str, name: &str, inputs: &str, subscribers: &str) -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: {name}, namespace: {namespace} }}\n\
         spec:\n  eventBus: default\n  inputs:\n{inputs}\n  subscribers:\n{subscribers}\n"
    )
}

/// `clock` and a Trigger `route` whose subscribers (with `BASE` standing for the receiver's
/// URL) read `tick`.
pub fn cron_and_trigger(namespace: &str, base: &str, subscribers: &str) -> String {
    let tick = "    tick: { eventSource: clock, event: tick }";
    clock(namespace, None) + &trigger(namespace, "route", tick, &subscribers.replace("BASE", base))
}

/// An EventBus `default` in `namespace` on the JetStream server at `url`.
pub fn jetstream_bus(namespace: &str, url: &str) -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {namespace} }}\nspec:\n  jetstream:\n    url: \"{url}\"\n"
    )
}

/// An EventBus `default` in `namespace` kept in memory.
pub fn memory_bus(namespace: &str) -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {namespace} }}\nspec:\n  memory: {{}}\n"
    )
}

/// An EventBus `default` in `namespace` on the Kafka brokers `brokers`, with its own topic.
pub fn kafka_bus(namespace: &str, brokers: &str) -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {namespace} }}\nspec:\n  kafka:\n    \
         brokers: \"{brokers}\"\n    topicPrefix: ofe-{namespace}\n"
    )
}

/// What a kill -9 scenario counted.
#[derive(Debug)]
pub struct KillReport {
    /// Events the bus acknowledged before the kill.
    pub published: u64,
    /// Of those, fully delivered before the kill.
    pub delivered_before: u64,
    /// Requests the function received in all.
    pub deliveries: usize,
    /// Distinct event ids among them.
    pub distinct: usize,
}

impl KillReport {
    /// Redeliveries the function saw.
    pub fn duplicates(&self) -> usize {
        self.deliveries - self.distinct
    }
}

/// `ofe run` on `yaml` (with `clock` in `namespace` delivering to `BASE/slow`) is killed with
/// SIGKILL while deliveries are in flight, then restarted on the same data directory. Returns
/// once every event the bus acknowledged before the kill has reached the function, and the
/// restarted process has delivered something itself; panics after `patience`.
pub async fn kill_9_scenario(
    yaml: &str,
    namespace: &str,
    receiver: &Receiver,
    patience: Duration,
) -> KillReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), yaml);
    let data = dir.path().join("data");
    let listen = free_addr();
    let mut first = start_ofe(&folder, &data, listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "first deliveries", |r| r.on("/slow").len() >= 3)
        .await;
    let metrics = get(&format!("http://{listen}/metrics")).await;
    let published = counter(
        &metrics,
        &format!(
            "ofe_eventsource_events_published_total{{namespace=\"{namespace}\",eventsource=\"clock\""
        ),
    );
    let delivered_before = counter(
        &metrics,
        &format!("ofe_trigger_events_delivered_total{{namespace=\"{namespace}\",trigger=\"route\""),
    );
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    assert!(published >= 3, "too few events before the kill: {published}");
    let seen_before = receiver.on("/slow").len();

    let listen = free_addr();
    let mut second = start_ofe(&folder, &data, listen);
    wait_ready(listen).await;
    // Acknowledged ticks have consecutive timestamps from the first one.
    let first_time =
        receiver.on("/slow").iter().map(|r| r.header("ce-time")).min().expect("a delivery");
    let start = chrono::DateTime::parse_from_rfc3339(&first_time).expect("ce-time");
    let wanted: std::collections::BTreeSet<String> = (0..published)
        .map(|i| (start + chrono::TimeDelta::seconds(i64::try_from(i).unwrap_or(0))).to_rfc3339())
        .collect();
    let times = |r: &Receiver| -> std::collections::BTreeSet<String> {
        r.on("/slow")
            .iter()
            .filter_map(|x| chrono::DateTime::parse_from_rfc3339(&x.header("ce-time")).ok())
            .map(|t| t.to_rfc3339())
            .collect()
    };
    receiver
        .wait_for(patience, "every acknowledged event after restart", |r| {
            wanted.is_subset(&times(r)) && r.on("/slow").len() > seen_before
        })
        .await;
    assert!(terminate(&mut second).success());
    let all = receiver.on("/slow");
    let distinct: std::collections::BTreeSet<String> =
        all.iter().map(|r| r.header("ce-id")).collect();
    KillReport { published, delivered_before, deliveries: all.len(), distinct: distinct.len() }
}

/// The cron example's flow on the EventBus `default` that `bus(namespace)` defines: `ofe run`
/// delivers cron CloudEvents to the function without touching the embedded store. `check`
/// gets the process's address once the events have arrived, while it still runs.
pub async fn example_flow_on_bus(
    bus: impl FnOnce(&str) -> String,
    check: impl AsyncFnOnce(SocketAddr),
) {
    let namespace = unique_namespace();
    let namespace = namespace.as_str();
    let (receiver, base) = Receiver::start().await;
    let subscribers = "  - condition: tick\n    sink: { uri: \"BASE/fn\" }";
    let yaml = &(cron_and_trigger(namespace, &base, subscribers) + &bus(namespace));
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let mut ofe = start_ofe(&manifests(dir.path(), yaml), &dir.path().join("data"), listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "3 events via the broker", |r| r.on("/fn").len() >= 3)
        .await;
    for got in receiver.on("/fn") {
        assert_eq!(got.header("ce-specversion"), "1.0");
        assert_eq!(got.header("ce-type"), "io.openfunction.events.cron");
        assert_eq!(got.header("ce-ofenamespace"), namespace);
    }
    check(listen).await;
    assert!(!dir.path().join("data/bus").exists(), "this bus must not open the embedded store");
    assert!(terminate(&mut ofe).success());
}

/// A namespace of its own, so a run's subjects and consumers are new on a shared broker.
pub fn unique_namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The value of a broker variable such as `OFE_TEST_NATS` (see
/// `ofe_testkit::broker_var`: unset, the test fails naming it).
pub fn broker_var(name: &str) -> String {
    ofe_testkit::broker_var(name)
}

/// `ofe run` on the manifests in `folder`, fed by an upstream broker through `send` (which
/// publishes one payload and returns once the broker has it), routing to `BASE/slow`:
/// warm-up payloads go out until one reaches the function, then `total` numbered payloads
/// `{"n":i}` follow at 100 ms intervals while ofe is killed with SIGKILL and restarted on the
/// same data directory (some are published while it is down). Returns the number of
/// deliveries once every number has reached the function; panics after a minute.
pub async fn kill_9_during_stream<F, Fut>(
    folder: &Path,
    receiver: &Receiver,
    total: u32,
    send: F,
) -> usize
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let data = folder.parent().unwrap_or(folder).join("data");
    let listen = free_addr();
    let mut first = KillOnDrop(start_ofe(folder, &data, listen));
    wait_ready(listen).await;
    // Brokers may drop or skip messages published before the source subscribed: send
    // warm-ups until one reaches the function, so the counted stream starts after that.
    let warm = |r: &Receiver| r.on("/slow").iter().any(|x| &x.body[..] == b"warm-up");
    for _ in 0..100 {
        if warm(receiver) {
            break;
        }
        send("warm-up".into()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver.wait_for(Duration::from_secs(10), "a warm-up message at the function", warm).await;
    let publish = async |range: std::ops::Range<u32>| {
        for n in range {
            send(format!("{{\"n\":{n}}}")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let kill_at = total * 4 / 9;
    let restart_at = total * 7 / 10;
    publish(0..kill_at).await;
    first.0.kill().expect("kill -9");
    first.0.wait().expect("reap");
    publish(kill_at..restart_at).await;
    let listen = free_addr();
    let mut second = KillOnDrop(start_ofe(folder, &data, listen));
    publish(restart_at..total).await;
    wait_ready(listen).await;
    let numbers = |r: &Receiver| -> std::collections::BTreeSet<u32> {
        r.on("/slow")
            .iter()
            .filter_map(|x| serde_json::from_slice::<serde_json::Value>(&x.body).ok())
            .filter_map(|v| v["n"].as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    receiver
        .wait_for(Duration::from_secs(60), "every published message at the function", |r| {
            numbers(r).len() == total as usize
        })
        .await;
    assert!(terminate(&mut second.0).success());
    receiver.on("/slow").iter().filter(|r| &r.body[..] != b"warm-up").count()
}

/// A child process killed when dropped, so a failing test leaves no `ofe` behind.
pub use ofe_testkit::ChildGuard as KillOnDrop;

/// Runs the example `name` (which cargo builds next to the binaries when it builds the tests)
/// with `args` and the `ofe` binary under test; asserts it succeeded and returns its output.
pub fn run_example(name: &str, args: &[&str]) -> String {
    let ofe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ofe"));
    let example = ofe.parent().map(|dir| dir.join(name)).expect("target dir");
    assert!(
        example.exists(),
        "{} is missing; build it with `cargo build -p ofe-examples --bin {name}`",
        example.display()
    );
    let output = Command::new(&example).args(args).arg("--ofe").arg(&ofe).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the {name} example reported missing events");
    stdout
}

/// The number on the summary line of `stdout` that starts with `label`.
pub fn summary(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` line in the summary"))
}

/// The `Ready` condition of `kind`/`name` on `ofe run`'s `/status`, and how many conditions
/// the resource has.
pub async fn ready_condition(
    listen: SocketAddr,
    kind: &str,
    name: &str,
) -> Option<(serde_json::Value, usize)> {
    condition(listen, kind, name, "Ready").await
}

/// The condition `type` of `kind`/`name` in `/status`, and how many conditions it has.
pub async fn condition(
    listen: SocketAddr,
    kind: &str,
    name: &str,
    r#type: &str,
) -> Option<(serde_json::Value, usize)> {
    let body = get(&format!("http://{listen}/status")).await;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    let resource = status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)?
        .clone();
    let conditions = resource["conditions"].as_array()?.clone();
    let found = conditions.iter().find(|c| c["type"] == r#type)?.clone();
    Some((found, conditions.len()))
}

/// Waits until `kind`/`name` is `Ready` with `status` (`True`/`False`); returns the condition.
pub async fn wait_ready_status(
    listen: SocketAddr,
    kind: &str,
    name: &str,
    status: &str,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = serde_json::Value::Null;
    loop {
        if let Some((ready, count)) = ready_condition(listen, kind, name).await {
            assert!(count <= 5, "conditions stay one per type: {count}");
            if ready["status"] == status {
                return ready;
            }
            last = ready;
        }
        // A minute: a broker restarted by a test (a JVM recovering its log) and a client
        // reconnecting with backoff take well over 20 s together on a loaded 2-core machine.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{kind} {name} never became Ready={status}; it was last {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
pub mod cluster;

/// An MQTT EventSource `name` in `namespace`, whose event `telemetry` reads `topic` at QoS 1
/// from the broker at `url` (`tcp://…`), and a Trigger `route` sending it to `sink`.
pub fn mqtt_to_sink(namespace: &str, name: &str, url: &str, topic: &str, sink: &str) -> String {
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: {name}, namespace: {namespace} }}\n\
         spec:\n  eventBus: default\n  mqtt:\n    telemetry: {{ url: \"{url}\", topic: \"{topic}\", qos: 1 }}\n"
    ) + &trigger(
        namespace,
        "route",
        &format!("    telemetry: {{ eventSource: {name}, event: telemetry }}"),
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{sink}\" }}"),
    )
}

/// An MQTT 3.1.1 client publishing to the broker at `url` (`mqtt://` or `tcp://host:port`),
/// its event loop driven in the background.
pub fn mqtt_publisher(url: &str, client_id: &str) -> rumqttc::AsyncClient {
    let address = url.trim_start_matches("mqtt://").trim_start_matches("tcp://");
    let (host, port) =
        address.rsplit_once(':').map_or((address, 1883), |(h, p)| (h, p.parse().unwrap_or(1883)));
    let (client, mut events) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new(client_id, host, port), 64);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

/// The first frame of the web console's live stream (`/console/live`, Server-Sent Events) at
/// `listen` for which `wanted` holds (frames come once a second, each with every node's
/// figures and every resource's readiness); panics after 10 s.
pub async fn console_frame(
    listen: SocketAddr,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut response =
        http().get(format!("http://{listen}/console/live")).send().await.expect("/console/live");
    assert_eq!(response.status().as_u16(), 200, "/console/live");
    let (mut text, mut last) = (String::new(), serde_json::Value::Null);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(chunk) = tokio::time::timeout(left, response.chunk()).await else {
            panic!("no wanted frame within 10 s; the last: {last}");
        };
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream").expect("open")));
        // Whole events only: each ends with a blank line.
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            last = serde_json::from_str(data).expect("a frame is JSON");
            if wanted(&last) {
                return last;
            }
        }
    }
}

/// A Kafka record as a test reads it: its headers, key and value as text.
#[derive(Debug, Default)]
pub struct KafkaRecord {
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The key, if any.
    pub key: Option<String>,
    /// The value.
    pub payload: Option<String>,
}

impl KafkaRecord {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

/// Reads `topic` on `brokers` from the start, with a plain client of its own (a group named
/// after the topic), until `pick` takes a record or 30 s pass.
pub async fn kafka_find<T: Send + 'static>(
    brokers: &str,
    topic: &str,
    mut pick: impl FnMut(KafkaRecord) -> Option<T> + Send + 'static,
) -> Option<T> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        use rdkafka::message::Headers as _;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("broker.address.family", "v4")
            .set("group.id", format!("test-reader-{topic}"))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        while Instant::now() < deadline {
            let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) else { continue };
            let headers = record
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(text).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            let found = pick(KafkaRecord {
                headers,
                key: record.key().map(text),
                payload: record.payload().map(text),
            });
            if found.is_some() {
                return found;
            }
        }
        None
    })
    .await
    .expect("join")
}
