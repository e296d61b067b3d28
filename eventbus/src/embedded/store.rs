//! The embedded bus's handles on its fjall store, and what happens when writing fails.
//!
//! A write that fails for want of space (or any other I/O error) must not break the bus for
//! good. fjall poisons a database whose background flush failed, and every later write then
//! fails, even once space is back. So the committer, on a failed write:
//! - refuses publishes (sources see 503 or wait), and says so once at ERROR, then at most
//!   once a minute;
//! - reports the bus down (`BusConnected=False`, reason `StorageFull` when the filesystem is
//!   out of space, else `StorageFailed`), which also fails `/healthz`;
//! - every second, closes the store and opens it again, which replays its journal: every
//!   batch that was answered is there. Once a reopened store takes a write and the
//!   filesystem has room for a memtable flush again, the bus is up, without a restart, with
//!   every settled position kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fjall::compaction::Fifo;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use ofe_core::{BusError, Connection};

/// The in-memory part of a keyspace written to disk at once: also the room a flush needs.
pub(super) const MEMTABLE: u64 = 8 << 20;

/// How often a failed store is reopened.
const RETRY: Duration = Duration::from_secs(1);

/// How often a failure that lasts is said again.
const REMIND: Duration = Duration::from_secs(60);

/// One open store: the database and its keyspaces. Cheap to clone.
#[derive(Clone)]
pub(super) struct Handles {
    pub(super) db: Database,
    /// Sequence → record.
    pub(super) log: Keyspace,
    /// Consumer → settled floor.
    pub(super) cursors: Keyspace,
    /// Join state.
    pub(super) state: Keyspace,
    /// The last sequence.
    pub(super) meta: Keyspace,
}

impl Handles {
    /// Opens (or creates) the store in `dir`, replaying its journal.
    pub(super) fn open(dir: &Path, max_bytes: u64, ttl_secs: u64) -> Result<Self, BusError> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = Database::builder(dir).open().map_err(storage)?;
        let log = db
            .keyspace("log", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE)
                    .compaction_strategy(Arc::new(Fifo::new(max_bytes, Some(ttl_secs))))
            })
            .map_err(storage)?;
        let cursors = db.keyspace("cursors", KeyspaceCreateOptions::default).map_err(storage)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(storage)?;
        let state = db.keyspace("state", KeyspaceCreateOptions::default).map_err(storage)?;
        Ok(Self { db, log, cursors, state, meta })
    }
}

/// The store of a durable bus: its handles (absent while it is being reopened), where it is,
/// and the connection state its failures are reported on.
pub(super) struct DiskStore {
    handles: RwLock<Option<Handles>>,
    pub(super) dir: PathBuf,
    pub(super) max_bytes: u64,
    pub(super) ttl_secs: u64,
    pub(super) connection: Arc<tokio::sync::watch::Sender<Connection>>,
}

impl DiskStore {
    pub(super) fn new(handles: Handles, dir: PathBuf, max_bytes: u64, ttl_secs: u64) -> Self {
        Self {
            handles: RwLock::new(Some(handles)),
            dir,
            max_bytes,
            ttl_secs,
            connection: Arc::new(tokio::sync::watch::channel(Connection::Up).0),
        }
    }

    /// The current handles; an error while the store is being reopened.
    pub(super) fn handles(&self) -> Result<Handles, BusError> {
        let guard = self.handles.read().map_err(|_| BusError::Closed)?;
        guard
            .clone()
            .ok_or_else(|| BusError::unavailable("the embedded bus is reopening its store; retry"))
    }

    /// Closes the store and opens it again. The old handles are dropped first: fjall's
    /// database must be closed before the directory is opened again.
    fn reopen(&self) -> Result<Handles, BusError> {
        let mut guard = self.handles.write().map_err(|_| BusError::Closed)?;
        drop(guard.take());
        let handles = Handles::open(&self.dir, self.max_bytes, self.ttl_secs)?;
        *guard = Some(handles.clone());
        Ok(handles)
    }
}

/// Bytes free to this process on the filesystem holding `dir`, and its size.
fn space(dir: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    let block = stat.f_frsize.max(1);
    Some((stat.f_bavail.saturating_mul(block), stat.f_blocks.saturating_mul(block)))
}

/// Whether the filesystem at `dir` has room to flush a memtable (or a quarter of itself, on
/// a filesystem too small for that): less, and a flush would fail again.
fn has_room(dir: &Path) -> bool {
    space(dir).is_none_or(|(free, total)| free >= MEMTABLE.min(total / 4))
}

/// A failure of the store that lasts: since when, why, and what was said when.
pub(super) struct Trouble {
    since: Instant,
    /// The condition reason: `StorageFull` or `StorageFailed`.
    reason: &'static str,
    message: String,
    retry_at: Instant,
}

impl Trouble {
    /// What publishers are told while the store cannot write.
    pub(super) fn refusal(&self) -> String {
        format!("{}: {}; retry later", self.reason, self.message)
    }
}

/// Whether an `io::Error` in `error`'s chain says the filesystem has no room (`ENOSPC`, or
/// `EDQUOT` over a quota).
fn out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// What the committer knows about the store's health.
#[derive(Default)]
pub(super) struct WriteHealth {
    pub(super) trouble: Option<Trouble>,
    /// When an ERROR was last logged, across recoveries, so a store that fails again and
    /// again is still said at most once a minute.
    last_said: Option<Instant>,
}

impl WriteHealth {
    /// A write failed with `error`: refuse, report, and say so (once, then once a minute).
    pub(super) fn failed(&mut self, store: &DiskStore, error: &(dyn std::error::Error + 'static)) {
        let now = Instant::now();
        let text = error.to_string();
        let (free, total) = space(&store.dir).unwrap_or((u64::MAX, u64::MAX));
        // The filesystem says so (ENOSPC, or a quota), or there is less room than one more
        // memtable needs: a write that failed for another reason on a nearly full disk is
        // most likely the disk.
        let full = out_of_space(error) || free < MEMTABLE.min(total / 4);
        let reason = if full { "StorageFull" } else { "StorageFailed" };
        let message = if full {
            format!(
                "the filesystem of {} is full ({} KiB free of {} KiB); the bus refuses \
                 events until there is room again (it recovers by itself): free space or \
                 grow the volume, or lower spec.embedded.maxBytes/maxAge",
                store.dir.display(),
                free / 1024,
                total / 1024
            )
        } else {
            format!("cannot write the store at {}: {text}", store.dir.display())
        };
        let say = self.last_said.is_none_or(|t| now.duration_since(t) >= REMIND);
        if say {
            match &self.trouble {
                None => tracing::error!(reason, error = %text, "{message}"),
                Some(t) => tracing::error!(
                    reason,
                    error = %text,
                    for_seconds = now.duration_since(t.since).as_secs(),
                    "still failing: {message}"
                ),
            }
            self.last_said = Some(now);
        }
        store.connection.send_replace(Connection::Storage { reason, message: message.clone() });
        let since = self.trouble.as_ref().map_or(now, |t| t.since);
        self.trouble = Some(Trouble { since, reason, message, retry_at: now + RETRY });
    }

    /// Whether it is time to try the store again.
    pub(super) fn due(&self) -> bool {
        self.trouble.as_ref().is_some_and(|t| Instant::now() >= t.retry_at)
    }

    /// Reopens the store when there is room for it to work: the fresh handles, or `None`
    /// (and the next try scheduled) while it still cannot.
    pub(super) fn reopen(&mut self, store: &DiskStore) -> Option<Handles> {
        let trouble = self.trouble.as_mut()?;
        trouble.retry_at = Instant::now() + RETRY;
        if !has_room(&store.dir) {
            return None;
        }
        match store.reopen() {
            Ok(handles) => Some(handles),
            Err(e) => {
                tracing::debug!(error = %ofe_core::Report(&e), "the embedded bus's store does not open yet");
                None
            }
        }
    }

    /// A write went through again: the bus is up.
    pub(super) fn recovered(&mut self, store: &DiskStore) {
        if let Some(t) = self.trouble.take() {
            tracing::info!(
                reason = t.reason,
                after_seconds = t.since.elapsed().as_secs(),
                "the embedded bus writes again"
            );
            store.connection.send_replace(Connection::Up);
        }
    }
}

/// A failure of the store (fjall), kept as the cause.
fn storage(e: impl Into<ofe_core::Cause>) -> BusError {
    BusError::storage("the embedded bus's store").because(e)
}

#[cfg(test)]
mod tests {
    use super::out_of_space;

    #[test]
    fn a_full_filesystem_is_known_by_the_error_kind_anywhere_in_the_chain() {
        let enospc = fjall::Error::Io(std::io::Error::from_raw_os_error(28));
        assert!(out_of_space(&enospc));
        let edquot = std::io::Error::from_raw_os_error(122);
        assert!(out_of_space(&edquot));
        let denied = fjall::Error::Io(std::io::Error::from_raw_os_error(13));
        assert!(!out_of_space(&denied));
    }
}
