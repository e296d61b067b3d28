//! ofe EventSources: adapters that turn inputs into CloudEvents and publish them on the bus.
//!
//! Every adapter publishes through an [`ingest::Publisher`], retrying until the bus has the
//! event: an input counts as done only when the bus has acknowledged it as durable. Events
//! carry the extension attributes `ofenamespace`, `ofeeventsource` and `ofeevent`.
//!
//! Kinds: `cron`, `mqtt` (TCP, TLS, WebSocket; 3.1.1 and 5), `kafka`, `nats` (core and JetStream), `redis` (streams
//! and pub/sub), and `webhook`
//! (served by [`webhook::router`]). How inputs become events is shared by every adapter: see
//! [`ingest`].

pub mod cron;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
pub mod nats;
pub mod redis;
mod schedule;
pub mod webhook;

use std::sync::Arc;

use ofe_core::EventBus;
use ofe_core::health::{Health, Reporter, ResourceKey};
use ofe_crds::EventSource;
use ofe_crds::diagnostic::Diagnostic;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cron::CronSource;
pub use metrics::SourceMetrics;
pub use schedule::Schedule;

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

/// Checks what only this crate can, by making every polling event exactly as [`spawn`] does:
/// schedules and time zones, broker URLs, certificates (read from their files), connection
/// settings. Nothing is connected.
pub fn check(es: &EventSource) -> Vec<Diagnostic> {
    sources(es)
        .into_iter()
        .filter_map(Result::err)
        .map(|SourceError::Invalid { path, message }| Diagnostic::error(path, message))
        .collect()
}

/// One polling event, ready to run (boxed: made once per event, and the kinds differ in size).
enum Source {
    Cron(Box<CronSource>),
    Mqtt(Box<mqtt::MqttSource>),
    Kafka(Box<kafka::KafkaSource>),
    Nats(Box<nats::NatsSource>),
    Redis(Box<redis::RedisSource>),
}

/// The condition type of an EventSource's upstream connections.
pub const SOURCE_CONNECTED: &str = "SourceConnected";

impl Source {
    /// `<kind>.<event>`: what it reads, unique within its EventSource even when several
    /// kinds feed one event name (as OpenFunction allows).
    fn part(&self) -> String {
        match self {
            Self::Cron(s) => format!("cron.{}", s.event),
            Self::Mqtt(s) => s.origin.labels.part(),
            Self::Kafka(s) => s.origin.labels.part(),
            Self::Nats(s) => s.origin.labels.part(),
            Self::Redis(s) => s.origin.labels.part(),
        }
    }

    /// Reports its connection to `reporter`. A schedule has no upstream: it works from the
    /// start.
    fn set_reporter(&mut self, reporter: Reporter) {
        match self {
            Self::Cron(_) => reporter.up("Scheduled"),
            Self::Mqtt(s) => s.origin.set_reporter(reporter),
            Self::Kafka(s) => s.origin.set_reporter(reporter),
            Self::Nats(s) => s.origin.set_reporter(reporter),
            Self::Redis(s) => s.origin.set_reporter(reporter),
        }
    }

    async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        match self {
            Self::Cron(s) => (*s).run(bus, metrics, shutdown).await,
            Self::Mqtt(s) => (*s).run(bus, metrics, shutdown).await,
            Self::Kafka(s) => (*s).run(bus, metrics, shutdown).await,
            Self::Nats(s) => (*s).run(bus, metrics, shutdown).await,
            Self::Redis(s) => (*s).run(bus, metrics, shutdown).await,
        }
    }
}

/// Every polling event of `es` (webhooks are served by [`webhook::router`]), or why it cannot
/// run, naming the field.
fn sources(es: &EventSource) -> Vec<Result<Source, SourceError>> {
    let namespace = es.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let (ns, name) = (namespace.as_str(), es.metadata.name.as_deref().unwrap_or_default());
    let mut out = Vec::new();
    for (event, spec) in es.spec.cron.iter().flatten() {
        out.push(
            Schedule::parse(&spec.schedule, spec.timezone.as_deref())
                .map(|schedule| {
                    Source::Cron(Box::new(CronSource {
                        namespace: ns.to_string(),
                        eventsource: name.to_string(),
                        event: event.clone(),
                        schedule_text: spec.schedule.clone(),
                        schedule,
                    }))
                })
                .map_err(|message| {
                    let field = if message.contains("time zone") { "timezone" } else { "schedule" };
                    SourceError::Invalid { path: format!("spec.cron.{event}.{field}"), message }
                }),
        );
    }
    for (event, spec) in es.spec.mqtt.iter().flatten() {
        out.push(mqtt::MqttSource::new(ns, name, event, spec).map(|s| Source::Mqtt(Box::new(s))));
    }
    for (event, spec) in es.spec.kafka.iter().flatten() {
        out.push(
            kafka::KafkaSource::new(ns, name, event, spec).map(|s| Source::Kafka(Box::new(s))),
        );
    }
    for (event, spec) in es.spec.nats.iter().flatten() {
        out.push(nats::NatsSource::new(ns, name, event, spec).map(|s| Source::Nats(Box::new(s))));
    }
    for (event, spec) in es.spec.redis.iter().flatten() {
        out.push(
            redis::RedisSource::new(ns, name, event, spec).map(|s| Source::Redis(Box::new(s))),
        );
    }
    out
}

/// Starts every polling event of `es` (cron, MQTT, Kafka, NATS, Redis) as a task publishing to
/// `bus`; webhooks are served by [`webhook::router`]. Fails, starting nothing, if any event
/// cannot run.
pub fn spawn(
    es: &EventSource,
    bus: Arc<dyn EventBus>,
    metrics: &SourceMetrics,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, SourceError> {
    let mut sources = sources(es).into_iter().collect::<Result<Vec<_>, _>>()?;
    let resource = ResourceKey {
        kind: "EventSource".into(),
        namespace: es.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: es.metadata.name.clone().unwrap_or_default(),
    };
    for source in &mut sources {
        let reporter = health.reporter(resource.clone(), SOURCE_CONNECTED, &source.part());
        source.set_reporter(reporter);
    }
    Ok(sources
        .into_iter()
        .map(|source| {
            tokio::spawn(source.run(bus.clone(), metrics.clone(), shutdown.child_token()))
        })
        .collect())
}
