//! The vehicle-telemetry example, as the README runs it (smaller): a simulated fleet → its
//! embedded MQTT broker → `ofe run` → the alert and metrics functions. It needs no services.

use std::process::Command;

#[test]
fn the_fleet_demo_delivers_every_alert_and_every_metric() {
    let ofe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ofe"));
    // Cargo builds examples next to the binaries when it builds the tests.
    let demo = ofe.parent().map(|dir| dir.join("examples/vehicle-telemetry")).expect("target dir");
    assert!(
        demo.exists(),
        "{} is missing; build it with `cargo build --example vehicle-telemetry`",
        demo.display()
    );
    let output = Command::new(&demo)
        .args(["--vehicles", "20", "--rate", "5", "--seconds", "4"])
        .arg("--ofe")
        .arg(&ofe)
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the demo reported missing events");
    let line = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` line in the summary"))
    };
    assert_eq!(line("telemetry sent"), 400);
    assert_eq!(line("metrics events"), 400, "every message reached the metrics function");
    assert_eq!(line("alerts received"), line("overspeed sent"), "one alert per overspeed message");
    assert!(line("overspeed sent") > 0, "the run drove over the limit at least once");
    assert_eq!(line("vehicles with gauges"), 20);
    assert!(stdout.contains("t=  1s"), "live progress is printed");
}
