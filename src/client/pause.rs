//! `ofe pause` and `ofe resume`: stop and restart a Trigger's subscribers reading the bus.

use std::process::ExitCode;

use super::{Endpoint, JsonText as _, Subscribers, client, runtime};

/// Arguments of `ofe pause` and `ofe resume`.
#[derive(clap::Args)]
pub struct PauseArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    #[command(flatten)]
    subscribers: Subscribers,
    /// Print ofe's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Entry point of `ofe pause` (`paused`) and `ofe resume`.
pub fn set(args: PauseArgs, paused: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let query = args.subscribers.query();
        let path = if paused { "/pause" } else { "/resume" };
        let request = client()?.post(args.endpoint.url_with(path, &query)?);
        let answer: serde_json::Value = args.endpoint.call(request).await?.json_text().await?;
        if args.json {
            println!("{answer}");
            return Ok(ExitCode::SUCCESS);
        }
        for state in answer["subscribers"].as_array().into_iter().flatten() {
            println!("{}", describe(state));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One subscriber's pause as a line: who, and whether (and why) it reads nothing.
pub fn describe(state: &serde_json::Value) -> String {
    let who = format!(
        "{}/{} subscriber {}",
        state["namespace"].as_str().unwrap_or_default(),
        state["trigger"].as_str().unwrap_or_default(),
        state["subscriber"].as_str().unwrap_or_default(),
    );
    let by_hand = state["since"].as_str().map(|since| format!("by hand since {since}"));
    let by_spec = (state["by_spec"] == true).then(|| "by spec.paused".to_string());
    let why: Vec<String> = by_hand.into_iter().chain(by_spec).collect();
    if why.is_empty() {
        format!("{who}: delivering")
    } else {
        format!("{who}: paused ({}); events wait on the bus", why.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_why_a_subscriber_is_paused() {
        let state = serde_json::json!({"namespace": "fleet", "trigger": "alerts",
            "subscriber": "0", "paused": true, "by_spec": true, "since": "2026-12-03T10:00:00Z"});
        assert_eq!(
            describe(&state),
            "fleet/alerts subscriber 0: paused (by hand since 2026-12-03T10:00:00Z, by \
             spec.paused); events wait on the bus"
        );
        let state = serde_json::json!({"namespace": "fleet", "trigger": "alerts",
            "subscriber": "1", "paused": false, "by_spec": false, "since": null});
        assert_eq!(describe(&state), "fleet/alerts subscriber 1: delivering");
    }
}
