//! The ofe core: the vocabulary every other crate speaks, and nothing that runs on its own.
//!
//! - [`EventBus`] and [`StateStore`] are the broker-agnostic contracts the backends implement
//!   (the backends themselves are in `ofe-eventbus`).
//! - [`event`] holds the CloudEvent extension names ofe sets and the bus record codec.
//! - [`Subject`] names where an event lives, unambiguously.
//! - [`health`] is the board of what the data plane knows about each resource, as conditions.
//! - [`tap`] reports each step of an event's path while someone listens (`ofe tail`).
//! - [`trace`] carries W3C trace context through events and makes the spans.
//! - `nats` and `kafka` (features of the same names): connecting to those brokers, and their
//!   CloudEvents protocol bindings, written once for the buses and the sources; [`amqp`], the
//!   AMQP binding's names.
//!
//! This crate holds no Kubernetes API types: the API crate (`ofe-crds`) maps its specs onto the
//! settings defined here, so a bus, source or sink never reads a CRD to connect.

pub mod amqp;
mod bus;
pub mod event;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
pub mod stages;
pub mod state;
mod subject;
pub mod tap;
pub mod trace;

pub use bus::{
    Acker, BusError, Cause, Connection, Delivery, EventBus, Published, Report, Retained,
    StartPosition, SubscribeOptions, Subscription, TlsFiles, chain,
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
