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

mod committer;
mod consumer;
mod dedup;
mod log;
mod record;
mod state;
mod store;

use committer::*;
use consumer::*;
use dedup::*;
use log::*;
use record::*;
use store::{DiskStore, Handles};

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

/// A failure of the embedded bus's store (fjall), kept as the cause.
fn storage(e: impl Into<ofe_core::Cause>) -> BusError {
    BusError::storage("the embedded bus's store").because(e)
}

/// How many writes one batch takes at most.
const MAX_BATCH: usize = 1024;
/// How often dirty consumer cursors are written when nothing else is.
const CURSOR_FLUSH: Duration = Duration::from_millis(100);
/// How many records one scan under the consumer lock examines before yielding.
const SCAN_LIMIT: usize = 1024;

type Groups = Arc<Mutex<consumer::GroupMap>>;

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
        Err(BusError::unavailable(format!(
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
            if let Some(earlier) = log.dedup.get(dedup) {
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
            log.dedup.insert(dedup, seq, now);
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
                    StartPosition::Time(at) => self.floor_at(at)?,
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
        Ok(groups.insert_or_get(&options.consumer, group))
    }

    /// Writes a consumer's cursor durably (in memory, there is nothing to write).
    async fn save_cursor(&self, name: &str, floor: u64) -> Result<(), BusError> {
        self.write_cursor(name, Some(floor)).await
    }

    /// Writes (`Some`) or removes (`None`) a consumer's cursor durably.
    async fn write_cursor(&self, name: &str, floor: Option<u64>) -> Result<(), BusError> {
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

    /// The sequence and publish time (ms) of the first record at or after `seq`.
    fn record_from(&self, seq: u64) -> Result<Option<(u64, i64)>, BusError> {
        Ok(match &self.inner.store {
            Store::Disk(disk) => {
                let log = disk.handles()?.log;
                match log.range(seq.to_be_bytes()..).next() {
                    Some(kv) => {
                        let (key, value) = kv.into_inner().map_err(storage)?;
                        let time = decode_record(&value).map(|r| r.published_ms);
                        read_u64(&key).zip(time)
                    }
                    None => None,
                }
            }
            Store::Memory(memory) => {
                let log = memory.lock().map_err(|_| BusError::Closed)?;
                log.records
                    .range(seq..)
                    .next()
                    .map(|(&seq, record)| (seq, record.published_at.timestamp_millis()))
            }
        })
    }

    /// The sequence before the first record stored at or after `at`, where a consumer starting
    /// at `at` begins. One writer stamps records in sequence order, so their times ascend and
    /// a binary search finds it in about log2(records) reads of the log.
    fn floor_at(&self, at: DateTime<Utc>) -> Result<u64, BusError> {
        let target = at.timestamp_millis();
        let (mut low, mut high) = (self.first_sequence()?, self.last_sequence() + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.record_from(middle)? {
                Some((seq, ms)) if ms < target => low = seq + 1,
                _ => high = middle,
            }
        }
        Ok(low.saturating_sub(1))
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

    async fn retained(&self, _subjects: &[Subject]) -> Result<ofe_core::Retained, BusError> {
        let first = self.first_sequence()?;
        let oldest =
            self.record_from(first)?.and_then(|(_, ms)| DateTime::<Utc>::from_timestamp_millis(ms));
        // Sequences start at 1: a log that begins later had its front removed by retention.
        Ok(ofe_core::Retained { oldest, trimmed: first > 1 })
    }

    async fn remove_consumer(&self, consumer: &str) -> Result<(), BusError> {
        self.inner.groups.lock().map_err(|_| BusError::Closed)?.remove(consumer);
        self.write_cursor(consumer, None).await
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
                .map_err(|_| BusError::storage("the commit thread panicked"))?;
        }
        match &self.inner.store {
            Store::Disk(disk) => disk.handles()?.db.persist(PersistMode::SyncAll).map_err(storage),
            Store::Memory(_) => Ok(()),
        }
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
