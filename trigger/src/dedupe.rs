//! Durable deduplication of a subscriber's deliveries (`delivery.dedupe: true`).
//!
//! After an event was settled (delivered, or dead-lettered) and before its bus delivery is
//! acknowledged, the subscriber publishes a marker with the event's `Idempotency-Key` to its
//! topic `<trigger>.delivered.<index>` on the bus. Every process that runs the subscriber reads
//! those markers (a consumer of its own, started a window back, so a restart reloads them
//! before it delivers anything) into a bounded set, and an event whose key is in the set is
//! acknowledged without being sent again: a redelivery after a crash (an acknowledgement that
//! did not reach the bus, a Kafka offset not yet committed), a router re-queuing after a
//! crash, or the same event from upstream again after the bus's own duplicate window.
//!
//! What it cannot catch: an event whose destination answered in the moment before the marker
//! was durable (a kill -9 then re-sends it, with the same `Idempotency-Key`, which an
//! idempotent function drops).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader as _, EventBuilder as _, EventBuilderV10};
use ofe_core::{BusError, EventBus, StartPosition, Subject, SubscribeOptions, Subscription};
use tokio_util::sync::CancellationToken;

/// Keys one subscriber remembers at most; the oldest go first. About 100 bytes each: 10 MB.
pub const MAX_KEYS: usize = 100_000;

/// How long a subscriber remembers what it delivered, unless `delivery.dedupeWindow` says.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// How long a start waits without a marker before it takes the window as read (the bus
/// cannot always tell: Kafka counts other subjects' records in a lag).
const LOAD_IDLE: Duration = Duration::from_secs(2);

/// The topic of subscriber `index` of Trigger `trigger` where its delivered keys are kept.
pub fn topic(trigger: &str, index: &str) -> String {
    format!("{trigger}.delivered.{index}")
}

#[derive(Default)]
struct Keys {
    seen: HashMap<String, DateTime<Utc>>,
    order: VecDeque<(DateTime<Utc>, String)>,
}

impl Keys {
    fn insert(&mut self, key: String, at: DateTime<Utc>, window: Duration) {
        // The first time a key was settled is what counts: a second marker changes nothing.
        if !self.seen.contains_key(&key) {
            self.seen.insert(key.clone(), at);
            self.order.push_back((at, key));
        }
        let oldest = at - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        while let Some((t, k)) = self.order.front() {
            if *t >= oldest && self.order.len() <= MAX_KEYS {
                break;
            }
            if self.seen.get(k) == Some(t) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
    }
}

/// A subscriber's record of what it delivered. Cheap to share.
pub struct Dedupe {
    bus: Arc<dyn EventBus>,
    subject: Subject,
    source: String,
    window: Duration,
    keys: Mutex<Keys>,
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe").field("subject", &self.subject.to_string()).finish_non_exhaustive()
    }
}

impl Dedupe {
    /// Opens the record of subscriber `consumer` on `subject`, reading the markers of the last
    /// `window` before it returns; `follow` then reads what other processes record, until
    /// `stop`. `reader` names this process's consumer of the markers (one per process: each
    /// reads them all).
    pub async fn open(
        bus: Arc<dyn EventBus>,
        consumer: &str,
        subject: Subject,
        window: Duration,
        reader: &str,
        stop: CancellationToken,
    ) -> Result<(Arc<Self>, impl std::future::Future<Output = ()> + Send + use<>), BusError> {
        // A consumer this process left behind would carry on from where it was, not from a
        // window back: start it afresh.
        bus.remove_consumer(reader).await?;
        let from = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
        let mut options = SubscribeOptions::new(reader, vec![subject.clone()]);
        options.start = StartPosition::Time(from);
        options.max_in_flight = 1024;
        let mut markers = bus.subscribe(options).await?;
        let dedupe = Arc::new(Self {
            bus: bus.clone(),
            subject,
            source: format!("ofe/dedupe/{consumer}"),
            window,
            keys: Mutex::new(Keys::default()),
        });
        // Load what the window holds before anything is delivered.
        while let Some(d) =
            crate::next_until_caught_up(bus.as_ref(), reader, markers.as_mut(), LOAD_IDLE, 0)
                .await?
        {
            dedupe.remember(d.event.id(), d.published_at);
            d.ack().await?;
        }
        let follower = dedupe.clone();
        let follow = async move { follower.follow(markers, stop).await };
        Ok((dedupe, follow))
    }

    async fn follow(&self, mut markers: Box<dyn Subscription>, stop: CancellationToken) {
        loop {
            let delivery = tokio::select! {
                () = stop.cancelled() => return,
                d = markers.next() => d,
            };
            match delivery {
                Ok(d) => {
                    self.remember(d.event.id(), d.published_at);
                    if let Err(e) = d.ack().await {
                        tracing::debug!(error = %ofe_core::Report(&e), "cannot acknowledge a delivered-key marker");
                    }
                }
                Err(BusError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %ofe_core::Report(&e), "reading the delivered keys failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // A panic mid-update leaves plain data behind, still usable.
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, key: &str, at: DateTime<Utc>) {
        self.lock().insert(key.to_string(), at, self.window);
    }

    /// Whether the event of `key` was settled within the window.
    pub fn seen(&self, key: &str) -> bool {
        let oldest = Utc::now() - chrono::Duration::from_std(self.window).unwrap_or_default();
        self.lock().seen.get(key).is_some_and(|at| *at >= oldest)
    }

    /// Records durably that the event of `key` was settled.
    pub async fn record(&self, key: &str) -> Result<(), BusError> {
        let marker = EventBuilderV10::new()
            .id(key)
            .source(self.source.as_str())
            .ty("io.openfunction.ofe.delivered")
            .build()
            .map_err(|e| BusError::encode("a delivered-key marker").because(e))?;
        self.bus.publish(&self.subject, &marker).await?;
        self.remember(key, Utc::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_leave_with_the_window_and_beyond_the_bound() {
        let mut keys = Keys::default();
        let t0 = Utc::now();
        keys.insert("a".into(), t0, Duration::from_secs(10));
        keys.insert("b".into(), t0 + chrono::Duration::seconds(5), Duration::from_secs(10));
        assert!(keys.seen.contains_key("a"));
        keys.insert("c".into(), t0 + chrono::Duration::seconds(12), Duration::from_secs(10));
        assert!(!keys.seen.contains_key("a"), "out of the window");
        assert!(keys.seen.contains_key("b") && keys.seen.contains_key("c"));
        for n in 0..MAX_KEYS + 5 {
            keys.insert(
                format!("k{n}"),
                t0 + chrono::Duration::seconds(12),
                Duration::from_secs(10),
            );
        }
        assert_eq!(keys.seen.len(), MAX_KEYS, "bounded");
        assert!(!keys.seen.contains_key("k0"), "the oldest go first");
    }
}
