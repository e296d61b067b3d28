//! `ofe tail`: prints each step of the events' paths as they flow.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::{Endpoint, client, runtime};

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
