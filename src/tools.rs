//! The operator's tools, clients of a running ofe's endpoint (`ofe run` or `ofe operator`):
//! - `ofe send` publishes a test CloudEvent as an EventSource's event or on a topic;
//! - `ofe tail` prints each step of the events' paths as they flow;
//! - `ofe status` shows every EventSource and Trigger with its condition, rates and errors.
//!
//! Each prints lines for a terminal, or JSON with `--json` for scripts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cloudevents::{AttributesReader as _, EventBuilder as _, EventBuilderV10};

/// Where the running ofe is, and how to be let in.
#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The running ofe's endpoint (its `--listen`).
    #[arg(long, default_value = "http://127.0.0.1:9464", env = "OFE_ENDPOINT")]
    endpoint: String,
    /// The console token the process was started with (`--console-token`).
    #[arg(long, env = "OFE_CONSOLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Endpoint {
    fn url(&self, path: &str) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.contains("://") { format!("{base}{path}") } else { format!("http://{base}{path}") }
    }

    fn url_with(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.url(path))
            .with_context(|| format!("`{}` is not a URL (--endpoint)", self.endpoint))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn request(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The answer's body, or an error with what the endpoint said.
    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = self
            .request(request)
            .send()
            .await
            .with_context(|| format!("cannot reach ofe at {} (--endpoint)", self.endpoint))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            bail!("ofe at {} answered {status}: {}", self.endpoint, text.trim());
        }
        Ok(response)
    }
}

/// Arguments of `ofe send`.
#[derive(clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Publish as this EventSource's event.
    #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
    eventsource: Option<String>,
    /// The EventSource's event (needed when it has several).
    #[arg(long, requires = "eventsource")]
    event: Option<String>,
    /// Publish on this topic instead.
    #[arg(long)]
    topic: Option<String>,
    /// Namespace of the EventSource or topic.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The event's `type`.
    #[arg(long = "type", default_value = "dev.ofe.test")]
    kind: String,
    /// The event's `source`.
    #[arg(long, default_value = "ofe-send")]
    source: String,
    /// The event's `id` (a new UUID when absent). The bus drops an id it has seen from the
    /// same source within its duplicate window.
    #[arg(long)]
    id: Option<String>,
    /// The event's `subject`.
    #[arg(long)]
    subject: Option<String>,
    /// The data: JSON (sent as `application/json`) or any text; `@FILE` reads a file.
    #[arg(long, default_value = "{}")]
    data: String,
    /// An extension attribute, `name=value`; repeatable.
    #[arg(long = "ext", value_parser = parse_extension)]
    extensions: Vec<(String, String)>,
    /// Print ofe's answer as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_extension(text: &str) -> Result<(String, String), String> {
    let (name, value) =
        text.split_once('=').ok_or_else(|| format!("`{text}`: write it as name=value"))?;
    let valid = !name.is_empty()
        && name.len() <= 20
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(format!(
            "`{name}`: CloudEvents extension names are 1 to 20 lower-case letters or digits"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

impl SendArgs {
    fn event(&self) -> anyhow::Result<cloudevents::Event> {
        let data = match self.data.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --data file {path}"))?,
            None => self.data.clone(),
        };
        let id = self.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut builder = EventBuilderV10::new()
            .id(id)
            .ty(self.kind.clone())
            .source(self.source.clone())
            .time(chrono::Utc::now());
        if let Some(subject) = &self.subject {
            builder = builder.subject(subject.clone());
        }
        builder = match serde_json::from_str::<serde_json::Value>(&data) {
            Ok(json) => builder.data("application/json", json),
            Err(_) => builder.data("text/plain", data),
        };
        for (name, value) in &self.extensions {
            builder = builder.extension(name, value.clone());
        }
        builder.build().map_err(|e| anyhow::anyhow!("cannot build the event: {e}"))
    }
}

/// Entry point of `ofe send`.
pub fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let event = args.event()?;
    runtime()?.block_on(async {
        let mut query = vec![("namespace", args.namespace.clone())];
        if let Some(es) = &args.eventsource {
            query.push(("eventsource", es.clone()));
        }
        if let Some(event) = &args.event {
            query.push(("event", event.clone()));
        }
        if let Some(topic) = &args.topic {
            query.push(("topic", topic.clone()));
        }
        let body = serde_json::to_vec(&event)?;
        let request = client()?
            .post(args.endpoint.url_with("/send", &query)?)
            .header("content-type", "application/cloudevents+json")
            .body(body);
        let answer: serde_json::Value = args.endpoint.call(request).await?.json_text().await?;
        if args.json {
            println!("{answer}");
            return Ok(ExitCode::SUCCESS);
        }
        for stored in answer["published"].as_array().into_iter().flatten() {
            let duplicate = if stored["duplicate"] == true {
                " (a duplicate: the bus already had this id from this source)"
            } else {
                ""
            };
            println!(
                "sent {} to {} on the {} bus, sequence {}{duplicate}",
                event.id(),
                stored["subject"].as_str().unwrap_or_default(),
                stored["bus"].as_str().unwrap_or_default(),
                stored["sequence"],
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Arguments of `ofe tail`.
#[derive(clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Only this Trigger's steps.
    #[arg(long, conflicts_with = "source")]
    trigger: Option<String>,
    /// Only this EventSource's steps (its events, and its own sink).
    #[arg(long)]
    source: Option<String>,
    /// Only this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Only these stages: published, routed, filtered, delivered, retrying, dead-lettered,
    /// dropped (comma-separated).
    #[arg(long)]
    stage: Option<String>,
    /// Stop after this many steps.
    #[arg(long)]
    count: Option<u64>,
    /// Print each step as a JSON line, with the whole event.
    #[arg(long)]
    json: bool,
}

/// Entry point of `ofe tail`.
pub fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut query = Vec::new();
        for (name, value) in [
            ("trigger", &args.trigger),
            ("source", &args.source),
            ("namespace", &args.namespace),
            ("stage", &args.stage),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        let request = client()?.get(args.endpoint.url_with("/tail", &query)?);
        let mut response = args.endpoint.call(request).await?;
        eprintln!("tailing {} (Ctrl-C to stop)", args.endpoint.url("/tail"));
        let (mut pending, mut seen) = (Vec::new(), 0u64);
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = response.chunk().await.context("the stream from ofe broke")? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim();
                if line.is_empty() {
                    continue; // a heartbeat
                }
                let text = if args.json { line.to_string() } else { human_step(line) };
                if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS); // the reader went away (`| head`)
                }
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        bail!("ofe closed the stream (it stopped?)")
    })
}

/// One step, for a terminal: time, stage, where, the event, and the detail.
fn human_step(line: &str) -> String {
    let Ok(step) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    if let Some(n) = step.get("skipped") {
        return format!("... {n} steps skipped: this reader fell behind");
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let at = s(&step["at"]);
    let time = at.get(11..23).unwrap_or(&at);
    let event = &step["event"];
    let detail = step.get("detail").map(|d| format!("  {}", s(d))).unwrap_or_default();
    format!(
        "{time} {:<13} {} {}/{} [{}]  id={} type={} source={}{detail}",
        s(&step["stage"]),
        s(&step["kind"]),
        s(&step["namespace"]),
        s(&step["name"]),
        s(&step["part"]),
        s(&event["id"]),
        s(&event["type"]),
        s(&event["source"]),
    )
}

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
        if args.json {
            println!("{}", serde_json::json!({ "resources": rows }));
        } else {
            print!("{}", table(&rows));
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
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = match line.rsplit_once(' ') {
                Some((series, value)) => (series, value.parse::<f64>().unwrap_or(0.0)),
                None => continue,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Self(samples)
    }

    /// The sum of `name` over the series whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let matching = self.0.iter().filter(|(n, labels, _)| {
            n == name && want.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
        });
        matching.map(|(.., v)| *v).reduce(|a, b| a + b)
    }
}

/// `a="x",b="y"` into a map; values are unescaped.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")
}

/// Reads a JSON answer (reqwest's own `json` is a feature this build leaves out).
trait JsonText {
    async fn json_text<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<T>;
}

impl JsonText for reqwest::Response {
    async fn json_text<T: serde::de::DeserializeOwned>(self) -> anyhow::Result<T> {
        let text = self.text().await.context("the answer broke off")?;
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
    }
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

    #[test]
    fn extensions_must_be_valid_names() {
        assert_eq!(parse_extension("region=eu"), Ok(("region".into(), "eu".into())));
        assert!(parse_extension("Region=eu").is_err());
        assert!(parse_extension("noequals").is_err());
    }
}
