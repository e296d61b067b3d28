//! Durable key-value state beside the events, for Trigger joins: the embedded store's own
//! keyspace, or a JetStream key-value bucket.
//!
//! Writes are compare-and-set on a revision, so that replicas sharing a bus never overwrite
//! each other's join state unseen: a writer that lost the race gets
//! [`StateError::Conflict`], reloads and decides again.

use async_trait::async_trait;

use crate::BusError;

/// A value and the revision it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Its revision; a write must name it to replace the value.
    pub revision: u64,
}

/// Why a state write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another writer changed the key since the revision named; reload and try again.
    #[error("the state changed since it was read")]
    Conflict,
    /// The store failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A durable key-value store with compare-and-set writes. Keys are made of `[A-Za-z0-9_=.-]`.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The value of `key`, if it has one.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, BusError>;

    /// Writes `value` if `key` is still at `expected` (`None`: the key has no value). Returns
    /// once the write is durable, with the new revision.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, StateError>;

    /// Removes `key`'s value, whatever its revision.
    async fn delete(&self, key: &str) -> Result<(), BusError>;
}

/// A key for a [`StateStore`] from parts: each part escaped as a subject token is (with `=` in
/// place of `%`, which key-value stores refuse) and joined with `.`, so different parts never
/// give the same key.
pub fn state_key(parts: &[&str]) -> String {
    parts.iter().map(|p| crate::subject::escape(p).replace('%', "=")).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_collide_and_use_safe_characters() {
        let a = state_key(&["a.b", "c"]);
        let b = state_key(&["a", "b.c"]);
        assert_ne!(a, b);
        assert_eq!(state_key(&["ns", "car 7/ü"]), "ns.car=207=2F=C3=BC");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "_=.-".contains(c)));
    }
}
