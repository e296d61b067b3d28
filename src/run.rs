//! `ofe run`: every EventSource and Trigger of the manifests, in this process.
//!
//! Order of start-up: load and check everything (refuse to start on any error), then hand the
//! resources to the [`Plane`], which opens the buses and every subscriber's durable consumer
//! before it starts the sources, so that nothing a source publishes at start is missed.
//! SIGHUP (and, with `--watch`, a change of the files) loads and checks the manifests again and
//! applies what changed, without a restart. Shutdown (SIGINT/SIGTERM) runs the other way:
//! sources stop, subscribers stop taking events and finish in-flight deliveries (up to
//! `--drain-timeout`), then the buses flush and close.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ofe_core::health::Health;
use ofe_crds::manifest::Manifest;
use ofe_eventsource::SourceMetrics;
use ofe_trigger::{PlanOptions, TriggerMetrics};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::endpoint::console::{Console, Targets};
use crate::{endpoint, logging};
use ofe_runtime::{Plane, Settings};

/// Arguments of `ofe run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Files or folders of YAML manifests.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// How a `sink.ref` becomes a URL without Kubernetes: a template with `{name}`,
    /// `{namespace}` and `{kind}` (lower case), e.g.
    /// `http://{name}.{namespace}.svc.cluster.local`. Without it, a `ref` is refused.
    #[arg(long, env = "OFE_REF_URL_TEMPLATE")]
    ref_url_template: Option<String>,
    /// Reload the manifests when their files change (SIGHUP always reloads them).
    #[arg(long)]
    watch: bool,
    /// Where `secretKeyRef`s are read from, as mounted Secrets are laid out:
    /// `<dir>/<secret name>/<key>`. The variable `OFE_SECRET_<NAME>_<KEY>` comes first.
    #[arg(long, env = "OFE_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    #[command(flatten)]
    plane: PlaneArgs,
}

/// What `ofe run` and `ofe operator` share: the data plane's settings, its endpoints and logs.
#[derive(clap::Args)]
pub struct PlaneArgs {
    /// Where the embedded bus keeps its data.
    #[arg(long, default_value = ".ofe", env = "OFE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address of the `/healthz`, `/metrics` and `/status` endpoint.
    #[arg(long, default_value = "127.0.0.1:9464", env = "OFE_LISTEN")]
    listen: String,
    /// Address webhook EventSources are served on (only opened when there are any).
    #[arg(long, default_value = "127.0.0.1:8080", env = "OFE_WEBHOOK_LISTEN")]
    webhook_listen: String,
    /// Log filter when RUST_LOG is unset, e.g. `info` or `ofe=debug`.
    #[arg(long, default_value = "info,lsm_tree=warn,fjall=warn")]
    pub log_level: String,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// How long shutdown waits for in-flight deliveries, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = ofe_crds::duration::parse)]
    drain_timeout: Duration,
    /// How many times an event may be passed on to a topic or answered with a reply before
    /// ofe stops it as a loop.
    #[arg(long, default_value_t = ofe_trigger::sink::topic::DEFAULT_MAX_HOPS, env = "OFE_MAX_HOPS")]
    max_hops: u32,
    /// The bearer token `ofe send` and `ofe tail` must present (`/send`, `/tail`). Without
    /// it they work only when `--listen` is a loopback address.
    #[arg(long, env = "OFE_CONSOLE_TOKEN", hide_env_values = true)]
    console_token: Option<String>,
    /// PEM certificates of CAs to trust for HTTPS sinks, besides the system's (a cluster's
    /// private CA).
    #[arg(long, env = "OFE_SINK_CA_FILE")]
    sink_ca_file: Option<PathBuf>,
    /// A PEM client certificate for HTTPS sinks that ask for one (mutual TLS); needs
    /// `--sink-key-file`.
    #[arg(long, env = "OFE_SINK_CERT_FILE", requires = "sink_key_file")]
    sink_cert_file: Option<PathBuf>,
    /// The PEM private key of `--sink-cert-file`.
    #[arg(long, env = "OFE_SINK_KEY_FILE", requires = "sink_cert_file")]
    sink_key_file: Option<PathBuf>,
}

/// A running process's endpoint and data plane.
pub struct Process {
    /// The data plane.
    pub plane: Plane,
    /// The health board the plane reports to, which the operator writes into status.
    #[cfg_attr(not(feature = "operator"), expect(dead_code))]
    pub health: Health,
    /// Set once the first apply has run, so `/healthz` answers 200.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The replays, whose progress the operator writes into status.
    #[cfg_attr(not(feature = "operator"), expect(dead_code))]
    pub replays: ofe_runtime::Replays,
    /// The console's history, whose frames say this replica's role in the operator.
    #[cfg_attr(not(feature = "operator"), expect(dead_code))]
    pub history: endpoint::history::History,
    shutdown: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Process {
    /// Opens the endpoint and an empty data plane with `options`, whose sinks' TLS `args`
    /// sets.
    pub async fn start(args: &PlaneArgs, mut options: PlanOptions) -> anyhow::Result<Self> {
        options.sink_tls = ofe_trigger::sink::http::tls::SinkTls {
            ca_file: args.sink_ca_file.clone(),
            client: args.sink_cert_file.clone().zip(args.sink_key_file.clone()),
        };
        let mut registry = Registry::default();
        // One tap for sources and Triggers, so `ofe tail` sees an event's whole path.
        let tap = ofe_core::tap::Tap::default();
        let source_metrics = SourceMetrics { tap: tap.clone(), ..SourceMetrics::default() };
        let trigger_metrics = TriggerMetrics { tap: tap.clone(), ..TriggerMetrics::default() };
        source_metrics.register(&mut registry);
        trigger_metrics.register(&mut registry);
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
        tracing::info!(endpoint = %endpoint::describe(listener.local_addr()?), "serving /healthz, /metrics and /status");
        let health = Health::default();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let console = Console {
            tap,
            targets: Targets::default(),
            metrics: source_metrics.clone(),
            token: args.console_token.as_deref().filter(|t| !t.is_empty()).map(Arc::from),
            loopback: listener.local_addr()?.ip().is_loopback(),
            pauses: ofe_runtime::Pauses::default(),
            dead_letters: ofe_runtime::DeadLetters::default(),
            replays: ofe_runtime::Replays::new(trigger_metrics.clone()),
            topology: ofe_runtime::Topology::default(),
            history: endpoint::history::History::default(),
            trail: endpoint::trail::Trail::default(),
        };
        let (targets, pauses) = (console.targets.clone(), console.pauses.clone());
        let (dead_letters, replays) = (console.dead_letters.clone(), console.replays.clone());
        let topology = console.topology.clone();
        let history = console.history.clone();
        let http = tokio::spawn(endpoint::serve(
            listener,
            Arc::new(registry),
            health.clone(),
            ready.clone(),
            console,
            shutdown.clone(),
        ));
        let settings = Settings {
            data_dir: args.data_dir.clone(),
            options,
            max_hops: args.max_hops,
            drain: args.drain_timeout,
            webhook_listen: args.webhook_listen.clone(),
        };
        let plane = Plane::new(settings, health.clone(), source_metrics, trigger_metrics, targets)?
            .with_pauses(pauses)
            .with_dead_letters(dead_letters)
            .with_replays(replays.clone())
            .with_topology(topology);
        Ok(Self { plane, health, ready, replays, history, shutdown, http })
    }

    /// Marks the process ready for `/healthz`.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops the data plane (sources first, in-flight deliveries finish), then the endpoint.
    pub async fn stop(self) {
        self.plane.shutdown().await;
        self.shutdown.cancel();
        let _ = self.http.await;
    }
}

impl RunArgs {
    /// Where `secretKeyRef`s are read from; file fields are written under the data directory.
    fn secrets(&self) -> ofe_runtime::LocalSecrets {
        ofe_runtime::LocalSecrets {
            dir: self.secrets_dir.clone(),
            files: self.plane.data_dir.join("secrets"),
        }
    }
}

/// Entry point of `ofe run`.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    logging::init_logs(&args.plane.log_level, args.plane.log_json);
    let checked = ofe_runtime::load_and_check(&args.paths, Some(&args.secrets()));
    crate::validate::report(&checked.diagnostics);
    if checked.has_errors() {
        bail!("the manifests have errors (listed above); fix them, or see `ofe validate`");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ofe")
        .build()
        .context("cannot start the async runtime")?;
    logging::run_traced(runtime, serve(args, checked.manifests))?;
    Ok(ExitCode::SUCCESS)
}

/// Loads and checks the manifests again and applies them; with errors, says so and keeps
/// running what runs.
async fn reload(plane: &mut Plane, paths: &[PathBuf], secrets: &ofe_runtime::LocalSecrets) {
    let checked = ofe_runtime::load_and_check(paths, Some(secrets));
    crate::validate::report(&checked.diagnostics);
    if checked.has_errors() {
        tracing::error!(
            "the changed manifests have errors (listed above); still running the previous ones"
        );
        return;
    }
    match plane.apply(&checked.manifests).await {
        Ok(failures) if failures.is_empty() => {
            tracing::info!(resources = checked.manifests.len(), "manifests reloaded")
        }
        Ok(failures) => tracing::error!(
            failed = failures.len(),
            "manifests reloaded, but some resources cannot run (logged above); they are tried \
             again at the next reload"
        ),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "reloading the manifests failed")
        }
    }
}

/// A stream of reload requests: SIGHUP, and with `watch`, any change of the manifest files
/// (polled every second).
fn reload_requests(paths: Vec<PathBuf>, watch: bool) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let kind = tokio::signal::unix::SignalKind::hangup();
            let Ok(mut hup) = tokio::signal::unix::signal(kind) else { return };
            while hup.recv().await.is_some() {
                let _ = tx.try_send(());
            }
        });
    }
    if watch {
        tokio::spawn(async move {
            let mut seen = fingerprint(&paths);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut now = fingerprint(&paths);
                if now == seen {
                    continue;
                }
                // A file caught while it is being written would load half of it: wait until
                // the files have stopped changing.
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let again = fingerprint(&paths);
                    if again == now {
                        break;
                    }
                    now = again;
                }
                seen = now;
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// What changes when a manifest file does: every file's path, length and modification time.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            out.push((path, meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    out
}

/// Every error a resource causes at start-up names its file and document.
async fn serve(args: RunArgs, manifests: Vec<Manifest>) -> anyhow::Result<()> {
    let options =
        PlanOptions { ref_url_template: args.ref_url_template.clone(), ..PlanOptions::default() };
    let mut process = Process::start(&args.plane, options).await?;
    // Standalone, what cannot start at start-up is an error: there is no controller to
    // report it to, and starting half the manifests would hide it.
    let failures = match process.plane.apply(&manifests).await {
        Ok(failures) => failures,
        Err(e) => {
            process.stop().await;
            return Err(e.into());
        }
    };
    if !failures.is_empty() {
        let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
        process.stop().await;
        bail!("{}", text.join("\n"));
    }
    process.set_ready();
    tracing::info!(
        "ofe is running; send SIGINT or SIGTERM to stop, SIGHUP to reload the manifests{}",
        if args.watch { " (also reloaded when they change)" } else { "" }
    );

    let mut reloads = reload_requests(args.paths.clone(), args.watch);
    let stop = endpoint::signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(()) = reloads.recv() => reload(&mut process.plane, &args.paths, &args.secrets()).await,
        }
    }
    tracing::info!("shutting down: stopping sources, finishing in-flight deliveries");
    process.stop().await;
    tracing::info!("stopped");
    Ok(())
}
