//! What the data plane knows about each resource it runs, as status conditions.
//!
//! Every part that can fail (an EventSource's connection to its broker, a Trigger's sink) has a
//! [`Reporter`]; it says when the part starts working and when it stops, with the reason. The
//! [`Health`] board folds the reports of a resource into its conditions (one per type, with
//! `Ready` summing up, see [`conditions`]), so what `/status` shows, and what the
//! operator writes into `.status`, is what the processes actually see.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub mod conditions;

pub use conditions::{Condition, NOT_IN_READY, Part, READY, Status};

/// A resource the board knows: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ResourceKey {
    /// `EventSource`, `Trigger`, ...
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResourceKey {
    /// The key of `kind` `namespace`/`name` (an empty namespace for cluster-scoped kinds). A
    /// resource's key comes from `ofe_crds::manifest::Resource::key`, which applies the
    /// default-namespace rule.
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self { kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }
}

#[derive(Default)]
struct Entry {
    /// Per condition type, per reporter (e.g. per event), the latest report.
    reports: Reports,
    conditions: Vec<Condition>,
}

/// Per condition type, per reporter, the latest report: each level sorted by its key. A
/// resource has a few of each, and sorted vectors hold them in a tenth of the memory maps
/// would (a map's smallest node has room for eleven entries), which for 10,000 Triggers was
/// 40 MB.
type Reports = Vec<(String, Vec<(String, Part)>)>;

/// The value under `key` in a vector sorted by key, inserted as `V::default()` when absent.
fn entry<'a, V: Default>(sorted: &'a mut Vec<(String, V)>, key: &str) -> &'a mut V {
    let at = sorted.binary_search_by(|(k, _)| k.as_str().cmp(key)).unwrap_or_else(|at| {
        sorted.insert(at, (key.to_string(), V::default()));
        at
    });
    &mut sorted[at].1
}

/// Sets `key` to `value` in a vector sorted by key.
fn put<V>(sorted: &mut Vec<(String, V)>, key: &str, value: V) {
    match sorted.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
        Ok(at) => sorted[at].1 = value,
        Err(at) => sorted.insert(at, (key.to_string(), value)),
    }
}

/// The board. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Health {
    entries: Arc<Mutex<BTreeMap<ResourceKey, Entry>>>,
    /// Counts changes of any resource's conditions, so that a status writer wakes on them.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self { entries: Arc::default(), changes: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

/// One part of one resource, reporting on itself.
#[derive(Clone, Debug)]
pub struct Reporter {
    health: Health,
    resource: ResourceKey,
    condition: String,
    reporter: String,
}

impl Health {
    /// A reporter for the `condition` of `resource`, as seen by `reporter` (e.g. the event
    /// name, when several events make up one condition). It starts as `Unknown`.
    pub fn reporter(&self, resource: ResourceKey, condition: &str, reporter: &str) -> Reporter {
        let r = self.handle(resource, condition, reporter);
        r.report(Part::unknown(condition, "Starting", "not connected yet"));
        r
    }

    /// The same reporter without the `Unknown` start, for a caller that reports (or
    /// withdraws) at once: a status written in between would otherwise flicker to `Unknown`.
    pub fn handle(&self, resource: ResourceKey, condition: &str, reporter: &str) -> Reporter {
        Reporter {
            health: self.clone(),
            resource,
            condition: condition.to_string(),
            reporter: reporter.to_string(),
        }
    }

    /// Forgets a resource (it was removed).
    pub fn remove(&self, resource: &ResourceKey) {
        let removed = self.entries.lock().is_ok_and(|mut e| e.remove(resource).is_some());
        if removed {
            self.changed();
        }
    }

    /// A receiver that sees a new value whenever any resource's conditions change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Every resource with its current conditions.
    pub fn snapshot(&self) -> Vec<(ResourceKey, Vec<Condition>)> {
        self.entries
            .lock()
            .map(|e| e.iter().map(|(k, v)| (k.clone(), v.conditions.clone())).collect())
            .unwrap_or_default()
    }

    /// The conditions of one resource.
    pub fn conditions(&self, resource: &ResourceKey) -> Vec<Condition> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(resource).map(|v| v.conditions.clone()))
            .unwrap_or_default()
    }
}

impl Reporter {
    /// The part works.
    pub fn up(&self, reason: &str) {
        self.report(Part::ok(&self.condition, reason));
    }

    /// The part does not work, and why.
    pub fn down(&self, reason: &str, message: impl Into<String>) {
        self.report(Part::failed(&self.condition, reason, message));
    }

    /// Takes this reporter's report back, as if it had never reported: the part it stood
    /// for is no longer there (a failure to start that no longer happens).
    pub fn withdraw(&self) {
        self.update(|reports| {
            if let Ok(at) = reports.binary_search_by(|(k, _)| k.cmp(&self.condition)) {
                let by = &mut reports[at].1;
                by.retain(|(who, _)| *who != self.reporter);
                if by.is_empty() {
                    reports.remove(at);
                }
            }
        });
    }

    fn report(&self, part: Part) {
        self.update(|reports| {
            put(entry(reports, &self.condition), &self.reporter, part);
        });
    }

    fn update(&self, change: impl FnOnce(&mut Reports)) {
        let Ok(mut entries) = self.health.entries.lock() else { return };
        let entry = entries.entry(self.resource.clone()).or_default();
        change(&mut entry.reports);
        // One condition per type: the worst report wins, naming its reporter.
        let parts: Vec<Part> = entry
            .reports
            .iter()
            .map(|(kind, by)| {
                let worst = by
                    .iter()
                    .find(|(_, p)| p.status == Status::False)
                    .or_else(|| by.iter().find(|(_, p)| p.status == Status::Unknown))
                    .or_else(|| by.iter().next());
                match worst {
                    Some((who, p)) if p.status != Status::True && by.len() > 1 => {
                        Part { message: format!("{who}: {}", p.message), ..p.clone() }
                    }
                    Some((_, p)) => p.clone(),
                    None => Part::unknown(kind, "Starting", ""),
                }
            })
            .collect();
        if conditions::apply(&mut entry.conditions, &parts, None, chrono::Utc::now()) {
            drop(entries);
            self.health.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ResourceKey {
        ResourceKey::new("EventSource", "ns", "cars")
    }

    #[test]
    fn the_worst_report_decides_and_recovery_shows() {
        let health = Health::default();
        let telemetry = health.reporter(key(), "SourceConnected", "telemetry");
        let alarms = health.reporter(key(), "SourceConnected", "alarms");
        let ready = |h: &Health| {
            let c = h.conditions(&key());
            let r = c.last().cloned().expect("conditions");
            (r.r#type, r.status, r.reason, r.message)
        };
        assert_eq!(ready(&health).1, "Unknown");
        telemetry.up("Connected");
        alarms.down("BrokerUnreachable", "tcp://127.0.0.1:9: connection refused");
        let (kind, status, reason, message) = ready(&health);
        assert_eq!((kind.as_str(), status.as_str()), ("Ready", "False"));
        assert_eq!(reason.as_deref(), Some("BrokerUnreachable"));
        assert_eq!(
            message.as_deref(),
            Some("SourceConnected: alarms: tcp://127.0.0.1:9: connection refused")
        );
        alarms.up("Connected");
        assert_eq!(ready(&health).1, "True");
        assert_eq!(health.conditions(&key()).len(), 2);
        health.remove(&key());
        assert!(health.snapshot().is_empty());
    }
}
