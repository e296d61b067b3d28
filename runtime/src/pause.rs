//! Pausing Trigger subscribers: `ofe pause` / `ofe resume` (through the endpoint) and
//! `spec.paused`.
//!
//! A paused subscriber reads nothing from its queue on the bus: the router still puts what
//! fires there, so events wait, in order, and the subscriber's lag grows; resuming reads on
//! from where it stopped. A pause asked by hand is written to the bus's own state store (one
//! key per bus listing its paused consumers) before it takes effect, so it survives restarts
//! and reaches every replica: each process reads the key again every [`POLL`]. `spec.paused`
//! pauses every subscriber of its Trigger for as long as the spec says so; `ofe resume` does
//! not lift it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofe_core::{BusError, StateStore};
use ofe_trigger::SubscriberLabels;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How often each process reads the paused consumers of its buses again, to follow what
/// another replica was asked.
pub const POLL: Duration = Duration::from_secs(2);

/// Why a pause or resume did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No running subscriber matches; names what does run.
    #[error("{0}")]
    NotFound(String),
    /// The bus's state store failed: nothing changed.
    #[error("cannot store the pause on the bus")]
    Store(#[source] BusError),
}

/// Which subscribers an action is for.
#[derive(Clone, Debug, Deserialize)]
pub struct Target {
    /// The Trigger's namespace.
    pub namespace: String,
    /// The Trigger.
    pub trigger: String,
    /// One subscriber (its index); every subscriber of the Trigger when absent.
    #[serde(default)]
    pub subscriber: Option<String>,
}

impl Target {
    /// Whether the subscriber of `labels` is one the action is for.
    pub fn matches(&self, labels: &SubscriberLabels) -> bool {
        labels.namespace == self.namespace
            && labels.trigger == self.trigger
            && self.subscriber.as_ref().is_none_or(|s| *s == labels.subscriber)
    }

    /// Says that nothing `running` (described as `kind`) matches, and names what runs.
    pub fn not_found<'a>(
        &self,
        running: impl Iterator<Item = &'a SubscriberLabels>,
        kind: &str,
    ) -> String {
        let mut running: Vec<String> = running
            .map(|l| format!("{}/{} subscriber {}", l.namespace, l.trigger, l.subscriber))
            .collect();
        running.sort();
        running.dedup();
        let what = match &self.subscriber {
            Some(s) => format!("subscriber {s} of Trigger {}/{}", self.namespace, self.trigger),
            None => format!("Trigger {}/{}", self.namespace, self.trigger),
        };
        if running.is_empty() {
            format!("no {what} runs here: this process runs no {kind}")
        } else {
            format!("no {what} runs here; running: {}", running.join(", "))
        }
    }
}

/// One subscriber's pause, as `ofe pause`, `ofe resume` and `ofe status` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseState {
    /// The Trigger's namespace.
    pub namespace: String,
    /// The Trigger.
    pub trigger: String,
    /// The subscriber's index.
    pub subscriber: String,
    /// Whether it reads nothing now.
    pub paused: bool,
    /// Paused by `spec.paused`.
    pub by_spec: bool,
    /// Paused by hand (`ofe pause`), since this time (RFC 3339).
    pub since: Option<String>,
}

/// What is stored on a bus: per paused consumer, since when.
type Stored = BTreeMap<String, Paused>;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Paused {
    since: String,
}

/// The key of a bus's paused consumers in its state store.
fn key() -> String {
    ofe_core::state_key(&["ofe", "paused"])
}

struct Entry {
    labels: SubscriberLabels,
    /// The bus it reads, whose store holds its pause.
    bus: String,
    by_spec: bool,
    since: Option<String>,
    sender: watch::Sender<bool>,
}

impl Entry {
    fn state(&self) -> PauseState {
        PauseState {
            namespace: self.labels.namespace.clone(),
            trigger: self.labels.trigger.clone(),
            subscriber: self.labels.subscriber.clone(),
            paused: self.by_spec || self.since.is_some(),
            by_spec: self.by_spec,
            since: self.since.clone(),
        }
    }

    fn publish(&self) {
        self.sender.send_replace(self.by_spec || self.since.is_some());
    }
}

#[derive(Default)]
struct Inner {
    /// Per consumer name.
    entries: HashMap<String, Entry>,
    /// Per bus, its state store (`None`: the bus keeps no state, pauses live in memory).
    stores: HashMap<String, Option<Arc<dyn StateStore>>>,
}

/// The pauses of every subscriber of this process. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Pauses {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pauses").finish_non_exhaustive()
    }
}

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic mid-update leaves plain data behind, still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a starting subscriber, reading its bus's stored pauses first: what the
    /// runner should follow. `bus` names the bus (its pauses share one key), `store` is its
    /// state store.
    pub async fn register(
        &self,
        consumer: &str,
        labels: SubscriberLabels,
        bus: &str,
        store: Option<Arc<dyn StateStore>>,
        by_spec: bool,
    ) -> Result<watch::Receiver<bool>, PauseError> {
        let stored = match &store {
            Some(store) => read(store.as_ref()).await.map_err(PauseError::Store)?.0,
            None => Stored::new(),
        };
        let since = stored.get(consumer).map(|p| p.since.clone());
        let (sender, receiver) = watch::channel(by_spec || since.is_some());
        let mut inner = self.lock();
        inner.stores.insert(bus.to_string(), store);
        let entry = Entry { labels, bus: bus.to_string(), by_spec, since, sender };
        inner.entries.insert(consumer.to_string(), entry);
        Ok(receiver)
    }

    /// Forgets a stopped subscriber (its stored pause stays, for its next start).
    pub fn unregister(&self, consumer: &str) {
        let mut inner = self.lock();
        inner.entries.remove(consumer);
        let buses: std::collections::HashSet<String> =
            inner.entries.values().map(|e| e.bus.clone()).collect();
        inner.stores.retain(|bus, _| buses.contains(bus));
    }

    /// Every subscriber's pause, sorted.
    pub fn list(&self) -> Vec<PauseState> {
        let mut states: Vec<PauseState> = self.lock().entries.values().map(Entry::state).collect();
        states.sort_by(|a, b| {
            (&a.namespace, &a.trigger, &a.subscriber).cmp(&(
                &b.namespace,
                &b.trigger,
                &b.subscriber,
            ))
        });
        states
    }

    /// Pauses (or with `paused` false, resumes) the subscribers `target` names: stored on
    /// their buses first, then in effect here. Returns their states after.
    pub async fn set(&self, target: &Target, paused: bool) -> Result<Vec<PauseState>, PauseError> {
        let (consumers, stores) = {
            let inner = self.lock();
            let consumers: Vec<(String, String)> = inner
                .entries
                .iter()
                .filter(|(_, e)| target.matches(&e.labels))
                .map(|(consumer, e)| (consumer.clone(), e.bus.clone()))
                .collect();
            if consumers.is_empty() {
                return Err(PauseError::NotFound(not_found(&inner, target)));
            }
            let mut stores: HashMap<String, Option<Arc<dyn StateStore>>> = HashMap::new();
            for (_, bus) in &consumers {
                stores.insert(bus.clone(), inner.stores.get(bus).cloned().flatten());
            }
            (consumers, stores)
        };
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut stored_since: HashMap<String, Option<String>> = HashMap::new();
        for (bus, store) in &stores {
            let mine: Vec<&str> =
                consumers.iter().filter(|(_, b)| b == bus).map(|(c, _)| c.as_str()).collect();
            let now = match store {
                Some(store) => update(store.as_ref(), &mine, paused, &since).await?,
                None => {
                    mine.iter().map(|c| (c.to_string(), paused.then(|| since.clone()))).collect()
                }
            };
            stored_since.extend(now);
        }
        let mut inner = self.lock();
        let mut states = Vec::new();
        for (consumer, _) in &consumers {
            if let Some(entry) = inner.entries.get_mut(consumer) {
                entry.since = stored_since.get(consumer).cloned().flatten();
                entry.publish();
                states.push(entry.state());
            }
        }
        states.sort_by(|a, b| a.subscriber.cmp(&b.subscriber));
        Ok(states)
    }

    /// Reads every bus's stored pauses again and follows them: what another replica was
    /// asked. Errors are logged and the pauses kept as they are.
    pub async fn refresh(&self) {
        let stores: Vec<(String, Arc<dyn StateStore>)> = self
            .lock()
            .stores
            .iter()
            .filter_map(|(bus, store)| Some((bus.clone(), store.clone()?)))
            .collect();
        for (bus, store) in stores {
            let stored = match read(store.as_ref()).await {
                Ok((stored, _)) => stored,
                Err(error) => {
                    tracing::warn!(%bus, error = %ofe_core::Report(&error), "cannot read the paused subscribers; keeping them as they are");
                    continue;
                }
            };
            let mut inner = self.lock();
            for (consumer, entry) in inner.entries.iter_mut().filter(|(_, e)| e.bus == bus) {
                let since = stored.get(consumer).map(|p| p.since.clone());
                if since != entry.since {
                    entry.since = since;
                    entry.publish();
                }
            }
        }
    }

    /// Calls [`Pauses::refresh`] every [`POLL`] until `stop`.
    pub async fn follow(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL) => self.refresh().await,
            }
        }
    }
}

/// The error for a target that matches nothing, naming the Triggers that run.
fn not_found(inner: &Inner, target: &Target) -> String {
    target.not_found(inner.entries.values().map(|e| &e.labels), "Trigger subscribers")
}

/// What the stored pauses are called in a warning.
const WHAT: &str = "paused subscribers";

/// A bus's stored pauses, and the revision they were read at.
async fn read(store: &dyn StateStore) -> Result<(Stored, Option<u64>), BusError> {
    crate::stored::read(store, &key(), WHAT).await
}

/// Marks `consumers` paused (since `since`, unless already) or not, with compare-and-set
/// retries against other writers. Returns each consumer's stored `since` after.
async fn update(
    store: &dyn StateStore,
    consumers: &[&str],
    paused: bool,
    since: &str,
) -> Result<HashMap<String, Option<String>>, PauseError> {
    crate::stored::update(store, &key(), WHAT, |stored: &mut Stored| {
        for consumer in consumers {
            if paused {
                stored
                    .entry((*consumer).to_string())
                    .or_insert_with(|| Paused { since: since.to_string() });
            } else {
                stored.remove(*consumer);
            }
        }
        consumers.iter().map(|c| (c.to_string(), stored.get(*c).map(|p| p.since.clone()))).collect()
    })
    .await
    .map_err(PauseError::Store)
}
