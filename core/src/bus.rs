//! The broker-agnostic EventBus contract.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cloudevents::Event;
use futures::future::BoxFuture;

use crate::Subject;

/// What caused a bus failure: the broker client's or the store's own error, kept whole so a
/// caller can walk it with [`std::error::Error::source`] (and match its kind, as the embedded bus
/// does for a full disk) instead of parsing text.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors at the bus boundary.
///
/// A variant's message says what the bus was doing; what went wrong underneath is its
/// [`source`](std::error::Error::source), which the message does not repeat. Print a bus error
/// with [`Report`] (or any printer that walks sources) so the cause is shown.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus was closed (shutdown); no further operations will succeed.
    #[error("the event bus is closed")]
    Closed,
    /// The backing store or broker failed.
    #[error("event bus storage failed: {message}")]
    Storage {
        /// What the bus was doing, and what to do about it when that is known.
        message: String,
        /// The store's error.
        #[source]
        source: Option<Cause>,
    },
    /// The broker cannot be reached right now; the operation may succeed later.
    #[error("event bus unavailable: {message}")]
    Unavailable {
        /// What the bus was doing, and what to do about it when that is known.
        message: String,
        /// The broker client's error.
        #[source]
        source: Option<Cause>,
    },
    /// An event could not be encoded for the bus.
    #[error("cannot encode event: {message}")]
    Encode {
        /// What could not be encoded.
        message: String,
        /// The encoder's error.
        #[source]
        source: Option<Cause>,
    },
    /// A stored record could not be decoded.
    #[error("cannot decode event: {message}")]
    Decode {
        /// What could not be decoded.
        message: String,
        /// The decoder's error.
        #[source]
        source: Option<Cause>,
    },
    /// A consumer name is already in use with different subjects.
    #[error("consumer `{consumer}` already exists with other subjects; use another consumer name")]
    ConsumerConflict {
        /// The consumer name.
        consumer: String,
    },
    /// The configuration does not make sense for this backend.
    #[error("invalid bus configuration: {message}")]
    Config {
        /// What is wrong, and the fix.
        message: String,
        /// The client's error, when it refused the setting.
        #[source]
        source: Option<Cause>,
    },
}

impl BusError {
    /// The store failed while doing `message`.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::Storage { message: message.into(), source: None }
    }

    /// The broker could not be reached while doing `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), source: None }
    }

    /// An event could not be encoded: `message` says which part.
    pub fn encode(message: impl Into<String>) -> Self {
        Self::Encode { message: message.into(), source: None }
    }

    /// A record could not be decoded: `message` says which part.
    pub fn decode(message: impl Into<String>) -> Self {
        Self::Decode { message: message.into(), source: None }
    }

    /// The configuration is wrong: `message` says how, and the fix.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config { message: message.into(), source: None }
    }

    /// This error, caused by `cause` (kept as its [`source`](std::error::Error::source)).
    /// `Closed` and `ConsumerConflict` have no cause and stay as they are.
    #[must_use]
    pub fn because(mut self, cause: impl Into<Cause>) -> Self {
        match &mut self {
            Self::Storage { source, .. }
            | Self::Unavailable { source, .. }
            | Self::Encode { source, .. }
            | Self::Decode { source, .. }
            | Self::Config { source, .. } => *source = Some(cause.into()),
            Self::Closed | Self::ConsumerConflict { .. } => {}
        }
        self
    }
}

/// Shows an error and every cause under it, joined by `: ` — how ofe prints errors in logs,
/// statuses and replies, so a cause kept as a [`source`](std::error::Error::source) is never
/// lost from what a user reads.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// [`Report`] as a `String`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    Report(error).to_string()
}

/// What a successful publish returns. Returning at all means the event is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Position of the event in the bus.
    pub sequence: u64,
    /// The bus already had an event with this `source` and `id` within its duplicate window, so
    /// nothing new was stored; `sequence` is the earlier event's.
    pub duplicate: bool,
}

/// Whether a bus's connection to its broker works, as far as the bus knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Connected (the embedded bus always is).
    Up,
    /// The connection is lost and being re-established; why.
    Lost(String),
    /// The bus's own storage cannot write (the embedded bus: a full disk); it refuses
    /// publishes and recovers by itself.
    Storage {
        /// The condition reason: `StorageFull` or `StorageFailed`.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Where a consumer that does not exist yet starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// With events published after the consumer was created (Knative and Argo behave so).
    #[default]
    New,
    /// With the oldest event the bus still holds.
    All,
    /// With the first event the bus stored at or after this time (a replay's `--from`).
    Time(DateTime<Utc>),
}

/// What a bus still holds: how far back a consumer starting now can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// When the oldest event still held was stored; `None` when the bus holds none.
    pub oldest: Option<DateTime<Utc>>,
    /// Whether retention already removed older events: a start before `oldest` then misses
    /// some, where on a bus that never removed any it misses none.
    pub trimmed: bool,
}

/// How to subscribe.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Durable consumer name. Subscriptions with the same name share the work; different names
    /// each receive every event. The position survives restarts.
    pub consumer: String,
    /// Subjects to receive.
    pub subjects: Vec<Subject>,
    /// At most this many deliveries of the consumer are unacknowledged at once; further events
    /// wait (backpressure, not memory growth).
    pub max_in_flight: usize,
    /// Where a new consumer starts.
    pub start: StartPosition,
    /// The consumer's owner dead-letters a delivery whose `attempt` exceeds this, so a backend
    /// must deliver at least once more than this; backends with a server-side limit set it to
    /// `max_deliver + 1`. `None`: no limit.
    pub max_deliver: Option<u32>,
}

/// TLS files for a broker connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CA that signed the broker's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl SubscribeOptions {
    /// Rejects options no backend can honour.
    pub fn check(&self) -> Result<(), BusError> {
        if self.max_in_flight == 0 {
            return Err(BusError::config("max_in_flight must be at least 1"));
        }
        Ok(())
    }

    /// Options for `consumer` over `subjects`, with 256 in flight, starting with new events.
    pub fn new(consumer: impl Into<String>, subjects: Vec<Subject>) -> Self {
        Self {
            consumer: consumer.into(),
            subjects,
            max_in_flight: 256,
            start: StartPosition::New,
            max_deliver: None,
        }
    }
}

/// A broker-agnostic event bus: durable publish, and durable named consumers with explicit
/// acknowledgement.
///
/// Contract every backend keeps (the conformance suite of `ofe-testkit` checks it):
/// - `publish` returns only after the event is durable in the backend.
/// - A delivery is redelivered until it is acked (at-least-once). A nack redelivers after its
///   delay; a delivery dropped without ack or nack counts as a nack with no delay.
/// - Subscriptions with one consumer name share the events; different names each get all.
/// - A consumer has at most `max_in_flight` unacknowledged deliveries.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Short backend name for logs and metrics, e.g. `embedded`.
    fn backend(&self) -> &'static str;

    /// Stores `event` under `subject`, returning once it is durable.
    async fn publish(&self, subject: &Subject, event: &Event) -> Result<Published, BusError>;

    /// [`EventBus::publish`] for an event the caller already shares: a backend that keeps
    /// events in memory keeps this one as it is instead of copying it.
    async fn publish_shared(
        &self,
        subject: &Subject,
        event: Arc<Event>,
    ) -> Result<Published, BusError> {
        self.publish(subject, &event).await
    }

    /// Opens a subscription on a durable consumer, creating the consumer if needed.
    async fn subscribe(&self, options: SubscribeOptions)
    -> Result<Box<dyn Subscription>, BusError>;

    /// Follows the connection to the broker, or for the embedded bus, whether its storage
    /// can write. A bus that reports nothing is always up.
    fn connection(&self) -> tokio::sync::watch::Receiver<Connection> {
        tokio::sync::watch::channel(Connection::Up).1
    }

    /// The durable key-value store of this bus, for Trigger join state; `None` when the
    /// backend has none (the state then lives in the router's memory).
    async fn state_store(&self) -> Result<Option<Arc<dyn crate::StateStore>>, BusError> {
        Ok(None)
    }

    /// How many events of durable consumer `consumer`'s subjects it has not settled yet:
    /// those waiting to be read plus those delivered and not acknowledged. This is the backlog
    /// an autoscaler scales the consumer's function on. `None` when this process has not
    /// opened the consumer, or the backend cannot tell.
    async fn lag(&self, consumer: &str) -> Result<Option<u64>, BusError> {
        let _ = consumer;
        Ok(None)
    }

    /// What the bus holds of `subjects` (a backend may answer for all its subjects): the
    /// oldest event, and whether older ones were removed. The default knows nothing, which
    /// lets every start through.
    async fn retained(&self, subjects: &[Subject]) -> Result<Retained, BusError> {
        let _ = subjects;
        Ok(Retained::default())
    }

    /// Deletes durable consumer `consumer` and its position, for a consumer that has done
    /// its work (a finished replay). Its subscription must be dropped first. Removing one the
    /// bus does not have is not an error.
    async fn remove_consumer(&self, consumer: &str) -> Result<(), BusError> {
        let _ = consumer;
        Ok(())
    }

    /// Flushes state and stops; waiting subscriptions return [`BusError::Closed`].
    async fn close(&self) -> Result<(), BusError>;
}

/// A stream of deliveries for one consumer.
#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery. [`BusError::Closed`] means the bus shut down.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// Backend-specific settlement of one delivery.
pub trait Acker: Send + Sync {
    /// Acknowledges: the event will not be delivered to this consumer again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>>;
    /// Negative acknowledgement: deliver again after `delay`.
    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BusError>>;
    /// Called when a delivery is dropped unsettled. The backend makes the event deliverable
    /// again, now or after its ack timeout.
    fn abandon(self: Box<Self>);
}

/// One event delivered to a consumer. Settle it with [`Delivery::ack`] or [`Delivery::nack`];
/// dropping it unsettled makes the bus deliver it again.
pub struct Delivery {
    /// The event, shared rather than copied between everything that looks at it.
    pub event: Arc<Event>,
    /// The subject it was published under.
    pub subject: Subject,
    /// Its position in the bus.
    pub sequence: u64,
    /// How many times it has been delivered to this consumer, starting at 1.
    pub attempt: u32,
    /// When the bus stored it. Trigger windows use this time, so a consumer that lags or
    /// replays sees the same window as one that keeps up.
    pub published_at: DateTime<Utc>,
    acker: Option<Box<dyn Acker>>,
}

impl Delivery {
    /// Builds a delivery; for backends.
    pub fn new(
        event: Arc<Event>,
        subject: Subject,
        sequence: u64,
        attempt: u32,
        published_at: DateTime<Utc>,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self { event, subject, sequence, attempt, published_at, acker: Some(acker) }
    }

    /// Acknowledges the delivery.
    pub async fn ack(mut self) -> Result<(), BusError> {
        match self.acker.take() {
            Some(acker) => acker.ack().await,
            None => Ok(()),
        }
    }

    /// Asks for redelivery after `delay`.
    pub async fn nack(mut self, delay: Duration) -> Result<(), BusError> {
        match self.acker.take() {
            Some(acker) => acker.nack(delay).await,
            None => Ok(()),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            acker.abandon();
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject.to_string())
            .field("sequence", &self.sequence)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{BusError, Report};

    #[test]
    fn a_cause_is_kept_whole_and_shown_once() {
        let disk_full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let error = BusError::storage("the embedded bus's store").because(disk_full);
        assert_eq!(error.to_string(), "event bus storage failed: the embedded bus's store");
        let cause = std::error::Error::source(&error).expect("the cause is the source");
        let io = cause.downcast_ref::<std::io::Error>().expect("kept as the io::Error it was");
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull, "matched by kind, not by text");
        let report = Report(&error).to_string();
        assert!(report.starts_with("event bus storage failed: the embedded bus's store: "));
        assert_eq!(report.matches("the embedded bus's store").count(), 1, "{report}");
        assert!(report.ends_with(&io.to_string()), "{report}");
    }

    #[test]
    fn an_error_without_a_cause_reports_its_message_alone() {
        let error = BusError::unavailable("the in-memory bus is full; retry later");
        assert!(std::error::Error::source(&error).is_none());
        assert_eq!(
            Report(&error).to_string(),
            "event bus unavailable: the in-memory bus is full; retry later"
        );
        let closed = BusError::Closed.because("ignored: a closed bus has no cause");
        assert!(matches!(closed, BusError::Closed));
    }
}
