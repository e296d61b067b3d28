//! The duplicate window: recent (subject, source, id) keys, kept as 128-bit hashes.
//!
//! The keys live in a few generations, each a hash map of the keys first seen in one slice of
//! the window, rather than in one map with a queue of arrival times. One map of millions of
//! keys (two minutes at 20k/s) had to be rehashed whole whenever it grew, and, as expiry left
//! tombstones behind, again in place every so often: tens of milliseconds with the bus's lock
//! held, which every publisher and consumer waited out (the tail of W5 at a quarter of W1's
//! rate). A generation is made with room for as many keys as the one before it held, so at a
//! steady rate none grows, and one that does is a fraction of the window; expiry drops whole
//! generations, so no map ever holds tombstones.

use super::*;

/// How many slices the window is cut into. More make each rehash smaller but each new key
/// looks in more maps; a key is kept for the window and at most one slice more.
const GENERATIONS: u32 = 4;

/// Recently stored `(source, id)` keys, to drop republished events.
pub(super) struct Dedup {
    window: Duration,
    /// Oldest first.
    generations: VecDeque<Generation>,
}

/// The keys first stored in `[started, started + window / GENERATIONS)`.
struct Generation {
    started: Instant,
    /// Per key's hash, its sequence. Keeping 128-bit hashes instead of the texts means no
    /// allocation per event, a fraction of the memory, and a collision (a new event taken
    /// for a duplicate) about as likely as never.
    keys: HashMap<u128, u64, std::hash::BuildHasherDefault<Low64>>,
}

/// Hashes a `u128` that is already a hash by taking its low half.
#[derive(Default)]
pub(super) struct Low64(pub(super) u64);

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
    pub(super) fn new(window: Duration) -> Self {
        Self { window, generations: VecDeque::new() }
    }

    /// The hash a duplicate key is kept as.
    pub(super) fn hash(key: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(key.as_bytes())
    }

    /// The sequence `key` was stored at, while it is within the window.
    pub(super) fn get(&self, key: u128) -> Option<u64> {
        // Newest first: a republished event is most often a recent one.
        self.generations.iter().rev().find_map(|g| g.keys.get(&key).copied())
    }

    /// Records `key`, stored at `seq` at `at` (now, or its time when the window is rebuilt).
    pub(super) fn insert(&mut self, key: u128, seq: u64, at: Instant) {
        let slice = self.window / GENERATIONS;
        let current = match self.generations.back() {
            Some(newest) => at.saturating_duration_since(newest.started) < slice,
            None => false,
        };
        if !current {
            // Room for what the last slice held: a steady rate never grows a map.
            let room = self.generations.back().map_or(0, |g| g.keys.len());
            let keys = HashMap::with_capacity_and_hasher(room, Default::default());
            self.generations.push_back(Generation { started: at, keys });
        }
        if let Some(newest) = self.generations.back_mut() {
            newest.keys.insert(key, seq);
        }
    }

    /// Forgets `key` (its write failed, so it was never stored).
    pub(super) fn remove(&mut self, key: u128) {
        for generation in self.generations.iter_mut().rev() {
            if generation.keys.remove(&key).is_some() {
                return;
            }
        }
    }

    /// Rebuilds the window from the newest records, so a restart does not forget it.
    pub(super) fn recover(log: &Keyspace, window: Duration) -> Result<Self, BusError> {
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
            dedup.insert(key, seq, at);
        }
        Ok(dedup)
    }

    /// Drops the generations whose every key is older than the window.
    pub(super) fn expire(&mut self, now: Instant) {
        let slice = self.window / GENERATIONS;
        while let Some(oldest) = self.generations.front() {
            if now.saturating_duration_since(oldest.started) < self.window + slice {
                break;
            }
            self.generations.pop_front();
        }
    }

    /// How many keys the window holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.generations.iter().map(|g| g.keys.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_kept_for_the_window_and_at_most_a_slice_more() {
        let window = Duration::from_secs(8);
        let mut dedup = Dedup::new(window);
        let start = Instant::now();
        dedup.insert(1, 10, start);
        dedup.insert(2, 11, start + Duration::from_secs(3));
        assert_eq!(dedup.get(1), Some(10));
        assert_eq!(dedup.get(2), Some(11));
        assert_eq!(dedup.get(3), None);
        dedup.expire(start + window);
        assert_eq!(dedup.get(1), Some(10), "kept for the whole window");
        dedup.expire(start + window + window / GENERATIONS);
        assert_eq!(dedup.get(1), None, "gone a slice after the window");
        assert_eq!(dedup.get(2), Some(11), "a later slice stays");
        dedup.expire(start + Duration::from_secs(3) + window + window / GENERATIONS);
        assert_eq!(dedup.len(), 0);
    }

    #[test]
    fn at_a_steady_rate_no_generation_grows() {
        let window = Duration::from_secs(4);
        let mut dedup = Dedup::new(window);
        let start = Instant::now();
        // 1,000 keys a second for five windows, expiring as the bus does before each insert.
        let mut grew_after_warm_up = 0;
        for n in 0..20_000u64 {
            let at = start + Duration::from_millis(n);
            dedup.expire(at);
            let before = dedup.generations.back().map(|g| (g.started, g.keys.capacity()));
            dedup.insert(u128::from(n), n, at);
            let after = dedup.generations.back().map(|g| (g.started, g.keys.capacity()));
            if n > 8_000 && before.map(|b| b.0) == after.map(|a| a.0) && before != after {
                grew_after_warm_up += 1;
            }
        }
        assert_eq!(grew_after_warm_up, 0, "a generation made with the last one's room grew");
        assert!(dedup.len() <= 5_000, "at most the window and a slice: {}", dedup.len());
        assert!(dedup.len() >= 4_000, "at least the window: {}", dedup.len());
    }

    #[test]
    fn a_failed_write_forgets_its_key() {
        let mut dedup = Dedup::new(Duration::from_secs(60));
        dedup.insert(7, 1, Instant::now());
        dedup.remove(7);
        assert_eq!(dedup.get(7), None);
    }
}
