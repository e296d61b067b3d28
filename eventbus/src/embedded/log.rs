//! The log the consumers read: on disk (through the committer) or in memory, with the byte
//! accounting that keeps retention from taking what consumers still want, and the subject index.

use super::*;

/// The durable log's bytes after a sequence, for backpressure: a running total of what was
/// appended, with a mark of the total before a record every 1/64 of the limit, so a backlog
/// is over-counted by at most that much, never under-counted.
pub(super) struct Sizes {
    /// Bytes appended since the bus opened, plus what the log held on disk then.
    pub(super) total: u64,
    /// `(sequence, total before it)`, ascending.
    pub(super) marks: VecDeque<(u64, u64)>,
    /// Bytes between marks.
    pub(super) mark_every: u64,
    /// Bytes appended since the last mark.
    pub(super) since_mark: u64,
    /// A floor every live consumer had settled when last asked. Floors only move up, so bytes
    /// after it are never fewer than the bytes still wanted: computing the floors again (a
    /// lock per consumer) is needed only when this bound reaches the limit.
    pub(super) settled: u64,
}

impl Sizes {
    /// Sizes of a log holding `bytes` on disk from `first` to `last`, for a backlog limit of
    /// `limit` bytes.
    pub(super) fn recovered(first: u64, last: u64, bytes: u64, limit: u64) -> Self {
        let marks = VecDeque::from([(first, 0), (last + 1, bytes)]);
        let mark_every = (limit / 64).max(1);
        Self { total: bytes, marks, mark_every, since_mark: mark_every, settled: 0 }
    }

    pub(super) fn add(&mut self, seq: u64, bytes: u64) {
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
    pub(super) fn after(&self, floor: u64) -> u64 {
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
pub(super) struct SubjectIndex {
    /// Records up to here predate the index.
    pub(super) floor: u64,
    /// Per subject: its recent sequences, ascending, and the highest one dropped from them.
    pub(super) recent:
        HashMap<String, (std::collections::VecDeque<u64>, u64), foldhash::fast::RandomState>,
}

impl SubjectIndex {
    pub(super) fn add(&mut self, subject: &str, seq: u64) {
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
    pub(super) fn next(&self, subjects: &SubjectSet, after: u64) -> Option<Option<u64>> {
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

/// Where the bus keeps its log.
pub(super) enum Store {
    /// On disk, written by the committer thread.
    Disk(Arc<DiskStore>),
    /// In memory only (`spec.memory`): no journal, no fsync, and nothing survives the process.
    Memory(Mutex<MemoryLog>),
}

/// A stored record, as a consumer finds it.
pub(super) enum Raw {
    Disk(fjall::Slice),
    Memory(Arc<MemoryRecord>),
}

/// An event kept by the in-memory log: already decoded, and shared with every consumer.
pub(super) struct MemoryRecord {
    pub(super) subject: Subject,
    pub(super) subject_text: String,
    pub(super) published_at: DateTime<Utc>,
    pub(super) event: Arc<Event>,
    pub(super) size: u64,
}

/// Events of the in-memory log by sequence.
pub(super) type Records = BTreeMap<u64, Arc<MemoryRecord>>;

/// Frees records taken out of the in-memory log, off the async workers when there are many.
pub(super) fn free(records: Records) {
    if records.len() < 64 {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(records))),
        Err(_) => drop(records),
    }
}

/// The in-memory log: events by sequence, dropped oldest first past its size or age.
pub(super) struct MemoryLog {
    pub(super) records: Records,
    pub(super) bytes: u64,
    pub(super) last: u64,
    pub(super) max_bytes: u64,
    pub(super) max_age: chrono::Duration,
    pub(super) dedup: Dedup,
    /// The state store: key → (revision, value).
    pub(super) state: HashMap<String, (u64, Vec<u8>)>,
    pub(super) last_revision: u64,
}

impl MemoryLog {
    /// Sets (or, with `None`, removes) a state value if it is at revision `expected`, as the
    /// committer does for the durable bus.
    pub(super) fn set_state(
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
    pub(super) fn take_oldest(
        &mut self,
        mut take: impl FnMut(u64, &MemoryRecord, u64) -> bool,
    ) -> Records {
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
    pub(super) fn expire(&mut self, now: DateTime<Utc>) -> Records {
        let max_age = self.max_age;
        self.take_oldest(|_, record, _| now - record.published_at > max_age)
    }

    /// Makes room for `size` more bytes by taking out the oldest records that every live
    /// consumer has settled (all of them up to `settled`; any, with no live consumer), down to
    /// fifteen sixteenths of the size, so that a full bus does this once per sixteenth rather
    /// than at every publish. When what is left is unsettled and there is still no room, the
    /// result is a refusal: backpressure reaches the source, and no event a consumer still
    /// wants is dropped.
    pub(super) fn make_room(
        &mut self,
        size: u64,
        settled: Option<u64>,
    ) -> (Records, Result<(), BusError>) {
        let low_water = self.max_bytes - self.max_bytes / 16;
        let taken = self.take_oldest(|seq, _, bytes| {
            bytes + size > low_water && settled.is_none_or(|floor| seq <= floor)
        });
        let room = if self.bytes + size > self.max_bytes && !self.records.is_empty() {
            Err(BusError::unavailable(format!(
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
