//! Prometheus metrics of Triggers.

use std::sync::Arc;

use ofe_core::Event;
use ofe_core::stages::StageHistogram;
use ofe_core::tap::{Stage, StepOrigin, Tap};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming one subscriber of one Trigger.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberLabels {
    /// Namespace of the Trigger (or EventSource, for an EventSource's own sink).
    pub namespace: String,
    /// Trigger name, or `eventsource/<name>` for an EventSource's `sink`.
    pub trigger: String,
    /// Index of the subscriber in `spec.subscribers`, or `sink`.
    pub subscriber: String,
}

/// Labels of a replay's counts: the subscriber, the replay's id, and which count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplayLabels {
    /// Namespace of the Trigger.
    pub namespace: String,
    /// Trigger name.
    pub trigger: String,
    /// Index of the subscriber.
    pub subscriber: String,
    /// The replay's id.
    pub replay: String,
    /// `read`, `fired`, `delivered` or `dead_lettered`.
    pub count: String,
}

impl SubscriberLabels {
    /// The subscriber, as the tap names it: a Trigger's, or an EventSource's own sink.
    pub fn origin(&self) -> StepOrigin {
        let (kind, name) = match self.trigger.strip_prefix("eventsource/") {
            Some(eventsource) => ("EventSource", eventsource),
            None => ("Trigger", self.trigger.as_str()),
        };
        StepOrigin {
            kind,
            namespace: self.namespace.clone(),
            name: name.to_string(),
            part: self.subscriber.clone(),
        }
    }
}

impl TriggerMetrics {
    /// Reports `stage` of `event` at the subscriber `labels` to the tap, with `detail`.
    pub fn tap(
        &self,
        stage: Stage,
        labels: &SubscriberLabels,
        event: &Arc<Event>,
        detail: impl FnOnce() -> Option<String>,
    ) {
        self.tap.step(stage, || labels.origin(), event, detail);
    }
}

/// The stage label of `ofe_trigger_stage_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `bus_to_router`, `route`, `queue_wait` or `deliver`.
    pub stage: String,
}

/// Where an event's time goes from the bus to its sink, sampled (see
/// [`ofe_core::stages`]): one histogram per stage, under one family.
#[derive(Clone)]
pub struct TriggerStages {
    family: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// From the source's publish to the router reading the event.
    pub bus_to_router: StageHistogram,
    /// From the router reading a batch to its events being on the subscribers' queues.
    pub route: StageHistogram,
    /// From the router's queue publish to a subscriber taking the event (waiting for a free
    /// in-flight slot included).
    pub queue_wait: StageHistogram,
    /// From a subscriber taking the event to the sink's answer (retries included).
    pub deliver: StageHistogram,
}

impl Default for TriggerStages {
    fn default() -> Self {
        let family: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(ofe_core::stages::stage_buckets);
        let stage = |name: &str| {
            StageHistogram::new(family.get_or_create(&StageLabels { stage: name.into() }).clone())
        };
        Self {
            bus_to_router: stage("bus_to_router"),
            route: stage("route"),
            queue_wait: stage("queue_wait"),
            deliver: stage("deliver"),
            family,
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Counters and histograms of every subscriber in the process.
#[derive(Clone)]
pub struct TriggerMetrics {
    /// Events that fired the subscriber (for an EventSource's sink: events it read).
    pub received: Family<SubscriberLabels, Counter>,
    /// Events of the subscriber's inputs that did not fire it: a filter or the condition was
    /// false. Events the routing index rules out are not counted.
    pub filtered: Family<SubscriberLabels, Counter>,
    /// Events of a joining input whose correlation key could not be evaluated.
    pub unkeyed: Family<SubscriberLabels, Counter>,
    /// Correlation keys the subscriber's condition state holds.
    pub join_keys: Family<SubscriberLabels, Gauge>,
    /// Events delivered to a destination.
    pub delivered: Family<SubscriberLabels, Counter>,
    /// Sink replies published to the bus.
    pub replies: Family<SubscriberLabels, Counter>,
    /// Sink replies that were not valid CloudEvents.
    pub bad_replies: Family<SubscriberLabels, Counter>,
    /// Events or replies stopped at the hop limit: a loop of Triggers.
    pub loops: Family<SubscriberLabels, Counter>,
    /// Retries of failed attempts.
    pub retried: Family<SubscriberLabels, Counter>,
    /// Events sent to a dead-letter destination.
    pub dead_lettered: Family<SubscriberLabels, Counter>,
    /// Events that failed with no dead-letter destination configured.
    pub dropped: Family<SubscriberLabels, Counter>,
    /// Time from receiving an event to its successful delivery, in seconds.
    pub latency: Family<SubscriberLabels, Histogram, fn() -> Histogram>,
    /// Events on the bus the subscriber has not settled: waiting plus in flight, sampled
    /// every [`crate::runner::LAG_INTERVAL`]. What an autoscaler scales its function on.
    pub lag: Family<SubscriberLabels, Gauge>,
    /// Events not sent again: delivered within the dedupe window (`delivery.dedupe`).
    pub deduplicated: Family<SubscriberLabels, Counter>,
    /// Letters in the subscriber's dead-letter store (`ofe deadletters`).
    pub dead_letters: Family<SubscriberLabels, Gauge>,
    /// Each replay's counts (`ofe replay`).
    pub replay: Family<ReplayLabels, Gauge>,
    /// Where each step (routed, filtered, delivered, retried, dead-lettered) is reported
    /// while `ofe tail` listens.
    pub tap: Tap,
    /// Sampled time of each stage from the bus to the sink.
    pub stages: TriggerStages,
}

impl Default for TriggerMetrics {
    fn default() -> Self {
        Self {
            received: Family::default(),
            filtered: Family::default(),
            unkeyed: Family::default(),
            join_keys: Family::default(),
            delivered: Family::default(),
            replies: Family::default(),
            bad_replies: Family::default(),
            loops: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            lag: Family::default(),
            dead_letters: Family::default(),
            deduplicated: Family::default(),
            replay: Family::default(),
            tap: Tap::default(),
            stages: TriggerStages::default(),
        }
    }
}

impl TriggerMetrics {
    /// Registers everything under `ofe_trigger_*`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ofe_trigger");
        sub.register("events_received", "Events that fired the subscriber", self.received.clone());
        sub.register(
            "events_filtered",
            "Events of the subscriber's inputs whose filters or condition were false",
            self.filtered.clone(),
        );
        sub.register(
            "events_unkeyed",
            "Events whose correlation key could not be evaluated",
            self.unkeyed.clone(),
        );
        sub.register(
            "join_keys",
            "Correlation keys held in the condition state",
            self.join_keys.clone(),
        );
        sub.register(
            "events_delivered",
            "Events delivered to a destination",
            self.delivered.clone(),
        );
        sub.register("replies", "Sink replies published to the bus", self.replies.clone());
        sub.register(
            "bad_replies",
            "Sink replies that were not valid CloudEvents",
            self.bad_replies.clone(),
        );
        sub.register(
            "hop_limit_reached",
            "Events or replies stopped at the hop limit (a loop of Triggers)",
            self.loops.clone(),
        );
        sub.register("delivery_retries", "Retried delivery attempts", self.retried.clone());
        sub.register(
            "events_dead_lettered",
            "Events sent to a dead-letter destination",
            self.dead_lettered.clone(),
        );
        sub.register(
            "events_dropped",
            "Events that failed with no dead-letter destination",
            self.dropped.clone(),
        );
        sub.register(
            "delivery_duration_seconds",
            "Receive-to-delivered time",
            self.latency.clone(),
        );
        sub.register(
            "stage_seconds",
            "Sampled time of each stage from the bus to the sink: bus_to_router, route, queue_wait, deliver",
            self.stages.family.clone(),
        );
        sub.register(
            "bus_lag",
            "Events on the bus the subscriber has not settled yet (waiting plus in flight)",
            self.lag.clone(),
        );
        sub.register(
            "dead_letters",
            "Events held in the subscriber's dead-letter store, to redrive or purge",
            self.dead_letters.clone(),
        );
        sub.register(
            "events_deduplicated",
            "Events not sent again: delivered within the subscriber's dedupe window",
            self.deduplicated.clone(),
        );
        sub.register(
            "replay_events",
            "Per replay: input events read, events that fired, delivered and dead-lettered",
            self.replay.clone(),
        );
    }
}
