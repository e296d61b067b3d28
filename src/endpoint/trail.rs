//! The console's trail: the recent steps of every event, while a console is open, so that an
//! event can be found by its id and its whole path shown (published, routed or filtered with
//! the verdict, each attempt and the sink's answer, delivered or dead-lettered), across every
//! EventSource and Trigger of the process.
//!
//! It listens to the tap only while at least one console is connected (`/console/live`), and
//! for [`LINGER`] after the last one left, so a process nobody looks at pays nothing: the tap
//! builds no step without a listener. It keeps the last [`KEPT`] steps, a few megabytes, and
//! only what a path needs (no event data). A burst faster than it reads loses the oldest
//! steps of the burst, and the trail says how many it lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ofe_core::tap::{Stage, Step, Tap};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

/// Steps kept.
pub const KEPT: usize = 20_000;

/// How long the trail keeps listening after the last console left.
const LINGER: Duration = Duration::from_secs(30);

/// One step, as the trail keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub stage: Stage,
    /// `EventSource` or `Trigger`.
    pub kind: &'static str,
    /// The resource's namespace.
    pub namespace: String,
    /// The resource's name.
    pub name: String,
    /// The EventSource's event, or the subscriber (its index, or `sink`).
    pub part: String,
    /// The verdict, the sink's answer or where it went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The event's id.
    pub id: String,
    /// The event's source.
    pub source: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub ty: String,
}

impl From<&Step> for Recorded {
    fn from(step: &Step) -> Self {
        use cloudevents::AttributesReader as _;
        Self {
            at: step.at,
            stage: step.stage,
            kind: step.origin.kind,
            namespace: step.origin.namespace.clone(),
            name: step.origin.name.clone(),
            part: step.origin.part.clone(),
            detail: step.detail.clone(),
            id: step.event.id().to_string(),
            source: step.event.source().to_string(),
            ty: step.event.ty().to_string(),
        }
    }
}

/// What the trail holds.
#[derive(Default)]
struct Kept {
    steps: VecDeque<Recorded>,
    /// When it started listening, this time.
    since: Option<DateTime<Utc>>,
    /// Steps it could not read in time since then.
    lost: u64,
    /// Whether a recorder task is listening.
    listening: bool,
}

/// The trail. Cheap to clone.
#[derive(Clone, Default)]
pub struct Trail {
    kept: Arc<Mutex<Kept>>,
    watchers: Arc<AtomicUsize>,
}

/// Held by each open console; the trail listens while any is held.
pub struct Watching(Arc<AtomicUsize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An event's path as `/console/path` answers it.
#[derive(Debug, Serialize)]
pub struct Path {
    /// Its steps, oldest first.
    pub steps: Vec<Recorded>,
    /// Since when the trail has listened (it knows nothing older).
    pub since: Option<DateTime<Utc>>,
    /// Steps it lost to bursts since then.
    pub lost: u64,
}

impl Trail {
    /// Marks a console open, and starts listening to `tap` if the trail does not yet. The
    /// count goes up before the check, so a recorder about to stop sees it.
    pub fn watch(&self, tap: &Tap) -> Watching {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        let start = self.kept.lock().is_ok_and(|mut kept| {
            let start = !kept.listening;
            if start {
                kept.listening = true;
                kept.since = Some(Utc::now());
                kept.lost = 0;
            }
            start
        });
        if start {
            tokio::spawn(self.clone().record(tap.listen()));
        }
        Watching(self.watchers.clone())
    }

    async fn record(self, mut steps: tokio::sync::broadcast::Receiver<Arc<Step>>) {
        let mut idle = tokio::time::interval(LINGER);
        idle.tick().await;
        loop {
            tokio::select! {
                step = steps.recv() => match step {
                    Ok(step) => self.keep(Recorded::from(step.as_ref())),
                    Err(RecvError::Lagged(n)) => {
                        if let Ok(mut kept) = self.kept.lock() {
                            kept.lost += n;
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = idle.tick() => {
                    if self.watchers.load(Ordering::Acquire) == 0 && self.stop_if_unwatched() {
                        return;
                    }
                }
            }
        }
        if let Ok(mut kept) = self.kept.lock() {
            kept.listening = false;
        }
    }

    /// Stops listening if no console is open, deciding under the lock [`Trail::watch`] takes:
    /// a console opening meanwhile either finds the trail listening, or starts it anew.
    fn stop_if_unwatched(&self) -> bool {
        let Ok(mut kept) = self.kept.lock() else { return true };
        let unwatched = self.watchers.load(Ordering::Acquire) == 0;
        if unwatched {
            kept.listening = false;
        }
        unwatched
    }

    fn keep(&self, step: Recorded) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.steps.len() == KEPT {
                kept.steps.pop_front();
            }
            kept.steps.push_back(step);
        }
    }

    /// The steps of the events with id `id` (and source `source`, when given).
    pub fn path(&self, id: &str, source: Option<&str>) -> Path {
        let Ok(kept) = self.kept.lock() else {
            return Path { steps: Vec::new(), since: None, lost: 0 };
        };
        let steps = kept
            .steps
            .iter()
            .filter(|s| s.id == id && source.is_none_or(|want| s.source == want))
            .cloned()
            .collect();
        Path { steps, since: kept.since, lost: kept.lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ofe_core::tap::StepOrigin;

    fn event(id: &str) -> Arc<cloudevents::Event> {
        let mut event = cloudevents::Event::default();
        cloudevents::AttributesWriter::set_id(&mut event, id);
        Arc::new(event)
    }

    #[tokio::test]
    async fn an_events_steps_are_found_by_id_while_a_console_watches() {
        let tap = Tap::default();
        let trail = Trail::default();
        assert!(!tap.is_listened(), "nothing listens before a console opens");
        let watching = trail.watch(&tap);
        assert!(tap.is_listened());
        let origin = || StepOrigin {
            kind: "Trigger",
            namespace: "n".into(),
            name: "t".into(),
            part: "0".into(),
        };
        for (stage, id) in [(Stage::Routed, "a"), (Stage::Routed, "b"), (Stage::Delivered, "a")] {
            tap.step(stage, origin, &event(id), || Some(format!("{id} detail")));
        }
        let mut path = trail.path("a", None);
        for _ in 0..100 {
            if path.steps.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            path = trail.path("a", None);
        }
        let stages: Vec<Stage> = path.steps.iter().map(|s| s.stage).collect();
        assert_eq!(stages, [Stage::Routed, Stage::Delivered]);
        assert!(path.since.is_some());
        assert!(trail.path("a", Some("/elsewhere")).steps.is_empty(), "the source must match");
        drop(watching);
        assert_eq!(trail.watchers.load(Ordering::Acquire), 0);
    }
}
