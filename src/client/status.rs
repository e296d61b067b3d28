//! `ofe status`: every EventSource and Trigger with its condition, rates and errors.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use super::{Endpoint, JsonText as _, client, runtime};

/// Arguments of `ofe status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// How long to watch the counters to tell rates.
    #[arg(long, default_value = "1s", value_parser = |t: &str| ofe_crds::duration::parse(t))]
    window: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One row of `ofe status`.
#[derive(Debug, Default, serde::Serialize, PartialEq)]
struct Row {
    kind: String,
    namespace: String,
    name: String,
    ready: String,
    reason: String,
    message: String,
    /// The `Delivering` condition's status (`-` for a resource that delivers nothing itself),
    /// and its reason and message when it is not `True`.
    delivering: String,
    delivering_reason: String,
    delivering_message: String,
    /// Events in per second: received from upstream (EventSource), or firing it (Trigger).
    in_per_second: f64,
    /// Events out per second: published to the bus (EventSource), or delivered (Trigger).
    out_per_second: f64,
    /// Failed publishes, dead letters and drops, since the process started.
    errors: u64,
    /// Retried attempts since the process started.
    retries: u64,
    /// Events waiting on the bus for its subscribers, or `None` when none is reported.
    lag: Option<i64>,
}

/// Entry point of `ofe status`.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client()?;
        let get = |path: &str| args.endpoint.call(client.get(args.endpoint.url(path)));
        let status: serde_json::Value = get("/status").await?.json_text().await?;
        let before = Metrics::parse(&get("/metrics").await?.text().await?);
        tokio::time::sleep(args.window).await;
        let after = Metrics::parse(&get("/metrics").await?.text().await?);
        let rows = rows(&status, &before, &after, args.window.as_secs_f64());
        // Replays are behind the console's access rule: an endpoint that refuses them (no
        // token given) leaves them out of the status, which is still whole.
        let replays = match get("/replays").await {
            Ok(answer) => answer.json_text::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let replays: Vec<serde_json::Value> =
            replays.and_then(|r| r["replays"].as_array().cloned()).unwrap_or_default();
        let pauses = match get("/pauses").await {
            Ok(answer) => answer.json_text::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let paused: Vec<serde_json::Value> = pauses
            .and_then(|p| p["subscribers"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s["paused"] == true)
            .collect();
        if args.json {
            let answer =
                serde_json::json!({ "resources": rows, "replays": replays, "paused": paused });
            println!("{answer}");
        } else {
            print!("{}", table(&rows));
            if !paused.is_empty() {
                println!("\nPAUSED");
                for state in &paused {
                    println!("{}", super::pause::describe(state));
                }
            }
            if !replays.is_empty() {
                println!("\nREPLAYS");
                for run in &replays {
                    println!("{}", super::replay::describe(run));
                }
            }
        }
        let healthy = rows.iter().all(|r| r.ready == "True" && r.delivering != "False");
        Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(3) })
    })
}

/// Counter and gauge samples by name, with their labels.
#[derive(Default)]
struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    /// Reads the text exposition format (what `/metrics` serves).
    fn parse(text: &str) -> Self {
        let samples = text.lines().filter_map(crate::openmetrics::sample);
        Self(samples.map(|(name, labels, value)| (name.to_string(), labels, value)).collect())
    }

    /// The sum of `name` over the series whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let matching = self.0.iter().filter(|(n, labels, _)| {
            n == name && want.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
        });
        matching.map(|(.., v)| *v).reduce(|a, b| a + b)
    }
}

fn rows(status: &serde_json::Value, before: &Metrics, after: &Metrics, seconds: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for resource in status["resources"].as_array().into_iter().flatten() {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let (kind, namespace, name) =
            (s(&resource["kind"]), s(&resource["namespace"]), s(&resource["name"]));
        let ready = resource["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        let delivering = resource["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Delivering"))
            .cloned()
            .unwrap_or_default();
        let mut row = Row {
            ready: ready.get("status").map_or_else(|| "Unknown".into(), s),
            reason: ready.get("reason").map(s).unwrap_or_default(),
            message: ready.get("message").map(s).unwrap_or_default(),
            delivering: delivering.get("status").map_or_else(|| "-".into(), s),
            delivering_reason: delivering.get("reason").map(s).unwrap_or_default(),
            delivering_message: delivering.get("message").map(s).unwrap_or_default(),
            ..Row::default()
        };
        let rate = |name: &str, labels: &[(&str, &str)]| {
            let delta =
                after.sum(name, labels).unwrap_or(0.0) - before.sum(name, labels).unwrap_or(0.0);
            (delta / seconds.max(0.001)).max(0.0)
        };
        let total =
            |name: &str, labels: &[(&str, &str)]| after.sum(name, labels).unwrap_or(0.0) as u64;
        // An EventSource's own sink is counted as the subscriber `eventsource/<name>`.
        let sink = format!("eventsource/{name}");
        let subscriber: &str = if kind == "EventSource" { &sink } else { &name };
        let trigger = [("namespace", namespace.as_str()), ("trigger", subscriber)];
        let delivery_errors = total("ofe_trigger_events_dead_lettered_total", &trigger)
            + total("ofe_trigger_events_dropped_total", &trigger);
        row.retries = total("ofe_trigger_delivery_retries_total", &trigger);
        row.lag = after.sum("ofe_trigger_bus_lag", &trigger).map(|v| v as i64);
        if kind == "EventSource" {
            let source = [("namespace", namespace.as_str()), ("eventsource", name.as_str())];
            row.in_per_second = rate("ofe_eventsource_events_received_total", &source);
            row.out_per_second = rate("ofe_eventsource_events_published_total", &source);
            row.errors = total("ofe_eventsource_publish_errors_total", &source) + delivery_errors;
        } else {
            row.in_per_second = rate("ofe_trigger_events_received_total", &trigger);
            row.out_per_second = rate("ofe_trigger_events_delivered_total", &trigger);
            row.errors = delivery_errors;
        }
        (row.kind, row.namespace, row.name) = (kind, namespace, name);
        rows.push(row);
    }
    rows
}

/// The rows as an aligned table, with the reason and message of what is not ready, or not
/// delivering, below.
fn table(rows: &[Row]) -> String {
    let header = [
        "KIND",
        "NAMESPACE",
        "NAME",
        "READY",
        "DELIVERING",
        "IN/S",
        "OUT/S",
        "ERRORS",
        "RETRIES",
        "LAG",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        cells.push(vec![
            r.kind.clone(),
            r.namespace.clone(),
            r.name.clone(),
            r.ready.clone(),
            r.delivering.clone(),
            format!("{:.1}", r.in_per_second),
            format!("{:.1}", r.out_per_second),
            r.errors.to_string(),
            r.retries.to_string(),
            r.lag.map_or_else(|| "-".into(), |l| l.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows.iter().filter(|r| r.ready != "True") {
        out.push_str(&format!(
            "{} {}/{}: {} {}\n",
            r.kind, r.namespace, r.name, r.reason, r.message
        ));
    }
    for r in rows.iter().filter(|r| r.delivering == "False") {
        out.push_str(&format!(
            "{} {}/{}: {} {}\n",
            r.kind, r.namespace, r.name, r.delivering_reason, r.delivering_message
        ));
    }
    if rows.is_empty() {
        out.push_str("(nothing runs)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_read_with_its_labels() {
        let text = "# HELP x\nofe_trigger_events_delivered_total{namespace=\"default\",trigger=\"t\",subscriber=\"0\"} 7\n\
                    ofe_trigger_events_delivered_total{namespace=\"default\",trigger=\"t\",subscriber=\"1\"} 3\n\
                    ofe_trigger_bus_lag{namespace=\"a \\\"b\\\"\",trigger=\"t\",subscriber=\"0\"} 2\n";
        let m = Metrics::parse(text);
        let t = [("namespace", "default"), ("trigger", "t")];
        assert_eq!(m.sum("ofe_trigger_events_delivered_total", &t), Some(10.0));
        assert_eq!(m.sum("ofe_trigger_bus_lag", &[("namespace", "a \"b\"")]), Some(2.0));
        assert_eq!(m.sum("ofe_trigger_bus_lag", &t), None);
    }

    #[test]
    fn rows_take_rates_over_the_window_and_errors_in_total() {
        let status = serde_json::json!({"resources": [
            {"kind": "Trigger", "namespace": "default", "name": "t", "conditions": [
                {"type": "Ready", "status": "False", "reason": "SinkNotReady", "message": "m"}]},
        ]});
        let series = |delivered: u32, dead: u32| {
            Metrics::parse(&format!(
                "ofe_trigger_events_delivered_total{{namespace=\"default\",trigger=\"t\",subscriber=\"0\"}} {delivered}\n\
                 ofe_trigger_events_dead_lettered_total{{namespace=\"default\",trigger=\"t\",subscriber=\"0\"}} {dead}\n"
            ))
        };
        let rows = rows(&status, &series(10, 1), &series(30, 2), 2.0);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.out_per_second, row.errors, row.ready.as_str()), (10.0, 2, "False"));
        let text = table(&rows);
        assert!(text.contains("Trigger default/t: SinkNotReady m"), "{text}");
    }
}
