//! What every broker sink shares: the span of a publish, and the connections per broker.

use ofe_core::trace::{self, KeyValue};

/// The span of one publish to a broker, after OpenTelemetry's messaging conventions:
/// `system` (`kafka`, `nats`, …) and the `destination` (topic, subject, stream, exchange).
pub(crate) fn broker_span(
    system: &'static str,
    destination: &str,
    resend: Option<KeyValue>,
) -> trace::Span {
    let mut attributes = vec![
        KeyValue::new("messaging.system", system),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.destination.name", destination.to_string()),
    ];
    attributes.extend(resend);
    trace::Span::start(
        format!("send {destination}"),
        trace::SpanKind::Producer,
        &trace::current(),
        attributes,
    )
}

/// Connections to brokers, shared by every sink that reaches the same broker with the same
/// settings (`key`): one per broker, however many subscribers publish to it.
pub(crate) struct Shared<T: Clone>(std::sync::Mutex<std::collections::HashMap<String, T>>);

impl<T: Clone> Shared<T> {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self(std::sync::Mutex::new(std::collections::HashMap::new()))
    }

    /// The connection for `key`, made by `make` when there is none yet.
    pub(crate) fn get_or<E>(&self, key: &str, make: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = map.get(key) {
            return Ok(found.clone());
        }
        let made = make()?;
        map.insert(key.to_string(), made.clone());
        Ok(made)
    }
}
