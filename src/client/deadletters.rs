//! `ofe deadletters list|show|redrive|purge`: the events a Trigger's subscribers kept after
//! they failed for good.

use std::process::ExitCode;

use anyhow::bail;

use super::{Endpoint, JsonText as _, Subscribers, client, runtime};

/// What `ofe deadletters` does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// One line per letter: the event, when and why it failed.
    List,
    /// The letters of one event (`--id`), whole, with their `ofeerror*` extensions.
    Show,
    /// Deliver the letters again through the subscriber's delivery; each delivered one
    /// leaves the store, each that fails again stays.
    Redrive,
    /// Remove the letters for good.
    Purge,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Self::List => "/deadletters/list",
            Self::Show => "/deadletters/show",
            Self::Redrive => "/deadletters/redrive",
            Self::Purge => "/deadletters/purge",
        }
    }
}

/// Arguments of `ofe deadletters`.
#[derive(clap::Args)]
pub struct DeadLettersArgs {
    /// What to do.
    action: Action,
    #[command(flatten)]
    endpoint: Endpoint,
    #[command(flatten)]
    subscribers: Subscribers,
    /// The letters of this event id.
    #[arg(long, conflicts_with = "all")]
    id: Option<String>,
    /// Every letter (redrive, purge).
    #[arg(long)]
    all: bool,
    /// Print ofe's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Entry point of `ofe deadletters`.
pub fn deadletters(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Show if args.id.is_none() => bail!("show needs --id ID: the event to show"),
        Action::Redrive | Action::Purge if args.id.is_none() && !args.all => {
            bail!("say which letters: --id ID for one event, or --all for every one")
        }
        _ => {}
    }
    runtime()?.block_on(async {
        let mut query = args.subscribers.query();
        if let Some(id) = &args.id {
            query.push(("id", id.clone()));
        }
        if args.all {
            query.push(("all", "true".into()));
        }
        let url = args.endpoint.url_with(args.action.path(), &query)?;
        let request = match args.action {
            Action::List | Action::Show => client()?.get(url),
            Action::Redrive | Action::Purge => client()?.post(url),
        };
        let answer: serde_json::Value = args.endpoint.call(request).await?.json_text().await?;
        if args.json {
            println!("{answer}");
        } else {
            print!("{}", describe(args.action, &answer));
        }
        // A redrive that left letters failing is not a success for a script.
        let failed = answer["subscribers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["result"]["failed"].as_array().is_some_and(|f| !f.is_empty()));
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    })
}

/// The answer as lines for a terminal, a block per subscriber.
fn describe(action: Action, answer: &serde_json::Value) -> String {
    let mut out = String::new();
    let str = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    for sub in answer["subscribers"].as_array().into_iter().flatten() {
        let who = format!(
            "{}/{} subscriber {}",
            str(&sub["namespace"]),
            str(&sub["trigger"]),
            str(&sub["subscriber"])
        );
        let result = &sub["result"];
        match action {
            Action::List => {
                let letters = result.as_array().cloned().unwrap_or_default();
                out += &format!("{who}: {} dead letter{}\n", letters.len(), plural(letters.len()));
                for l in &letters {
                    out += &format!(
                        "  {} id={} type={} source={}\n    failed at {} on {}: {} (status {}, {} attempts)\n",
                        l["sequence"],
                        str(&l["id"]),
                        str(&l["type"]),
                        str(&l["source"]),
                        str(&l["dead_lettered_at"]),
                        str(&l["destination"]),
                        str(&l["reason"]),
                        l["code"],
                        l["attempts"],
                    );
                }
            }
            Action::Show => {
                for event in result.as_array().into_iter().flatten() {
                    out += &format!("{who}:\n");
                    out += &serde_json::to_string_pretty(&readable(event)).unwrap_or_default();
                    out += "\n";
                }
            }
            Action::Redrive => {
                let delivered = result["delivered"].as_array().map_or(0, Vec::len);
                let failed = result["failed"].as_array().cloned().unwrap_or_default();
                out += &format!(
                    "{who}: {delivered} redriven and removed, {} failed again, {} left in the store\n",
                    failed.len(),
                    result["remaining"],
                );
                for f in &failed {
                    out += &format!("  {}: {}\n", str(&f[0]), str(&f[1]));
                }
            }
            Action::Purge => {
                let purged = result.as_array().map_or(0, Vec::len);
                out += &format!("{who}: {purged} dead letter{} purged\n", plural(purged));
            }
        }
    }
    out
}

/// A CloudEvent in JSON with its data shown as JSON when it is JSON: the bus keeps a body as
/// bytes (`data_base64`), which a person cannot read.
fn readable(event: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let mut event = event.clone();
    let json = event["datacontenttype"].as_str().is_some_and(|t| t.contains("json"));
    let data = event["data_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    if let (true, Some(data), Some(object)) = (json, data, event.as_object_mut()) {
        object.remove("data_base64");
        object.insert("data".into(), data);
    }
    event
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redrive_says_what_was_delivered_and_what_failed_again() {
        let answer = serde_json::json!({"subscribers": [{"namespace": "fleet", "trigger": "alerts",
            "subscriber": "0", "result": {"delivered": ["a-1", "a-2"],
            "failed": [["a-3", "HTTP 500 (after 4 attempts)"]], "remaining": 1}}]});
        assert_eq!(
            describe(Action::Redrive, &answer),
            "fleet/alerts subscriber 0: 2 redriven and removed, 1 failed again, 1 left in the \
             store\n  a-3: HTTP 500 (after 4 attempts)\n"
        );
    }

    #[test]
    fn a_list_shows_each_letter_with_why_it_failed() {
        let answer = serde_json::json!({"subscribers": [{"namespace": "fleet", "trigger": "alerts",
            "subscriber": "1", "result": [{"sequence": 7, "id": "a-1", "type": "alert",
            "source": "/v7", "dead_lettered_at": "2026-12-03T10:00:00.000Z",
            "destination": "http://fn/", "reason": "HTTP 503", "code": 503, "attempts": 4}]}]});
        assert_eq!(
            describe(Action::List, &answer),
            "fleet/alerts subscriber 1: 1 dead letter\n  7 id=a-1 type=alert source=/v7\n    \
             failed at 2026-12-03T10:00:00.000Z on http://fn/: HTTP 503 (status 503, 4 attempts)\n"
        );
    }
}
