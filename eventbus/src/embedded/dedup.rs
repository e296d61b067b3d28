//! The duplicate window: recent (subject, source, id) keys, kept as 128-bit hashes.

use super::*;

/// Recently stored `(source, id)` keys, to drop republished events.
pub(super) struct Dedup {
    pub(super) window: Duration,
    /// Per key's hash, its sequence. A window holds millions of keys at full speed (two
    /// minutes at 20k/s), so the map keeps 128-bit hashes instead of the texts: no allocation
    /// per event, a fraction of the memory, and a collision (a new event taken for a
    /// duplicate) about as likely as never.
    pub(super) keys: HashMap<u128, u64, std::hash::BuildHasherDefault<Low64>>,
    pub(super) order: VecDeque<(Instant, u128)>,
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
        Self { window, keys: HashMap::default(), order: VecDeque::new() }
    }

    /// The hash a duplicate key is kept as.
    pub(super) fn hash(key: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(key.as_bytes())
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
            dedup.keys.insert(key, seq);
            dedup.order.push_back((at, key));
        }
        Ok(dedup)
    }

    pub(super) fn expire(&mut self, now: Instant) {
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
