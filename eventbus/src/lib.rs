//! The ofe EventBus backends: where events wait, durably, between EventSources and Triggers.
//!
//! Each backend implements `ofe_core::EventBus` (durable publish, durable named consumers,
//! explicit ack and nack-with-delay, bounded in-flight deliveries) and passes the conformance
//! suite of `ofe-testkit`:
//! - [`embedded::EmbeddedBus`] is the default: a log on local disk for one process, or in
//!   memory (`mem`).
//! - [`jetstream::JetStreamBus`] keeps events in a NATS JetStream stream.
//! - [`kafka::KafkaBus`] keeps them in a Kafka topic.

pub mod embedded;
pub mod jetstream;
pub mod kafka;
