//! CloudEvents on the bus: the extension attributes ofe adds, and the storage encoding.

use std::borrow::Cow;

use cloudevents::{AttributesReader, Event};

use crate::BusError;

/// Extension attribute naming the namespace of the EventSource that produced the event.
pub const EXT_NAMESPACE: &str = "ofenamespace";
/// Extension attribute naming the EventSource that produced the event.
pub const EXT_EVENTSOURCE: &str = "ofeeventsource";
/// Extension attribute naming the event (the key under the EventSource's source kind).
pub const EXT_EVENT: &str = "ofeevent";

/// The first byte of an encoded event, so another format is refused rather than misread.
const ENCODING_VERSION: u8 = 2;

/// Encodes an event for storage, as a binary-mode message: the context attributes and
/// extensions, the content type, and the data as the exact bytes it holds. (Structured JSON
/// would re-serialise JSON data and reorder its keys.) Layout: version byte; attribute count
/// (u32); each name (u16 length + bytes) and value (u32 length + bytes); content type (u16
/// length + bytes, empty for none); data bytes to the end.
pub fn encode(event: &Event) -> Result<Vec<u8>, BusError> {
    let attributes = binary_attributes(event);
    let content_type = event.datacontenttype().unwrap_or_default();
    let data = data_bytes(event);
    let mut out = Vec::with_capacity(
        64 + data.len() + attributes.iter().map(|(n, v)| n.len() + v.len() + 6).sum::<usize>(),
    );
    out.push(ENCODING_VERSION);
    let count = u32::try_from(attributes.len())
        .map_err(|e| BusError::encode("too many attributes").because(e))?;
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in &attributes {
        let name_len = u16::try_from(name.len())
            .map_err(|_| BusError::encode(format!("attribute name `{name}` is too long")))?;
        let value_len = u32::try_from(value.len())
            .map_err(|_| BusError::encode(format!("attribute `{name}` is too long")))?;
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&value_len.to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    let ct_len = u16::try_from(content_type.len())
        .map_err(|_| BusError::encode("content type is too long"))?;
    out.extend_from_slice(&ct_len.to_be_bytes());
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Event, BusError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], BusError> {
        let (head, rest) =
            bytes.split_at_checked(n).ok_or_else(|| BusError::decode("record is truncated"))?;
        *bytes = rest;
        Ok(head)
    }
    fn text<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a str, BusError> {
        std::str::from_utf8(take(bytes, n)?)
            .map_err(|e| BusError::decode("a name or value is not UTF-8").because(e))
    }
    fn len(bytes: &mut &[u8], width: usize) -> Result<usize, BusError> {
        let raw = take(bytes, width)?;
        Ok(raw.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }
    let mut rest = bytes;
    if take(&mut rest, 1)? != [ENCODING_VERSION] {
        return Err(BusError::decode("not an event in ofe's storage encoding"));
    }
    let count = len(&mut rest, 4)?;
    let mut attributes = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = len(&mut rest, 2)?;
        let name = text(&mut rest, n)?;
        let v = len(&mut rest, 4)?;
        attributes.push((name, text(&mut rest, v)?));
    }
    let c = len(&mut rest, 2)?;
    let content_type = text(&mut rest, c)?;
    let content_type = (!content_type.is_empty()).then_some(content_type);
    from_binary(attributes, content_type, rest)
}

/// The key under which duplicates are recognised. Per the CloudEvents spec `source` + `id`
/// identify an event; the subject is part of the key too, because a Trigger republishing an
/// event to a topic is a new placement of the same event, not a duplicate.
pub fn dedup_key(subject: &str, event: &Event) -> String {
    format!("{subject}\u{0}{}\u{0}{}", event.source(), event.id())
}

/// The attributes and extensions of `event` as `(name, value)` pairs for a binary-mode binding
/// (HTTP `ce-`, NATS `ce-`, Kafka `ce_` headers): every context attribute except
/// `datacontenttype`, which travels as the content type. Values are percent-encoded where a
/// header could not carry them, as the CloudEvents bindings ask.
pub fn binary_attributes(event: &Event) -> Vec<(&str, Cow<'_, str>)> {
    use cloudevents::event::{AttributeValue, ExtensionValue};
    // Names and string values are borrowed from the event: this runs for every delivery,
    // and most values need no encoding.
    let mut out = Vec::with_capacity(16);
    for (name, value) in event.iter_attributes() {
        if name == "datacontenttype" {
            continue;
        }
        let text = match value {
            AttributeValue::String(s) => Cow::Borrowed(s),
            AttributeValue::URI(u) => Cow::Borrowed(u.as_str()),
            AttributeValue::URIRef(u) => Cow::Borrowed(u.as_str()),
            other => Cow::Owned(other.to_string()),
        };
        out.push((name, encoded(text)));
    }
    for (name, value) in event.iter_extensions() {
        let text = match value {
            ExtensionValue::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        };
        out.push((name, encoded(text)));
    }
    out
}

/// The size of `event`'s data in bytes, without copying it.
pub fn data_len(event: &Event) -> usize {
    /// Counts what is written to it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    match event.data() {
        Some(cloudevents::Data::Binary(bytes)) => bytes.len(),
        Some(cloudevents::Data::String(text)) => text.len(),
        Some(cloudevents::Data::Json(json)) => {
            let mut count = Count(0);
            let _ = serde_json::to_writer(&mut count, json);
            count.0
        }
        None => 0,
    }
}

/// The event's data as bytes: the body of a binary-mode message.
pub fn data_bytes(event: &Event) -> Vec<u8> {
    match event.data() {
        Some(cloudevents::Data::Binary(bytes)) => bytes.clone(),
        Some(cloudevents::Data::String(text)) => text.clone().into_bytes(),
        Some(cloudevents::Data::Json(json)) => serde_json::to_vec(json).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// The event in structured mode: one JSON CloudEvent (`application/cloudevents+json`). Data
/// kept as bytes is written as a JSON value when its content type is JSON and it parses, and as
/// a string when it is text, so a reader of the JSON finds `data` as it would have been sent in
/// structured mode; other bytes become `data_base64`.
pub fn to_structured(event: &Event) -> Result<Vec<u8>, BusError> {
    let encode = |e: &Event| {
        serde_json::to_vec(e).map_err(|e| BusError::encode("as structured JSON").because(e))
    };
    let Some(cloudevents::Data::Binary(bytes)) = event.data() else { return encode(event) };
    let content_type = event.datacontenttype().unwrap_or_default().to_string();
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = media == "application/json" || media == "text/json" || media.ends_with("+json");
    let data = if json {
        serde_json::from_slice::<serde_json::Value>(bytes).ok().map(cloudevents::Data::Json)
    } else if media.starts_with("text/") {
        String::from_utf8(bytes.clone()).ok().map(cloudevents::Data::String)
    } else {
        None
    };
    let Some(data) = data else { return encode(event) };
    let mut event = event.clone();
    event.set_data(content_type, data);
    encode(&event)
}

/// Why a message, or a sink's reply, that claims to be a CloudEvent cannot be read as one. The
/// text says which mode and what is wrong: a webhook sender gets it with its 400, a wrapped
/// event carries it as `ofeinvalid`, and a dropped reply is logged with it.
#[derive(Debug, thiserror::Error)]
pub enum MalformedEvent {
    /// Attributes in headers or properties (`specversion` among them) that make no event.
    #[error("malformed binary-mode CloudEvent: {}", crate::Report(.0))]
    Binary(BusError),
    /// A structured-mode body that is not a CloudEvent.
    #[error("malformed structured CloudEvent: {0}")]
    Structured(serde_json::Error),
}

/// Rebuilds an event from binary-mode attributes (names without their `ce-`/`ce_` prefix,
/// values as sent), the content type and the body. The body is kept as the exact bytes sent,
/// whatever the content type: re-serialising parsed JSON would reorder keys and change what a
/// function receives (and any signature over it).
pub fn from_binary<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, BusError> {
    use cloudevents::{EventBuilder, EventBuilderV10};
    let mut builder = EventBuilderV10::new();
    let mut specversion = None;
    let mut dataschema = None;
    for (name, raw) in attributes {
        let value = percent_decode(raw);
        builder = match name {
            "specversion" => {
                specversion = Some(value);
                builder
            }
            "id" => builder.id(value),
            "source" => builder.source(value),
            "type" => builder.ty(value),
            "subject" => builder.subject(value),
            "dataschema" => {
                dataschema = Some(value);
                builder
            }
            "time" => {
                let time = chrono::DateTime::parse_from_rfc3339(&value)
                    .map_err(|e| BusError::decode(format!("time `{value}`")).because(e))?;
                builder.time(time.with_timezone(&chrono::Utc))
            }
            other => builder.extension(other, value),
        };
    }
    if specversion.as_deref() != Some("1.0") {
        return Err(BusError::decode(format!(
            "specversion {specversion:?} is not supported; only CloudEvents 1.0"
        )));
    }
    if content_type.is_some() || !body.is_empty() {
        let content_type = content_type.unwrap_or("application/octet-stream").to_string();
        let data = cloudevents::Data::Binary(body.to_vec());
        builder = match dataschema {
            Some(schema) => builder.data_with_schema(content_type, schema, data),
            None => builder.data(content_type, data),
        };
    }
    builder.build().map_err(|e| BusError::decode("the attributes make no event").because(e))
}

/// Percent-encodes `%`, `"` and every byte outside printable ASCII.
pub fn percent_encode(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if header_safe(byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Whether `byte` goes into a header as it is.
fn header_safe(byte: u8) -> bool {
    (0x20..0x7f).contains(&byte) && byte != b'%' && byte != b'"'
}

/// `text` percent-encoded, reusing it when nothing needs encoding (the usual case).
fn encoded(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.bytes().all(header_safe) { text } else { Cow::Owned(percent_encode(&text)) }
}

/// Reverses [`percent_encode`]; malformed escapes are kept as they are.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = value.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    #[test]
    fn structured_mode_writes_json_data_as_json_text_as_text_and_bytes_as_base64() {
        let structured = |content_type: &str, body: &[u8]| -> serde_json::Value {
            let event = from_binary(
                [("specversion", "1.0"), ("id", "1"), ("source", "/s"), ("type", "t")],
                Some(content_type),
                body,
            )
            .expect("event");
            serde_json::from_slice(&to_structured(&event).expect("encodes")).expect("JSON")
        };
        let json = structured("application/json; charset=utf-8", br#"{"kmh":131}"#);
        assert_eq!(json["data"]["kmh"], 131);
        assert_eq!(json["datacontenttype"], "application/json; charset=utf-8");
        assert_eq!(structured("application/vnd.fleet+json", b"[1,2]")["data"][1], 2);
        assert_eq!(structured("text/plain", b"hello")["data"], "hello");
        let bytes = structured("application/octet-stream", &[0, 255]);
        assert_eq!(bytes["data_base64"], "AP8=");
        let broken = structured("application/json", b"{not json");
        assert_eq!(broken["data_base64"], "e25vdCBqc29u", "bytes that do not parse stay bytes");
    }

    #[test]
    fn binary_mode_round_trips_attributes_extensions_and_data() {
        let mut event = EventBuilderV10::new()
            .id("id-1")
            .source("/s")
            .ty("t")
            .subject("sub")
            .time(chrono::Utc::now())
            .data("application/json", serde_json::json!({"speed": 130}))
            .build()
            .expect("event");
        event.set_extension("traceparent", "00-abc-def-01");
        event.set_extension("note", "naïve \"quoted\" 100%");
        let attrs = binary_attributes(&event);
        let pairs: Vec<(&str, &str)> = attrs.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        assert!(pairs.contains(&("note", "na%C3%AFve %22quoted%22 100%25")));
        let body = data_bytes(&event);
        let back = from_binary(pairs, Some("application/json"), &body).expect("decodes");
        assert_eq!(back.id(), event.id());
        assert_eq!(back.time(), event.time());
        assert_eq!(back.subject(), event.subject());
        assert_eq!(back.extension("note"), event.extension("note"));
        assert_eq!(back.extension("traceparent"), event.extension("traceparent"));
        assert_eq!(data_bytes(&back), body, "the body must come back byte for byte");
    }

    #[test]
    fn storage_encoding_keeps_data_bytes_exactly() {
        let body = br#"{"vehicleId":"42","speed":131}"#.to_vec();
        let mut event = EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .data("application/json", body.clone())
            .build()
            .expect("event");
        event.set_extension("partitionkey", "42");
        let back = decode(&encode(&event).expect("encodes")).expect("decodes");
        assert_eq!(data_bytes(&back), body, "key order and spacing must survive storage");
        assert_eq!(back.extension("partitionkey"), event.extension("partitionkey"));
        assert_eq!(back.datacontenttype(), Some("application/json"));
        assert!(decode(b"{}").is_err(), "foreign bytes are refused, not misread");
    }

    #[test]
    fn binary_mode_rejects_other_spec_versions() {
        let err = from_binary([("specversion", "0.3"), ("id", "1")], None, b"").unwrap_err();
        assert!(err.to_string().contains("only CloudEvents 1.0"));
    }
}
