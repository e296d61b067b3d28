//! `ofe send`: publishes a test CloudEvent as an EventSource's event or on a topic.

use std::process::ExitCode;

use anyhow::Context as _;
use cloudevents::{AttributesReader as _, EventBuilder as _, EventBuilderV10};

use super::{Endpoint, JsonText as _, client, runtime};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_must_be_valid_names() {
        assert_eq!(parse_extension("region=eu"), Ok(("region".into(), "eu".into())));
        assert!(parse_extension("Region=eu").is_err());
        assert!(parse_extension("noequals").is_err());
    }
}
