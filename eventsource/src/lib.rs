//! ofe EventSources: adapters that turn inputs into CloudEvents and publish them on the bus.
//!
//! Every adapter publishes through an [`ingest::Publisher`], retrying until the bus has the
//! event: an input counts as done only when the bus has acknowledged it as durable. Events
//! carry the extension attributes `ofenamespace`, `ofeeventsource` and `ofeevent`.
//!
//! Kinds: `amqp` (RabbitMQ), `cron`, `mqtt` (TCP, TLS, WebSocket; 3.1.1 and 5), `kafka`, `nats`
//! (core and JetStream), `redis` (streams and pub/sub), and `webhook` (served on the process's
//! HTTP listener, [`routes::HttpRoutes`]). How inputs become events is shared by every adapter:
//! see [`ingest`].

// The helpers the broker kinds share (ingest's PEM and host-name readers, `per_event`,
// `broker_kind!`) have no user in a build with none of those kinds: allow that build to leave
// them unused, in this one place, rather than on each helper.
#![cfg_attr(
    not(any(
        feature = "amqp",
        feature = "kafka",
        feature = "mqtt",
        feature = "nats",
        feature = "redis"
    )),
    allow(dead_code, unused_macros, unused_imports)
)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod cron;
pub mod ingest;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod metrics;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
pub mod routes;
pub mod schema;
mod source;
pub mod webhook;

use std::sync::Arc;

use ofe_core::EventBus;
use ofe_core::health::{Health, ResourceKey};
use ofe_crds::EventSource;
use ofe_crds::diagnostic::Diagnostic;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cron::{CronSource, Schedule};
pub use metrics::SourceMetrics;
pub use routes::HttpRoutes;
pub use source::{Source, SourceContext, SourceKind, SourceName};

/// Every kind of EventSource input, in the order their events start. A new kind is one line
/// here.
pub fn kinds() -> &'static [&'static dyn SourceKind] {
    &[
        &cron::Kind,
        &webhook::Kind,
        #[cfg(feature = "mqtt")]
        &mqtt::Kind,
        #[cfg(feature = "kafka")]
        &kafka::Kind,
        #[cfg(feature = "nats")]
        &nats::Kind,
        #[cfg(feature = "redis")]
        &redis::Kind,
        #[cfg(feature = "amqp")]
        &amqp::Kind,
    ]
}

/// Errors starting an EventSource.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The field at `path` cannot run as written.
    #[error("{path}: {message}")]
    Invalid {
        /// Field path, e.g. `spec.cron.tick.schedule`.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl SourceError {
    /// The error as `ofe validate` reports it.
    pub fn diagnostic(self) -> Diagnostic {
        match self {
            SourceError::Invalid { path, message } => Diagnostic::error(path, message),
        }
    }
}

/// Every problem of `es`'s events, each said once: every kind's field checks, then what
/// making each event as [`spawn`] does refuses (schedules and time zones, broker URLs,
/// certificates read from their files), and kinds this build left out. Nothing is connected.
pub fn check(es: &EventSource) -> Vec<Diagnostic> {
    let at = name_of(es);
    let mut out: Vec<Diagnostic> = kinds().iter().flat_map(|kind| kind.check(es, at)).collect();
    out.extend(left_out(es).into_iter().map(SourceError::diagnostic));
    out
}

/// Where `es` is.
fn name_of(es: &EventSource) -> SourceName<'_> {
    SourceName {
        namespace: ofe_crds::manifest::namespace_of(&es.metadata),
        eventsource: es.metadata.name.as_deref().unwrap_or_default(),
    }
}

/// The events of `es` of a kind this build left out, refused naming its feature rather than
/// skipped in silence.
fn left_out(es: &EventSource) -> Vec<SourceError> {
    let mut out = Vec::new();
    for (field, event) in es.spec.events() {
        let field = field.field();
        if !kinds().iter().any(|k| k.field() == field) {
            out.push(SourceError::Invalid {
                path: format!("spec.{field}.{event}"),
                message: format!(
                    "this ofe was built without the `{field}` feature; use a build with it (the default build has every kind)"
                ),
            });
        }
    }
    out
}

/// The condition type of an EventSource's upstream connections.
pub const SOURCE_CONNECTED: &str = "SourceConnected";

/// Every event of `es`, or why it cannot run, naming the field.
fn sources(es: &EventSource) -> Vec<Result<Box<dyn Source>, SourceError>> {
    let at = name_of(es);
    let mut out: Vec<_> = kinds().iter().flat_map(|kind| kind.sources(es, at)).collect();
    out.extend(left_out(es).into_iter().map(Err));
    out
}

/// What every EventSource of a process shares: counters, the health board, and the HTTP
/// listener's routes.
#[derive(Clone, Default)]
pub struct SourceHost {
    /// The `ofe_source_*` counters.
    pub metrics: SourceMetrics,
    /// Where each source reports its connection.
    pub health: Health,
    /// Where push sources serve their paths.
    pub routes: HttpRoutes,
}

/// Starts every event of `es` as a task publishing to `bus`. Fails, starting nothing, if any
/// event cannot run: its settings, or a webhook path another EventSource serves.
pub fn spawn(
    es: &EventSource,
    bus: Arc<dyn EventBus>,
    host: &SourceHost,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, SourceError> {
    let sources = sources(es).into_iter().collect::<Result<Vec<_>, _>>()?;
    let at = name_of(es);
    let resource = ResourceKey::new("EventSource", at.namespace, at.eventsource);
    let mut bound = Vec::with_capacity(sources.len());
    for mut source in sources {
        let context = SourceContext {
            bus: bus.clone(),
            metrics: host.metrics.clone(),
            reporter: host.health.reporter(resource.clone(), SOURCE_CONNECTED, &source.part()),
            shutdown: shutdown.child_token(),
            routes: host.routes.clone(),
        };
        // On an error, what was bound so far is dropped with `bound`, giving it back.
        source.bind(&context)?;
        bound.push((source, context));
    }
    Ok(bound.into_iter().map(|(source, context)| tokio::spawn(source.run(context))).collect())
}
