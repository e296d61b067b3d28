//! The join state of Triggers in a JetStream key-value bucket.

use super::*;

/// How long join state a replica left behind stays in the key-value bucket.
pub(super) const STATE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Join state in a JetStream key-value bucket (`<stream>_state`), with its compare-and-set.
pub(super) struct KvState(pub(super) jetstream::kv::Store);

#[async_trait]
impl StateStore for KvState {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BusError> {
        let entry = self.0.entry(key).await.map_err(unavailable("cannot read state"))?;
        Ok(entry
            .filter(|e| e.operation == jetstream::kv::Operation::Put)
            .map(|e| Versioned { value: e.value.to_vec(), revision: e.revision }))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, StateError> {
        use jetstream::kv::{CreateErrorKind, UpdateErrorKind};
        match expected {
            None => self.0.create(key, value.into()).await.map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => StateError::Conflict,
                _ => StateError::Bus(unavailable("cannot write state")(e)),
            }),
            Some(revision) => {
                self.0.update(key, value.into(), revision).await.map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => StateError::Conflict,
                    _ => StateError::Bus(unavailable("cannot write state")(e)),
                })
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BusError> {
        self.0.purge(key).await.map_err(unavailable("cannot delete state"))
    }
}
