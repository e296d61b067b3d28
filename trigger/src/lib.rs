//! ofe Triggers: subscriber conditions in CEL over the Trigger's inputs, and reliable delivery to
//! function sinks and bus topics.
//!
//! - [`condition`]: compiling and evaluating conditions, with errors that point at the column.
//! - [`delivery`]: HTTP (CloudEvents binary mode) and topic destinations, retries, dead letters.
//! - [`runner`]: one durable consumer per subscriber, bounded in-flight delivery, ack after
//!   delivery or dead-letter.
//! - [`plan`] turns a `Trigger` resource into [`runner::SubscriberPlan`]s; [`check`] is what
//!   `ofe validate` asks of this crate.

pub mod condition;
pub mod delivery;
pub mod filter;
pub mod metrics;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::manifest::DEFAULT_NAMESPACE;
use ofe_crds::{SinkSpec, Trigger};
use ofe_eventbus::Subject;

pub use condition::{Condition, ConditionError};
pub use delivery::{Deliverer, Destination, RetryPolicy};
pub use metrics::{SubscriberLabels, TriggerMetrics};
pub use runner::{Route, SubscriberPlan};

/// The window when a Trigger sets none, as in OpenFunction.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Deliveries in flight per subscriber.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Deliveries of one event to one subscriber before it is dead-lettered unattempted.
pub const DEFAULT_MAX_DELIVER: u32 = 20;

fn input_names(trigger: &Trigger) -> BTreeSet<String> {
    trigger.spec.inputs.keys().cloned().collect()
}

/// Compiles every condition of `trigger`; what does not compile becomes a diagnostic at its
/// field path, with the expression and a caret.
pub fn check(trigger: &Trigger) -> Vec<Diagnostic> {
    let names = input_names(trigger);
    let mut out: Vec<Diagnostic> = trigger
        .spec
        .subscribers
        .iter()
        .enumerate()
        .filter_map(|(i, sub)| {
            Condition::compile(&sub.condition, &names)
                .err()
                .map(|e| Diagnostic::error(format!("spec.subscribers[{i}].condition"), e.message))
        })
        .collect();
    if let Err(errors) = compile_filters(trigger) {
        out.extend(errors);
    }
    out
}

/// Compiled filters per input, or a diagnostic per filter that cannot be used.
type InputFilters = BTreeMap<String, Arc<Vec<filter::CompiledFilter>>>;

fn compile_filters(trigger: &Trigger) -> Result<InputFilters, Vec<Diagnostic>> {
    let mut compiled = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, input) in &trigger.spec.inputs {
        let Some(filters) = &input.filters else { continue };
        let mut list = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            match filter::CompiledFilter::compile(f) {
                Ok(c) => list.push(c),
                Err(e) => errors.push(Diagnostic::error(
                    format!("spec.inputs.{name}.filters[{i}]{}", e.path),
                    e.message,
                )),
            }
        }
        compiled.insert(name.clone(), Arc::new(list));
    }
    if errors.is_empty() { Ok(compiled) } else { Err(errors) }
}

/// Where a `sink` points, in standalone mode: its `uri`. A `ref` needs Kubernetes to resolve.
pub fn sink_destination(path: &str, sink: &SinkSpec) -> Result<Destination, Diagnostic> {
    match (&sink.uri, &sink.r#ref) {
        (Some(uri), _) => Ok(Destination::Http { url: uri.clone() }),
        (None, Some(r)) => Err(Diagnostic::error(
            format!("{path}.ref"),
            format!(
                "{} `{}` can only be resolved in Kubernetes mode; use `uri` when running standalone",
                r.kind, r.name
            ),
        )),
        (None, None) => Err(Diagnostic::error(path, "neither uri nor ref is set")),
    }
}

/// Turns a Trigger into one plan per subscriber. Fails with the diagnostics of every field
/// that cannot run.
pub fn plan(trigger: &Trigger, retry: RetryPolicy) -> Result<Vec<SubscriberPlan>, Vec<Diagnostic>> {
    let namespace = trigger.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let names = input_names(trigger);
    let mut errors = Vec::new();
    let window = match &trigger.spec.window {
        None => DEFAULT_WINDOW,
        Some(text) => ofe_crds::duration::parse(text).unwrap_or_else(|e| {
            errors.push(Diagnostic::error("spec.window", e));
            DEFAULT_WINDOW
        }),
    };
    let filters = compile_filters(trigger).unwrap_or_else(|e| {
        errors.extend(e);
        BTreeMap::new()
    });
    let mut plans = Vec::new();
    for (i, sub) in trigger.spec.subscribers.iter().enumerate() {
        let path = format!("spec.subscribers[{i}]");
        let condition = match Condition::compile(&sub.condition, &names) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                errors.push(Diagnostic::error(format!("{path}.condition"), e.message));
                continue;
            }
        };
        let inputs = condition
            .names()
            .iter()
            .filter_map(|input| {
                let spec = trigger.spec.inputs.get(input)?;
                let ns = spec.namespace.as_deref().unwrap_or(namespace);
                let subject = match (&spec.topic, &spec.event_source, &spec.event) {
                    (Some(topic), _, _) => Subject::topic(ns, topic),
                    (None, Some(es), Some(event)) => Subject::event(ns, es, event),
                    _ => return None,
                };
                Some((input.clone(), subject))
            })
            .collect();
        let input_filters = condition
            .names()
            .iter()
            .filter_map(|n| filters.get(n).map(|f| (n.clone(), f.clone())))
            .collect();
        let mut routes = Vec::new();
        let mut route = |dest: Result<Destination, Diagnostic>,
                         dl: Option<Result<Destination, Diagnostic>>| {
            match (dest, dl.transpose()) {
                (Ok(destination), Ok(dead_letter)) => {
                    routes.push(Route { destination, dead_letter })
                }
                (Err(e), _) | (_, Err(e)) => errors.push(e),
            }
        };
        if let Some(sink) = &sub.sink {
            let dl = sub
                .dead_letter_sink
                .as_ref()
                .map(|s| sink_destination(&format!("{path}.deadLetterSink"), s));
            route(sink_destination(&format!("{path}.sink"), sink), dl);
        }
        if let Some(topic) = &sub.topic {
            let to = |t: &String| Destination::Topic {
                name: t.clone(),
                subject: Subject::topic(namespace, t),
            };
            route(Ok(to(topic)), sub.dead_letter_topic.as_ref().map(|t| Ok(to(t))));
        }
        plans.push(SubscriberPlan {
            labels: SubscriberLabels {
                namespace: namespace.to_string(),
                trigger: name.to_string(),
                subscriber: i.to_string(),
            },
            consumer: format!("trigger.{namespace}.{name}.{i}"),
            condition: Some(condition),
            filters: input_filters,
            inputs,
            window,
            routes,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry,
            max_deliver: DEFAULT_MAX_DELIVER,
        });
    }
    if errors.is_empty() { Ok(plans) } else { Err(errors) }
}
