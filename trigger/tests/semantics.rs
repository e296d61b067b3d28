//! Each row of the condition semantics table in `docs/trigger-semantics.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use ofe_crds::manifest::{Resource, parse_document};
use ofe_eventbus::Subject;
use ofe_trigger::runner::WindowState;
use ofe_trigger::{Condition, RetryPolicy, plan};

/// Replays `history` (input, seconds before now) and then an event of `arrives`; says whether
/// `condition` fires on it with a 60 s window.
fn fires(condition: &str, history: &[(&str, i64)], arrives: &str) -> bool {
    let inputs: BTreeSet<String> = ["A", "B", "C"].into_iter().map(String::from).collect();
    let condition = Condition::compile(condition, &inputs).expect("condition compiles");
    // A subscriber only receives events of inputs its condition names.
    if !condition.names().iter().any(|n| n == arrives) {
        return false;
    }
    let now = Utc::now();
    let mut window = WindowState::default();
    for (input, ago) in history {
        if condition.names().iter().any(|n| n == input) {
            window.observe(
                &[input],
                now - TimeDelta::seconds(*ago),
                condition.names(),
                Duration::from_secs(60),
            );
        }
    }
    let active = window.observe(&[arrives], now, condition.names(), Duration::from_secs(60));
    condition.evaluate(&active).expect("evaluates")
}

/// (condition, earlier events as (input, seconds ago), arriving event, fires?)
type Row = (&'static str, &'static [(&'static str, i64)], &'static str, bool);

#[test]
fn table_of_cases() {
    let rows: &[Row] = &[
        ("A", &[], "A", true),
        ("A", &[("A", 10)], "B", false), // B is not named: never fires A's subscriber
        ("A && B", &[("B", 30)], "A", true),
        ("A && B", &[], "A", false),
        ("A && B", &[("B", 61)], "A", false), // B fell out of the 60 s window
        ("A && B", &[("A", 5)], "B", true),
        ("A || B", &[], "B", true),
        ("A && !B", &[], "A", true),
        ("A && !B", &[("B", 10)], "A", false),
        ("A && !B", &[], "B", false), // B's own event makes !B false
        ("A && (B || C)", &[("C", 1)], "A", true),
        ("A && (B || C)", &[("C", 1)], "C", false), // A not seen
        ("A && B", &[("A", 1), ("B", 2)], "C", false), // C is not named
    ];
    for (condition, history, arrives, want) in rows {
        assert_eq!(
            fires(condition, history, arrives),
            *want,
            "{condition} with {history:?} then {arrives}"
        );
    }
}

#[test]
fn each_subscriber_reads_only_the_inputs_its_condition_names() {
    let doc = serde_saphyr::from_str::<serde_json::Value>(
        r#"
apiVersion: events.openfunction.io/v1alpha1
kind: Trigger
metadata: { name: t, namespace: ns }
spec:
  eventBus: default
  inputs:
    eventA: { eventSource: es-a, event: e }
    eventB: { eventSource: es-b, event: e, namespace: other }
    chained: { topic: metrics }
  subscribers:
  - condition: eventB
    sink: { uri: "http://127.0.0.1:9/b" }
  - condition: eventA && chained
    topic: out
    deadLetterTopic: out-dead
"#,
    )
    .expect("yaml");
    let Some(Resource::Trigger(trigger)) = parse_document(doc).expect("parses") else {
        panic!("trigger")
    };
    let plans = plan(&trigger, RetryPolicy::default()).expect("plans");
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0].inputs, vec![("eventB".to_string(), Subject::event("other", "es-b", "e"))]);
    assert_eq!(plans[0].consumer, "trigger.ns.t.0");
    assert_eq!(
        plans[1].inputs,
        vec![
            ("chained".to_string(), Subject::topic("ns", "metrics")),
            ("eventA".to_string(), Subject::event("ns", "es-a", "e"))
        ]
    );
    assert_eq!(
        plans[1].routes[0].dead_letter.as_ref().map(ToString::to_string).as_deref(),
        Some("topic:out-dead")
    );
}
