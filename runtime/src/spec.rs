//! What a set of manifests asks the plane to run, planned before anything starts: the
//! EventSources with their buses, the subscribers (a Trigger's, or an EventSource's own
//! `sink`), and the routers that feed them. Every entry carries a digest of its configuration,
//! so that an apply restarts only what changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use ofe_core::health::ResourceKey;
use ofe_core::{EventBus, Subject};
use ofe_crds::EventSource;
use ofe_trigger::runner::{Route, SubscriberPlan};
use ofe_trigger::{PlanOptions, RetryPolicy, SubscriberLabels};

use crate::error::RuntimeError;
use crate::plane::ResourceFailure;

/// A router to start: the digest of what it routes, its bus, and the subscribers.
pub(crate) type RouterPlan = (String, Arc<dyn EventBus>, Vec<Arc<ofe_trigger::Routing>>);

/// One EventSource to run.
pub(crate) struct SourcePlan {
    /// The resource.
    pub(crate) es: EventSource,
    /// Its bus.
    pub(crate) bus: Arc<dyn EventBus>,
    /// The digest of its spec and its bus's, to tell a change.
    pub(crate) version: String,
    /// Where it was read, for errors.
    pub(crate) at: String,
}

/// What a set of manifests asks the plane to run.
pub(crate) struct PlaneSpec {
    /// Per EventSource, what to run.
    pub(crate) sources: BTreeMap<ResourceKey, SourcePlan>,
    /// Per consumer: the plan, its bus, its router's name (empty: none), and its digest.
    pub(crate) subscribers: BTreeMap<String, (SubscriberPlan, Arc<dyn EventBus>, String, String)>,
    /// Per Trigger: its bus and its digest.
    pub(crate) triggers: BTreeMap<ResourceKey, (Arc<dyn EventBus>, String)>,
    /// Resources left out, and why.
    pub(crate) failures: Vec<ResourceFailure>,
}

impl PlaneSpec {
    /// Where events can be sent: every EventSource event, and every topic a Trigger reads
    /// or writes, with the buses that carry it.
    pub(crate) fn targets(&self) -> BTreeMap<Subject, Vec<Arc<dyn EventBus>>> {
        let mut targets: BTreeMap<Subject, Vec<Arc<dyn EventBus>>> = BTreeMap::new();
        let mut add = |subject: Subject, bus: &Arc<dyn EventBus>| {
            let buses = targets.entry(subject).or_default();
            if !buses.iter().any(|b| Arc::ptr_eq(b, bus)) {
                buses.push(bus.clone());
            }
        };
        for (key, SourcePlan { es, bus, .. }) in &self.sources {
            for event in es.spec.event_names() {
                add(Subject::event(&key.namespace, &key.name, event), bus);
            }
        }
        for (plan, bus, ..) in self.subscribers.values() {
            let read = plan.routing.iter().flat_map(|r| r.inputs.iter().map(|i| &i.subject));
            let written = plan
                .routes
                .iter()
                .flat_map(|r| std::iter::once(&r.destination).chain(r.dead_letter.as_ref()));
            let written = written.filter_map(|d| d.bus_subject());
            for subject in read.chain(written).chain(plan.reply.as_ref()) {
                if matches!(subject, Subject::Topic { .. }) {
                    add(subject.clone(), bus);
                }
            }
        }
        targets
    }
}

/// The digest of a resource's configuration.
pub(crate) fn digest(namespace: &str, name: &str, spec: &impl serde::Serialize) -> String {
    format!("{namespace}/{name}/{}", serde_json::to_string(spec).unwrap_or_default())
}

/// The routers `desired` needs: per consumer name, a digest of what it routes, its bus, and
/// the subscribers.
pub(crate) fn group_routers(desired: &PlaneSpec) -> BTreeMap<String, RouterPlan> {
    let mut routers: BTreeMap<String, RouterPlan> = BTreeMap::new();
    for (consumer, (plan, bus, name, version)) in &desired.subscribers {
        let Some(routing) = &plan.routing else { continue };
        let entry =
            routers.entry(name.clone()).or_insert_with(|| (String::new(), bus.clone(), Vec::new()));
        entry.0.push_str(&format!("{consumer}={version};"));
        entry.2.push(routing.clone());
    }
    routers
}

/// The plan delivering an EventSource's events to its own `sink`.
pub(crate) fn event_source_sink_plan(
    es: &EventSource,
    options: &PlanOptions,
) -> Result<Option<SubscriberPlan>, RuntimeError> {
    let Some(sink) = &es.spec.sink else { return Ok(None) };
    if es.spec.events().is_empty() {
        return Ok(None); // nothing to deliver (`ofe validate` warns)
    }
    let namespace = ofe_crds::manifest::namespace_of(&es.metadata);
    let name = es.metadata.name.as_deref().unwrap_or_default();
    let destination = ofe_trigger::sink_destination("spec.sink", sink, namespace, options)
        .map_err(|d| RuntimeError::Plan(d.to_string()))?;
    let subjects = es
        .spec
        .event_names()
        .into_iter()
        .map(|event| Subject::event(namespace, name, event))
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
        delay: None,
        dedupe: None,
        max_deliver: ofe_trigger::DEFAULT_MAX_DELIVER,
        paused: false,
        dead_letters: None,
        transform: None,
        batch: None,
    }))
}
