//! OpenTelemetry spans of an event's path through ofe: ingest, the bus publish, the filter,
//! the delivery and each of its attempts.
//!
//! Off until the process installs a tracer with [`enable`] (the `ofe` binary does when the
//! standard `OTEL_*` variables ask for an exporter): until then every function here returns
//! at once and nothing is allocated, so the hot path pays one relaxed load.
//!
//! How a trace follows an event across processes and the bus:
//! - The CloudEvents distributed-tracing extension (`traceparent`, `tracestate`) is the
//!   trace context of the event's origin. ofe never changes one that is set; when it is
//!   absent, the ingest span becomes it, so every later hop (and the function) joins one trace.
//! - Each hop that puts the event back on the bus records its own span in the extension
//!   [`EXT_HOP`], so the next hop's span is its child: ingest → publish → filter → deliver →
//!   one span per HTTP attempt. The W3C `traceparent` header of a delivery names that
//!   attempt's span, as OpenTelemetry's HTTP instrumentation does.

use std::borrow::Cow;
use std::str::FromStr as _;
use std::sync::OnceLock;

use cloudevents::{AttributesReader as _, Event};
use opentelemetry::global::BoxedTracer;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
};
pub use opentelemetry::{Context, KeyValue};

/// Extension attribute carrying the span of the hop that last put the event on the bus, as a
/// W3C `traceparent` value. Internal: deliveries do not send it (the W3C headers carry the
/// attempt's span instead).
pub const EXT_HOP: &str = "ofetraceparent";

/// The CloudEvents tracing extension: the trace context of the event's origin.
pub const EXT_TRACEPARENT: &str = "traceparent";
/// The tracing extension's vendor state.
pub const EXT_TRACESTATE: &str = "tracestate";

static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Turns spans on, with the tracer of the global provider the caller installed
/// (`opentelemetry::global::set_tracer_provider`). Later calls change nothing.
pub fn enable() {
    let _ = TRACER.set(opentelemetry::global::tracer("ofe"));
}

/// Whether spans are recorded.
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A span of ofe's, ended when dropped. `None`-like when tracing is off: every method does
/// nothing.
#[derive(Debug, Default)]
pub struct Span {
    cx: Option<Context>,
}

impl Span {
    /// Starts span `name` of `kind` as a child of `parent`, if tracing is on.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = TRACER.get() else { return Self::default() };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Self { cx: Some(parent.with_span(span)) }
    }

    /// Starts a child of the context `event` carries: the last hop's span, else its origin's.
    pub fn for_event(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        event: &Event,
        attributes: Vec<KeyValue>,
    ) -> Self {
        if !enabled() {
            return Self::default();
        }
        Self::start(name, kind, &parent_of(event), attributes)
    }

    /// Whether this span exists (tracing is on).
    pub fn is_on(&self) -> bool {
        self.cx.is_some()
    }

    /// The context whose children are this span's, or an empty one when tracing is off.
    pub fn context(&self) -> Context {
        self.cx.clone().unwrap_or_default()
    }

    /// Sets an attribute.
    pub fn set(&self, attribute: KeyValue) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(attribute);
        }
    }

    /// Records an event on the span's timeline, e.g. why a delivery was dead-lettered.
    pub fn note(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Some(cx) = &self.cx {
            cx.span().add_event(name, attributes);
        }
    }

    /// Marks the span failed, with `reason`.
    pub fn fail(&self, reason: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(reason));
        }
    }

    /// The span as a W3C `traceparent` value, with its `tracestate`, if there is a span.
    pub fn traceparent(&self) -> Option<(String, String)> {
        let cx = self.cx.as_ref()?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (format(sc), sc.trace_state().header()))
    }

    /// Records this span in `event` as its origin (the tracing extension), unless it has
    /// one: ofe starts the trace of an event that comes without.
    pub fn stamp_origin(&self, event: &mut Event) {
        if event.extension(EXT_TRACEPARENT).is_some() {
            return;
        }
        let Some((parent, state)) = self.traceparent() else { return };
        event.set_extension(EXT_TRACEPARENT, parent);
        if !state.is_empty() {
            event.set_extension(EXT_TRACESTATE, state);
        }
    }

    /// Records this span in `event` as the hop its next span continues from ([`EXT_HOP`]).
    pub fn stamp_hop(&self, event: &mut Event) {
        if let Some((parent, _)) = self.traceparent() {
            event.set_extension(EXT_HOP, parent);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.cx {
            cx.span().end();
        }
    }
}

/// Runs `future` with `span` as the current span, so spans it starts (see [`current`]) are
/// its children; as it is, when tracing is off.
pub async fn within<F: std::future::Future>(span: &Span, future: F) -> F::Output {
    use opentelemetry::context::FutureExt as _;
    match &span.cx {
        Some(cx) => future.with_context(cx.clone()).await,
        None => future.await,
    }
}

/// The current span's context: the parent of spans started inside [`within`].
pub fn current() -> Context {
    Context::current()
}

/// The context the next span of `event` continues: the hop that last published it
/// ([`EXT_HOP`]), else its origin (the tracing extension); empty (a new trace) when it has
/// neither or they do not parse.
pub fn parent_of(event: &Event) -> Context {
    let text = |name| event.extension(name).map(|v| v.to_string());
    let state = text(EXT_TRACESTATE);
    let context = text(EXT_HOP)
        .and_then(|hop| parse(&hop, None))
        .or_else(|| text(EXT_TRACEPARENT).and_then(|p| parse(&p, state.as_deref())));
    context.map_or_else(Context::new, |sc| Context::new().with_remote_span_context(sc))
}

/// Parses a W3C `traceparent` (`00-<32 hex trace>-<16 hex span>-<2 hex flags>`), with its
/// `tracestate`; `None` if it is malformed or names the invalid (all-zero) trace or span.
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate.and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
    let sc = SpanContext::new(trace, span, TraceFlags::new(flags & 1), true, state);
    sc.is_valid().then_some(sc)
}

/// The context of a W3C `traceparent` (and `tracestate`) received from another process, if it
/// parses.
pub fn remote(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    parse(traceparent, tracestate).map(|sc| Context::new().with_remote_span_context(sc))
}

/// `sc` as a W3C `traceparent` value.
pub fn format(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Attributes of a span that sends to (`operation` `send`) or processes from (`process`)
/// the bus subject `destination`, after OpenTelemetry's messaging conventions.
pub fn messaging(operation: &'static str, destination: &crate::Subject) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "ofe"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.destination.name", destination.to_string()),
    ]
}

/// Attributes naming `event` on a span, after the CloudEvents semantic conventions.
pub fn event_attributes(event: &Event) -> Vec<KeyValue> {
    vec![
        KeyValue::new("cloudevents.event_id", event.id().to_string()),
        KeyValue::new("cloudevents.event_source", event.source().to_string()),
        KeyValue::new("cloudevents.event_type", event.ty().to_string()),
        KeyValue::new("cloudevents.event_spec_version", event.specversion().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_w3c_rejects() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = parse(text, Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(format(&sc), text);
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "not a traceparent",
        ] {
            assert!(parse(bad, None).is_none(), "{bad}");
        }
    }
}
