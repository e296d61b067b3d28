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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader as _, Event};
use futures::FutureExt as _;
use ofe_core::{
    BusError, Delivery, EventBus, StartPosition, StateError, StateStore, Subject, SubscribeOptions,
};
use tokio_util::sync::CancellationToken;

use crate::condition::ConditionExpr;
use crate::filter::{CompiledFilter, EventData};
pub use crate::key::KeyExpr;
use crate::metrics::{SubscriberLabels, TriggerMetrics};
use ofe_core::tap::Stage;
use ofe_core::trace::{self, KeyValue, SpanKind};

/// Extension attribute on an event that fired a join: the ids of the other inputs' events
/// that made the condition true, as `input=id` pairs joined by `,` (sorted by input name).
pub const EXT_JOINED: &str = "ofejoined";

/// Extension attribute on an event routed as poison: why its subscriber's filters cannot read
/// it. Its delivery worker sends it to the dead letter with this reason, not to the sink.
pub const EXT_POISON: &str = "ofepoison";

/// Observations of a subscriber's join state between two sweeps of its expired keys.
const SWEEP_EVERY: usize = 1024;

/// Input events the router reads before it publishes and acknowledges them together.
const BATCH: usize = 256;

/// How long the router waits before a batch whose queue publish failed comes back.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Correlation keys kept per subscriber when the Trigger sets no `maxKeys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

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
    pub condition: Arc<ConditionExpr>,
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

impl Routing {
    /// Whether its condition joins several inputs, and so keeps state between events.
    pub fn joins(&self) -> bool {
        self.condition.names().len() > 1
    }

    /// Why its condition did not fire, with each input's value (`on(i)` for input `i`):
    /// ``the condition `start && stop` was false: start=false, stop=true``, and the window
    /// when it joins. The live flow and `ofe test` say it alike.
    pub fn condition_verdict(&self, on: impl Fn(usize) -> bool) -> String {
        let values: Vec<String> =
            self.inputs.iter().enumerate().map(|(i, x)| format!("{}={}", x.name, on(i))).collect();
        let within = if self.joins() {
            format!(" (an input is true for {:?} after its latest event)", self.window)
        } else {
            String::new()
        };
        format!(
            "the condition `{}` was false: {}{within}",
            self.condition.text(),
            values.join(", ")
        )
    }
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

/// How many recent firings a key remembers, so that an input event routed again after a
/// crash fires again with the same joined events, even when `consume` cleared them.
const FIRED_MEMORY: usize = 16;

/// The latest event of each input, for one correlation key.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct KeyState {
    /// Per input name, the bus time (ms) and id of its latest event.
    seen: BTreeMap<String, (i64, String)>,
    /// The latest bus time (ms) of any of them.
    touched: i64,
    /// Recent firings: the firing event's id and what it joined.
    fired: VecDeque<(String, String)>,
    /// The store's revision of this state; `None` when the store has none.
    #[serde(skip)]
    revision: Option<u64>,
    /// Changed since it was last written.
    #[serde(skip)]
    dirty: bool,
}

/// The condition state of one subscriber: the keys it holds in memory.
#[derive(Debug, Default)]
struct JoinState {
    keys: HashMap<String, KeyState>,
    /// Observations since expired keys were last swept.
    since_sweep: usize,
    /// The latest bus time (ms) of an event it recorded: the "now" of its sweeps.
    latest: i64,
    /// Listed in [`Router::due`], to be swept before the next batch.
    due: bool,
}

impl JoinState {
    /// Drops keys whose every input left the window before `at`, then, when over
    /// `max_keys`, the least recently seen; returns the keys dropped.
    fn sweep(&mut self, at: i64, window_ms: i64, max_keys: usize) -> Vec<String> {
        self.since_sweep = 0;
        let mut dropped = Vec::new();
        self.keys.retain(|key, k| {
            let keep = at - k.touched < window_ms || k.dirty;
            if !keep {
                dropped.push(key.clone());
            }
            keep
        });
        if self.keys.len() > max_keys {
            let mut touched: Vec<i64> = self.keys.values().map(|k| k.touched).collect();
            touched.sort_unstable();
            // Forget down to 90% so that the next sweeps are not at every event.
            let cut = touched[self.keys.len() - max_keys * 9 / 10];
            self.keys.retain(|key, k| {
                let keep = k.touched >= cut || k.dirty;
                if !keep {
                    dropped.push(key.clone());
                }
                keep
            });
        }
        dropped
    }
}

/// What one input event means for one subscriber: the inputs it passed, under which key.
#[derive(Debug, Clone)]
pub struct Touch {
    /// Index of the subscriber.
    pub routing: usize,
    /// Indexes (in `Routing::inputs`) of the inputs whose filters it passed.
    passed: Vec<usize>,
    /// Its correlation key (empty without one).
    pub key: String,
    /// Why the event is poison to this subscriber: its filters read data that does not
    /// parse. It goes to the subscriber's dead letter, with the reason, not to its sink.
    poison: Option<String>,
}

/// Decides which subscribers each event fires. Built once from every routed subscriber of a
/// bus. Evaluation never fails: an event a filter, key or condition cannot judge does not
/// fire, and is counted. With a [state store](Router::with_store), the join state of
/// conditions over several inputs is kept there too, so that a restart or another replica
/// continues the joins.
pub struct Router {
    routings: Vec<Arc<Routing>>,
    index: HashMap<Subject, SubjectIndex>,
    state: Vec<JoinState>,
    metrics: TriggerMetrics,
    store: Option<Arc<dyn StateStore>>,
    /// Keys dropped from memory whose stored state should go too.
    forgotten: Vec<String>,
    /// The routings whose state is due a sweep. Kept as a list rather than found by looking
    /// at every routing before each batch, which with 10,000 Triggers was a sixth of the
    /// router's time.
    due: Vec<usize>,
    /// The keys changed since the last flush, to write without looking at every key held
    /// (with 100,000 keys, that look took a quarter of the router's time per batch).
    dirty: Vec<(usize, String)>,
}

impl Router {
    /// A router over `routings`, indexed, keeping join state in memory only.
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
        Self {
            routings,
            index,
            state,
            metrics,
            store: None,
            forgotten: Vec::new(),
            due: Vec::new(),
            dirty: Vec::new(),
        }
    }

    /// Keeps join state in `store` as well as in memory.
    pub fn with_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
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

    /// Routes one event of `subject`, published at `at`, with the state in memory: records it
    /// in the condition state of every subscriber whose input it belongs to, and returns the
    /// subscribers it fires.
    pub fn route(
        &mut self,
        subject: &Subject,
        event: &Arc<Event>,
        at: DateTime<Utc>,
    ) -> Vec<Fired> {
        self.sweep_due();
        self.touches(subject, event)
            .iter()
            .filter_map(|t| {
                self.apply(t, event, at).map(|event| Fired { routing: t.routing, event })
            })
            .collect()
    }

    /// The subscribers `event` concerns, after the index and the filters, with its
    /// correlation key for each. Candidates whose filters all fail count as filtered.
    pub fn touches(&self, subject: &Subject, event: &Event) -> Vec<Touch> {
        let Some(index) = self.index.get(subject) else { return Vec::new() };
        let mut candidates: Vec<InputRef> = index.rest.clone();
        for (attribute, values) in &index.keyed {
            if let Some(found) =
                crate::filter::attribute(event, attribute).and_then(|v| values.get(v.as_ref()))
            {
                candidates.extend_from_slice(found);
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        candidates.sort_unstable();
        let data = EventData::new(event);
        let mut touches = Vec::new();
        for group in candidates.chunk_by(|a, b| a.0 == b.0) {
            let r = group[0].0 as usize;
            let routing = &self.routings[r];
            let passed: Vec<usize> = group
                .iter()
                .map(|(_, i)| *i as usize)
                .filter(|i| data.passes(&routing.inputs[*i].filters))
                .collect();
            let Some(first) = passed.first() else {
                let reads_data = group.iter().any(|(_, i)| {
                    routing.inputs[*i as usize].filters.iter().any(CompiledFilter::reads_data)
                });
                if let Some(reason) = reads_data.then(|| data.invalid_json()).flatten() {
                    let poison = Some(reason);
                    touches.push(Touch {
                        routing: r,
                        passed: Vec::new(),
                        key: String::new(),
                        poison,
                    });
                    continue;
                }
                self.metrics.filtered.get_or_create(&routing.labels).inc();
                if self.metrics.tap.is_listened() {
                    let event = Arc::new(event.clone());
                    self.metrics.tap(Stage::Filtered, &routing.labels, &event, || {
                        Some(filtered_verdict(routing, group, &data))
                    });
                }
                continue;
            };
            let key = match &routing.inputs[*first].key {
                None => String::new(),
                Some(expr) => match expr.key(&data) {
                    Some(key) => key,
                    None => {
                        self.metrics.unkeyed.get_or_create(&routing.labels).inc();
                        tracing::debug!(subscriber = ?routing.labels, key = expr.text(), id = %event.id(), "event has no correlation key; it cannot join");
                        continue;
                    }
                },
            };
            touches.push(Touch { routing: r, passed, key, poison: None });
        }
        touches
    }

    /// Whether `touch` needs join state: its condition names more than one input.
    pub fn is_stateful(&self, touch: &Touch) -> bool {
        touch.poison.is_none() && self.routings[touch.routing].joins()
    }

    /// The store key of a subscriber's correlation key.
    fn store_key(&self, routing: usize, key: &str) -> String {
        let labels = &self.routings[routing].labels;
        ofe_core::state_key(&[&labels.namespace, &labels.trigger, &labels.subscriber, key])
    }

    /// Sweeps the join state of each subscriber that is due: every 1024 events it recorded,
    /// or when it holds more than its `maxKeys`. It runs between batches, never while one is
    /// applied: a sweep in the middle of a batch took the keys the batch had just loaded for
    /// new (they have no events yet, so they look expired) and deleted them from the store
    /// after the batch had written them, and a later event of such a key was routed again on
    /// no state and never joined.
    fn sweep_due(&mut self) {
        let persist = self.store.is_some();
        for r in std::mem::take(&mut self.due) {
            let routing = &self.routings[r];
            let state = &mut self.state[r];
            state.due = false;
            let window = i64::try_from(routing.window.as_millis()).unwrap_or(i64::MAX);
            let dropped = state.sweep(state.latest, window, routing.max_keys);
            // Only a store has anything to forget; in memory, dropping the keys was all.
            if persist {
                let forgotten: Vec<String> =
                    dropped.iter().map(|key| self.store_key(r, key)).collect();
                self.forgotten.extend(forgotten);
            }
        }
    }

    /// Brings the stored state of every stateful touch that is not in memory into memory,
    /// after sweeping what is due (see [`Router::sweep_due`]).
    pub async fn load(&mut self, touches: &[&Touch]) -> Result<(), BusError> {
        self.sweep_due();
        let Some(store) = self.store.clone() else { return Ok(()) };
        let mut missing: Vec<(usize, String)> = touches
            .iter()
            .filter(|t| self.is_stateful(t))
            .filter(|t| !self.state[t.routing].keys.contains_key(&t.key))
            .map(|t| (t.routing, t.key.clone()))
            .collect();
        missing.sort();
        missing.dedup();
        let reads = missing.iter().map(|(r, key)| {
            let (store, stored) = (store.clone(), self.store_key(*r, key));
            async move { store.get(&stored).await }
        });
        let found = futures::future::join_all(reads).await;
        for ((r, key), found) in missing.into_iter().zip(found) {
            let state = match found? {
                None => KeyState::default(),
                Some(v) => {
                    let mut state: KeyState = serde_json::from_slice(&v.value).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, key, "unreadable join state; starting the key afresh");
                        KeyState::default()
                    });
                    state.revision = Some(v.revision);
                    state
                }
            };
            self.state[r].keys.insert(key, state);
        }
        Ok(())
    }

    /// Writes every changed key to the store. Returns the keys whose write lost a race with
    /// another replica (or failed): they are dropped from memory, and the events that touched
    /// them must be routed again.
    pub async fn flush(&mut self) -> HashSet<(usize, String)> {
        // Without a store nothing is marked changed: memory is all the state there is.
        let Some(store) = self.store.clone() else { return HashSet::new() };
        let mut writes = Vec::new();
        for (r, key) in std::mem::take(&mut self.dirty) {
            let Some(k) = self.state[r].keys.get(&key).filter(|k| k.dirty) else { continue };
            let value = serde_json::to_vec(k).unwrap_or_default();
            let (store, stored, revision) = (store.clone(), self.store_key(r, &key), k.revision);
            writes.push(async move { ((r, key), store.put(&stored, value, revision).await) });
        }
        let mut failed = HashSet::new();
        for ((r, key), result) in futures::future::join_all(writes).await {
            match result {
                Ok(revision) => {
                    if let Some(k) = self.state[r].keys.get_mut(&key) {
                        k.revision = Some(revision);
                        k.dirty = false;
                    }
                }
                Err(error) => {
                    if !matches!(error, StateError::Conflict) {
                        tracing::warn!(error = %ofe_core::Report(&error), key, "cannot store join state; the events will be routed again");
                    }
                    self.state[r].keys.remove(&key);
                    failed.insert((r, key));
                }
            }
        }
        let forgotten = std::mem::take(&mut self.forgotten);
        if !forgotten.is_empty() {
            // Expired or evicted state is useless; removing it may wait.
            tokio::spawn(async move {
                for key in forgotten {
                    let _ = store.delete(&key).await;
                }
            });
        }
        failed
    }

    /// Records `touch` (of `event`, published at `at`) in the subscriber's state in memory
    /// and evaluates the condition; the event to queue if it fires. Stateful touches must
    /// have been [loaded](Router::load) when there is a store.
    pub fn apply(
        &mut self,
        touch: &Touch,
        event: &Arc<Event>,
        at: DateTime<Utc>,
    ) -> Option<Arc<Event>> {
        if let Some(reason) = &touch.poison {
            // Straight to the subscriber, whose worker dead-letters it: no condition can
            // judge an input it cannot read.
            let mut event = Event::clone(event);
            event.set_extension(EXT_POISON, reason.as_str());
            return Some(Arc::new(event));
        }
        let routing = self.routings[touch.routing].clone();
        if !routing.joins() {
            // Nothing else to join: the condition's value for its own input decides.
            return self
                .fires(&routing, 1)
                .then(|| event.clone())
                .or_else(|| self.not_fired(&routing, event, 1));
        }
        let at = at.timestamp_millis();
        let window = i64::try_from(routing.window.as_millis()).unwrap_or(i64::MAX);
        let persist = self.store.is_some();
        let state = &mut self.state[touch.routing];
        state.since_sweep += 1;
        state.latest = state.latest.max(at);
        let entry = state.keys.entry(touch.key.clone()).or_default();
        let id = event.id();
        // Routed again (a crash before the acknowledgement): fire as the first time did.
        if let Some((_, joined)) = entry.fired.iter().find(|(fired, _)| fired == id) {
            return Some(with_joined(event, joined));
        }
        for i in &touch.passed {
            let name = &routing.inputs[*i].name;
            if entry.seen.get(name).is_none_or(|(t, _)| *t <= at) {
                entry.seen.insert(name.clone(), (at, id.to_string()));
            }
        }
        entry.touched = entry.touched.max(at);
        if persist && !entry.dirty {
            entry.dirty = true;
            self.dirty.push((touch.routing, touch.key.clone()));
        }
        let mut bits = 0u64;
        for (i, input) in routing.inputs.iter().enumerate() {
            if entry.seen.get(&input.name).is_some_and(|(t, _)| at - *t < window) {
                bits |= 1 << i;
            }
        }
        let keys = state.keys.len();
        if !state.due && (state.since_sweep >= SWEEP_EVERY || keys > routing.max_keys) {
            state.due = true;
            self.due.push(touch.routing);
        }
        self.metrics.join_keys.get_or_create(&routing.labels).set(as_i64(keys));
        if !self.fires(&routing, bits) {
            return self.not_fired(&routing, event, bits);
        }
        let entry = self.state[touch.routing].keys.entry(touch.key.clone()).or_default();
        let joined: Vec<String> = routing
            .inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0 && !touch.passed.contains(i))
            .filter_map(|(_, input)| {
                entry.seen.get(&input.name).map(|(_, id)| format!("{}={id}", input.name))
            })
            .collect();
        let joined = joined.join(",");
        if routing.consume {
            entry.seen.clear();
        }
        entry.fired.push_back((id.to_string(), joined.clone()));
        if entry.fired.len() > FIRED_MEMORY {
            entry.fired.pop_front();
        }
        Some(with_joined(event, &joined))
    }

    /// Per input of subscriber `routing`, whether it is true for correlation key `key` at `at`
    /// (it had an event within the window): what `ofe test` shows of a condition that did not
    /// fire. Inputs of a condition over one input are never held, so they show false.
    pub fn inputs_true(&self, routing: usize, key: &str, at: DateTime<Utc>) -> Vec<(String, bool)> {
        let routing_spec = &self.routings[routing];
        let window = i64::try_from(routing_spec.window.as_millis()).unwrap_or(i64::MAX);
        let at = at.timestamp_millis();
        let entry = self.state[routing].keys.get(key);
        routing_spec
            .inputs
            .iter()
            .map(|input| {
                let seen = entry.and_then(|e| e.seen.get(&input.name));
                (input.name.clone(), seen.is_some_and(|(t, _)| at - *t < window))
            })
            .collect()
    }

    /// Evaluates `routing`'s condition with the inputs of `bits` active.
    fn fires(&self, routing: &Routing, bits: u64) -> bool {
        routing.condition.evaluate_bits(bits).unwrap_or_else(|error| {
            tracing::error!(subscriber = ?routing.labels, %error, "condition failed to evaluate; treating it as false");
            false
        })
    }

    /// Counts an event that did not fire `routing`, whose inputs were `bits`.
    fn not_fired(&self, routing: &Routing, event: &Arc<Event>, bits: u64) -> Option<Arc<Event>> {
        self.metrics.filtered.get_or_create(&routing.labels).inc();
        self.metrics.tap(Stage::Filtered, &routing.labels, event, || {
            Some(routing.condition_verdict(|i| bits & (1 << i) != 0))
        });
        None
    }
}

/// Why no input of `group` (all of `routing`'s) let the event in: each input's first false
/// filter with what the event holds (`input `overspeed`: `data.speed > 120.0` was false;
/// data.speed = 97`). Built only while the tap is listened to.
fn filtered_verdict(routing: &Routing, group: &[InputRef], data: &EventData<'_>) -> String {
    let each: Vec<String> = group
        .iter()
        .map(|(_, i)| &routing.inputs[*i as usize])
        .map(|input| match input.filters.iter().find(|f| !f.matches(data)) {
            Some(filter) => format!("input `{}`: {}", input.name, filter.verdict(data)),
            None => format!("input `{}`: passed", input.name),
        })
        .collect();
    each.join(" · ")
}

/// `event`, with [`EXT_JOINED`] set to `joined`; the same shared event, not a copy, when
/// nothing joined it.
fn with_joined(event: &Arc<Event>, joined: &str) -> Arc<Event> {
    if joined.is_empty() {
        return event.clone();
    }
    let mut event = Event::clone(event);
    event.set_extension(EXT_JOINED, joined);
    Arc::new(event)
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
) -> Result<Box<dyn ofe_core::Subscription>, BusError> {
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
    mut subscription: Box<dyn ofe_core::Subscription>,
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
        let read_at = std::time::Instant::now();
        for d in &batch {
            router.metrics.stages.bus_to_router.since(d.published_at);
        }
        let spans = filter_spans(&mut batch);
        // What each event means for each subscriber; then the join state it needs, from the
        // store; then the decisions, in input order; then the state, written back.
        let touches: Vec<Vec<Touch>> =
            batch.iter().map(|d| router.touches(&d.subject, &d.event)).collect();
        let needed: Vec<&Touch> = touches.iter().flatten().collect();
        if let Err(error) = router.load(&needed).await {
            tracing::warn!(error = %ofe_core::Report(&error), events = batch.len(), "cannot read join state; the events will be routed again");
            settle(batch, Some(RETRY_DELAY)).await;
            continue;
        }
        let mut fired = Vec::new();
        for (n, (delivery, touches)) in batch.iter().zip(&touches).enumerate() {
            for touch in touches {
                if let Some(event) = router.apply(touch, &delivery.event, delivery.published_at) {
                    fired.push((n, touch.routing, event));
                }
            }
        }
        let lost = router.flush().await;
        // An event whose join state another replica changed first is routed again, on the
        // state that won; what it already fired comes back from that state's memory.
        let again: HashSet<usize> = touches
            .iter()
            .enumerate()
            .filter(|(_, ts)| ts.iter().any(|t| lost.contains(&(t.routing, t.key.clone()))))
            .map(|(n, _)| n)
            .collect();
        let mut publishes = Vec::new();
        for (n, r, event) in fired {
            if again.contains(&n) {
                continue;
            }
            let routing = &router.routings()[r];
            if let Some(span) = spans.get(n) {
                note_fired(span, routing);
            }
            router.metrics.received.get_or_create(&routing.labels).inc();
            router.metrics.tap(Stage::Routed, &routing.labels, &event, || None);
            let (bus, queue) = (bus.clone(), routing.queue.clone());
            publishes.push(async move { bus.publish_shared(&queue, event).await });
        }
        // Polled in order, so each queue receives its events in input order.
        let results = futures::future::join_all(publishes).await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            tracing::warn!(error = %ofe_core::Report(&error), events = batch.len(), "cannot queue routed events; they will be routed again");
            settle(batch, Some(RETRY_DELAY)).await;
            continue;
        }
        for _ in &batch {
            router.metrics.stages.route.observe(|| read_at.elapsed().as_secs_f64());
        }
        let (retry, done): (Vec<_>, Vec<_>) =
            batch.into_iter().enumerate().partition(|(n, _)| again.contains(n));
        settle(done.into_iter().map(|(_, d)| d).collect(), None).await;
        settle(retry.into_iter().map(|(_, d)| d).collect(), Some(Duration::ZERO)).await;
    }
}

/// One `filter` span per event of `batch` when tracing is on (none when off): each a child
/// of the hop that published the event, ended when the batch is queued. Each event is
/// stamped with its span once, here, so whatever it fires (shared, joined or poison) carries
/// it to the delivery's span without a copy per subscriber.
fn filter_spans(batch: &mut [Delivery]) -> Vec<trace::Span> {
    if !trace::enabled() {
        return Vec::new();
    }
    batch
        .iter_mut()
        .map(|d| {
            let mut attributes = trace::event_attributes(&d.event);
            attributes.extend(trace::messaging("process", &d.subject));
            let span = trace::Span::for_event("filter", SpanKind::Consumer, &d.event, attributes);
            span.stamp_hop(Arc::make_mut(&mut d.event));
            span
        })
        .collect()
}

/// Notes on the filter `span` that the subscriber `routing` fired.
fn note_fired(span: &trace::Span, routing: &Routing) {
    span.note(
        "fired",
        vec![
            KeyValue::new("ofe.trigger", routing.labels.trigger.clone()),
            KeyValue::new("ofe.subscriber", routing.labels.subscriber.clone()),
        ],
    );
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
            tracing::warn!(error = %ofe_core::Report(&error), "cannot settle a routed event; it may be routed again");
        }
    }
}
