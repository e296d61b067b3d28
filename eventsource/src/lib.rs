//! ofe EventSources: adapters that turn inputs into CloudEvents and publish them on the bus.
//!
//! Every adapter publishes through [`cron::publish_with_retry`]-style loops: the input counts
//! as done only when the bus has acknowledged the event as durable. Events carry the
//! extension attributes `ofenamespace`, `ofeeventsource` and `ofeevent`.
//!
//! Kinds available now: `cron`, `mqtt` (plain TCP), `kafka`, and `webhook` (served by
//! [`webhook::router`]). The `redis` kind parses and validates; the runtime refuses to start it
//! until its adapter lands. How inputs become events is shared by every adapter: see
//! [`ingest`].

pub mod cron;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
mod schedule;
pub mod webhook;

use std::sync::Arc;

use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::{EventSource, SourceKind};
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

/// Starts every polling event of `es` (cron) as a task publishing to `bus`; webhooks are served
/// by [`webhook::router`]. Fails, starting nothing, if any event cannot run.
pub fn spawn(
    es: &EventSource,
    bus: Arc<dyn EventBus>,
    metrics: &SourceMetrics,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, SourceError> {
    let namespace = es.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = es.metadata.name.clone().unwrap_or_default();
    let mut sources = Vec::new();
    for (kind, event) in es.spec.events() {
        if !matches!(
            kind,
            SourceKind::Cron | SourceKind::Webhook | SourceKind::Mqtt | SourceKind::Kafka
        ) {
            return Err(SourceError::Invalid {
                path: format!("spec.{}.{event}", kind.field()),
                message: format!(
                    "the {} source is not available in this version of ofe yet; \
                     use cron, or run this EventSource with OpenFunction until it lands",
                    kind.field()
                ),
            });
        }
    }
    for (event, spec) in es.spec.cron.iter().flatten() {
        let schedule =
            Schedule::parse(&spec.schedule, spec.timezone.as_deref()).map_err(|message| {
                SourceError::Invalid { path: format!("spec.cron.{event}.schedule"), message }
            })?;
        sources.push(CronSource {
            namespace: namespace.clone(),
            eventsource: name.clone(),
            event: event.clone(),
            schedule_text: spec.schedule.clone(),
            schedule,
        });
    }
    let mut mqtt = Vec::new();
    for (event, spec) in es.spec.mqtt.iter().flatten() {
        mqtt.push(mqtt::MqttSource::new(&namespace, &name, event, spec)?);
    }
    let mut kafka = Vec::new();
    for (event, spec) in es.spec.kafka.iter().flatten() {
        kafka.push(kafka::KafkaSource::new(&namespace, &name, event, spec)?);
    }
    let mut tasks: Vec<JoinHandle<()>> = sources
        .into_iter()
        .map(|source| {
            tokio::spawn(source.run(bus.clone(), metrics.clone(), shutdown.child_token()))
        })
        .collect();
    tasks.extend(mqtt.into_iter().map(|source| {
        tokio::spawn(source.run(bus.clone(), metrics.clone(), shutdown.child_token()))
    }));
    tasks.extend(kafka.into_iter().map(|source| {
        tokio::spawn(source.run(bus.clone(), metrics.clone(), shutdown.child_token()))
    }));
    Ok(tasks)
}
