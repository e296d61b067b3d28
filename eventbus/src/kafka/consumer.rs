//! Kafka consumers: group creation and lag, the poller that tracks what each partition has
//! settled, subscriptions, deliveries and their commits.

use super::*;

/// The records of the bus topic after the group's committed offsets, summed over the
/// partitions; `None` for a group that has committed nothing. The topic holds every subject,
/// so this counts the records the group will skip as well: Kafka keeps no count per subject.
pub(super) fn group_lag(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partitions: i32,
) -> Result<Option<u64>, BusError> {
    let timeout = Duration::from_secs(5);
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all, timeout)
        .map_err(unavailable("cannot read the committed offsets"))?;
    let mut lag = 0u64;
    let mut any = false;
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), timeout)
            .map_err(unavailable("cannot read the partition ends"))?;
        let from = match element.offset() {
            Offset::Offset(at) => {
                any = true;
                at.max(low)
            }
            _ => low,
        };
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    Ok(any.then_some(lag))
}

/// Where a new group (no committed offsets) starts: where `legacy` (the same consumer's group
/// under its older name) had committed on this topic, if it had; else, with `start_new`, the
/// current end of every partition, fixed now rather than when the group is first assigned,
/// so events published in between are not missed; else the beginning.
pub(super) fn start_if_new(
    consumer: &BaseConsumer<Rebalancing>,
    legacy: Option<&BaseConsumer<Quiet>>,
    topic: &str,
    partitions: i32,
    start: StartPosition,
) -> Result<(), BusError> {
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = while_the_coordinator_loads(|| {
        consumer.committed_offsets(all.clone(), Duration::from_secs(10))
    })
    .map_err(unavailable("cannot read the committed offsets"))?;
    let fresh = committed.elements().iter().all(|e| matches!(e.offset(), Offset::Invalid));
    if !fresh {
        return Ok(());
    }
    if let Some(legacy) = legacy {
        let old = while_the_coordinator_loads(|| {
            legacy.committed_offsets(all.clone(), Duration::from_secs(10))
        })
        .map_err(unavailable("cannot read the old group's offsets"))?;
        let mut carried = TopicPartitionList::new();
        for e in old.elements() {
            if let Offset::Offset(at) = e.offset() {
                carried
                    .add_partition_offset(topic, e.partition(), Offset::Offset(at))
                    .map_err(unavailable("cannot carry an offset over"))?;
            }
        }
        if carried.count() > 0 {
            tracing::info!(
                topic,
                "consumer group renamed with the bus's prefix; carrying on from the old group's offsets"
            );
            return consumer
                .commit(&carried, CommitMode::Sync)
                .map_err(unavailable("cannot commit the carried offsets"));
        }
    }
    let mut starts = TopicPartitionList::new();
    match start {
        StartPosition::All => return Ok(()),
        StartPosition::New => {
            for p in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(unavailable("cannot read the partition ends"))?;
                starts
                    .add_partition_offset(topic, p, Offset::Offset(high))
                    .map_err(unavailable("cannot set a starting offset"))?;
            }
        }
        StartPosition::Time(at) => {
            // Kafka's offsetsForTimes: per partition, the first record stamped at or after
            // `at`, or the end when there is none.
            let mut times = TopicPartitionList::new();
            for p in 0..partitions {
                times
                    .add_partition_offset(topic, p, Offset::Offset(at.timestamp_millis()))
                    .map_err(unavailable("cannot set a start time"))?;
            }
            let found = consumer
                .offsets_for_times(times, Duration::from_secs(10))
                .map_err(unavailable("cannot find the offsets of the start time"))?;
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(at) => at,
                    _ => {
                        let (_, high) = consumer
                            .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
                            .map_err(unavailable("cannot read the partition ends"))?;
                        high
                    }
                };
                starts
                    .add_partition_offset(topic, e.partition(), Offset::Offset(offset))
                    .map_err(unavailable("cannot set a starting offset"))?;
            }
        }
    }
    consumer
        .commit(&starts, CommitMode::Sync)
        .map_err(unavailable("cannot commit the starting offsets"))
}

/// What the topic holds: the oldest record's time, read from the first record of each
/// partition (Kafka keeps no such time of its own), and whether retention removed any (a
/// partition whose low watermark is past 0).
pub(super) fn retained(
    probe: &BaseConsumer<Quiet>,
    topic: &str,
    partitions: i32,
) -> Result<ofe_core::Retained, BusError> {
    let timeout = Duration::from_secs(10);
    let mut firsts = TopicPartitionList::new();
    let mut trimmed = false;
    for p in 0..partitions {
        let (low, high) = probe
            .fetch_watermarks(topic, p, timeout)
            .map_err(unavailable("cannot read the partition ends"))?;
        trimmed |= low > 0;
        if high > low {
            firsts
                .add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(unavailable("cannot set an offset to read"))?;
        }
    }
    let mut waiting: BTreeSet<i32> = firsts.elements().iter().map(|e| e.partition()).collect();
    let mut oldest: Option<DateTime<Utc>> = None;
    if !waiting.is_empty() {
        probe.assign(&firsts).map_err(unavailable("cannot read the first records"))?;
        let until = Instant::now() + timeout;
        while !waiting.is_empty() && Instant::now() < until {
            let Some(message) = probe.poll(Duration::from_millis(200)) else { continue };
            let message = message.map_err(unavailable("cannot read the first records"))?;
            if waiting.remove(&message.partition()) {
                let at = message.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
                oldest = match (oldest, at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
    Ok(ofe_core::Retained { oldest, trimmed })
}

/// Runs `call` (blocking) again while the group coordinator is still being elected or loading,
/// for up to 30 s. A cluster that has just started (or moved its coordinator) answers so for a
/// few seconds; that is not a failure to report.
pub(super) fn while_the_coordinator_loads<T>(
    mut call: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call() {
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::NotCoordinator
                                | RDKafkaErrorCode::CoordinatorNotAvailable
                                | RDKafkaErrorCode::CoordinatorLoadInProgress
                        )
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// What the polling thread and the subscription share.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) state: Mutex<Tracker>,
    /// Unsettled messages (in flight or waiting for redelivery); the poller stops fetching at
    /// the limit.
    pub(super) outstanding: AtomicUsize,
}

/// Per-partition offsets: which are unsettled, and the highest handed out.
#[derive(Default)]
pub(super) struct Tracker {
    /// partition → unsettled offsets.
    pub(super) open: BTreeMap<i32, BTreeSet<i64>>,
    /// partition → highest offset examined.
    pub(super) seen: BTreeMap<i32, i64>,
    /// partition → last committed offset (the next one to read).
    pub(super) committed: BTreeMap<i32, i64>,
    /// Waiting for redelivery, in due order.
    pub(super) redeliver: VecDeque<Pending>,
    /// Partitions this member owns (a revoked partition's acks commit nothing).
    pub(super) owned: BTreeSet<i32>,
}

impl Tracker {
    /// The offset to commit for `partition`: the lowest unsettled one, or one past the
    /// highest examined.
    pub(super) fn floor(&self, partition: i32) -> Option<i64> {
        let lowest_open = self.open.get(&partition).and_then(|o| o.iter().next().copied());
        let next = self.seen.get(&partition).map(|s| s + 1)?;
        Some(lowest_open.map_or(next, |o| o.min(next)))
    }
}

pub(super) struct Rebalancing {
    pub(super) shared: Arc<Shared>,
}

impl ClientContext for Rebalancing {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        ofe_core::kafka::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        ofe_core::kafka::librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(list), Ok(mut t)) = (rebalance, self.shared.state.lock()) {
            for e in list.elements() {
                t.owned.remove(&e.partition());
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(list), Ok(mut t)) = (rebalance, self.shared.state.lock()) {
            for e in list.elements() {
                t.owned.insert(e.partition());
            }
        }
    }
}

/// A message handed from the polling thread to the subscription.
pub(super) struct Pending {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) event: Arc<Event>,
    pub(super) subject: Subject,
    pub(super) published_at: DateTime<Utc>,
    pub(super) attempt: u32,
    pub(super) due: Instant,
}

pub(super) struct Poller {
    pub(super) consumer: Arc<BaseConsumer<Rebalancing>>,
    pub(super) shared: Arc<Shared>,
    pub(super) filter: BTreeSet<String>,
    pub(super) tx: mpsc::Sender<Pending>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) max_in_flight: usize,
    pub(super) topic: Arc<str>,
}

impl Poller {
    pub(super) fn run(self) {
        let mut failing = false;
        while !self.stop.load(Ordering::SeqCst) {
            if self.shared.outstanding.load(Ordering::SeqCst) >= self.max_in_flight {
                // Backpressure: fetch nothing more until something is settled.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Err(e)) if !failing => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying");
                    failing = true;
                }
                None | Some(Err(_)) => {}
                Some(Ok(message)) => {
                    if failing {
                        tracing::info!("Kafka consumer recovered");
                        failing = false;
                    }
                    if !self.take(&message) {
                        break;
                    }
                }
            }
            self.commit(CommitMode::Async);
        }
        self.commit(CommitMode::Sync);
    }

    /// Hands a message over, or settles it at once when it is not for this subscription.
    /// `false` when the subscription is gone.
    pub(super) fn take(&self, message: &BorrowedMessage<'_>) -> bool {
        let (partition, offset) = (message.partition(), message.offset());
        let subject_text = header(message, SUBJECT_HEADER).unwrap_or_default();
        let wanted = self.filter.contains(subject_text.as_str());
        let decoded = if wanted { decode(message, &subject_text) } else { None };
        let Ok(mut t) = self.shared.state.lock() else { return false };
        let seen = t.seen.entry(partition).or_insert(offset);
        *seen = (*seen).max(offset);
        let Some((event, subject)) = decoded else {
            if wanted {
                tracing::error!(
                    partition,
                    offset,
                    "undecodable record on the Kafka bus; skipping it"
                );
            }
            return true;
        };
        t.open.entry(partition).or_default().insert(offset);
        drop(t);
        self.shared.outstanding.fetch_add(1, Ordering::SeqCst);
        let published_at = message
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let pending = Pending {
            partition,
            offset,
            event: Arc::new(event),
            subject,
            published_at,
            attempt: 1,
            due: Instant::now(),
        };
        self.tx.blocking_send(pending).is_ok()
    }

    /// Commits every owned partition whose floor moved.
    pub(super) fn commit(&self, mode: CommitMode) {
        let Ok(mut t) = self.shared.state.lock() else { return };
        let mut list = TopicPartitionList::new();
        let owned: Vec<i32> = t.owned.iter().copied().collect();
        for partition in owned {
            let Some(floor) = t.floor(partition) else { continue };
            if t.committed.get(&partition).is_some_and(|c| *c >= floor) {
                continue;
            }
            if list.add_partition_offset(&self.topic, partition, Offset::Offset(floor)).is_ok() {
                t.committed.insert(partition, floor);
            }
        }
        drop(t);
        if list.count() > 0
            && let Err(e) = self.consumer.commit(&list, mode)
        {
            tracing::debug!(error = %e, "Kafka offset commit failed; it is retried with the next one");
        }
    }
}

pub(super) fn header(message: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub(super) fn decode(message: &BorrowedMessage<'_>, subject: &str) -> Option<(Event, Subject)> {
    let subject = Subject::parse(subject)?;
    let event =
        ofe_core::kafka::parts(message).decode(message.payload().unwrap_or_default()).ok()?;
    Some((event, subject))
}

/// Recently delivered (subject, source, id) keys, to drop republished events.
pub(super) struct Recent {
    pub(super) window: Duration,
    pub(super) keys: HashMap<String, Instant>,
    pub(super) order: VecDeque<(Instant, String)>,
}

impl Recent {
    pub(super) fn new(window: Duration) -> Self {
        Self { window, keys: HashMap::new(), order: VecDeque::new() }
    }

    /// Whether `key` was seen within the window; records it otherwise.
    pub(super) fn repeat(&mut self, key: String) -> bool {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        if self.keys.contains_key(&key) {
            return true;
        }
        self.keys.insert(key.clone(), now);
        self.order.push_back((now, key));
        false
    }
}

pub(super) struct KafkaSubscription {
    pub(super) rx: mpsc::Receiver<Pending>,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) recent: Recent,
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub(super) fn settle(shared: &Shared, partition: i32, offset: i64) {
    if let Ok(mut t) = shared.state.lock()
        && let Some(open) = t.open.get_mut(&partition)
        && open.remove(&offset)
    {
        shared.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let due = {
                let mut t = self.shared.state.lock().map_err(|_| BusError::Closed)?;
                match t.redeliver.front() {
                    Some(p) if p.due <= Instant::now() => t.redeliver.pop_front(),
                    _ => None,
                }
            };
            let pending = match due {
                Some(p) => p,
                None => {
                    let wake = {
                        let t = self.shared.state.lock().map_err(|_| BusError::Closed)?;
                        t.redeliver.iter().map(|p| p.due).min()
                    };
                    let sleep = async {
                        match wake {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    };
                    tokio::select! {
                        message = self.rx.recv() => match message {
                            Some(p) => {
                                if self.recent.repeat(event::dedup_key(&p.subject.to_string(), &p.event)) {
                                    settle(&self.shared, p.partition, p.offset);
                                    continue;
                                }
                                p
                            }
                            None => return Err(BusError::Closed),
                        },
                        () = sleep => continue,
                    }
                }
            };
            let acker = Box::new(KafkaAcker {
                shared: self.shared.clone(),
                retained: Some(pending.clone_meta()),
            });
            return Ok(Delivery::new(
                pending.event.clone(),
                pending.subject.clone(),
                u64::try_from(pending.offset).unwrap_or(0),
                pending.attempt,
                pending.published_at,
                acker,
            ));
        }
    }
}

impl Pending {
    pub(super) fn clone_meta(&self) -> Self {
        Self {
            partition: self.partition,
            offset: self.offset,
            event: self.event.clone(),
            subject: self.subject.clone(),
            published_at: self.published_at,
            attempt: self.attempt,
            due: self.due,
        }
    }
}

pub(super) struct KafkaAcker {
    pub(super) shared: Arc<Shared>,
    /// Kept for redelivery after a nack.
    pub(super) retained: Option<Pending>,
}

impl KafkaAcker {
    pub(super) fn redeliver(&mut self, delay: Duration) {
        let Some(mut p) = self.retained.take() else { return };
        p.attempt += 1;
        p.due = Instant::now() + delay;
        if let Ok(mut t) = self.shared.state.lock() {
            let at = t.redeliver.iter().position(|q| q.due > p.due).unwrap_or(t.redeliver.len());
            t.redeliver.insert(at, p);
        }
    }
}

impl Acker for KafkaAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        if let Some(p) = self.retained.take() {
            settle(&self.shared, p.partition, p.offset);
        }
        async { Ok(()) }.boxed()
    }

    fn nack(mut self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BusError>> {
        self.redeliver(delay);
        async { Ok(()) }.boxed()
    }

    fn abandon(mut self: Box<Self>) {
        self.redeliver(Duration::ZERO);
    }
}
