//! A tap on the data plane: what happens to each event, for `ofe tail`.
//!
//! Sources and Triggers report each step of an event's path (published, routed, filtered out,
//! delivered, retried, dead-lettered) to a [`Tap`]. Nothing is built or sent while nobody
//! listens, so the tap costs one atomic load per step. A listener that falls behind loses
//! the oldest steps and is told how many, rather than slowing the data plane down.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cloudevents::Event;
use serde::Serialize;
use tokio::sync::broadcast;

/// Steps a slow listener may fall behind before it loses the oldest.
const BACKLOG: usize = 4096;

/// One step of an event's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// An EventSource stored the event on the bus.
    Published,
    /// The event fired a Trigger's subscriber and waits in its queue.
    Routed,
    /// The event reached a subscriber's inputs, and a filter or the condition was false.
    Filtered,
    /// A destination took the event.
    Delivered,
    /// An attempt failed and will be retried.
    Retrying,
    /// The event went to the dead-letter destination.
    DeadLettered,
    /// The event failed for good and had no dead-letter destination.
    Dropped,
}

impl Stage {
    /// Every stage, in path order.
    pub const ALL: [Stage; 7] = [
        Stage::Published,
        Stage::Routed,
        Stage::Filtered,
        Stage::Delivered,
        Stage::Retrying,
        Stage::DeadLettered,
        Stage::Dropped,
    ];

    /// Its name, as it is serialized and as `ofe tail --stage` takes it.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Published => "published",
            Stage::Routed => "routed",
            Stage::Filtered => "filtered",
            Stage::Delivered => "delivered",
            Stage::Retrying => "retrying",
            Stage::DeadLettered => "dead-lettered",
            Stage::Dropped => "dropped",
        }
    }

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Who reported a step: an EventSource's event, or a Trigger's subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepOrigin {
    /// `EventSource` or `Trigger`.
    pub kind: &'static str,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// The EventSource's event name, or the subscriber (its index, or `sink`).
    pub part: String,
}

/// A step of one event's path.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub stage: Stage,
    /// Where.
    #[serde(flatten)]
    pub origin: StepOrigin,
    /// Why, for failures; where to, for deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The event (shared, not copied).
    #[serde(serialize_with = "as_cloudevent")]
    pub event: Arc<Event>,
}

fn as_cloudevent<S: serde::Serializer>(event: &Arc<Event>, s: S) -> Result<S::Ok, S::Error> {
    event.as_ref().serialize(s)
}

/// The process's tap. Cheap to clone; clones share listeners.
#[derive(Clone)]
pub struct Tap {
    tx: broadcast::Sender<Arc<Step>>,
}

impl Default for Tap {
    fn default() -> Self {
        Self { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("listeners", &self.tx.receiver_count()).finish()
    }
}

impl Tap {
    /// Reports a step. `step` runs only while someone listens.
    pub fn report(&self, step: impl FnOnce() -> Step) {
        if self.tx.receiver_count() > 0 {
            // A send fails only when the last listener left meanwhile.
            let _ = self.tx.send(Arc::new(step()));
        }
    }

    /// Reports `stage` of `event` at `origin`, with `detail`; neither is built while nobody
    /// listens.
    pub fn step(
        &self,
        stage: Stage,
        origin: impl FnOnce() -> StepOrigin,
        event: &Arc<Event>,
        detail: impl FnOnce() -> Option<String>,
    ) {
        self.report(|| Step {
            at: Utc::now(),
            stage,
            origin: origin(),
            detail: detail(),
            event: event.clone(),
        });
    }

    /// Starts listening: every step reported from now on.
    pub fn listen(&self) -> broadcast::Receiver<Arc<Step>> {
        self.tx.subscribe()
    }

    /// Whether anyone listens.
    pub fn is_listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> StepOrigin {
        StepOrigin {
            kind: "EventSource",
            namespace: "ns".into(),
            name: "es".into(),
            part: "e".into(),
        }
    }

    #[test]
    fn nothing_is_built_without_a_listener_and_a_listener_gets_every_step() {
        let tap = Tap::default();
        let event = Arc::new(Event::default());
        tap.report(|| unreachable!("built a step nobody listens to"));
        let mut rx = tap.listen();
        tap.step(Stage::Published, origin, &event, || None);
        let step = rx.try_recv().expect("a step");
        assert_eq!((step.stage, &step.origin), (Stage::Published, &origin()));
        let json = serde_json::to_value(step.as_ref()).expect("serializes");
        assert_eq!(json["stage"], "published");
        for stage in Stage::ALL {
            let serialized = serde_json::to_value(stage).expect("serializes");
            assert_eq!(serialized, stage.name(), "the name is the serialized form");
            assert_eq!(Stage::from_name(stage.name()), Some(stage));
        }
        assert_eq!(json["kind"], "EventSource");
        assert_eq!(json["event"]["specversion"], "1.0");
    }

    #[test]
    fn a_slow_listener_loses_the_oldest_and_is_told_how_many() {
        let tap = Tap::default();
        let event = Arc::new(Event::default());
        let mut rx = tap.listen();
        for _ in 0..BACKLOG + 10 {
            tap.step(Stage::Published, origin, &event, || None);
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
        assert!(rx.try_recv().is_ok());
    }
}
