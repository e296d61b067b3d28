//! The web console (`/console`) end to end, in headless Chromium: with events flowing through
//! `ofe run`, the page shows the mesh with live non-zero rates, marks the edge of a failing
//! sink red, streams a subscriber's events, pauses a subscriber (its lag grows) and resumes it
//! (it drains), lists a failing subscriber's dead letters and purges them, and dims what a
//! search does not match; and the console is refused outside loopback without the token.
//!
//! The browser test needs OFE_TEST_CHROMIUM (Debian's chromium) and OFE_TEST_PLAYWRIGHT (a
//! folder with playwright-core from npm), which `scripts/services.sh` provides; unset, it is
//! skipped and says so. Its screenshot is kept in `target/console/`.

mod support;

use std::time::Duration;

use support::{Receiver, Running, manifests};

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

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let screenshot = shots.join("mesh.png");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/ui.mjs");
    let page = format!("http://{}/console", run.listen);
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&page)
        .arg(&screenshot)
        .output()
        .await
        .expect("node");
    sender.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script's JSON");
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
    assert_eq!(seen["errors"], serde_json::json!([]), "no script errors");
    assert!(screenshot.exists(), "the screenshot");
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
