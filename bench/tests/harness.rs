//! The harness runs end to end and reports every workload: a small run (a few hundred events,
//! 1 s latency runs) through a debug build. What it measures is not checked here (tests stay
//! free of timing); that every row is there, with a positive figure and baseline, is.

use std::process::Command;

#[test]
fn every_workload_reports_a_figure_and_its_baseline() {
    let ofe = std::path::Path::new(env!("CARGO_BIN_EXE_ofe-bench")).with_file_name("ofe");
    if !ofe.exists() {
        // The root package's tests build `ofe`; a lone `cargo test -p ofe-bench` does not, so
        // build it here rather than skip.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-p", "ofe", "--bin", "ofe"])
            .status()
            .expect("run cargo build -p ofe");
        assert!(built.success() && ofe.exists(), "cannot build {}", ofe.display());
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_ofe-bench"));
    let charts = tempfile::tempdir().expect("tempdir");
    command.args(["--events", "300", "--latency-seconds", "1", "--json", "--ofe"]).arg(&ofe);
    // The scale run, scaled down to what a debug build does in seconds.
    command.args(["--scale-triggers", "200", "--scale-keys", "1000"]);
    command.arg("--plot").arg(charts.path());
    let nats = std::env::var("OFE_TEST_NATS").ok();
    match &nats {
        Some(url) => {
            command.args(["--nats", url]);
        }
        None => eprintln!("W3 on JetStream skipped: OFE_TEST_NATS is not set"),
    }
    // nginx is the second baseline; the services script installs it and names it.
    let nginx = std::env::var("OFE_TEST_NGINX").ok();
    match &nginx {
        Some(path) => {
            command.args(["--nginx", path]);
        }
        None => eprintln!("the nginx baseline is checked only when OFE_TEST_NGINX is set"),
    }
    // The peer, Argo Events, on a NATS server of its own: the services script builds Argo and
    // names both.
    let argo = std::env::var("OFE_TEST_ARGO").ok().zip(std::env::var("OFE_TEST_NATS_SERVER").ok());
    match &argo {
        Some((argo, nats_server)) => {
            command.args(["--peer", "--peer-events", "300", "--argo", argo]);
            command.args(["--nats-server", nats_server]);
        }
        None => eprintln!(
            "the peer (Argo Events) is checked only when OFE_TEST_ARGO and OFE_TEST_NATS_SERVER are set"
        ),
    }
    let output = command.output().expect("run ofe-bench");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let rows = report["rows"].as_array().expect("rows");
    let skipped: Vec<&str> =
        report["skipped"].as_array().expect("skipped").iter().filter_map(|s| s.as_str()).collect();
    assert!(report["connection_errors"].is_array(), "connection errors are reported: {report}");
    let mut workloads: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
    workloads.sort_unstable();
    workloads.dedup();
    let expected: &[&str] = if argo.is_some() {
        &["B", "C", "P", "S", "W1", "W2", "W3", "W4", "W5"]
    } else {
        &["B", "C", "S", "W1", "W2", "W3", "W4", "W5"]
    };
    assert_eq!(workloads, expected);
    if argo.is_some() {
        // Throughput, CPU per event, and three percentiles at Argo's half-load rate.
        let peer: Vec<&serde_json::Value> = rows.iter().filter(|r| r["workload"] == "P").collect();
        assert_eq!(peer.len(), 5, "peer rows: {peer:?}");
        assert!(
            peer.iter()
                .all(|r| r["baseline_name"].as_str().is_some_and(|b| b.starts_with("Argo Events")))
        );
    }
    for row in rows {
        assert!(row["figure"].as_f64().is_some_and(|x| x > 0.0), "figure of {row}");
        if row["baseline_name"].as_str().is_some_and(|b| b.contains("needs --nats")) {
            assert!(nats.is_none(), "a baseline is missing although NATS is given: {row}");
            continue;
        }
        assert!(row["baseline"].as_f64().is_some_and(|x| x > 0.0), "baseline of {row}");
        assert!(row["ratio"].is_number(), "{row}");
    }
    let baselines = if nginx.is_some() {
        let proxied = |w: &str| {
            rows.iter()
                .filter(|r| r["workload"] == w && r["baseline_name"] == "nginx proxy")
                .count()
        };
        // W1's rate and CPU; the durable buses end to end.
        // The rate, and the CPU per event unless nginx's CPU time in this short run was below
        // the clock's resolution (then there is nothing to compare with, and no row).
        assert!((1..=2).contains(&proxied("W1")), "W1 against nginx: {rows:?}");
        assert_eq!(proxied("W3"), if nats.is_some() { 2 } else { 1 });
        2
    } else {
        let nginx_found = !skipped.iter().any(|s| s.contains("nginx"));
        if nginx_found { 2 } else { 1 }
    };
    // Scale: Triggers (rate, start-up, memory), join keys (rate, memory), and 64 KiB events
    // against each baseline.
    let scale = rows.iter().filter(|r| r["workload"] == "S").count();
    assert_eq!(scale, 5 + baselines, "scale rows: {rows:?}");
    // Durable end to end against each baseline, and the bus API; on the embedded bus, and
    // with NATS on JetStream too.
    let w3 = rows.iter().filter(|r| r["workload"] == "W3").count();
    assert_eq!(w3, if nats.is_some() { 2 * baselines + 2 } else { baselines + 1 });
    // p50, p99 and p99.9 against each baseline: on the memory bus at 1k/s and 25, 50 and 75%
    // of W1; on each durable bus at half of its rate.
    let buses = if nats.is_some() { 3 } else { 2 };
    let w5 = rows.iter().filter(|r| r["workload"] == "W5").count();
    assert_eq!(w5, 3 * baselines * (4 + buses - 1), "{rows:?}");
    // Where ofe's time went, by stage, in the latency runs on the memory bus.
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|s| s["run"].as_str().is_some_and(|r| r.starts_with("memory bus at 1k")))
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(
        stages,
        ["client_wait", "ingest", "bus_to_router", "route", "queue_wait", "deliver"]
    );
    for chart in ["throughput.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(charts.path().join(chart)).expect("the chart is written");
        assert!(svg.starts_with("<svg") && svg.contains("ofe"), "{chart}: {svg:.200}");
    }
    let goals: Vec<&str> = rows.iter().filter_map(|r| r["goal"].as_str()).collect();
    for goal in ["added p99 ≤ 1 ms at 50%", "added p99.9 ≤ 5 ms at 50%", "≤ 1.2× the forwarder's"]
    {
        assert!(goals.contains(&goal), "the goal `{goal}` is checked: {goals:?}");
    }
}
