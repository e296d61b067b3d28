//! Replay: re-delivering a subscriber's past events from a point in time (`ofe replay`).
//!
//! A replay reads the Trigger's inputs again with a durable consumer of its own, started at
//! `from`, through the subscriber's filters and condition (joins and windows on the bus's
//! time, in a state of its own), and puts what fires on a queue of its own, where a second
//! runner of the subscriber's plan delivers it with the subscriber's delivery settings
//! (retries, order key, rate limit, dead letters). Live delivery goes on beside it, and no
//! other subscriber sees anything of it. Each replayed event carries [`EXT_REPLAY`] with the
//! replay's id; its `Idempotency-Key` differs from the live one's, so an idempotent function
//! does not drop the replay as a copy. The replay ends at the first input event stored after
//! `to` (or when everything up to now was read), once all it fired was delivered; then its
//! consumers are removed from the bus.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ofe_core::{BusError, EventBus, StartPosition, Subject, SubscribeOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::delivery::Deliverer;
use crate::metrics::{SubscriberLabels, TriggerMetrics};
use crate::router::{Router, Routing};
use crate::runner::{self, SubscriberPlan};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Extension attribute on a replayed event: the replay's id.
pub const EXT_REPLAY: &str = "ofereplay";

/// How long a replay's reader waits without an event before it takes the inputs as read to
/// the end, when the bus cannot say (Kafka counts other subjects' records in a lag).
const IDLE_END: Duration = Duration::from_secs(10);

/// How often a replay looks at whether it is done, and publishes its progress.
const LOOK: Duration = Duration::from_millis(250);

/// What to replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySpec {
    /// The replay's id, in its consumers' names and in [`EXT_REPLAY`].
    pub id: String,
    /// From events stored at or after this time; `None`: from the oldest the bus holds.
    pub from: Option<DateTime<Utc>>,
    /// Up to events stored at or before this time.
    pub to: DateTime<Utc>,
}

/// Where a replay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Reading and delivering.
    Running,
    /// Every event up to `to` was read, and what fired was delivered (or dead-lettered).
    Done,
    /// Cancelled: what it had not delivered is not delivered.
    Cancelled,
    /// Stopped by an error of the bus; see `error`.
    Failed,
}

/// A replay's progress, as `ofe replay` and `ofe status` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The replay's id.
    pub id: String,
    /// The Trigger's namespace.
    pub namespace: String,
    /// The Trigger.
    pub trigger: String,
    /// The subscriber's index.
    pub subscriber: String,
    /// The start (RFC 3339), or `None` for the oldest event held.
    pub from: Option<String>,
    /// The end (RFC 3339).
    pub to: String,
    /// Input events read.
    pub read: u64,
    /// Of those, the ones that fired the subscriber (what is re-delivered).
    pub fired: u64,
    /// Of those, the ones delivered to every destination.
    pub delivered: u64,
    /// Of those, the ones that failed and went to the dead letter.
    pub dead_lettered: u64,
    /// The bus time of the latest input event read (RFC 3339).
    pub position: Option<String>,
    /// Where it is.
    pub state: ReplayState,
    /// Why it failed.
    pub error: Option<String>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The consumer a replay reads the inputs with.
fn reader_consumer(plan: &SubscriberPlan, id: &str) -> String {
    format!("{}.replay.{id}.read", plan.consumer)
}

/// Runs `spec` for `plan` (a Trigger subscriber) until it is done or `cancel`; `progress`
/// follows it. The consumers it made are removed from the bus at the end, whatever the end.
pub async fn run(
    spec: ReplaySpec,
    plan: &SubscriberPlan,
    deliverer: Deliverer,
    shared: &TriggerMetrics,
    progress: watch::Sender<Progress>,
    cancel: CancellationToken,
) {
    let bus = deliverer.bus().clone();
    let reader = reader_consumer(plan, &spec.id);
    let (queue_plan, routing) = match replay_plan(plan, &spec.id) {
        Some(parts) => parts,
        None => {
            progress.send_modify(|p| {
                p.state = ReplayState::Failed;
                p.error = Some("this subscriber has no inputs to replay".into());
            });
            return;
        }
    };
    let queue_consumer = queue_plan.consumer.clone();
    let outcome = Replay { spec: &spec, bus: &bus, progress: &progress, cancel: &cancel }
        .go(queue_plan, routing, &reader, deliverer, shared)
        .await;
    let (state, error) = match outcome {
        Ok(true) => (ReplayState::Done, None),
        Ok(false) => (ReplayState::Cancelled, None),
        Err(e) => (ReplayState::Failed, Some(ofe_core::chain(&e))),
    };
    for consumer in [&reader, &queue_consumer] {
        if let Err(e) = bus.remove_consumer(consumer).await {
            tracing::warn!(%consumer, error = %ofe_core::Report(&e), "cannot remove a finished replay's consumer; remove it on the broker");
        }
    }
    tracing::info!(replay = %spec.id, ?state, "replay ended");
    progress.send_modify(|p| {
        p.state = state;
        p.error = error;
    });
}

/// The subscriber's plan, delivering from the replay's own queue, and its routing, filling
/// that queue.
fn replay_plan(plan: &SubscriberPlan, id: &str) -> Option<(SubscriberPlan, Arc<Routing>)> {
    let live = plan.routing.as_ref()?;
    let labels = &plan.labels;
    let queue = Subject::queue(
        &labels.namespace,
        &labels.trigger,
        &format!("{}.replay.{id}", labels.subscriber),
    );
    let routing = Arc::new(Routing {
        labels: live.labels.clone(),
        condition: live.condition.clone(),
        inputs: live.inputs.clone(),
        window: live.window,
        consume: live.consume,
        max_keys: live.max_keys,
        queue: queue.clone(),
    });
    let queue_plan = SubscriberPlan {
        consumer: format!("{}.replay.{id}", plan.consumer),
        subjects: vec![queue],
        routing: Some(routing.clone()),
        paused: false,
        ..plan.clone()
    };
    Some((queue_plan, routing))
}

struct Replay<'a> {
    spec: &'a ReplaySpec,
    bus: &'a Arc<dyn EventBus>,
    progress: &'a watch::Sender<Progress>,
    cancel: &'a CancellationToken,
}

impl Replay<'_> {
    /// `Ok(true)` when done, `Ok(false)` when cancelled.
    async fn go(
        &self,
        queue_plan: SubscriberPlan,
        routing: Arc<Routing>,
        reader: &str,
        deliverer: Deliverer,
        shared: &TriggerMetrics,
    ) -> Result<bool, BusError> {
        // The runner counts into metrics of the replay's own (the live subscriber's counters
        // stay the live ones), and shows its steps to `ofe tail` like any delivery.
        let counts = TriggerMetrics { tap: shared.tap.clone(), ..TriggerMetrics::default() };
        let queue = runner::subscribe(&queue_plan, self.bus.as_ref()).await?;
        let mut options = SubscribeOptions::new(
            reader,
            routing.inputs.iter().map(|i| i.subject.clone()).collect(),
        );
        options.start = match self.spec.from {
            Some(at) => StartPosition::Time(at),
            None => StartPosition::All,
        };
        let mut inputs = self.bus.subscribe(options).await?;
        let stop_runner = CancellationToken::new();
        let routes = queue_plan.routes.len().max(1) as u64;
        let labels = queue_plan.labels.clone();
        let runner = tokio::spawn(runner::run(
            queue_plan,
            queue,
            deliverer,
            counts.clone(),
            watch::channel(false).1,
            stop_runner.clone(),
            Duration::ZERO,
        ));
        let delivering = Delivering { counts, labels, routes, runner };
        let outcome = self.read(&mut *inputs, &routing, reader, &delivering).await;
        // The runner stops (what it has in flight is left for nobody: its consumer goes),
        // and has let go of its consumer before the caller removes it.
        stop_runner.cancel();
        let _ = delivering.runner.await;
        outcome
    }

    /// Reads the inputs up to the end and puts what fires on the replay's queue, then waits
    /// until the runner settled all of it. `Ok(true)` when done, `Ok(false)` when cancelled.
    async fn read(
        &self,
        inputs: &mut dyn ofe_core::Subscription,
        routing: &Arc<Routing>,
        reader: &str,
        delivering: &Delivering,
    ) -> Result<bool, BusError> {
        let mut router = Router::new(vec![routing.clone()], TriggerMetrics::default());
        let mut idle_since = tokio::time::Instant::now();
        let mut look = tokio::time::interval(LOOK);
        let mut reading = true;
        loop {
            if !reading {
                let (delivered, dead) = delivering.settled();
                self.progress.send_modify(|p| {
                    p.delivered = delivered;
                    p.dead_lettered = dead;
                });
                let fired = self.progress.borrow().fired;
                if delivered + dead >= fired {
                    return Ok(true);
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(false),
                _ = look.tick() => {
                    if reading {
                        let (delivered, dead) = delivering.settled();
                        self.progress.send_modify(|p| {
                            p.delivered = delivered;
                            p.dead_lettered = dead;
                        });
                        let caught_up = matches!(self.bus.lag(reader).await, Ok(Some(0)));
                        if caught_up || idle_since.elapsed() >= IDLE_END {
                            reading = false;
                        }
                    }
                }
                d = inputs.next(), if reading => {
                    let d = d?;
                    idle_since = tokio::time::Instant::now();
                    if d.published_at > self.spec.to {
                        // Past the end: left for nobody (the consumer goes at the end).
                        drop(d);
                        reading = false;
                        continue;
                    }
                    let fired = router.route(&d.subject, &d.event, d.published_at);
                    for f in &fired {
                        let mut event = cloudevents::Event::clone(&f.event);
                        event.set_extension(EXT_REPLAY, self.spec.id.clone());
                        self.bus.publish(&routing.queue, &event).await?;
                    }
                    let at = rfc3339(d.published_at);
                    d.ack().await?;
                    self.progress.send_modify(|p| {
                        p.read += 1;
                        p.fired += fired.len() as u64;
                        p.position = Some(at);
                    });
                }
            }
            if delivering.runner.is_finished() {
                return Err(BusError::unavailable("the replay's delivery stopped"));
            }
        }
    }
}

/// The replay's runner, and what it counts.
struct Delivering {
    counts: TriggerMetrics,
    labels: SubscriberLabels,
    /// Destinations per event.
    routes: u64,
    runner: tokio::task::JoinHandle<Result<(), BusError>>,
}

impl Delivering {
    /// Events delivered, and events dead-lettered (or dropped): each event settles once per
    /// destination.
    fn settled(&self) -> (u64, u64) {
        let get = |f: &Family<SubscriberLabels, Counter>| f.get_or_create(&self.labels).get();
        let c = &self.counts;
        (get(&c.delivered) / self.routes, (get(&c.dead_lettered) + get(&c.dropped)) / self.routes)
    }
}

/// The progress of a replay that is starting.
pub fn starting(spec: &ReplaySpec, plan: &SubscriberPlan) -> Progress {
    Progress {
        id: spec.id.clone(),
        namespace: plan.labels.namespace.clone(),
        trigger: plan.labels.trigger.clone(),
        subscriber: plan.labels.subscriber.clone(),
        from: spec.from.map(rfc3339),
        to: rfc3339(spec.to),
        read: 0,
        fired: 0,
        delivered: 0,
        dead_lettered: 0,
        position: None,
        state: ReplayState::Running,
        error: None,
    }
}

/// Refuses a start the bus cannot serve in full: one before the oldest event it holds, when
/// retention removed older ones (events would be missing without a word).
pub async fn check_retention(
    bus: &dyn EventBus,
    plan: &SubscriberPlan,
    from: Option<DateTime<Utc>>,
) -> Result<(), String> {
    let subjects: Vec<Subject> =
        plan.routing.iter().flat_map(|r| r.inputs.iter().map(|i| i.subject.clone())).collect();
    let retained = bus
        .retained(&subjects)
        .await
        .map_err(|e| format!("cannot ask the bus what it holds: {}", ofe_core::chain(&e)))?;
    match (from, retained.oldest) {
        (Some(from), Some(oldest)) if retained.trimmed && from < oldest => Err(format!(
            "--from {} is before the oldest event the bus still holds, stored at {}: retention \
             removed what came before; replay --from {} (or --from-start) to take all there is",
            rfc3339(from),
            rfc3339(oldest),
            rfc3339(oldest)
        )),
        _ => Ok(()),
    }
}
