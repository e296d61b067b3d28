//! JetStream consumers: pull subscriptions, progress acks while a delivery is held, and settlement.

use super::*;

pub(super) struct JetStreamSubscription {
    /// The stream's subject prefix, to read subjects back.
    pub(super) prefix: Arc<str>,
    /// On a server that cannot filter by several subjects: the subjects to keep (wire form);
    /// any other message is acknowledged and skipped.
    pub(super) keep_only: Option<std::collections::BTreeSet<String>>,
    pub(super) consumer: consumer::PullConsumer,
    pub(super) messages: Option<consumer::pull::Stream>,
    pub(super) batch: usize,
    pub(super) ack_wait: Duration,
    pub(super) backoff: Duration,
    /// Whether the last pull failed; the recovery is logged once, when it ends.
    pub(super) failing: bool,
    /// When the last message was taken from the pull stream.
    pub(super) last_read: Option<std::time::Instant>,
    /// What a stopped stream had fetched, handed out before anything else.
    pub(super) held: std::collections::VecDeque<jetstream::Message>,
    /// Deliveries handed out and not settled yet.
    pub(super) outstanding: Arc<std::sync::atomic::AtomicUsize>,
    /// After a stopped stream lost messages on their way to it: no new stream before this,
    /// so that the server sends them again first.
    pub(super) resume_at: Option<tokio::time::Instant>,
}

impl JetStreamSubscription {
    pub(super) async fn pull(&mut self) -> Result<jetstream::Message, BusError> {
        self.stop_fetching_if_idle().await;
        if let Some(message) = self.held.pop_front() {
            self.last_read = Some(std::time::Instant::now());
            return Ok(message);
        }
        if let Some(at) = self.resume_at.take() {
            tokio::time::sleep_until(at).await;
        }
        loop {
            if self.messages.is_none() {
                match self.consumer.stream().max_messages_per_batch(self.batch).messages().await {
                    Ok(stream) => self.messages = Some(stream),
                    Err(e) => {
                        self.wait_after_error(&e.to_string()).await;
                        continue;
                    }
                }
            }
            let next = match self.messages.as_mut() {
                Some(stream) => stream.next().await,
                None => continue,
            };
            match next {
                Some(Ok(message)) => {
                    self.last_read = Some(std::time::Instant::now());
                    if self.failing {
                        tracing::info!("JetStream consumer recovered");
                        self.failing = false;
                    }
                    self.backoff = Duration::from_millis(100);
                    return Ok(message);
                }
                Some(Err(e)) => {
                    self.messages = None;
                    self.wait_after_error(&e.to_string()).await;
                }
                None => {
                    self.messages = None;
                    return Err(BusError::Closed);
                }
            }
        }
    }

    /// The pull stream fetches ahead of what the subscriber takes, and what it fetched waits
    /// unseen, its ack wait running, while the subscriber does not ask (it is paused, or its
    /// sink holds every delivery slot). Left there past the ack wait, the server would send it
    /// again and both copies would be delivered. So after a third of the ack wait without a
    /// read, the stream is dropped (it fetches no more) and what it held is taken out:
    /// - while well inside its ack wait (two thirds of it), it is kept and handed out first,
    ///   in order;
    /// - later than that, it is let go, for the server to send again once its ack wait ends.
    ///
    /// Messages on their way to the dropped stream are lost to it the same way. The consumer's
    /// count of unacknowledged messages tells: if it holds more than this subscription kept
    /// and handed out, no new stream starts until one ack wait has passed, so that the server
    /// sends those again first and in order. (A NAK is not enough: the server may give a
    /// message back to the dropped stream's pull request.)
    async fn stop_fetching_if_idle(&mut self) {
        let Some(last) = self.last_read else { return };
        if last.elapsed() <= self.ack_wait / 3 {
            return;
        }
        let Some(mut stream) = self.messages.take() else { return };
        self.last_read = None;
        let mut fetched = Vec::new();
        while let Some(Some(Ok(message))) = stream.next().now_or_never() {
            fetched.push(message);
        }
        drop(stream);
        if last.elapsed() < self.ack_wait * 2 / 3 {
            self.held.extend(fetched);
        } else {
            drop(fetched);
        }
        let ours = self.held.len() + self.outstanding.load(std::sync::atomic::Ordering::SeqCst);
        let pending = match self.consumer.get_info().await {
            Ok(info) => info.num_ack_pending,
            // Unknown: assume the worst.
            Err(_) => usize::MAX,
        };
        if pending > ours {
            tracing::debug!(
                pending,
                ours,
                "messages fetched before a pause in reading will come again after the ack wait"
            );
            self.resume_at =
                Some(tokio::time::Instant::now() + self.ack_wait + Duration::from_millis(500));
        }
    }

    pub(super) async fn wait_after_error(&mut self, error: &str) {
        if self.failing {
            tracing::debug!(%error, "JetStream consumer still failing");
        } else {
            tracing::warn!(%error, "JetStream consumer failed; retrying with backoff");
            self.failing = true;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let message = self.pull().await?;
            let (sequence, attempt, published_at) = match message.info() {
                Ok(info) => {
                    let nanos = info.published.unix_timestamp_nanos();
                    let published = i64::try_from(nanos).ok().map(DateTime::from_timestamp_nanos);
                    (
                        info.stream_sequence,
                        u32::try_from(info.delivered).unwrap_or(u32::MAX),
                        published,
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, "JetStream message without metadata; skipping");
                    continue;
                }
            };
            if let Some(keep) = &self.keep_only
                && !keep.contains(message.subject.as_str())
            {
                let _ = message.ack().await;
                continue;
            }
            let subject = from_wire(&self.prefix, message.subject.as_str());
            let decoded = nats::decode(message.headers.as_ref(), &message.payload);
            let (message, acker) = message.split();
            let (Some(subject), Ok(event)) = (subject, decoded) else {
                // A message that is not a CloudEvent can never be processed here: terminate it
                // so it does not come back, and say so loudly.
                tracing::error!(subject = %message.subject, "undecodable message on the bus; terminating it");
                let _ = acker.ack_with(AckKind::Term).await;
                continue;
            };
            let acker = Arc::new(acker);
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(keep_alive(acker.clone(), self.ack_wait, stopped));
            self.outstanding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let outstanding = Outstanding(self.outstanding.clone());
            let settle =
                Box::new(JetStreamAcker { acker, _keep_alive: stop, _outstanding: outstanding });
            return Ok(Delivery::new(
                Arc::new(event),
                subject,
                sequence,
                attempt,
                published_at.unwrap_or_else(Utc::now),
                settle,
            ));
        }
    }
}

/// Sends progress acks while a delivery is held, so the server does not redeliver an event
/// that is still being worked on. Stops when the delivery is settled.
pub(super) async fn keep_alive(
    acker: Arc<jetstream::message::Acker>,
    ack_wait: Duration,
    stopped: oneshot::Receiver<()>,
) {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(every) => {
                if acker.ack_with(AckKind::Progress).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One delivery counted in its subscription's `outstanding` until it is settled (dropped).
pub(super) struct Outstanding(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(super) struct JetStreamAcker {
    pub(super) acker: Arc<jetstream::message::Acker>,
    /// Dropping it stops the keep-alive task.
    pub(super) _keep_alive: oneshot::Sender<()>,
    /// Dropping it (once settled) takes the delivery out of its subscription's count.
    pub(super) _outstanding: Outstanding,
}

impl Acker for JetStreamAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        // A plain ack, not a confirmed one: waiting for the server per message would cap a
        // consumer at one round trip per event, and a lost ack only means a redelivery, which
        // at-least-once already allows.
        async move { self.acker.ack().await.map_err(unavailable("cannot acknowledge the message")) }
            .boxed()
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BusError>> {
        async move {
            self.acker
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(unavailable("cannot return the message"))
        }
        .boxed()
    }

    fn abandon(self: Box<Self>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = self.acker.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}
