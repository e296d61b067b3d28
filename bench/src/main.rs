//! `ofe-bench`: the ofe benchmark. Every workload runs against `ofe run` (a release build, as a
//! process of its own) and next to a baseline measured in the same run on the same machine, and
//! is reported as a ratio to it, because absolute figures on shared machines drift.
//!
//! - **W1** HTTP CloudEvent in (webhook) → bus → 1 Trigger (exact `type`) → HTTP sink, 1 KiB
//!   events, keep-alive. Baseline: a minimal forwarder (HTTP in → HTTP out, no parsing) between
//!   the same load generator and the same sink.
//! - **W2** the same with 1000 Triggers whose filters are CEL over data
//!   (`type == 's.N' && data.speed > 120`), 1% of the events matching. Baseline: W1.
//! - **W3** the durable path on JetStream (with `--nats`). Baseline: the raw async-nats client
//!   publishing (acknowledged) and consuming (acknowledging) the same events.
//! - **W4** fan-out to 10 matching subscribers. Baseline: W1's deliveries/s.
//! - **W5** latency under an open-loop fixed rate (1k events/s, and 50% of W1's rate): p50,
//!   p99 and p99.9 added over the forwarder at the same rate. Each event's latency is counted
//!   from the time it was *scheduled* to be sent, so a stall is not hidden by the sender
//!   waiting (no coordinated omission).
//!
//! The load generator, the sink, the forwarder and ofe share the machine; the figures are for
//! that setup, which is why only the ratios are compared with goals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt as _;
use clap::{Parser, Subcommand};
use ofe_core::{EventBus, Subject, SubscribeOptions};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventbus::jetstream::{JetStreamBus, JetStreamConfig};

/// Event size, as the workloads specify.
const EVENT_BYTES: usize = 1024;

/// Numbers the batches of events, so that ids never repeat across runs (ofe drops a repeated
/// id as a duplicate, as it should).
static BATCH: AtomicU64 = AtomicU64::new(0);

#[derive(Parser)]
#[command(name = "ofe-bench", about = "The ofe benchmark: W1-W5 next to same-run baselines")]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Events per throughput run.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Requests in flight from the load generator.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of each open-loop latency run.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Only these workloads, e.g. `W1,W5`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A NATS server with JetStream for W3, e.g. `nats://127.0.0.1:4222` (W3 is skipped,
    /// saying so, without it).
    #[arg(long, env = "OFE_BENCH_NATS")]
    nats: Option<String>,
    /// The `ofe` binary (default: beside this one).
    #[arg(long)]
    ofe: Option<PathBuf>,
    /// Print machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Internal {
    /// The baseline forwarder: every request to `--listen` is sent on to `--to`, as is.
    Forwarder {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        to: String,
    },
}

/// One line of the report.
#[derive(serde::Serialize)]
struct Row {
    workload: &'static str,
    what: String,
    figure: f64,
    unit: &'static str,
    baseline_name: &'static str,
    baseline: f64,
    /// `figure / baseline` for rates; `figure - baseline` (added latency) for latencies.
    ratio: Option<f64>,
    goal: &'static str,
    met: Option<bool>,
}

impl Row {
    /// A figure shown next to a baseline for scale, with no goal of its own.
    fn info(
        workload: &'static str,
        what: &str,
        (figure, unit): (f64, &'static str),
        (baseline_name, baseline): (&'static str, f64),
    ) -> Self {
        let ratio = (baseline > 0.0).then(|| figure / baseline);
        Self {
            workload,
            what: what.into(),
            figure,
            unit,
            baseline_name,
            baseline,
            ratio,
            goal: "",
            met: None,
        }
    }

    /// A rate next to its baseline, met when the ratio reaches `min_ratio`.
    fn rate(
        workload: &'static str,
        what: &str,
        (figure, unit): (f64, &'static str),
        (baseline_name, baseline): (&'static str, f64),
        (goal, min_ratio): (&'static str, f64),
    ) -> Self {
        let ratio = figure / baseline;
        Self {
            workload,
            what: what.into(),
            figure,
            unit,
            baseline_name,
            baseline,
            ratio: Some(ratio),
            goal,
            met: Some(ratio >= min_ratio),
        }
    }
}

/// The sink every workload delivers to: counts deliveries and, for events that carry their
/// scheduled send time, records the latency.
#[derive(Clone)]
struct Sink {
    base: Instant,
    delivered: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
}

async fn sink(State(s): State<Sink>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    if let Some(sent) = headers.get("ce-sentns").and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        let now = u64::try_from(s.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut l) = s.latencies.lock() {
            l.push(now.saturating_sub(sent));
        }
    }
    s.delivered.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

impl Sink {
    async fn start(base: Instant) -> anyhow::Result<(Self, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let s = Self { base, delivered: Arc::default(), latencies: Arc::default() };
        let app = axum::Router::new().fallback(sink).with_state(s.clone());
        tokio::spawn(async move { axum::serve(listener.tap_io(no_delay), app).await });
        Ok((s, url))
    }

    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        if let Ok(mut l) = self.latencies.lock() {
            l.clear();
        }
    }

    /// Waits until `n` deliveries arrived; fails after `limit`.
    async fn wait_for(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.delivered.load(Ordering::Relaxed) < n {
            if start.elapsed() > limit {
                bail!(
                    "only {} of {n} deliveries arrived within {limit:?}",
                    self.delivered.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// One CloudEvent of the load: binary mode, 1 KiB of JSON data.
struct Event {
    kind: String,
    speed: u32,
}

impl Event {
    fn body(&self, i: usize) -> Vec<u8> {
        let head = format!(r#"{{"vehicle":"car-{i}","speed":{},"pad":""#, self.speed);
        let mut body = head.into_bytes();
        body.resize(EVENT_BYTES - 2, b'x');
        body.extend_from_slice(b"\"}");
        body
    }
}

/// Sends every event of `events` to `url` from `concurrency` keep-alive connections, each
/// waiting for its answer before the next (closed loop); a refusal (503) is retried.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    events: &[Event],
    concurrency: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let events: Arc<Vec<(String, Vec<u8>)>> =
        Arc::new(events.iter().enumerate().map(|(i, e)| (e.kind.clone(), e.body(i))).collect());
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, events) =
            (client.clone(), url.to_string(), next.clone(), events.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((kind, body)) = events.get(i) else { return Ok(()) };
                loop {
                    let answer = post(&client, &url, batch, i, kind, body.clone(), None).await?;
                    if answer.is_success() {
                        break;
                    }
                    if answer != StatusCode::SERVICE_UNAVAILABLE {
                        bail!("{url} answered {answer}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    batch: u64,
    i: usize,
    kind: &str,
    body: Vec<u8>,
    sent: Option<u64>,
) -> anyhow::Result<StatusCode> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", format!("b{batch}-e{i}"))
        .header("ce-source", "/bench")
        .header("ce-type", kind);
    if let Some(sent) = sent {
        request = request.header("ce-sentns", sent.to_string());
    }
    let answer = request.body(body).send().await.context("sending an event")?;
    Ok(StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY))
}

/// Sends `rate` events a second for `seconds` to `url`, each at its scheduled time however
/// long earlier ones take; returns the sink's latencies (from the scheduled time), sorted.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    sink: &Sink,
    kind: &str,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<Vec<u64>> {
    sink.reset();
    let total = (rate * seconds as f64) as usize;
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let scheduled = u64::try_from(at.duration_since(sink.base).as_nanos()).unwrap_or(0);
        let (client, url, kind) = (client.clone(), url.to_string(), kind.to_string());
        let body = Event { kind: kind.clone(), speed: 80 }.body(i);
        sends.push(tokio::spawn(async move {
            post(&client, &url, batch, i, &kind, body, Some(scheduled)).await
        }));
    }
    for s in sends {
        s.await??;
    }
    sink.wait_for(total as u64, Duration::from_secs(60)).await?;
    let mut latencies = sink.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_unstable();
    Ok(latencies)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1e6
}

/// A process that is killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{url} did not answer within a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ofe run` on `yaml`; returns the process and the webhook URL of `ingest/hook`.
async fn start_ofe(ofe: &Path, dir: &Path, yaml: &str) -> anyhow::Result<(Process, String)> {
    let manifests = dir.join("manifests.yaml");
    std::fs::write(&manifests, yaml)?;
    let (listen, webhooks) = (free_addr()?, free_addr()?);
    let child = Command::new(ofe)
        .args(["run", "-f"])
        .arg(&manifests)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &listen.to_string(), "--webhook-listen", &webhooks.to_string()])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", ofe.display()))?;
    let process = Process(child);
    wait_http(&format!("http://{listen}/healthz")).await?;
    Ok((process, format!("http://{webhooks}/{}/ingest/hook", namespace())))
}

/// The baseline forwarder, as a process of its own like ofe.
async fn start_forwarder(to: &str) -> anyhow::Result<(Process, String)> {
    let listen = free_addr()?;
    let child = Command::new(std::env::current_exe()?)
        .args(["forwarder", "--listen", &listen.to_string(), "--to", to])
        .stdout(Stdio::null())
        .spawn()?;
    let process = Process(child);
    // The forwarder answers whatever the sink answers; the sink answers 200 to anything.
    wait_http(&format!("http://{listen}/ready")).await?;
    Ok((process, format!("http://{listen}/w1")))
}

async fn forwarder(listen: String, to: String) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let app = axum::Router::new().fallback(move |request: Request| {
        let (client, to) = (client.clone(), to.clone());
        async move {
            let (parts, body) = request.into_parts();
            let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
                return StatusCode::BAD_REQUEST;
            };
            let mut headers = parts.headers;
            headers.remove("host");
            headers.remove("content-length");
            let url = format!("{to}{}", parts.uri.path());
            match client.post(url).headers(headers).body(body).send().await {
                Ok(r) => {
                    StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                Err(_) => StatusCode::BAD_GATEWAY,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener.tap_io(no_delay), app).await?;
    Ok(())
}

/// TCP_NODELAY on every accepted connection, as ofe's own listeners set it: the sink and the
/// forwarder must not answer later than they could, or the baselines would flatter ofe.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// The namespace of this run's resources: new subjects and consumers on a shared broker.
fn namespace() -> String {
    format!("bench{}", std::process::id())
}

/// The in-memory EventBus `mem`, which W1, W2, W4 and W5 run on: they measure routing and
/// delivery; W3 measures the durable buses.
fn memory_bus() -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: mem, namespace: {} }}\nspec:\n  memory: {{}}\n",
        namespace()
    )
}

fn source(bus: &str) -> String {
    let ns = namespace();
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: ingest, namespace: {ns} }}\n\
         spec:\n  eventBus: {bus}\n  webhook:\n    hook: {{}}\n"
    )
}

fn trigger(name: &str, bus: &str, filter: &str, sinks: &[String]) -> String {
    let subscribers: String = sinks
        .iter()
        .map(|s| format!("    - condition: hook\n      sink: {{ uri: \"{s}\" }}\n"))
        .collect();
    let ns = namespace();
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: {name}, namespace: {ns} }}\n\
         spec:\n  eventBus: {bus}\n  inputs:\n    hook:\n      eventSource: ingest\n      event: hook\n      \
         filters:\n        - {filter}\n  subscribers:\n{subscribers}"
    )
}

/// What a throughput run measured.
struct Throughput {
    /// Events/s, timed until the sink had every expected delivery.
    rate: f64,
    /// CPU time (user and system, all threads) the process under test spent per input event,
    /// in µs; `None` where `/proc` cannot tell.
    cpu_us: Option<f64>,
}

/// Runs `events` through `url`, served by the process `pid`, timed until the sink has
/// `expected`.
async fn throughput(
    client: &reqwest::Client,
    (url, pid): (&str, u32),
    sink: &Sink,
    events: &[Event],
    expected: u64,
    concurrency: usize,
) -> anyhow::Result<Throughput> {
    // Warm-up: connections, consumers and caches, outside the measurement.
    let warm = &events[..events.len().min(500)];
    let warm_expected = expected * warm.len() as u64 / events.len().max(1) as u64;
    sink.reset();
    closed_loop(client, url, warm, concurrency).await?;
    sink.wait_for(warm_expected, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.reset();
    let cpu_before = process_cpu(pid);
    let start = Instant::now();
    closed_loop(client, url, events, concurrency).await?;
    sink.wait_for(expected, Duration::from_secs(300)).await?;
    let rate = events.len() as f64 / start.elapsed().as_secs_f64();
    let cpu_us = cpu_before
        .zip(process_cpu(pid))
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6 / events.len().max(1) as f64);
    Ok(Throughput { rate, cpu_us })
}

/// The CPU time process `pid` has used so far, all its threads, user and system (Linux
/// `/proc/<pid>/stat`). Unlike a rate, this barely moves with what else the host runs, so it
/// compares ofe with the forwarder even on a slow or shared machine.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last `)` are
    // state, ppid, ... with utime and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, which the kernel fixes at 100 for /proc on every architecture Linux runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// The load generator and the sink every throughput run shares.
struct Load<'a> {
    client: &'a reqwest::Client,
    sink: &'a Sink,
    concurrency: usize,
}

impl Load<'_> {
    /// [`throughput`] of `events` through `url`, served by `process`.
    async fn run(
        &self,
        url: &str,
        process: &Process,
        events: &[Event],
        expected: u64,
    ) -> anyhow::Result<Throughput> {
        throughput(
            self.client,
            (url, process.0.id()),
            self.sink,
            events,
            expected,
            self.concurrency,
        )
        .await
    }
}

/// Publish acknowledgements W3 keeps outstanding, on both of its sides.
const WINDOW: usize = 256;

/// Adds a publish's acknowledgement to `acks`, then waits for one while [`WINDOW`] are
/// outstanding: the load shape both sides of W3 are driven with.
async fn windowed<F, T, E>(
    acks: &mut futures::stream::FuturesUnordered<F>,
    ack: F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::StreamExt as _;
    acks.push(ack);
    if acks.len() >= WINDOW
        && let Some(ack) = acks.next().await
    {
        ack?;
    }
    Ok(())
}

/// Waits for every acknowledgement left in `acks`.
async fn drain<F, T, E>(acks: &mut futures::stream::FuturesUnordered<F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::StreamExt as _;
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}

/// W3's loop through ofe's own bus API, shaped as [`raw_jetstream`]: `n` 1 KiB CloudEvents
/// published with up to [`WINDOW`] awaiting their acknowledgement, while a durable consumer
/// (as many in flight) takes and acknowledges each.
async fn bus_loop(bus: Arc<dyn EventBus>, n: usize) -> anyhow::Result<f64> {
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let subject = Subject::event(&namespace(), "bench", &format!("w3-{batch}"));
    let mut options = SubscribeOptions::new(format!("bench-w3-{batch}"), vec![subject.clone()]);
    options.max_in_flight = WINDOW;
    let mut subscription = bus.subscribe(options).await?;
    let events = (0..n)
        .map(|i| {
            let body = Event { kind: "bench.w3".into(), speed: 80 }.body(i);
            use cloudevents::EventBuilder as _;
            cloudevents::EventBuilderV10::new()
                .id(format!("w3-{batch}-{i}"))
                .source("ofe-bench")
                .ty("bench.w3")
                .data("application/json", body)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let consume = tokio::spawn(async move {
        for _ in 0..n {
            subscription.next().await?.ack().await?;
        }
        anyhow::Ok(())
    });
    let mut acks = futures::stream::FuturesUnordered::new();
    for event in &events {
        windowed(&mut acks, bus.publish(&subject, event)).await?;
    }
    drain(&mut acks).await?;
    consume.await??;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The raw async-nats loop W3 is measured against: `n` 1 KiB messages published (each
/// acknowledged by JetStream) while a durable pull consumer consumes and acknowledges them.
async fn raw_jetstream(url: &str, n: usize) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let name = format!("BENCH_RAW_{}", std::process::id());
    let subject = format!("bench.raw.{}", std::process::id());
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("raw".into()),
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let consume = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut seen = 0;
        while seen < n {
            let Some(m) = messages.next().await else { break };
            m.map_err(|e| anyhow::anyhow!("{e}"))?
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
        }
        anyhow::Ok(())
    });
    let payload = Bytes::from(vec![b'x'; EVENT_BYTES]);
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        let ack = js.publish(subject.clone(), payload.clone()).await?;
        windowed(&mut acks, std::future::IntoFuture::into_future(ack)).await?;
    }
    drain(&mut acks).await?;
    consume.await??;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}

fn wanted(only: &[String], id: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(id))
}

#[allow(clippy::too_many_lines)]
async fn run(cli: Cli) -> anyhow::Result<Vec<Row>> {
    let ofe = match &cli.ofe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ofe"),
    };
    if !ofe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p ofe -p ofe-bench`, or pass --ofe",
            ofe.display()
        );
    }
    let base = Instant::now();
    let (sink, sink_url) = Sink::start(base).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(cli.concurrency * 2).build()?;
    let n = cli.events;
    let same =
        |kind: &str| (0..n).map(|_| Event { kind: kind.into(), speed: 80 }).collect::<Vec<_>>();
    let load = Load { client: &client, sink: &sink, concurrency: cli.concurrency };
    let mut rows = Vec::new();
    let say = |what: &str| {
        if !cli.json {
            eprintln!("… {what}");
        }
    };

    say("baseline: the forwarder");
    let (forwarder_process, forwarder_url) = start_forwarder(&sink_url).await?;
    let forwarded =
        load.run(&forwarder_url, &forwarder_process, &same("bench.w1"), n as u64).await?;

    say("W1: webhook → memory bus → 1 Trigger → sink");
    let dir = tempfile::tempdir()?;
    let yaml = source("mem")
        + &trigger("w1", "mem", "exact: { type: bench.w1 }", &[format!("{sink_url}/w1")])
        + &memory_bus();
    let (ofe_w1, webhook) = start_ofe(&ofe, dir.path(), &yaml).await?;
    let measured = load.run(&webhook, &ofe_w1, &same("bench.w1"), n as u64).await?;
    let w1 = measured.rate;
    let mut row = Row::rate(
        "W1",
        "HTTP → bus (memory) → 1 Trigger → HTTP",
        (w1, "events/s"),
        ("bare forwarder", forwarded.rate),
        ("≥ 0.7× and ≥ 20,000 events/s", 0.7),
    );
    row.met = row.met.map(|met| met && w1 >= 20_000.0);
    rows.push(row);
    if let (Some(ofe_cpu), Some(forwarder_cpu)) = (measured.cpu_us, forwarded.cpu_us) {
        rows.push(Row::info(
            "W1",
            "CPU per event, the process under test",
            (ofe_cpu, "µs"),
            ("bare forwarder", forwarder_cpu),
        ));
    }

    if wanted(&cli.only, "W5") {
        for (label, rate) in [("1k events/s", 1000.0), ("50% of W1", (w1 / 2.0).max(100.0))] {
            say(&format!("W5: open loop at {label} ({rate:.0}/s)"));
            let through_forwarder =
                open_loop(&client, &forwarder_url, &sink, "bench.w1", rate, cli.latency_seconds)
                    .await?;
            let through_ofe =
                open_loop(&client, &webhook, &sink, "bench.w1", rate, cli.latency_seconds).await?;
            for p in [50.0, 99.0, 99.9] {
                let (a, b) = (percentile(&through_ofe, p), percentile(&through_forwarder, p));
                let checked = rate == 1000.0 && p == 99.0;
                rows.push(Row {
                    workload: "W5",
                    what: format!("p{p} latency at {label} ({rate:.0}/s)"),
                    figure: a,
                    unit: "ms",
                    baseline_name: "forwarder, same rate",
                    baseline: b,
                    ratio: Some(a - b),
                    goal: if checked { "added p99 ≤ 0.5 ms at 1k/s" } else { "" },
                    met: checked.then_some(a - b <= 0.5),
                });
            }
        }
    }
    drop(ofe_w1);
    drop(forwarder_process);

    if wanted(&cli.only, "W2") {
        say("W2: 1000 Triggers, CEL over data, 1% matching");
        let dir = tempfile::tempdir()?;
        let mut yaml = source("mem") + &memory_bus();
        for k in 0..1000 {
            let filter = format!("cel: \"type == 's.{k}' && data.speed > 120\"");
            yaml += &trigger(&format!("t{k}"), "mem", &filter, &[format!("{sink_url}/w2")]);
        }
        let (ofe_w2, webhook) = start_ofe(&ofe, dir.path(), &yaml).await?;
        let events: Vec<Event> = (0..n)
            .map(|i| {
                if i % 100 == 0 {
                    Event { kind: format!("s.{}", (i / 100) % 1000), speed: 130 }
                } else {
                    Event { kind: format!("s.{}", i % 1000), speed: 80 }
                }
            })
            .collect();
        let expected = events.iter().filter(|e| e.speed > 120).count() as u64;
        let w2 = load.run(&webhook, &ofe_w2, &events, expected).await?.rate;
        rows.push(Row::rate(
            "W2",
            "W1 with 1000 CEL Triggers, 1% matching",
            (w2, "events/s"),
            ("W1", w1),
            ("≥ 0.8× W1", 0.8),
        ));
    }

    if wanted(&cli.only, "W4") {
        say("W4: fan-out to 10 subscribers");
        let dir = tempfile::tempdir()?;
        let sinks: Vec<String> = (0..10).map(|i| format!("{sink_url}/fan/{i}")).collect();
        let yaml = source("mem")
            + &trigger("fan", "mem", "exact: { type: bench.w4 }", &sinks)
            + &memory_bus();
        let (ofe_w4, webhook) = start_ofe(&ofe, dir.path(), &yaml).await?;
        let per_input = load.run(&webhook, &ofe_w4, &same("bench.w4"), 10 * n as u64).await?.rate;
        let deliveries = per_input * 10.0;
        rows.push(Row::rate(
            "W4",
            "fan-out: 1 input → 10 subscribers (deliveries/s)",
            (deliveries, "deliveries/s"),
            ("W1 deliveries/s", w1),
            ("≥ 0.8× W1", 0.8),
        ));
    }

    if wanted(&cli.only, "W3") {
        say("W3: webhook → embedded bus (durable) → 1 Trigger → sink");
        let dir = tempfile::tempdir()?;
        let yaml = source("default")
            + &trigger("w3", "default", "exact: { type: bench.w3 }", &[format!("{sink_url}/w3")]);
        let (ofe_w3, webhook) = start_ofe(&ofe, dir.path(), &yaml).await?;
        let durable = load.run(&webhook, &ofe_w3, &same("bench.w3"), n as u64).await?.rate;
        drop(ofe_w3);
        rows.push(Row::info(
            "W3",
            "HTTP → bus (embedded, durable) → 1 Trigger → HTTP",
            (durable, "events/s"),
            ("bare forwarder", forwarded.rate),
        ));
        say("W3: the embedded bus's publish + consume");
        let dir = tempfile::tempdir()?;
        let embedded: Arc<dyn EventBus> =
            Arc::new(EmbeddedBus::open(EmbeddedConfig::new(dir.path()))?);
        let embedded_rate = bus_loop(embedded.clone(), n).await?;
        embedded.close().await?;
        match &cli.nats {
            None => {
                eprintln!(
                    "W3 JetStream skipped: no NATS server; pass --nats nats://127.0.0.1:4222 (or set OFE_BENCH_NATS)"
                );
                rows.push(Row::info(
                    "W3",
                    "bus API (embedded, fsync per batch): publish + consume",
                    (embedded_rate, "events/s"),
                    ("raw async-nats (needs --nats)", f64::NAN),
                ));
            }
            Some(url) => {
                say("W3: baseline, the raw JetStream client");
                let raw = raw_jetstream(url, n).await?;
                rows.push(Row::rate(
                    "W3",
                    "bus API (embedded, fsync per batch): publish + consume",
                    (embedded_rate, "events/s"),
                    ("raw async-nats publish + consume", raw),
                    ("≥ 0.5× the raw client", 0.5),
                ));
                say("W3: the JetStream bus's publish + consume");
                let jetstream: Arc<dyn EventBus> =
                    Arc::new(JetStreamBus::connect(JetStreamConfig::new(url)).await?);
                let jetstream_rate = bus_loop(jetstream.clone(), n).await?;
                jetstream.close().await?;
                rows.push(Row::rate(
                    "W3",
                    "bus API (JetStream): publish + consume",
                    (jetstream_rate, "events/s"),
                    ("raw async-nats publish + consume", raw),
                    ("≥ 0.5× the raw client", 0.5),
                ));
                say("W3: webhook → JetStream bus → 1 Trigger → sink");
                let dir = tempfile::tempdir()?;
                // The bus's default stream: one server holds one ofe stream.
                let bus = format!(
                    "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
                     metadata: {{ name: js, namespace: {} }}\n\
                     spec:\n  jetstream:\n    url: \"{url}\"\n",
                    namespace()
                );
                let yaml = source("js")
                    + &trigger(
                        "w3",
                        "js",
                        "exact: { type: bench.w3 }",
                        &[format!("{sink_url}/w3")],
                    )
                    + &bus;
                let (ofe_js, webhook) = start_ofe(&ofe, dir.path(), &yaml).await?;
                let w3 = load.run(&webhook, &ofe_js, &same("bench.w3"), n as u64).await?.rate;
                rows.push(Row::info(
                    "W3",
                    "HTTP → bus (JetStream) → 1 Trigger → HTTP",
                    (w3, "events/s"),
                    ("bare forwarder", forwarded.rate),
                ));
            }
        }
    }
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<4} {:<52} {:>14} {:>14} {:>9}  {:<30} met",
        "", "workload", "ofe", "baseline", "ratio", "goal"
    );
    for r in rows {
        let ratio = match (r.unit, r.ratio) {
            ("ms", Some(added)) => format!("{added:+.3}ms"),
            (_, Some(x)) => format!("{x:.2}×"),
            (_, None) => String::new(),
        };
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        let figure = |x: f64| match r.unit {
            _ if x.is_nan() => "-".to_string(),
            "ms" => format!("{x:.3} ms"),
            "µs" => format!("{x:.1} µs"),
            _ => format!("{x:.0}/s"),
        };
        println!(
            "{:<4} {:<52} {:>14} {:>14} {:>9}  {:<30} {}",
            r.workload,
            r.what,
            figure(r.figure),
            figure(r.baseline),
            ratio,
            r.goal,
            met
        );
    }
    println!(
        "baselines: W1 the bare forwarder; W2 W1; W3 the raw JetStream client; W4 W1's deliveries/s; W5 the forwarder at the same rate"
    );
}

fn main() -> anyhow::Result<()> {
    ofe_core::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(Internal::Forwarder { listen, to }) = cli.command {
        return runtime.block_on(forwarder(listen, to));
    }
    let json = cli.json;
    let before = cpu_times();
    let rows = runtime.block_on(run(cli))?;
    let steal = before.zip(cpu_times()).map(|(a, b)| b.steal_share_since(&a));
    if json {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let report = serde_json::json!({ "cores": cores, "cpu_steal": steal, "rows": rows });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&rows);
        if let Some(steal) = steal {
            println!(
                "CPU stolen by the host during the run: {:.1}%{}",
                steal * 100.0,
                if steal > 0.02 {
                    " (a noisy host: other machines' work slowed this run, and its tails most)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// The machine's CPU time so far, from `/proc/stat` (Linux), in clock ticks.
struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    /// The share of CPU time since `earlier` that the hypervisor gave to other machines: a
    /// run on a shared host is slowed by it, and no baseline in the same run removes that
    /// from latency tails.
    fn steal_share_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            0.0
        } else {
            self.steal.saturating_sub(earlier.steal) as f64 / total as f64
        }
    }
}

fn cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal ...
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    Some(CpuTimes { total: fields.iter().take(8).sum(), steal: *fields.get(7)? })
}
