//! Prometheus metrics of EventSources.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use ofe_core::Event;
use ofe_core::tap::{Stage, StepOrigin, Tap};

/// Labels naming one event of one EventSource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Namespace of the EventSource.
    pub namespace: String,
    /// Name of the EventSource.
    pub eventsource: String,
    /// Name of the event.
    pub event: String,
    /// The source kind that produced it (`cron`, `kafka`, `mqtt`, `nats`, `redis`, `webhook`,
    /// or `send` for `ofe send`). OpenFunction lets several kinds share one event name, all
    /// feeding the one event; this label keeps their counts apart.
    pub kind: String,
}

impl EventLabels {
    /// The labels of `event` of EventSource `eventsource` in `namespace`, read by `kind`.
    pub fn new(namespace: &str, eventsource: &str, kind: &str, event: &str) -> Self {
        Self {
            namespace: namespace.into(),
            eventsource: eventsource.into(),
            event: event.into(),
            kind: kind.into(),
        }
    }

    /// `<kind>.<event>`: the part of the EventSource that reads this input, as its field path
    /// under `spec` says it. Unique within an EventSource even when kinds share an event name,
    /// so health reports and tap steps of the kinds stay apart.
    pub fn part(&self) -> String {
        format!("{}.{}", self.kind, self.event)
    }

    /// The EventSource event, as the tap names it.
    pub fn origin(&self) -> StepOrigin {
        StepOrigin {
            kind: "EventSource",
            namespace: self.namespace.clone(),
            name: self.eventsource.clone(),
            part: self.part(),
        }
    }
}

/// Counters of every EventSource in the process.
#[derive(Clone, Default)]
pub struct SourceMetrics {
    /// Inputs received from upstream (for cron: schedule fires).
    pub received: Family<EventLabels, Counter>,
    /// Events the bus acknowledged as durable.
    pub published: Family<EventLabels, Counter>,
    /// Publishes the bus recognised as duplicates (same source and id).
    pub duplicates: Family<EventLabels, Counter>,
    /// Failed publish attempts (each is retried).
    pub publish_errors: Family<EventLabels, Counter>,
    /// Events that are malformed CloudEvents or whose data does not satisfy the event's
    /// schema: published flagged `ofeinvalid` (broker sources), or refused with 400 (webhooks).
    pub invalid: Family<EventLabels, Counter>,
    /// Where each published event is reported while `ofe tail` listens.
    pub tap: Tap,
    /// Sampled time from a push source's request arriving to the bus having its event (the
    /// first stage of an event's path; see [`ofe_core::stages`]).
    pub ingest: ofe_core::stages::StageHistogram,
}

impl SourceMetrics {
    /// Counts an event the bus stored, or recognised as a duplicate, and reports it to the tap.
    pub fn published(
        &self,
        labels: &EventLabels,
        duplicate: bool,
        event: impl FnOnce() -> Arc<Event>,
    ) {
        if duplicate {
            self.duplicates.get_or_create(labels).inc();
            return;
        }
        self.published.get_or_create(labels).inc();
        if self.tap.is_listened() {
            self.tap.step(Stage::Published, || labels.origin(), &event(), || None);
        }
    }

    /// Registers the counters under `ofe_eventsource_*`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ofe_eventsource");
        sub.register("events_received", "Inputs received from upstream", self.received.clone());
        sub.register(
            "events_published",
            "Events stored durably on the bus",
            self.published.clone(),
        );
        sub.register(
            "events_duplicate",
            "Publishes the bus dropped as duplicates of an earlier event",
            self.duplicates.clone(),
        );
        sub.register("publish_errors", "Failed bus publish attempts", self.publish_errors.clone());
        sub.register(
            "events_invalid",
            "Malformed CloudEvents and events whose data does not satisfy the schema: flagged \
             ofeinvalid, or refused with 400 by a webhook",
            self.invalid.clone(),
        );
        sub.register(
            "ingest_seconds",
            "Sampled time from a webhook request arriving to the bus having its event",
            self.ingest.histogram(),
        );
    }
}
