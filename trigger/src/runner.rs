//! Running one subscriber: a durable bus consumer on its queue, and bounded concurrent
//! delivery.
//!
//! Each subscriber of a Trigger has a durable consumer of its own (named after the Trigger and
//! the subscriber's index) on the queue the [router](crate::router) fills, so replicas share
//! its work, and a slow or failing destination holds back only its own subscriber, never the
//! others.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudevents::AttributesReader as _;
use futures::FutureExt as _;
use futures::future::Shared;
use ofe_core::{
    BusError, Delivery, EventBus, StartPosition, Subject, SubscribeOptions, Subscription,
};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Deliverer, Destination, Failure, Outcome, RetryPolicy, dead_letter_event};
use crate::filter::EventData;
use crate::metrics::{SubscriberLabels, TriggerMetrics};
use crate::router::{EXT_POISON, KeyExpr, Routing};
use ofe_core::tap::Stage;
use ofe_core::trace::{self, KeyValue, SpanKind};

/// How long a dead-letter failure waits before the event is tried again from the start.
const DEAD_LETTER_FAILED_DELAY: Duration = Duration::from_secs(5);

/// How often a subscriber's bus lag is sampled for its gauge. Asking costs a request to a
/// broker per subscriber, and autoscalers poll every 15 to 30 s.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// A destination and where its failures go.
#[derive(Clone, Debug)]
pub struct Route {
    /// Where the event is delivered.
    pub destination: Destination,
    /// Where it goes when that still fails after retries.
    pub dead_letter: Option<Destination>,
}

/// Everything one subscriber needs to run.
#[derive(Clone, Debug)]
pub struct SubscriberPlan {
    /// Metric labels, which also name it in logs.
    pub labels: SubscriberLabels,
    /// Durable consumer name.
    pub consumer: String,
    /// What its consumer reads: a Trigger subscriber's queue, or an EventSource's subjects
    /// for the EventSource's own sink.
    pub subjects: Vec<Subject>,
    /// For a Trigger subscriber, which events fire it: the router evaluates this and puts
    /// what fires on the queue. `None`: every event of `subjects` is delivered.
    pub routing: Option<Arc<Routing>>,
    /// Destinations, in order (sink first, then topic, as OpenFunction did).
    pub routes: Vec<Route>,
    /// Deliveries in flight at once.
    pub max_in_flight: usize,
    /// Retry settings.
    pub retry: RetryPolicy,
    /// Where the sink's CloudEvent replies are published; `None` ignores replies.
    pub reply: Option<Subject>,
    /// Events with the same value of this key are delivered one at a time, in order.
    pub order_key: Option<Arc<KeyExpr>>,
    /// Most events started per second.
    pub rate_limit: Option<u32>,
    /// Every event waits this long after it was put on the subscriber's queue.
    pub delay: Option<Duration>,
    /// How long it remembers what it delivered, to not send it again (`delivery.dedupe`).
    pub dedupe: Option<Duration>,
    /// A delivery that comes back from the bus more often than this (the process kept dying
    /// while holding it: a poison event) goes to the dead-letter destination instead.
    pub max_deliver: u32,
    /// Paused by its spec (`spec.paused`): it reads nothing until that changes.
    pub paused: bool,
    /// The topic where it keeps what fails for good, when it has no dead letter of its own
    /// and keeps them ([`crate::deadletters`]); `None`: it keeps none on the bus.
    pub dead_letters: Option<Subject>,
    /// Reshapes each event before its routes get it (`transform`); an event it cannot
    /// transform is dead-lettered with the reason.
    pub transform: Option<Arc<crate::transform::Transform>>,
    /// Delivers events in batches (`delivery.batch`); `None`: one at a time.
    pub batch: Option<Batch>,
}

/// How a subscriber batches (`delivery.batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The most events in one batch.
    pub max_size: usize,
    /// The longest the first event of a batch waits for more.
    pub max_wait: Duration,
}

impl Batch {
    /// `maxSize` unless set.
    pub const DEFAULT_SIZE: u32 = 100;
    /// The largest `maxSize`: a batch is one request body, held whole in memory.
    pub const MAX_SIZE: u32 = 10_000;
    /// `maxWait` unless set.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
}

/// Opens the subscriber's durable consumer. Do this for every subscriber before any source
/// starts, so that a consumer created now does not miss the first events.
pub async fn subscribe(
    plan: &SubscriberPlan,
    bus: &dyn EventBus,
) -> Result<Box<dyn Subscription>, BusError> {
    let subjects: BTreeSet<Subject> = plan.subjects.iter().cloned().collect();
    let options = SubscribeOptions {
        consumer: plan.consumer.clone(),
        subjects: subjects.into_iter().collect(),
        max_in_flight: plan.max_in_flight + waiting_room(plan),
        // A queue holds only what the router put there for this subscriber, so a new
        // consumer takes all of it; an EventSource's sink starts with new events.
        start: if plan.routing.is_some() { StartPosition::All } else { StartPosition::New },
        max_deliver: Some(plan.max_deliver),
    };
    bus.subscribe(options).await
}

/// Delayed events a subscriber's consumer leaves on the bus, unsettled, without holding back
/// the events behind them; more than this, and later events wait behind the delayed ones
/// (backpressure, nothing lost). A subscriber with `delivery.delay` delays every event and so
/// needs the larger room.
pub const DELAYED_WAITING: usize = 1_024;

/// [`DELAYED_WAITING`] for a subscriber with `delivery.delay`.
pub const DELAYED_WAITING_WITH_DELAY: usize = 10_000;

/// The room on the bus for `plan`'s delayed events, beside its deliveries in flight.
fn waiting_room(plan: &SubscriberPlan) -> usize {
    if plan.delay.is_some() { DELAYED_WAITING_WITH_DELAY } else { DELAYED_WAITING }
}

/// Runs a subscriber until `shutdown`, then lets in-flight deliveries finish for up to
/// `drain`; what is still unfinished then is left unacknowledged and is redelivered on the
/// next start.
///
/// While `paused` holds `true`, it reads nothing more from the bus (what it holds is
/// delivered): events wait on the bus, in order, and its lag grows.
pub async fn run(
    plan: SubscriberPlan,
    subscription: Box<dyn Subscription>,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    paused: Paused,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), BusError> {
    let lag = tokio::spawn(sample_lag(
        deliverer.bus().clone(),
        plan.consumer.clone(),
        metrics.clone(),
        plan.labels.clone(),
    ));
    let stop = Stop { shutdown, paused };
    let result = deliver_until(plan, subscription, deliverer, metrics, stop, drain).await;
    lag.abort();
    result
}

/// Sets the subscriber's lag gauge every [`LAG_INTERVAL`] until aborted, then removes it, so
/// a stopped subscriber leaves no stale backlog behind for an autoscaler.
async fn sample_lag(
    bus: Arc<dyn EventBus>,
    consumer: String,
    metrics: TriggerMetrics,
    labels: SubscriberLabels,
) {
    struct Remove(TriggerMetrics, SubscriberLabels);
    impl Drop for Remove {
        fn drop(&mut self) {
            self.0.lag.remove(&self.1);
        }
    }
    let _remove = Remove(metrics.clone(), labels.clone());
    // The first sample comes at a point of the interval that the consumer's name picks, not
    // at once: 10,000 subscribers starting together would otherwise ask the bus 10,000 times
    // at start-up (a twentieth of it, measured) and then again every interval in one burst.
    let offset = {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        consumer.hash(&mut hasher);
        let millis = u64::try_from(LAG_INTERVAL.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(hasher.finish() % millis)
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match bus.lag(&consumer).await {
            Ok(Some(lag)) => {
                metrics.lag.get_or_create(&labels).set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(error = %ofe_core::Report(&error), %consumer, "cannot read the bus lag")
            }
        }
    }
}

/// One running subscriber: what every delivery of it needs.
struct Subscriber {
    plan: SubscriberPlan,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    /// Cancelled when the drain time ends: deliveries still running give up then.
    interrupt: CancellationToken,
}

/// Whether a subscriber is paused: `true` stops it reading. A sender that goes away leaves
/// it as it last was.
pub type Paused = tokio::sync::watch::Receiver<bool>;

/// What stops a subscriber reading: shutdown for good, a pause until it is lifted.
struct Stop {
    shutdown: CancellationToken,
    paused: Paused,
}

impl Stop {
    /// Resolves once the subscriber is paused; never, if nothing can pause it any more.
    async fn pausing(&mut self) {
        // The guard `wait_for` gives is dropped at once: it must not be held across an await.
        let gone = self.paused.wait_for(|paused| *paused).await.is_err();
        if gone {
            std::future::pending::<()>().await;
        }
    }

    /// While paused, waits to be resumed; `false` if shutdown came first.
    async fn resumed(&mut self, labels: &SubscriberLabels) -> bool {
        if !*self.paused.borrow_and_update() {
            return true;
        }
        tracing::info!(subscriber = ?labels, "paused: reading nothing from the bus until resumed");
        let resumed = tokio::select! {
            () = self.shutdown.cancelled() => false,
            ok = async { self.paused.wait_for(|paused| !*paused).await.is_ok() } => {
                if !ok {
                    // Paused, and nothing left that could resume it.
                    self.shutdown.cancelled().await;
                }
                ok
            }
        };
        if resumed {
            tracing::info!(subscriber = ?labels, "resumed");
        }
        resumed
    }
}

async fn deliver_until(
    plan: SubscriberPlan,
    mut subscription: Box<dyn Subscription>,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    mut stop: Stop,
    drain: Duration,
) -> Result<(), BusError> {
    let shutdown = stop.shutdown.clone();
    let permits = Arc::new(Semaphore::new(plan.max_in_flight));
    // Deliveries keep going through shutdown until `drain` ends, so they get their own token.
    let interrupt = CancellationToken::new();
    let deliverer = deliverer.for_subscriber(&plan.consumer);
    let subscriber =
        Arc::new(Subscriber { plan, deliverer, metrics, interrupt: interrupt.clone() });
    let plan = &subscriber.plan;
    let mut tasks = JoinSet::new();
    // Per order key, the completion of the latest delivery of that key: the next one waits
    // for it.
    let mut order: HashMap<String, Shared<oneshot::Receiver<()>>> = HashMap::new();
    let mut next_start = tokio::time::Instant::now();
    let mut batcher = plan.batch.map(|batch| Batcher::new(batch, plan.order_key.is_some()));
    loop {
        if !stop.resumed(&plan.labels).await {
            break;
        }
        // A batch is sent when it is full, when its first event has waited `maxWait`, or when
        // the subscriber holds as many events as it may (a fuller batch cannot come).
        let deadline = batcher.as_ref().and_then(|b| b.deadline);
        if let Some(batcher) = &mut batcher
            && permits.available_permits() == 0
        {
            batcher.flush(&subscriber, &mut tasks);
        }
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            () = until(deadline) => {
                if let Some(batcher) = &mut batcher {
                    batcher.flush(&subscriber, &mut tasks);
                }
                continue;
            }
            p = permits.clone().acquire_owned() => p.map_err(|_| BusError::Closed)?,
        };
        // A pause while waiting for the bus takes effect at once: the read is dropped before
        // it took anything (reads are cancel-safe, as shutdown needs too). What a batch holds
        // is sent first.
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            () = stop.pausing() => {
                if let Some(batcher) = &mut batcher {
                    batcher.flush(&subscriber, &mut tasks);
                }
                continue;
            }
            () = until(deadline) => {
                if let Some(batcher) = &mut batcher {
                    batcher.flush(&subscriber, &mut tasks);
                }
                continue;
            }
            d = subscription.next() => match d {
                Ok(d) => d,
                Err(BusError::Closed) => break,
                Err(e) => return Err(e),
            },
        };
        while tasks.try_join_next().is_some() {}
        let hold = match due(plan, &delivery) {
            Ok(None) => None,
            Ok(Some(at)) if plan.order_key.is_none() => {
                // Back to the bus until it is due: later events that are due sooner go first,
                // and the bus keeps it through restarts and kill -9.
                let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                if let Err(error) = delivery.nack(wait).await {
                    tracing::warn!(error = %ofe_core::Report(&error), "cannot put a delayed event back on the bus; it comes back after the ack wait");
                }
                continue;
            }
            // Under an order key, order wins: the event is held here, in its key's turn.
            Ok(Some(at)) => Some(at),
            Err(reason) => {
                let subscriber = subscriber.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let failure = Failure { reason, ..Failure::default() };
                    subscriber.dead_letter_unattempted(delivery, &failure, 0).await;
                });
                continue;
            }
        };
        subscriber.metrics.stages.queue_wait.since(delivery.published_at);
        if plan.routing.is_none() {
            subscriber.metrics.received.get_or_create(&plan.labels).inc();
        }
        if delivery.attempt > plan.max_deliver {
            let subscriber = subscriber.clone();
            tasks.spawn(async move {
                let _permit = permit;
                subscriber.give_up(delivery).await;
            });
            continue;
        }
        if let Some(rate) = plan.rate_limit {
            // Paced, not bursty: one start every 1/rate seconds.
            next_start = next_start.max(tokio::time::Instant::now());
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_start) => {}
            }
            next_start += Duration::from_secs(1) / rate;
        }
        if let Some(batcher) = &mut batcher {
            // `hold` is always `None` here: `orderKey` with `delay` is refused with a batch.
            batcher.push(permit, delivery);
            if batcher.pending.len() >= batcher.batch.max_size {
                batcher.flush(&subscriber, &mut tasks);
            }
            continue;
        }
        let (done, after) = match &plan.order_key {
            None => (None, None),
            Some(expr) => match expr.key(&EventData::new(&delivery.event)) {
                // An event without the key has nothing to be ordered with.
                None => (None, None),
                Some(key) => {
                    if order.len() >= plan.max_in_flight.saturating_mul(4) {
                        order.retain(|_, done| done.peek().is_none());
                    }
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), order.insert(key, rx.shared()))
                }
            },
        };
        let subscriber = subscriber.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Some(previous) = after {
                // Ends when the previous delivery of the key settles, or its task is gone.
                let _ = previous.await;
            }
            if let Some(at) = hold {
                let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // Stopping: left unsettled, it is redelivered (and waits again) next start.
                    () = subscriber.interrupt.cancelled() => return,
                }
            }
            // Boxed: the delivery's future (an HTTP request and its retries) is kilobytes,
            // and a task's future is moved when spawned and written over when it ends.
            Box::pin(subscriber.deliver(delivery)).await;
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(subscriber = ?plan.labels, "deliveries still running at shutdown; they will be redelivered");
        interrupt.cancel();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The batch a batched subscriber is filling, each event with its in-flight permit (so
/// `maxConcurrency` counts events, batched or not).
struct Batcher {
    batch: Batch,
    pending: Vec<(tokio::sync::OwnedSemaphorePermit, Delivery)>,
    /// When the batch is sent even if not full: `maxWait` after its first event.
    deadline: Option<tokio::time::Instant>,
    /// With an order key, batches go one after another: the completion of the last one sent.
    previous: Option<Shared<oneshot::Receiver<()>>>,
    ordered: bool,
}

impl Batcher {
    fn new(batch: Batch, ordered: bool) -> Self {
        Self { batch, pending: Vec::new(), deadline: None, previous: None, ordered }
    }

    fn push(&mut self, permit: tokio::sync::OwnedSemaphorePermit, delivery: Delivery) {
        if self.pending.is_empty() {
            self.deadline = Some(tokio::time::Instant::now() + self.batch.max_wait);
        }
        self.pending.push((permit, delivery));
    }

    /// Sends what is pending as one batch, in a task of its own.
    fn flush(&mut self, subscriber: &Arc<Subscriber>, tasks: &mut JoinSet<()>) {
        self.deadline = None;
        if self.pending.is_empty() {
            return;
        }
        let (permits, deliveries): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        let (done, after) = if self.ordered {
            let (tx, rx) = oneshot::channel();
            (Some(tx), self.previous.replace(rx.shared()))
        } else {
            (None, None)
        };
        let subscriber = subscriber.clone();
        tasks.spawn(async move {
            let _permits = permits;
            if let Some(previous) = after {
                let _ = previous.await;
            }
            Box::pin(subscriber.deliver_batch(deliveries)).await;
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }
}

/// Extension attribute that delays an event until a time (RFC 3339).
pub const EXT_DELIVER_AT: &str = "ofedeliverat";

/// When `delivery` is due, if later than now: its queue time plus the subscriber's delay, or
/// its `ofedeliverat`, whichever is later. Computed from what the bus keeps, so a restart
/// computes the same. `Err` with the reason when `ofedeliverat` is not a time.
fn due(
    plan: &SubscriberPlan,
    delivery: &Delivery,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    let mut at = plan
        .delay
        .and_then(|d| chrono::Duration::from_std(d).ok().map(|d| delivery.published_at + d));
    if let Some(value) = delivery.event.extension(EXT_DELIVER_AT) {
        let time = ofe_crds::duration::parse_time(&value.to_string())
            .map_err(|message| format!("the extension {EXT_DELIVER_AT} {message}"))?;
        at = Some(at.map_or(time, |a| a.max(time)));
    }
    Ok(at.filter(|at| *at > chrono::Utc::now()))
}

impl Subscriber {
    /// Sends a delivery that exceeded `max_deliver` to every route's dead letter, unattempted.
    async fn give_up(&self, delivery: Delivery) {
        let plan = &self.plan;
        let failure = Failure {
            code: None,
            reason: format!(
                "delivered {} times without being settled (max_deliver {}); the process may be \
             crashing on this event",
                delivery.attempt, plan.max_deliver
            ),
            ..Failure::default()
        };
        let attempts = delivery.attempt;
        self.dead_letter_unattempted(delivery, &failure, attempts).await;
    }

    /// Sends `delivery` to every route's dead letter with `failure` and `attempts`, without
    /// attempting the destinations, and settles it: acknowledged once every dead letter has it.
    async fn dead_letter_unattempted(&self, delivery: Delivery, failure: &Failure, attempts: u32) {
        let plan = &self.plan;
        for route in &plan.routes {
            let span =
                deliver_span(&plan.labels, &route.destination, &delivery.event, delivery.attempt);
            span.fail(failure.reason.clone());
            let dead = self.dead_letter(route, &delivery.event, failure, attempts);
            if !dead_letter_traced(&span, route, dead).await {
                let _ = delivery.nack(DEAD_LETTER_FAILED_DELAY).await;
                return;
            }
        }
        if let Err(error) = delivery.ack().await {
            tracing::warn!(error = %ofe_core::Report(&error), "ack failed; the event may be delivered again");
        }
    }

    /// Sends `event` to `route`'s dead letter: its own, or by default the subscriber's
    /// dead-letter topic on the bus; drops it, logged and counted, when the subscriber opted
    /// out (`delivery.deadLetterStore: false`). `false` means the dead letter failed too and
    /// the event must stay on the bus.
    async fn dead_letter(
        &self,
        route: &Route,
        event: &cloudevents::Event,
        failure: &Failure,
        attempts: u32,
    ) -> bool {
        let Self { plan, deliverer, metrics, interrupt } = self;
        let labels = &plan.labels;
        let shared = || Arc::new(event.clone());
        let Some(target) = &route.dead_letter else {
            metrics.dropped.get_or_create(labels).inc();
            if metrics.tap.is_listened() {
                metrics.tap(Stage::Dropped, labels, &shared(), || Some(failure.reason.clone()));
            }
            tracing::error!(
                subscriber = ?labels, destination = %route.destination, id = %event.id(),
                reason = %failure.reason, attempts,
                "delivery failed and the subscriber keeps no dead letters (delivery.deadLetterStore: false); event dropped"
            );
            return true;
        };
        let dead = dead_letter_event(event, &route.destination, failure, attempts);
        let on_retry = |_: &Failure| {
            metrics.retried.get_or_create(labels).inc();
        };
        match deliverer.send(target, &dead, &plan.retry, interrupt, on_retry).await {
            Outcome::Delivered(..) => {
                metrics.dead_lettered.get_or_create(labels).inc();
                // The first letter kept in this process opens the store, for its gauge and
                // its tools (it reads the letter back from the bus).
                if let Some(letters) = deliverer.letters()
                    && !letters.is_open()
                    && target.bus_subject() == Some(letters.topic())
                {
                    let letters = letters.clone();
                    tokio::spawn(async move {
                        if let Err(error) = letters.store().await {
                            tracing::warn!(error = %ofe_core::Report(&error), "cannot open the dead-letter store");
                        }
                    });
                }
                if metrics.tap.is_listened() {
                    metrics.tap(Stage::DeadLettered, labels, &shared(), || {
                        Some(format!("to {target}: {}", failure.reason))
                    });
                }
                tracing::warn!(
                    subscriber = ?labels, destination = %route.destination, dead_letter = %target,
                    id = %event.id(), reason = %failure.reason, "event dead-lettered"
                );
                true
            }
            Outcome::Interrupted => false,
            Outcome::Failed(dl_failure, _) => {
                tracing::error!(
                    subscriber = ?labels, dead_letter = %target, id = %event.id(),
                    reason = %dl_failure.reason, "dead-letter delivery failed too; the event will be retried"
                );
                false
            }
        }
    }

    /// Publishes a sink's reply to `to`, one hop further than the event it answers. A reply that
    /// is not a valid CloudEvent, or that would pass the hop limit, is logged, counted and
    /// dropped. `Err(interrupted)` when it could not be published: the event must be delivered
    /// again.
    async fn publish_reply(
        &self,
        event: &cloudevents::Event,
        reply: crate::delivery::Reply,
        to: &Subject,
    ) -> Result<(), bool> {
        let Self { plan, deliverer, metrics, interrupt } = self;
        let labels = &plan.labels;
        let reply = match reply {
            Ok(reply) => reply,
            Err(reason) => {
                metrics.bad_replies.get_or_create(labels).inc();
                tracing::warn!(subscriber = ?labels, id = %event.id(), %reason, "the sink's reply is not a valid CloudEvent; dropped");
                return Ok(());
            }
        };
        let hops = crate::sink::topic::hops(event) + 1;
        if hops > deliverer.max_hops() {
            metrics.loops.get_or_create(labels).inc();
            tracing::error!(
                subscriber = ?labels, id = %event.id(), reply = %reply.id(), hops,
                max_hops = deliverer.max_hops(),
                "reply dropped at the hop limit: Triggers and functions form a loop"
            );
            return Ok(());
        }
        let reply = crate::sink::topic::with_hops(&reply, hops);
        let bus = deliverer.bus().clone();
        let outcome = crate::delivery::retry(
            &plan.retry,
            interrupt,
            |_| {},
            |_| {
                let (bus, reply) = (bus.clone(), &reply);
                async move {
                    bus.publish(to, reply).await.map(|_| None).map_err(|e| {
                        crate::delivery::Failure::transient(format!(
                            "publish failed: {}",
                            ofe_core::Report(&e)
                        ))
                    })
                }
            },
        )
        .await;
        match outcome {
            Outcome::Delivered(..) => {
                metrics.replies.get_or_create(labels).inc();
                Ok(())
            }
            Outcome::Interrupted => Err(true),
            Outcome::Failed(failure, _) => {
                tracing::error!(subscriber = ?labels, id = %event.id(), reason = %failure.reason, "cannot publish the sink's reply; the event will be delivered again");
                Err(false)
            }
        }
    }

    /// What is sent of `delivery`: the event, transformed, with its key in the record of
    /// what was delivered (`delivery.dedupe`). `None` when it is settled already: a poison
    /// event or one the transform cannot take went to the dead letter, and one delivered
    /// before was acknowledged.
    async fn prepare(&self, delivery: Delivery) -> Option<Prepared<'_>> {
        let Self { plan, deliverer, metrics, .. } = self;
        if let Some(reason) = delivery.event.extension(EXT_POISON) {
            let failure = Failure { reason: format!("poison: {reason}"), ..Failure::default() };
            self.dead_letter_unattempted(delivery, &failure, 0).await;
            return None;
        }
        let event = match plan.transform.as_deref().map(|t| t.apply(&delivery.event)) {
            None => delivery.event.clone(),
            Some(Ok(event)) => Arc::new(event),
            Some(Err(error)) => {
                // Never sent half-built: the event as it came goes to the dead letter.
                let failure = Failure::permanent(error.to_string());
                self.dead_letter_unattempted(delivery, &failure, 0).await;
                return None;
            }
        };
        let key = deliverer
            .dedupe()
            .map(|d| (d, crate::delivery::idempotency_key(&plan.consumer, &event)));
        if let Some((dedupe, key)) = &key
            && dedupe.seen(key)
        {
            metrics.deduplicated.get_or_create(&plan.labels).inc();
            tracing::debug!(subscriber = ?plan.labels, id = %event.id(), "delivered before; not sent again");
            if let Err(error) = delivery.ack().await {
                tracing::warn!(error = %ofe_core::Report(&error), "ack failed; the event may come again");
            }
            return None;
        }
        Some(Prepared { delivery, event, key })
    }

    /// Settles what was delivered to every route: recorded as delivered (`delivery.dedupe`),
    /// then acknowledged.
    async fn settle(&self, prepared: Prepared<'_>) {
        let Prepared { delivery, event, key } = prepared;
        if let Some((dedupe, key)) = &key
            && let Err(error) = dedupe.record(key).await
        {
            tracing::warn!(error = %ofe_core::Report(&error), id = %event.id(), "cannot record the delivery; a redelivery would send it again");
        }
        if let Err(error) = delivery.ack().await {
            tracing::warn!(error = %ofe_core::Report(&error), "ack failed; the event may be delivered again");
        }
    }

    /// Delivers `deliveries` to every route as one batch; when a route fails for good, each
    /// event goes to its dead letter with the batch's failure. Then settles each.
    async fn deliver_batch(&self, deliveries: Vec<Delivery>) {
        let Self { plan, deliverer, metrics, interrupt } = self;
        let labels = &plan.labels;
        let started = Instant::now();
        let mut batch = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            batch.extend(self.prepare(delivery).await);
        }
        let Some(first) = batch.first() else { return };
        let events: Vec<Arc<cloudevents::Event>> = batch.iter().map(|p| p.event.clone()).collect();
        for route in &plan.routes {
            let span =
                deliver_span(labels, &route.destination, &first.event, first.delivery.attempt);
            span.set(KeyValue::new("messaging.batch.message_count", events.len() as i64));
            let on_retry = |failure: &Failure| {
                metrics.retried.get_or_create(labels).inc();
                for event in &events {
                    metrics.tap(Stage::Retrying, labels, event, || {
                        Some(format!(
                            "to {} (a batch of {}): {}",
                            route.destination,
                            events.len(),
                            failure.reason
                        ))
                    });
                }
            };
            let sent = deliverer.send_batch_reported(
                &route.destination,
                &events,
                &plan.retry,
                interrupt,
                on_retry,
            );
            let outcome = trace::within(&span, sent).await;
            record(&span, &outcome);
            match outcome {
                Outcome::Delivered(..) => {
                    let count = events.len() as u64;
                    metrics.delivered.get_or_create(labels).inc_by(count);
                    let latency = metrics.latency.get_or_create(labels);
                    for event in &events {
                        latency.observe(started.elapsed().as_secs_f64());
                        metrics.stages.deliver.observe(|| started.elapsed().as_secs_f64());
                        metrics.tap(Stage::Delivered, labels, event, || {
                            Some(format!("to {} (a batch of {count})", route.destination))
                        });
                    }
                }
                Outcome::Interrupted => return,
                Outcome::Failed(failure, attempts) => {
                    for prepared in &batch {
                        // The event as it came, before the transform.
                        let event = &prepared.delivery.event;
                        let dead = self.dead_letter(route, event, &failure, attempts);
                        if !dead_letter_traced(&span, route, dead).await {
                            // The whole batch comes again: what was dead-lettered already is
                            // dead-lettered again (at least once, never lost).
                            if !interrupt.is_cancelled() {
                                for prepared in batch {
                                    let _ = prepared.delivery.nack(DEAD_LETTER_FAILED_DELAY).await;
                                }
                            }
                            return;
                        }
                    }
                }
            }
        }
        for prepared in batch {
            self.settle(prepared).await;
        }
    }

    /// Delivers to every route, dead-lettering failures, then settles the bus delivery.
    async fn deliver(&self, delivery: Delivery) {
        let Self { plan, deliverer, metrics, interrupt } = self;
        let started = Instant::now();
        let labels = &plan.labels;
        let Some(Prepared { delivery, event, key }) = self.prepare(delivery).await else { return };
        for route in &plan.routes {
            let span = deliver_span(labels, &route.destination, &event, delivery.attempt);
            let on_retry = |failure: &Failure| {
                metrics.retried.get_or_create(labels).inc();
                metrics.tap(Stage::Retrying, labels, &event, || {
                    Some(format!("to {}: {}", route.destination, failure.reason))
                });
            };
            let sent = deliverer.send_reported(
                &route.destination,
                &event,
                &plan.retry,
                interrupt,
                on_retry,
            );
            let outcome = trace::within(&span, sent).await;
            record(&span, &outcome);
            match outcome {
                Outcome::Delivered(_, reply) => {
                    metrics.delivered.get_or_create(labels).inc();
                    metrics.tap(Stage::Delivered, labels, &event, || {
                        Some(format!("to {}", route.destination))
                    });
                    metrics.latency.get_or_create(labels).observe(started.elapsed().as_secs_f64());
                    metrics.stages.deliver.observe(|| started.elapsed().as_secs_f64());
                    if let (Some(reply), Some(to)) = (reply, &plan.reply) {
                        // The function has the event; its reply must reach the bus before the
                        // event is acknowledged, or the reply could be lost.
                        match self.publish_reply(&event, *reply, to).await {
                            Ok(()) => {}
                            Err(true) => return drop(delivery),
                            Err(false) => {
                                let _ = delivery.nack(DEAD_LETTER_FAILED_DELAY).await;
                                return;
                            }
                        }
                    }
                }
                Outcome::Interrupted => return drop(delivery),
                Outcome::Failed(failure, attempts) => {
                    if route.destination.bus_subject().is_some()
                        && crate::sink::topic::hops(&event) >= deliverer.max_hops()
                    {
                        metrics.loops.get_or_create(labels).inc();
                    }
                    // The event as it came, before the transform: a redrive transforms it again.
                    let dead = self.dead_letter(route, &delivery.event, &failure, attempts);
                    if !dead_letter_traced(&span, route, dead).await {
                        if interrupt.is_cancelled() {
                            return drop(delivery);
                        }
                        let _ = delivery.nack(DEAD_LETTER_FAILED_DELAY).await;
                        return;
                    }
                }
            }
        }
        self.settle(Prepared { delivery, event, key }).await;
    }
}

/// An event about to be sent: its bus delivery, the event as sent (transformed), and its key
/// in the subscriber's record of deliveries.
struct Prepared<'a> {
    delivery: Delivery,
    event: Arc<cloudevents::Event>,
    key: Option<(&'a Arc<crate::dedupe::Dedupe>, String)>,
}

/// The span of delivering `event` to `destination` for the subscriber `labels`: every
/// attempt, and the dead letter if it comes to that. `bus_attempt` counts the bus's
/// deliveries of the event (more than 1 after a crash or a nack).
fn deliver_span(
    labels: &SubscriberLabels,
    destination: &Destination,
    event: &cloudevents::Event,
    bus_attempt: u32,
) -> trace::Span {
    if !trace::enabled() {
        return trace::Span::default();
    }
    let mut attributes = trace::event_attributes(event);
    attributes.extend([
        KeyValue::new("ofe.namespace", labels.namespace.clone()),
        KeyValue::new("ofe.trigger", labels.trigger.clone()),
        KeyValue::new("ofe.subscriber", labels.subscriber.clone()),
        KeyValue::new("ofe.destination", destination.to_string()),
        KeyValue::new("messaging.delivery.attempt", i64::from(bus_attempt)),
    ]);
    let name = format!("deliver {}/{}", labels.trigger, labels.subscriber);
    trace::Span::for_event(name, SpanKind::Internal, event, attributes)
}

/// Runs `dead` (a [`dead_letter`] to `route`) inside the delivery's `span`, and notes on the
/// span what became of the event; whether it did as [`dead_letter`] says.
async fn dead_letter_traced(
    span: &trace::Span,
    route: &Route,
    dead: impl std::future::Future<Output = bool>,
) -> bool {
    let done = trace::within(span, dead).await;
    match &route.dead_letter {
        Some(target) if done => {
            span.note("dead-lettered", vec![KeyValue::new("ofe.dead_letter", target.to_string())])
        }
        None => span.note("dropped", Vec::new()),
        Some(_) => span.note("dead letter failed", Vec::new()),
    }
    done
}

/// Records how a delivery ended on its span.
fn record(span: &trace::Span, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered(attempts, _) => {
            span.set(KeyValue::new("ofe.attempts", i64::from(*attempts)));
        }
        Outcome::Failed(failure, attempts) => {
            span.set(KeyValue::new("ofe.attempts", i64::from(*attempts)));
            span.fail(failure.reason.clone());
        }
        Outcome::Interrupted => span.note("interrupted by shutdown", Vec::new()),
    }
}
