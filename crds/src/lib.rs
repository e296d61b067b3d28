//! The `events.openfunction.io/v1alpha1` API of ofe: EventSource, EventBus, ClusterEventBus and
//! Trigger, field for field as OpenFunction defines them, plus ofe's optional additions.
//!
//! Layout:
//! - [`common`], [`eventsource`], [`eventbus`], [`trigger`]: the types, derived with kube's
//!   `CustomResource` and schemars, so the CRDs in [`crd`] are generated, never hand-written.
//! - [`manifest`]: reading multi-document YAML into [`manifest::Resource`]s, with every problem a
//!   [`diagnostic::Diagnostic`] that names the file, document and field path.
//! - [`validate`]: structural checks; the CEL and cron checks live beside their engines.
//! - [`duration`]: Go-style durations (`5s`, `1h30m`), the format OpenFunction uses.
//!
//! This crate depends only on `ofe-core`, whose settings it maps its specs onto (e.g. TLS
//! files) and whose status [`Condition`] it embeds.

// kube-derive's `printcolumn(...)` repeats `type_ = ...` once per column by design.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod crd;
pub mod diagnostic;
pub mod duration;
pub mod eventbus;
pub mod eventsource;
pub mod manifest;
mod schema;
pub mod sinks;
pub mod trigger;
pub mod validate;

pub use common::{
    Condition, ConfigMapKeySelector, ContentMode, HttpMethod, OAuth2Spec, Reference, ScaleOption,
    SchemaSpec, SinkAuth, SinkSpec,
};
pub use eventbus::{
    BusBackend, ClusterEventBus, ClusterEventBusSpec, EmbeddedBusSpec, EventBus, EventBusSpec,
    JetStreamBusSpec, KafkaBusSpec, MemoryBusSpec, NatsAuthSpec, NatsStreamingSpec, SaslSpec,
    TlsSpec,
};
pub use eventsource::{
    AmqpSpec, CronSpec, EventSource, EventSourceSpec, EventSourceStatus, HmacSpec, KafkaSpec,
    MqttSpec, NatsJetStreamSourceSpec, NatsSourceSpec, RedisSpec, SourceField, WebhookSpec,
};
pub use trigger::{
    BatchSpec, DeliverySpec, Filter, Input, ReplayStatus, Subscriber, TransformSpec, Trigger,
    TriggerReplay, TriggerSpec, TriggerStatus,
};
