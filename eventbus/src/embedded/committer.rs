//! The committer thread: group commit of publishes and cursor updates in one fsynced batch.

use super::*;

pub(super) enum WriteOp {
    Append {
        subject: String,
        dedup: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Published, BusError>>,
    },
    /// Create a consumer's cursor durably before it is used.
    /// A consumer's position; `None` removes the consumer's.
    Cursor { name: String, floor: Option<u64>, reply: oneshot::Sender<Result<(), BusError>> },
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
pub(super) fn refuse(ops: Vec<WriteOp>, why: &str) {
    let error = || BusError::unavailable(why);
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

pub(super) struct Committer {
    pub(super) store: Arc<DiskStore>,
    /// Whether the store writes, and what was said about it.
    pub(super) health: store::WriteHealth,
    /// The duplicate window, to rebuild it from a reopened store.
    pub(super) dedup_window: Duration,
    pub(super) head: watch::Sender<u64>,
    pub(super) groups: Groups,
    pub(super) index: Arc<Mutex<SubjectIndex>>,
    pub(super) sizes: Arc<Mutex<Sizes>>,
    pub(super) last: u64,
    /// The highest state revision handed out, so that a removed and re-created key never
    /// reuses a revision.
    pub(super) last_revision: u64,
    pub(super) dedup: Dedup,
}

pub(super) enum Reply {
    Published(oneshot::Sender<Result<Published, BusError>>, Published),
    Cursor(oneshot::Sender<Result<(), BusError>>),
    State(oneshot::Sender<Result<u64, StateError>>, Result<u64, ()>),
}

impl Committer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
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
    pub(super) fn recover(&mut self) {
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
    pub(super) fn catch_up(&mut self, handles: &Handles) -> Result<(), BusError> {
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
    pub(super) fn index(&self, appended: &[(String, u64)]) {
        if let Ok(mut index) = self.index.lock() {
            for (subject, seq) in appended {
                index.add(subject, *seq);
            }
        }
    }

    /// Commits `ops` and any moved consumer cursors in one batch. While the store cannot
    /// write, refuses them without trying.
    pub(super) fn commit(&mut self, ops: Vec<WriteOp>) {
        let handles = match (&self.health.trouble, self.store.handles()) {
            (None, Ok(handles)) => handles,
            (Some(trouble), _) => return refuse(ops, &trouble.refusal()),
            (None, Err(e)) => return refuse(ops, &ofe_core::chain(&e)),
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
                    if let Some(earlier) = self.dedup.get(key) {
                        let done = Published { sequence: earlier, duplicate: true };
                        replies.push(Reply::Published(reply, done));
                        continue;
                    }
                    seq += 1;
                    let record = encode_record(&subject, &dedup, published_ms, &payload);
                    sized.push((seq, (record.len() + 8) as u64));
                    batch.insert(&handles.log, seq.to_be_bytes(), record);
                    appended.push((subject, seq));
                    self.dedup.insert(key, seq, now);
                    added_keys.push(key);
                    replies.push(Reply::Published(
                        reply,
                        Published { sequence: seq, duplicate: false },
                    ));
                }
                WriteOp::Cursor { name, floor, reply } => {
                    match floor {
                        Some(floor) => {
                            batch.insert(&handles.cursors, name.as_bytes(), floor.to_be_bytes())
                        }
                        None => batch.remove(&handles.cursors, name.as_bytes()),
                    }
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
                    self.dedup.remove(key);
                }
                // Every waiting writer gets the same failure as its cause.
                let e = std::sync::Arc::new(e);
                for reply in replies {
                    match reply {
                        Reply::Published(tx, _) => {
                            let _ = tx.send(Err(storage(e.clone())));
                        }
                        Reply::Cursor(tx) => {
                            let _ = tx.send(Err(storage(e.clone())));
                        }
                        Reply::State(tx, _) => {
                            let _ = tx.send(Err(StateError::Bus(storage(e.clone()))));
                        }
                    }
                }
            }
        }
    }

    pub(super) fn moved_cursors(&self) -> Vec<(String, u64)> {
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

    pub(super) fn mark_persisted(&self, name: &str, floor: u64) {
        let Ok(groups) = self.groups.lock() else { return };
        if let Some(mut state) = groups.get(name).and_then(|g| g.state.lock().ok()) {
            state.persisted = state.persisted.max(floor);
        }
    }
}
