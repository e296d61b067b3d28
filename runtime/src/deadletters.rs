//! The dead-letter stores of this process's subscribers, which the endpoint's
//! `/deadletters` routes (and `ofe deadletters`) use. Each store runs beside its subscriber
//! ([`ofe_trigger::deadletters`]) once opened; this is where the endpoint finds them, and
//! where the subscribers that hold letters are noted on their bus, so that a start opens
//! their stores at once (their gauge then shows what they hold) and leaves the others closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ofe_core::StateStore;
use ofe_trigger::SubscriberLabels;
use ofe_trigger::deadletters::Lazy;

use crate::pause::Target;

/// How long a read of a bus's noted subscribers serves the subscribers starting after it.
const NOTED_FRESH: Duration = Duration::from_secs(2);

/// What the noted subscribers are called in a warning.
const WHAT: &str = "subscribers with dead letters";

/// The key of a bus's subscribers with letters, in its state store.
fn key() -> String {
    ofe_core::state_key(&["ofe", "deadletters"])
}

type Stores = BTreeMap<String, (SubscriberLabels, Arc<Lazy>)>;

/// Per bus, its noted subscribers, and when they were read.
type Noted = HashMap<String, (Instant, BTreeSet<String>)>;

/// The dead-letter stores, per consumer of the subscriber. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct DeadLetters {
    inner: Arc<Mutex<Stores>>,
    /// Per bus, its noted subscribers, and when they were read.
    noted: Arc<Mutex<Noted>>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

impl DeadLetters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stores> {
        // A panic mid-update leaves plain data behind, still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the store of subscriber `consumer`.
    pub fn register(&self, consumer: &str, labels: SubscriberLabels, store: Arc<Lazy>) {
        self.lock().insert(consumer.to_string(), (labels, store));
    }

    /// Forgets the store of a stopped subscriber (its letters stay on the bus).
    pub fn unregister(&self, consumer: &str) {
        self.lock().remove(consumer);
    }

    /// Whether `consumer` was noted on bus `bus` (whose state store is `store`) as holding
    /// letters. One read of the store serves every subscriber starting within
    /// [`NOTED_FRESH`]; a store that cannot be read says no (the store then opens with the
    /// first letter or request).
    pub async fn noted(&self, bus: &str, store: &dyn StateStore, consumer: &str) -> bool {
        let cached = {
            let noted = self.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            noted
                .get(bus)
                .filter(|(at, _)| at.elapsed() < NOTED_FRESH)
                .map(|(_, set)| set.contains(consumer))
        };
        if let Some(found) = cached {
            return found;
        }
        let set: BTreeSet<String> = match crate::stored::read::<bool>(store, &key(), WHAT).await {
            Ok((map, _)) => map.into_keys().collect(),
            Err(error) => {
                tracing::warn!(%bus, error = %ofe_core::Report(&error), "cannot read which subscribers hold dead letters");
                BTreeSet::new()
            }
        };
        let found = set.contains(consumer);
        let mut noted = self.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        noted.insert(bus.to_string(), (Instant::now(), set));
        found
    }

    /// Notes on the bus that `consumer` holds letters (its store opened).
    pub async fn note(store: &dyn StateStore, consumer: &str) {
        let written =
            crate::stored::update(store, &key(), WHAT, |map: &mut BTreeMap<String, bool>| {
                map.insert(consumer.to_string(), true);
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(%consumer, error = %ofe_core::Report(&error), "cannot note that the subscriber holds dead letters; its store opens with the next letter or request");
        }
    }

    /// The stores `target` names, in subscriber order; or, when none runs here, a message
    /// naming what does.
    pub fn find(&self, target: &Target) -> Result<Vec<(SubscriberLabels, Arc<Lazy>)>, String> {
        let inner = self.lock();
        let mut found: Vec<(SubscriberLabels, Arc<Lazy>)> =
            inner.values().filter(|(labels, _)| target.matches(labels)).cloned().collect();
        if found.is_empty() {
            let kind = "subscribers that keep dead letters";
            return Err(target.not_found(inner.values().map(|(labels, _)| labels), kind));
        }
        found.sort_by(|a, b| a.0.subscriber.cmp(&b.0.subscriber));
        Ok(found)
    }
}
