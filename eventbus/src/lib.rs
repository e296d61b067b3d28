//! The ofe EventBus backends: where events wait, durably, between EventSources and Triggers.
//!
//! Each backend implements `ofe_core::EventBus` (durable publish, durable named consumers,
//! explicit ack and nack-with-delay, bounded in-flight deliveries) and passes the conformance
//! suite of `ofe-testkit`:
//! - [`embedded::EmbeddedBus`] is the default: a log on local disk for one process, or in
//!   memory (`mem`).
//! - [`jetstream::JetStreamBus`] keeps events in a NATS JetStream stream.
//! - [`kafka::KafkaBus`] keeps them in a Kafka topic.
//!
//! [`Buses`] is the one place an EventBus resource becomes a backend: it resolves `eventBus`
//! names as OpenFunction does and opens each bus once.

pub mod embedded;
#[cfg(feature = "jetstream")]
pub mod jetstream;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod open;

pub use open::{BusKey, Buses, OpenError};
