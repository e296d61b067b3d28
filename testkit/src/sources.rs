//! The behaviour every EventSource kind must show, whatever its upstream: the source
//! compliance suite.
//!
//! A kind's integration test implements [`Upstream`] for a real broker and calls
//! [`source_compliance`]. The source runs as `ofe run` runs it: its EventSource manifest is
//! read into the registry's sources (`ofe_eventsource::spawn`), publishing to an in-memory bus
//! behind a [`Gate`] that can refuse publishes.
//!
//! The checks, each against the real broker:
//! 1. every message becomes an event on the bus, and `ofe_source_events_received` and
//!    `ofe_source_events_published` count it;
//! 2. upstream is acknowledged only after the bus has the event: while the bus refuses, the
//!    message stays unacknowledged at the broker, and a source stopped then, and started again,
//!    gets it again;
//! 3. a redelivered message keeps its id, so the bus drops the second copy as a duplicate;
//! 4. after the broker drops the source's connection, the source reconnects on its own and
//!    loses nothing sent meanwhile.
//!
//! A protocol that keeps nothing for its subscribers ([`Guarantee::AtMostOnce`]: core NATS,
//! Redis pub/sub) has no acknowledgement and no redelivery, so checks 2 and 3 become: a message
//! that arrives while the bus refuses is held and retried, and reaches the bus once it takes
//! events again, with its id. Check 4 then sends once the source is back, since what is sent
//! while nobody is subscribed is gone by the protocol's own terms.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::{AttributesReader as _, Event};
use ofe_core::{
    BusError, EventBus, Published, StartPosition, Subject, SubscribeOptions, Subscription,
};
use ofe_eventsource::SourceMetrics;
use tokio_util::sync::CancellationToken;

use crate::{PATIENCE, next_within};

/// What a protocol promises a source, which decides what the suite asks of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// The broker keeps a message until the source acknowledges it: queues, streams, logs,
    /// MQTT sessions at QoS 1.
    AtLeastOnce,
    /// The broker keeps nothing for a subscriber (core NATS, Redis pub/sub): a message sent
    /// while the source is away is gone; one it received must not be lost.
    AtMostOnce,
}

/// One kind's upstream: a real broker the suite sends messages through.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// The kind's field under `spec`, e.g. `amqp`.
    fn kind(&self) -> &'static str;

    /// What the protocol promises; at-least-once unless said otherwise.
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    /// Makes `input` ready before the source starts (creates a topic, say); nothing by default.
    async fn prepare(&self, input: &str) {
        let _ = input;
    }

    /// The settings of one event of the kind (what goes under `spec.<kind>.<event>`), reading
    /// a fresh input named `input` (a queue, topic, stream…) that nothing else uses.
    fn spec(&self, input: &str) -> serde_json::Value;

    /// Sends one message to `input` with body `body`, identified upstream by `key` where the
    /// protocol lets the sender name a message (AMQP `message-id`, Redis entry id…).
    async fn send(&self, input: &str, key: &str, body: &[u8]);

    /// How many messages of `input` the broker still holds for the source unacknowledged or
    /// not yet delivered; `None` when the protocol cannot tell.
    async fn unacknowledged(&self, input: &str) -> Option<u64>;

    /// Makes the broker drop every connection of the source (a restart, or closing its
    /// connections); returns once the broker accepts connections again.
    async fn drop_connections(&self);
}

/// A bus in front of another that refuses publishes while closed, remembering the events it
/// refused: a bus that is down, as the source sees it.
pub struct Gate {
    inner: Arc<dyn EventBus>,
    open: Mutex<bool>,
    refused: Mutex<Vec<Event>>,
}

impl Gate {
    /// A gate, open, in front of `inner`.
    pub fn new(inner: Arc<dyn EventBus>) -> Arc<Self> {
        Arc::new(Self { inner, open: Mutex::new(true), refused: Mutex::default() })
    }

    /// Opens or closes the gate.
    pub fn set_open(&self, open: bool) {
        *self.open.lock().expect("gate") = open;
    }

    /// The events refused so far.
    pub fn refused(&self) -> Vec<Event> {
        self.refused.lock().expect("gate").clone()
    }
}

#[async_trait]
impl EventBus for Gate {
    fn backend(&self) -> &'static str {
        "gate"
    }

    async fn publish(&self, subject: &Subject, event: &Event) -> Result<Published, BusError> {
        if !*self.open.lock().expect("gate") {
            self.refused.lock().expect("gate").push(event.clone());
            return Err(BusError::unavailable("the test closed the gate"));
        }
        self.inner.publish(subject, event).await
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(options).await
    }

    async fn close(&self) -> Result<(), BusError> {
        self.inner.close().await
    }
}

/// A running source, stopped when dropped.
struct Running {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(PATIENCE, task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the EventSource `es` (namespace `ns`, event `event`) of `upstream`'s kind, reading
/// `input`, through the registry, as `ofe run` does.
fn start(
    upstream: &dyn Upstream,
    name: &str,
    input: &str,
    bus: Arc<dyn EventBus>,
    metrics: &SourceMetrics,
) -> Running {
    let manifest = serde_json::json!({
        "apiVersion": "events.openfunction.io/v1alpha1",
        "kind": "EventSource",
        "metadata": { "name": name, "namespace": "compliance" },
        "spec": { upstream.kind(): { "feed": upstream.spec(input) } },
    });
    let es: ofe_crds::EventSource =
        serde_json::from_value(manifest).unwrap_or_else(|e| panic!("the spec is refused: {e}"));
    let problems = ofe_eventsource::check(&es);
    assert!(problems.is_empty(), "the spec does not check: {problems:?}");
    let stop = CancellationToken::new();
    let host = ofe_eventsource::SourceHost { metrics: metrics.clone(), ..Default::default() };
    let tasks = ofe_eventsource::spawn(&es, bus, &host, &stop)
        .unwrap_or_else(|e| panic!("the source does not start: {e}"));
    Running { stop, tasks }
}

/// Reads `n` events from `sub`, acknowledging them; their ids.
async fn take(sub: &mut Box<dyn Subscription>, n: usize, wait: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let d = next_within(sub, wait).await;
        ids.push(d.event.id().to_string());
        d.ack().await.expect("ack");
    }
    ids
}

/// Reads until `n` events that are not probes (see [`back_again`]) arrived, acknowledging
/// every one; their ids.
async fn take_sent(sub: &mut Box<dyn Subscription>, n: usize, wait: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let d = next_within(sub, wait).await;
        let probe = ofe_core::event::data_bytes(&d.event).starts_with(b"{\"probe\"");
        if !probe {
            ids.push(d.event.id().to_string());
        }
        d.ack().await.expect("ack");
    }
    ids
}

/// Sends probes to `input` until one reaches the bus: the source of an at-most-once protocol
/// is subscribed again.
async fn back_again(upstream: &dyn Upstream, input: &str, sub: &mut Box<dyn Subscription>) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    for k in 0.. {
        assert!(tokio::time::Instant::now() < deadline, "the source never came back");
        upstream.send(input, &format!("probe-{k}"), format!("{{\"probe\":{k}}}").as_bytes()).await;
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            d.ack().await.expect("ack");
            return;
        }
    }
}

/// The value of counter `family` for EventSource `name`.
fn count(
    family: &prometheus_client::metrics::family::Family<
        ofe_eventsource::metrics::EventLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    name: &str,
    kind: &str,
) -> u64 {
    family
        .get_or_create(&ofe_eventsource::metrics::EventLabels::new(
            "compliance",
            name,
            kind,
            "feed",
        ))
        .get()
}

/// Runs the whole suite against `upstream` (see the module documentation).
pub async fn source_compliance(upstream: &dyn Upstream) {
    let inner: Arc<dyn EventBus> = Arc::new(ofe_eventbus::embedded::EmbeddedBus::in_memory(
        ofe_eventbus::embedded::MemoryConfig::default(),
    ));
    let gate = Gate::new(inner.clone());
    let name = crate::unique(upstream.kind());
    let input = crate::unique("input");
    let subject = Subject::event("compliance", &name, "feed");
    let mut options = SubscribeOptions::new(crate::unique("reader"), vec![subject]);
    options.start = StartPosition::All;
    let mut sub = inner.subscribe(options).await.expect("subscribe");
    let metrics = SourceMetrics::default();
    let kind = upstream.kind();
    upstream.prepare(&input).await;

    // 1. Delivered and counted.
    let running = start(upstream, &name, &input, gate.clone(), &metrics);
    // A source subscribes as it connects: give it the time to, so the first messages are not
    // sent to an input nobody reads yet (which some protocols drop).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        upstream.send(&input, &format!("m-{i}"), format!("{{\"n\":{i}}}").as_bytes()).await;
    }
    let first = take(&mut sub, 5, PATIENCE).await;
    assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 5, "five distinct events: {first:?}");
    // The counters move just after the bus answers, which may be after a reader saw the event.
    let counted =
        || (count(&metrics.received, &name, kind), count(&metrics.published, &name, kind));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while counted() != (5, 5) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted(), (5, 5), "ofe_source_events_received and _published");

    // 2. Acknowledged only after the bus has the event.
    gate.set_open(false);
    upstream.send(&input, "held", b"{\"held\":true}").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gate.refused().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the source never tried to publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused_id = gate.refused()[0].id().to_string();
    let running = match upstream.guarantee() {
        Guarantee::AtLeastOnce => {
            if let Some(held) = upstream.unacknowledged(&input).await {
                assert!(
                    held >= 1,
                    "the broker was told the message was done before the bus had it"
                );
            }
            running.stop().await;
            // 3. The redelivery keeps its id.
            gate.set_open(true);
            let running = start(upstream, &name, &input, gate.clone(), &metrics);
            let again = take(&mut sub, 1, PATIENCE * 3).await;
            assert_eq!(again, vec![refused_id.clone()], "the redelivered message got another id");
            if let Some(held) = upstream.unacknowledged(&input).await {
                // Acknowledgements follow the bus write asynchronously: give them a moment.
                let deadline = tokio::time::Instant::now() + PATIENCE;
                let mut held = held;
                while held > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    held = upstream.unacknowledged(&input).await.unwrap_or(0);
                }
                assert_eq!(held, 0, "the broker still holds messages the bus has");
            }
            running
        }
        Guarantee::AtMostOnce => {
            // Nothing upstream would send it again: the source holds it and retries.
            gate.set_open(true);
            let again = take(&mut sub, 1, PATIENCE * 3).await;
            assert_eq!(again, vec![refused_id.clone()], "the held message was lost or renamed");
            running
        }
    };

    // 4. Reconnects and loses nothing.
    upstream.drop_connections().await;
    if upstream.guarantee() == Guarantee::AtMostOnce {
        back_again(upstream, &input, &mut sub).await;
    }
    for i in 0..5 {
        upstream.send(&input, &format!("after-{i}"), format!("{{\"after\":{i}}}").as_bytes()).await;
    }
    let after = take_sent(&mut sub, 5, PATIENCE * 6).await;
    let distinct: BTreeSet<_> = after.iter().collect();
    assert_eq!(distinct.len(), 5, "after the connection dropped: {after:?}");
    running.stop().await;
    let _ = inner.close().await;
}
