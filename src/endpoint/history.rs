//! The console's live figures and their history, kept in the process: once a second, each
//! node's rate, errors, lag, dead letters and delivery latency (p50, p99), and every
//! resource's readiness.
//!
//! They come from the process's own metrics registry, read the way a scraper reads it (the
//! OpenMetrics text), so the console shows exactly what `/metrics` says and no metric needs a
//! second code path. The last [`SPAN`] seconds of each node are kept for the charts, so a
//! console opened now shows the last 15 minutes without a Prometheus. The newest second is
//! also sent to every open console over Server-Sent Events (`/console/live`) as one JSON
//! frame, encoded once however many consoles are open, and not at all while none is.
//!
//! What it costs, with 10,000 Triggers: a second with nothing happening is not kept (a chart
//! reads a missing second as zero), so idle nodes take no memory; what is kept is 40 bytes a
//! point, at most [`BUDGET`] points in all. Beyond that, each node keeps a shorter span.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofe_core::health::Health;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Seconds of history kept per node: 15 minutes.
pub const SPAN: usize = 900;

/// Points kept in all, across every node: 80 MB at the most. Past `BUDGET / SPAN` busy nodes,
/// each keeps fewer seconds (never fewer than a minute's).
pub const BUDGET: usize = 2_000_000;

/// How often a sample is taken.
const EVERY: Duration = Duration::from_secs(1);

/// One node's figures over one second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    /// The end of the second, in milliseconds since the Unix epoch.
    pub at: i64,
    /// Events per second: delivered, for a subscriber; published, for an EventSource event.
    pub rate: f64,
    /// Events per second that fired a subscriber (it received them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired: Option<f64>,
    /// Failures per second: retries, dead letters and drops, or failed publishes.
    pub errors: f64,
    /// Events the subscriber has not settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<f64>,
    /// Events held in its dead-letter store.
    #[serde(skip_serializing_if = "Option::is_none", rename = "deadLetters")]
    pub dead_letters: Option<f64>,
    /// Median receive-to-delivered time of the second's deliveries, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// Their 99th percentile, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}

/// A resource's `Ready` condition, as the console shows it.
#[derive(Clone, Debug, Serialize)]
struct Readiness {
    kind: String,
    namespace: String,
    name: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// What this process is: `ofe run`, or an operator replica that leads or follows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Role {
    /// `standalone`, `leader` or `follower`.
    pub mode: &'static str,
    /// The replica's identity in the leader election.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Default for Role {
    fn default() -> Self {
        Self { mode: "standalone", identity: None }
    }
}

/// What one `/console/live` frame holds.
#[derive(Serialize)]
struct Frame<'a> {
    at: i64,
    role: &'a Role,
    nodes: &'a BTreeMap<String, Point>,
    ready: Vec<Readiness>,
}

impl Point {
    /// Whether nothing happened in its second: nothing to keep.
    fn idle(&self) -> bool {
        let zero = |x: Option<f64>| x.is_none_or(|x| x == 0.0);
        self.rate == 0.0
            && self.errors == 0.0
            && zero(self.fired)
            && zero(self.lag)
            && zero(self.dead_letters)
            && self.p50.is_none()
    }
}

/// A point as it is kept: its figures as `f32`, an absent one as NaN.
#[derive(Clone, Copy, Debug)]
struct Kept {
    at: i64,
    figures: [f32; 7],
}

impl From<&Point> for Kept {
    fn from(p: &Point) -> Self {
        let some = |x: Option<f64>| x.map_or(f32::NAN, |x| x as f32);
        Self {
            at: p.at,
            figures: [
                p.rate as f32,
                some(p.fired),
                p.errors as f32,
                some(p.lag),
                some(p.dead_letters),
                some(p.p50),
                some(p.p99),
            ],
        }
    }
}

impl From<&Kept> for Point {
    fn from(k: &Kept) -> Self {
        let [rate, fired, errors, lag, dead_letters, p50, p99] = k.figures.map(f64::from);
        let some = |x: f64| (!x.is_nan()).then_some(x);
        Self {
            at: k.at,
            rate,
            fired: some(fired),
            errors,
            lag: some(lag),
            dead_letters: some(dead_letters),
            p50: some(p50),
            p99: some(p99),
        }
    }
}

/// The history, shared by the sampler and the endpoint. Cheap to clone.
#[derive(Clone)]
pub struct History {
    series: Arc<Mutex<HashMap<String, VecDeque<Kept>>>>,
    live: watch::Sender<Arc<str>>,
    role: Arc<Mutex<Role>>,
}

impl Default for History {
    fn default() -> Self {
        Self { series: Arc::default(), live: watch::channel(Arc::from("")).0, role: Arc::default() }
    }
}

impl History {
    /// Says, from the next frame on, what this process is: in the operator, whether this
    /// replica leads (fires cron schedules and writes status) or follows.
    #[cfg_attr(not(feature = "operator"), expect(dead_code))]
    pub fn set_role(&self, role: Role) {
        if let Ok(mut kept) = self.role.lock() {
            *kept = role;
        }
    }

    fn role(&self) -> Role {
        self.role.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The kept seconds of node `id`, oldest first; a second missing had nothing.
    pub fn of(&self, id: &str) -> Vec<Point> {
        self.series
            .lock()
            .map(|s| {
                s.get(id).map(|kept| kept.iter().map(Point::from).collect()).unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// The newest frame from now on: the first at once (once a sample was taken), then one a
    /// second.
    pub fn frames(&self) -> watch::Receiver<Arc<str>> {
        let mut rx = self.live.subscribe();
        if !rx.borrow().is_empty() {
            rx.mark_changed();
        }
        rx
    }

    /// Keeps the seconds of `points` (one per node, taken at `at`) in which something
    /// happened, and forgets what is older than [`SPAN`] seconds, the nodes that no longer
    /// exist, and, past the [`BUDGET`], the oldest seconds of every node.
    fn keep(&self, at: i64, points: &BTreeMap<String, Point>) {
        let Ok(mut series) = self.series.lock() else { return };
        let oldest = at - SPAN as i64 * 1000;
        series.retain(|id, ring| {
            while ring.front().is_some_and(|p| p.at <= oldest) {
                ring.pop_front();
            }
            points.contains_key(id) && !ring.is_empty()
        });
        for (id, point) in points.iter().filter(|(_, p)| !p.idle()) {
            match series.get_mut(id) {
                Some(ring) => ring.push_back(Kept::from(point)),
                None => {
                    series.insert(id.clone(), VecDeque::from([Kept::from(point)]));
                }
            }
        }
        let most = (BUDGET / series.len().max(1)).clamp(60, SPAN);
        for ring in series.values_mut() {
            while ring.len() > most {
                ring.pop_front();
            }
        }
    }
}

/// A node's cumulative counters at the last sample.
#[derive(Clone, Debug, Default)]
struct Totals {
    done: f64,
    fired: f64,
    errors: f64,
    lag: Option<f64>,
    dead_letters: Option<f64>,
    /// The latency histogram's cumulative buckets: (upper bound, count).
    buckets: Vec<(f64, f64)>,
}

/// How each metric counts towards a node's figures.
#[derive(Clone, Copy)]
enum Counts {
    Done,
    Fired,
    Error,
    Lag,
    DeadLetters,
    Bucket,
}

fn counts(name: &str) -> Option<Counts> {
    Some(match name {
        "ofe_trigger_events_delivered_total" | "ofe_eventsource_events_published_total" => {
            Counts::Done
        }
        "ofe_trigger_events_received_total" => Counts::Fired,
        "ofe_trigger_delivery_retries_total"
        | "ofe_trigger_events_dead_lettered_total"
        | "ofe_trigger_events_dropped_total"
        | "ofe_eventsource_publish_errors_total" => Counts::Error,
        "ofe_trigger_bus_lag" => Counts::Lag,
        "ofe_trigger_dead_letters" => Counts::DeadLetters,
        "ofe_trigger_delivery_duration_seconds_bucket" => Counts::Bucket,
        _ => return None,
    })
}

/// The labels that name a node: a subscriber's, or an EventSource event's.
const NODE_LABELS: [&str; 6] =
    ["namespace", "trigger", "subscriber", "eventsource", "event", "kind"];

/// `labels` reduced to those that name a node, as one key.
fn node_key<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut wanted: Vec<(&str, &str)> = labels.filter(|(k, _)| NODE_LABELS.contains(k)).collect();
    wanted.sort_unstable();
    wanted.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Every node's cumulative totals in `text`, by node key.
fn totals(text: &str) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    for line in text.lines() {
        // The name first: only the few metrics a node shows have their labels read.
        let Some(counts) = counts(crate::openmetrics::name(line)) else { continue };
        let Some((_, labels, value)) = crate::openmetrics::sample(line) else { continue };
        let key = node_key(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let totals = out.entry(key).or_default();
        match counts {
            Counts::Done => totals.done += value,
            Counts::Fired => totals.fired += value,
            Counts::Error => totals.errors += value,
            Counts::Lag => *totals.lag.get_or_insert(0.0) += value,
            Counts::DeadLetters => *totals.dead_letters.get_or_insert(0.0) += value,
            Counts::Bucket => {
                let bound = labels
                    .get("le")
                    .and_then(|v| if v == "+Inf" { Some(f64::INFINITY) } else { v.parse().ok() });
                if let Some(bound) = bound {
                    totals.buckets.push((bound, value));
                }
            }
        }
    }
    out
}

/// The `q` quantile of the observations between two readings of one histogram's cumulative
/// buckets, interpolated within its bucket as Prometheus's `histogram_quantile` does; `None`
/// when nothing was observed.
fn quantile(q: f64, now: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let counts: Vec<(f64, f64)> = now
        .iter()
        .map(|(bound, n)| {
            let was = before.iter().find(|(b, _)| b == bound).map_or(0.0, |(_, c)| *c);
            (*bound, (n - was).max(0.0))
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in &counts {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let share = if within > 0.0 { (rank - lower.1) / within } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// Node ids by their metric labels' key, from the mesh, with the mesh's generation; taken
/// anew only when the mesh changed.
fn node_ids(topology: &ofe_runtime::Topology, ids: &mut (u64, HashMap<String, String>)) {
    let Ok(graph) = topology.read() else { return };
    if graph.generation == ids.0 {
        return;
    }
    let by_key = graph
        .nodes
        .iter()
        .filter(|n| !n.metrics.is_empty())
        .map(|n| {
            let key = node_key(n.metrics.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            (key, n.id.clone())
        })
        .collect();
    *ids = (graph.generation, by_key);
}

/// The figures of one second, from the totals before and after it.
fn point(at: i64, seconds: f64, now: &Totals, before: Option<&Totals>) -> Point {
    let per_second = |n: f64, b: f64| ((n - b) / seconds).max(0.0);
    // A node not read before has no second to tell: its totals so far are not its rate.
    let base = before.unwrap_or(now);
    Point {
        at,
        rate: per_second(now.done, base.done),
        fired: now.lag.map(|_| per_second(now.fired, base.fired)),
        errors: per_second(now.errors, base.errors),
        lag: now.lag,
        dead_letters: now.dead_letters,
        p50: quantile(0.5, &now.buckets, &base.buckets),
        p99: quantile(0.99, &now.buckets, &base.buckets),
    }
}

/// Samples the registry once a second into `history` until `shutdown`.
pub async fn sample(
    registry: Arc<Registry>,
    health: Health,
    topology: ofe_runtime::Topology,
    history: History,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: HashMap<String, Totals> = HashMap::new();
    let mut last_at = std::time::Instant::now();
    let mut ids = (u64::MAX, HashMap::new());
    let nothing = Totals::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(%error, "the console cannot read the metrics");
            continue;
        }
        let now = std::time::Instant::now();
        let seconds = now.duration_since(last_at).as_secs_f64().max(0.001);
        last_at = now;
        let at = chrono::Utc::now().timestamp_millis();
        node_ids(&topology, &mut ids);
        let read = totals(&text);
        let mut points = BTreeMap::new();
        for (key, id) in &ids.1 {
            let current = read.get(key).unwrap_or(&nothing);
            points.insert(id.clone(), point(at, seconds, current, last.get(key)));
        }
        last = read;
        history.keep(at, &points);
        if history.live.receiver_count() == 0 {
            // Nobody to send it to: not encoded, and no stale frame left for the next console.
            history.live.send_replace(Arc::from(""));
            continue;
        }
        let ready = readiness(&health);
        let role = history.role();
        match serde_json::to_string(&Frame { at, role: &role, nodes: &points, ready }) {
            Ok(frame) => {
                history.live.send_replace(Arc::from(frame));
            }
            Err(error) => tracing::warn!(%error, "the console's frame does not encode"),
        }
    }
}

/// Every resource's `Ready` condition.
fn readiness(health: &Health) -> Vec<Readiness> {
    health
        .snapshot()
        .into_iter()
        .filter_map(|(key, conditions)| {
            let ready = conditions.into_iter().find(|c| c.r#type == "Ready")?;
            Some(Readiness {
                kind: key.kind.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                status: ready.status,
                reason: ready.reason,
                message: ready.message,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_seconds_observations_only() {
        // Before: 100 fast observations. This second: 10 more, 9 under 10 ms, 1 under 100 ms.
        let before = [(0.01, 100.0), (0.1, 100.0), (f64::INFINITY, 100.0)];
        let now = [(0.01, 109.0), (0.1, 110.0), (f64::INFINITY, 110.0)];
        let p50 = quantile(0.5, &now, &before).expect("observed");
        assert!((p50 - 0.01 * 5.0 / 9.0).abs() < 1e-9, "{p50}");
        let p99 = quantile(0.99, &now, &before).expect("observed");
        assert!(p99 > 0.01 && p99 <= 0.1, "{p99}");
        assert_eq!(quantile(0.5, &before, &before), None, "nothing this second");
        let slow = [(0.01, 0.0), (f64::INFINITY, 3.0)];
        assert_eq!(quantile(0.5, &slow, &[]), Some(0.01), "beyond the last bound: the bound");
    }

    #[test]
    fn a_node_gets_its_rate_errors_and_lag_and_the_ring_keeps_fifteen_minutes() {
        let text = "\
ofe_trigger_events_delivered_total{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 30
ofe_trigger_delivery_retries_total{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 4
ofe_trigger_events_dead_lettered_total{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 2
ofe_trigger_bus_lag{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 7
ofe_trigger_events_received_total{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 40
";
        let before = totals(
            "ofe_trigger_events_delivered_total{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 10
ofe_trigger_events_received_total{namespace=\"n\",trigger=\"t\",subscriber=\"0\"} 34
",
        );
        let now = totals(text);
        let key = "namespace=n,subscriber=0,trigger=t";
        let p = point(5, 2.0, &now[key], before.get(key));
        assert_eq!((p.rate, p.errors, p.lag, p.fired), (10.0, 3.0, Some(7.0), Some(3.0)));
        let first = point(5, 1.0, &now[key], None);
        assert_eq!((first.rate, first.errors), (0.0, 0.0), "no rate from a first reading");
        let history = History::default();
        let idle = Point { at: 0, lag: Some(0.0), fired: Some(0.0), ..Point::default() };
        for second in 0..(SPAN as i64 + 5) {
            let at = second * 1000;
            // Every other second busy; the idle ones are not kept.
            let point = if second % 2 == 0 { Point { at, ..p } } else { Point { at, ..idle } };
            let points = BTreeMap::from([
                ("sub:n/t/0".to_string(), point),
                ("sub:n/t/1".to_string(), Point { at, ..idle }),
            ]);
            history.keep(at, &points);
        }
        let kept = history.of("sub:n/t/0");
        assert_eq!(kept.len(), SPAN / 2, "busy seconds of the last 15 minutes: {}", kept.len());
        assert_eq!(kept[0].at, 6000, "the oldest seconds are dropped");
        assert_eq!(kept[1], Point { at: 8000, ..p }, "kept as taken");
        assert!(history.of("sub:n/t/1").is_empty(), "an idle node takes no room");
        history.keep(SPAN as i64 * 1000 + 6000, &BTreeMap::new());
        assert!(history.of("sub:n/t/0").is_empty(), "a node gone is forgotten");
    }
}
