//! `ofe replay` against `ofe run`, on the embedded bus, JetStream and Kafka: a replay from a
//! time re-delivers exactly the events stored after it, counted, each marked `ofereplay`,
//! while live delivery goes on; `--from-start` takes everything held; a start before what
//! retention kept is refused naming the oldest event; a replay can be cancelled.
//! `OFE_TEST_NATS` and `OFE_TEST_KAFKA` name the brokers; unset, those tests skip and say so.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{KillOnDrop, Receiver, free_addr, manifests, post_order, wait_ready};

/// The ids the function received on `path`, in order, with their `ofereplay` (or "").
fn received(receiver: &Receiver, path: &str) -> Vec<(String, String)> {
    receiver.on(path).iter().map(|r| (r.header("ce-id"), r.header("ce-ofereplay"))).collect()
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("order-{n}")).collect()
}

/// Runs `ofe replay ARGS --json` for Trigger `orders` in `ns`; returns its JSON lines.
fn replay(listen: SocketAddr, ns: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["replay", "-n", ns, "--trigger", "orders", "--json"];
    all.extend_from_slice(args);
    support::tool(listen, &all)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

async fn from_a_time(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(&ns, &format!("{base}/fn"), "", &bus(&ns));
    let folder = manifests(dir.path(), &yaml);
    let run = support::Running::start(&folder, &dir.path().join("data")).await;
    let (listen, webhooks) = (run.listen, run.webhooks);
    for n in 0..10 {
        post_order(webhooks, &ns, n).await;
    }
    receiver.wait_for(Duration::from_secs(30), "the first ten", |r| r.on("/fn").len() >= 10).await;
    // Brokers stamp in milliseconds, some by their own clock: a clear gap either side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 10..20 {
        post_order(webhooks, &ns, n).await;
    }
    receiver.wait_for(Duration::from_secs(30), "twenty live", |r| r.on("/fn").len() >= 20).await;

    let lines = replay(listen, &ns, &["--from", &from, "--wait"]);
    let last = lines.last().expect("progress");
    let run = &last["replays"][0];
    assert_eq!(run["state"], "done", "{last}");
    assert_eq!((run["read"].as_u64(), run["fired"].as_u64()), (Some(10), Some(10)), "{run}");
    assert_eq!(run["delivered"], 10, "{run}");
    let id = run["id"].as_str().expect("an id").to_string();

    // Live delivery goes on beside it, unmarked.
    post_order(webhooks, &ns, 20).await;
    receiver.wait_for(Duration::from_secs(30), "the live one", |r| r.on("/fn").len() >= 31).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = received(&receiver, "/fn");
    let replayed: Vec<String> =
        all.iter().filter(|(_, r)| *r == id).map(|(i, _)| i.clone()).collect();
    assert_eq!(replayed, ids(10..20), "exactly the events after --from, in order, once");
    let live: Vec<String> =
        all.iter().filter(|(_, r)| r.is_empty()).map(|(i, _)| i.clone()).collect();
    assert_eq!(live, ids(0..21), "live delivery saw every event once");
    assert_eq!(all.len(), 31, "nothing else: {all:?}");
    let label = format!("replay=\"{id}\"");
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    let delivered = metrics.lines().find(|l| {
        l.starts_with("ofe_trigger_replay_events{")
            && l.contains(&label)
            && l.contains("count=\"delivered\"")
    });
    assert!(delivered.is_some_and(|l| l.ends_with(" 10")), "counted in metrics: {metrics}");
    let status = support::tool(listen, &["status", "--json"]);
    assert!(status.contains(&format!("\"id\":\"{id}\"")), "ofe status shows it: {status}");

    // From the start: all twenty-one held.
    let lines = replay(listen, &ns, &["--from-start", "--wait"]);
    let run = &lines.last().expect("progress")["replays"][0];
    assert_eq!(
        (run["state"].as_str(), run["delivered"].as_u64()),
        (Some("done"), Some(21)),
        "{run}"
    );
}

on_every_bus!(from_a_time:
    replay_from_a_time_on_the_embedded_bus,
    replay_from_a_time_on_jetstream,
    replay_from_a_time_on_kafka
);

/// On a bus that keeps events for one second, a start before what it still holds is refused,
/// naming the oldest event held; a bad time is refused with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_before_retention_is_refused() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {ns} }}\nspec:\n  memory: {{ maxAge: 1s }}\n"
    );
    let yaml = support::orders_pipeline(&ns, &format!("{base}/fn"), "", &bus);
    let folder = manifests(dir.path(), &yaml);
    let run = support::Running::start(&folder, &dir.path().join("data")).await;
    let (listen, webhooks) = (run.listen, run.webhooks);
    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for n in 0..3 {
        post_order(webhooks, &ns, n).await;
    }
    receiver.wait_for(Duration::from_secs(30), "three", |r| r.on("/fn").len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    post_order(webhooks, &ns, 3).await;
    let endpoint = format!("http://{listen}");
    let refused = |args: &[&str]| {
        let output = support::ofe()
            .args(["replay", "-n", &ns, "--trigger", "orders", "--endpoint", &endpoint])
            .args(args)
            .output()
            .expect("run");
        assert!(!output.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let error = refused(&["--from", &before]);
    assert!(error.contains("is before the oldest event the bus still holds, stored at"), "{error}");
    assert!(error.contains("409"), "{error}");
    let error = refused(&["--from", "yesterday"]);
    assert!(error.contains("`yesterday` is not an RFC 3339 time"), "{error}");
    let error = refused(&[]);
    assert!(error.contains("--from RFC3339 or --from-start"), "{error}");
}

/// A replay through a slow function is cancelled part way: it ends `cancelled`, having
/// delivered only part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_can_be_cancelled() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(&ns, &format!("{base}/slow"), "", "");
    let folder = manifests(dir.path(), &yaml);
    let run = support::Running::start(&folder, &dir.path().join("data")).await;
    let (listen, webhooks) = (run.listen, run.webhooks);
    for n in 0..4 {
        post_order(webhooks, &ns, n).await;
    }
    receiver.wait_for(Duration::from_secs(30), "four live", |r| r.on("/slow").len() >= 4).await;
    let started = replay(listen, &ns, &["--from-start"]);
    let id = started[0]["replays"][0]["id"].as_str().expect("an id").to_string();
    receiver
        .wait_for(Duration::from_secs(30), "a replayed delivery", |r| {
            r.on("/slow").iter().any(|x| x.header("ce-ofereplay") == id)
        })
        .await;
    let cancelled = support::tool(listen, &["replay", "--cancel", &id]);
    assert!(cancelled.contains(&format!("replay {id} of {ns}/orders subscriber 0")), "{cancelled}");
    let start = std::time::Instant::now();
    loop {
        let listed = support::tool(listen, &["replay", "--list", "--json"]);
        let answer: serde_json::Value = serde_json::from_str(listed.trim()).expect("JSON");
        let run = answer["replays"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"] == id.as_str()))
            .cloned();
        if run.as_ref().is_some_and(|r| r["state"] == "cancelled") {
            let delivered = run.as_ref().and_then(|r| r["delivered"].as_u64()).unwrap_or(99);
            assert!(delivered < 4, "cancelled before the end: {run:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "not cancelled: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `spec.replays` in a file: the replay runs once, with its progress on `/replays`; it does
/// not run again after a restart; a replay with neither `from` nor `fromStart` is refused by
/// `ofe validate` at its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_in_the_spec_runs_once() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = support::orders_pipeline(&ns, &format!("{base}/fn"), "", "");
    let folder = manifests(dir.path(), &plain);
    let data = dir.path().join("data");
    let (listen, webhooks) = (free_addr(), free_addr());
    let mut ofe = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    for n in 0..3 {
        post_order(webhooks, &ns, n).await;
    }
    receiver.wait_for(Duration::from_secs(30), "three live", |r| r.on("/fn").len() >= 3).await;
    let with_replay = |replay: &str| {
        plain.replace("  subscribers:\n", &format!("  replays:\n  - {replay}\n  subscribers:\n"))
    };
    manifests(dir.path(), &with_replay("{ name: again, fromStart: true }"));
    assert!(support::terminate(&mut ofe.0).success());
    let (listen, webhooks) = (free_addr(), free_addr());
    let mut ofe = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    let replayed = |r: &Receiver| {
        r.on("/fn").iter().filter(|x| x.header("ce-ofereplay") == "spec-again").count()
    };
    receiver.wait_for(Duration::from_secs(30), "the replay", |r| replayed(r) >= 3).await;
    let start = std::time::Instant::now();
    loop {
        let listed = support::tool(listen, &["replay", "--list", "--json"]);
        if listed.contains("\"id\":\"spec-again\"") && listed.contains("\"state\":\"done\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not done: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(support::terminate(&mut ofe.0).success());
    let (listen, webhooks) = (free_addr(), free_addr());
    let _ofe = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    post_order(webhooks, &ns, 3).await;
    receiver.wait_for(Duration::from_secs(30), "the live fourth", |r| r.on("/fn").len() >= 7).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replayed(&receiver), 3, "the replay ran once, not again after the restart");

    let bad = tempfile::tempdir().expect("tempdir");
    let folder = manifests(bad.path(), &with_replay("{ name: again }"));
    let output = support::ofe().arg("validate").arg("-f").arg(&folder).output().expect("run");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("spec.replays[0].from"), "{text}");
    assert!(text.contains("`fromStart: true`"), "{text}");
}
