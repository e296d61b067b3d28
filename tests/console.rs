//! The operator's tools against a running `ofe run`: `ofe send` publishes as an EventSource
//! or on a topic, `ofe tail` shows each step of the events' paths, `ofe status` shows rates,
//! errors and lag; the console refuses strangers.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Receiver, free_addr, get, manifests, ofe, start_ofe, wait_ready};

/// `clock` fires hourly, so only what the test sends flows. Trigger `route` sends fast ticks
/// to `BASE/fn` and to topic `audit`; Trigger `audit` sends the topic to `BASE/audit`.
fn yaml(base: &str) -> String {
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: clock, namespace: default }}\n\
         spec:\n  eventBus: default\n  cron:\n    tick: {{ schedule: \"@every 1h\" }}\n\
         ---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: route, namespace: default }}\n\
         spec:\n  eventBus: default\n  inputs:\n    fast:\n      eventSource: clock\n      event: tick\n\
         \x20     filters:\n        - cel: \"data.speed > 120.0\"\n\
         \x20 subscribers:\n  - condition: fast\n    sink: {{ uri: \"{base}/fn\" }}\n\
         \x20 - condition: fast\n    topic: audit\n\
         ---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: audit, namespace: default }}\n\
         spec:\n  eventBus: default\n  inputs:\n    a: {{ topic: audit }}\n\
         \x20 subscribers:\n  - condition: a\n    sink: {{ uri: \"{base}/audit\" }}\n"
    )
}

fn tool(listen: SocketAddr, args: &[&str]) -> Output {
    ofe()
        .args(args)
        .args(["--endpoint", &format!("http://{listen}")])
        .env_remove("OFE_CONSOLE_TOKEN")
        .output()
        .expect("run the ofe tool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts `ofe tail` with `args` and returns once it is connected.
fn start_tail(listen: SocketAddr, args: &[&str]) -> (Child, std::process::ChildStdout) {
    let mut child = ofe()
        .arg("tail")
        .args(args)
        .args(["--endpoint", &format!("http://{listen}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ofe tail");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("tail says it started");
    assert!(line.starts_with("tailing"), "ofe tail did not connect: {line}");
    let stdout = child.stdout.take().expect("stdout");
    (child, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_tail_and_status_follow_events_through_a_running_ofe() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let _process = support::KillOnDrop(start_ofe(
        &manifests(dir.path(), &yaml(&base)),
        &dir.path().join("d"),
        listen,
    ));
    wait_ready(listen).await;

    let (mut tail, stdout) = start_tail(listen, &["--trigger", "route", "--json", "--count", "6"]);
    let steps = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
    });

    // A fast tick fires both subscribers; a slow one is filtered out for both.
    let fast = tool(
        listen,
        &["send", "--eventsource", "clock", "--id", "fast-1", "--data", r#"{"speed":150}"#],
    );
    assert!(fast.status.success(), "{}", text(&fast.stderr));
    let said = text(&fast.stdout);
    assert!(
        said.starts_with(
            "sent fast-1 to ofe.event.default.clock.tick on the embedded bus, sequence "
        ),
        "{said}"
    );
    let slow = tool(
        listen,
        &["send", "--eventsource", "clock", "--id", "slow-1", "--data", r#"{"speed":50}"#],
    );
    assert!(slow.status.success(), "{}", text(&slow.stderr));

    receiver
        .wait_for(Duration::from_secs(10), "the fast tick at the function", |r| {
            !r.on("/fn").is_empty()
        })
        .await;
    receiver
        .wait_for(Duration::from_secs(10), "the fast tick via the topic", |r| {
            !r.on("/audit").is_empty()
        })
        .await;
    let got = &receiver.on("/fn")[0];
    assert_eq!(got.header("ce-id"), "fast-1");
    assert_eq!(got.header("ce-type"), "dev.ofe.test");
    assert_eq!(got.header("ce-ofeeventsource"), "clock", "stamped as the EventSource's own");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&got.body).expect("JSON")["speed"], 150);

    let status = tail.wait().expect("tail ends after --count");
    assert!(status.success());
    let seen: BTreeSet<(String, String, String)> = steps
        .join()
        .expect("tail output")
        .iter()
        .map(|line| {
            let step: serde_json::Value = serde_json::from_str(line).expect("a JSON step");
            assert_eq!(
                (step["kind"].as_str(), step["name"].as_str()),
                (Some("Trigger"), Some("route"))
            );
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (s(&step["stage"]), s(&step["part"]), s(&step["event"]["id"]))
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = [
        ("routed", "0", "fast-1"),
        ("routed", "1", "fast-1"),
        ("delivered", "0", "fast-1"),
        ("delivered", "1", "fast-1"),
        ("filtered", "0", "slow-1"),
        ("filtered", "1", "slow-1"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want);

    // On a topic: straight to the Trigger that reads it.
    let audit = tool(listen, &["send", "--topic", "audit", "--id", "audit-1", "--json"]);
    assert!(audit.status.success(), "{}", text(&audit.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("JSON answer");
    assert_eq!(answer["published"][0]["subject"], "ofe.topic.default.audit");
    receiver
        .wait_for(Duration::from_secs(10), "the topic event", |r| {
            r.on("/audit").iter().any(|g| g.header("ce-id") == "audit-1")
        })
        .await;

    // What does not run is named, with what does.
    let wrong = tool(listen, &["send", "--eventsource", "nope"]);
    assert!(!wrong.status.success());
    let error = text(&wrong.stderr);
    assert!(
        error.contains("no EventSource `nope` runs here")
            && error.contains("eventsource clock event tick"),
        "{error}"
    );

    // The bus lag of each subscriber is sampled into /metrics.
    let start = Instant::now();
    while !get(&format!("http://{listen}/metrics")).await.contains("ofe_trigger_bus_lag{") {
        assert!(start.elapsed() < Duration::from_secs(15), "no ofe_trigger_bus_lag series");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let status = tool(listen, &["status", "--json", "--window", "200ms"]);
    assert!(status.status.success(), "{}{}", text(&status.stdout), text(&status.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON status");
    let row = |name: &str| {
        rows["resources"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .expect(name)
    };
    assert_eq!(row("clock")["ready"], "True");
    assert_eq!(row("route")["ready"], "True");
    assert_eq!(row("route")["errors"], 0);
    assert_eq!(row("route")["lag"], 0, "everything was delivered");
    let table = tool(listen, &["status"]);
    let table = text(&table.stdout);
    assert!(
        table.starts_with("KIND") && table.contains("Trigger      default    route"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_the_token_when_one_is_set_and_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = manifests(dir.path(), &yaml("http://127.0.0.1:9"));
    let listen = free_addr();
    let start = |listen: String, token: Option<&str>| {
        let mut command = ofe();
        command
            .args(["run", "-f"])
            .arg(&files)
            .arg("--data-dir")
            .arg(dir.path().join(format!("d{}", listen.len())))
            .args(["--listen", &listen, "--log-level", "error"])
            .args(["--webhook-listen", &free_addr().to_string()])
            .env_remove("OFE_CONSOLE_TOKEN")
            .stdout(Stdio::null());
        if let Some(token) = token {
            command.args(["--console-token", token]);
        }
        command.spawn().expect("spawn ofe run")
    };
    let mut with_token = support::KillOnDrop(start(listen.to_string(), Some("s3cret")));
    wait_ready(listen).await;
    let refused = tool(listen, &["send", "--eventsource", "clock"]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("401"), "{}", text(&refused.stderr));
    let let_in = ofe()
        .args(["send", "--eventsource", "clock", "--token", "s3cret"])
        .args(["--endpoint", &format!("http://{listen}")])
        .output()
        .expect("ofe send");
    assert!(let_in.status.success(), "{}", text(&let_in.stderr));
    let bad_stage = ofe()
        .args(["tail", "--stage", "delivred", "--token", "s3cret"])
        .args(["--endpoint", &format!("http://{listen}")])
        .output()
        .expect("ofe tail");
    assert!(
        text(&bad_stage.stderr).contains("unknown stage `delivred`"),
        "{}",
        text(&bad_stage.stderr)
    );
    drop(with_token.0.kill());

    // Listening on every address without a token: the console is off, the rest is served.
    let port = free_addr().port();
    let _open = support::KillOnDrop(start(format!("0.0.0.0:{port}"), None));
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(local).await;
    let off = tool(local, &["send", "--eventsource", "clock"]);
    assert!(
        text(&off.stderr).contains("403") && text(&off.stderr).contains("--console-token"),
        "{}",
        text(&off.stderr)
    );
    assert!(get(&format!("http://{local}/metrics")).await.contains("ofe_"));
}
