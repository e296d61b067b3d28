//! `ofe operator`: the data plane, fed by the API server.
//!
//! Every replica watches EventSources, EventBuses, ClusterEventBuses and Triggers (and the
//! Knative Services and OpenFunction Functions a `sink.ref` may name), checks them as
//! `ofe validate` does, resolves refs, and hands the result to the same [`Plane`] `ofe run`
//! uses; it applies only what changed. Replicas share the work through the bus: each router
//! and subscriber is a durable consumer that all replicas pull from. One replica, elected with
//! a Lease, also fires cron schedules (so a tick fires once) and writes `.status` and Events
//! from what its data plane reports.
//!
//! [`Plane`]: ofe_runtime::Plane

mod cluster;
mod configmaps;
mod lease;
pub mod reconcile;
pub(crate) mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use ofe_core::health::{Health, ResourceKey};
use ofe_crds::Condition;
use ofe_trigger::PlanOptions;
use tokio_util::sync::CancellationToken;

use self::cluster::Cluster;
use self::reconcile::{Desired, Snapshot};
use crate::run::{PlaneArgs, Process};
use crate::{endpoint, logging};

/// Arguments of `ofe operator`.
#[derive(clap::Args)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "OFE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease: the operator's own.
    #[arg(long, default_value = "default", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// Name of the leader-election Lease; replicas of one deployment share it.
    #[arg(long, default_value = "ofe-leader", env = "OFE_LEASE_NAME")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease that is not renewed stays held, e.g. `15s`.
    #[arg(long, default_value = "15s", value_parser = ofe_crds::duration::parse)]
    lease_duration: Duration,
    /// How often the leader renews the Lease and the others look at it.
    #[arg(long, default_value = "2s", value_parser = ofe_crds::duration::parse)]
    lease_renew: Duration,
    /// How often everything is reconciled even when nothing changed (a broker that came
    /// back, a Secret that changed). Resources that cannot run are retried every 5 s.
    #[arg(long, default_value = "30s", value_parser = ofe_crds::duration::parse)]
    resync: Duration,
    #[command(flatten)]
    plane: PlaneArgs,
}

/// How soon a resource the plane could not start is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// Changes arriving this close together are applied at once.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Entry point of `ofe operator`.
pub fn main(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    logging::init_logs(&args.plane.log_level, args.plane.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ofe")
        .build()
        .context("cannot start the async runtime")?;
    logging::run_traced(runtime, serve(args))?;
    Ok(ExitCode::SUCCESS)
}

fn identity(args: &OperatorArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "ofe".into());
        format!("{host}-{}", std::process::id())
    })
}

async fn serve(args: OperatorArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context(
        "cannot configure the Kubernetes client: run in a pod with a service account, or set \
         KUBECONFIG",
    )?;
    let identity = identity(&args);
    let mut process = Process::start(&args.plane, PlanOptions::default()).await?;
    let cluster = Cluster::watch(client.clone(), args.watch_namespace.as_deref());
    tracing::info!(namespace = args.watch_namespace.as_deref().unwrap_or("(all)"), %identity, "watching EventSources, EventBuses, ClusterEventBuses and Triggers");

    let stop = CancellationToken::new();
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let election = lease::Election {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: args.lease_duration,
        renew: args.lease_renew,
    };
    let leases = kube::Api::namespaced(client.clone(), &args.lease_namespace);
    let election = tokio::spawn(lease::run(leases, election, leading_tx, stop.clone()));

    let signal = endpoint::signal();
    tokio::pin!(signal);
    tokio::select! {
        () = &mut signal => {
            stop.cancel();
            let _ = election.await;
            process.stop().await;
            return Ok(());
        }
        ready = cluster.ready() => ready.context("the watches stopped")?,
    }
    tracing::info!("the watched resources are listed; reconciling");

    let mut board = process.health.subscribe();
    let secret_files = args.plane.data_dir.join("secrets");
    let mut writer = StatusWriter {
        identity,
        written: BTreeMap::new(),
        replays: process.replays.clone(),
        written_replays: BTreeMap::new(),
    };
    let replica = writer.identity.clone();
    let role = |leads: bool| crate::endpoint::history::Role {
        mode: if leads { "leader" } else { "follower" },
        identity: Some(replica.clone()),
    };
    process.history.set_role(role(*leading.borrow()));
    let mut desired = Desired::default();
    let mut snapshot = Snapshot::default();
    let mut failing = false;
    let mut apply = true;
    loop {
        if apply {
            snapshot = cluster.snapshot();
            secrets::resolve(&client, &mut snapshot, &secret_files).await;
            configmaps::resolve(&client, &mut snapshot).await;
            desired = reconcile::desired(&snapshot, *leading.borrow());
            match process.plane.apply(&desired.manifests).await {
                Ok(failures) => failing = !failures.is_empty(),
                Err(e) => {
                    failing = true;
                    tracing::error!(error = format!("{e:#}"), "applying the resources failed");
                }
            }
            process.set_ready();
        }
        if *leading.borrow() {
            writer.write(&cluster, &snapshot, &desired, &process.health).await;
        }
        let resync = if failing { RETRY } else { args.resync };
        tokio::select! {
            () = &mut signal => break,
            () = cluster.changed.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
                apply = true;
            }
            changed = leading.changed() => {
                if changed.is_err() { break }
                process.history.set_role(role(*leading.borrow()));
                // A new leader writes everything once: another replica may have written since.
                writer.written.clear();
                apply = true;
            }
            _ = board.changed() => {
                // The data plane's view changed: status only, after letting reports settle.
                tokio::time::sleep(DEBOUNCE).await;
                apply = false;
            }
            () = tokio::time::sleep(resync) => apply = true,
        }
    }
    tracing::info!("shutting down: stopping sources, finishing in-flight deliveries");
    stop.cancel();
    let _ = election.await;
    process.stop().await;
    cluster.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Writes `.status` and posts Events; only the leader does.
struct StatusWriter {
    identity: String,
    /// What this replica last wrote per resource: the watch may not have caught up yet, and
    /// comparing with a stale copy would write (and announce) the same change twice.
    written: BTreeMap<ResourceKey, Vec<Condition>>,
    /// The replays whose progress goes into `.status.replays`.
    replays: ofe_runtime::Replays,
    /// What this replica last wrote of each Trigger's replays.
    written_replays: BTreeMap<ResourceKey, Vec<ofe_crds::ReplayStatus>>,
}

impl StatusWriter {
    async fn write(
        &mut self,
        cluster: &Cluster,
        snapshot: &Snapshot,
        desired: &Desired,
        health: &Health,
    ) {
        let running: BTreeSet<ResourceKey> =
            desired.manifests.iter().map(|m| m.resource.key()).collect();
        let now = chrono::Utc::now();
        let mut seen = BTreeSet::new();
        for r in &snapshot.resources {
            let key = r.key();
            let Some(operator) = desired.parts.get(&key) else { continue };
            seen.insert(key.clone());
            let (stored, generation) = cluster.status_of(r);
            let current = self.written.get(&key).cloned().unwrap_or(stored);
            let parts =
                reconcile::parts(operator, &health.conditions(&key), running.contains(&key));
            let (next, transition) = reconcile::next_status(&current, &parts, generation, now);
            self.write_replays(cluster, r, &key).await;
            let Some(next) = next else { continue };
            if let Err(e) = cluster.write_status(r, &next).await {
                tracing::warn!(kind = %key.kind, namespace = %key.namespace, name = %key.name, error = %e, "cannot write status");
                continue;
            }
            self.written.insert(key.clone(), next);
            let Some(t) = transition else { continue };
            if let Err(e) = cluster.post_event(r, &t, &self.identity).await {
                tracing::debug!(error = %e, "cannot post an Event");
            }
        }
        self.written.retain(|k, _| seen.contains(k));
        self.written_replays.retain(|k, _| seen.contains(k));
    }

    /// Writes the progress of a Trigger's `spec.replays` into `.status.replays`, when it
    /// changed: what runs here over what the status holds (a replay that ended before this
    /// replica led stays as it was written).
    async fn write_replays(
        &mut self,
        cluster: &Cluster,
        r: &ofe_crds::manifest::Resource,
        key: &ResourceKey,
    ) {
        let ofe_crds::manifest::Resource::Trigger(t) = r else { return };
        if t.spec.replays.is_none() && t.status.as_ref().is_none_or(|s| s.replays.is_empty()) {
            return;
        }
        let stored = t.status.as_ref().map(|s| s.replays.clone()).unwrap_or_default();
        let current = self.written_replays.get(key).cloned().unwrap_or(stored);
        let mut next: BTreeMap<(String, String), ofe_crds::ReplayStatus> =
            current.iter().map(|s| ((s.name.clone(), s.subscriber.clone()), s.clone())).collect();
        let asked: BTreeSet<&str> =
            t.spec.replays.iter().flatten().map(|r| r.name.as_str()).collect();
        next.retain(|(name, _), _| asked.contains(name.as_str()));
        for (name, p) in self.replays.of_spec(&key.namespace, &key.name) {
            if !asked.contains(name.as_str()) {
                continue;
            }
            let status = ofe_crds::ReplayStatus {
                name: name.clone(),
                subscriber: p.subscriber.clone(),
                state: serde_json::to_value(p.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                read: p.read,
                fired: p.fired,
                delivered: p.delivered,
                dead_lettered: p.dead_lettered,
                position: p.position.clone(),
                error: p.error.clone(),
            };
            next.insert((name, p.subscriber), status);
        }
        let next: Vec<ofe_crds::ReplayStatus> = next.into_values().collect();
        if next == current {
            return;
        }
        match cluster.write_replays(r, &next).await {
            Ok(()) => {
                self.written_replays.insert(key.clone(), next);
            }
            Err(e) => {
                tracing::warn!(namespace = %key.namespace, name = %key.name, error = %e, "cannot write the replays' status");
            }
        }
    }
}
