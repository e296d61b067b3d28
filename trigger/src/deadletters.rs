//! The dead-letter store of a subscriber: what failed for good, kept on the bus, to list,
//! show, redrive and purge (`ofe deadletters`).
//!
//! A subscriber without a dead letter of its own publishes what fails for good to its
//! dead-letter topic on the bus ([`crate::dead_letter_topic`]). The store is a durable
//! consumer of that topic (`deadletters.<namespace>.<trigger>.<index>`) that reads every
//! letter and holds it unacknowledged: holding is keeping, so the letters stay on the bus
//! across restarts and within the bus's retention, and the store's lag is exactly what it
//! keeps. A letter leaves the store only by being acknowledged: when a redrive delivered it,
//! or when it is purged.

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudevents::{AttributesReader as _, Event};
use futures::StreamExt as _;
use ofe_core::{BusError, Delivery, EventBus, StartPosition, Subject, SubscribeOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::delivery::{
    Deliverer, EXT_ERROR_ATTEMPTS, EXT_ERROR_CODE, EXT_ERROR_DATA, EXT_ERROR_DEST,
    EXT_ERROR_REASON, Outcome,
};
use crate::metrics::{SubscriberLabels, TriggerMetrics};
use crate::runner::{LAG_INTERVAL, SubscriberPlan};
use ofe_core::tap::Stage;

/// Most letters one store holds in memory at once. More wait on the bus, counted in the
/// gauge, and come into the store as held ones are redriven or purged.
pub const MAX_HELD: usize = 10_000;

/// The longest a store reads the bus in before it answers its first command.
pub const CATCH_UP_MOST: std::time::Duration = std::time::Duration::from_secs(5);

/// The durable consumer that keeps subscriber `labels`'s dead letters.
pub fn consumer(labels: &SubscriberLabels) -> String {
    format!("deadletters.{}.{}.{}", labels.namespace, labels.trigger, labels.subscriber)
}

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store stopped (the subscriber was removed or the process is stopping).
    #[error("the dead-letter store of this subscriber has stopped; try again once it runs")]
    Stopped,
    /// Acknowledging a letter on the bus failed: it is still in the store.
    #[error("the bus refused to remove the letter")]
    Bus(#[source] BusError),
}

/// One letter, as `ofe deadletters list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// Its position in the dead-letter topic.
    pub sequence: u64,
    /// The event's `id`.
    pub id: String,
    /// The event's `source`.
    pub source: String,
    /// The event's `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// The destination that failed.
    pub destination: String,
    /// Why it failed.
    pub reason: String,
    /// The destination's status code (0: none, e.g. a timeout).
    pub code: i64,
    /// Attempts made.
    pub attempts: i64,
}

/// Which letters an action is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Every letter held.
    All,
    /// The letters of these event ids.
    Ids(Vec<String>),
}

impl Selection {
    fn takes(&self, event: &Event) -> bool {
        match self {
            Self::All => true,
            Self::Ids(ids) => ids.iter().any(|id| id == event.id()),
        }
    }
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    /// Ids delivered and removed from the store.
    pub delivered: Vec<String>,
    /// Ids that failed again, with why; they stay in the store.
    pub failed: Vec<(String, String)>,
    /// Letters still in the store afterwards.
    pub remaining: u64,
}

enum Command {
    List(oneshot::Sender<Vec<Letter>>),
    Show(String, oneshot::Sender<Vec<Event>>),
    Redrive(Selection, oneshot::Sender<Redriven>),
    Purge(Selection, oneshot::Sender<Result<Vec<String>, StoreError>>),
}

/// A handle on a running store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    commands: mpsc::Sender<Command>,
}

impl Store {
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Every letter held, oldest first.
    pub async fn list(&self) -> Result<Vec<Letter>, StoreError> {
        self.ask(Command::List).await.ok_or(StoreError::Stopped)
    }

    /// The letters of event `id`, whole (with their `ofeerror*` extensions).
    pub async fn show(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        self.ask(|tx| Command::Show(id.to_string(), tx)).await.ok_or(StoreError::Stopped)
    }

    /// Sends the selected letters again through the subscriber's delivery (its retries and
    /// timeout), to the destination that failed; removes each once delivered.
    pub async fn redrive(&self, selection: Selection) -> Result<Redriven, StoreError> {
        self.ask(|tx| Command::Redrive(selection, tx)).await.ok_or(StoreError::Stopped)
    }

    /// Removes the selected letters for good; returns their ids.
    pub async fn purge(&self, selection: Selection) -> Result<Vec<String>, StoreError> {
        self.ask(|tx| Command::Purge(selection, tx)).await.ok_or(StoreError::Stopped)?
    }
}

/// A subscriber's dead-letter store, opened when first needed: when the subscriber first
/// keeps a letter in this process, when a tool asks for its letters, or at start when the
/// bus says it holds some. A subscriber that never failed costs no consumer (10,000 Triggers
/// would otherwise start 10,000 more). Cheap to share.
pub struct Lazy {
    plan: Arc<SubscriberPlan>,
    topic: Subject,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    shutdown: CancellationToken,
    store: tokio::sync::OnceCell<Store>,
    on_open: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy").field("consumer", &self.plan.consumer).finish_non_exhaustive()
    }
}

impl Lazy {
    /// The store of `plan`'s letters on `topic`, not opened yet; once open, it runs until
    /// `shutdown`.
    pub fn new(
        plan: Arc<SubscriberPlan>,
        topic: Subject,
        deliverer: Deliverer,
        metrics: TriggerMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            plan,
            topic,
            deliverer,
            metrics,
            shutdown,
            store: tokio::sync::OnceCell::new(),
            on_open: None,
        }
    }

    /// The same store, calling `f` once it has opened (to note on the bus that it holds
    /// letters, so the next start opens it at once).
    pub fn on_open(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_open = Some(Box::new(f));
        self
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.store.initialized()
    }

    /// The topic it keeps.
    pub fn topic(&self) -> &Subject {
        &self.topic
    }

    /// The store, opened first if it is not: its consumer is created, and what the bus holds
    /// is read in before the first answer.
    pub async fn store(&self) -> Result<&Store, BusError> {
        self.store
            .get_or_try_init(|| async {
                let (store, keeper) = open(
                    &self.plan,
                    self.topic.clone(),
                    self.deliverer.clone(),
                    self.metrics.clone(),
                    self.shutdown.clone(),
                )
                .await?;
                let consumer = self.plan.consumer.clone();
                tokio::spawn(async move {
                    if let Err(error) = keeper.await {
                        tracing::error!(%consumer, error = %ofe_core::Report(&error), "the dead-letter store stopped");
                    }
                });
                if let Some(f) = &self.on_open {
                    f();
                }
                Ok(store)
            })
            .await
    }
}

/// What the store's task needs.
struct Keeper {
    plan: SubscriberPlan,
    bus: Arc<dyn EventBus>,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    consumer: String,
    shutdown: CancellationToken,
    /// Per sequence, the letter, held unacknowledged.
    held: BTreeMap<u64, Delivery>,
}

/// Opens the store of `plan`'s dead letters on `topic` (a new consumer starts with the
/// oldest letter the bus holds). The future runs the store until `shutdown`; what it holds
/// then stays on the bus for the next start.
async fn open(
    plan: &SubscriberPlan,
    topic: Subject,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    shutdown: CancellationToken,
) -> Result<
    (Store, impl std::future::Future<Output = Result<(), BusError>> + Send + 'static),
    BusError,
> {
    let bus = deliverer.bus().clone();
    // Keyed as the subscriber's own deliveries were, so a sink that saw an event before it
    // failed can tell the redrive by its Idempotency-Key.
    let deliverer = deliverer.for_subscriber(&plan.consumer);
    let consumer = consumer(&plan.labels);
    let mut options = SubscribeOptions::new(consumer.clone(), vec![topic]);
    options.max_in_flight = MAX_HELD;
    options.start = StartPosition::All;
    let subscription = bus.subscribe(options).await?;
    let (commands, receiver) = mpsc::channel(16);
    let keeper = Keeper {
        plan: plan.clone(),
        bus,
        deliverer,
        metrics,
        consumer,
        shutdown,
        held: BTreeMap::new(),
    };
    Ok((Store { commands }, keeper.run(subscription, receiver)))
}

impl Keeper {
    async fn run(
        mut self,
        mut subscription: Box<dyn ofe_core::Subscription>,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), BusError> {
        struct Remove(TriggerMetrics, SubscriberLabels);
        impl Drop for Remove {
            fn drop(&mut self) {
                self.0.dead_letters.remove(&self.1);
            }
        }
        let _remove = Remove(self.metrics.clone(), self.plan.labels.clone());
        self.catch_up(subscription.as_mut()).await?;
        self.count().await;
        let mut tick = tokio::time::interval(LAG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = self.held.len() < MAX_HELD;
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                // Reads are cancel-safe: a command or a tick that wins drops nothing.
                d = subscription.next(), if room => match d {
                    Ok(d) => {
                        // A redelivery (after a restart of the bus's side) replaces what was
                        // held under its sequence.
                        self.held.insert(d.sequence, d);
                        self.count().await;
                    }
                    Err(BusError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                },
                Some(command) = commands.recv() => {
                    // Take in what the bus already handed over, so an answer includes a
                    // letter published just before it was asked for.
                    while self.held.len() < MAX_HELD {
                        let Some(d) = futures::FutureExt::now_or_never(subscription.next()) else {
                            break;
                        };
                        match d {
                            Ok(d) => { self.held.insert(d.sequence, d); }
                            Err(BusError::Closed) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                    self.serve(command).await;
                    self.count().await;
                }
                _ = tick.tick() => self.count().await,
            }
        }
    }

    /// Reads in what the bus holds before the first command is answered: until the
    /// consumer's lag says all is read (beside the letters held, which are read but never
    /// settled), or the bus goes quiet (3 s for a first letter, which covers a Kafka group
    /// joining; half a second after one), and for [`CATCH_UP_MOST`] at the most: while a sink
    /// keeps failing, letters keep coming, and the bus would never go quiet. What comes after
    /// is read in as it comes.
    async fn catch_up(
        &mut self,
        subscription: &mut dyn ofe_core::Subscription,
    ) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + CATCH_UP_MOST;
        while self.held.len() < MAX_HELD && tokio::time::Instant::now() < deadline {
            let quiet = if self.held.is_empty() {
                std::time::Duration::from_secs(3)
            } else {
                std::time::Duration::from_millis(500)
            };
            let bus = self.bus.as_ref();
            let held = self.held.len();
            match crate::next_until_caught_up(bus, &self.consumer, subscription, quiet, held)
                .await?
            {
                Some(d) => {
                    self.held.insert(d.sequence, d);
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    async fn serve(&mut self, command: Command) {
        match command {
            Command::List(tx) => {
                let letters = self.held.values().map(letter).collect();
                let _ = tx.send(letters);
            }
            Command::Show(id, tx) => {
                let events = self
                    .held
                    .values()
                    .filter(|d| d.event.id() == id)
                    .map(|d| Event::clone(&d.event))
                    .collect();
                let _ = tx.send(events);
            }
            Command::Redrive(selection, tx) => {
                let _ = tx.send(self.redrive(&selection).await);
            }
            Command::Purge(selection, tx) => {
                let _ = tx.send(self.purge(&selection).await);
            }
        }
    }

    fn take(&mut self, selection: &Selection) -> Vec<Delivery> {
        let chosen: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, d)| selection.takes(&d.event))
            .map(|(seq, _)| *seq)
            .collect();
        chosen.iter().filter_map(|seq| self.held.remove(seq)).collect()
    }

    async fn purge(&mut self, selection: &Selection) -> Result<Vec<String>, StoreError> {
        let mut purged = Vec::new();
        for delivery in self.take(selection) {
            let id = delivery.event.id().to_string();
            delivery.ack().await.map_err(StoreError::Bus)?;
            tracing::info!(subscriber = ?self.plan.labels, %id, "dead letter purged");
            purged.push(id);
        }
        Ok(purged)
    }

    async fn redrive(&mut self, selection: &Selection) -> Redriven {
        let chosen = self.take(selection);
        let (keeper, labels) = (&*self, &self.plan.labels);
        // As many at once as the subscriber delivers at once, in the store's order.
        let outcomes: Vec<_> = futures::stream::iter(chosen)
            .map(|delivery| async move {
                let outcome = keeper.send_again(&delivery.event).await;
                (delivery, outcome)
            })
            .buffered(self.plan.max_in_flight.max(1))
            .collect()
            .await;
        let mut report = Redriven::default();
        let mut back = Vec::new();
        for (delivery, outcome) in outcomes {
            let id = delivery.event.id().to_string();
            match outcome {
                Ok(()) => match delivery.ack().await {
                    Ok(()) => {
                        self.metrics.delivered.get_or_create(labels).inc();
                        tracing::info!(subscriber = ?labels, %id, "dead letter redriven");
                        report.delivered.push(id);
                    }
                    // Delivered, but still on the bus: a later redrive may send it again,
                    // which its Idempotency-Key lets the sink tell.
                    Err(e) => report.failed.push((id, ofe_core::chain(&e))),
                },
                Err(reason) => {
                    report.failed.push((id, reason));
                    back.push(delivery);
                }
            }
        }
        for delivery in back {
            self.held.insert(delivery.sequence, delivery);
        }
        report.remaining = self.held.len() as u64;
        report
    }

    /// Delivers the event a letter holds, as it was before it failed, to the route that
    /// failed (every route, when the Trigger no longer has that destination). A letter holds
    /// the event as the subscriber received it, so the subscriber's transform runs again.
    async fn send_again(&self, letter: &Event) -> Result<(), String> {
        let event = original(letter);
        let event = match &self.plan.transform {
            Some(transform) => transform.apply(&event).map_err(|e| e.to_string())?,
            None => event,
        };
        let failed = letter.extension(EXT_ERROR_DEST).map(ToString::to_string);
        let routes: Vec<_> = self
            .plan
            .routes
            .iter()
            .filter(|r| failed.as_deref().is_some_and(|d| d == r.destination.to_string()))
            .collect();
        let routes = if routes.is_empty() { self.plan.routes.iter().collect() } else { routes };
        let labels = &self.plan.labels;
        let event = Arc::new(event);
        for route in routes {
            let on_retry = |failure: &crate::delivery::Failure| {
                self.metrics.retried.get_or_create(labels).inc();
                self.metrics.tap(Stage::Retrying, labels, &event, || {
                    Some(format!("redrive to {}: {}", route.destination, failure.reason))
                });
            };
            let outcome = self
                .deliverer
                .send(&route.destination, &event, &self.plan.retry, &self.shutdown, on_retry)
                .await;
            match outcome {
                Outcome::Delivered(..) => {
                    // Delivered at last: counted and shown like any delivery.
                    self.metrics.delivered.get_or_create(labels).inc();
                    self.metrics.tap(Stage::Delivered, labels, &event, || {
                        Some(format!("to {} (redriven)", route.destination))
                    });
                }
                Outcome::Failed(failure, attempts) => {
                    return Err(format!("{} (after {attempts} attempts)", failure.reason));
                }
                Outcome::Interrupted => return Err("ofe is stopping".into()),
            }
        }
        Ok(())
    }

    /// Sets the gauge: the letters held, and when the store is full, what its consumer has
    /// not settled (which counts those waiting on the bus too). Only then the lag: on Kafka it
    /// counts every record of the bus's topic after the oldest held letter, other subjects'
    /// included.
    async fn count(&self) {
        let held = self.held.len() as u64;
        let total = if self.held.len() < MAX_HELD {
            held
        } else {
            match self.bus.lag(&self.consumer).await {
                Ok(Some(lag)) => lag.max(held),
                _ => held,
            }
        };
        let gauge = self.metrics.dead_letters.get_or_create(&self.plan.labels);
        gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

/// The event a letter holds, without what the dead-lettering added.
pub fn original(letter: &Event) -> Event {
    let mut event = letter.clone();
    for name in
        [EXT_ERROR_DEST, EXT_ERROR_CODE, EXT_ERROR_REASON, EXT_ERROR_ATTEMPTS, EXT_ERROR_DATA]
    {
        event.remove_extension(name);
    }
    event
}

fn letter(delivery: &Delivery) -> Letter {
    let event = &delivery.event;
    let text = |name: &str| event.extension(name).map(ToString::to_string).unwrap_or_default();
    let number = |name: &str| match event.extension(name) {
        Some(cloudevents::event::ExtensionValue::Integer(n)) => *n,
        Some(other) => other.to_string().parse().unwrap_or(0),
        None => 0,
    };
    Letter {
        sequence: delivery.sequence,
        id: event.id().to_string(),
        source: event.source().to_string(),
        ty: event.ty().to_string(),
        dead_lettered_at: delivery
            .published_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        destination: text(EXT_ERROR_DEST),
        reason: text(EXT_ERROR_REASON),
        code: number(EXT_ERROR_CODE),
        attempts: number(EXT_ERROR_ATTEMPTS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder as _, EventBuilderV10};

    #[test]
    fn the_original_event_comes_back_without_the_error_context() {
        let event = EventBuilderV10::new()
            .id("a-1")
            .source("/fleet")
            .ty("alert")
            .extension("vehicle", "v7")
            .build()
            .expect("event");
        let mut letter = event.clone();
        letter.set_extension(EXT_ERROR_DEST, "http://fn");
        letter.set_extension(EXT_ERROR_REASON, "500");
        letter.set_extension(EXT_ERROR_CODE, 500i64);
        letter.set_extension(EXT_ERROR_ATTEMPTS, 4i64);
        letter.set_extension(EXT_ERROR_DATA, "Ym9vbQ==");
        assert_eq!(original(&letter), event);
        assert!(Selection::Ids(vec!["a-1".into()]).takes(&letter));
        assert!(!Selection::Ids(vec!["a-2".into()]).takes(&letter));
        assert!(Selection::All.takes(&letter));
    }
}
