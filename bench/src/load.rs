//! The load generator and the sink every workload shares: closed-loop throughput runs and
//! open-loop latency runs of 1 KiB binary-mode CloudEvents.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt as _;

use crate::BATCH;
use crate::EVENT_BYTES;
use crate::targets::Process;
use crate::targets::no_delay;

/// The sink every workload delivers to: counts deliveries and, for events that carry their
/// scheduled send time, records the latency.
#[derive(Clone)]
pub(crate) struct Sink {
    pub(crate) base: Instant,
    pub(crate) delivered: Arc<AtomicU64>,
    pub(crate) latencies: Arc<Mutex<Vec<u64>>>,
}

pub(crate) async fn sink(State(s): State<Sink>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if let Some(sent) = headers.get("ce-sentns").and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        let now = u64::try_from(s.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut l) = s.latencies.lock() {
            l.push(now.saturating_sub(sent));
        }
    }
    // A CloudEvents batch counts its events.
    let batch = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/cloudevents-batch+json"));
    let count = if batch {
        serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body).map_or(0, |events| events.len())
    } else {
        1
    };
    s.delivered.fetch_add(count as u64, Ordering::Relaxed);
    StatusCode::OK
}

impl Sink {
    pub(crate) async fn start(base: Instant) -> anyhow::Result<(Self, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let s = Self { base, delivered: Arc::default(), latencies: Arc::default() };
        let app = axum::Router::new().fallback(sink).with_state(s.clone());
        tokio::spawn(async move { axum::serve(listener.tap_io(no_delay), app).await });
        Ok((s, url))
    }

    pub(crate) fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        if let Ok(mut l) = self.latencies.lock() {
            l.clear();
        }
    }

    /// Waits until `n` deliveries arrived; fails after `limit`.
    pub(crate) async fn wait_for(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
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

/// One CloudEvent of the load: binary mode, 1 KiB of JSON data unless sized otherwise.
pub(crate) struct Event {
    pub(crate) kind: String,
    pub(crate) speed: u32,
    /// Bytes of data.
    pub(crate) size: usize,
}

impl Event {
    /// An event of type `kind` whose data says `speed`, of the workloads' 1 KiB.
    pub(crate) fn new(kind: impl Into<String>, speed: u32) -> Self {
        Self { kind: kind.into(), speed, size: EVENT_BYTES }
    }

    /// Its data as the `i`th event of a run: `{"vehicle":"car-<i>","speed":…,"pad":"xx…"}`.
    pub(crate) fn body(&self, i: usize) -> Vec<u8> {
        let head = format!(r#"{{"vehicle":"car-{i}","speed":{},"pad":""#, self.speed);
        let mut body = head.into_bytes();
        body.resize(self.size.max(body.len() + 2) - 2, b'x');
        body.extend_from_slice(b"\"}");
        body
    }
}

/// Requests the load generator had to send again, by what went wrong. A benchmark run must
/// not abort on one, and must not hide it either: the counts are reported with the figures.
#[derive(Default, Debug)]
pub(crate) struct Retries {
    /// The connection could not be made (refused, or no free local port): nothing was sent,
    /// so sending again is safe.
    pub(crate) connect: AtomicU64,
    /// The connection broke before an answer came (closed or reset by the peer, or a
    /// keep-alive connection closed as the request went out). The target may have taken the
    /// event: ofe drops the second copy by its id; a forwarder passes it on, so the sink may
    /// count one more delivery than was sent.
    pub(crate) broken: AtomicU64,
    /// The target answered 503 (a full bus refuses until it has room): sent again after 5 ms.
    pub(crate) refused: AtomicU64,
}

impl Retries {
    /// The retries counted, for the report, when there were any.
    pub(crate) fn report(&self, run: &str) -> Option<crate::report::ConnectionErrors> {
        let connect = self.connect.load(Ordering::Relaxed);
        let broken = self.broken.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        (connect + broken + refused > 0).then(|| crate::report::ConnectionErrors {
            run: run.to_string(),
            connect,
            broken,
            refused,
        })
    }
}

/// Sends every event of `events` to `url` from `concurrency` keep-alive connections, each
/// waiting for its answer before the next (closed loop). A refusal (503) or a connection error
/// is retried, and counted in `retries`.
pub(crate) async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    events: &[Event],
    concurrency: usize,
    retries: &Arc<Retries>,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let events: Arc<Vec<(String, Vec<u8>)>> =
        Arc::new(events.iter().enumerate().map(|(i, e)| (e.kind.clone(), e.body(i))).collect());
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, events, retries) =
            (client.clone(), url.to_string(), next.clone(), events.clone(), retries.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((kind, body)) = events.get(i) else { return anyhow::Ok(()) };
                let post = Post { client: &client, url: &url, batch, kind, sent: None };
                post.send(i, body, &retries).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// One event of the load, as it is sent.
struct Post<'a> {
    client: &'a reqwest::Client,
    url: &'a str,
    batch: u64,
    kind: &'a str,
    /// When it was scheduled to be sent (ns since the sink's base), for latency runs.
    sent: Option<u64>,
}

/// Connection errors in a row after which the target is taken to be down, not busy.
const MAX_TRIES: u32 = 50;

impl Post<'_> {
    /// Sends event `i` until the target takes it: a 503 or a connection error is retried
    /// (after 5 ms, so a target that drops connections is not hammered), and counted; any
    /// other answer, or `MAX_TRIES` failures in a row, ends the run with the error.
    async fn send(&self, i: usize, body: &[u8], retries: &Retries) -> anyhow::Result<()> {
        let mut failures = 0;
        loop {
            let mut request = self
                .client
                .post(self.url)
                .header("content-type", "application/json")
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("b{}-e{i}", self.batch))
                .header("ce-source", "/bench")
                .header("ce-type", self.kind);
            if let Some(sent) = self.sent {
                request = request.header("ce-sentns", sent.to_string());
            }
            match request.body(body.to_vec()).send().await {
                Ok(answer) if answer.status().is_success() => return Ok(()),
                Ok(answer) if answer.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    retries.refused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(answer) => bail!("{} answered {}", self.url, answer.status()),
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_TRIES {
                        return Err(e).context(format!(
                            "sending an event to {}: {MAX_TRIES} connection errors in a row",
                            self.url
                        ));
                    }
                    let counter = if e.is_connect() { &retries.connect } else { &retries.broken };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends `rate` events a second for `seconds` to `url` from `connections` keep-alive
/// connections, as wrk2 does; returns the sink's latencies, sorted. Each event has its
/// scheduled time, and its latency counts from then however long it waited for a free
/// connection, so a stall is not hidden (no coordinated omission). The connections are fixed:
/// opening one per waiting event would, once the target slows, spend the generator's CPU on
/// connects and run the host out of ports and file descriptors.
pub(crate) async fn open_loop(
    client: &reqwest::Client,
    (url, sink): (&str, &Sink),
    kind: &str,
    (rate, seconds, connections): (f64, u64, usize),
    retries: &Arc<Retries>,
) -> anyhow::Result<OpenLoop> {
    sink.reset();
    let total = (rate * seconds as f64) as usize;
    let waits = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let (client, url, kind, retries, rx) =
            (client.clone(), url.to_string(), kind.to_string(), retries.clone(), rx.clone());
        let (waits, base) = (waits.clone(), sink.base);
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, scheduled)) = next else { return anyhow::Ok(()) };
                let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                if let Ok(mut w) = waits.lock() {
                    w.push(now.saturating_sub(scheduled));
                }
                let body = Event::new(kind.as_str(), 80).body(i);
                let post =
                    Post { client: &client, url: &url, batch, kind: &kind, sent: Some(scheduled) };
                post.send(i, &body, &retries).await?;
            }
        }));
    }
    let start = Instant::now();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let scheduled = u64::try_from(at.duration_since(sink.base).as_nanos()).unwrap_or(0);
        if tx.send((i, scheduled)).is_err() {
            break;
        }
    }
    drop(tx);
    for w in workers {
        w.await??;
    }
    sink.wait_for(total as u64, Duration::from_secs(60)).await?;
    let mut latencies = sink.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_unstable();
    let mut waits = waits.lock().map(|w| w.clone()).unwrap_or_default();
    waits.sort_unstable();
    Ok(OpenLoop { latencies, waits })
}

/// What an open-loop run measured, each sorted, in ns.
pub(crate) struct OpenLoop {
    /// From each event's scheduled time to the sink receiving it.
    pub(crate) latencies: Vec<u64>,
    /// From each event's scheduled time to a connection of the generator taking it: time
    /// spent in the generator, before the target saw anything.
    pub(crate) waits: Vec<u64>,
}

/// The `p`th percentile of `sorted` (ns), in ms.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1e6
}

/// What a throughput run measured.
pub(crate) struct Throughput {
    /// Events/s, timed until the sink had every expected delivery.
    pub(crate) rate: f64,
    /// CPU time (user and system, all threads of the process under test and of its child
    /// processes, such as nginx's workers) per input event, in µs; `None` where `/proc`
    /// cannot tell.
    pub(crate) cpu_us: Option<f64>,
    /// Requests sent again during the measured run.
    pub(crate) retries: Arc<Retries>,
}

/// The CPU time process `pid` and its children have used so far, all threads, user and system
/// (Linux `/proc/<pid>/stat`). Unlike a rate, this barely moves with what else the host runs,
/// so it compares ofe with a forwarder even on a slow or shared machine. Children count
/// because nginx does its work in worker processes.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let own = stat_ticks(pid)?;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&other| other != pid)
        .filter_map(|other| stat_ticks(other).filter(|t| t.parent == pid).map(|t| t.cpu))
        .sum();
    // USER_HZ, which the kernel fixes at 100 for /proc on every architecture Linux runs on.
    Some(Duration::from_millis((own.cpu + children) * 10))
}

/// The resident memory of process `pid`, in MB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn resident_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A process's parent and CPU ticks (user + system), from `/proc/<pid>/stat`.
struct Ticks {
    parent: u32,
    cpu: u64,
}

fn stat_ticks(pid: u32) -> Option<Ticks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last `)` are
    // state, ppid, ... with utime and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cpu = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Ticks { parent: fields.get(1)?.parse().ok()?, cpu })
}

/// The load generator and the sink every throughput run shares.
pub(crate) struct Load<'a> {
    pub(crate) client: &'a reqwest::Client,
    pub(crate) sink: &'a Sink,
    pub(crate) concurrency: usize,
}

impl Load<'_> {
    /// Runs `events` through `url`, served by `processes`, timed until the sink has `expected`
    /// deliveries.
    pub(crate) async fn run(
        &self,
        url: &str,
        processes: &[&Process],
        events: &[Event],
        expected: u64,
    ) -> anyhow::Result<Throughput> {
        let sink = self.sink;
        let pids: Vec<u32> = processes.iter().map(|p| p.0.id()).collect();
        // Every process of the target together: a peer may run as several.
        let cpu = || pids.iter().map(|&pid| process_cpu(pid)).sum::<Option<Duration>>();
        // Warm-up: connections, consumers and caches, outside the measurement.
        let warm = &events[..events.len().min(500)];
        let warm_expected = expected * warm.len() as u64 / events.len().max(1) as u64;
        sink.reset();
        let retries = Arc::new(Retries::default());
        closed_loop(self.client, url, warm, self.concurrency, &retries).await?;
        sink.wait_for(warm_expected, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        sink.reset();
        let retries = Arc::new(Retries::default());
        let cpu_before = cpu();
        let start = Instant::now();
        closed_loop(self.client, url, events, self.concurrency, &retries).await?;
        sink.wait_for(expected, Duration::from_secs(300)).await?;
        let rate = events.len() as f64 / start.elapsed().as_secs_f64();
        let cpu_us = cpu_before
            .zip(cpu())
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6 / events.len().max(1) as f64);
        Ok(Throughput { rate, cpu_us, retries })
    }
}
