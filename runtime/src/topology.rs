//! The event mesh a plane runs, as a graph for the console: EventSource events → the bus
//! they are published on → Trigger subscribers → sinks, with bus topics between the
//! subscribers that write them and those that read them. Built from the plans at every apply, after the secrets were read: it names sinks
//! as logs do (without credentials) and holds no field value of any resource.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ofe_core::Subject;
use serde::Serialize;

use crate::spec::{PlaneSpec, SourcePlan};

/// One node of the mesh.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Node {
    /// Unique in the graph: `event:<ns>/<eventsource>/<event>`, `bus:<ns>/<eventBus>`,
    /// `sub:<ns>/<trigger>/<index>`, `topic:<ns>/<topic>` or `sink:<destination>`.
    pub id: String,
    /// `event`, `bus`, `subscriber`, `topic` or `sink`.
    pub kind: &'static str,
    /// Its namespace (a sink's is its subscriber's).
    pub namespace: String,
    /// What the console shows.
    pub label: String,
    /// The labels its metrics carry (`namespace`, `eventsource`, `event`, `kind` for an event;
    /// `namespace`, `trigger`, `subscriber` for a subscriber), to find its series.
    pub metrics: BTreeMap<String, String>,
    /// The resource whose conditions tell whether it is ready: (kind, name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<(String, String)>,
}

/// One edge: events go from `from` to `to`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// Where events come from.
    pub from: String,
    /// Where they go.
    pub to: String,
    /// `publish` (an event onto its bus), `input`, `sink`, `topic`, `reply` or
    /// `dead-letter`.
    pub kind: &'static str,
}

/// The mesh.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    /// Which build of the mesh this is: a new number at every apply, so that what is derived
    /// from the mesh (the console's series) is derived again only when it changed.
    pub generation: u64,
    /// Its nodes, sorted by id.
    pub nodes: Vec<Node>,
    /// Its edges.
    pub edges: Vec<Edge>,
}

/// The generation of the last mesh built.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The mesh as of the last apply, shared with the endpoint.
pub type Topology = Arc<RwLock<Graph>>;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

impl Graph {
    /// The mesh `spec` runs.
    pub(crate) fn of(spec: &PlaneSpec) -> Self {
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut edges = Vec::new();
        // The bus each event is published on, so a subscriber's input is drawn from it.
        let mut bus_of: BTreeMap<String, String> = BTreeMap::new();
        for (key, SourcePlan { es, bus, .. }) in &spec.sources {
            let name = es.spec.event_bus.as_deref().filter(|b| !b.is_empty()).unwrap_or("default");
            let bus_id = format!("bus:{}/{name}", key.namespace);
            nodes.entry(bus_id.clone()).or_insert_with(|| Node {
                id: bus_id.clone(),
                kind: "bus",
                namespace: key.namespace.clone(),
                label: format!("{name} · {} bus", bus.backend()),
                metrics: BTreeMap::new(),
                resource: None,
            });
            for (kind, event) in es.spec.events() {
                let id = format!("event:{}/{}/{event}", key.namespace, key.name);
                bus_of.insert(id.clone(), bus_id.clone());
                edges.push(Edge { from: id.clone(), to: bus_id.clone(), kind: "publish" });
                nodes.insert(
                    id.clone(),
                    Node {
                        id,
                        kind: "event",
                        namespace: key.namespace.clone(),
                        label: format!("{} · {} {event}", key.name, kind.field()),
                        metrics: labels(&[
                            ("namespace", &key.namespace),
                            ("eventsource", &key.name),
                            ("event", event),
                            ("kind", kind.field()),
                        ]),
                        resource: Some(("EventSource".into(), key.name.clone())),
                    },
                );
            }
        }
        let topic = |nodes: &mut BTreeMap<String, Node>, namespace: &str, name: &str| {
            let id = format!("topic:{namespace}/{name}");
            nodes.entry(id.clone()).or_insert_with(|| Node {
                id: id.clone(),
                kind: "topic",
                namespace: namespace.to_string(),
                label: format!("topic {name}"),
                metrics: BTreeMap::new(),
                resource: None,
            });
            id
        };
        for (plan, ..) in spec.subscribers.values() {
            let labels_of = &plan.labels;
            let trigger = labels_of.trigger.strip_prefix("eventsource/");
            let id = format!(
                "sub:{}/{}/{}",
                labels_of.namespace, labels_of.trigger, labels_of.subscriber
            );
            let (label, resource) = match trigger {
                // An EventSource's own sink.
                Some(es) => (format!("{es} → sink"), ("EventSource".to_string(), es.to_string())),
                None => (
                    format!("{} [{}]", labels_of.trigger, labels_of.subscriber),
                    ("Trigger".to_string(), labels_of.trigger.clone()),
                ),
            };
            nodes.insert(
                id.clone(),
                Node {
                    id: id.clone(),
                    kind: "subscriber",
                    namespace: labels_of.namespace.clone(),
                    label,
                    metrics: labels(&[
                        ("namespace", &labels_of.namespace),
                        ("trigger", &labels_of.trigger),
                        ("subscriber", &labels_of.subscriber),
                    ]),
                    resource: Some(resource),
                },
            );
            let inputs: Vec<&Subject> = match &plan.routing {
                Some(routing) => routing.inputs.iter().map(|i| &i.subject).collect(),
                None => plan.subjects.iter().collect(),
            };
            for subject in inputs {
                let from = match subject {
                    // From the bus the event is on; an EventSource's own sink, and an event
                    // whose EventSource another process runs, straight from the event.
                    Subject::Event { namespace, source, event } => {
                        let event = format!("event:{namespace}/{source}/{event}");
                        match bus_of.get(&event) {
                            Some(bus) if trigger.is_none() => bus.clone(),
                            _ => event,
                        }
                    }
                    Subject::Topic { namespace, topic: name } => topic(&mut nodes, namespace, name),
                    _ => continue,
                };
                edges.push(Edge { from, to: id.clone(), kind: "input" });
            }
            for route in &plan.routes {
                let targets = std::iter::once((&route.destination, "sink"))
                    .chain(route.dead_letter.as_ref().map(|d| (d, "dead-letter")));
                for (destination, kind) in targets {
                    let to = match destination.bus_subject() {
                        Some(Subject::Topic { namespace, topic: name }) => {
                            // A subscriber's own dead-letter topic is drawn only when it has
                            // readers; otherwise it is part of the subscriber.
                            if kind == "dead-letter" {
                                continue;
                            }
                            topic(&mut nodes, namespace, name)
                        }
                        Some(_) => continue,
                        None => {
                            let shown = destination.to_string();
                            let to = format!("sink:{shown}");
                            nodes.entry(to.clone()).or_insert_with(|| Node {
                                id: to.clone(),
                                kind: "sink",
                                namespace: labels_of.namespace.clone(),
                                label: shown,
                                metrics: BTreeMap::new(),
                                resource: None,
                            });
                            to
                        }
                    };
                    let kind = if kind == "sink" && destination.bus_subject().is_some() {
                        "topic"
                    } else {
                        kind
                    };
                    edges.push(Edge { from: id.clone(), to, kind });
                }
            }
        }
        // A sink's replies, where a Trigger reads them.
        for (plan, ..) in spec.subscribers.values() {
            let Some(Subject::Topic { namespace, topic: name }) = &plan.reply else { continue };
            let to = format!("topic:{namespace}/{name}");
            if nodes.contains_key(&to) {
                let labels_of = &plan.labels;
                let from = format!(
                    "sub:{}/{}/{}",
                    labels_of.namespace, labels_of.trigger, labels_of.subscriber
                );
                edges.push(Edge { from, to, kind: "reply" });
            }
        }
        // Inputs of events no EventSource here publishes (another process's) still show.
        let missing: Vec<String> = edges
            .iter()
            .filter(|e| e.from.starts_with("event:") && !nodes.contains_key(&e.from))
            .map(|e| e.from.clone())
            .collect();
        for id in missing {
            let label = id.trim_start_matches("event:").to_string();
            let namespace = label.split('/').next().unwrap_or_default().to_string();
            nodes.insert(
                id.clone(),
                Node {
                    id,
                    kind: "event",
                    namespace,
                    label,
                    metrics: BTreeMap::new(),
                    resource: None,
                },
            );
        }
        edges.sort();
        edges.dedup();
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Self { generation, nodes: nodes.into_values().collect(), edges }
    }
}
