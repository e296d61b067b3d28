//! What the operator reads from and writes to the API server: watches of the four kinds and
//! of the objects `sink.ref`s name, status writes, and Events.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _};
use ofe_crds::manifest::Resource;
use ofe_crds::{ClusterEventBus, Condition, EventBus, EventSource, Trigger};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::reconcile::{Snapshot, Targets, Transition};

/// The controller name Events are reported under.
pub const CONTROLLER: &str = "events.openfunction.io/ofe";

/// The watched objects, kept current by watch tasks.
pub struct Cluster {
    client: Client,
    event_sources: Store<EventSource>,
    event_buses: Store<EventBus>,
    cluster_buses: Store<ClusterEventBus>,
    triggers: Store<Trigger>,
    knative: Store<DynamicObject>,
    functions: Store<DynamicObject>,
    /// Woken by every change of any watched object.
    pub changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

/// Keeps a store of `api`'s objects current, waking `changed` on every change.
fn watch<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    what: &'static str,
    changed: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    let changed = changed.clone();
    tasks.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                // The watch retries with backoff; a kind that is not installed (no Knative)
                // just stays empty.
                Err(e) => tracing::debug!(kind = what, error = %e, "watch failed; retrying"),
            }
        }
    }));
    store
}

/// The same for objects known by their group, version and kind only.
fn watch_dynamic(
    client: &Client,
    namespace: Option<&str>,
    (group, version, kind, plural): (&str, &str, &'static str, &str),
    changed: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    let api = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    watch(api, resource, kind, changed, tasks)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl Cluster {
    /// Starts the watches: of `namespace`'s objects, or of every namespace's.
    pub fn watch(client: Client, namespace: Option<&str>) -> Self {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let t = &mut tasks;
        let event_sources = watch(api(&client, namespace), (), "EventSource", &changed, t);
        let event_buses = watch(api(&client, namespace), (), "EventBus", &changed, t);
        let triggers = watch(api(&client, namespace), (), "Trigger", &changed, t);
        let cluster_buses = watch(Api::all(client.clone()), (), "ClusterEventBus", &changed, t);
        let knative = watch_dynamic(
            &client,
            namespace,
            ("serving.knative.dev", "v1", "Service", "services"),
            &changed,
            t,
        );
        let functions = watch_dynamic(
            &client,
            namespace,
            ("core.openfunction.io", "v1beta2", "Function", "functions"),
            &changed,
            t,
        );
        Self {
            client,
            event_sources,
            event_buses,
            cluster_buses,
            triggers,
            knative,
            functions,
            changed,
            tasks,
        }
    }

    /// Waits until the four kinds have been listed once, so that the first reconcile does
    /// not stop what a partial view leaves out.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.event_sources.wait_until_ready().await?;
        self.event_buses.wait_until_ready().await?;
        self.cluster_buses.wait_until_ready().await?;
        self.triggers.wait_until_ready().await?;
        // Targets may not be installed at all: give them a moment, not a wait without end.
        let targets = async {
            let _ = self.knative.wait_until_ready().await;
            let _ = self.functions.wait_until_ready().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), targets).await;
        Ok(())
    }

    /// What the watches hold now. Objects being deleted are left out: they are going.
    pub fn snapshot(&self) -> Snapshot {
        let live = |m: &ObjectMeta| m.deletion_timestamp.is_none();
        let mut resources = Vec::new();
        let mut add = |meta: &ObjectMeta, r: Resource| {
            if live(meta) {
                resources.push(r);
            }
        };
        for b in self.cluster_buses.state() {
            add(&b.metadata, Resource::ClusterEventBus((*b).clone()));
        }
        for b in self.event_buses.state() {
            add(&b.metadata, Resource::EventBus((*b).clone()));
        }
        for es in self.event_sources.state() {
            add(&es.metadata, Resource::EventSource((*es).clone()));
        }
        for t in self.triggers.state() {
            add(&t.metadata, Resource::Trigger((*t).clone()));
        }
        // Stable order: the same objects give the same manifests, whatever the watch order.
        resources.sort_by(|a, b| {
            (a.kind(), a.namespace(), a.name()).cmp(&(b.kind(), b.namespace(), b.name()))
        });
        let addresses = |store: &Store<DynamicObject>,
                         address: fn(&DynamicObject) -> Option<String>| {
            store
                .state()
                .iter()
                .map(|o| {
                    let key = (
                        o.metadata.namespace.clone().unwrap_or_default(),
                        o.metadata.name.clone().unwrap_or_default(),
                    );
                    (key, address(o))
                })
                .collect::<BTreeMap<_, _>>()
        };
        let targets = Targets {
            knative: addresses(&self.knative, |o| {
                o.data.pointer("/status/url").and_then(|u| u.as_str()).map(str::to_string)
            }),
            functions: addresses(&self.functions, |o| {
                Targets::function_address(o.data.get("status"))
            }),
        };
        Snapshot { resources, targets, secrets: BTreeMap::new() }
    }

    /// The current conditions and generation of an EventSource or Trigger.
    pub fn status_of(&self, r: &Resource) -> (Vec<Condition>, Option<i64>) {
        match r {
            Resource::EventSource(es) => (
                es.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
                es.metadata.generation,
            ),
            Resource::Trigger(t) => (
                t.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
                t.metadata.generation,
            ),
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => (Vec::new(), None),
        }
    }

    /// Writes `conditions` as the resource's `.status.conditions` (a merge patch of the status
    /// subresource: the whole, bounded list replaces the old one).
    pub async fn write_status(
        &self,
        r: &Resource,
        conditions: &[Condition],
    ) -> Result<(), kube::Error> {
        let namespace = r.namespace().unwrap_or_default();
        let patch = Patch::Merge(serde_json::json!({ "status": { "conditions": conditions } }));
        let params = PatchParams::default();
        match r {
            Resource::EventSource(_) => {
                let api: Api<EventSource> = Api::namespaced(self.client.clone(), namespace);
                api.patch_status(r.name(), &params, &patch).await?;
            }
            Resource::Trigger(_) => {
                let api: Api<Trigger> = Api::namespaced(self.client.clone(), namespace);
                api.patch_status(r.name(), &params, &patch).await?;
            }
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => {}
        }
        Ok(())
    }

    /// Writes `replays` as the Trigger's `.status.replays` (the whole list replaces the old).
    pub async fn write_replays(
        &self,
        r: &Resource,
        replays: &[ofe_crds::ReplayStatus],
    ) -> Result<(), kube::Error> {
        let Resource::Trigger(_) = r else { return Ok(()) };
        let namespace = r.namespace().unwrap_or_default();
        let patch = Patch::Merge(serde_json::json!({ "status": { "replays": replays } }));
        let api: Api<Trigger> = Api::namespaced(self.client.clone(), namespace);
        api.patch_status(r.name(), &PatchParams::default(), &patch).await?;
        Ok(())
    }

    /// Posts an Event about `r` (`kubectl describe` shows it).
    pub async fn post_event(
        &self,
        r: &Resource,
        transition: &Transition,
        instance: &str,
    ) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event;
        let namespace = r.namespace().unwrap_or(ofe_crds::manifest::DEFAULT_NAMESPACE).to_string();
        let (uid, api_version) = match r {
            Resource::EventSource(es) => (es.metadata.uid.clone(), EventSource::api_version(&())),
            Resource::Trigger(t) => (t.metadata.uid.clone(), Trigger::api_version(&())),
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => return Ok(()),
        };
        // Named as client-go names Events: `<object>.<nanoseconds in hex>`. (A `generateName`
        // of `<object>.` is refused: the server validates it as a name, which cannot end in a
        // dot.) The object's part is cut so the whole stays within 253 characters.
        let now = jiff::Timestamp::now();
        let object: String = r.name().chars().take(253 - 17).collect();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(transition.reason.clone()),
            note: Some(transition.note.chars().take(1024).collect()),
            type_: Some(if transition.warning { "Warning" } else { "Normal" }.into()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(instance.chars().take(128).collect()),
            regarding: Some(ObjectReference {
                api_version: Some(api_version.to_string()),
                kind: Some(r.kind().into()),
                name: Some(r.name().into()),
                namespace: Some(namespace.clone()),
                uid,
                ..ObjectReference::default()
            }),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        Ok(())
    }

    /// Stops the watches.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}
