//! The embedded bus: a durable log on local disk, for one process.
//!
//! Storage is [fjall], an LSM-tree store. Chosen because it keeps the journal-and-batch model
//! this bus needs (one atomic batch, one `fdatasync`, for many publishes and cursor updates),
//! recovers by replaying its journal rather than walking the whole file, and drops whole tables
//! for size and age retention (FIFO compaction) instead of deleting events one by one.
//!
//! Layout: keyspace `log` maps a big-endian `u64` sequence to a record (subject, duplicate key,
//! publish time, the event in binary-mode encoding); keyspace `cursors` maps a consumer name to the highest
//! sequence below which it has settled everything; keyspace `meta` keeps the last sequence, so
//! numbering continues after retention has emptied the log.
//!
//! Writes go through one committer thread. It takes every publish waiting in its queue, writes
//! them in one batch with `SyncData` durability, and only then answers the publishers: this is
//! group commit, so many concurrent publishers share one fsync. Consumer cursors ride along in
//! the same batches; a cursor is never ahead of an unacknowledged event, so a crash can only
//! cause redelivery (duplicates), never loss.
//!
//! A store that cannot write (a full disk) refuses publishes, reports the bus down, and
//! reopens itself until it works again: see [`store`].
//!
//! The same consumers also run over a log kept in memory ([`EmbeddedBus::in_memory`], the
//! `memory` EventBus): no journal, no committer thread, and the events kept as they were
//! published, shared with every consumer instead of encoded and decoded.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use cloudevents::Event;
use fjall::{Keyspace, PersistMode};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Notify, oneshot, watch};

use ofe_core::state::{StateError, StateStore, Versioned};
use ofe_core::{
    Acker, BusError, Delivery, EventBus, Published, StartPosition, SubscribeOptions, Subscription,
};
use ofe_core::{Subject, event};

/// Settings of the embedded bus.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Directory holding the store. Created if missing.
    pub dir: PathBuf,
    /// Retention by size: whole old tables are dropped once the log is larger. Live
    /// consumers' backlog never is: at 80% of this, sources' publishes are refused until they
    /// catch up. Default 1 GiB.
    pub max_bytes: u64,
    /// Retention by age. Default 7 days.
    pub max_age: Duration,
    /// Events with a `source` and `id` already stored within this window are not stored
    /// again. Default 2 minutes, as JetStream's duplicate window.
    pub dedup_window: Duration,
}

impl EmbeddedConfig {
    /// Defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
            dedup_window: Duration::from_secs(120),
        }
    }
}

/// Settings of the in-memory bus.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// Retention by size (events count their data plus 256 bytes): the oldest are dropped
    /// past it. Default 64 MiB.
    pub max_bytes: u64,
    /// Retention by age. Default 1 hour.
    pub max_age: Duration,
    /// As [`EmbeddedConfig::dedup_window`]. Default 2 minutes.
    pub dedup_window: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(3600),
            dedup_window: Duration::from_secs(120),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> BusError {
    BusError::Storage(e.to_string())
}

/// How many writes one batch takes at most.
const MAX_BATCH: usize = 1024;
/// How often dirty consumer cursors are written when nothing else is.
const CURSOR_FLUSH: Duration = Duration::from_millis(100);
/// How many records one scan under the consumer lock examines before yielding.
const SCAN_LIMIT: usize = 1024;

enum WriteOp {
    Append {
        subject: String,
        dedup: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Published, BusError>>,
    },
    /// Create a consumer's cursor durably before it is used.
    Cursor { name: String, floor: u64, reply: oneshot::Sender<Result<(), BusError>> },
    /// Set (or, with `None`, remove) a state value if it is at revision `expected`.
    State {
        key: String,
        value: Option<Vec<u8>>,
        /// `None`: any revision (removal), `Some(0)`: absent.
        expected: Option<u64>,
        reply: oneshot::Sender<Result<u64, StateError>>,
    },
}

/// Answers every write of `ops` as unavailable, saying `why`, writing nothing.
fn refuse(ops: Vec<WriteOp>, why: &str) {
    let error = || BusError::Unavailable(why.to_string());
    for op in ops {
        match op {
            WriteOp::Append { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            WriteOp::Cursor { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            WriteOp::State { reply, .. } => {
                let _ = reply.send(Err(StateError::Bus(error())));
            }
        }
    }
}

type Groups = Arc<Mutex<HashMap<String, Arc<Group>>>>;

/// A set of subjects. Every publish looks its subject up in each consumer group's set, and
/// in the subject index, so it hashes with foldhash rather than SipHash; subjects come from
/// manifests, not from events, so nothing an event carries can aim at its collisions.
type SubjectSet = HashSet<String, foldhash::fast::RandomState>;

/// How many recent sequences the index keeps per subject.
const INDEX_DEPTH: usize = 256;

/// The most records [`EmbeddedBus::lag`] reads from the log for a consumer behind the index.
const LAG_SCAN_LIMIT: usize = 1 << 20;

/// Marks [`Sizes`] keeps; a consumer behind the oldest counts the whole log.
const SIZE_MARKS: usize = 1 << 16;

/// The durable log's bytes after a sequence, for backpressure: a running total of what was
/// appended, with a mark of the total before a record every 1/64 of the limit, so a backlog
/// is over-counted by at most that much, never under-counted.
struct Sizes {
    /// Bytes appended since the bus opened, plus what the log held on disk then.
    total: u64,
    /// `(sequence, total before it)`, ascending.
    marks: VecDeque<(u64, u64)>,
    /// Bytes between marks.
    mark_every: u64,
    /// Bytes appended since the last mark.
    since_mark: u64,
    /// A floor every live consumer had settled when last asked. Floors only move up, so bytes
    /// after it are never fewer than the bytes still wanted: computing the floors again (a
    /// lock per consumer) is needed only when this bound reaches the limit.
    settled: u64,
}

impl Sizes {
    /// Sizes of a log holding `bytes` on disk from `first` to `last`, for a backlog limit of
    /// `limit` bytes.
    fn recovered(first: u64, last: u64, bytes: u64, limit: u64) -> Self {
        let marks = VecDeque::from([(first, 0), (last + 1, bytes)]);
        let mark_every = (limit / 64).max(1);
        Self { total: bytes, marks, mark_every, since_mark: mark_every, settled: 0 }
    }

    fn add(&mut self, seq: u64, bytes: u64) {
        if self.since_mark >= self.mark_every {
            self.marks.push_back((seq, self.total));
            if self.marks.len() > SIZE_MARKS {
                self.marks.pop_front();
            }
            self.since_mark = 0;
        }
        self.since_mark += bytes;
        self.total += bytes;
    }

    /// Bytes of the records after `floor`: at most one mark's records too many, never too few.
    fn after(&self, floor: u64) -> u64 {
        let i = self.marks.partition_point(|(seq, _)| *seq <= floor + 1);
        let before = i.checked_sub(1).and_then(|i| self.marks.get(i)).map_or(0, |(_, b)| *b);
        self.total - before
    }
}

/// The recent sequences of each subject, so that a consumer goes straight to its next event
/// instead of reading past every other consumer's (with a thousand Triggers, each subscriber
/// queue would otherwise read the whole log). Kept in memory: records written before this
/// process opened the store are not in it, and a consumer behind that point, or behind what
/// the index still holds for one of its subjects, reads the log as before.
#[derive(Default)]
struct SubjectIndex {
    /// Records up to here predate the index.
    floor: u64,
    /// Per subject: its recent sequences, ascending, and the highest one dropped from them.
    recent: HashMap<String, (std::collections::VecDeque<u64>, u64), foldhash::fast::RandomState>,
}

impl SubjectIndex {
    fn add(&mut self, subject: &str, seq: u64) {
        if !self.recent.contains_key(subject) {
            self.recent.insert(subject.to_string(), Default::default());
        }
        if let Some((recent, dropped)) = self.recent.get_mut(subject) {
            recent.push_back(seq);
            if recent.len() > INDEX_DEPTH
                && let Some(old) = recent.pop_front()
            {
                *dropped = old;
            }
        }
    }

    /// The first sequence after `after` of any of `subjects`: `Some(None)` when there is
    /// none, `None` when the index cannot tell (read the log instead).
    fn next(&self, subjects: &SubjectSet, after: u64) -> Option<Option<u64>> {
        if after < self.floor {
            return None;
        }
        let mut first: Option<u64> = None;
        for subject in subjects {
            let Some((recent, dropped)) = self.recent.get(subject) else { continue };
            if *dropped > after {
                return None;
            }
            let i = recent.partition_point(|&seq| seq <= after);
            if let Some(&seq) = recent.get(i) {
                first = Some(first.map_or(seq, |f| f.min(seq)));
            }
        }
        Some(first)
    }
}

mod store;
use store::{DiskStore, Handles};

/// Where the bus keeps its log.
enum Store {
    /// On disk, written by the committer thread.
    Disk(Arc<DiskStore>),
    /// In memory only (`spec.memory`): no journal, no fsync, and nothing survives the process.
    Memory(Mutex<MemoryLog>),
}

/// A stored record, as a consumer finds it.
enum Raw {
    Disk(fjall::Slice),
    Memory(Arc<MemoryRecord>),
}

/// An event kept by the in-memory log: already decoded, and shared with every consumer.
struct MemoryRecord {
    subject: Subject,
    subject_text: String,
    published_at: DateTime<Utc>,
    event: Arc<Event>,
    size: u64,
}

/// Events of the in-memory log by sequence.
type Records = BTreeMap<u64, Arc<MemoryRecord>>;

/// Frees records taken out of the in-memory log, off the async workers when there are many.
fn free(records: Records) {
    if records.len() < 64 {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(records))),
        Err(_) => drop(records),
    }
}

/// The in-memory log: events by sequence, dropped oldest first past its size or age.
struct MemoryLog {
    records: Records,
    bytes: u64,
    last: u64,
    max_bytes: u64,
    max_age: chrono::Duration,
    dedup: Dedup,
    /// The state store: key → (revision, value).
    state: HashMap<String, (u64, Vec<u8>)>,
    last_revision: u64,
}

impl MemoryLog {
    /// Sets (or, with `None`, removes) a state value if it is at revision `expected`, as the
    /// committer does for the durable bus.
    fn set_state(
        &mut self,
        key: &str,
        value: Option<Vec<u8>>,
        expected: Option<u64>,
    ) -> Result<u64, StateError> {
        let current = self.state.get(key).map_or(0, |(revision, _)| *revision);
        let revision = next_revision(current, expected, value.is_none(), &mut self.last_revision)
            .ok_or(StateError::Conflict)?;
        match value {
            Some(value) => self.state.insert(key.to_string(), (revision, value)),
            None => self.state.remove(key),
        };
        Ok(revision)
    }

    /// Takes out the oldest records for as long as `take(sequence, record, bytes left)` says
    /// so, with one `split_off`. The caller frees them once it has let go of the log: freeing
    /// thousands of events under the lock would stall every publisher and consumer.
    fn take_oldest(&mut self, mut take: impl FnMut(u64, &MemoryRecord, u64) -> bool) -> Records {
        let (mut bytes, mut cut) = (self.bytes, None);
        for (&seq, record) in &self.records {
            if !take(seq, record, bytes) {
                break;
            }
            bytes = bytes.saturating_sub(record.size);
            cut = Some(seq);
        }
        let Some(last) = cut else { return Records::new() };
        let kept = self.records.split_off(&(last + 1));
        self.bytes = bytes;
        std::mem::replace(&mut self.records, kept)
    }

    /// Takes out the records older than the log's age.
    fn expire(&mut self, now: DateTime<Utc>) -> Records {
        let max_age = self.max_age;
        self.take_oldest(|_, record, _| now - record.published_at > max_age)
    }

    /// Makes room for `size` more bytes by taking out the oldest records that every live
    /// consumer has settled (all of them up to `settled`; any, with no live consumer), down to
    /// fifteen sixteenths of the size, so that a full bus does this once per sixteenth rather
    /// than at every publish. When what is left is unsettled and there is still no room, the
    /// result is a refusal: backpressure reaches the source, and no event a consumer still
    /// wants is dropped.
    fn make_room(&mut self, size: u64, settled: Option<u64>) -> (Records, Result<(), BusError>) {
        let low_water = self.max_bytes - self.max_bytes / 16;
        let taken = self.take_oldest(|seq, _, bytes| {
            bytes + size > low_water && settled.is_none_or(|floor| seq <= floor)
        });
        let room = if self.bytes + size > self.max_bytes && !self.records.is_empty() {
            Err(BusError::Unavailable(format!(
                "the in-memory bus is full ({} bytes of events its consumers have not settled \
                 yet); retry later, or raise spec.memory.maxBytes",
                self.bytes
            )))
        } else {
            Ok(())
        };
        (taken, room)
    }
}

/// The embedded, durable, single-process bus. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    writes: Mutex<Option<mpsc::SyncSender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Last committed sequence; also wakes waiting subscriptions on close.
    head: watch::Sender<u64>,
    closed: std::sync::atomic::AtomicBool,
    groups: Groups,
    index: Arc<Mutex<SubjectIndex>>,
    /// The durable log's sizes, and the backlog at which sources are refused; `None` in
    /// memory, where [`MemoryLog::make_room`] decides.
    backlog: Option<(Arc<Mutex<Sizes>>, u64)>,
}

/// The share of `maxBytes` that live consumers' backlog may fill before source publishes are
/// refused: the rest is headroom for retention's own accounting (table overhead), so that
/// retention by size never drops an event a consumer still wants.
const BACKLOG_SHARE: (u64, u64) = (4, 5);

impl EmbeddedBus {
    /// Opens (or creates) the store and recovers its state. A store left by a crash is
    /// recovered from its journal; a torn last batch is dropped, and its publishers were never
    /// answered.
    pub fn open(config: EmbeddedConfig) -> Result<Self, BusError> {
        let ttl = config.max_age.as_secs().max(1);
        let handles = Handles::open(&config.dir, config.max_bytes, ttl)?;
        let Handles { log, meta, .. } = handles.clone();
        let from_meta = meta.get("last_seq").map_err(storage)?.and_then(|v| read_u64(&v));
        let from_log = match log.last_key_value() {
            Some(kv) => kv.key().map_err(storage).map(|k| read_u64(&k))?,
            None => None,
        };
        let last = from_meta.unwrap_or(0).max(from_log.unwrap_or(0));
        let dedup = Dedup::recover(&log, config.dedup_window)?;

        let (head, _) = watch::channel(last);
        let groups: Groups = Arc::default();
        let index = Arc::new(Mutex::new(SubjectIndex { floor: last, recent: HashMap::default() }));
        let first = match log.first_key_value() {
            Some(kv) => kv.key().map_err(storage).map(|k| read_u64(&k))?.unwrap_or(1),
            None => last + 1,
        };
        let limit = config.max_bytes / BACKLOG_SHARE.1 * BACKLOG_SHARE.0;
        let sizes = Sizes::recovered(first, last, log.disk_space(), limit);
        let sizes = Arc::new(Mutex::new(sizes));
        let (tx, rx) = mpsc::sync_channel(4 * MAX_BATCH);
        let disk = Arc::new(DiskStore::new(handles, config.dir.clone(), config.max_bytes, ttl));
        let committer = Committer {
            store: disk.clone(),
            health: store::WriteHealth::default(),
            dedup_window: config.dedup_window,
            head: head.clone(),
            groups: groups.clone(),
            index: index.clone(),
            sizes: sizes.clone(),
            last,
            last_revision: 0,
            dedup,
        };
        let writer = std::thread::Builder::new()
            .name("ofe-bus-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(storage)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store: Store::Disk(disk),
                writes: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                head,
                closed: false.into(),
                groups,
                index,
                backlog: Some((sizes, limit)),
            }),
        })
    }

    /// A bus that keeps its events in memory only, like Knative's in-memory channel: the same
    /// consumers, acknowledgements, redelivery and duplicate window as the durable bus, without
    /// a journal or fsync. Events and consumer positions are lost when the process stops, so
    /// it is for development, tests and data that may be lost (QoS 0 telemetry, say).
    pub fn in_memory(config: MemoryConfig) -> Self {
        let log = MemoryLog {
            records: BTreeMap::new(),
            bytes: 0,
            last: 0,
            max_bytes: config.max_bytes,
            max_age: chrono::Duration::from_std(config.max_age).unwrap_or(chrono::Duration::MAX),
            dedup: Dedup::new(config.dedup_window),
            state: HashMap::new(),
            last_revision: 0,
        };
        Self {
            inner: Arc::new(Inner {
                store: Store::Memory(Mutex::new(log)),
                writes: Mutex::new(None),
                writer: Mutex::new(None),
                head: watch::channel(0).0,
                closed: false.into(),
                groups: Arc::default(),
                index: Arc::default(),
                backlog: None,
            }),
        }
    }

    /// Refuses a source's publish while live consumers have not settled more than the
    /// backlog limit (80% of `maxBytes`): retention by size would otherwise drop events they
    /// still want. Hops inside ofe (queues, topics) are never refused, since they are how the
    /// backlog drains; with no live consumer, retention keeps the newest, as a ring.
    fn check_backlog(&self, subject: &Subject) -> Result<(), BusError> {
        let Some((sizes, limit)) = &self.inner.backlog else { return Ok(()) };
        if !matches!(subject, Subject::Event { .. }) {
            return Ok(());
        }
        let bound = {
            let sizes = sizes.lock().map_err(|_| BusError::Closed)?;
            sizes.after(sizes.settled)
        };
        if bound <= *limit {
            return Ok(());
        }
        // The floors take the consumers' locks: not under the sizes' lock.
        let head = *self.inner.head.borrow();
        let Some(floor) = live_floor(&self.inner.groups, &self.inner.index, head) else {
            return Ok(());
        };
        let mut sizes = sizes.lock().map_err(|_| BusError::Closed)?;
        sizes.settled = sizes.settled.max(floor);
        let wanted = sizes.after(sizes.settled);
        if wanted <= *limit {
            return Ok(());
        }
        Err(BusError::Unavailable(format!(
            "the embedded bus holds {wanted} bytes of events its consumers have not settled \
             yet, the most it takes before retention could drop them; retry later, or raise \
             spec.embedded.maxBytes"
        )))
    }

    /// Appends to the in-memory log. The sequence, the index and the head move together under
    /// the log's lock, so that no consumer sees a head whose records the index lacks. What
    /// expiry and making room take out is freed after the lock is let go.
    fn append_memory(
        &self,
        memory: &Mutex<MemoryLog>,
        subject: &Subject,
        event: Arc<Event>,
    ) -> Result<Published, BusError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        let subject_text = subject.to_string();
        let dedup = Dedup::hash(&event::dedup_key(&subject_text, &event));
        let published_at = Utc::now();
        let size = 256 + event::data_len(&event) as u64;
        // Declared before the lock, so that an early return frees them after letting it go.
        let expired;
        let (mut taken, mut room) = (Records::new(), Ok(()));
        let seq = {
            let mut log = memory.lock().map_err(|_| BusError::Closed)?;
            expired = log.expire(published_at);
            if log.bytes + size > log.max_bytes {
                // The consumers' floors take their own locks, which a consumer holds while it
                // reads the log: never take them under the log's lock. A floor read before
                // re-locking is only lower than now, so it drops nothing still wanted.
                drop(log);
                let head = *self.inner.head.borrow();
                let settled = live_floor(&self.inner.groups, &self.inner.index, head);
                log = memory.lock().map_err(|_| BusError::Closed)?;
                (taken, room) = log.make_room(size, settled);
            }
            // Checked after any re-locking, so that a twin published meanwhile is seen.
            let now = Instant::now();
            log.dedup.expire(now);
            if let Some(&earlier) = log.dedup.keys.get(&dedup) {
                return Ok(Published { sequence: earlier, duplicate: true });
            }
            // Only new events from sources are refused. The hops inside (a router filling a
            // subscriber's queue, a subscriber publishing to a topic) are how consumers settle
            // what fills the bus, so refusing them could stall it for good; they are bounded
            // by those consumers' in-flight limits.
            if matches!(subject, Subject::Event { .. }) {
                room?;
            }
            log.last += 1;
            let seq = log.last;
            let record = MemoryRecord {
                subject: subject.clone(),
                subject_text: subject_text.clone(),
                published_at,
                event,
                size,
            };
            log.records.insert(seq, Arc::new(record));
            log.bytes += size;
            log.dedup.keys.insert(dedup, seq);
            log.dedup.order.push_back((now, dedup));
            if let Ok(mut index) = self.inner.index.lock() {
                index.add(&subject_text, seq);
            }
            self.inner.head.send_replace(seq);
            seq
        };
        wake(&self.inner.groups, &[(subject_text, seq)]);
        free(taken);
        free(expired);
        Ok(Published { sequence: seq, duplicate: false })
    }

    /// How many records of `subjects` are in `(after, head]`. The subject index answers
    /// exactly for what it holds; below it (a consumer far behind), the log is read, at most
    /// [`LAG_SCAN_LIMIT`] records, and what is left unread counts as all wanted, so a huge
    /// backlog is over-counted rather than missed.
    fn waiting(&self, subjects: &SubjectSet, after: u64, head: u64) -> Result<u64, BusError> {
        if after >= head {
            return Ok(0);
        }
        // Up to `known`, the index cannot tell; above it, it holds every record of `subjects`.
        let (known, indexed) = {
            let index = self.inner.index.lock().map_err(|_| BusError::Closed)?;
            let mut known = if after < index.floor { index.floor } else { after };
            for subject in subjects {
                if let Some((_, dropped)) = index.recent.get(subject) {
                    known = known.max(*dropped);
                }
            }
            let known = known.min(head);
            let indexed: usize = subjects
                .iter()
                .filter_map(|s| index.recent.get(s))
                .map(|(recent, _)| recent.len() - recent.partition_point(|&seq| seq <= known))
                .sum();
            (known, indexed as u64)
        };
        if known <= after {
            return Ok(indexed);
        }
        let (mut read, mut found, mut examined) = (after, 0u64, 0usize);
        let mut count = |seq: u64, subject: &str| {
            (read, examined) = (seq, examined + 1);
            if subjects.contains(subject) {
                found += 1;
            }
        };
        match &self.inner.store {
            Store::Disk(disk) => {
                let log = disk.handles()?.log;
                let range = log.range((after + 1).to_be_bytes()..=known.to_be_bytes());
                for kv in range.take(LAG_SCAN_LIMIT) {
                    let (key, value) = kv.into_inner().map_err(storage)?;
                    if let (Some(seq), Some(record)) = (read_u64(&key), decode_record(&value)) {
                        count(seq, record.subject);
                    }
                }
            }
            Store::Memory(memory) => {
                let log = memory.lock().map_err(|_| BusError::Closed)?;
                for (&seq, record) in log.records.range(after + 1..=known).take(LAG_SCAN_LIMIT) {
                    count(seq, &record.subject_text);
                }
            }
        }
        // A scan that stopped short of the limit reached `known` (what retention took, nobody
        // can read any more); one that hit it counts the rest as wanted.
        let unread = if examined >= LAG_SCAN_LIMIT { known - read } else { 0 };
        Ok(found + unread + indexed)
    }

    /// A new group for `options`, starting at its stored cursor, or where `options.start`
    /// says when it has none.
    async fn new_group(
        &self,
        options: &SubscribeOptions,
        filter: SubjectSet,
    ) -> Result<Arc<Group>, BusError> {
        let stored = match &self.inner.store {
            Store::Disk(disk) => disk.handles()?.cursors.get(&options.consumer).map_err(storage)?,
            Store::Memory(_) => None,
        };
        let floor = match stored.and_then(|v| read_u64(&v)) {
            Some(floor) => floor,
            None => {
                let floor = match options.start {
                    StartPosition::New => self.last_sequence(),
                    StartPosition::All => 0,
                };
                // Persist the starting point first, so a restart resumes here rather
                // than at a later "new".
                self.save_cursor(&options.consumer, floor).await?;
                floor
            }
        };
        let read_pos = floor.max(self.first_sequence()?.saturating_sub(1));
        let group = Arc::new(Group {
            filter,
            max_in_flight: options.max_in_flight,
            state: Mutex::new(GroupState {
                read_pos,
                in_flight: BTreeMap::new(),
                redeliver: BTreeMap::new(),
                persisted: floor,
            }),
            changed: Notify::new(),
        });
        let mut groups = self.inner.groups.lock().map_err(|_| BusError::Closed)?;
        Ok(groups.entry(options.consumer.clone()).or_insert(group).clone())
    }

    /// Writes a consumer's cursor durably (in memory, there is nothing to write).
    async fn save_cursor(&self, name: &str, floor: u64) -> Result<(), BusError> {
        if let Store::Memory(_) = self.inner.store {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.submit(WriteOp::Cursor { name: name.to_string(), floor, reply }).await?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    fn sender(&self) -> Result<mpsc::SyncSender<WriteOp>, BusError> {
        let guard = self.inner.writes.lock().map_err(|_| BusError::Closed)?;
        guard.clone().ok_or(BusError::Closed)
    }

    /// Queues a write without blocking the async runtime when the queue is full.
    async fn submit(&self, op: WriteOp) -> Result<(), BusError> {
        let tx = self.sender()?;
        match tx.try_send(op) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(op)) => tokio::task::spawn_blocking(move || tx.send(op))
                .await
                .map_err(storage)?
                .map_err(|_| BusError::Closed),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(BusError::Closed),
        }
    }

    /// The sequence of the last durable event.
    pub fn last_sequence(&self) -> u64 {
        *self.inner.head.borrow()
    }

    fn first_sequence(&self) -> Result<u64, BusError> {
        let first = match &self.inner.store {
            Store::Disk(disk) => match disk.handles()?.log.first_key_value() {
                Some(kv) => Some(kv.key().map_err(storage).map(|k| read_u64(&k))?.unwrap_or(1)),
                None => None,
            },
            Store::Memory(memory) => {
                memory.lock().map_err(|_| BusError::Closed)?.records.keys().next().copied()
            }
        };
        Ok(first.unwrap_or_else(|| self.last_sequence() + 1))
    }
}

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

#[async_trait]
impl EventBus for EmbeddedBus {
    fn backend(&self) -> &'static str {
        match self.inner.store {
            Store::Disk(_) => "embedded",
            Store::Memory(_) => "memory",
        }
    }

    async fn publish(&self, subject: &Subject, event: &Event) -> Result<Published, BusError> {
        if let Store::Memory(memory) = &self.inner.store {
            return self.append_memory(memory, subject, Arc::new(event.clone()));
        }
        self.check_backlog(subject)?;
        let payload = event::encode(event)?;
        let (reply, answer) = oneshot::channel();
        let subject = subject.to_string();
        let dedup = event::dedup_key(&subject, event);
        let op = WriteOp::Append { subject, dedup, payload, reply };
        self.submit(op).await?;
        answer.await.map_err(|_| BusError::Closed)?
    }

    async fn publish_shared(
        &self,
        subject: &Subject,
        event: Arc<Event>,
    ) -> Result<Published, BusError> {
        match &self.inner.store {
            Store::Memory(memory) => self.append_memory(memory, subject, event),
            Store::Disk(_) => self.publish(subject, &event).await,
        }
    }

    async fn state_store(&self) -> Result<Option<Arc<dyn StateStore>>, BusError> {
        Ok(Some(Arc::new(self.clone())))
    }

    fn connection(&self) -> watch::Receiver<ofe_core::Connection> {
        match &self.inner.store {
            Store::Disk(disk) => disk.connection.subscribe(),
            Store::Memory(_) => watch::channel(ofe_core::Connection::Up).1,
        }
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        options.check()?;
        let filter: SubjectSet = options.subjects.iter().map(ToString::to_string).collect();
        let existing = {
            let groups = self.inner.groups.lock().map_err(|_| BusError::Closed)?;
            groups.get(&options.consumer).cloned()
        };
        let group = match existing {
            Some(group) if group.filter == filter => group,
            // Nobody reads the old group (only the map and `existing` hold it): the consumer
            // now reads other subjects, from where it was. This is how a router whose
            // Triggers changed carries on.
            Some(group) if Arc::strong_count(&group) <= 2 => {
                let floor = group.state.lock().map_err(|_| BusError::Closed)?.floor();
                self.save_cursor(&options.consumer, floor).await?;
                self.inner.groups.lock().map_err(|_| BusError::Closed)?.remove(&options.consumer);
                self.new_group(&options, filter).await?
            }
            Some(_) => return Err(BusError::ConsumerConflict { consumer: options.consumer }),
            None => self.new_group(&options, filter).await?,
        };
        Ok(Box::new(EmbeddedSubscription {
            bus: self.clone(),
            group,
            head: self.inner.head.subscribe(),
        }))
    }

    async fn lag(&self, consumer: &str) -> Result<Option<u64>, BusError> {
        let group = self.inner.groups.lock().map_err(|_| BusError::Closed)?.get(consumer).cloned();
        let Some(group) = group else { return Ok(None) };
        let (read_pos, outstanding) = {
            let state = group.state.lock().map_err(|_| BusError::Closed)?;
            (state.read_pos, state.outstanding() as u64)
        };
        let head = *self.inner.head.borrow();
        // Counting may read the log, which is blocking work.
        let bus = self.clone();
        let waiting =
            tokio::task::spawn_blocking(move || bus.waiting(&group.filter, read_pos, head))
                .await
                .map_err(storage)??;
        Ok(Some(outstanding + waiting))
    }

    async fn close(&self) -> Result<(), BusError> {
        self.inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.head.send_modify(|_| {});
        let groups: Vec<Arc<Group>> = match self.inner.groups.lock() {
            Ok(g) => g.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        for group in groups {
            group.changed.notify_waiters();
        }
        // Dropping the sender lets the committer drain its queue, flush cursors and stop.
        drop(self.inner.writes.lock().map_err(|_| BusError::Closed)?.take());
        let writer = self.inner.writer.lock().map_err(|_| BusError::Closed)?.take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(storage)?
                .map_err(|_| BusError::Storage("commit thread panicked".into()))?;
        }
        match &self.inner.store {
            Store::Disk(disk) => disk.handles()?.db.persist(PersistMode::SyncAll).map_err(storage),
            Store::Memory(_) => Ok(()),
        }
    }
}

/// A record in the log, decoded lazily.
struct Record<'a> {
    subject: &'a str,
    dedup: &'a str,
    published_ms: i64,
    payload: &'a [u8],
}

/// Version 2: events in binary-mode encoding (version 1 held structured JSON).
const RECORD_VERSION: u8 = 2;

fn encode_record(subject: &str, dedup: &str, published_ms: i64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + subject.len() + dedup.len() + 8 + payload.len());
    out.push(RECORD_VERSION);
    for part in [subject, dedup] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
    }
    out.extend_from_slice(&published_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode_record(bytes: &[u8]) -> Option<Record<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != RECORD_VERSION {
        return None;
    }
    let (subject, rest) = take_str(rest)?;
    let (dedup, rest) = take_str(rest)?;
    let (time, payload) = rest.split_at_checked(8)?;
    let published_ms = i64::from_be_bytes(time.try_into().ok()?);
    Some(Record { subject, dedup, published_ms, payload })
}

fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = bytes.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
    let (text, rest) = rest.split_at_checked(len)?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

/// The revision a state write gets: `None` when the key is not at `expected` (a conflict), 0
/// for a removal, else one above any handed out before, so that a removed and re-created key
/// never reuses a revision. Both the committer and the in-memory log follow it.
fn next_revision(
    current: u64,
    expected: Option<u64>,
    removing: bool,
    last_revision: &mut u64,
) -> Option<u64> {
    if expected.is_some_and(|e| e != current) {
        return None;
    }
    if removing {
        return Some(0);
    }
    *last_revision = current.max(*last_revision) + 1;
    Some(*last_revision)
}

/// The revision a state record starts with.
fn revision_of(record: &[u8]) -> Option<u64> {
    read_u64(record.get(..8)?)
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Recently stored `(source, id)` keys, to drop republished events.
struct Dedup {
    window: Duration,
    /// Per key's hash, its sequence. A window holds millions of keys at full speed (two
    /// minutes at 20k/s), so the map keeps 128-bit hashes instead of the texts: no allocation
    /// per event, a fraction of the memory, and a collision (a new event taken for a
    /// duplicate) about as likely as never.
    keys: HashMap<u128, u64, std::hash::BuildHasherDefault<Low64>>,
    order: VecDeque<(Instant, u128)>,
}

/// Hashes a `u128` that is already a hash by taking its low half.
#[derive(Default)]
struct Low64(u64);

impl std::hash::Hasher for Low64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; fold anything else in rather than ignore it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        // Truncation is the point: the low half of a good hash is a good hash.
        #[allow(clippy::cast_possible_truncation)]
        let low = n as u64;
        self.0 = low;
    }
}

impl Dedup {
    fn new(window: Duration) -> Self {
        Self { window, keys: HashMap::default(), order: VecDeque::new() }
    }

    /// The hash a duplicate key is kept as.
    fn hash(key: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(key.as_bytes())
    }

    /// Rebuilds the window from the newest records, so a restart does not forget it.
    fn recover(log: &Keyspace, window: Duration) -> Result<Self, BusError> {
        let mut dedup = Self::new(window);
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let horizon = now_ms().saturating_sub(window_ms);
        let now = Instant::now();
        let mut recent = Vec::new();
        for kv in log.iter().rev() {
            let (key, value) = kv.into_inner().map_err(storage)?;
            let Some(record) = decode_record(&value) else { continue };
            if record.published_ms < horizon {
                break;
            }
            let age =
                Duration::from_millis(u64::try_from(now_ms() - record.published_ms).unwrap_or(0));
            let at = now.checked_sub(age).unwrap_or(now);
            recent.push((at, Self::hash(record.dedup), read_u64(&key).unwrap_or(0)));
        }
        for (at, key, seq) in recent.into_iter().rev() {
            dedup.keys.insert(key, seq);
            dedup.order.push_back((at, key));
        }
        Ok(dedup)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

/// The lowest floor of the consumers someone is using (a subscription or a delivery holds
/// the group), below which every one of them has settled everything; `None` when none is in
/// use. A consumer counts as settled up to its next unread record of its own subjects: one
/// whose subjects are quiet is woken for nothing and so reads nothing, and must not hold
/// back what the others have long settled.
fn live_floor(groups: &Groups, index: &Mutex<SubjectIndex>, head: u64) -> Option<u64> {
    let groups = groups.lock().ok()?;
    groups
        .values()
        .filter(|group| Arc::strong_count(group) > 1)
        .filter_map(|group| {
            let state = group.state.lock().ok()?;
            let index = index.lock().ok()?;
            Some(settled_up_to(&state, &group.filter, &index, head))
        })
        .min()
}

/// What a consumer has settled, counting the records of other subjects it has not read yet.
fn settled_up_to(state: &GroupState, filter: &SubjectSet, index: &SubjectIndex, head: u64) -> u64 {
    let next_unread = match index.next(filter, state.read_pos) {
        Some(Some(seq)) => seq.min(head + 1),
        Some(None) => head + 1,
        // The index cannot tell: only what it has read counts.
        None => return state.floor(),
    };
    let lowest_open = [state.in_flight.keys().next(), state.redeliver.keys().next()]
        .into_iter()
        .flatten()
        .copied()
        .min()
        .unwrap_or(u64::MAX);
    lowest_open.min(next_unread).max(1) - 1
}

/// Wakes the consumers that read the subjects of new records, and only those.
fn wake(groups: &Groups, appended: &[(String, u64)]) {
    if appended.is_empty() {
        return;
    }
    // Notifying takes no lock of the group's, so it is done under the map's lock, without
    // copying a thousand handles per commit.
    let Ok(groups) = groups.lock() else { return };
    for group in groups.values() {
        if appended.iter().any(|(subject, _)| group.filter.contains(subject)) {
            group.changed.notify_waiters();
        }
    }
}

struct Committer {
    store: Arc<DiskStore>,
    /// Whether the store writes, and what was said about it.
    health: store::WriteHealth,
    /// The duplicate window, to rebuild it from a reopened store.
    dedup_window: Duration,
    head: watch::Sender<u64>,
    groups: Groups,
    index: Arc<Mutex<SubjectIndex>>,
    sizes: Arc<Mutex<Sizes>>,
    last: u64,
    /// The highest state revision handed out, so that a removed and re-created key never
    /// reuses a revision.
    last_revision: u64,
    dedup: Dedup,
}

enum Reply {
    Published(oneshot::Sender<Result<Published, BusError>>, Published),
    Cursor(oneshot::Sender<Result<(), BusError>>),
    State(oneshot::Sender<Result<u64, StateError>>, Result<u64, ()>),
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
        loop {
            let first = match rx.recv_timeout(CURSOR_FLUSH) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut ops: Vec<WriteOp> = first.into_iter().collect();
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if self.health.due() {
                self.recover();
            }
            self.commit(ops);
        }
        self.commit(Vec::new());
    }

    /// After a failed write: reopens the store (its journal holds every batch that was
    /// answered), catches up with what it holds, and proves it writes again.
    fn recover(&mut self) {
        let Some(handles) = self.health.reopen(&self.store) else { return };
        if let Err(e) = self.catch_up(&handles) {
            self.health.failed(&self.store, &e);
            return;
        }
        let mut probe = handles.db.batch();
        probe.insert(&handles.meta, "last_seq", self.last.to_be_bytes());
        match probe.durability(Some(PersistMode::SyncData)).commit() {
            Ok(()) => self.health.recovered(&self.store),
            Err(e) => self.health.failed(&self.store, &e),
        }
    }

    /// Takes in a reopened store. A batch that failed after reaching the journal is in it,
    /// although its publishers were told it failed: its records are indexed and delivered,
    /// and the duplicate window, rebuilt from the log, drops the publishers' retries.
    fn catch_up(&mut self, handles: &Handles) -> Result<(), BusError> {
        let from_meta = handles.meta.get("last_seq").map_err(storage)?.and_then(|v| read_u64(&v));
        let from_log = match handles.log.last_key_value() {
            Some(kv) => kv.key().map_err(storage).map(|k| read_u64(&k))?,
            None => None,
        };
        let last = from_meta.unwrap_or(0).max(from_log.unwrap_or(0));
        if last > self.last {
            let mut appended = Vec::new();
            let range = handles.log.range((self.last + 1).to_be_bytes()..=last.to_be_bytes());
            for kv in range {
                let (key, value) = kv.into_inner().map_err(storage)?;
                if let (Some(seq), Some(record)) = (read_u64(&key), decode_record(&value)) {
                    appended.push((record.subject.to_string(), seq));
                    if let Ok(mut sizes) = self.sizes.lock() {
                        sizes.add(seq, (value.len() + 8) as u64);
                    }
                }
            }
            self.last = last;
            self.index(&appended);
            self.head.send_replace(last);
            wake(&self.groups, &appended);
        }
        self.dedup = Dedup::recover(&handles.log, self.dedup_window)?;
        Ok(())
    }

    /// Adds committed records to the subject index.
    fn index(&self, appended: &[(String, u64)]) {
        if let Ok(mut index) = self.index.lock() {
            for (subject, seq) in appended {
                index.add(subject, *seq);
            }
        }
    }

    /// Commits `ops` and any moved consumer cursors in one batch. While the store cannot
    /// write, refuses them without trying.
    fn commit(&mut self, ops: Vec<WriteOp>) {
        let handles = match (&self.health.trouble, self.store.handles()) {
            (None, Ok(handles)) => handles,
            (Some(trouble), _) => return refuse(ops, &trouble.refusal()),
            (None, Err(e)) => return refuse(ops, &e.to_string()),
        };
        let mut batch = handles.db.batch();
        let mut replies = Vec::with_capacity(ops.len());
        let mut added_keys = Vec::new();
        let mut appended: Vec<(String, u64)> = Vec::new();
        // Per appended record, its sequence and its bytes with the key.
        let mut sized: Vec<(u64, u64)> = Vec::new();
        let mut seq = self.last;
        // State revisions written earlier in this batch, which the keyspace does not show yet.
        let mut revisions: HashMap<String, u64> = HashMap::new();
        let now = Instant::now();
        let published_ms = now_ms();
        self.dedup.expire(now);
        for op in ops {
            match op {
                WriteOp::Append { subject, dedup, payload, reply } => {
                    let key = Dedup::hash(&dedup);
                    if let Some(&earlier) = self.dedup.keys.get(&key) {
                        let done = Published { sequence: earlier, duplicate: true };
                        replies.push(Reply::Published(reply, done));
                        continue;
                    }
                    seq += 1;
                    let record = encode_record(&subject, &dedup, published_ms, &payload);
                    sized.push((seq, (record.len() + 8) as u64));
                    batch.insert(&handles.log, seq.to_be_bytes(), record);
                    appended.push((subject, seq));
                    self.dedup.keys.insert(key, seq);
                    added_keys.push(key);
                    replies.push(Reply::Published(
                        reply,
                        Published { sequence: seq, duplicate: false },
                    ));
                }
                WriteOp::Cursor { name, floor, reply } => {
                    batch.insert(&handles.cursors, name.as_bytes(), floor.to_be_bytes());
                    replies.push(Reply::Cursor(reply));
                }
                WriteOp::State { key, value, expected, reply } => {
                    let current = match revisions.get(&key) {
                        Some(r) => *r,
                        None => match handles.state.get(key.as_bytes()) {
                            Ok(v) => v.as_deref().and_then(revision_of).unwrap_or(0),
                            Err(e) => {
                                let _ = reply.send(Err(StateError::Bus(storage(e))));
                                continue;
                            }
                        },
                    };
                    let removing = value.is_none();
                    let Some(revision) =
                        next_revision(current, expected, removing, &mut self.last_revision)
                    else {
                        replies.push(Reply::State(reply, Err(())));
                        continue;
                    };
                    match value {
                        Some(value) => {
                            let mut record = revision.to_be_bytes().to_vec();
                            record.extend_from_slice(&value);
                            batch.insert(&handles.state, key.as_bytes(), record);
                        }
                        None => batch.remove(&handles.state, key.as_bytes()),
                    }
                    revisions.insert(key, revision);
                    replies.push(Reply::State(reply, Ok(revision)));
                }
            }
        }
        let moved = self.moved_cursors();
        for (name, floor) in &moved {
            batch.insert(&handles.cursors, name.as_bytes(), floor.to_be_bytes());
        }
        if batch.is_empty() {
            for reply in replies {
                match reply {
                    Reply::Published(tx, done) => {
                        let _ = tx.send(Ok(done));
                    }
                    Reply::State(tx, Err(())) => {
                        let _ = tx.send(Err(StateError::Conflict));
                    }
                    Reply::State(..) | Reply::Cursor(_) => {}
                }
            }
            return;
        }
        let durable = !replies.is_empty();
        if seq != self.last {
            batch.insert(&handles.meta, "last_seq", seq.to_be_bytes());
        }
        // Publishes and cursor creations must be on disk before they are answered. A batch of
        // moved cursors alone goes to the OS's buffers, not to the disk: that survives a crash
        // of the process (kill -9, OOM), so a restart redelivers only what was in flight and
        // what settled in the last flush interval; only a machine crash can lose it, and then
        // the cost is redelivery, not loss. Left in the store's own buffer, as it was, a quiet
        // bus kept no progress at all until the next publish or a clean stop.
        let mode = if durable { PersistMode::SyncData } else { PersistMode::Buffer };
        let result = batch.durability(Some(mode)).commit();
        match result {
            Ok(()) => {
                for (name, floor) in moved {
                    self.mark_persisted(&name, floor);
                }
                for key in added_keys {
                    self.dedup.order.push_back((now, key));
                }
                self.last = seq;
                if let Ok(mut sizes) = self.sizes.lock() {
                    for (seq, bytes) in sized {
                        sizes.add(seq, bytes);
                    }
                }
                // In this order: a consumer that sees the new head must find its records in
                // the index, and one woken for its subjects must see the new head.
                self.index(&appended);
                self.head.send_replace(seq);
                wake(&self.groups, &appended);
                for reply in replies {
                    match reply {
                        Reply::Published(tx, done) => {
                            let _ = tx.send(Ok(done));
                        }
                        Reply::Cursor(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        Reply::State(tx, result) => {
                            let _ = tx.send(result.map_err(|()| StateError::Conflict));
                        }
                    }
                }
            }
            Err(e) => {
                // Said once, then once a minute; the bus reports itself down and reopens
                // the store until it writes again.
                self.health.failed(&self.store, &e);
                for key in added_keys {
                    self.dedup.keys.remove(&key);
                }
                for reply in replies {
                    match reply {
                        Reply::Published(tx, _) => {
                            let _ = tx.send(Err(storage(&e)));
                        }
                        Reply::Cursor(tx) => {
                            let _ = tx.send(Err(storage(&e)));
                        }
                        Reply::State(tx, _) => {
                            let _ = tx.send(Err(StateError::Bus(storage(&e))));
                        }
                    }
                }
            }
        }
    }

    fn moved_cursors(&self) -> Vec<(String, u64)> {
        let Ok(groups) = self.groups.lock() else { return Vec::new() };
        groups
            .iter()
            .filter_map(|(name, group)| {
                let state = group.state.lock().ok()?;
                let floor = state.floor();
                (floor > state.persisted).then(|| (name.clone(), floor))
            })
            .collect()
    }

    fn mark_persisted(&self, name: &str, floor: u64) {
        let Ok(groups) = self.groups.lock() else { return };
        if let Some(mut state) = groups.get(name).and_then(|g| g.state.lock().ok()) {
            state.persisted = state.persisted.max(floor);
        }
    }
}

/// A named consumer: shared by every subscription with its name.
struct Group {
    filter: SubjectSet,
    max_in_flight: usize,
    state: Mutex<GroupState>,
    /// Woken on ack and nack, which free capacity or schedule a redelivery.
    changed: Notify,
}

struct GroupState {
    /// The last sequence examined for new deliveries.
    read_pos: u64,
    /// Delivered and not yet settled: sequence → attempt.
    in_flight: BTreeMap<u64, u32>,
    /// Waiting for redelivery: sequence → (due, attempts so far).
    redeliver: BTreeMap<u64, (Instant, u32)>,
    /// The floor last written to disk.
    persisted: u64,
}

impl GroupState {
    /// Every sequence up to here is settled: acked, not for this consumer, or dropped by
    /// retention. It is what a restart resumes after.
    fn floor(&self) -> u64 {
        let lowest_open = [self.in_flight.keys().next(), self.redeliver.keys().next()]
            .into_iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.read_pos + 1);
        lowest_open.min(self.read_pos + 1) - 1
    }

    fn outstanding(&self) -> usize {
        self.in_flight.len() + self.redeliver.len()
    }
}

struct EmbeddedSubscription {
    bus: EmbeddedBus,
    group: Arc<Group>,
    head: watch::Receiver<u64>,
}

/// What a scan under the lock found.
enum Found {
    Record {
        seq: u64,
        attempt: u32,
        raw: Raw,
    },
    Nothing {
        wake_at: Option<Instant>,
        /// Whether to wake at every new head (not only for this consumer's subjects).
        every_head: bool,
    },
    /// The scan hit its limit; look again without waiting.
    Busy,
}

impl EmbeddedSubscription {
    /// The record at `seq`, if retention has not dropped it.
    fn get(&self, seq: u64) -> Result<Option<Raw>, BusError> {
        Ok(match &self.bus.inner.store {
            Store::Disk(disk) => {
                disk.handles()?.log.get(seq.to_be_bytes()).map_err(storage)?.map(Raw::Disk)
            }
            Store::Memory(memory) => memory
                .lock()
                .map_err(|_| BusError::Closed)?
                .records
                .get(&seq)
                .cloned()
                .map(Raw::Memory),
        })
    }

    /// Reads the log from `start` to `head` for the first record of this consumer's subjects:
    /// `Ok(Some)` with it, `Ok(None)` when there is none (the scan ends at `head`), or
    /// `Err(())` (as `Found::Busy`) when the scan hit its limit first.
    fn read_log(&self, state: &mut GroupState, head: u64) -> Result<Option<Found>, BusError> {
        let start = state.read_pos + 1;
        match &self.bus.inner.store {
            Store::Disk(disk) => {
                let log = disk.handles()?.log;
                let range = log.range(start.to_be_bytes()..=head.to_be_bytes());
                for (examined, kv) in range.enumerate() {
                    if examined >= SCAN_LIMIT {
                        return Ok(Some(Found::Busy));
                    }
                    let (key, value) = kv.into_inner().map_err(storage)?;
                    let Some(seq) = read_u64(&key) else { continue };
                    state.read_pos = seq;
                    let wanted = decode_record(&value)
                        .is_some_and(|r| self.group.filter.contains(r.subject));
                    if wanted {
                        state.in_flight.insert(seq, 1);
                        return Ok(Some(Found::Record { seq, attempt: 1, raw: Raw::Disk(value) }));
                    }
                }
            }
            Store::Memory(memory) => {
                let log = memory.lock().map_err(|_| BusError::Closed)?;
                for (examined, (&seq, record)) in log.records.range(start..=head).enumerate() {
                    if examined >= SCAN_LIMIT {
                        return Ok(Some(Found::Busy));
                    }
                    state.read_pos = seq;
                    if self.group.filter.contains(&record.subject_text) {
                        state.in_flight.insert(seq, 1);
                        let raw = Raw::Memory(record.clone());
                        return Ok(Some(Found::Record { seq, attempt: 1, raw }));
                    }
                }
            }
        }
        Ok(None)
    }

    fn scan(&self, head: u64) -> Result<Found, BusError> {
        let mut state = self.group.state.lock().map_err(|_| BusError::Closed)?;
        let now = Instant::now();
        if state.in_flight.len() < self.group.max_in_flight {
            let due = state
                .redeliver
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .min_by_key(|(_, (at, _))| *at)
                .map(|(seq, (_, attempts))| (*seq, *attempts));
            if let Some((seq, attempts)) = due {
                state.redeliver.remove(&seq);
                // An event dropped by retention while waiting counts as settled.
                if let Some(raw) = self.get(seq)? {
                    state.in_flight.insert(seq, attempts + 1);
                    return Ok(Found::Record { seq, attempt: attempts + 1, raw });
                }
            }
        }
        while state.outstanding() < self.group.max_in_flight && state.read_pos < head {
            let next = self
                .bus
                .inner
                .index
                .lock()
                .ok()
                .and_then(|index| index.next(&self.group.filter, state.read_pos));
            match next {
                // Nothing of ours up to head: skip what is not ours without reading it.
                Some(None) => state.read_pos = head,
                Some(Some(seq)) if seq > head => state.read_pos = head,
                Some(Some(seq)) => {
                    state.read_pos = seq;
                    // An event dropped by retention meanwhile is settled; look further.
                    if let Some(raw) = self.get(seq)? {
                        state.in_flight.insert(seq, 1);
                        return Ok(Found::Record { seq, attempt: 1, raw });
                    }
                }
                None => break,
            }
        }
        if state.outstanding() < self.group.max_in_flight && state.read_pos < head {
            if let Some(found) = self.read_log(&mut state, head)? {
                return Ok(found);
            }
            // Whatever is missing below head was removed by retention.
            state.read_pos = head;
        }
        let wake_at = state.redeliver.values().map(|(at, _)| *at).min();
        // A consumer the index serves is woken by the committer when its subjects get a
        // record; one reading the log from before the index also needs every new head.
        let indexed = self.bus.inner.index.lock().is_ok_and(|i| state.read_pos >= i.floor);
        Ok(Found::Nothing { wake_at, every_head: !indexed })
    }

    fn settle(group: &Group, seq: u64, redeliver_after: Option<Duration>) {
        if let Ok(mut state) = group.state.lock()
            && let Some(attempts) = state.in_flight.remove(&seq)
            && let Some(delay) = redeliver_after
        {
            state.redeliver.insert(seq, (Instant::now() + delay, attempts));
        }
        group.changed.notify_waiters();
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let changed = self.group.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.bus.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(BusError::Closed);
            }
            let head = *self.head.borrow_and_update();
            match self.scan(head)? {
                Found::Record { seq, attempt, raw } => {
                    match deliver(&self.group, seq, attempt, &raw) {
                        Some(delivery) => return Ok(delivery),
                        None => {
                            // A record that cannot be decoded can never be processed; settle it
                            // so it does not block the consumer, and say so loudly.
                            tracing::error!(
                                sequence = seq,
                                "skipping undecodable record in embedded bus"
                            );
                            Self::settle(&self.group, seq, None);
                        }
                    }
                }
                Found::Busy => tokio::task::yield_now().await,
                Found::Nothing { wake_at, every_head } => {
                    let sleep = async {
                        match wake_at {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = &mut changed => {}
                        r = self.head.changed(), if every_head => {
                            if r.is_err() { return Err(BusError::Closed); }
                        }
                        () = sleep => {}
                    }
                }
            }
        }
    }
}

fn deliver(group: &Arc<Group>, seq: u64, attempt: u32, raw: &Raw) -> Option<Delivery> {
    let raw = match raw {
        Raw::Disk(raw) => raw,
        Raw::Memory(record) => {
            let acker = Box::new(EmbeddedAcker { group: group.clone(), seq });
            return Some(Delivery::new(
                record.event.clone(),
                record.subject.clone(),
                seq,
                attempt,
                record.published_at,
                acker,
            ));
        }
    };
    let record = decode_record(raw)?;
    let subject = Subject::parse(record.subject)?;
    let event = event::decode(record.payload).ok()?;
    let published_at: DateTime<Utc> = Utc.timestamp_millis_opt(record.published_ms).single()?;
    let acker = Box::new(EmbeddedAcker { group: group.clone(), seq });
    Some(Delivery::new(Arc::new(event), subject, seq, attempt, published_at, acker))
}

struct EmbeddedAcker {
    group: Arc<Group>,
    seq: u64,
}

impl Acker for EmbeddedAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        EmbeddedSubscription::settle(&self.group, self.seq, None);
        async { Ok(()) }.boxed()
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BusError>> {
        EmbeddedSubscription::settle(&self.group, self.seq, Some(delay));
        async { Ok(()) }.boxed()
    }

    fn abandon(self: Box<Self>) {
        EmbeddedSubscription::settle(&self.group, self.seq, Some(Duration::ZERO));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_answers_only_what_it_knows() {
        let mut index = SubjectIndex { floor: 10, recent: HashMap::default() };
        let subjects = |names: &[&str]| names.iter().map(ToString::to_string).collect();
        for seq in 11..=20 {
            index.add(if seq % 2 == 0 { "a" } else { "b" }, seq);
        }
        assert_eq!(index.next(&subjects(&["a"]), 5), None, "before the index: read the log");
        assert_eq!(index.next(&subjects(&["a"]), 10), Some(Some(12)));
        assert_eq!(index.next(&subjects(&["a", "b"]), 12), Some(Some(13)));
        assert_eq!(index.next(&subjects(&["a"]), 20), Some(None));
        assert_eq!(index.next(&subjects(&["c"]), 10), Some(None), "a subject never written");
        // Past its depth, the index forgets the oldest: a consumer behind that reads the log.
        for seq in 21..=(21 + INDEX_DEPTH as u64) {
            index.add("a", seq);
        }
        assert_eq!(index.next(&subjects(&["a"]), 12), None);
        assert_eq!(index.next(&subjects(&["a"]), 30), Some(Some(31)));
        assert_eq!(index.next(&subjects(&["b"]), 12), Some(Some(13)), "b kept all of its own");
    }
}
