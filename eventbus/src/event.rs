//! CloudEvents on the bus: the extension attributes ofe adds, and the storage encoding.

use cloudevents::{AttributesReader, Event};

use crate::BusError;

/// Extension attribute naming the namespace of the EventSource that produced the event.
pub const EXT_NAMESPACE: &str = "ofenamespace";
/// Extension attribute naming the EventSource that produced the event.
pub const EXT_EVENTSOURCE: &str = "ofeeventsource";
/// Extension attribute naming the event (the key under the EventSource's source kind).
pub const EXT_EVENT: &str = "ofeevent";

/// Encodes an event for storage: CloudEvents JSON (structured mode), so a stored event can be
/// read by any CloudEvents tool.
pub fn encode(event: &Event) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(event).map_err(|e| BusError::Encode(e.to_string()))
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Event, BusError> {
    serde_json::from_slice(bytes).map_err(|e| BusError::Decode(e.to_string()))
}

/// The key under which duplicates are recognised. Per the CloudEvents spec `source` + `id`
/// identify an event; the subject is part of the key too, because a Trigger republishing an
/// event to a topic is a new placement of the same event, not a duplicate.
pub fn dedup_key(subject: &str, event: &Event) -> String {
    format!("{subject}\u{0}{}\u{0}{}", event.source(), event.id())
}
