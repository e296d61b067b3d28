//! What every broker sink shares: the span of a publish, and the connections per broker.

use std::sync::{Arc, Weak};

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
/// settings (`key`): one per broker, however many subscribers publish to it. It holds them
/// weakly: a connection closes once no sink uses it (a reload that changes a sink's
/// credentials does not leave the old connection open for the life of the process).
pub(crate) struct Shared<T>(std::sync::Mutex<std::collections::HashMap<String, Weak<T>>>);

impl<T> Shared<T> {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self(std::sync::Mutex::new(std::collections::HashMap::new()))
    }

    /// The connection for `key`, made by `make` when no sink holds one.
    pub(crate) fn get_or<E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = map.get(key).and_then(Weak::upgrade) {
            return Ok(found);
        }
        // The keys of connections that closed go with this one's making.
        map.retain(|_, weak| weak.strong_count() > 0);
        let made = Arc::new(make()?);
        map.insert(key.to_string(), Arc::downgrade(&made));
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_shared_while_used_and_made_again_after() {
        let shared = Shared::new();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Ok::<_, ()>(made.get())
        };
        let first = shared.get_or("k", make).expect("made");
        let again = shared.get_or("k", make).expect("shared");
        assert!(Arc::ptr_eq(&first, &again), "one connection per key while it is used");
        assert_eq!(shared.get_or("other", make).map(|c| *c), Ok(2), "another key, another one");
        drop((first, again));
        assert_eq!(shared.get_or("k", make).map(|c| *c), Ok(3), "closed once unused, made anew");
    }
}
