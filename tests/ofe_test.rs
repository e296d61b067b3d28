//! `ofe test`: Triggers run offline against fixture events.
//! - Every example with fixtures (`examples/*/fixtures/events.jsonl`) fires exactly what its
//!   `expect.jsonl` lists: the check CI runs.
//! - A join follows the fixture order and says, when it does not fire, which input is false;
//!   a filter says what it saw; a transform and the request are shown, credentials hidden;
//!   a wrong expectation exits 1 naming the difference; a bad fixture exits 2 naming its line.
//! - Nothing is connected: the sink and broker addresses point nowhere.

mod support;

use std::path::Path;

fn ofe_test(args: &[&str]) -> (i32, String, String) {
    let out = support::ofe().arg("test").args(args).output().expect("ofe test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_fires_what_its_fixtures_expect() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples") {
        let dir = entry.expect("entry").path();
        let fixtures = dir.join("fixtures");
        if !fixtures.is_dir() {
            continue;
        }
        let (code, stdout, stderr) = ofe_test(&[
            "-f",
            dir.to_str().expect("path"),
            "--events",
            fixtures.join("events.jsonl").to_str().expect("path"),
            "--expect",
            fixtures.join("expect.jsonl").to_str().expect("path"),
        ]);
        assert_eq!(code, 0, "{}:\n{stdout}\n{stderr}", dir.display());
        assert!(stderr.contains("as expected"), "{stderr}");
        checked += 1;
    }
    assert!(checked >= 5, "the examples with fixtures: {checked}");
}

const JOIN: &str = "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
metadata: { name: trips, namespace: fleet }\n\
spec:\n  eventBus: default\n  window: 10s\n  correlationKey: data.vehicle\n  inputs:\n    \
start: { eventSource: cars, event: start }\n    \
stop: { eventSource: cars, event: stop, filters: [ { cel: \"data.km > 0.0\" } ] }\n  \
subscribers:\n  - condition: start && stop\n    sink:\n      \
uri: \"http://127.0.0.1:9/trips/{data.vehicle}\"\n      \
auth: { bearerToken: tok-secret-4411 }\n      headers: { X-Fleet: north }\n    \
transform:\n      data: '{\"vehicle\": data.vehicle, \"km\": data.km}'\n  \
- condition: stop\n    sink:\n      kafka: { brokers: \"127.0.0.1:9\", topic: trips, key: data.vehicle }\n";

fn event(id: &str, input: &str, time: &str, data: &str) -> String {
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"/cars\",\"type\":\"t\",\"time\":\"{time}\",\
         \"datacontenttype\":\"application/json\",\"data\":{data},\"ofenamespace\":\"fleet\",\
         \"ofeeventsource\":\"cars\",\"ofeevent\":\"{input}\"}}\n"
    )
}

#[test]
fn a_join_follows_the_fixture_order_and_says_why_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = support::manifests(dir.path(), JOIN);
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        event("s-1", "start", "2026-12-03T10:00:00Z", r#"{"vehicle":"v-1"}"#)
            + &event("e-2", "stop", "2026-12-03T10:00:01Z", r#"{"vehicle":"v-2","km":3.5}"#)
            + &event("e-0", "stop", "2026-12-03T10:00:02Z", r#"{"vehicle":"v-1","km":0.0}"#)
            + &event("e-1", "stop", "2026-12-03T10:00:03Z", r#"{"vehicle":"v-1","km":12.5}"#)
            + &event("e-late", "stop", "2026-12-03T10:00:20Z", r#"{"vehicle":"v-1","km":1.0}"#),
    )
    .expect("fixtures");
    let (code, stdout, stderr) = ofe_test(&[
        "-f",
        manifests.to_str().expect("path"),
        "--events",
        events.to_str().expect("path"),
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let outcomes: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let verdict = |event: &str, subscriber: u64| {
        outcomes
            .as_array()
            .expect("outcomes")
            .iter()
            .find(|o| o["event"] == event)
            .and_then(|o| {
                o["verdicts"].as_array()?.iter().find(|v| v["subscriber"] == subscriber).cloned()
            })
            .unwrap_or_else(|| panic!("no verdict of {event} for {subscriber}: {outcomes}"))
    };
    // v-2 never started: the condition says which input is false.
    let why = verdict("e-2", 0)["why_not"].as_str().unwrap_or_default().to_string();
    assert!(
        why.starts_with("the condition `start && stop` was false: start=false, stop=true"),
        "{why}"
    );
    // A filter that is false says what it saw.
    let why = verdict("e-0", 0)["why_not"].as_str().unwrap_or_default().to_string();
    assert_eq!(why, "input `stop`: filter [0] `data.km > 0.0` was false; data.km = 0.0");
    // v-1 started, then stopped with km: it fires, transformed, with the request shown.
    let fired = verdict("e-1", 0);
    assert_eq!(fired["fired"], true, "{fired}");
    assert_eq!(fired["event"]["data"], serde_json::json!({"vehicle": "v-1", "km": 12.5}));
    assert_eq!(fired["request"]["method"], "POST");
    assert_eq!(fired["request"]["url"], "http://127.0.0.1:9/trips/v-1");
    let headers: Vec<(String, String)> =
        serde_json::from_value(fired["request"]["headers"].clone()).expect("headers");
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(header("authorization").as_deref(), Some("***"), "credentials are hidden");
    assert_eq!(header("x-fleet").as_deref(), Some("north"));
    assert_eq!(header("ce-id").as_deref(), Some("e-1"));
    assert!(header("idempotency-key").is_some_and(|k| k.len() == 32));
    assert!(!stdout.contains("tok-secret-4411"), "the token never shows");
    // The broker sink is shown, not connected to.
    let kafka = verdict("e-1", 1);
    assert_eq!(kafka["request"]["url"], "kafka://127.0.0.1:9/trips");
    let kafka_headers: Vec<(String, String)> =
        serde_json::from_value(kafka["request"]["headers"].clone()).expect("headers");
    assert_eq!(kafka_headers[0], ("key".to_string(), "v-1".to_string()));
    // Twenty seconds on, `start` has left the 10 s window.
    let why = verdict("e-late", 0)["why_not"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("start=false, stop=true"), "{why}");

    // A wrong expectation exits 1, naming the difference and why.
    let expect = dir.path().join("expect.jsonl");
    std::fs::write(
        &expect,
        "{\"event\": \"e-2\", \"trigger\": \"fleet/trips\", \"subscriber\": 0}\n",
    )
    .expect("expect");
    let (code, _, stderr) = ofe_test(&[
        "-f",
        manifests.to_str().expect("path"),
        "--events",
        events.to_str().expect("path"),
        "--expect",
        expect.to_str().expect("path"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("expected, but did not fire: event e-2 → fleet/trips[0]: the condition `start && stop` was false"),
        "{stderr}"
    );
    assert!(stderr.contains("fired, but not expected: event e-1 → fleet/trips[0]"), "{stderr}");
}

#[test]
fn a_fixture_that_names_no_input_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = support::manifests(dir.path(), JOIN);
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/s\",\"type\":\"t\"}\nnot json\n",
    )
    .expect("fixtures");
    let (code, _, stderr) = ofe_test(&[
        "-f",
        manifests.to_str().expect("path"),
        "--events",
        events.to_str().expect("path"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    let file = events.display().to_string();
    assert!(stderr.contains(&format!("{file}:1: event `x` names no input")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:2: not a structured-mode CloudEvent")), "{stderr}");
}
