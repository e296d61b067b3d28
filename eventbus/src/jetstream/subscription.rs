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
}

impl JetStreamSubscription {
    pub(super) async fn pull(&mut self) -> Result<jetstream::Message, BusError> {
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
            let settle = Box::new(JetStreamAcker { acker, _keep_alive: stop });
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

pub(super) struct JetStreamAcker {
    pub(super) acker: Arc<jetstream::message::Acker>,
    /// Dropping it stops the keep-alive task.
    pub(super) _keep_alive: oneshot::Sender<()>,
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
