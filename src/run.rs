//! `ofe run`: every EventSource and Trigger of the manifests, in this process.
//!
//! Order of start-up: load and check everything (refuse to start on any error), open the bus,
//! open every subscriber's durable consumer, and only then start the sources, so that nothing
//! a source publishes at start is missed. Shutdown (SIGINT/SIGTERM) runs the other way: sources
//! stop, subscribers stop taking events and finish in-flight deliveries (up to
//! `--drain-timeout`), then the bus flushes and closes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ofe_crds::EventSource;
use ofe_crds::manifest::{DEFAULT_NAMESPACE, Manifest, Resource};
use ofe_eventbus::health::{Health, ResourceKey};
use ofe_eventbus::{EventBus, Subject};
use ofe_eventsource::SourceMetrics;
use ofe_trigger::runner::{self, Route, SubscriberPlan};
use ofe_trigger::{Deliverer, PlanOptions, RetryPolicy, SubscriberLabels, TriggerMetrics};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::buses::Buses;
use crate::{check, telemetry};

/// A router to start: its bus, its consumer name and the subscribers it routes.
type RouterPlan = (Arc<dyn EventBus>, String, Vec<Arc<ofe_trigger::Routing>>);

/// Input events the router of a bus holds unacknowledged at once.
const ROUTER_IN_FLIGHT: usize = 1024;

/// Arguments of `ofe run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Files or folders of YAML manifests.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// Where the embedded bus keeps its data.
    #[arg(long, default_value = ".ofe", env = "OFE_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the `/healthz` and `/metrics` endpoint.
    #[arg(long, default_value = "127.0.0.1:9464", env = "OFE_LISTEN")]
    listen: String,
    /// Address webhook EventSources are served on (only opened when there are any).
    #[arg(long, default_value = "127.0.0.1:8080", env = "OFE_WEBHOOK_LISTEN")]
    webhook_listen: String,
    /// Log filter when RUST_LOG is unset, e.g. `info` or `ofe=debug`.
    #[arg(long, default_value = "info,lsm_tree=warn,fjall=warn")]
    log_level: String,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// How long shutdown waits for in-flight deliveries, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How a `sink.ref` becomes a URL without Kubernetes: a template with `{name}`,
    /// `{namespace}` and `{kind}` (lower case), e.g.
    /// `http://{name}.{namespace}.svc.cluster.local`. Without it, a `ref` is refused.
    #[arg(long, env = "OFE_REF_URL_TEMPLATE")]
    ref_url_template: Option<String>,
    /// How many times an event may be passed on to a topic or answered with a reply before
    /// ofe stops it as a loop.
    #[arg(long, default_value_t = ofe_trigger::delivery::DEFAULT_MAX_HOPS, env = "OFE_MAX_HOPS")]
    max_hops: u32,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    ofe_crds::duration::parse(text)
}

/// Entry point of `ofe run`.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logs(&args.log_level, args.log_json);
    let checked = check::load_and_check(&args.paths);
    check::report(&checked.diagnostics);
    if checked.has_errors() {
        bail!("the manifests have errors (listed above); fix them, or see `ofe validate`");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ofe")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, checked.manifests))?;
    Ok(ExitCode::SUCCESS)
}

/// The plan delivering an EventSource's events to its own `sink`.
fn event_source_sink_plan(
    es: &EventSource,
    options: &PlanOptions,
) -> anyhow::Result<Option<SubscriberPlan>> {
    let Some(sink) = &es.spec.sink else { return Ok(None) };
    let namespace = es.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let name = es.metadata.name.as_deref().unwrap_or_default();
    let destination = ofe_trigger::sink_destination("spec.sink", sink, namespace, options)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let subjects = es
        .spec
        .events()
        .into_iter()
        .map(|(_, event)| Subject::event(namespace, name, event))
        .collect();
    Ok(Some(SubscriberPlan {
        labels: SubscriberLabels {
            namespace: namespace.to_string(),
            trigger: format!("eventsource/{name}"),
            subscriber: "sink".into(),
        },
        consumer: format!("eventsource.{namespace}.{name}.sink"),
        subjects,
        routing: None,
        routes: vec![Route { destination, dead_letter: None }],
        max_in_flight: ofe_trigger::DEFAULT_MAX_IN_FLIGHT,
        retry: RetryPolicy::default(),
        order_key: None,
        reply: None,
        rate_limit: None,
        max_deliver: ofe_trigger::DEFAULT_MAX_DELIVER,
    }))
}

/// The board key of an EventSource.
fn es_key(es: &EventSource) -> ResourceKey {
    ResourceKey {
        kind: "EventSource".into(),
        namespace: es.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: es.metadata.name.clone().unwrap_or_default(),
    }
}

/// A subscriber whose consumer is open reports its sinks resolved (standalone, they were, or
/// `ofe run` would not have started) and itself subscribed.
fn report_subscriber(health: &Health, plan: &SubscriberPlan) {
    let labels = &plan.labels;
    let (kind, name) = match labels.trigger.strip_prefix("eventsource/") {
        Some(es) => ("EventSource", es.to_string()),
        None => ("Trigger", labels.trigger.clone()),
    };
    let key = ResourceKey { kind: kind.into(), namespace: labels.namespace.clone(), name };
    let who = format!("subscriber {}", labels.subscriber);
    health.reporter(key.clone(), "SinkResolved", &who).up("Resolved");
    health.reporter(key, "Subscribed", &who).up("ConsumerOpen");
}

/// Every error a resource causes at start-up names its file and document.
async fn serve(args: RunArgs, manifests: Vec<Manifest>) -> anyhow::Result<()> {
    let resources: Vec<Resource> = manifests.iter().map(|m| m.resource.clone()).collect();
    let mut buses = Buses::new(&resources);
    let options =
        PlanOptions { ref_url_template: args.ref_url_template.clone(), ..PlanOptions::default() };
    // Every subscriber with the bus it reads, and every EventSource with the bus it writes.
    let mut plans = Vec::new();
    let mut sources = Vec::new();
    for m in &manifests {
        let (r, origin) = (&m.resource, &m.origin);
        let namespace = r.namespace().unwrap_or(DEFAULT_NAMESPACE);
        let at = || format!("{origin}: {} `{}`", r.kind(), r.name());
        match r {
            Resource::Trigger(t) => {
                let bus = buses
                    .get(namespace, Some(&t.spec.event_bus), &args.data_dir)
                    .await
                    .with_context(at)?;
                let trigger_plans = ofe_trigger::plan(t, &options).map_err(|ds| {
                    let text: Vec<String> =
                        ds.iter().map(|d| d.clone().at(origin).to_string()).collect();
                    anyhow::anyhow!(text.join("\n"))
                })?;
                let router = buses.router_consumer(namespace, Some(&t.spec.event_bus));
                plans.extend(trigger_plans.into_iter().map(|p| (p, bus.clone(), router.clone())));
            }
            Resource::EventSource(es) => {
                let bus = buses
                    .get(namespace, es.spec.event_bus.as_deref(), &args.data_dir)
                    .await
                    .with_context(at)?;
                plans.extend(
                    event_source_sink_plan(es, &options)
                        .with_context(at)?
                        .map(|p| (p, bus.clone(), String::new())),
                );
                sources.push((es.clone(), bus, at()));
            }
            _ => {}
        }
    }

    let mut registry = Registry::default();
    let source_metrics = SourceMetrics::default();
    let trigger_metrics = TriggerMetrics::default();
    source_metrics.register(&mut registry);
    trigger_metrics.register(&mut registry);

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    tracing::info!(endpoint = %telemetry::describe(listener.local_addr()?), "serving /healthz and /metrics");
    let health = Health::default();
    let http = tokio::spawn(telemetry::serve(
        listener,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    ));

    // Consumers first, so that the sources' first events are not missed: each subscriber's
    // queue consumer, then one router per bus over every input the subscribers read.
    let client = ofe_trigger::delivery::http_client().context("cannot build the HTTP client")?;
    let stop_subscribers = CancellationToken::new();
    let mut subscriber_tasks = Vec::new();
    let mut routers: Vec<RouterPlan> = Vec::new();
    for (plan, bus, name) in &plans {
        let Some(routing) = &plan.routing else { continue };
        match routers.iter_mut().find(|(b, n, _)| Arc::ptr_eq(b, bus) && n == name) {
            Some((_, _, list)) => list.push(routing.clone()),
            None => routers.push((bus.clone(), name.clone(), vec![routing.clone()])),
        }
    }
    for (plan, bus, _) in plans {
        let deliverer =
            Deliverer::with_client(client.clone(), bus.clone()).with_max_hops(args.max_hops);
        let subscription = runner::subscribe(&plan, bus.as_ref())
            .await
            .with_context(|| format!("cannot subscribe consumer {}", plan.consumer))?;
        tracing::info!(consumer = %plan.consumer, "subscriber ready");
        report_subscriber(&health, &plan);
        subscriber_tasks.push(tokio::spawn(runner::run(
            plan,
            subscription,
            deliverer,
            trigger_metrics.clone(),
            stop_subscribers.clone(),
            args.drain_timeout,
        )));
    }
    let mut router_tasks = Vec::new();
    for (bus, name, list) in routers {
        let subscribers = list.len();
        let joins = list.iter().any(|r| r.condition.names().len() > 1);
        let mut router = ofe_trigger::Router::new(list, trigger_metrics.clone());
        if joins {
            match bus.state_store().await.context("cannot open the join state store")? {
                Some(store) => router = router.with_store(store),
                None => tracing::warn!(
                    backend = bus.backend(),
                    "this bus keeps no join state; joins restart empty after a restart, and \
                     replicas do not share them"
                ),
            }
        }
        let subscription =
            ofe_trigger::router::subscribe(&router, bus.as_ref(), &name, ROUTER_IN_FLIGHT)
                .await
                .with_context(|| format!("cannot subscribe the Trigger router {name}"))?;
        tracing::info!(consumer = %name, backend = bus.backend(), subscribers, "router ready");
        router_tasks.push(tokio::spawn(ofe_trigger::router::run(
            router,
            subscription,
            bus,
            stop_subscribers.clone(),
        )));
    }
    let stop_sources = CancellationToken::new();
    let mut source_tasks = Vec::new();
    for (es, bus, at) in &sources {
        let name = es.metadata.name.clone().unwrap_or_default();
        let tasks =
            ofe_eventsource::spawn(es, bus.clone(), &source_metrics, &health, &stop_sources)
                .with_context(|| at.clone())?;
        tracing::info!(eventsource = %name, events = tasks.len(), "eventsource started");
        source_tasks.extend(tasks);
    }
    let mut hooks = Vec::new();
    for (es, bus, at) in &sources {
        hooks.extend(ofe_eventsource::webhook::webhooks(es, bus).with_context(|| at.clone())?);
    }
    let webhooks = if hooks.is_empty() {
        None
    } else {
        let paths: Vec<String> = hooks.iter().map(|h| h.path().to_string()).collect();
        let router = ofe_eventsource::webhook::router(hooks, source_metrics.clone())
            .context("webhook EventSources")?;
        let listener =
            tokio::net::TcpListener::bind(&args.webhook_listen).await.with_context(|| {
                format!("cannot listen on {} (--webhook-listen)", args.webhook_listen)
            })?;
        tracing::info!(address = %listener.local_addr()?, ?paths, "serving webhooks");
        for (es, _, _) in &sources {
            for event in es.spec.webhook.iter().flat_map(|w| w.keys()) {
                health
                    .reporter(es_key(es), ofe_eventsource::SOURCE_CONNECTED, event)
                    .up("Listening");
            }
        }
        let stop = stop_sources.clone();
        Some(tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
        }))
    };
    tracing::info!("ofe is running; send SIGINT or SIGTERM to stop");

    telemetry::signal().await;
    tracing::info!("shutting down: stopping sources, finishing in-flight deliveries");
    stop_sources.cancel();
    for task in source_tasks {
        let _ = task.await;
    }
    if let Some(webhooks) = webhooks {
        let _ = webhooks.await;
    }
    stop_subscribers.cancel();
    for task in router_tasks {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "router stopped with an error"),
            Err(e) => tracing::error!(error = %e, "router task failed"),
            Ok(Ok(())) => {}
        }
    }
    for task in subscriber_tasks {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "subscriber stopped with an error"),
            Err(e) => tracing::error!(error = %e, "subscriber task failed"),
            Ok(Ok(())) => {}
        }
    }
    buses.close().await;
    shutdown.cancel();
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}
