//! A JSON map kept under one key of a bus's state store: what the pauses and the spec
//! replays record, so that every replica and every restart sees it.

use std::collections::BTreeMap;

use ofe_core::{BusError, StateError, StateStore};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The map stored under `key`, and the revision it was read at. A value this version cannot
/// read is taken as empty (logged, naming `what`) rather than blocking what depends on it; the
/// next write replaces it.
pub(crate) async fn read<V: DeserializeOwned>(
    store: &dyn StateStore,
    key: &str,
    what: &str,
) -> Result<(BTreeMap<String, V>, Option<u64>), BusError> {
    match store.get(key).await? {
        None => Ok((BTreeMap::new(), None)),
        Some(versioned) => {
            let map = serde_json::from_slice(&versioned.value).unwrap_or_else(|error| {
                tracing::warn!(%error, "the stored {what} are not readable; ignoring them");
                BTreeMap::new()
            });
            Ok((map, Some(versioned.revision)))
        }
    }
}

/// Changes the map under `key` with `change`, retrying against other writers
/// (compare-and-set); returns what `change` returned on the write that took.
pub(crate) async fn update<V, R>(
    store: &dyn StateStore,
    key: &str,
    what: &str,
    mut change: impl FnMut(&mut BTreeMap<String, V>) -> R,
) -> Result<R, BusError>
where
    V: Serialize + DeserializeOwned,
{
    loop {
        let (mut map, revision) = read(store, key, what).await?;
        let result = change(&mut map);
        let value = serde_json::to_vec(&map).unwrap_or_default();
        match store.put(key, value, revision).await {
            Ok(_) => return Ok(result),
            Err(StateError::Conflict) => continue,
            Err(StateError::Bus(error)) => return Err(error),
        }
    }
}
