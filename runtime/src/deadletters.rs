//! The dead-letter stores of this process's subscribers, which the endpoint's
//! `/deadletters` routes (and `ofe deadletters`) use. Each store runs beside its subscriber
//! ([`ofe_trigger::deadletters`]); this is where the endpoint finds them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ofe_trigger::SubscriberLabels;
use ofe_trigger::deadletters::Store;

use crate::pause::Target;

/// The running dead-letter stores, per consumer of the subscriber. Cheap to clone; clones
/// share it.
#[derive(Clone, Default)]
pub struct DeadLetters {
    inner: Arc<Mutex<BTreeMap<String, (SubscriberLabels, Store)>>>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

impl DeadLetters {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (SubscriberLabels, Store)>> {
        // A panic mid-update leaves plain data behind, still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the store of subscriber `consumer`.
    pub fn register(&self, consumer: &str, labels: SubscriberLabels, store: Store) {
        self.lock().insert(consumer.to_string(), (labels, store));
    }

    /// Forgets the store of a stopped subscriber (its letters stay on the bus).
    pub fn unregister(&self, consumer: &str) {
        self.lock().remove(consumer);
    }

    /// The stores `target` names, in subscriber order; or, when none runs here, a message
    /// naming what does.
    pub fn find(&self, target: &Target) -> Result<Vec<(SubscriberLabels, Store)>, String> {
        let inner = self.lock();
        let mut found: Vec<(SubscriberLabels, Store)> =
            inner.values().filter(|(labels, _)| target.matches(labels)).cloned().collect();
        if found.is_empty() {
            let kind = "subscribers that keep dead letters";
            return Err(target.not_found(inner.values().map(|(labels, _)| labels), kind));
        }
        found.sort_by(|a, b| a.0.subscriber.cmp(&b.0.subscriber));
        Ok(found)
    }
}
