//! CloudEvents over HTTP, as the webhook source reads them: binary mode (`ce-*` headers and
//! the body), structured mode and batches. Input: header lines `name: value` up to an empty
//! line, then the body. A malformed event is an error for the sender, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ofe_eventsource::ingest::{Message, Origin};

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n").unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(2..).unwrap_or_default();
    let Ok(head) = std::str::from_utf8(head) else { return };
    let headers: Vec<(&str, &str)> =
        head.lines().filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim(), v.trim())).collect();
    let content_type =
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")).map(|(_, v)| *v);
    let binary: Vec<(&str, &str)> =
        headers.iter().filter_map(|(n, v)| n.strip_prefix("ce-").map(|a| (a, *v))).collect();
    let origin =
        Origin::of("ns", "hook", "in", "io.openfunction.events.webhook", uuid::Uuid::nil());
    let message =
        Message { payload: body, content_type, binary, subject: "in", ..Message::default() };
    if let Ok(event) = origin.strict_event(&message) {
        // What was accepted must survive the bus.
        let bytes = ofe_core::event::encode(&event).expect("an accepted event encodes");
        ofe_core::event::decode(&bytes).expect("an encoded event decodes");
    }
    let _ = serde_json::from_slice::<Vec<cloudevents::Event>>(body);
});
