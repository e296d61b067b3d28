//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! One replica holds the Lease and does the singleton work: it fires cron schedules and writes
//! status. It renews the Lease every `renew`; the others take it over once it has not been
//! renewed for `duration`. Takeover uses the Lease's `resourceVersion`, so when two replicas
//! race, the API server lets exactly one win. A holder that cannot renew steps down before its
//! Lease expires, so two replicas never both believe they lead (a cron tick that still fires
//! twice in a failover has the same event id, and the bus drops the repeat).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How this replica takes part in the election.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's namespace and name.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity, written as the holder.
    pub identity: String,
    /// How long a Lease not renewed stays held.
    pub duration: Duration,
    /// How often the holder renews, and the others look.
    pub renew: Duration,
}

/// Runs the election until `stop`; `leading` says whether this replica leads. On stop, a
/// holder gives the Lease up, so that another replica takes over at once.
pub async fn run(
    api: Api<Lease>,
    election: Election,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        match try_acquire(&api, &election).await {
            Ok(true) => {
                last_renewal = Some(tokio::time::Instant::now());
                if !*leading.borrow() {
                    tracing::info!(lease = %election.name, identity = %election.identity, "leading: this replica fires cron schedules and writes status");
                }
                leading.send_replace(true);
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::info!(lease = %election.name, "another replica took the lead");
                }
                last_renewal = None;
                leading.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(lease = %election.name, error = %e, "cannot reach the Lease");
                // Step down before the Lease can expire: after that, another replica may lead.
                let margin = election.duration.saturating_sub(election.renew);
                if last_renewal.is_none_or(|at| at.elapsed() >= margin) && *leading.borrow() {
                    tracing::warn!("stepping down: the Lease could not be renewed in time");
                    leading.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(election.renew) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = release(&api, &election).await {
            tracing::warn!(error = %e, "cannot give the Lease up; it expires on its own");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Takes or renews the Lease; whether this replica holds it afterwards.
async fn try_acquire(api: &Api<Lease>, election: &Election) -> Result<bool, kube::Error> {
    let me = election.identity.as_str();
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                namespace: Some(election.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(seconds(election.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != me && !holder.is_empty() && !expired(spec) {
        return Ok(false);
    }
    if holder != me {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(me.into());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds(election.duration));
    // `lease` carries the resourceVersion we read: if another replica wrote in between, the
    // API server refuses this write with 409 and that replica keeps the Lease.
    match api.replace(&election.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the holder has not renewed the Lease within its duration.
fn expired(spec: &LeaseSpec) -> bool {
    let Some(renewed) = &spec.renew_time else { return true };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let age = jiff::Timestamp::now().duration_since(renewed.0);
    age.as_secs() >= duration
}

/// Gives the Lease up: no holder, so the next replica that looks takes it.
async fn release(api: &Api<Lease>, election: &Election) -> Result<(), kube::Error> {
    let mut lease = api.get(&election.name).await?;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&election.name, &PostParams::default(), &lease).await?;
    Ok(())
}
