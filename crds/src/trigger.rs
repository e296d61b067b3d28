//! The `Trigger` kind: routing from bus inputs to subscribers under CEL conditions.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SinkSpec};

/// The desired state of a Trigger.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "events.openfunction.io",
    version = "v1alpha1",
    kind = "Trigger",
    namespaced,
    status = "TriggerStatus",
    printcolumn(name = "EventBus", type_ = "string", json_path = ".spec.eventBus"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[-1].type")
)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "self.eventBus != ''", "message": "eventBus is empty; name an EventBus, e.g. default" },
    { "rule": "size(self.inputs) > 0", "message": "inputs is empty; add at least one input" },
    { "rule": "size(self.subscribers) > 0", "message": "subscribers is empty; add at least one subscriber" }
]))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerSpec {
    /// Name of the EventBus (namespaced first, then ClusterEventBus) the inputs are read from.
    pub event_bus: String,
    /// Inputs keyed by name. Each name is a boolean variable in subscriber conditions.
    pub inputs: BTreeMap<String, Input>,
    /// Subscribers, each with a condition and a destination.
    pub subscribers: Vec<Subscriber>,
    /// Log verbosity, "1" (default) to "3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// How long an input stays true after its last event (ofe addition), e.g. `60s`, `5m`.
    /// Default `60s`, as in OpenFunction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// A CEL expression over an input event (ofe addition), e.g. `data.vehicleId`, or a
    /// JSONPath query (starting with `$`, e.g. `$.data.vehicle.id`), whose value keys the join: with it, `A && B` is true only when A and B carry the same key. Without
    /// it, every event of an input counts for every other. An input may set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_key: Option<String>,
    /// When a subscriber fires, forget the events that made its condition true (ofe
    /// addition), so that one match fires once instead of once per event for the whole
    /// window. Default `false`, as in OpenFunction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume: Option<bool>,
    /// Most correlation keys each subscriber keeps (ofe addition); beyond it the least
    /// recently seen keys are forgotten. Default 100000. Keys also expire with the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
    /// Namespaces whose Triggers may read the topics this Trigger's subscribers publish
    /// (ofe addition), besides its own; `*` allows every namespace. Without it, a topic is
    /// read only within its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<Vec<String>>,
    /// Pauses every subscriber (ofe addition): while `true`, events that fire wait on the
    /// bus, in order, and are delivered when it is set back; `ofe resume` does not lift it.
    /// Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Replays to run (ofe addition), as `ofe replay` runs them: each delivers past events
    /// of the inputs again, once per name, and reports its progress in `.status.replays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replays: Option<Vec<TriggerReplay>>,
}

/// A replay the spec asks for (ofe addition).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "has(self.from) != (has(self.fromStart) && self.fromStart)", "message": "a replay starts either from a time (from) or from the start (fromStart: true)" }
]))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerReplay {
    /// Names the replay: it runs once for each name (lower-case letters, digits and `-`). To
    /// run it again, give it a new name.
    pub name: String,
    /// From the events stored at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// From the oldest event the bus holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_start: Option<bool>,
    /// Up to the events stored at or before this time (RFC 3339). Default: when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Only this subscriber (its index in `subscribers`). Default: every subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<u32>,
}

/// One input of a Trigger: an event of an EventSource, or (ofe addition) a bus topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "has(self.topic) ? !has(self.eventSource) && !has(self.event) : has(self.eventSource) && has(self.event)", "message": "an input reads either a topic, or an eventSource and its event" }
]))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Input {
    /// Namespace of the EventSource or topic. Defaults to the Trigger's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the EventSource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source: Option<String>,
    /// Name of the event within the EventSource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// A bus topic that Trigger subscribers publish to (ofe addition), instead of
    /// `eventSource`/`event`. This is how an async function chain continues inside ofe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Filters (ofe addition), in the dialects of the CloudEvents Subscriptions API that
    /// Knative uses: `exact`, `prefix`, `suffix`, `all`, `any`, `not`, plus `cel` over the
    /// event's attributes and its `data` (parsed when it is JSON). Only events that pass
    /// every filter count as events of this input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_array")]
    pub filters: Option<Vec<Filter>>,
    /// This input's correlation key, when its events carry the key elsewhere than the
    /// Trigger's `correlationKey` says (ofe addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_key: Option<String>,
}

/// One filter: exactly one of its fields is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Attributes that must equal these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<BTreeMap<String, String>>,
    /// Attributes that must start with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<BTreeMap<String, String>>,
    /// Attributes that must end with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<BTreeMap<String, String>>,
    /// Filters that must all pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Filter>>,
    /// Filters of which at least one must pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Filter>>,
    /// A filter that must not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Filter>>,
    /// A CEL expression over the attributes (`type`, `source`, `subject`, extensions, ...)
    /// and `data`, e.g. `data.speed > 120.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<String>,
    /// A JSONPath query (RFC 9535) over the event as JSON (its attributes, and `data` parsed
    /// when it is JSON) that must select something, e.g. `$.data.items[?@.price > 10]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonpath: Option<String>,
}

/// One routing rule of a Trigger.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "has(self.sink) || has(self.topic)", "message": "a subscriber needs a sink, a topic, or both" }
]))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subscriber {
    /// CEL over the input names, e.g. `eventA && eventB`. Only an event of an input named here
    /// can fire this subscriber.
    pub condition: String,
    /// Synchronous destination: the CloudEvent is POSTed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
    /// Where an event goes when `sink` still fails after all retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<SinkSpec>,
    /// Asynchronous destination: a topic on the Trigger's EventBus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Where an event goes when publishing to `topic` still fails after all retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// The topic a `sink`'s reply goes to (ofe addition): when the function answers with a
    /// CloudEvent (binary or structured mode), ofe publishes it there, where other Triggers
    /// can take it as an input. Default `<trigger name>-replies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_topic: Option<String>,
    /// How events are delivered (ofe addition): Knative's DeliverySpec fields, plus flow
    /// control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Reshapes each event before this subscriber's sink or topic gets it (ofe addition), as
    /// Knative's EventTransform and EventBridge's input transformers do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformSpec>,
}

/// A subscriber's transform: CEL expressions over the event as it arrived (each attribute
/// and extension, and `data`), compiled when the manifest loads. An event an expression
/// cannot evaluate goes to the dead letter with the reason; it is never sent half-built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransformSpec {
    /// The new data, e.g. `{"vehicle": data.vehicleId, "kmh": data.speed, "at": time}`. A
    /// map, list, number or bool becomes JSON; a string stays text; `null` removes the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Attribute or extension name → its new value, e.g. `type: "'com.example.overspeed'"`
    /// or `subject: data.vehicleId`. An empty expression (or a value of `null`) removes an
    /// extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// Delivery settings of one subscriber, in the shape of Knative's `DeliverySpec`, plus flow
/// control. Durations are ISO 8601 as in Knative (`PT0.2S`) or Go style (`200ms`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    { "rule": "!has(self.retry) || self.retry >= 0", "message": "retry must be 0 or more" },
    { "rule": "!has(self.maxConcurrency) || self.maxConcurrency > 0", "message": "maxConcurrency must be at least 1" },
    { "rule": "!has(self.rateLimit) || self.rateLimit > 0", "message": "rateLimit must be at least 1 event per second" }
]))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Retries after the first attempt before the event is dead-lettered. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i32>,
    /// `exponential` (default): retry `n` waits `backoffDelay * 2^(n-1)`; `linear`: it waits
    /// `backoffDelay * n`.
    // An enum, not a CEL rule: the API server prices a rule by the most subscribers a Trigger
    // could hold, and an `in` test on an unbounded string went over its budget.
    #[schemars(extend("enum" = ["linear", "exponential"]))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<String>,
    /// The base of the backoff. Default `PT0.2S`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    /// Timeout of one attempt. Default `PT30S`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Longest wait a `Retry-After` header of a 429 or 503 response can ask for; longer
    /// requests wait this long. Default `PT60S`; `PT0S` ignores `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
    /// Where an event goes when `sink` still fails after all retries, as in Knative; the
    /// same as the subscriber's `deadLetterSink`, which may not be set as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<SinkSpec>,
    /// Deliveries in flight at once (ofe addition). Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// A CEL expression over the event (ofe addition), e.g. `data.vehicleId`, or a JSONPath
    /// query starting with `$`: events with the same key are delivered one at a time, in the
    /// order the subscriber received them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_key: Option<String>,
    /// Most events delivered per second (ofe addition), per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Delays every event (ofe addition) by this long after it fired, e.g. `PT30S` or `30s`.
    /// Durable: the event waits on the bus. An event may also carry the extension
    /// `ofedeliverat` (RFC 3339) to wait until then. Without `orderKey`, a delayed event does
    /// not hold back later ones that are due sooner; with it, order wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Remembers what was delivered (ofe addition), durably on the bus, and does not send an
    /// event again within `dedupeWindow`: a redelivery after a crash, or the same event from
    /// upstream again. Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<bool>,
    /// How long `dedupe` remembers a delivery (ofe addition), e.g. `10m`. Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_window: Option<String>,
    /// Whether an event that fails for good, with no `deadLetterSink` or `deadLetterTopic`,
    /// is kept on the bus in the subscriber's dead-letter topic
    /// `<trigger>.dead-letters.<index>` (ofe addition). Default `true`; `false` drops it,
    /// logged and counted, as Knative and OpenFunction do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_store: Option<bool>,
    /// Delivers events in batches (ofe addition): one request carries up to `maxSize` events
    /// as a CloudEvents JSON batch (`application/cloudevents-batch+json`), sent when full or
    /// `maxWait` after its first event. A batch succeeds or fails as a whole: retries resend
    /// it whole, and after the last retry each of its events goes to the dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

/// How a subscriber batches its deliveries (ofe addition).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BatchSpec {
    /// The most events in one batch, 1 to 10,000. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
    /// The longest the first event of a batch waits for more, e.g. `PT0.5S` or `500ms`.
    /// Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
}

/// The observed state of a Trigger.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TriggerStatus {
    /// Conditions of the Trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The progress of the replays of `spec.replays`, one entry per replay and subscriber.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<ReplayStatus>,
}

/// The progress of one replay of one subscriber.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    /// The replay's name in `spec.replays`.
    pub name: String,
    /// The subscriber's index.
    pub subscriber: String,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Input events read.
    pub read: u64,
    /// Of those, the ones that fired the subscriber.
    pub fired: u64,
    /// Of those, the ones delivered.
    pub delivered: u64,
    /// Of those, the ones dead-lettered.
    pub dead_lettered: u64,
    /// The bus time of the latest input event read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
