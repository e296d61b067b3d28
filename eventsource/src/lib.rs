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

use ofe_crds::EventSource;
use ofe_crds::diagnostic::Diagnostic;
use ofe_eventbus::EventBus;
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

/// Checks what only this crate can: schedules and time zones.
pub fn check(es: &EventSource) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (name, cron) in es.spec.cron.iter().flatten() {
        if let Err(message) = Schedule::parse(&cron.schedule, cron.timezone.as_deref()) {
            let field = if message.contains("time zone") { "timezone" } else { "schedule" };
            out.push(Diagnostic::error(format!("spec.cron.{name}.{field}"), message));
        }
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
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, SourceError> {
    type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let namespace = es.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = es.metadata.name.clone().unwrap_or_default();
    let token = || shutdown.child_token();
    let mut tasks: Vec<Task> = Vec::new();
    for (event, spec) in es.spec.cron.iter().flatten() {
        let schedule =
            Schedule::parse(&spec.schedule, spec.timezone.as_deref()).map_err(|message| {
                SourceError::Invalid { path: format!("spec.cron.{event}.schedule"), message }
            })?;
        let source = CronSource {
            namespace: namespace.clone(),
            eventsource: name.clone(),
            event: event.clone(),
            schedule_text: spec.schedule.clone(),
            schedule,
        };
        tasks.push(Box::pin(source.run(bus.clone(), metrics.clone(), token())));
    }
    for (event, spec) in es.spec.mqtt.iter().flatten() {
        let source = mqtt::MqttSource::new(&namespace, &name, event, spec)?;
        tasks.push(Box::pin(source.run(bus.clone(), metrics.clone(), token())));
    }
    for (event, spec) in es.spec.kafka.iter().flatten() {
        let source = kafka::KafkaSource::new(&namespace, &name, event, spec)?;
        tasks.push(Box::pin(source.run(bus.clone(), metrics.clone(), token())));
    }
    for (event, spec) in es.spec.nats.iter().flatten() {
        let source = nats::NatsSource::new(&namespace, &name, event, spec)?;
        tasks.push(Box::pin(source.run(bus.clone(), metrics.clone(), token())));
    }
    for (event, spec) in es.spec.redis.iter().flatten() {
        let source = redis::RedisSource::new(&namespace, &name, event, spec)?;
        tasks.push(Box::pin(source.run(bus.clone(), metrics.clone(), token())));
    }
    Ok(tasks.into_iter().map(tokio::spawn).collect())
}
