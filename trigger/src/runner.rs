//! Running one subscriber: a durable bus consumer, the condition, and bounded concurrent
//! delivery.
//!
//! Each subscriber of a Trigger has a durable consumer of its own (named after the Trigger and
//! the subscriber's index), so replicas share its work, and a slow or failing destination holds
//! back only its own subscriber, never the others. The consumer reads only the inputs the
//! condition names, which is what makes "only a named input's event can fire" hold by
//! construction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cloudevents::AttributesReader as _;
use ofe_eventbus::{
    BusError, Delivery, EventBus, StartPosition, Subject, SubscribeOptions, Subscription,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::condition::Condition;
use crate::delivery::{Deliverer, Destination, Failure, Outcome, RetryPolicy, dead_letter_event};
use crate::metrics::{SubscriberLabels, TriggerMetrics};

/// How long a dead-letter failure waits before the event is tried again from the start.
const DEAD_LETTER_FAILED_DELAY: Duration = Duration::from_secs(5);

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
    /// The condition; `None` delivers every event (an EventSource's own sink).
    pub condition: Option<Arc<Condition>>,
    /// Input names and their subjects, restricted to the inputs the condition names.
    pub inputs: Vec<(String, Subject)>,
    /// Compiled filters per input name; an input without an entry takes every event.
    pub filters: std::collections::BTreeMap<String, Arc<Vec<crate::filter::CompiledFilter>>>,
    /// How long an input stays true after its last event.
    pub window: Duration,
    /// Destinations, in order (sink first, then topic, as OpenFunction did).
    pub routes: Vec<Route>,
    /// Deliveries in flight at once.
    pub max_in_flight: usize,
    /// Retry settings.
    pub retry: RetryPolicy,
    /// A delivery that comes back from the bus more often than this (the process kept dying
    /// while holding it: a poison event) goes to the dead-letter destination instead.
    pub max_deliver: u32,
}

/// The per-consumer memory of when each input last fired, in bus time.
#[derive(Debug, Default)]
pub struct WindowState {
    last_seen: HashMap<String, DateTime<Utc>>,
}

impl WindowState {
    /// Records that `inputs` fired at `at`, then says which of `names` are active at `at`:
    /// fired within `window` before it.
    pub fn observe<'a>(
        &mut self,
        inputs: &[&str],
        at: DateTime<Utc>,
        names: &'a [String],
        window: Duration,
    ) -> HashMap<&'a str, bool> {
        for input in inputs {
            let seen = self.last_seen.entry((*input).to_string()).or_insert(at);
            *seen = (*seen).max(at);
        }
        let window = chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX);
        names
            .iter()
            .map(|name| {
                let active = self.last_seen.get(name).is_some_and(|seen| at - *seen < window);
                (name.as_str(), active)
            })
            .collect()
    }
}

/// Opens the subscriber's durable consumer. Do this for every subscriber before any source
/// starts, so that a consumer created now does not miss the first events.
pub async fn subscribe(
    plan: &SubscriberPlan,
    bus: &dyn EventBus,
) -> Result<Box<dyn Subscription>, BusError> {
    let subjects: BTreeSet<Subject> = plan.inputs.iter().map(|(_, s)| s.clone()).collect();
    let options = SubscribeOptions {
        consumer: plan.consumer.clone(),
        subjects: subjects.into_iter().collect(),
        max_in_flight: plan.max_in_flight,
        start: StartPosition::New,
        max_deliver: Some(plan.max_deliver),
    };
    bus.subscribe(options).await
}

/// Runs a subscriber until `shutdown`, then lets in-flight deliveries finish for up to
/// `drain`; what is still unfinished then is left unacknowledged and is redelivered on the
/// next start.
pub async fn run(
    plan: SubscriberPlan,
    mut subscription: Box<dyn Subscription>,
    deliverer: Deliverer,
    metrics: TriggerMetrics,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), BusError> {
    let permits = Arc::new(Semaphore::new(plan.max_in_flight));
    let plan = Arc::new(plan);
    let mut window = WindowState::default();
    let mut tasks = JoinSet::new();
    // Deliveries keep going through shutdown until `drain` ends, so they get their own token.
    let interrupt = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.map_err(|_| BusError::Closed)?,
        };
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            d = subscription.next() => match d {
                Ok(d) => d,
                Err(BusError::Closed) => break,
                Err(e) => return Err(e),
            },
        };
        while tasks.try_join_next().is_some() {}
        metrics.received.get_or_create(&plan.labels).inc();
        if delivery.attempt > plan.max_deliver {
            let (plan, deliverer, metrics, interrupt) =
                (plan.clone(), deliverer.clone(), metrics.clone(), interrupt.clone());
            tasks.spawn(async move {
                let _permit = permit;
                give_up(&plan, &deliverer, &metrics, &interrupt, delivery).await;
            });
            continue;
        }
        if !fires(&plan, &mut window, &delivery) {
            metrics.filtered.get_or_create(&plan.labels).inc();
            delivery.ack().await?;
            continue;
        }
        let (plan, deliverer, metrics, interrupt) =
            (plan.clone(), deliverer.clone(), metrics.clone(), interrupt.clone());
        tasks.spawn(async move {
            let _permit = permit;
            deliver(&plan, &deliverer, &metrics, &interrupt, delivery).await;
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

fn fires(plan: &SubscriberPlan, window: &mut WindowState, delivery: &Delivery) -> bool {
    let Some(condition) = &plan.condition else { return true };
    // One conversion of the data serves every input's filters.
    let data = crate::filter::EventData::new(&delivery.event);
    let inputs: Vec<&str> = plan
        .inputs
        .iter()
        .filter(|(_, subject)| *subject == delivery.subject)
        .filter(|(name, _)| plan.filters.get(name).is_none_or(|f| data.passes(f)))
        .map(|(name, _)| name.as_str())
        .collect();
    if inputs.is_empty() {
        return false;
    }
    let active = window.observe(&inputs, delivery.published_at, condition.names(), plan.window);
    match condition.evaluate(&active) {
        Ok(fire) => fire,
        Err(error) => {
            tracing::error!(subscriber = ?plan.labels, %error, "condition failed to evaluate; treating it as false");
            false
        }
    }
}

/// Sends a delivery that exceeded `max_deliver` to every route's dead letter, unattempted.
async fn give_up(
    plan: &SubscriberPlan,
    deliverer: &Deliverer,
    metrics: &TriggerMetrics,
    interrupt: &CancellationToken,
    delivery: Delivery,
) {
    let failure = Failure {
        code: None,
        reason: format!(
            "delivered {} times without being settled (max_deliver {}); the process may be \
             crashing on this event",
            delivery.attempt, plan.max_deliver
        ),
        retryable: false,
    };
    for route in &plan.routes {
        if !dead_letter(
            plan,
            deliverer,
            metrics,
            interrupt,
            route,
            &delivery.event,
            &failure,
            delivery.attempt,
        )
        .await
        {
            let _ = delivery.nack(DEAD_LETTER_FAILED_DELAY).await;
            return;
        }
    }
    if let Err(error) = delivery.ack().await {
        tracing::warn!(%error, "ack failed; the event may be delivered again");
    }
}

/// Sends `event` to `route`'s dead letter (or drops it, logged and counted, when there is
/// none). `false` means the dead letter failed too and the event must stay on the bus.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    plan: &SubscriberPlan,
    deliverer: &Deliverer,
    metrics: &TriggerMetrics,
    interrupt: &CancellationToken,
    route: &Route,
    event: &cloudevents::Event,
    failure: &Failure,
    attempts: u32,
) -> bool {
    let labels = &plan.labels;
    let Some(target) = &route.dead_letter else {
        metrics.dropped.get_or_create(labels).inc();
        tracing::error!(
            subscriber = ?labels, destination = %route.destination, id = %event.id(),
            reason = %failure.reason, attempts,
            "delivery failed and no dead-letter destination is configured; event dropped"
        );
        return true;
    };
    let dead = dead_letter_event(event, &route.destination, failure, attempts);
    let on_retry = || {
        metrics.retried.get_or_create(labels).inc();
    };
    match deliverer.send(target, &dead, &plan.retry, interrupt, on_retry).await {
        Outcome::Delivered(_) => {
            metrics.dead_lettered.get_or_create(labels).inc();
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

/// Delivers to every route, dead-lettering failures, then settles the bus delivery.
async fn deliver(
    plan: &SubscriberPlan,
    deliverer: &Deliverer,
    metrics: &TriggerMetrics,
    interrupt: &CancellationToken,
    delivery: Delivery,
) {
    let started = Instant::now();
    let labels = &plan.labels;
    let event = delivery.event.clone();
    for route in &plan.routes {
        let on_retry = || {
            metrics.retried.get_or_create(labels).inc();
        };
        match deliverer.send(&route.destination, &event, &plan.retry, interrupt, on_retry).await {
            Outcome::Delivered(_) => {
                metrics.delivered.get_or_create(labels).inc();
                metrics.latency.get_or_create(labels).observe(started.elapsed().as_secs_f64());
            }
            Outcome::Interrupted => return drop(delivery),
            Outcome::Failed(failure, attempts) => {
                if !dead_letter(
                    plan, deliverer, metrics, interrupt, route, &event, &failure, attempts,
                )
                .await
                {
                    if interrupt.is_cancelled() {
                        return drop(delivery);
                    }
                    let _ = delivery.nack(DEAD_LETTER_FAILED_DELAY).await;
                    return;
                }
            }
        }
    }
    if let Err(error) = delivery.ack().await {
        tracing::warn!(%error, "ack failed; the event may be delivered again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_uses_bus_time() {
        let names = vec!["a".to_string(), "b".to_string()];
        let t0 = Utc::now();
        let mut w = WindowState::default();
        let s = w.observe(&["b"], t0, &names, Duration::from_secs(60));
        assert_eq!((s["a"], s["b"]), (false, true));
        let s =
            w.observe(&["a"], t0 + chrono::TimeDelta::seconds(59), &names, Duration::from_secs(60));
        assert_eq!((s["a"], s["b"]), (true, true));
        let s =
            w.observe(&["a"], t0 + chrono::TimeDelta::seconds(61), &names, Duration::from_secs(60));
        assert_eq!((s["a"], s["b"]), (true, false));
    }
}
