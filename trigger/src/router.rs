//! Routing: one bus consumer reads every Trigger input once, decides which subscribers each
//! event fires, and hands it to them through their own queues.
//!
//! Why a router: with a consumer per subscriber, a thousand Triggers on one stream read every
//! event a thousand times. Here the event is read once, an index on exact attribute values
//! (`exact` filters, and `attribute == 'literal'` conjuncts of `cel` filters) picks the few
//! inputs it can belong to, and only those evaluate their remaining filters. A subscriber that
//! fires gets the event on its queue subject, where its delivery worker (see
//! [`crate::runner`]) reads it with its own durable consumer; so a slow destination holds back
//! only its own subscriber, and the router only ever waits for the bus.
//!
//! The router acknowledges an input event only after every queue it fired has the event
//! durably. A crash in between redelivers the input; the queue publish repeats under the same
//! subject, `source` and `id`, which the bus drops as a duplicate.
//!
//! Condition state: per subscriber and correlation key, the bus time and id of the latest
//! event of each input. An entry expires when all its inputs have left the window, and each
//! subscriber keeps at most `max_keys` keys, forgetting the least recently seen first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use cloudevents::{AttributesReader as _, Event};
use futures::FutureExt as _;
use ofe_eventbus::{BusError, Delivery, EventBus, StartPosition, Subject, SubscribeOptions};
use tokio_util::sync::CancellationToken;

use crate::condition::Condition;
use crate::filter::{CompiledFilter, EventData};
use crate::metrics::{SubscriberLabels, TriggerMetrics};

/// Extension attribute on an event that fired a join: the ids of the other inputs' events
/// that made the condition true, as `input=id` pairs joined by `,` (sorted by input name).
pub const EXT_JOINED: &str = "ofejoined";

/// Input events the router reads before it publishes and acknowledges them together.
const BATCH: usize = 256;

/// How long the router waits before a batch whose queue publish failed comes back.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Correlation keys kept per subscriber when the Trigger sets no `maxKeys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// A compiled CEL expression over an event, whose value keys a join.
#[derive(Debug)]
pub struct KeyExpr {
    text: String,
    program: cel::Program,
}

impl KeyExpr {
    /// Compiles `text`; the error points at the column.
    pub fn compile(text: &str) -> Result<Self, crate::ConditionError> {
        Ok(Self { text: text.to_string(), program: crate::filter::compile_cel(text)? })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The key of an event: the value as text, if it evaluates to a string, number or bool.
    pub fn key(&self, data: &EventData<'_>) -> Option<String> {
        use cel::Value;
        match data.eval(&self.program)? {
            Value::String(s) => Some(s.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// One input of a routed subscriber.
#[derive(Clone, Debug)]
pub struct RoutedInput {
    /// The input's name in the condition.
    pub name: String,
    /// Where its events are.
    pub subject: Subject,
    /// Filters its events must pass.
    pub filters: Arc<Vec<CompiledFilter>>,
    /// Its correlation key, if the Trigger joins by key.
    pub key: Option<Arc<KeyExpr>>,
}

/// The routing half of a Trigger subscriber: which events fire it.
#[derive(Debug)]
pub struct Routing {
    /// The subscriber's metric labels.
    pub labels: SubscriberLabels,
    /// The condition over the input names.
    pub condition: Arc<Condition>,
    /// The inputs, one per name of the condition, in the order of `condition.names()`.
    pub inputs: Vec<RoutedInput>,
    /// How long an input stays true after its latest event.
    pub window: Duration,
    /// Forget the events that made the condition true when it fires.
    pub consume: bool,
    /// Most correlation keys kept.
    pub max_keys: usize,
    /// Where fired events go: the subscriber's queue.
    pub queue: Subject,
}

/// An event a subscriber fired on, to be put on its queue.
#[derive(Debug)]
pub struct Fired {
    /// Index of the subscriber in the router's list.
    pub routing: usize,
    /// The firing event, with [`EXT_JOINED`] set when other inputs' events joined it.
    pub event: Arc<Event>,
}

/// Where an input is: (subscriber, input) indexes.
type InputRef = (u32, u32);

/// The inputs of one subject.
#[derive(Debug, Default)]
struct SubjectIndex {
    /// Per attribute name, the inputs that require a value of it.
    keyed: Vec<(String, HashMap<String, Vec<InputRef>>)>,
    /// Inputs without an exact attribute to index on.
    rest: Vec<InputRef>,
}

/// The latest event of each input, for one correlation key.
#[derive(Debug, Clone, Default)]
struct KeyState {
    /// Per input (as `Routing::inputs`), the bus time and id of its latest event.
    seen: Vec<Option<(DateTime<Utc>, String)>>,
    /// The latest bus time of any of them.
    touched: DateTime<Utc>,
}

/// The condition state of one subscriber.
#[derive(Debug, Default)]
struct JoinState {
    keys: HashMap<String, KeyState>,
    /// Observations since expired keys were last swept.
    since_sweep: usize,
}

impl JoinState {
    /// Drops keys whose every input left the window before `at`, then, when over
    /// `max_keys`, the least recently seen.
    fn sweep(&mut self, at: DateTime<Utc>, window: TimeDelta, max_keys: usize) {
        self.since_sweep = 0;
        self.keys.retain(|_, k| at - k.touched < window);
        if self.keys.len() > max_keys {
            let mut touched: Vec<DateTime<Utc>> = self.keys.values().map(|k| k.touched).collect();
            touched.sort_unstable();
            // Forget down to 90% so that the next sweeps are not at every event.
            let cut = touched[self.keys.len() - max_keys * 9 / 10];
            self.keys.retain(|_, k| k.touched >= cut);
        }
    }
}

/// Decides which subscribers each event fires. Built once from every routed subscriber of a
/// bus; evaluation is synchronous and never fails: an event a filter, key or condition cannot
/// judge does not fire, and is counted.
pub struct Router {
    routings: Vec<Arc<Routing>>,
    index: HashMap<Subject, SubjectIndex>,
    state: Vec<JoinState>,
    metrics: TriggerMetrics,
}

impl Router {
    /// A router over `routings`, indexed.
    pub fn new(routings: Vec<Arc<Routing>>, metrics: TriggerMetrics) -> Self {
        let mut index: HashMap<Subject, SubjectIndex> = HashMap::new();
        for (r, routing) in routings.iter().enumerate() {
            for (i, input) in routing.inputs.iter().enumerate() {
                let at = (as_u32(r), as_u32(i));
                let entry = index.entry(input.subject.clone()).or_default();
                match input.filters.iter().find_map(CompiledFilter::index_key) {
                    Some((attribute, value)) => {
                        let slot = match entry.keyed.iter().position(|(a, _)| *a == attribute) {
                            Some(p) => p,
                            None => {
                                entry.keyed.push((attribute, HashMap::new()));
                                entry.keyed.len() - 1
                            }
                        };
                        entry.keyed[slot].1.entry(value).or_default().push(at);
                    }
                    None => entry.rest.push(at),
                }
            }
        }
        let state = routings.iter().map(|_| JoinState::default()).collect();
        Self { routings, index, state, metrics }
    }

    /// The subscribers, in the order [`Fired::routing`] refers to.
    pub fn routings(&self) -> &[Arc<Routing>] {
        &self.routings
    }

    /// Every subject some subscriber reads.
    pub fn subjects(&self) -> Vec<Subject> {
        let mut subjects: Vec<Subject> = self.index.keys().cloned().collect();
        subjects.sort();
        subjects
    }

    /// Routes one event of `subject`, published at `at`: records it in the condition state
    /// of every subscriber whose input it belongs to, and returns the subscribers it fires.
    pub fn route(
        &mut self,
        subject: &Subject,
        event: &Arc<Event>,
        at: DateTime<Utc>,
    ) -> Vec<Fired> {
        let Some(index) = self.index.get(subject) else { return Vec::new() };
        let mut candidates: Vec<InputRef> = index.rest.clone();
        for (attribute, values) in &index.keyed {
            if let Some(found) =
                crate::filter::attribute(event, attribute).and_then(|v| values.get(&v))
            {
                candidates.extend_from_slice(found);
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        candidates.sort_unstable();
        let data = EventData::new(event);
        let mut fired = Vec::new();
        for group in candidates.chunk_by(|a, b| a.0 == b.0) {
            let r = group[0].0 as usize;
            let routing = self.routings[r].clone();
            let passed: Vec<usize> = group
                .iter()
                .map(|(_, i)| *i as usize)
                .filter(|i| data.passes(&routing.inputs[*i].filters))
                .collect();
            match self.observe(r, &routing, &passed, &data, at) {
                Some(event) => fired.push(Fired { routing: r, event }),
                None => {
                    self.metrics.filtered.get_or_create(&routing.labels).inc();
                }
            }
        }
        fired
    }

    /// Records the event for the inputs in `passed` and evaluates the condition; the event
    /// to queue if it fires.
    fn observe(
        &mut self,
        r: usize,
        routing: &Routing,
        passed: &[usize],
        data: &EventData<'_>,
        at: DateTime<Utc>,
    ) -> Option<Arc<Event>> {
        let first = *passed.first()?;
        let key = match &routing.inputs[first].key {
            None => String::new(),
            Some(expr) => match expr.key(data) {
                Some(key) => key,
                None => {
                    self.metrics.unkeyed.get_or_create(&routing.labels).inc();
                    tracing::debug!(subscriber = ?routing.labels, key = expr.text(), id = %data.event().id(), "event has no correlation key; it cannot join");
                    return None;
                }
            },
        };
        let window = TimeDelta::from_std(routing.window).unwrap_or(TimeDelta::MAX);
        let state = &mut self.state[r];
        state.since_sweep += 1;
        if state.since_sweep >= 1024 || state.keys.len() > routing.max_keys {
            state.sweep(at, window, routing.max_keys);
        }
        let entry = state
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyState { seen: vec![None; routing.inputs.len()], touched: at });
        let id = data.event().id();
        for i in passed {
            let newer = entry.seen[*i].as_ref().is_none_or(|(t, _)| *t <= at);
            if newer {
                entry.seen[*i] = Some((at, id.to_string()));
            }
        }
        entry.touched = entry.touched.max(at);
        let mut bits = 0u64;
        for (i, seen) in entry.seen.iter().enumerate() {
            if seen.as_ref().is_some_and(|(t, _)| at - *t < window) {
                bits |= 1 << i;
            }
        }
        let fires = match routing.condition.evaluate_bits(bits) {
            Ok(fires) => fires,
            Err(error) => {
                tracing::error!(subscriber = ?routing.labels, %error, "condition failed to evaluate; treating it as false");
                false
            }
        };
        let joined: Vec<String> = if fires {
            entry
                .seen
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0 && !passed.contains(i))
                .filter_map(|(i, s)| {
                    s.as_ref().map(|(_, id)| format!("{}={id}", routing.inputs[i].name))
                })
                .collect()
        } else {
            Vec::new()
        };
        if fires && routing.consume {
            state.keys.remove(&key);
        }
        self.metrics.join_keys.get_or_create(&routing.labels).set(as_i64(state.keys.len()));
        if !fires {
            return None;
        }
        if joined.is_empty() {
            return Some(Arc::new(data.event().clone()));
        }
        let mut event = data.event().clone();
        event.set_extension(EXT_JOINED, joined.join(","));
        Some(Arc::new(event))
    }
}

fn as_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Opens the router's durable consumer `consumer` on every subject a subscriber reads. Do this
/// before any source starts, so that the sources' first events are routed. Replicas that route
/// the same Triggers share one consumer name, and so the work.
pub async fn subscribe(
    router: &Router,
    bus: &dyn EventBus,
    consumer: &str,
    max_in_flight: usize,
) -> Result<Box<dyn ofe_eventbus::Subscription>, BusError> {
    let options = SubscribeOptions {
        consumer: consumer.to_string(),
        subjects: router.subjects(),
        max_in_flight,
        start: StartPosition::New,
        max_deliver: None,
    };
    bus.subscribe(options).await
}

/// Runs the router until `shutdown`: reads input events in batches, routes them, puts what
/// fired on the subscribers' queues, and then acknowledges the batch.
pub async fn run(
    mut router: Router,
    mut subscription: Box<dyn ofe_eventbus::Subscription>,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            d = subscription.next() => match d {
                Ok(d) => d,
                Err(BusError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match subscription.next().now_or_never() {
                Some(Ok(d)) => batch.push(d),
                Some(Err(BusError::Closed)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        let mut publishes = Vec::new();
        for delivery in &batch {
            for fired in router.route(&delivery.subject, &delivery.event, delivery.published_at) {
                let routing = &router.routings()[fired.routing];
                router.metrics.received.get_or_create(&routing.labels).inc();
                let (bus, queue) = (bus.clone(), routing.queue.clone());
                publishes.push(async move { bus.publish(&queue, &fired.event).await });
            }
        }
        // Polled in order, so each queue receives its events in input order.
        let results = futures::future::join_all(publishes).await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            tracing::warn!(%error, events = batch.len(), "cannot queue routed events; they will be routed again");
            settle(batch, Some(RETRY_DELAY)).await;
            continue;
        }
        settle(batch, None).await;
    }
}

/// Acknowledges a batch, or asks for it again after `retry`.
async fn settle(batch: Vec<Delivery>, retry: Option<Duration>) {
    let settled = batch.into_iter().map(|d| async move {
        match retry {
            None => d.ack().await,
            Some(delay) => d.nack(delay).await,
        }
    });
    for result in futures::future::join_all(settled).await {
        if let Err(error) = result {
            tracing::warn!(%error, "cannot settle a routed event; it may be routed again");
        }
    }
}
