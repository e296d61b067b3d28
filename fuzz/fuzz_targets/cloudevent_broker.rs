//! CloudEvents from brokers, as the Kafka, MQTT, NATS and Redis sources read them: headers
//! (`ce_*` for Kafka, `ce-*`/user properties elsewhere, already stripped of the prefix here),
//! a content type, a payload and a key. Broker messages cannot be refused, so a malformed one
//! becomes a flagged event: `Origin::event` must always give an event, and it must survive
//! the bus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ofe_eventsource::ingest::{Message, Origin};

fuzz_target!(|data: &[u8]| {
    // Layout: attribute lines `name=value` up to a NUL byte, then the payload; a first line
    // starting with `content-type=` sets the content type.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (head, payload) = data.split_at(split);
    let payload = payload.get(1..).unwrap_or_default();
    let Ok(head) = std::str::from_utf8(head) else { return };
    let mut content_type = None;
    let mut binary = Vec::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once('=') else { continue };
        if name == "content-type" {
            content_type = Some(value);
        } else {
            binary.push((name, value));
        }
    }
    let origin =
        Origin::of("ns", "fleet", "telemetry", "io.openfunction.events.kafka", uuid::Uuid::nil());
    let message = Message {
        payload,
        content_type,
        binary,
        subject: "fleet/v1/telemetry",
        identity: Some(payload.to_vec()),
        extensions: vec![("partitionkey", "v1".to_string())],
        ..Message::default()
    };
    let event = origin.event(&message);
    let bytes = ofe_core::event::encode(&event).expect("every source event encodes");
    ofe_core::event::decode(&bytes).expect("an encoded event decodes");
});
