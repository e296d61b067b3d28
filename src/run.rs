//! `ofe run`: every EventSource and Trigger of the manifests, in this process.
//!
//! Order of start-up: load and check everything (refuse to start on any error), open the bus,
//! open every subscriber's durable consumer, and only then start the sources, so that nothing
//! a source publishes at start is missed. Shutdown (SIGINT/SIGTERM) runs the other way: sources
//! stop, subscribers stop taking events and finish in-flight deliveries (up to
//! `--drain-timeout`), then the bus flushes and closes.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ofe_crds::manifest::{DEFAULT_NAMESPACE, Resource};
use ofe_crds::{BusBackend, EventBusSpec, EventSource};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventbus::{EventBus, Subject};
use ofe_eventsource::SourceMetrics;
use ofe_trigger::runner::{self, Route, SubscriberPlan};
use ofe_trigger::{Deliverer, RetryPolicy, SubscriberLabels, TriggerMetrics};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{check, telemetry};

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
    /// Log filter when RUST_LOG is unset, e.g. `info` or `ofe=debug`.
    #[arg(long, default_value = "info,lsm_tree=warn,fjall=warn")]
    log_level: String,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// How long shutdown waits for in-flight deliveries, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
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
    runtime.block_on(serve(args, checked.manifests.into_iter().map(|m| m.resource).collect()))?;
    Ok(ExitCode::SUCCESS)
}

/// Which buses the manifests define, for resolving `eventBus` names.
#[derive(Default)]
struct Buses {
    namespaced: BTreeMap<(String, String), EventBusSpec>,
    cluster: BTreeMap<String, EventBusSpec>,
}

impl Buses {
    /// Resolves `name` as OpenFunction does: the namespaced EventBus first, then the
    /// ClusterEventBus. `None` means no loaded resource defines it.
    fn resolve(&self, namespace: &str, name: &str) -> Option<&EventBusSpec> {
        self.namespaced
            .get(&(namespace.to_string(), name.to_string()))
            .or_else(|| self.cluster.get(name))
    }
}

/// Checks that every bus name used can run here. All embedded buses share one store in
/// `--data-dir`; subjects carry namespace and names, so they never mix.
fn plan_bus(resources: &[Resource], buses: &Buses) -> anyhow::Result<EmbeddedConfigPart> {
    let mut undefined = HashSet::new();
    let mut part = EmbeddedConfigPart::default();
    for resource in resources {
        let namespace = resource.namespace().unwrap_or(DEFAULT_NAMESPACE);
        let bus_name = match resource {
            Resource::EventSource(es) => es.spec.event_bus.clone(),
            Resource::Trigger(t) => Some(t.spec.event_bus.clone()),
            _ => None,
        };
        let Some(bus_name) = bus_name else { continue };
        match buses.resolve(namespace, &bus_name) {
            None => {
                if undefined.insert(bus_name.clone()) {
                    tracing::info!(
                        bus = %bus_name,
                        "no loaded EventBus or ClusterEventBus defines this bus; using the embedded bus"
                    );
                }
            }
            Some(spec) => match spec.backends().first() {
                None | Some((BusBackend::Embedded, _)) => {
                    if let Some(e) = &spec.embedded {
                        part.max_bytes =
                            part.max_bytes.max(e.max_bytes.and_then(|b| u64::try_from(b).ok()));
                        if let Some(age) = &e.max_age {
                            part.max_age = part.max_age.max(ofe_crds::duration::parse(age).ok());
                        }
                    }
                }
                Some((_, field)) => bail!(
                    "{} `{}` uses the `{field}` bus `{bus_name}`, which standalone `ofe run` cannot \
                     serve in this version; use the embedded bus (no backend, or `embedded: {{}}`)",
                    resource.kind(),
                    resource.name()
                ),
            },
        }
    }
    Ok(part)
}

#[derive(Default)]
struct EmbeddedConfigPart {
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
}

/// The plan delivering an EventSource's events to its own `sink`.
fn event_source_sink_plan(es: &EventSource) -> anyhow::Result<Option<SubscriberPlan>> {
    let Some(sink) = &es.spec.sink else { return Ok(None) };
    let namespace = es.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let name = es.metadata.name.as_deref().unwrap_or_default();
    let destination = ofe_trigger::sink_destination("spec.sink", sink)
        .map_err(|d| anyhow::anyhow!("EventSource `{name}`: {d}"))?;
    let inputs = es
        .spec
        .events()
        .into_iter()
        .map(|(_, event)| (event.to_string(), Subject::event(namespace, name, event)))
        .collect();
    Ok(Some(SubscriberPlan {
        labels: SubscriberLabels {
            namespace: namespace.to_string(),
            trigger: format!("eventsource/{name}"),
            subscriber: "sink".into(),
        },
        consumer: format!("eventsource.{namespace}.{name}.sink"),
        condition: None,
        inputs,
        window: ofe_trigger::DEFAULT_WINDOW,
        routes: vec![Route { destination, dead_letter: None }],
        max_in_flight: ofe_trigger::DEFAULT_MAX_IN_FLIGHT,
        retry: RetryPolicy::default(),
    }))
}

async fn serve(args: RunArgs, resources: Vec<Resource>) -> anyhow::Result<()> {
    let mut buses = Buses::default();
    for r in &resources {
        match r {
            Resource::EventBus(b) => {
                let key =
                    (r.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string(), r.name().to_string());
                buses.namespaced.insert(key, b.spec.clone());
            }
            Resource::ClusterEventBus(b) => {
                buses.cluster.insert(r.name().to_string(), b.spec.0.clone());
            }
            _ => {}
        }
    }
    let part = plan_bus(&resources, &buses)?;

    let mut plans = Vec::new();
    let mut sources = Vec::new();
    for r in &resources {
        match r {
            Resource::Trigger(t) => {
                plans.extend(ofe_trigger::plan(t, RetryPolicy::default()).map_err(|ds| {
                    let text: Vec<String> = ds.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!("Trigger `{}`: {}", r.name(), text.join("; "))
                })?)
            }
            Resource::EventSource(es) => {
                plans.extend(event_source_sink_plan(es)?);
                sources.push(es.clone());
            }
            _ => {}
        }
    }

    let mut config = EmbeddedConfig::new(args.data_dir.join("bus"));
    config.max_bytes = part.max_bytes.unwrap_or(config.max_bytes);
    config.max_age = part.max_age.unwrap_or(config.max_age);
    let store = config.dir.display().to_string();
    let embedded = tokio::task::spawn_blocking(move || EmbeddedBus::open(config))
        .await?
        .with_context(|| format!("cannot open the embedded bus in {store}"))?;
    tracing::info!(dir = %store, last_sequence = embedded.last_sequence(), "embedded bus open");
    let bus: Arc<dyn EventBus> = Arc::new(embedded);

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
    let http = tokio::spawn(telemetry::serve(listener, Arc::new(registry), shutdown.clone()));

    // Consumers first, so that the sources' first events are not missed.
    let deliverer = Deliverer::new(bus.clone()).context("cannot build the HTTP client")?;
    let stop_subscribers = CancellationToken::new();
    let mut subscriber_tasks = Vec::new();
    for plan in plans {
        let subscription = runner::subscribe(&plan, bus.as_ref())
            .await
            .with_context(|| format!("cannot subscribe consumer {}", plan.consumer))?;
        tracing::info!(consumer = %plan.consumer, "subscriber ready");
        subscriber_tasks.push(tokio::spawn(runner::run(
            plan,
            subscription,
            deliverer.clone(),
            trigger_metrics.clone(),
            stop_subscribers.clone(),
            args.drain_timeout,
        )));
    }
    let stop_sources = CancellationToken::new();
    let mut source_tasks = Vec::new();
    for es in &sources {
        let name = es.metadata.name.clone().unwrap_or_default();
        let tasks = ofe_eventsource::spawn(es, bus.clone(), &source_metrics, &stop_sources)
            .with_context(|| format!("EventSource `{name}`"))?;
        tracing::info!(eventsource = %name, events = tasks.len(), "eventsource started");
        source_tasks.extend(tasks);
    }
    tracing::info!("ofe is running; send SIGINT or SIGTERM to stop");

    telemetry::signal().await;
    tracing::info!("shutting down: stopping sources, finishing in-flight deliveries");
    stop_sources.cancel();
    for task in source_tasks {
        let _ = task.await;
    }
    stop_subscribers.cancel();
    for task in subscriber_tasks {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "subscriber stopped with an error"),
            Err(e) => tracing::error!(error = %e, "subscriber task failed"),
            Ok(Ok(())) => {}
        }
    }
    bus.close().await.context("closing the bus")?;
    shutdown.cancel();
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}
