//! The extension point of delivery: a [`Sink`] makes one attempt at delivering an event, and
//! the delivery loop (`crate::delivery`) adds retries, backoff, `Retry-After`, dead letters
//! and metrics around it, the same for every kind.
//!
//! - [`http`]: an HTTP POST in CloudEvents binary mode (a sync function);
//! - [`topic`]: a publish on a bus topic (an async function, or the next Trigger of a chain);
//! - `kafka`, `nats`, `mqtt`, `redis`, `amqp`: a publish to a broker (`sink.kafka`, …), each
//!   behind the cargo feature of that name, confirmed by the broker.
//!
//! A new kind of sink is a folder here, implementing [`Sink`], with a [`SinkKind`] that reads
//! its fields of a Trigger subscriber, and one line in [`kinds`]; see `docs/extending.md`.

#[cfg(feature = "amqp")]
pub mod amqp;
/// What every broker sink shares: its span, and its connections per broker.
#[cfg(any(
    feature = "amqp",
    feature = "kafka",
    feature = "mqtt",
    feature = "nats",
    feature = "redis"
))]
mod broker;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
pub mod topic;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::Event;
use ofe_core::trace::{self, KeyValue};
use ofe_core::{EventBus, Subject};

pub use http::client::HttpClient;

/// What a sink answered beyond success: a CloudEvent, or one that could not be read.
pub type Reply = Result<Event, ofe_core::event::MalformedEvent>;

/// Why one attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Failure {
    /// HTTP status, if a response came back.
    pub code: Option<u16>,
    /// Human-readable reason, with the start of the response body.
    pub reason: String,
    /// Whether trying again may help: 5xx, 404, 408, 409, 429 and network errors.
    pub retryable: bool,
    /// The wait a 429 or 503 response asked for with `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The start of the response body, up to 1024 bytes.
    pub body: Vec<u8>,
}

impl Failure {
    /// A failure without a response (network error, bus error), worth retrying.
    pub fn transient(reason: String) -> Self {
        Self { reason, retryable: true, ..Self::default() }
    }

    /// A failure no retry can mend (the event cannot be sent as the sink asks): straight
    /// to the dead letter.
    pub fn permanent(reason: String) -> Self {
        Self { reason, retryable: false, ..Self::default() }
    }
}

/// What every attempt has to hand, whatever the sink.
pub struct SinkContext<'a> {
    /// The HTTP connection pool, shared by every HTTP sink.
    pub http: &'a HttpClient,
    /// The bus topics are published to.
    pub bus: &'a Arc<dyn EventBus>,
    /// The hop limit of events passed on to the bus.
    pub max_hops: u32,
    /// How long the attempt may take.
    pub timeout: Duration,
    /// The attempt's span, which the sink carries downstream.
    pub span: &'a trace::Span,
    /// The same for every attempt of this event to this subscriber ([`crate::delivery::idempotency_key`]);
    /// an HTTP sink sends it as `Idempotency-Key`.
    pub idempotency_key: Option<&'a str>,
}

/// One kind of destination.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Where it delivers, as logs, status, the tap and dead letters (`ofeerrordest`) show it:
    /// without credentials.
    fn describe(&self) -> String;

    /// The span of one attempt (with `resend`, the resend count, on retries), after
    /// OpenTelemetry's conventions for the protocol. Called only while tracing is on.
    fn span(&self, resend: Option<KeyValue>) -> trace::Span;

    /// The bus subject it writes to, for a sink that publishes on the bus (what `ofe send`
    /// may target, and where a loop of Triggers is counted).
    fn bus_subject(&self) -> Option<&Subject> {
        None
    }

    /// One attempt: on success, the sink's reply when it answered with a CloudEvent.
    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure>;

    /// One attempt at `events` as one batch (`delivery.batch`), which succeeds or fails as a
    /// whole; replies are not read. By default, each event in turn, stopping at the first
    /// that fails (a retry sends them all again: a sink that publishes on the bus drops the
    /// copies by their id).
    async fn attempt_batch(
        &self,
        events: &[Arc<Event>],
        context: &SinkContext<'_>,
    ) -> Result<(), Failure> {
        for event in events {
            self.attempt(event, context).await?;
        }
        Ok(())
    }
}

/// Every kind of sink, in the order a subscriber's destinations are delivered to (its `sink`
/// first, then its `topic`, as OpenFunction did). A new kind is one line here.
pub fn kinds() -> &'static [&'static dyn SinkKind] {
    &[&http::Kind, &topic::Kind]
}

/// What a subscriber's fields ask of one kind of sink: a destination, and where it sends what
/// still fails after retries.
pub struct KindRoute {
    /// Where the event is delivered.
    pub destination: Destination,
    /// Its dead letter, if the subscriber names one for this kind.
    pub dead_letter: Option<Destination>,
}

/// Where a subscriber is, for the kinds that resolve names in it.
pub struct SinkSite<'a> {
    /// The subscriber's field path, e.g. `spec.subscribers[0]`.
    pub path: &'a str,
    /// The Trigger's namespace.
    pub namespace: &'a str,
    /// How the caller resolves what Kubernetes would (`sink.ref`).
    pub options: &'a crate::PlanOptions,
}

/// A kind of sink: the fields of a Trigger subscriber it reads (`sink` and `deadLetterSink`,
/// say), turned into destinations once, when the Trigger is planned.
pub trait SinkKind: Send + Sync {
    /// The route `subscriber` asks of this kind, if it does; or why it cannot run, naming the
    /// field.
    fn route(
        &self,
        subscriber: &ofe_crds::trigger::Subscriber,
        at: &SinkSite<'_>,
    ) -> Option<Result<KindRoute, ofe_crds::diagnostic::Diagnostic>>;
}

/// Where a `sink` (at `path`) delivers: a broker it names, or else its HTTP endpoint. A broker
/// this build left out is a diagnostic naming the cargo feature.
pub fn destination(
    path: &str,
    sink: &ofe_crds::SinkSpec,
    namespace: &str,
    options: &crate::PlanOptions,
) -> Result<Destination, ofe_crds::diagnostic::Diagnostic> {
    use ofe_crds::diagnostic::Diagnostic;
    let Some(broker) = sink.brokers().first().copied() else {
        return http::destination(path, sink, namespace, options);
    };
    let at = format!("{path}.{broker}");
    let built: Option<Result<Destination, String>> = match broker {
        #[cfg(feature = "kafka")]
        "kafka" => sink.kafka.as_deref().map(kafka::KafkaSink::compile),
        #[cfg(feature = "nats")]
        "nats" => sink.nats.as_deref().map(nats::NatsSink::compile),
        #[cfg(feature = "mqtt")]
        "mqtt" => sink.mqtt.as_deref().map(mqtt::MqttSink::compile),
        #[cfg(feature = "redis")]
        "redis" => sink.redis.as_deref().map(redis::RedisSink::compile),
        #[cfg(feature = "amqp")]
        "amqp" => sink.amqp.as_deref().map(amqp::AmqpSink::compile),
        _ => None,
    };
    match built {
        Some(result) => result.map_err(|e| Diagnostic::error(at, e)),
        None => Err(Diagnostic::error(
            at,
            format!(
                "this ofe was built without the `{broker}` feature; build it with \
                 `--features {broker}` (the default build has every broker)"
            ),
        )),
    }
}

/// Where an event goes: a sink, built once from the manifest and shared by every delivery.
#[derive(Clone, Debug)]
pub struct Destination(Arc<dyn Sink>);

impl Destination {
    /// A destination of any kind.
    pub fn new(sink: impl Sink + 'static) -> Self {
        Self(Arc::new(sink))
    }

    /// An HTTP endpoint at `url`; the error says why it is not an absolute http(s) URL, as
    /// `ofe validate` does.
    pub fn http(url: &str) -> Result<Self, ofe_crds::validate::UriError> {
        http::HttpSink::parse(url).map(Self::new)
    }

    /// Topic `name` of the bus, at `subject`.
    pub fn topic(name: impl Into<String>, subject: Subject) -> Self {
        Self::new(topic::TopicSink { name: name.into(), subject })
    }

    /// Its sink.
    pub fn sink(&self) -> &dyn Sink {
        self.0.as_ref()
    }

    /// The bus subject it writes to, if it publishes on the bus.
    pub fn bus_subject(&self) -> Option<&Subject> {
        self.0.bus_subject()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.describe())
    }
}
