//! The ofe EventBus: where events wait, durably, between EventSources and Triggers.
//!
//! - [`EventBus`] is the broker-agnostic contract: durable publish, durable named consumers,
//!   explicit ack and nack-with-delay, bounded in-flight deliveries.
//! - [`embedded::EmbeddedBus`] is the default backend: a log on local disk for one process.
//! - [`Subject`] names where an event lives, unambiguously.
//! - [`health`] is the board of what the data plane knows about each resource, as conditions.
//! - [`tap`] reports each step of an event's path while someone listens (`ofe tail`).
//! - [`state`] is the durable key-value state beside the events that Trigger joins keep.
//! - [`event`] holds the CloudEvent extension names ofe sets and the storage encoding.
//! - [`testing`] is the behaviour suite every backend must pass.

mod bus;
pub mod embedded;
pub mod event;
pub mod health;
pub mod jetstream;
pub mod kafka;
mod kafka_state;
pub mod state;
mod subject;
pub mod tap;
pub mod testing;
pub mod trace;

pub use bus::{
    Acker, BusError, Connection, Delivery, EventBus, Published, StartPosition, SubscribeOptions,
    Subscription, TlsFiles,
};
pub use cloudevents::Event;
pub use state::{StateError, StateStore, Versioned, state_key};
pub use subject::Subject;

/// Makes ring the process's rustls crypto provider. Every TLS connection of ofe uses ring,
/// and an HTTP client built without a TLS configuration of its own needs a process default:
/// call this before building one. Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// This process's host name (`HOSTNAME`, else `/etc/hostname`), if it has one: a pod's name in
/// Kubernetes, the stable per-replica part of consumer and member names.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
