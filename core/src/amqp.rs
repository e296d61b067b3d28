//! The CloudEvents AMQP protocol binding, as ofe reads it from AMQP 0-9-1 messages (RabbitMQ).
//!
//! The binding is written for AMQP 1.0 application properties; on AMQP 0-9-1 the same names
//! travel in the message's `headers` table, which is where RabbitMQ's shovels and the
//! CloudEvents SDKs' RabbitMQ transports put them. Binary mode: each attribute under
//! `cloudEvents_<name>` (the binding's current prefix) or `cloudEvents:<name>` (its first
//! one), and the data's media type as the message's `content-type` property. Structured mode:
//! `content-type: application/cloudevents+json`, the event as JSON in the body.
//!
//! This module works on header names and values already turned into text, so it needs no AMQP
//! client; the AMQP source turns its client's header table into those pairs.

/// The attribute prefixes of binary mode: the binding's current one first.
pub const PREFIXES: [&str; 2] = ["cloudEvents_", "cloudEvents:"];

/// The attribute a header carries in binary mode (`cloudEvents_type` → `type`), if any.
pub fn attribute(header: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|prefix| header.strip_prefix(prefix)).filter(|a| !a.is_empty())
}

/// The binary-mode attributes among `headers`, without their prefix.
pub fn attributes<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    headers.into_iter().filter_map(|(name, value)| attribute(name).map(|a| (a, value))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_prefixes_name_attributes_and_nothing_else_does() {
        let headers = [
            ("cloudEvents_type", "com.example.order"),
            ("cloudEvents:id", "42"),
            ("x-trace", "abc"),
            ("cloudEvents_", "no name"),
        ];
        assert_eq!(attributes(headers), vec![("type", "com.example.order"), ("id", "42")]);
    }
}
