//! `ofe replay`: re-deliver a Trigger subscriber's past events from a point in time, follow a
//! replay, list replays, or cancel one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::{Endpoint, JsonText as _, client, runtime};

/// Arguments of `ofe replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The Trigger's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The Trigger whose past events to deliver again.
    #[arg(long, required_unless_present_any = ["list", "cancel"])]
    trigger: Option<String>,
    /// Only this subscriber (its index in `spec.subscribers`); all of them when absent.
    #[arg(long)]
    subscriber: Option<String>,
    /// From the events the bus stored at or after this time (RFC 3339, e.g.
    /// 2026-12-03T10:00:00Z).
    #[arg(long, conflicts_with = "from_start")]
    from: Option<String>,
    /// From the oldest event the bus holds.
    #[arg(long)]
    from_start: bool,
    /// Up to the events stored at or before this time (RFC 3339); now when absent.
    #[arg(long)]
    to: Option<String>,
    /// Follow the replay until it ends, printing its progress; exit 1 unless it is done.
    #[arg(long)]
    wait: bool,
    /// List every replay of the process instead, with its progress.
    #[arg(long, conflicts_with_all = ["trigger", "cancel"])]
    list: bool,
    /// Cancel the replay of this id instead.
    #[arg(long, value_name = "ID", conflicts_with = "trigger")]
    cancel: Option<String>,
    /// Print ofe's answers as JSON.
    #[arg(long)]
    json: bool,
}

/// Entry point of `ofe replay`.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client()?;
        let answer: serde_json::Value = if args.list {
            let url = args.endpoint.url_with("/replays", &[])?;
            args.endpoint.call(client.get(url)).await?.json_text().await?
        } else if let Some(id) = &args.cancel {
            let url = args.endpoint.url_with("/replay/cancel", &[("id", id.clone())])?;
            args.endpoint.call(client.post(url)).await?.json_text().await?
        } else {
            if args.from.is_none() && !args.from_start {
                bail!("say where to start: --from RFC3339 or --from-start");
            }
            let mut query = vec![("namespace", args.namespace.clone())];
            query.extend(args.trigger.clone().map(|t| ("trigger", t)));
            query.extend(args.subscriber.clone().map(|s| ("subscriber", s)));
            query.extend(args.from.clone().map(|f| ("from", f)));
            query.extend(args.to.clone().map(|t| ("to", t)));
            if args.from_start {
                query.push(("from_start", "true".into()));
            }
            let url = args.endpoint.url_with("/replay", &query)?;
            args.endpoint.call(client.post(url)).await?.json_text().await?
        };
        show(&answer, args.json);
        if !args.wait || args.list {
            return Ok(ExitCode::SUCCESS);
        }
        let ids: Vec<String> = runs(&answer).iter().map(|r| text(&r["id"])).collect();
        let mut last = answer;
        loop {
            let mine: Vec<serde_json::Value> =
                runs(&last).into_iter().filter(|r| ids.contains(&text(&r["id"]))).collect();
            if !mine.is_empty() && mine.iter().all(|r| r["state"] != "running") {
                let done = mine.iter().all(|r| r["state"] == "done");
                return Ok(if done { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let url = args.endpoint.url_with("/replays", &[])?;
            let now: serde_json::Value =
                args.endpoint.call(client.get(url)).await?.json_text().await?;
            let now_mine = serde_json::json!({ "replays": runs(&now).into_iter()
                .filter(|r| ids.contains(&text(&r["id"]))).collect::<Vec<_>>() });
            if now_mine["replays"] != serde_json::json!(mine) {
                show(&now_mine, args.json);
            }
            last = now;
        }
    })
}

fn runs(answer: &serde_json::Value) -> Vec<serde_json::Value> {
    answer["replays"].as_array().cloned().unwrap_or_default()
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn show(answer: &serde_json::Value, json: bool) {
    if json {
        println!("{answer}");
        return;
    }
    for run in runs(answer) {
        println!("{}", describe(&run));
    }
}

/// One replay as a line: which, where it is, and its counts.
pub fn describe(run: &serde_json::Value) -> String {
    let from = run["from"].as_str().unwrap_or("the oldest event held");
    let mut line = format!(
        "replay {} of {}/{} subscriber {} from {} to {}: {}, {} read, {} fired, {} delivered, {} dead-lettered",
        text(&run["id"]),
        text(&run["namespace"]),
        text(&run["trigger"]),
        text(&run["subscriber"]),
        from,
        text(&run["to"]),
        text(&run["state"]),
        run["read"],
        run["fired"],
        run["delivered"],
        run["dead_lettered"],
    );
    if let Some(at) = run["position"].as_str() {
        line += &format!(", at {at}");
    }
    if let Some(error) = run["error"].as_str() {
        line += &format!(": {error}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_the_replay_its_state_and_its_counts() {
        let run = serde_json::json!({"id": "r1", "namespace": "fleet", "trigger": "alerts",
            "subscriber": "0", "from": "2026-12-03T10:00:00.000Z", "to": "2026-12-03T11:00:00.000Z",
            "read": 12, "fired": 5, "delivered": 4, "dead_lettered": 1,
            "position": "2026-12-03T10:59:00.000Z", "state": "done", "error": null});
        assert_eq!(
            describe(&run),
            "replay r1 of fleet/alerts subscriber 0 from 2026-12-03T10:00:00.000Z to \
             2026-12-03T11:00:00.000Z: done, 12 read, 5 fired, 4 delivered, 1 dead-lettered, \
             at 2026-12-03T10:59:00.000Z"
        );
    }
}
