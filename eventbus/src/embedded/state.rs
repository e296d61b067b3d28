//! The durable key-value state of Trigger joins, in the same store as the log.

use super::*;

/// The embedded bus's state: keyspace `state`, each value prefixed with its revision; writes
/// go through the committer, so they are durable when answered and share its batches. The
/// memory bus keeps it in its log's lock, under the same revision rule ([`next_revision`]).
#[async_trait]
impl StateStore for EmbeddedBus {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BusError> {
        let state = match &self.inner.store {
            Store::Disk(disk) => disk.handles()?.state,
            Store::Memory(memory) => {
                let log = memory.lock().map_err(|_| BusError::Closed)?;
                let found = log.state.get(key).map(|(revision, value)| Versioned {
                    value: value.clone(),
                    revision: *revision,
                });
                return Ok(found);
            }
        };
        let Some(record) = state.get(key.as_bytes()).map_err(storage)? else {
            return Ok(None);
        };
        let revision = revision_of(&record).unwrap_or(0);
        Ok(Some(Versioned { value: record.get(8..).unwrap_or_default().to_vec(), revision }))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, StateError> {
        let expected = Some(expected.unwrap_or(0));
        if let Store::Memory(memory) = &self.inner.store {
            return memory.lock().map_err(|_| BusError::Closed)?.set_state(
                key,
                Some(value),
                expected,
            );
        }
        let (reply, answer) = oneshot::channel();
        self.submit(WriteOp::State { key: key.to_string(), value: Some(value), expected, reply })
            .await?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    async fn delete(&self, key: &str) -> Result<(), BusError> {
        if let Store::Memory(memory) = &self.inner.store {
            let _ = memory.lock().map_err(|_| BusError::Closed)?.set_state(key, None, None);
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.submit(WriteOp::State { key: key.to_string(), value: None, expected: None, reply })
            .await?;
        match answer.await.map_err(|_| BusError::Closed)? {
            Ok(_) | Err(StateError::Conflict) => Ok(()),
            Err(StateError::Bus(e)) => Err(e),
        }
    }
}
