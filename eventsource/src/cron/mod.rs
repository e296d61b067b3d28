//! The cron EventSource: emits an event each time its schedule fires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use ofe_core::event::{EXT_EVENT, EXT_EVENTSOURCE, EXT_NAMESPACE};
use ofe_core::{EventBus, Subject};
use tokio_util::sync::CancellationToken;

pub mod schedule;

use crate::metrics::{EventLabels, SourceMetrics};
pub use schedule::{Schedule, ScheduleError};

/// The CloudEvents `type` of cron events.
pub const CRON_EVENT_TYPE: &str = "io.openfunction.events.cron";

/// UUID namespace for deterministic cron event ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_6372_6f6e_8000_0000_0000_0001);

/// Fires older than this when the loop gets to them (after a long bus outage) are skipped.
const MAX_CATCH_UP: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// One cron event of one EventSource.
#[derive(Clone, Debug)]
pub struct CronSource {
    /// Namespace of the EventSource.
    pub namespace: String,
    /// Name of the EventSource.
    pub eventsource: String,
    /// Event name (the key under `spec.cron`).
    pub event: String,
    /// The schedule as written, for the event's data.
    pub schedule_text: String,
    /// The parsed schedule.
    pub schedule: Schedule,
}

impl CronSource {
    /// The `source` attribute of this EventSource's events.
    pub fn source_uri(&self) -> String {
        source_uri(&self.namespace, &self.eventsource)
    }

    /// The event for the fire at `scheduled`. Its id depends only on namespace, EventSource,
    /// event and scheduled time, so a restart or a second replica that fires the same tick
    /// produces the same id, which the bus recognises as a duplicate.
    pub fn event_for(
        &self,
        scheduled: DateTime<Utc>,
    ) -> Result<Event, cloudevents::event::EventBuilderError> {
        let time = scheduled.to_rfc3339_opts(SecondsFormat::Millis, true);
        let key = format!("{}/{}/{}/{}", self.namespace, self.eventsource, self.event, time);
        let id = uuid::Uuid::new_v5(&ID_NAMESPACE, key.as_bytes());
        EventBuilderV10::new()
            .id(id.to_string())
            .source(self.source_uri())
            .ty(CRON_EVENT_TYPE)
            .subject(self.event.clone())
            .time(scheduled)
            .extension(EXT_NAMESPACE, self.namespace.clone())
            .extension(EXT_EVENTSOURCE, self.eventsource.clone())
            .extension(EXT_EVENT, self.event.clone())
            .data(
                "application/json",
                serde_json::json!({ "schedule": self.schedule_text, "scheduledTime": time }),
            )
            .build()
    }

    /// Runs until `shutdown`: waits for each fire time and publishes its event, retrying a
    /// failed publish with backoff. A fire is counted as published only once the bus has it.
    pub async fn run(
        self,
        bus: Arc<dyn EventBus>,
        metrics: SourceMetrics,
        shutdown: CancellationToken,
    ) {
        let labels = EventLabels::new(&self.namespace, &self.eventsource, "cron", &self.event);
        let subject = Subject::event(&self.namespace, &self.eventsource, &self.event);
        let mut after = Utc::now();
        loop {
            let Some(next) = self.schedule.next_after(after) else {
                tracing::info!(event = %self.event, "schedule has no further fire times");
                return;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            after = next;
            if Utc::now() - next > MAX_CATCH_UP {
                tracing::warn!(event = %self.event, scheduled = %next, "skipping fires missed during a long bus outage");
                after = Utc::now();
                continue;
            }
            metrics.received.get_or_create(&labels).inc();
            let event = match self.event_for(next) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build cron event");
                    continue;
                }
            };
            if !crate::ingest::publish_with_retry(
                &*bus, &subject, &event, &labels, &metrics, &shutdown,
            )
            .await
            {
                return;
            }
        }
    }
}

/// The `source` attribute for events of an EventSource.
pub fn source_uri(namespace: &str, eventsource: &str) -> String {
    format!(
        "/apis/events.openfunction.io/v1alpha1/namespaces/{namespace}/eventsources/{eventsource}"
    )
}

/// The `cron` kind: `spec.cron`, one [`CronSource`] per event.
pub struct Kind;

impl crate::SourceKind for Kind {
    fn field(&self) -> &'static str {
        "cron"
    }

    fn sources(
        &self,
        es: &ofe_crds::EventSource,
        at: crate::SourceName<'_>,
    ) -> Vec<Result<Box<dyn crate::Source>, crate::SourceError>> {
        let events = es.spec.cron.iter().flatten();
        events
            .map(|(event, spec)| {
                Schedule::parse(&spec.schedule, spec.timezone.as_deref())
                    .map(|schedule| {
                        Box::new(CronSource {
                            namespace: at.namespace.to_string(),
                            eventsource: at.eventsource.to_string(),
                            event: event.clone(),
                            schedule_text: spec.schedule.clone(),
                            schedule,
                        }) as Box<dyn crate::Source>
                    })
                    .map_err(|e| crate::SourceError::Invalid {
                        path: format!("spec.cron.{event}.{}", e.field()),
                        message: e.to_string(),
                    })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl crate::Source for CronSource {
    fn part(&self) -> String {
        format!("cron.{}", self.event)
    }

    /// A schedule has no upstream: it works from the start.
    async fn run(self: Box<Self>, context: crate::SourceContext) {
        context.reporter.up("Scheduled");
        CronSource::run(*self, context.bus, context.metrics, context.shutdown).await;
    }
}
