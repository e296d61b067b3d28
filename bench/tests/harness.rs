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
    command.args(["--events", "300", "--latency-seconds", "1", "--json", "--ofe"]).arg(&ofe);
    let nats = std::env::var("OFE_TEST_NATS").ok();
    match &nats {
        Some(url) => {
            command.args(["--nats", url]);
        }
        None => eprintln!("W3 on JetStream skipped: OFE_TEST_NATS is not set"),
    }
    let output = command.output().expect("run ofe-bench");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let rows = report["rows"].as_array().expect("rows");
    let mut workloads: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
    workloads.dedup();
    assert_eq!(workloads, ["W1", "W5", "W2", "W4", "W3"]);
    for row in rows {
        assert!(row["figure"].as_f64().is_some_and(|x| x > 0.0), "figure of {row}");
        if row["baseline_name"].as_str().is_some_and(|b| b.contains("needs --nats")) {
            assert!(nats.is_none(), "a baseline is missing although NATS is given: {row}");
            continue;
        }
        assert!(row["baseline"].as_f64().is_some_and(|x| x > 0.0), "baseline of {row}");
        assert!(row["ratio"].is_number(), "{row}");
    }
    // Durable end to end and the bus API on the embedded bus; with NATS, both on JetStream.
    let w3 = rows.iter().filter(|r| r["workload"] == "W3").count();
    assert_eq!(w3, if nats.is_some() { 4 } else { 2 });
    let w5 = rows.iter().filter(|r| r["workload"] == "W5").count();
    assert_eq!(w5, 6, "p50, p99 and p99.9 at two rates");
}
