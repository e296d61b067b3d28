//! The vehicle-telemetry example, as the README runs it (smaller): a simulated fleet → its
//! embedded MQTT broker → `ofe run` → the alert and metrics functions. It needs no services.

mod support;

#[test]
fn the_fleet_demo_delivers_every_alert_and_every_metric() {
    let stdout = support::run_example(
        "vehicle-telemetry",
        &["--vehicles", "20", "--rate", "5", "--seconds", "4"],
    );
    let line = |label: &str| support::summary(&stdout, label);
    assert_eq!(line("telemetry sent"), 400);
    assert_eq!(line("metrics events"), 400, "every message reached the metrics function");
    assert_eq!(line("alerts received"), line("overspeed sent"), "one alert per overspeed message");
    assert!(line("overspeed sent") > 0, "the run drove over the limit at least once");
    assert_eq!(line("vehicles with gauges"), 20);
    assert!(stdout.contains("t=  1s"), "live progress is printed");
    assert!(
        stdout.lines().any(|l| l.starts_with("console  open http://127.0.0.1:")
            && l.ends_with("/console in a browser while the demo runs")),
        "the console's URL is printed for a new user: {stdout}"
    );
    // The alert function counts only alerts the Trigger's transform shaped ({vehicle, kmh,
    // at}, typed as overspeed), and says so of any other.
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    assert!(stdout.contains("ALERT    v"), "an alert is printed from the shaped data: {stdout}");
}
