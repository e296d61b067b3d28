//! The data plane of one process: the EventSources and Triggers it runs, changed in place.
//!
//! [`Plane::apply`] takes the whole desired set of resources and changes only what differs:
//! a removed or changed EventSource's sources stop (a changed one starts again), a removed or
//! changed Trigger's subscribers stop, and the router of a bus is rebuilt when the subscribers
//! it routes change. Webhooks claim their paths on one listener, open while any is wanted, so
//! a changed webhook does not disturb the others. What did not
//! change keeps running untouched. Order when starting: subscriber consumers, then routers,
//! then sources, so that nothing a new source publishes is missed; when stopping, the other
//! way round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ofe_core::health::{Health, ResourceKey};
use ofe_core::{EventBus, Subject};
use ofe_crds::manifest::{DEFAULT_NAMESPACE, Manifest, Resource};
use ofe_eventsource::{SourceHost, SourceMetrics};
use ofe_trigger::runner::{self, SubscriberPlan};
use ofe_trigger::{Deliverer, PlanOptions, SubscriberLabels, TriggerMetrics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use axum::serve::ListenerExt as _;

use ofe_eventbus::Buses;

use crate::deadletters::DeadLetters;
use crate::error::{RuntimeError, chain};
use crate::pause::Pauses;
use crate::replay::Replays;
use crate::spec::{PlaneSpec, SourcePlan, digest, event_source_sink_plan, group_routers};

/// Where `ofe send` can publish: per subject, the buses that carry it, as of the last apply.
pub type SendTargets = Arc<std::sync::RwLock<BTreeMap<Subject, Vec<Arc<dyn EventBus>>>>>;

/// Turns Nagle's algorithm off on an accepted connection, as Go's servers do by default:
/// with it, a response written in two parts can wait for the client's delayed ACK (up to
/// 40 ms on Linux) before its second part leaves.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// Input events the router of a bus holds unacknowledged at once.
const ROUTER_IN_FLIGHT: usize = 1024;

/// What the process decides for every resource it runs.
pub struct Settings {
    /// Where the embedded bus keeps its data.
    pub data_dir: std::path::PathBuf,
    /// How Triggers are planned (retries, `sink.ref` template).
    pub options: PlanOptions,
    /// The hop limit of topic publishes and replies.
    pub max_hops: u32,
    /// How long stopping subscribers wait for in-flight deliveries.
    pub drain: Duration,
    /// Where webhooks are served.
    pub webhook_listen: String,
}

impl Settings {
    /// The settings `ofe run` starts with unless told otherwise: data in `data_dir`, default
    /// plan options and hop limit, a 30 s drain, webhooks on 127.0.0.1:8080.
    pub fn new(data_dir: std::path::PathBuf) -> Self {
        Self {
            data_dir,
            options: PlanOptions::default(),
            max_hops: ofe_trigger::sink::topic::DEFAULT_MAX_HOPS,
            drain: Duration::from_secs(30),
            webhook_listen: "127.0.0.1:8080".into(),
        }
    }
}

/// Tasks that stop together.
struct Running {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// `task` as a task of its own, stopped by `stop`; an error it ends with is logged as
    /// `what`'s.
    fn one<E: std::error::Error + Send + 'static>(
        stop: CancellationToken,
        what: &'static str,
        task: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
    ) -> Self {
        // Boxed: a future awaited inside another is laid out beside the captured one it was
        // moved from, so the spawned task would hold the subscriber's kilobytes twice (6 KB a
        // Trigger, 60 MB for 10,000).
        let task = Box::pin(task);
        let task = tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::error!(error = %chain(&e), "{what} stopped with an error");
            }
        });
        Self { stop, tasks: vec![task] }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A resource, or a part of one, that the plane could not start, and why. The plane reports
/// it on the health board and tries again at the next [`Plane::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceFailure {
    /// The resource.
    pub key: ResourceKey,
    /// The condition type that turns false, e.g. `BusConnected`.
    pub condition: &'static str,
    /// One CamelCase word.
    pub reason: &'static str,
    /// The error, with its causes.
    pub message: String,
}

impl std::fmt::Display for ResourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}: {}", self.key.kind, self.key.namespace, self.key.name, self.message)
    }
}

/// Something running, and the digest of the configuration it runs, to tell a change.
type Versioned = (String, Running);

/// The running EventSources and Triggers of this process.
pub struct Plane {
    settings: Settings,
    buses: Buses,
    health: Health,
    /// What the EventSources share: metrics, the board and the webhook routes.
    host: SourceHost,
    trigger_metrics: TriggerMetrics,
    client: ofe_trigger::sink::HttpClient,
    sources: BTreeMap<ResourceKey, Versioned>,
    subscribers: BTreeMap<String, Versioned>,
    routers: BTreeMap<String, Versioned>,
    /// The listener of webhook paths, while any EventSource has a webhook.
    webhook_listener: Option<Running>,
    /// Per resource, the task that reports its bus's connection.
    bus_watchers: BTreeMap<ResourceKey, Versioned>,
    /// What failed at the last apply, to withdraw from the board once it no longer does.
    failures: Vec<ResourceFailure>,
    /// Where `ofe send` can publish, as of the last apply.
    targets: SendTargets,
    /// The subscribers' pauses, which the endpoint changes.
    pauses: Pauses,
    /// Follows the pauses stored on the buses (what other replicas were asked), from the
    /// first apply on.
    pause_follower: Option<Running>,
    /// The subscribers' dead-letter stores, which the endpoint reads and changes.
    dead_letters: DeadLetters,
    /// The subscribers' replays, which the endpoint starts and cancels.
    replays: Replays,
    /// The mesh as of the last apply, for the console.
    topology: crate::topology::Topology,
}

impl Plane {
    /// An empty plane.
    pub fn new(
        settings: Settings,
        health: Health,
        source_metrics: SourceMetrics,
        trigger_metrics: TriggerMetrics,
        targets: SendTargets,
    ) -> Result<Self, RuntimeError> {
        let client = ofe_trigger::sink::http::tls::http_client_with(&settings.options.sink_tls)
            .map_err(RuntimeError::Client)?;
        Ok(Self {
            settings,
            buses: Buses::new(&[]),
            host: SourceHost {
                metrics: source_metrics,
                health: health.clone(),
                routes: Default::default(),
            },
            health,
            trigger_metrics,
            client,
            sources: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            routers: BTreeMap::new(),
            webhook_listener: None,
            bus_watchers: BTreeMap::new(),
            failures: Vec::new(),
            targets,
            pauses: Pauses::default(),
            pause_follower: None,
            dead_letters: DeadLetters::default(),
            replays: Replays::default(),
            topology: crate::topology::Topology::default(),
        })
    }

    /// The same plane, publishing the mesh it runs to `topology` at every apply, for the
    /// console.
    pub fn with_topology(mut self, topology: crate::topology::Topology) -> Self {
        self.topology = topology;
        self
    }

    /// The same plane, keeping its subscribers' pauses in `pauses`, which the endpoint
    /// changes for `ofe pause` and `ofe resume`.
    pub fn with_pauses(mut self, pauses: Pauses) -> Self {
        self.pauses = pauses;
        self
    }

    /// The same plane, registering its subscribers' dead-letter stores in `dead_letters`, for
    /// `ofe deadletters`.
    pub fn with_dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// The same plane, registering its Trigger subscribers in `replays`, for `ofe replay`.
    pub fn with_replays(mut self, replays: Replays) -> Self {
        self.replays = replays;
        self
    }

    /// What `manifests` ask for. A resource whose bus cannot be opened, or which cannot be
    /// planned, is left out as a [`ResourceFailure`] naming its file and document.
    async fn desired(&mut self, manifests: &[Manifest]) -> PlaneSpec {
        let resources: Vec<Resource> = manifests.iter().map(|m| m.resource.clone()).collect();
        self.buses.set_specs(&resources);
        let data_dir = self.settings.data_dir.clone();
        let mut desired = PlaneSpec {
            sources: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            triggers: BTreeMap::new(),
            failures: Vec::new(),
        };
        for m in manifests {
            let (r, origin) = (&m.resource, &m.origin);
            let namespace = r.namespace().unwrap_or(DEFAULT_NAMESPACE);
            let at = || format!("{origin}: {} `{}`", r.kind(), r.name());
            let key = r.key();
            let bus_name = match r {
                Resource::Trigger(t) => Some(t.spec.event_bus.as_str()),
                Resource::EventSource(es) => es.spec.event_bus.as_deref(),
                Resource::EventBus(_) | Resource::ClusterEventBus(_) => continue,
            };
            let bus = match self.buses.get(namespace, bus_name, &data_dir).await {
                Ok(bus) => bus,
                Err(e) => {
                    desired.failures.push(ResourceFailure {
                        key,
                        condition: "BusConnected",
                        reason: "BusUnreachable",
                        message: format!("{}: {}", at(), chain(&e)),
                    });
                    continue;
                }
            };
            // A resource restarts when its bus's spec changes, on the new bus.
            let bus_digest = self.buses.digest(namespace, bus_name);
            let invalid = |message: String| ResourceFailure {
                key: key.clone(),
                condition: "SinkResolved",
                reason: "SinkUnresolved",
                message,
            };
            match r {
                Resource::Trigger(t) => {
                    let plans = match ofe_trigger::plan(t, &self.settings.options) {
                        Ok(plans) => plans,
                        Err(ds) => {
                            let text: Vec<String> =
                                ds.iter().map(|d| d.clone().at(origin).to_string()).collect();
                            desired.failures.push(invalid(text.join("\n")));
                            continue;
                        }
                    };
                    let router = self.buses.router_consumer(namespace, bus_name);
                    // Asking for a replay changes nothing that runs: the subscribers (and the
                    // replays running beside them) carry on.
                    let spec = ofe_crds::TriggerSpec { replays: None, ..t.spec.clone() };
                    let version = digest(namespace, r.name(), &spec) + &bus_digest;
                    for plan in plans {
                        let entry = (plan, bus.clone(), router.clone(), version.clone());
                        desired.subscribers.insert(entry.0.consumer.clone(), entry);
                    }
                    desired.triggers.insert(key, (bus, version));
                }
                Resource::EventSource(es) => {
                    let version = digest(namespace, r.name(), &es.spec) + &bus_digest;
                    match event_source_sink_plan(es, &self.settings.options) {
                        Ok(Some(plan)) => {
                            let entry = (plan, bus.clone(), String::new(), version.clone());
                            desired.subscribers.insert(entry.0.consumer.clone(), entry);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            desired.failures.push(invalid(format!("{}: {}", at(), chain(&e))));
                            continue;
                        }
                    }
                    desired
                        .sources
                        .insert(key, SourcePlan { es: es.clone(), bus, version, at: at() });
                }
                Resource::EventBus(_) | Resource::ClusterEventBus(_) => {}
            }
        }
        desired
    }

    /// Makes the plane run exactly `manifests`, changing only what differs. What cannot
    /// start (a bus that cannot be reached, a consumer that cannot be opened) is left out,
    /// reported on the health board, and returned; the next apply tries it again, and the
    /// rest runs meanwhile.
    pub async fn apply(
        &mut self,
        manifests: &[Manifest],
    ) -> Result<Vec<ResourceFailure>, RuntimeError> {
        if self.pause_follower.is_none() {
            let stop = CancellationToken::new();
            let follow = self.pauses.clone().follow(stop.clone());
            self.pause_follower = Some(Running { stop, tasks: vec![tokio::spawn(follow)] });
        }
        let mut desired = self.desired(manifests).await;
        let mut failures = std::mem::take(&mut desired.failures);
        if let Ok(mut targets) = self.targets.write() {
            *targets = desired.targets();
        }
        if let Ok(mut topology) = self.topology.write() {
            *topology = crate::topology::Graph::of(&desired);
        }

        // Stop what goes or changes: sources first, then routers, then subscribers.
        let sources = &desired.sources;
        for key in
            stop_changed(&mut self.sources, |k| sources.get(k).map(|d| d.version.as_str())).await
        {
            if !sources.contains_key(&key) {
                tracing::info!(eventsource = %key.name, namespace = %key.namespace, "eventsource stopped");
            }
        }
        let routers = group_routers(&desired);
        stop_changed(&mut self.routers, |k| routers.get(k).map(|d| d.0.as_str())).await;
        let subscribers = &desired.subscribers;
        stop_changed(&mut self.subscribers, |k| subscribers.get(k).map(|d| d.3.as_str())).await;
        self.buses.close_retired().await;

        // Start what is new or changed: subscribers, routers, sources.
        for (consumer, (plan, bus, router, version)) in desired.subscribers {
            if self.subscribers.contains_key(&consumer) {
                continue;
            }
            let key = subscriber_key(&plan);
            match self.start_subscriber(plan, bus, &router).await {
                Ok(started) => {
                    self.subscribers.insert(consumer, (version, started));
                }
                Err(e) => failures.push(ResourceFailure {
                    key,
                    condition: "Subscribed",
                    reason: "SubscribeFailed",
                    message: format!("{e:#}"),
                }),
            }
        }
        for (name, (version, bus, routings)) in routers {
            if self.routers.contains_key(&name) {
                continue;
            }
            let routed: Vec<ResourceKey> =
                routings.iter().map(|r| subscriber_key_of(&r.labels)).collect();
            match self.start_router(&name, bus, routings).await {
                Ok(started) => {
                    self.routers.insert(name, (version, started));
                }
                Err(e) => failures.extend(routed.into_iter().map(|key| ResourceFailure {
                    key,
                    condition: "Subscribed",
                    reason: "RouterFailed",
                    message: format!("{e:#}"),
                })),
            }
        }
        // The listener opens before the first webhook claims its path, and closes after the
        // last one gave its path back (stopped above).
        let wants_listener = desired.sources.values().any(|p| p.es.spec.webhook.is_some());
        if wants_listener && self.webhook_listener.is_none() {
            self.webhook_listener = Some(self.listen_for_webhooks().await?);
        } else if !wants_listener && let Some(running) = self.webhook_listener.take() {
            running.stop().await;
        }
        for (key, SourcePlan { es, bus, version, at }) in &desired.sources {
            if self.sources.contains_key(key) {
                continue;
            }
            let stop = CancellationToken::new();
            match ofe_eventsource::spawn(es, bus.clone(), &self.host, &stop) {
                Ok(tasks) => {
                    tracing::info!(eventsource = %key.name, events = tasks.len(), "eventsource started");
                    self.sources.insert(key.clone(), (version.clone(), Running { stop, tasks }));
                }
                Err(e) => failures.push(ResourceFailure {
                    key: key.clone(),
                    condition: ofe_eventsource::SOURCE_CONNECTED,
                    reason: "SourceFailed",
                    message: format!("{at}: {}", chain(&e)),
                }),
            }
        }
        // Every resource reports whether its bus is connected.
        let mut watched: BTreeMap<ResourceKey, (Arc<dyn EventBus>, String)> = desired.triggers;
        for (key, SourcePlan { bus, version, .. }) in &desired.sources {
            watched.insert(key.clone(), (bus.clone(), version.clone()));
        }
        let removed =
            stop_changed(&mut self.bus_watchers, |k| watched.get(k).map(|d| d.1.as_str())).await;
        for key in removed.into_iter().filter(|k| !watched.contains_key(k)) {
            // Gone: its watcher is stopped, so no late report brings its entry back.
            self.health.remove(&key);
        }
        for (key, (bus, version)) in watched {
            if !self.bus_watchers.contains_key(&key) {
                let running = self.watch_bus(key.clone(), &bus);
                self.bus_watchers.insert(key, (version, running));
            }
        }
        // Replays the Triggers' specs ask for, once their subscribers run.
        for m in manifests {
            if let Resource::Trigger(t) = &m.resource
                && t.spec.replays.is_some()
            {
                self.replays.from_spec(t).await;
            }
        }
        self.report_failures(manifests, &failures);
        Ok(failures)
    }

    /// Puts `failures` on the board, and takes back the earlier ones that no longer happen;
    /// a resource no longer in `manifests` leaves the board.
    fn report_failures(&mut self, manifests: &[Manifest], failures: &[ResourceFailure]) {
        let wanted: std::collections::BTreeSet<ResourceKey> =
            manifests.iter().map(|m| m.resource.key()).collect();
        for old in std::mem::take(&mut self.failures) {
            if !wanted.contains(&old.key) {
                self.health.remove(&old.key);
            } else if !failures.iter().any(|f| f.key == old.key && f.condition == old.condition) {
                self.health.handle(old.key, old.condition, "plane").withdraw();
            }
        }
        for f in failures {
            tracing::warn!(kind = %f.key.kind, namespace = %f.key.namespace, name = %f.key.name, reason = f.reason, error = %f.message, "cannot run this resource yet");
            self.health.handle(f.key.clone(), f.condition, "plane").down(f.reason, &*f.message);
        }
        self.failures = failures.to_vec();
    }

    /// Reports, for `key`, whether `bus` is connected, for as long as it runs.
    fn watch_bus(&self, key: ResourceKey, bus: &Arc<dyn EventBus>) -> Running {
        let reporter = self.health.reporter(key, "BusConnected", bus.backend());
        // The embedded and memory buses are this process's own: say so, since replicas do not
        // share them.
        let up = match bus.backend() {
            "embedded" => "EmbeddedBus",
            "memory" => "MemoryBus",
            _ => "Connected",
        };
        let mut connection = bus.connection();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                match connection.borrow_and_update().clone() {
                    ofe_core::Connection::Up => reporter.up(up),
                    ofe_core::Connection::Lost(why) => reporter.down("BusUnreachable", why),
                    ofe_core::Connection::Storage { reason, message } => {
                        reporter.down(reason, message)
                    }
                }
                tokio::select! {
                    () = until.cancelled() => return,
                    changed = connection.changed() => if changed.is_err() {
                        // The bus does not report changes (embedded): it stays as it is.
                        until.cancelled().await;
                        return;
                    }
                }
            }
        });
        Running { stop, tasks: vec![task] }
    }

    /// Starts a subscriber on `bus`, whose router is `router` (empty: an EventSource's own
    /// sink, which has none and is never paused).
    async fn start_subscriber(
        &self,
        plan: SubscriberPlan,
        bus: Arc<dyn EventBus>,
        router: &str,
    ) -> Result<Running, RuntimeError> {
        let delivering = self.health.handle(
            subscriber_key(&plan),
            ofe_trigger::delivering::DELIVERING,
            &format!("subscriber {}", plan.labels.subscriber),
        );
        let deliverer = Deliverer::with_client(self.client.clone(), bus.clone())
            .with_max_hops(self.settings.max_hops)
            .with_health(ofe_trigger::delivering::DeliveryHealth::new(delivering));
        let subscription = runner::subscribe(&plan, bus.as_ref()).await.map_err(|source| {
            RuntimeError::Subscribe { what: format!("consumer {}", plan.consumer), source }
        })?;
        let paused = if router.is_empty() {
            tokio::sync::watch::channel(false).1
        } else {
            let store = bus.state_store().await.map_err(|source| RuntimeError::Subscribe {
                what: format!("the paused subscribers of bus {router}"),
                source,
            })?;
            let labels = plan.labels.clone();
            self.pauses
                .register(&plan.consumer, labels, router, store, plan.paused)
                .await
                .map_err(|error| RuntimeError::Pause { consumer: plan.consumer.clone(), error })?
        };
        let stop = CancellationToken::new();
        // The dead-letter store opens when first needed, or now when the bus notes that this
        // subscriber holds letters.
        // One copy of the plan for the dead-letter store and the replays (10,000 subscribers
        // would hold two more each).
        let shared = Arc::new(plan.clone());
        let letters = match plan.dead_letters.clone() {
            Some(topic) => {
                Some(self.letters(shared.clone(), topic, &bus, router, &deliverer, &stop).await)
            }
            None => None,
        };
        let deliverer = match &letters {
            Some(letters) => deliverer.with_letters(letters.clone()),
            None => deliverer,
        };
        tracing::info!(consumer = %plan.consumer, paused = *paused.borrow(), "subscriber ready");
        report_subscriber(&self.health, &plan);
        let (pauses, consumer) = (self.pauses.clone(), plan.consumer.clone());
        let labels = plan.labels.clone();
        let replays = self.replays.clone();
        if !router.is_empty() {
            // Without the live record of deliveries: a replay delivers what was delivered.
            replays.register(shared, deliverer.clone(), stop.clone());
        }
        let mut follow = None;
        let deliverer = match plan.dedupe {
            Some(window) => {
                let (dedupe, follower) = self.open_dedupe(&plan, &bus, window, &stop).await?;
                follow = Some(follower);
                deliverer.with_dedupe(dedupe)
            }
            None => deliverer,
        };
        let task = runner::run(
            plan,
            subscription,
            deliverer,
            self.trigger_metrics.clone(),
            paused,
            stop.clone(),
            self.settings.drain,
        );
        let dead_letters = self.dead_letters.clone();
        if let Some(letters) = letters {
            dead_letters.register(&consumer, labels, letters);
        }
        let task = async move {
            let result = task.await;
            pauses.unregister(&consumer);
            replays.unregister(&consumer);
            dead_letters.unregister(&consumer);
            result
        };
        let mut running = Running::one(stop.clone(), "subscriber", task);
        if let Some(follow) = follow {
            running.tasks.push(tokio::spawn(follow));
        }
        Ok(running)
    }

    /// Subscriber `plan`'s dead-letter store on `topic`: opened now (in the background) when
    /// the bus notes that it holds letters, else when first needed. Opening it notes it.
    async fn letters(
        &self,
        plan: Arc<SubscriberPlan>,
        topic: Subject,
        bus: &Arc<dyn EventBus>,
        router: &str,
        deliverer: &Deliverer,
        stop: &CancellationToken,
    ) -> Arc<ofe_trigger::deadletters::Lazy> {
        let consumer = plan.consumer.clone();
        let lazy = ofe_trigger::deadletters::Lazy::new(
            plan,
            topic,
            deliverer.clone(),
            self.trigger_metrics.clone(),
            stop.clone(),
        );
        let store = bus.state_store().await.ok().flatten();
        let Some(store) = store else { return Arc::new(lazy) };
        let noted = self.dead_letters.noted(router, store.as_ref(), &consumer).await;
        let lazy = Arc::new(lazy.on_open(move || {
            let (store, consumer) = (store.clone(), consumer.clone());
            tokio::spawn(async move { DeadLetters::note(store.as_ref(), &consumer).await });
        }));
        if noted {
            let opening = lazy.clone();
            tokio::spawn(async move {
                if let Err(error) = opening.store().await {
                    tracing::warn!(error = %ofe_core::Report(&error), "cannot open the dead-letter store");
                }
            });
        }
        lazy
    }

    /// Opens subscriber `plan`'s record of what it delivered, loading the window's markers
    /// before it returns; the future follows what other processes record, until `stop`.
    async fn open_dedupe(
        &self,
        plan: &SubscriberPlan,
        bus: &Arc<dyn EventBus>,
        window: Duration,
        stop: &CancellationToken,
    ) -> Result<
        (Arc<ofe_trigger::dedupe::Dedupe>, impl std::future::Future<Output = ()> + Send + 'static),
        RuntimeError,
    > {
        let labels = &plan.labels;
        let topic = ofe_trigger::dedupe::topic(&labels.trigger, &labels.subscriber);
        let subject = Subject::topic(&labels.namespace, &topic);
        // One reader per process (each reads every marker), named after the host so that a
        // restart takes its own back instead of leaving one behind.
        let host: String = ofe_core::host_name()
            .unwrap_or_else(|| "local".into())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        let reader = format!("dedupe.{}.{host}", plan.consumer);
        ofe_trigger::dedupe::Dedupe::open(
            bus.clone(),
            &plan.consumer,
            subject,
            window,
            &reader,
            stop.clone(),
        )
        .await
        .map_err(|source| RuntimeError::Subscribe {
            what: format!("the delivered keys of consumer {}", plan.consumer),
            source,
        })
    }

    async fn start_router(
        &self,
        name: &str,
        bus: Arc<dyn EventBus>,
        routings: Vec<Arc<ofe_trigger::Routing>>,
    ) -> Result<Running, RuntimeError> {
        let subscribers = routings.len();
        let joins = routings.iter().any(|r| r.joins());
        let mut router = ofe_trigger::Router::new(routings, self.trigger_metrics.clone());
        if joins {
            let store = bus.state_store().await.map_err(|source| RuntimeError::Subscribe {
                what: format!("the join state store of router {name}"),
                source,
            })?;
            match store {
                Some(store) => router = router.with_store(store),
                None => tracing::warn!(
                    backend = bus.backend(),
                    "this bus keeps no join state; joins restart empty after a restart, and \
                     replicas do not share them"
                ),
            }
        }
        let subscription =
            ofe_trigger::router::subscribe(&router, bus.as_ref(), name, ROUTER_IN_FLIGHT)
                .await
                .map_err(|source| RuntimeError::Subscribe {
                    what: format!("the Trigger router {name}"),
                    source,
                })?;
        tracing::info!(consumer = %name, backend = bus.backend(), subscribers, "router ready");
        let stop = CancellationToken::new();
        let task = ofe_trigger::router::run(router, subscription, bus, stop.clone());
        Ok(Running::one(stop, "router", task))
    }

    /// Opens the listener that serves the webhooks' paths.
    async fn listen_for_webhooks(&self) -> Result<Running, RuntimeError> {
        let listen = &self.settings.webhook_listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| RuntimeError::Listen { address: listen.clone(), source })?;
        let address = listener
            .local_addr()
            .map_err(|source| RuntimeError::Listen { address: listen.clone(), source })?;
        tracing::info!(%address, "serving webhooks");
        let router = self.host.routes.router();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener.tap_io(no_delay), router)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "webhook listener failed");
            }
        });
        Ok(Running { stop, tasks: vec![task] })
    }

    /// Stops everything: sources and webhooks, then routers, then subscribers (which finish
    /// in-flight deliveries for up to the drain time), then closes the buses.
    pub async fn shutdown(mut self) {
        for (_, (_, running)) in std::mem::take(&mut self.sources) {
            running.stop().await;
        }
        if let Some(running) = self.webhook_listener.take() {
            running.stop().await;
        }
        let routers = std::mem::take(&mut self.routers);
        futures::future::join_all(routers.into_values().map(|(_, r)| r.stop())).await;
        let subscribers = std::mem::take(&mut self.subscribers);
        futures::future::join_all(subscribers.into_values().map(|(_, r)| r.stop())).await;
        let watchers = std::mem::take(&mut self.bus_watchers);
        futures::future::join_all(watchers.into_values().map(|(_, r)| r.stop())).await;
        if let Some(follower) = self.pause_follower.take() {
            follower.stop().await;
        }
        self.buses.close().await;
    }
}

/// Stops and removes what runs under a key for which `wanted` gives no digest, or another
/// one; returns those keys.
async fn stop_changed<'a, K: Ord + Clone>(
    running: &mut BTreeMap<K, Versioned>,
    wanted: impl Fn(&K) -> Option<&'a str>,
) -> Vec<K> {
    let changed: Vec<K> = running
        .iter()
        .filter(|(k, (version, _))| wanted(k) != Some(version.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    for key in &changed {
        if let Some((_, r)) = running.remove(key) {
            r.stop().await;
        }
    }
    changed
}

/// The resource a subscriber belongs to: its Trigger, or the EventSource whose `sink` it is.
fn subscriber_key(plan: &SubscriberPlan) -> ResourceKey {
    subscriber_key_of(&plan.labels)
}

/// [`subscriber_key`], from the subscriber's labels.
fn subscriber_key_of(labels: &SubscriberLabels) -> ResourceKey {
    let (kind, name) = match labels.trigger.strip_prefix("eventsource/") {
        Some(es) => ("EventSource", es.to_string()),
        None => ("Trigger", labels.trigger.clone()),
    };
    ResourceKey::new(kind, labels.namespace.clone(), name)
}

/// A subscriber whose consumer is open reports its sinks resolved (they were, or it would
/// not have been planned) and itself subscribed.
fn report_subscriber(health: &Health, plan: &SubscriberPlan) {
    let key = subscriber_key(plan);
    let who = format!("subscriber {}", plan.labels.subscriber);
    health.handle(key.clone(), "SinkResolved", &who).up("Resolved");
    health.handle(key, "Subscribed", &who).up("ConsumerOpen");
}
