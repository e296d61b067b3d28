//! Kafka as every part of ofe speaks it: the client context that keeps librdkafka's own
//! logging out of ofe's, and the CloudEvents Kafka protocol binding (binary mode: `ce_`
//! headers, `content-type`, the data as the value). The Kafka bus and the Kafka source both
//! use this module; neither has its own copy.

use cloudevents::{AttributesReader as _, Event};
use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};

use crate::{BusError, event};

/// The client context of every Kafka client ofe makes: librdkafka's own log lines and error
/// callbacks go to `tracing` at debug level. Unrouted, librdkafka logs an ERROR several times a
/// second while a broker is down; ofe says that itself, once when the bus becomes unreachable
/// and once when it is back.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

/// One of librdkafka's own error callbacks, at debug level.
pub fn librdkafka_error(error: &rdkafka::error::KafkaError, reason: &str) {
    tracing::debug!(target: "librdkafka", %error, reason, "librdkafka error");
}

/// One of librdkafka's own log lines, at debug level.
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    tracing::debug!(target: "librdkafka", ?level, fac, "{message}");
}

/// `event`'s binary-mode headers: each attribute as `ce_<name>`, and `content-type`.
pub fn headers(event: &Event) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (name, value) in &event::binary_attributes(event) {
        let key = format!("ce_{name}");
        headers = headers.insert(Header { key: &key, value: Some(value.as_bytes()) });
    }
    if let Some(content_type) = event.datacontenttype() {
        headers = headers.insert(Header { key: "content-type", value: Some(content_type) });
    }
    headers
}

/// What a record's headers say under the binding.
#[derive(Debug, Default)]
pub struct Parts {
    /// Binary-mode attributes, without their `ce_` prefix; empty when there are none.
    pub attributes: Vec<(String, String)>,
    /// The `content-type` header.
    pub content_type: Option<String>,
}

impl Parts {
    /// The attributes as borrowed pairs, as the event builders take them.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.attributes.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    /// The binary-mode event of these headers and `payload`.
    pub fn decode(&self, payload: &[u8]) -> Result<Event, BusError> {
        event::from_binary(self.pairs(), self.content_type.as_deref(), payload)
    }
}

/// Reads the binding's headers of a record. Header values are text; bytes that are not UTF-8
/// are replaced, as the binding requires text.
pub fn parts(message: &BorrowedMessage<'_>) -> Parts {
    let mut parts = Parts::default();
    for h in message.headers().iter().flat_map(|headers| headers.iter()) {
        let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
        if let Some(name) = h.key.strip_prefix("ce_") {
            parts.attributes.push((name.to_string(), value));
        } else if h.key.eq_ignore_ascii_case("content-type") {
            parts.content_type = Some(value);
        }
    }
    parts
}
