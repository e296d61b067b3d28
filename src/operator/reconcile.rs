//! The operator's decisions, as plain functions of what the API server holds: which resources
//! the data plane runs (validated as `ofe validate` does, with `sink.ref` resolved), and what
//! each resource's `.status` says. Nothing here talks to the API server, so all of it is tested
//! without a cluster.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ofe_core::health::ResourceKey;
use ofe_core::health::conditions::{self as status, Part, READY, Status};
use ofe_crds::diagnostic::Location;
use ofe_crds::manifest::{DEFAULT_NAMESPACE, Manifest, Resource};
use ofe_crds::{Condition, EventSource, Trigger};
use serde_json::Value;

/// The condition that says whether the spec passed validation.
pub const VALID: &str = "Valid";
/// The condition that says whether every `secretKeyRef` was read.
pub const SECRETS_RESOLVED: &str = "SecretsResolved";
/// The condition that says whether every `sink.ref` has an address.
pub const SINK_RESOLVED: &str = "SinkResolved";

/// The addresses of the objects a `sink.ref` may name, as the watches last saw them.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Knative Services: per namespace and name, `status.url` (`None` until it has one).
    pub knative: BTreeMap<(String, String), Option<String>>,
    /// OpenFunction Functions: per namespace and name, the address (`None` until it has one).
    pub functions: BTreeMap<(String, String), Option<String>>,
}

impl Targets {
    /// The address of an OpenFunction Function from its status: the internal address of
    /// `status.addresses`, else any address, else `status.url`.
    pub fn function_address(status: Option<&Value>) -> Option<String> {
        let status = status?;
        let addresses = status.get("addresses").and_then(Value::as_array);
        let by_type = |wanted: Option<&str>| {
            addresses?.iter().find_map(|a| {
                let kind = a.get("type").and_then(Value::as_str);
                let value = a.get("value").and_then(Value::as_str)?;
                (wanted.is_none() || kind == wanted).then(|| value.to_string())
            })
        };
        by_type(Some("Internal"))
            .or_else(|| by_type(None))
            .or_else(|| status.get("url").and_then(Value::as_str).map(str::to_string))
    }
}

/// Everything the operator watches, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// EventSources, EventBuses, ClusterEventBuses and Triggers.
    pub resources: Vec<Resource>,
    /// The objects `sink.ref`s may name.
    pub targets: Targets,
    /// Per resource that reads Secrets: whether they all resolved, or what did not.
    pub secrets: BTreeMap<ResourceKey, Result<(), String>>,
}

/// What the data plane runs, and what the operator itself knows of each resource.
#[derive(Debug, Default)]
pub struct Desired {
    /// The resources to hand to the data plane, refs resolved.
    pub manifests: Vec<Manifest>,
    /// Per EventSource and Trigger: the parts the operator decides (`Valid`, `SinkResolved`).
    pub parts: BTreeMap<ResourceKey, Vec<Part>>,
}

/// Where a resource came from, for messages: `kind namespace/name` in place of a file.
fn origin_of(r: &Resource) -> Location {
    let at = match r.namespace() {
        Some(ns) => format!("{} {ns}/{}", r.kind(), r.name()),
        None => format!("{} {}", r.kind(), r.name()),
    };
    Location { file: at.into(), document: 0 }
}

/// What the data plane should run for `snapshot`. A resource with validation errors, or with a
/// `sink.ref` that has no address yet, is left out, and its parts say why. Without `leader`,
/// cron schedules are left out: one replica fires them, so each tick fires once (see
/// [`for_replicas`]).
pub fn desired(snapshot: &Snapshot, leader: bool) -> Desired {
    let mut out = Desired::default();
    let mut manifests = Vec::new();
    for r in &snapshot.resources {
        let key = r.key();
        match snapshot.secrets.get(&key) {
            // Not run, and not checked: its fields are not all there.
            Some(Err(why)) => {
                let part = Part::failed(SECRETS_RESOLVED, "SecretUnresolved", why.clone());
                out.parts.insert(key, vec![part]);
            }
            _ => manifests.push(Manifest { origin: origin_of(r), resource: r.clone() }),
        }
    }
    let diagnostics = ofe_runtime::check_manifests(&manifests);
    for m in manifests {
        let key = m.resource.key();
        let errors: Vec<String> = diagnostics
            .iter()
            .filter(|d| d.is_error() && d.origin.as_ref() == Some(&m.origin))
            .map(|d| {
                if d.path.is_empty() {
                    d.message.clone()
                } else {
                    format!("{}: {}", d.path, d.message)
                }
            })
            .collect();
        let resource = match m.resource {
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => {
                // Buses have no status: a broken one shows on the resources that use it.
                if errors.is_empty() {
                    out.manifests.push(Manifest { origin: m.origin, resource: m.resource });
                }
                continue;
            }
            r => r,
        };
        let mut parts = Vec::new();
        if !errors.is_empty() {
            parts.push(Part::failed(VALID, "InvalidSpec", errors.join("; ")));
            out.parts.insert(key, parts);
            continue;
        }
        parts.push(Part::ok(VALID, "Valid"));
        if snapshot.secrets.contains_key(&key) {
            parts.push(Part::ok(SECRETS_RESOLVED, "Resolved"));
        }
        let namespace = resource.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string();
        let resolved = match resource {
            Resource::EventSource(es) => resolve(es, &namespace, &snapshot.targets)
                .map(|es: EventSource| Resource::EventSource(for_replicas(es, leader))),
            Resource::Trigger(mut t) => {
                // The leader runs the replays the spec asks for; the others leave them be.
                if !leader {
                    t.spec.replays = None;
                }
                resolve(t, &namespace, &snapshot.targets).map(|t: Trigger| Resource::Trigger(t))
            }
            other => Ok(other),
        };
        match resolved {
            Ok(resource) => out.manifests.push(Manifest { origin: m.origin, resource }),
            Err(part) => parts.push(part),
        }
        out.parts.insert(key, parts);
    }
    out
}

/// An EventSource as the replicas of a deployment run it. Without the lead, its cron
/// schedules are someone else's to fire. MQTT subscriptions without a `shareGroup` get one
/// (`ofe-<namespace>-<eventsource>-<event>`), so that replicas split a topic's messages
/// instead of each publishing all of them.
fn for_replicas(mut es: EventSource, leader: bool) -> EventSource {
    if !leader {
        es.spec.cron = None;
    }
    let namespace = ofe_crds::manifest::namespace_of(&es.metadata).to_string();
    let name = es.metadata.name.clone().unwrap_or_default();
    for (event, mqtt) in es.spec.mqtt.iter_mut().flatten() {
        if mqtt.share_group.is_none() {
            mqtt.share_group = Some(format!("ofe-{namespace}-{name}-{event}"));
        }
    }
    es
}

/// `resource` with every `sink.ref` given the address of the object it names, as `uri`; or
/// the `SinkResolved` part that says which ref has none.
fn resolve<T>(resource: T, namespace: &str, targets: &Targets) -> Result<T, Part>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut value = serde_json::to_value(&resource)
        .map_err(|e| Part::failed(SINK_RESOLVED, "InternalError", e.to_string()))?;
    let mut missing = Vec::new();
    let mut found = 0;
    if let Some(spec) = value.get_mut("spec") {
        resolve_refs(spec, "spec", namespace, targets, &mut found, &mut missing);
    }
    if let Some((reason, message)) = missing.into_iter().next() {
        return Err(Part::failed(SINK_RESOLVED, reason, message));
    }
    if found == 0 {
        return Ok(resource);
    }
    serde_json::from_value(value)
        .map_err(|e| Part::failed(SINK_RESOLVED, "InternalError", e.to_string()))
}

/// Walks `value`, setting `uri` beside every `ref` that has none.
fn resolve_refs(
    value: &mut Value,
    path: &str,
    namespace: &str,
    targets: &Targets,
    found: &mut usize,
    missing: &mut Vec<(&'static str, String)>,
) {
    ofe_crds::manifest::each_object(value, path, &mut |map, path| {
        if let (Some(reference), false) = (map.get("ref"), map.contains_key("uri")) {
            match address(reference, namespace, targets) {
                Ok(url) => {
                    *found += 1;
                    map.insert("uri".into(), Value::String(url));
                }
                Err((reason, why)) => missing.push((reason, format!("{path}.ref: {why}"))),
            }
        }
    });
}

/// The address of the object `reference` names.
fn address(
    reference: &Value,
    namespace: &str,
    targets: &Targets,
) -> Result<String, (&'static str, String)> {
    let text = |field: &str| reference.get(field).and_then(Value::as_str).unwrap_or_default();
    let (kind, name, api_version) = (text("kind"), text("name"), text("apiVersion"));
    let namespace = reference.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
    let group = api_version.split('/').next().unwrap_or_default();
    let (objects, what) = match (group, kind) {
        ("serving.knative.dev", "Service") => (&targets.knative, "Knative Service"),
        ("core.openfunction.io", "Function") => (&targets.functions, "Function"),
        _ => {
            return Err((
                "UnsupportedRef",
                format!(
                    "{kind} of {api_version} cannot be resolved; refer to a Knative Service \
                     (serving.knative.dev/v1) or an OpenFunction Function \
                     (core.openfunction.io), or set `uri`"
                ),
            ));
        }
    };
    match objects.get(&(namespace.to_string(), name.to_string())) {
        Some(Some(url)) => Ok(url.clone()),
        Some(None) => Err((
            "SinkNotReady",
            format!("{what} {namespace}/{name} has no address yet; it is used once it has one"),
        )),
        None => Err((
            "SinkNotFound",
            format!("{what} {namespace}/{name} does not exist; create it, or correct the ref"),
        )),
    }
}

/// The parts a resource's status is made of: the operator's own, then what the data plane
/// reports (its conditions but `Ready`). A resource the data plane has not reported on yet is
/// `Unknown`, never `Ready` on no evidence.
pub fn parts(operator: &[Part], plane: &[Condition], running: bool) -> Vec<Part> {
    let mut parts: Vec<Part> = operator.to_vec();
    if !running {
        return parts;
    }
    let reported: Vec<Part> = plane
        .iter()
        .filter(|c| c.r#type != READY && parts.iter().all(|p| p.kind != c.r#type))
        .map(|c| Part {
            kind: c.r#type.clone(),
            status: match c.status.as_str() {
                "True" => Status::True,
                "False" => Status::False,
                _ => Status::Unknown,
            },
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        })
        .collect();
    if reported.is_empty() {
        parts.push(Part::unknown(
            "BusConnected",
            "Starting",
            "the data plane has not reported yet",
        ));
    }
    parts.extend(reported);
    parts
}

/// A Kubernetes Event worth posting: the resource's `Ready` changed status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// The new `Ready` reason.
    pub reason: String,
    /// The new `Ready` message, or a sentence for a resource that became ready.
    pub note: String,
}

/// The status to write: `current` updated in place from `parts`, or `None` when nothing
/// changed (nothing is written); and the Event to post when `Ready` changed status.
pub fn next_status(
    current: &[Condition],
    parts: &[Part],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> (Option<Vec<Condition>>, Option<Transition>) {
    let mut conditions = current.to_vec();
    if !status::apply(&mut conditions, parts, generation, now) {
        return (None, None);
    }
    let ready = |cs: &[Condition]| cs.iter().find(|c| c.r#type == READY).map(|c| c.status.clone());
    let transition = match conditions.iter().find(|c| c.r#type == READY) {
        Some(now_ready) if ready(current) != Some(now_ready.status.clone()) => {
            let reason = now_ready.reason.clone().unwrap_or_default();
            Some(Transition {
                warning: now_ready.status == "False",
                note: now_ready.message.clone().unwrap_or_else(|| {
                    match now_ready.status.as_str() {
                        "True" => "every part is ready".into(),
                        _ => "not known yet".into(),
                    }
                }),
                reason,
            })
        }
        _ => None,
    };
    (Some(conditions), transition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Vec<Resource> {
        let mut set = ofe_crds::manifest::ManifestSet::default();
        ofe_crds::manifest::parse_file(std::path::Path::new("test.yaml"), yaml, &mut set);
        assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
        set.manifests.into_iter().map(|m| m.resource).collect()
    }

    const CLOCK: &str = "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
        metadata: { name: clock, namespace: ns }\nspec:\n  eventBus: default\n  cron:\n    tick: { schedule: \"@every 1s\" }\n";

    fn trigger(name: &str, subscriber: &str) -> String {
        format!(
            "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
             metadata: {{ name: {name}, namespace: ns }}\nspec:\n  eventBus: default\n  inputs:\n    \
             tick: {{ eventSource: clock, event: tick }}\n  subscribers:\n{subscriber}\n"
        )
    }

    fn key(kind: &str, name: &str) -> ResourceKey {
        ResourceKey::new(kind, "ns", name)
    }

    #[test]
    fn invalid_resources_are_left_out_and_say_where() {
        let yaml = CLOCK.to_string()
            + &trigger("good", "  - condition: tick\n    sink: { uri: \"http://f.example/\" }")
            + &trigger("bad", "  - condition: tick &&\n    sink: { uri: \"http://f.example/\" }");
        let snapshot = Snapshot { resources: parse(&yaml), ..Snapshot::default() };
        let d = desired(&snapshot, true);
        let names: Vec<&str> = d.manifests.iter().map(|m| m.resource.name()).collect();
        assert_eq!(names, ["clock", "good"]);
        let bad = &d.parts[&key("Trigger", "bad")];
        assert_eq!((bad[0].kind.as_str(), bad[0].status), (VALID, Status::False));
        assert_eq!(bad[0].reason, "InvalidSpec");
        assert!(bad[0].message.contains("spec.subscribers[0].condition"), "{}", bad[0].message);
        assert_eq!(d.parts[&key("Trigger", "good")], [Part::ok(VALID, "Valid")]);
    }

    #[test]
    fn replicas_share_mqtt_subscriptions() {
        let yaml = "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
            metadata: { name: fleet, namespace: ns }\nspec:\n  eventBus: default\n  mqtt:\n    \
            telemetry: { url: \"tcp://broker:1883\", topic: \"cars/#\" }\n    \
            alarms: { url: \"tcp://broker:1883\", topic: \"alarms/#\", shareGroup: mine }\n";
        let snapshot = Snapshot { resources: parse(yaml), ..Snapshot::default() };
        let Resource::EventSource(es) = &desired(&snapshot, false).manifests[0].resource else {
            unreachable!("an EventSource")
        };
        let group = |event: &str| es.spec.mqtt.as_ref().and_then(|m| m[event].share_group.clone());
        assert_eq!(group("telemetry").as_deref(), Some("ofe-ns-fleet-telemetry"));
        assert_eq!(group("alarms").as_deref(), Some("mine"), "a chosen group stays");
    }

    #[test]
    fn only_the_leader_fires_cron_schedules() {
        let snapshot = Snapshot { resources: parse(CLOCK), ..Snapshot::default() };
        let cron = |leader| match &desired(&snapshot, leader).manifests[0].resource {
            Resource::EventSource(es) => es.spec.cron.is_some(),
            _ => unreachable!("an EventSource"),
        };
        assert!(cron(true));
        assert!(!cron(false), "a follower runs the EventSource without its schedules");
    }

    #[test]
    fn refs_take_the_address_of_what_they_name() {
        let knative = |name: &str| {
            format!(
                "  - condition: tick\n    sink:\n      ref: {{ apiVersion: serving.knative.dev/v1, kind: Service, name: {name} }}"
            )
        };
        let yaml = CLOCK.to_string()
            + &trigger("ready", &knative("hello"))
            + &trigger("pending", &knative("cold"))
            + &trigger("missing", &knative("nope"))
            + &trigger(
                "function",
                "  - condition: tick\n    deadLetterSink:\n      ref: { apiVersion: core.openfunction.io/v1beta2, kind: Function, name: fn, namespace: other }\n    sink: { uri: \"http://f.example/\" }",
            )
            + &trigger(
                "unsupported",
                "  - condition: tick\n    sink:\n      ref: { apiVersion: v1, kind: Pod, name: p }",
            );
        let mut targets = Targets::default();
        targets
            .knative
            .insert(("ns".into(), "hello".into()), Some("http://hello.ns.example".into()));
        targets.knative.insert(("ns".into(), "cold".into()), None);
        let status: Value = serde_json::json!({
            "addresses": [{"type": "External", "value": "http://fn.example"}, {"type": "Internal", "value": "http://fn.other.svc"}]
        });
        targets
            .functions
            .insert(("other".into(), "fn".into()), Targets::function_address(Some(&status)));
        let d =
            desired(&Snapshot { resources: parse(&yaml), targets, ..Snapshot::default() }, true);
        let uri = |name: &str| {
            let m = d.manifests.iter().find(|m| m.resource.name() == name).expect(name);
            let Resource::Trigger(t) = &m.resource else { unreachable!("a Trigger") };
            let s = &t.spec.subscribers[0];
            let sink = s.sink.as_ref().and_then(|s| s.uri.clone());
            let dead = s.dead_letter_sink.as_ref().and_then(|s| s.uri.clone());
            (sink, dead)
        };
        assert_eq!(uri("ready").0.as_deref(), Some("http://hello.ns.example"));
        assert_eq!(
            uri("function").1.as_deref(),
            Some("http://fn.other.svc"),
            "the internal address"
        );
        // A ref to a kind that has no address is refused as `ofe validate` refuses it.
        let unsupported = &d.parts[&key("Trigger", "unsupported")];
        assert_eq!((unsupported[0].kind.as_str(), unsupported[0].status), (VALID, Status::False));
        for (name, reason) in [("pending", "SinkNotReady"), ("missing", "SinkNotFound")] {
            let parts = &d.parts[&key("Trigger", name)];
            let resolved = parts.iter().find(|p| p.kind == SINK_RESOLVED).expect(name);
            assert_eq!((resolved.status, resolved.reason.as_str()), (Status::False, reason));
            assert!(
                resolved.message.starts_with("spec.subscribers[0].sink.ref: "),
                "{}",
                resolved.message
            );
            assert!(d.manifests.iter().all(|m| m.resource.name() != name), "{name} is not run");
        }
    }

    #[test]
    fn a_resource_is_never_ready_before_the_data_plane_reports() {
        let operator = [Part::ok(VALID, "Valid")];
        let none = parts(&operator, &[], true);
        assert_eq!(status::ready(&none).status, Status::Unknown);
        let excluded = [Part::failed(VALID, "InvalidSpec", "spec.x: wrong")];
        assert_eq!(parts(&excluded, &[], false), excluded.to_vec());
    }

    #[test]
    fn status_stays_bounded_and_announces_only_transitions() {
        let mut conditions: Vec<Condition> = Vec::new();
        let mut events = 0;
        let start = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        for i in 0..1000 {
            let bus = if (i / 100) % 2 == 0 {
                Part::ok("BusConnected", "Connected")
            } else {
                Part::failed("BusConnected", "BusUnreachable", format!("attempt {i}"))
            };
            let parts = [Part::ok(VALID, "Valid"), Part::ok("Subscribed", "ConsumerOpen"), bus];
            let now = start + chrono::TimeDelta::seconds(i);
            let (next, transition) = next_status(&conditions, &parts, Some(1 + i / 500), now);
            if let Some(next) = next {
                conditions = next;
            }
            events += usize::from(transition.is_some());
        }
        assert_eq!(conditions.len(), 4, "one condition per type, after 1000 reconciles");
        assert_eq!(conditions.last().map(|c| c.r#type.as_str()), Some(READY));
        assert_eq!(events, 10, "an Event for each of the 10 changes of Ready, no more");
        assert_eq!(conditions[3].observed_generation, Some(2));
    }
}
