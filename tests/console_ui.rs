//! The web console (`/console`) end to end, in headless Chromium:
//! - on the vehicle-telemetry flagship (its own manifests, fed over MQTT by a simulated
//!   fleet), the page shows the mesh with live rates; breaking the alert function turns its
//!   edge red and fills its dead letters; bringing it back and redriving empties them, and
//!   every overspeed event reaches the function; the redriven event is found by id with its
//!   whole path; the router's live flow shows a filter's verdict; pausing the metrics
//!   subscriber grows its lag and resuming drains it; its charts show the history;
//! - with events flowing, a subscriber's events stream live, a failing subscriber's dead
//!   letters are listed and purged, a test event is sent, a subscriber is replayed from a
//!   minute ago (its progress shown until done), and search dims what it does not match;
//! - with 200 Triggers in four namespaces, it keeps updating every second, the namespace
//!   filter shows one team's, and search finds one Trigger;
//! - the console is refused outside loopback without the token.
//!
//! The browser tests need OFE_TEST_CHROMIUM (Debian's chromium) and OFE_TEST_PLAYWRIGHT (a
//! folder with playwright-core from npm), which `scripts/services.sh` provides; unset, they
//! are skipped and say so. Their screenshots are kept in `target/tmp/console/`. With
//! `OFE_BLESS=1`, the flagship test also writes the README's, `docs/console.png`.

mod support;

use std::time::Duration;

use support::{Receiver, Running, manifests};

/// A folder for a test's screenshots, under the build's temporary folder.
fn screenshots(name: &str) -> std::path::PathBuf {
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    shots
}

/// Runs the browser script `tests/console/<script>` with `args`; returns the JSON it prints
/// of what it saw, or panics with its output.
async fn browse(script: &str, args: &[String]) -> serde_json::Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console").join(script);
    let out =
        tokio::process::Command::new("node").arg(&script).args(args).output().await.expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script's JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_chromium, ofe_test_playwright)),
    ignore = "needs OFE_TEST_CHROMIUM and OFE_TEST_PLAYWRIGHT (scripts/test.sh installs them)"
)]
async fn the_console_shows_the_live_mesh_and_a_failing_sink() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::webhook_source(&ns, "fleet", "telemetry")
        + &support::trigger(
            &ns,
            "route",
            "    all: { eventSource: fleet, event: telemetry }",
            &format!(
                "  - condition: all\n    sink: {{ uri: \"{base}/fn\" }}\n\
                 \x20 - condition: all\n    sink: {{ uri: \"{base}/fail\" }}\n    \
                 delivery: {{ retry: 1, backoffDelay: PT0.05S }}"
            ),
        );
    let folder = manifests(dir.path(), &yaml);
    let run = Running::start(&folder, &dir.path().join("data")).await;
    // Events all along, ten a second.
    let url = format!("http://{}/{ns}/fleet/telemetry", run.webhooks);
    let sender = tokio::spawn(async move {
        for n in 0.. {
            let id = format!("e-{n}");
            let headers = [("ce-id", id.as_str()), ("ce-source", "/cars"), ("ce-type", "t")];
            support::post_event(&url, &headers, format!(r#"{{"n":{n}}}"#)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    receiver
        .wait_for(Duration::from_secs(20), "the first deliveries", |r| !r.on("/fn").is_empty())
        .await;

    let shots = screenshots("console");
    let screenshot = shots.join("mesh.png");
    let page = format!("http://{}/console", run.listen);
    let seen = browse("ui.mjs", &[page, screenshot.display().to_string()]).await;
    sender.abort();
    let nodes: Vec<String> = serde_json::from_value(seen["nodes"].clone()).expect("nodes");
    for id in [
        format!("event:{ns}/fleet/telemetry"),
        format!("sub:{ns}/route/0"),
        format!("sub:{ns}/route/1"),
        format!("sink:{base}/fn"),
        format!("sink:{base}/fail"),
    ] {
        assert!(nodes.contains(&id), "{id} in {nodes:?}");
    }
    // "7.98/s  lag 0": the rate first.
    let shown = seen["rate"].as_str().unwrap_or_default();
    let rate: f64 = shown.split('/').next().unwrap_or_default().parse().unwrap_or(0.0);
    assert!(rate > 0.0, "a live rate: {seen}");
    let failing: Vec<String> = serde_json::from_value(seen["failing"].clone()).expect("failing");
    assert_eq!(
        failing,
        [format!("sub:{ns}/route/1>sink:{base}/fail")],
        "only the failing sink's edge is red"
    );
    let steps: Vec<String> = serde_json::from_value(seen["steps"].clone()).expect("steps");
    assert!(steps.iter().any(|s| s.contains(" delivered e-")), "{steps:?}");
    assert!(seen["dimmed"].as_u64().unwrap_or(0) >= 3, "search dims the rest: {seen}");
    assert!(seen["pausedLag"].as_u64().unwrap_or(0) > 0, "paused, the lag grows: {seen}");
    assert_eq!(seen["resumedLag"], 0, "resumed, it drains: {seen}");
    let letters: Vec<String> = serde_json::from_value(seen["letters"].clone()).expect("letters");
    assert!(!letters.is_empty() && letters.iter().all(|r| r.contains("HTTP 500")), "{letters:?}");
    assert!(seen["purged"].as_str().is_some_and(|t| t.ends_with("done")), "{seen}");
    // The test event sent from the console reached the subscriber's function.
    assert!(seen["sent"].as_str().is_some_and(|t| t.ends_with("done")), "{seen}");
    let from_console: Vec<_> = receiver
        .on("/fn")
        .into_iter()
        .filter(|r| r.header("ce-source") == "/ofe/console")
        .collect();
    assert!(
        from_console.iter().any(|r| &r.body[..] == br#"{"from":"the console"}"#),
        "the console's test event at the function"
    );
    // The replay from a minute ago delivered again what the subscriber had delivered.
    let replay = seen["replay"].as_str().unwrap_or_default();
    let delivered: u64 = replay
        .split("delivered ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(delivered > 0, "{replay}");
    let mut ids: Vec<String> = receiver.on("/fn").iter().map(|r| r.header("ce-id")).collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert!(all >= ids.len() + delivered as usize, "replayed events came again: {replay}");
    assert_eq!(seen["errors"], serde_json::json!([]), "no script errors");
    assert!(screenshot.exists(), "the screenshot");
}

/// The speed of overspeed message `n`: above the limit, and unique, so that the alert function
/// (which gets `kmh`, not the message) tells each one apart.
fn overspeed(n: u64) -> f64 {
    121.0 + n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_chromium, ofe_test_playwright, ofe_test_mqtt)),
    ignore = "needs OFE_TEST_CHROMIUM, OFE_TEST_PLAYWRIGHT and OFE_TEST_MQTT (scripts/test.sh provides them)"
)]
async fn the_vehicle_telemetry_flagship_in_the_console() {
    let mqtt = support::broker_var("OFE_TEST_MQTT");
    let (receiver, base) = Receiver::start().await;
    // The flagship's own manifests, with its addresses replaced as its demo does, and a topic
    // of this test's own on the shared broker.
    let fleet = support::unique_namespace();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vehicle-telemetry/manifests.yaml");
    let original = std::fs::read_to_string(example).expect("the flagship's manifests");
    let yaml = original
        .replace("tcp://127.0.0.1:1884", &mqtt)
        .replace("fleet/+/telemetry", &format!("{fleet}/+/telemetry"))
        .replace("http://127.0.0.1:8091/", &format!("{base}/flaky"))
        .replace("http://127.0.0.1:8092/", &format!("{base}/metrics"));
    for replaced in [&mqtt, &fleet, &format!("{base}/flaky"), &format!("{base}/metrics")] {
        assert!(yaml.contains(replaced.as_str()), "the manifests name {replaced}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &yaml);
    let run = Running::start(&folder, &dir.path().join("data")).await;

    // The fleet: ten vehicles, twenty messages a second, every third one over the limit.
    let publisher = support::mqtt_publisher(&mqtt, &format!("fleet-{fleet}"));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = sent.clone();
    let topic_root = fleet.clone();
    let fleet_task = tokio::spawn(async move {
        for n in 0u64.. {
            let speed = if n % 3 == 0 { overspeed(n) } else { 80.0 + (n % 30) as f64 };
            let vehicle = format!("v-{}", n % 10);
            let payload = serde_json::json!({ "vehicleId": vehicle, "speed": speed, "n": n });
            publisher
                .publish(
                    format!("{topic_root}/{vehicle}/telemetry"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload.to_string(),
                )
                .await
                .expect("publish");
            counted.store(n + 1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    receiver
        .wait_for(Duration::from_secs(30), "the first alerts", |r| !r.on("/flaky").is_empty())
        .await;

    let shots = screenshots("console/flagship");
    let page = format!("http://{}/console", run.listen);
    let seen = browse("flagship.mjs", &[page, base.clone(), shots.display().to_string()]).await;
    fleet_task.abort();
    let strings = |key: &str| -> Vec<String> {
        serde_json::from_value(seen[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}: {seen}"))
    };

    // The whole flagship, with live rates.
    let nodes = strings("nodes");
    for id in [
        "event:telemetry/fleet/telemetry".to_string(),
        "sub:telemetry/fleet-router/0".into(),
        "sub:telemetry/fleet-router/1".into(),
        "topic:telemetry/vehicle-telemetry".into(),
        "sub:telemetry/metrics-feed/0".into(),
        format!("sink:{base}/flaky"),
        format!("sink:{base}/metrics"),
    ] {
        assert!(nodes.contains(&id), "{id} in {nodes:?}");
    }
    // Broken: the alert sink's edge, and only it, is red; its events are dead letters, each
    // with the function's answer and the attempts of the default delivery (1 + 5 retries).
    assert_eq!(strings("failing"), [format!("sub:telemetry/fleet-router/0>sink:{base}/flaky")]);
    let letters = seen["letters"].as_array().expect("letters");
    assert!(!letters.is_empty(), "{seen}");
    for letter in letters {
        assert!(letter["reason"].as_str().is_some_and(|r| r.contains("HTTP 500")), "{letter}");
        assert_eq!(letter["attempts"], "6", "{letter}");
    }
    let inspected = &seen["inspected"];
    assert_eq!(inspected["status"], "500", "{inspected}");
    assert_eq!(inspected["attempts"], "6", "{inspected}");
    assert!(
        inspected["destination"].as_str().is_some_and(|d| d.ends_with("/flaky")),
        "{inspected}"
    );
    // Restored and redriven: none left, each redrive delivered what it took and failed none.
    let redrives = strings("redrives");
    assert!(!redrives.is_empty(), "{seen}");
    for redrive in &redrives {
        assert!(redrive.contains(" 0 failed again"), "{redrive}");
    }
    assert!(redrives.iter().any(|r| !r.starts_with("redriven: 0 delivered")), "{redrives:?}");
    assert_eq!(seen["lettersAfter"], "Dead letters (0)");
    // The redriven event's whole path: it came in, went to the alert subscriber, failed every
    // attempt, was dead-lettered, and was delivered by the redrive.
    let path = strings("path").join("\n");
    for stage in
        ["published at telemetry/fleet mqtt.telemetry", "routed at telemetry/fleet-router[0]"]
    {
        assert!(path.contains(stage), "{stage} in\n{path}");
    }
    for stage in [" retrying ", " dead-lettered ", " delivered "] {
        assert!(path.contains(stage), "{stage} in\n{path}");
    }
    let on_path = strings("onPath");
    assert!(
        on_path.contains(&"sub:telemetry/fleet-router/0".to_string())
            && on_path.contains(&"event:telemetry/fleet/telemetry".to_string()),
        "{on_path:?}"
    );
    // The router's live flow says why an event under the limit did not fire the alert.
    let verdict = seen["verdict"].as_str().unwrap_or_default();
    assert!(
        verdict.contains("filtered")
            && verdict.contains("input `overspeed`: `data.speed > 120.0` was false; data.speed = "),
        "{verdict}"
    );
    // Paused, the metrics subscriber's lag grew; resumed, it drained.
    assert!(seen["pausedLag"].as_u64().unwrap_or(0) >= 20, "{seen}");
    assert_eq!(seen["resumedLag"], 0, "{seen}");
    assert!(seen["chartPoints"].as_u64().unwrap_or(0) > 10, "{seen}");
    assert_eq!(seen["latencyDrawn"], true, "{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "no script errors");
    assert!(shots.join("console.png").exists(), "the screenshot");
    // The README's screenshot: the flagship with its alert function down.
    if std::env::var_os("OFE_BLESS").is_some() {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console.png");
        std::fs::copy(shots.join("flagship-broken.png"), docs).expect("docs/console.png");
    }

    // Nothing was lost: every overspeed message reached the alert function with a 200 (some
    // only through the redrive), and every message reached the metrics function.
    let published = sent.load(std::sync::atomic::Ordering::SeqCst);
    let wanted: std::collections::BTreeSet<u64> = (0..published).filter(|n| n % 3 == 0).collect();
    let answered = |r: &Receiver| -> std::collections::BTreeSet<u64> {
        r.on("/flaky")
            .iter()
            .filter(|a| a.status == 200)
            .filter_map(|a| serde_json::from_slice::<serde_json::Value>(&a.body).ok())
            .filter_map(|data| data["kmh"].as_f64())
            .map(|kmh| (kmh - overspeed(0)) as u64)
            .collect()
    };
    let metrics = |r: &Receiver| -> std::collections::BTreeSet<u64> {
        r.on("/metrics")
            .iter()
            .filter_map(|a| serde_json::from_slice::<serde_json::Value>(&a.body).ok())
            .filter_map(|data| data["n"].as_u64())
            .collect()
    };
    receiver
        .wait_for(Duration::from_secs(60), "every overspeed alert and every metric", |r| {
            answered(r).is_superset(&wanted) && metrics(r).len() as u64 >= published
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(ofe_test_chromium, ofe_test_playwright)),
    ignore = "needs OFE_TEST_CHROMIUM and OFE_TEST_PLAYWRIGHT (scripts/test.sh installs them)"
)]
async fn the_console_stays_readable_with_200_triggers() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Four teams' namespaces, fifty Triggers each, every one reading its namespace's webhook.
    let namespaces: Vec<String> = (0..4).map(|_| support::unique_namespace()).collect();
    let mut yaml = String::new();
    for ns in &namespaces {
        yaml += "---\n";
        yaml += &support::webhook_source(ns, "fleet", "telemetry");
        for n in 0..50 {
            yaml += &support::trigger(
                ns,
                &format!("route-{n}"),
                "    all: { eventSource: fleet, event: telemetry }",
                &format!("  - condition: all\n    sink: {{ uri: \"{base}/fn\" }}"),
            );
        }
    }
    let folder = manifests(dir.path(), &yaml);
    let run = Running::start(&folder, &dir.path().join("data")).await;
    let urls: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("http://{}/{ns}/fleet/telemetry", run.webhooks))
        .collect();
    let sender = tokio::spawn(async move {
        for n in 0u64.. {
            let id = format!("e-{n}");
            let headers = [("ce-id", id.as_str()), ("ce-source", "/cars"), ("ce-type", "t")];
            let url = &urls[(n % 4) as usize];
            support::post_event(url, &headers, format!(r#"{{"n":{n}}}"#)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    receiver
        .wait_for(Duration::from_secs(30), "the first deliveries", |r| r.on("/fn").len() >= 50)
        .await;
    let screenshot = screenshots("console").join("scale.png");
    let page = format!("http://{}/console", run.listen);
    let seen = browse("scale.mjs", &[page, screenshot.display().to_string()]).await;
    sender.abort();
    println!("one redraw of 200 Triggers took {} ms in headless Chromium", seen["renderMs"]);
    assert_eq!(seen["subscribers"], 200, "{seen}");
    let mut listed: Vec<String> = serde_json::from_value(seen["namespaces"].clone()).expect("ns");
    listed.sort_unstable();
    let mut wanted = namespaces.clone();
    wanted.sort_unstable();
    assert_eq!(listed, wanted, "the namespace filter lists every team");
    assert!(seen["updates"].as_u64().unwrap_or(0) >= 4, "updated about once a second: {seen}");
    assert_eq!(seen["inNamespace"], 50, "one namespace shows its own: {seen}");
    assert_eq!(seen["otherNamespaces"], 0, "and nothing of the others: {seen}");
    assert_eq!(
        seen["matching"],
        serde_json::json!([format!("sub:{}/route-37/0", listed[1])]),
        "search finds the one Trigger"
    );
    assert_eq!(seen["matchInView"], true, "and brings it into view: {seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "no script errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_refused_outside_loopback_without_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &support::clock("default", None));
    let port = support::free_addr().port();
    let listen: std::net::SocketAddr = format!("0.0.0.0:{port}").parse().expect("addr");
    let local = format!("http://127.0.0.1:{port}");
    let _open = support::KillOnDrop(support::start_ofe(&folder, &dir.path().join("data"), listen));
    support::wait_ready(format!("127.0.0.1:{port}").parse().expect("addr")).await;
    for path in ["/console", "/console/graph"] {
        let response = support::http().get(format!("{local}{path}")).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 403, "{path} outside loopback without a token");
    }
    drop(_open);

    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &support::clock("default", None));
    let port = support::free_addr().port();
    let listen = format!("0.0.0.0:{port}");
    let local = format!("http://127.0.0.1:{port}");
    let child = support::ofe()
        .args(["run", "-f"])
        .arg(&folder)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            &listen,
            "--console-token",
            "console-secret-0c1f",
            "--log-level",
            "error",
        ])
        .args(["--webhook-listen", &support::free_addr().to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let _guarded = support::KillOnDrop(child);
    support::wait_ready(format!("127.0.0.1:{port}").parse().expect("addr")).await;
    let get = |path: String| async move {
        support::http().get(path).send().await.expect("get").status().as_u16()
    };
    assert_eq!(get(format!("{local}/console")).await, 401, "without the token");
    assert_eq!(
        get(format!("{local}/console?token=console-secret-0c1f")).await,
        200,
        "with it in the URL"
    );
    let graph = support::http()
        .get(format!("{local}/console/graph"))
        .bearer_auth("console-secret-0c1f")
        .send()
        .await
        .expect("graph");
    assert_eq!(graph.status().as_u16(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&graph.text().await.expect("body")).expect("JSON");
    assert!(body["nodes"].as_array().is_some_and(|n| !n.is_empty()), "{body}");
}
