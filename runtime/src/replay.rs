//! The replays of this process (`ofe replay`, through the endpoint): which subscribers can
//! replay, the replays started, their progress, and cancelling one. A replay runs as
//! [`ofe_trigger::replay`] describes, beside its subscriber, and stops with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ofe_core::StateStore;
use ofe_trigger::replay::{self, Progress, ReplaySpec, ReplayState};
use ofe_trigger::{Deliverer, ReplayLabels, SubscriberPlan, TriggerMetrics};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pause::Target;

/// Finished replays kept for `ofe replay --list` and `ofe status`; older ones are forgotten.
const KEPT_FINISHED: usize = 100;

/// Why a replay did not start, or could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No running subscriber, or no replay, matches; says what there is.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served as asked; says how to ask.
    #[error("{0}")]
    Invalid(String),
    /// The bus cannot serve it in full (the start is before retention); says what it holds.
    #[error("{0}")]
    Refused(String),
}

/// A replay request, as the endpoint's query carries it.
#[derive(Clone, Debug, Deserialize)]
pub struct ReplayRequest {
    /// The Trigger's namespace.
    pub namespace: String,
    /// The Trigger.
    pub trigger: String,
    /// One subscriber (its index); every subscriber of the Trigger when absent.
    #[serde(default)]
    pub subscriber: Option<String>,
    /// The start, RFC 3339.
    #[serde(default)]
    pub from: Option<String>,
    /// From the oldest event the bus holds.
    #[serde(default)]
    pub from_start: bool,
    /// The end, RFC 3339; now when absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// A subscriber that can replay.
struct Host {
    plan: Arc<SubscriberPlan>,
    deliverer: Deliverer,
    /// Stops its replays when the subscriber stops.
    stop: CancellationToken,
}

struct Run {
    progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Inner {
    /// Per subscriber consumer.
    hosts: BTreeMap<String, Host>,
    /// Per replay id and subscriber consumer, in start order (ids sort by time).
    runs: BTreeMap<(String, String), Run>,
}

/// The replays of every subscriber of this process. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Replays {
    inner: Arc<Mutex<Inner>>,
    metrics: TriggerMetrics,
}

impl std::fmt::Debug for Replays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replays").finish_non_exhaustive()
    }
}

fn time(field: &str, text: &str) -> Result<DateTime<Utc>, ReplayError> {
    ofe_crds::duration::parse_time(text).map_err(|m| ReplayError::Invalid(format!("{field} {m}")))
}

impl Replays {
    /// Replays whose counts go to `metrics` (`ofe_trigger_replay_events`).
    pub fn new(metrics: TriggerMetrics) -> Self {
        Self { inner: Arc::default(), metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic mid-update leaves plain data behind, still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a running Trigger subscriber, which replays through `deliverer` until `stop`.
    pub fn register(
        &self,
        plan: Arc<SubscriberPlan>,
        deliverer: Deliverer,
        stop: CancellationToken,
    ) {
        let consumer = plan.consumer.clone();
        let host = Host { plan, deliverer, stop };
        self.lock().hosts.insert(consumer, host);
    }

    /// Forgets a stopped subscriber; its replays were stopped with it.
    pub fn unregister(&self, consumer: &str) {
        self.lock().hosts.remove(consumer);
    }

    /// Starts a replay of each subscriber `request` names, all under one id; returns their
    /// progress.
    pub async fn start(&self, request: &ReplayRequest) -> Result<Vec<Progress>, ReplayError> {
        self.start_as(request, None, None).await
    }

    /// [`Replays::start`] under `id` (a new one when `None`); with `record`, the end is
    /// written to that store under that name.
    async fn start_as(
        &self,
        request: &ReplayRequest,
        id: Option<String>,
        record: Option<(Arc<dyn StateStore>, String)>,
    ) -> Result<Vec<Progress>, ReplayError> {
        let from = match (&request.from, request.from_start) {
            (Some(text), false) => Some(time("--from", text)?),
            (None, true) => None,
            (Some(_), true) => {
                return Err(ReplayError::Invalid("give --from or --from-start, not both".into()));
            }
            (None, false) => {
                return Err(ReplayError::Invalid(
                    "say where to start: --from RFC3339 or --from-start".into(),
                ));
            }
        };
        let now = Utc::now();
        let to = match &request.to {
            Some(text) => time("--to", text)?,
            None => now,
        };
        if let Some(from) = from.filter(|from| *from > to) {
            return Err(ReplayError::Invalid(format!(
                "--from {from} is after --to {to}; a replay runs forward in time"
            )));
        }
        let target = Target {
            namespace: request.namespace.clone(),
            trigger: request.trigger.clone(),
            subscriber: request.subscriber.clone(),
        };
        let hosts: Vec<(SubscriberPlan, Deliverer, CancellationToken)> = {
            let inner = self.lock();
            let found: Vec<_> = inner
                .hosts
                .values()
                .filter(|h| target.matches(&h.plan.labels))
                .map(|h| (SubscriberPlan::clone(&h.plan), h.deliverer.clone(), h.stop.clone()))
                .collect();
            if found.is_empty() {
                let running = inner.hosts.values().map(|h| &h.plan.labels);
                return Err(ReplayError::NotFound(
                    target.not_found(running, "Trigger subscribers"),
                ));
            }
            found
        };
        // Every subscriber's inputs must be served in full before any starts.
        for (plan, deliverer, _) in &hosts {
            replay::check_retention(deliverer.bus().as_ref(), plan, from)
                .await
                .map_err(ReplayError::Refused)?;
        }
        let id = id.unwrap_or_else(|| {
            format!(
                "r{}-{}",
                now.format("%Y%m%d-%H%M%S"),
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            )
        });
        let spec = ReplaySpec { id: id.clone(), from, to };
        let mut started = Vec::new();
        for (plan, deliverer, stop) in hosts {
            let (sender, receiver) = watch::channel(replay::starting(&spec, &plan));
            let cancel = stop.child_token();
            started.push(receiver.borrow().clone());
            self.lock().runs.insert(
                (id.clone(), plan.consumer.clone()),
                Run { progress: receiver.clone(), cancel: cancel.clone() },
            );
            tracing::info!(replay = %id, consumer = %plan.consumer, from = ?spec.from, to = %spec.to, "replay started");
            let (spec, metrics) = (spec.clone(), self.metrics.clone());
            tokio::spawn(mirror(receiver.clone(), metrics.clone()));
            let record = record.clone();
            tokio::spawn(async move {
                replay::run(spec, &plan, deliverer, &metrics, sender, cancel).await;
                if let Some((store, name)) = record {
                    let state = receiver.borrow().state;
                    remember(store.as_ref(), &name, state).await;
                }
            });
        }
        self.forget_old();
        Ok(started)
    }

    /// Starts the replays `trigger.spec.replays` asks for that have not run: each runs once
    /// per name, under the id `spec-<name>`. That it ran is kept in the state store of the
    /// Trigger's bus, so a restart or another replica does not run it again; one a crash
    /// interrupted runs again (its consumers carry on from where they were). What cannot
    /// start now (the subscriber does not run yet) is tried at the next apply; what the bus
    /// refuses is logged and kept as failed.
    pub async fn from_spec(&self, trigger: &ofe_crds::Trigger) {
        let namespace = ofe_crds::manifest::namespace_of(&trigger.metadata).to_string();
        let name = trigger.metadata.name.clone().unwrap_or_default();
        let prefix = format!("trigger.{namespace}.{name}.");
        for replay in trigger.spec.replays.iter().flatten() {
            let id = spec_id(&replay.name);
            let here = self.lock().runs.keys().any(|(i, c)| *i == id && c.starts_with(&prefix));
            if here {
                continue;
            }
            // The Trigger's bus, through any of its running subscribers; none runs yet: the
            // next apply tries again.
            let bus = {
                let inner = self.lock();
                let host = inner.hosts.values().find(|h| h.plan.consumer.starts_with(&prefix));
                host.map(|h| h.deliverer.bus().clone())
            };
            let Some(bus) = bus else { continue };
            let store = match bus.state_store().await {
                Ok(store) => store,
                Err(error) => {
                    tracing::warn!(replay = %id, error = %ofe_core::Report(&error), "cannot reach the bus's state store; the replay waits");
                    continue;
                }
            };
            let record = format!("{namespace}/{name}/{}", replay.name);
            if let Some(store) = &store {
                match crate::stored::read::<Remembered>(store.as_ref(), &spec_key(), WHAT).await {
                    Ok((records, _))
                        if records
                            .get(&record)
                            .is_some_and(|r| r.state != ReplayState::Running) =>
                    {
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(replay = %id, error = %ofe_core::Report(&error), "cannot read which replays ran; the replay waits");
                        continue;
                    }
                }
            }
            let request = ReplayRequest {
                namespace: namespace.clone(),
                trigger: name.clone(),
                subscriber: replay.subscriber.map(|n| n.to_string()),
                from: replay.from.clone(),
                from_start: replay.from_start.unwrap_or(false),
                to: replay.to.clone(),
            };
            let record = store.map(|store| (store, record));
            if let Some((store, name)) = &record {
                remember(store.as_ref(), name, ReplayState::Running).await;
            }
            match self.start_as(&request, Some(id.clone()), record.clone()).await {
                Ok(_) => {}
                Err(ReplayError::NotFound(_)) => {}
                Err(error) => {
                    tracing::warn!(replay = %id, %error, "the replay of spec.replays cannot run");
                    if let Some((store, name)) = &record {
                        remember(store.as_ref(), name, ReplayState::Failed).await;
                    }
                }
            }
        }
    }

    /// The progress of `trigger`'s replays of `spec.replays` in this process, per name.
    pub fn of_spec(&self, namespace: &str, trigger: &str) -> Vec<(String, Progress)> {
        self.list()
            .into_iter()
            .filter(|p| p.namespace == namespace && p.trigger == trigger)
            .filter_map(|p| Some((p.id.strip_prefix("spec-")?.to_string(), p)))
            .collect()
    }

    /// Every replay's progress, oldest first.
    pub fn list(&self) -> Vec<Progress> {
        self.lock().runs.values().map(|r| r.progress.borrow().clone()).collect()
    }

    /// Cancels replay `id` (each of its subscribers); returns their progress.
    pub fn cancel(&self, id: &str) -> Result<Vec<Progress>, ReplayError> {
        let inner = self.lock();
        let runs: Vec<&Run> =
            inner.runs.iter().filter(|((run, _), _)| run == id).map(|(_, r)| r).collect();
        if runs.is_empty() {
            let known: Vec<&str> = inner.runs.keys().map(|(id, _)| id.as_str()).collect();
            return Err(ReplayError::NotFound(format!(
                "no replay `{id}` here; known: {}",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        for run in &runs {
            run.cancel.cancel();
        }
        Ok(runs.iter().map(|r| r.progress.borrow().clone()).collect())
    }

    /// Keeps the latest [`KEPT_FINISHED`] finished replays.
    fn forget_old(&self) {
        let mut inner = self.lock();
        let finished: Vec<(String, String)> = inner
            .runs
            .iter()
            .filter(|(_, r)| r.progress.borrow().state != ReplayState::Running)
            .map(|(k, _)| k.clone())
            .collect();
        let excess = finished.len().saturating_sub(KEPT_FINISHED);
        for key in finished.into_iter().take(excess) {
            inner.runs.remove(&key);
        }
    }
}

/// The id a replay of `spec.replays` named `name` runs under.
pub fn spec_id(name: &str) -> String {
    format!("spec-{name}")
}

/// What the spec replays' records are called in a warning.
const WHAT: &str = "spec replays";

/// The key of the spec replays' records in a bus's state store.
fn spec_key() -> String {
    ofe_core::state_key(&["ofe", "replays"])
}

/// What is kept of a spec replay: where it got.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Remembered {
    state: ReplayState,
}

/// Writes that spec replay `name` is in `state`; a failure is logged (the replay may then run
/// again after a restart, which delivers it twice rather than not at all).
async fn remember(store: &dyn StateStore, name: &str, state: ReplayState) {
    let written = crate::stored::update(store, &spec_key(), WHAT, |records| {
        records.insert(name.to_string(), Remembered { state });
    })
    .await;
    if let Err(error) = written {
        tracing::warn!(replay = %name, error = %ofe_core::Report(&error), "cannot record the replay's state");
    }
}

/// Mirrors a replay's progress into `ofe_trigger_replay_events` until it ends.
async fn mirror(mut progress: watch::Receiver<Progress>, metrics: TriggerMetrics) {
    loop {
        let p = progress.borrow_and_update().clone();
        for (count, value) in [
            ("read", p.read),
            ("fired", p.fired),
            ("delivered", p.delivered),
            ("dead_lettered", p.dead_lettered),
        ] {
            let labels = ReplayLabels {
                namespace: p.namespace.clone(),
                trigger: p.trigger.clone(),
                subscriber: p.subscriber.clone(),
                replay: p.id.clone(),
                count: count.into(),
            };
            metrics.replay.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        if p.state != ReplayState::Running || progress.changed().await.is_err() {
            return;
        }
    }
}
