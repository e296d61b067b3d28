//! ofe Triggers: subscriber conditions in CEL over the Trigger's inputs, and reliable delivery to
//! function sinks and bus topics.
//!
//! - [`condition`]: compiling and evaluating conditions, with errors that point at the column.
//! - [`delivery`]: HTTP (CloudEvents binary mode) and topic destinations, retries, dead letters.
//! - [`router`]: one consumer per bus reads every input once, and an index on exact attribute
//!   values picks the subscribers an event can fire; what fires goes to the subscriber's queue.
//! - [`runner`]: one durable consumer per subscriber queue, bounded in-flight delivery, ack
//!   after delivery or dead-letter.
//! - [`plan`] turns a `Trigger` resource into [`runner::SubscriberPlan`]s; [`check`] is what
//!   `ofe validate` asks of this crate.

pub mod condition;
pub mod deadletters;
pub mod dedupe;
pub mod delivering;
pub mod delivery;
pub mod filter;
pub mod key;
pub mod metrics;
pub mod offline;
pub mod replay;
pub mod router;
pub mod runner;
pub mod sink;
pub mod transform;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ofe_core::Subject;
use ofe_crds::Trigger;
use ofe_crds::diagnostic::Diagnostic;

pub use condition::{ConditionError, ConditionExpr, EvalError};
pub use delivery::{BackoffPolicy, Deliverer, RetryPolicy};
pub use metrics::{ReplayLabels, SubscriberLabels, TriggerMetrics};
pub use router::{KeyExpr, RoutedInput, Router, Routing};
pub use runner::{Route, SubscriberPlan};
pub use sink::destination as sink_destination;
pub use sink::{Destination, Sink, SinkKind};

/// The next delivery of `consumer`'s `subscription` while it has not read everything the bus
/// holds for it: `None` once its lag is no more than the `unsettled` deliveries the reader
/// holds (the lag counts what is read but not settled too), or when nothing comes within
/// `quiet` (for a bus that cannot tell: Kafka's lag counts other subjects' records too). How a
/// store that must know the past before it answers (dead letters, delivered keys) reads it in.
pub(crate) async fn next_until_caught_up(
    bus: &dyn ofe_core::EventBus,
    consumer: &str,
    subscription: &mut dyn ofe_core::Subscription,
    quiet: Duration,
    unsettled: usize,
) -> Result<Option<ofe_core::Delivery>, ofe_core::BusError> {
    if matches!(bus.lag(consumer).await, Ok(Some(lag)) if lag <= unsettled as u64) {
        return Ok(None);
    }
    match tokio::time::timeout(quiet, subscription.next()).await {
        Ok(Ok(d)) => Ok(Some(d)),
        Ok(Err(ofe_core::BusError::Closed)) | Err(_) => Ok(None),
        Ok(Err(e)) => Err(e),
    }
}

/// The window when a Trigger sets none, as in OpenFunction.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Deliveries in flight per subscriber (`delivery.maxConcurrency`). A subscriber delivers at
/// most this many ÷ the sink's latency per second: 64 capped a sink answering in 10 ms at
/// 6,400 events/s, and events waited on the queue whenever the sink slowed for a moment.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Deliveries of one event to one subscriber before it is dead-lettered unattempted.
pub const DEFAULT_MAX_DELIVER: u32 = 20;

fn input_names(trigger: &Trigger) -> BTreeSet<String> {
    trigger.spec.inputs.keys().cloned().collect()
}

/// Compiles every condition, filter and correlation key of `trigger`, and its window; what
/// cannot be used becomes a diagnostic at its field path, with the expression and a caret.
pub fn check(trigger: &Trigger) -> Vec<Diagnostic> {
    compile(trigger, RetryPolicy::default()).err().unwrap_or_default()
}

/// The expressions and headers of `sink` (at `path`), if there is one: what cannot be used
/// becomes a diagnostic at its field path (the URL itself is `ofe_crds::validate`'s check).
pub fn check_sink(path: &str, sink: Option<&ofe_crds::SinkSpec>) -> Vec<Diagnostic> {
    let Some(sink) = sink else { return Vec::new() };
    let mut out = sink::http::request::RequestMap::compile(path, sink).err().unwrap_or_default();
    // A broker sink's own expression: a Kafka record's key.
    if let Some(key) = sink.kafka.as_ref().and_then(|k| k.key.as_deref())
        && let Err(e) = filter::compile_cel(key)
    {
        out.push(Diagnostic::error(format!("{path}.kafka.key"), e.message));
    }
    out
}

/// How one subscriber delivers, from its `delivery` settings.
#[derive(Debug, Clone)]
struct DeliveryPlan {
    retry: RetryPolicy,
    max_in_flight: usize,
    order_key: Option<Arc<KeyExpr>>,
    rate_limit: Option<u32>,
    delay: Option<Duration>,
    dedupe: Option<Duration>,
    batch: Option<runner::Batch>,
}

/// Reads `spec` (at `path`) over the defaults `base`, pushing a diagnostic per bad field.
/// The topic in which subscriber `index` of Trigger `trigger` keeps, by default, the events
/// that failed for good: `<trigger>.dead-letters.<index>`, in the Trigger's namespace.
pub fn dead_letter_topic(trigger: &str, index: usize) -> String {
    format!("{trigger}.dead-letters.{index}")
}

fn delivery_plan(
    spec: Option<&ofe_crds::DeliverySpec>,
    base: RetryPolicy,
    path: &str,
    errors: &mut Vec<Diagnostic>,
) -> DeliveryPlan {
    let mut plan = DeliveryPlan {
        retry: base,
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        order_key: None,
        rate_limit: None,
        delay: None,
        dedupe: None,
        batch: None,
    };
    let Some(spec) = spec else { return plan };
    let mut error = |field: &str, message: String| {
        errors.push(Diagnostic::error(format!("{path}.delivery.{field}"), message));
    };
    if let Some(retry) = spec.retry {
        match u32::try_from(retry) {
            Ok(n) => plan.retry.retries = n,
            Err(_) => error("retry", format!("is {retry}; use 0 or more retries")),
        }
    }
    match spec.backoff_policy.as_deref() {
        None | Some("exponential") => plan.retry.backoff = delivery::BackoffPolicy::Exponential,
        Some("linear") => plan.retry.backoff = delivery::BackoffPolicy::Linear,
        Some(other) => {
            error("backoffPolicy", format!("is `{other}`; use `linear` or `exponential`"))
        }
    }
    let window = match &spec.dedupe_window {
        None => dedupe::DEFAULT_WINDOW,
        Some(text) => ofe_crds::duration::parse(text).unwrap_or_else(|e| {
            error("dedupeWindow", e.to_string());
            dedupe::DEFAULT_WINDOW
        }),
    };
    if spec.dedupe_window.is_some() && spec.dedupe != Some(true) {
        error("dedupeWindow", "is set without `dedupe: true`; add it, or remove the window".into());
    }
    if spec.dedupe == Some(true) {
        if window.is_zero() {
            error("dedupeWindow", "is zero; remember deliveries for some time, e.g. `10m`".into());
        }
        plan.dedupe = Some(window);
    }
    if let Some(text) = &spec.delay {
        match ofe_crds::duration::parse(text) {
            Ok(d) => plan.delay = Some(d).filter(|d| !d.is_zero()),
            Err(e) => error("delay", e.to_string()),
        }
    }
    let durations = [
        ("backoffDelay", &spec.backoff_delay, &mut plan.retry.delay),
        ("timeout", &spec.timeout, &mut plan.retry.timeout),
        ("retryAfterMax", &spec.retry_after_max, &mut plan.retry.retry_after_max),
    ];
    for (field, text, slot) in durations {
        if let Some(text) = text {
            match ofe_crds::duration::parse(text) {
                Ok(d) => *slot = d,
                Err(e) => error(field, e.to_string()),
            }
        }
    }
    if plan.retry.timeout.is_zero() {
        error("timeout", "is zero; give each attempt some time, e.g. `PT30S`".into());
    }
    match spec.max_concurrency {
        Some(0) => error("maxConcurrency", "is 0; allow at least 1 delivery at a time".into()),
        Some(n) => plan.max_in_flight = n as usize,
        None => {}
    }
    match spec.rate_limit {
        Some(0) => {
            error("rateLimit", "is 0; allow at least 1 event per second, or remove it".into())
        }
        other => plan.rate_limit = other,
    }
    if let Some(text) = &spec.order_key {
        match KeyExpr::compile(text) {
            Ok(k) => plan.order_key = Some(Arc::new(k)),
            Err(e) => error("orderKey", e.message),
        }
    }
    if let Some(batch) = &spec.batch {
        let max_size = batch.max_size.unwrap_or(runner::Batch::DEFAULT_SIZE);
        if !(1..=runner::Batch::MAX_SIZE).contains(&max_size) {
            let most = runner::Batch::MAX_SIZE;
            error("batch.maxSize", format!("is {max_size}; use 1 to {most} events a batch"));
        }
        let max_wait = match &batch.max_wait {
            None => runner::Batch::DEFAULT_WAIT,
            Some(text) => ofe_crds::duration::parse(text).unwrap_or_else(|e| {
                error("batch.maxWait", e.to_string());
                runner::Batch::DEFAULT_WAIT
            }),
        };
        if max_wait.is_zero() {
            error(
                "batch.maxWait",
                "is zero; let a batch wait for more events, e.g. `500ms`".into(),
            );
        }
        if plan.order_key.is_some() && plan.delay.is_some() {
            error(
                "batch",
                "is set with both `orderKey` and `delay`; a batched subscriber's delayed events \
                 wait on the bus, where order is not kept: drop one of the three"
                    .into(),
            );
        }
        plan.batch = Some(runner::Batch { max_size: max_size as usize, max_wait });
    }
    plan
}

/// What a batched subscriber's sink cannot do: compute a URI or header per event, when one
/// request carries many (at `path`, the subscriber).
fn check_batched_sink(path: &str, sub: &ofe_crds::trigger::Subscriber) -> Option<Diagnostic> {
    let sink = sub.sink.as_ref()?;
    sub.delivery.as_ref()?.batch.as_ref()?;
    let per_event = sink.dynamic_headers.as_ref().is_some_and(|h| !h.is_empty())
        || sink.uri.as_deref().and_then(|u| ofe_crds::validate::uri_template(u).ok()).is_some_and(
            |parts| {
                parts.iter().any(|p| matches!(p, ofe_crds::validate::UriPart::Expression { .. }))
            },
        );
    let binary = sink.mode == Some(ofe_crds::ContentMode::Binary);
    (per_event || binary).then(|| {
        Diagnostic::error(
            format!("{path}.delivery.batch"),
            "one request carries the whole batch, as a JSON array of structured events, so the \
             sink cannot set `dynamicHeaders`, expressions in `uri` or `mode: binary`; remove \
             them, or the batch",
        )
    })
}

/// Checks `spec.replays`: names that can run once each, a start, times that parse, and a
/// subscriber that exists.
fn check_replays(trigger: &Trigger, errors: &mut Vec<Diagnostic>) {
    let mut names = BTreeSet::new();
    for (i, replay) in trigger.spec.replays.iter().flatten().enumerate() {
        let mut error = |field: &str, message: String| {
            errors.push(Diagnostic::error(format!("spec.replays[{i}].{field}"), message));
        };
        let name = &replay.name;
        let safe = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if name.is_empty() || name.len() > 63 || !safe {
            error(
                "name",
                format!(
                    "is `{name}`; use 1 to 63 lower-case letters, digits and `-`, e.g. `fix-1`"
                ),
            );
        } else if !names.insert(name.as_str()) {
            error("name", format!("`{name}` is used twice; a replay runs once per name"));
        }
        match (&replay.from, replay.from_start.unwrap_or(false)) {
            (Some(_), true) => error("from", "is set with `fromStart: true`; keep one".into()),
            (None, false) => error(
                "from",
                "is missing; say where the replay starts: `from: 2026-12-03T10:00:00Z` or \
                 `fromStart: true`"
                    .into(),
            ),
            _ => {}
        }
        for (field, text) in [("from", &replay.from), ("to", &replay.to)] {
            if let Some(Err(message)) = text.as_deref().map(ofe_crds::duration::parse_time) {
                error(field, message);
            }
        }
        if let Some(n) = replay.subscriber
            && n as usize >= trigger.spec.subscribers.len()
        {
            let count = trigger.spec.subscribers.len();
            error(
                "subscriber",
                format!(
                    "is {n}, but the Trigger has {count} subscribers (0 to {})",
                    count.saturating_sub(1)
                ),
            );
        }
    }
}

/// A Trigger's expressions, compiled.
struct Compiled {
    window: Duration,
    conditions: Vec<Arc<ConditionExpr>>,
    deliveries: Vec<DeliveryPlan>,
    /// Per subscriber, its transform (none when it has none, or an empty one).
    transforms: Vec<Option<Arc<transform::Transform>>>,
    /// Per input name: its filters and its correlation key.
    inputs: BTreeMap<String, CompiledInput>,
}

/// An input's filters and correlation key.
type CompiledInput = (Arc<Vec<filter::CompiledFilter>>, Option<Arc<KeyExpr>>);

fn compile(trigger: &Trigger, base: RetryPolicy) -> Result<Compiled, Vec<Diagnostic>> {
    let names = input_names(trigger);
    let mut errors = Vec::new();
    let window = match &trigger.spec.window {
        None => DEFAULT_WINDOW,
        Some(text) => ofe_crds::duration::parse(text).unwrap_or_else(|e| {
            errors.push(Diagnostic::error("spec.window", e.to_string()));
            DEFAULT_WINDOW
        }),
    };
    check_replays(trigger, &mut errors);
    let mut conditions = Vec::new();
    let mut deliveries = Vec::new();
    let mut transforms = Vec::new();
    for (i, sub) in trigger.spec.subscribers.iter().enumerate() {
        let path = format!("spec.subscribers[{i}]");
        deliveries.push(delivery_plan(sub.delivery.as_ref(), base, &path, &mut errors));
        transforms.push(sub.transform.as_ref().and_then(
            |spec| match transform::Transform::compile(spec, &format!("{path}.transform")) {
                Ok(t) => (!t.is_empty()).then(|| Arc::new(t)),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
        ));
        if sub.dead_letter_sink.is_some()
            && sub.delivery.as_ref().is_some_and(|d| d.dead_letter_sink.is_some())
        {
            errors.push(Diagnostic::error(
                format!("{path}.delivery.deadLetterSink"),
                "is set as well as the subscriber's `deadLetterSink`; keep one of them",
            ));
        }
        errors.extend(check_sink(&format!("{path}.sink"), sub.sink.as_ref()));
        errors.extend(check_batched_sink(&path, sub));
        errors.extend(check_sink(&format!("{path}.deadLetterSink"), sub.dead_letter_sink.as_ref()));
        let knative = sub.delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref());
        errors.extend(check_sink(&format!("{path}.delivery.deadLetterSink"), knative));
        match ConditionExpr::compile(&sub.condition, &names) {
            Ok(c) => conditions.push(Arc::new(c)),
            Err(e) => errors
                .push(Diagnostic::error(format!("spec.subscribers[{i}].condition"), e.message)),
        }
    }
    let key = |text: &Option<String>, path: String, errors: &mut Vec<Diagnostic>| {
        let text = text.as_deref()?;
        KeyExpr::compile(text)
            .map_err(|e| errors.push(Diagnostic::error(path, e.message)))
            .ok()
            .map(Arc::new)
    };
    let shared_key = key(&trigger.spec.correlation_key, "spec.correlationKey".into(), &mut errors);
    let mut inputs = BTreeMap::new();
    for (name, input) in &trigger.spec.inputs {
        let own_key =
            key(&input.correlation_key, format!("spec.inputs.{name}.correlationKey"), &mut errors);
        let mut list = Vec::new();
        for (i, f) in input.filters.iter().flatten().enumerate() {
            match filter::CompiledFilter::compile(f) {
                Ok(c) => list.push(c),
                Err(e) => errors.push(Diagnostic::error(
                    format!("spec.inputs.{name}.filters[{i}]{}", e.path),
                    e.message,
                )),
            }
        }
        inputs.insert(name.clone(), (Arc::new(list), own_key.or_else(|| shared_key.clone())));
    }
    if errors.is_empty() {
        Ok(Compiled { window, conditions, deliveries, transforms, inputs })
    } else {
        Err(errors)
    }
}

/// What the caller decides for every Trigger it plans.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Retry settings of subscribers that set none.
    pub retry: RetryPolicy,
    /// How a `sink.ref` becomes a URL when there is no Kubernetes to ask: a template with
    /// `{name}`, `{namespace}` and `{kind}` (lower case), e.g.
    /// `http://{name}.{namespace}.svc.cluster.local`. `None`: a `ref` cannot be used.
    pub ref_url_template: Option<String>,
    /// How HTTPS sinks are trusted, and who ofe is to them, unless a sink sets its own
    /// `auth.tls` (whose client still trusts this CA when it names none).
    pub sink_tls: sink::http::tls::SinkTls,
}

/// Which events fire subscriber `i` of `trigger` (whose `condition` is compiled): its inputs
/// with their subjects, filters and keys, the window, and its queue.
fn routing(
    trigger: &Trigger,
    compiled: &Compiled,
    i: usize,
    condition: &Arc<ConditionExpr>,
) -> Routing {
    let namespace = ofe_crds::manifest::namespace_of(&trigger.metadata);
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let inputs = condition
        .names()
        .iter()
        .filter_map(|input| {
            let spec = trigger.spec.inputs.get(input)?;
            let ns = spec.namespace.as_deref().unwrap_or(namespace);
            let subject = match (&spec.topic, &spec.event_source, &spec.event) {
                (Some(topic), _, _) => Subject::topic(ns, topic),
                (None, Some(es), Some(event)) => Subject::event(ns, es, event),
                _ => return None,
            };
            let (filters, key) = compiled.inputs.get(input)?.clone();
            Some(RoutedInput { name: input.clone(), subject, filters, key })
        })
        .collect();
    Routing {
        labels: SubscriberLabels {
            namespace: namespace.to_string(),
            trigger: name.to_string(),
            subscriber: i.to_string(),
        },
        condition: condition.clone(),
        inputs,
        window: compiled.window,
        consume: trigger.spec.consume.unwrap_or(false),
        max_keys: trigger.spec.max_keys.map_or(router::DEFAULT_MAX_KEYS, |n| n as usize),
        queue: Subject::queue(namespace, name, &i.to_string()),
    }
}

/// A subscriber as an offline run needs it: its routing, and its transform if it has one.
pub type OfflineSubscriber = (Arc<Routing>, Option<Arc<transform::Transform>>);

/// What an offline run of `trigger` needs of each subscriber: its routing and its transform,
/// compiled as [`plan`] compiles them, without making any destination (no sink, broker or
/// bus is touched). Fails with the diagnostics of every field that cannot run.
pub fn offline_plan(trigger: &Trigger) -> Result<Vec<OfflineSubscriber>, Vec<Diagnostic>> {
    let compiled = compile(trigger, RetryPolicy::default())?;
    Ok(compiled
        .conditions
        .iter()
        .enumerate()
        .map(|(i, condition)| {
            (Arc::new(routing(trigger, &compiled, i, condition)), compiled.transforms[i].clone())
        })
        .collect())
}

/// Turns a Trigger into one plan per subscriber. Fails with the diagnostics of every field
/// that cannot run.
pub fn plan(
    trigger: &Trigger,
    options: &PlanOptions,
) -> Result<Vec<SubscriberPlan>, Vec<Diagnostic>> {
    let namespace = ofe_crds::manifest::namespace_of(&trigger.metadata);
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let compiled = compile(trigger, options.retry)?;
    let mut errors = Vec::new();
    let mut plans = Vec::new();
    let subscribers = trigger.spec.subscribers.iter().zip(&compiled.conditions);
    let subscribers = subscribers.zip(&compiled.deliveries).zip(&compiled.transforms);
    for (i, (((sub, condition), delivery), transform)) in subscribers.enumerate() {
        let path = format!("spec.subscribers[{i}]");
        let site = sink::SinkSite { path: &path, namespace, options };
        let mut routes = Vec::new();
        // Without a dead letter of its own, a route keeps what fails for good on the bus, in
        // the subscriber's dead-letter topic, unless the subscriber opts out.
        let store = sub.delivery.as_ref().and_then(|d| d.dead_letter_store).unwrap_or(true);
        let topic = dead_letter_topic(name, i);
        let store = store.then(|| Subject::topic(namespace, &topic));
        let mut kept = false;
        for kind in sink::kinds() {
            match kind.route(sub, &site) {
                Some(Ok(r)) => {
                    let dead_letter = r.dead_letter.or_else(|| {
                        kept = true;
                        Some(Destination::topic(topic.clone(), store.clone()?))
                    });
                    routes.push(Route { destination: r.destination, dead_letter });
                }
                Some(Err(e)) => errors.push(e),
                None => {}
            }
        }
        let routing = routing(trigger, &compiled, i, condition);
        let (labels, queue) = (routing.labels.clone(), routing.queue.clone());
        let reply_topic = sub.reply_topic.clone().unwrap_or_else(|| format!("{name}-replies"));
        plans.push(SubscriberPlan {
            consumer: format!("trigger.{namespace}.{name}.{i}"),
            subjects: vec![queue],
            routing: Some(Arc::new(routing)),
            labels,
            routes,
            max_in_flight: delivery.max_in_flight,
            retry: delivery.retry,
            order_key: delivery.order_key.clone(),
            reply: sub.sink.as_ref().map(|_| Subject::topic(namespace, &reply_topic)),
            rate_limit: delivery.rate_limit,
            delay: delivery.delay,
            dedupe: delivery.dedupe,
            max_deliver: DEFAULT_MAX_DELIVER,
            paused: trigger.spec.paused.unwrap_or(false),
            dead_letters: store.filter(|_| kept),
            transform: transform.clone(),
            batch: delivery.batch,
        });
    }
    if errors.is_empty() { Ok(plans) } else { Err(errors) }
}
