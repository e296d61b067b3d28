//! Turning one upstream message into one CloudEvent, the same way for every adapter.
//!
//! - A message that already is a CloudEvent keeps every attribute as sent (id, source, type,
//!   time, extensions, `traceparent`): binary mode (the binding's `ce-`/`ce_` headers or MQTT
//!   v5 user properties) and structured mode (`application/cloudevents+json`, or a JSON payload
//!   with `specversion` where the transport has no content type).
//! - Any other message becomes the data of a new event whose attributes are set
//!   deterministically: the adapter's `type`, the EventSource's `source`, the upstream
//!   topic/stream/subject as `subject`, the upstream time (else now), the content type (else
//!   `application/json` when the payload is JSON, else `application/octet-stream`), and an id
//!   derived from the message's upstream identity (partition and offset, stream entry id, …) so
//!   a redelivery after a crash carries the same id and the bus drops it as a duplicate.
//! - A message that claims to be a CloudEvent but is malformed is **not** dropped and does not
//!   block the stream: it is wrapped like a plain message and flagged with the extension
//!   `ofeinvalid` holding the reason, so a Trigger can route it (for example to a dead-letter
//!   function with `ofeinvalid != ""`-style conditions) while the rest flows.

use chrono::{DateTime, Utc};
use cloudevents::Event;
use ofe_core::event::{self, EXT_EVENT, EXT_EVENTSOURCE, EXT_NAMESPACE};
use ofe_core::health::Reporter;
use ofe_core::trace::{self, KeyValue, Span, SpanKind};

use crate::cron::source_uri;
use crate::metrics::EventLabels;

/// The extension attribute flagging a malformed CloudEvent, holding the reason.
pub const EXT_INVALID: &str = "ofeinvalid";

/// The structured-mode media type.
const STRUCTURED: &str = "application/cloudevents+json";

/// Where events of one adapter come from: the EventSource event and the adapter's defaults.
#[derive(Clone, Debug)]
pub struct Origin {
    /// Names of the EventSource event, stamped on every event as extensions.
    pub labels: EventLabels,
    /// The `type` of wrapped events, e.g. `io.openfunction.events.kafka`.
    pub event_type: &'static str,
    /// The UUID namespace of derived ids (one per adapter kind).
    pub id_namespace: uuid::Uuid,
    source: String,
    /// Where the adapter says whether its upstream connection works.
    reporter: Option<Reporter>,
    /// The schema the events' data must satisfy (`schema`), when the event sets one.
    schema: Option<std::sync::Arc<crate::schema::Schema>>,
}

/// One upstream message, as an adapter sees it.
#[derive(Debug, Default)]
pub struct Message<'a> {
    /// The payload bytes.
    pub payload: &'a [u8],
    /// The content type the transport gave, if it has one.
    pub content_type: Option<&'a str>,
    /// Binary-mode attributes (names without the `ce-`/`ce_` prefix, values as sent). Empty
    /// when the transport carried none.
    pub binary: Vec<(&'a str, &'a str)>,
    /// The upstream topic, stream or subject: the `subject` of a wrapped event.
    pub subject: &'a str,
    /// Bytes that identify this message upstream, stable across redeliveries. `None` when the
    /// transport has no such identity (the id is then random).
    pub identity: Option<Vec<u8>>,
    /// The upstream timestamp, if the transport has one.
    pub time: Option<DateTime<Utc>>,
    /// Extra extensions for wrapped events (e.g. `partitionkey` from a Kafka key).
    pub extensions: Vec<(&'static str, String)>,
}

impl Origin {
    /// The origin of event `labels` for an adapter with `event_type` and `id_namespace`.
    pub fn new(labels: EventLabels, event_type: &'static str, id_namespace: uuid::Uuid) -> Self {
        let source = source_uri(&labels.namespace, &labels.eventsource);
        Self { labels, event_type, id_namespace, source, reporter: None, schema: None }
    }

    /// Checks every event's data against the schema `spec` (at `field`) gives from now on;
    /// the error names the field when it cannot be compiled.
    pub fn with_schema(
        mut self,
        field: &str,
        spec: Option<&ofe_crds::SchemaSpec>,
    ) -> Result<Self, crate::SourceError> {
        if let Some(spec) = spec {
            self.schema = Some(crate::schema::Schema::compile(&format!("{field}.schema"), spec)?);
        }
        Ok(self)
    }

    /// Whether `event`'s data satisfies the event's schema (always, without one); else the
    /// first violation (see [`crate::schema::Schema::check`]).
    pub fn check_schema(&self, event: &Event) -> Result<(), String> {
        self.schema.as_ref().map_or(Ok(()), |schema| schema.check(event))
    }

    /// Reports connection health to `reporter` from now on.
    pub fn set_reporter(&mut self, reporter: Reporter) {
        self.reporter = Some(reporter);
    }

    /// Runs `session` (one connection upstream) until it ends cleanly, at shutdown, and again
    /// after each failure: the failure is reported as the upstream being unreachable, logged
    /// as `what`'s, and the next try waits with backoff (100 ms doubling to 5 s; a session
    /// that lasted over 10 s was connected, so the next wait starts short again).
    pub async fn reconnecting<F, Fut, E>(
        &self,
        what: &str,
        shutdown: &tokio_util::sync::CancellationToken,
        mut session: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut backoff = Backoff::default();
        let mut failing = false;
        loop {
            let started = std::time::Instant::now();
            match session().await {
                Ok(()) => return,
                Err(error) => {
                    self.unreachable(&error);
                    // A session that lasted was connected: the trouble starts anew, and the
                    // next wait is short again.
                    let lasted = started.elapsed() > std::time::Duration::from_secs(10);
                    if lasted {
                        backoff.reset();
                    }
                    // Said once when the trouble starts, not on every try while it lasts.
                    if !failing || lasted {
                        tracing::warn!(%error, "{what} failed; retrying with backoff");
                    } else {
                        tracing::debug!(%error, "{what} failed again");
                    }
                    failing = true;
                    if !backoff.wait(shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// The reporter, if health is reported.
    pub fn reporter(&self) -> Option<&Reporter> {
        self.reporter.as_ref()
    }

    /// The upstream connection works.
    pub fn connected(&self) {
        if let Some(r) = &self.reporter {
            r.up("Connected");
        }
    }

    /// The upstream connection failed, with `error`.
    pub fn unreachable(&self, error: impl std::fmt::Display) {
        if let Some(r) = &self.reporter {
            r.down("BrokerUnreachable", error.to_string());
        }
    }

    /// The origin of event `event` of EventSource `eventsource` in `namespace`, read by the
    /// source `kind` (its field under `spec`).
    pub fn of(
        namespace: &str,
        eventsource: &str,
        kind: &str,
        event: &str,
        event_type: &'static str,
        id_namespace: uuid::Uuid,
    ) -> Self {
        Self::new(EventLabels::new(namespace, eventsource, kind, event), event_type, id_namespace)
    }

    /// The bus subject of this EventSource event.
    pub fn subject(&self) -> ofe_core::Subject {
        ofe_core::Subject::event(
            &self.labels.namespace,
            &self.labels.eventsource,
            &self.labels.event,
        )
    }

    /// A publisher of this EventSource event's events to `bus`.
    pub fn publisher<'a>(
        &'a self,
        bus: &'a dyn ofe_core::EventBus,
        metrics: &'a crate::SourceMetrics,
        shutdown: &'a tokio_util::sync::CancellationToken,
    ) -> Publisher<'a> {
        Publisher { bus, subject: self.subject(), labels: &self.labels, metrics, shutdown }
    }

    /// The `source` attribute of wrapped events.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The event for `message`. Never fails: a malformed CloudEvent is wrapped and flagged
    /// with [`EXT_INVALID`] (see the module documentation), and so is an event whose data does
    /// not satisfy the event's schema (`schema: <JSON path>: <violation>`).
    pub fn event(&self, message: &Message<'_>) -> Event {
        match self.strict_event(message) {
            Ok(mut event) => {
                if let Err(violation) = self.check_schema(&event) {
                    event.set_extension(EXT_INVALID, format!("schema: {violation}"));
                }
                event
            }
            Err(reason) => {
                let mut event = self.wrap(message);
                event.set_extension(EXT_INVALID, reason.to_string());
                self.stamp(&mut event);
                event
            }
        }
    }

    /// The event for `message`, or why the CloudEvent it claims to be is malformed: for
    /// transports that can refuse a message to its sender (HTTP answers 400).
    pub fn strict_event(&self, message: &Message<'_>) -> Result<Event, event::MalformedEvent> {
        let mut event = match self.as_cloudevent(message) {
            Some(parsed) => parsed?,
            None => self.wrap(message),
        };
        self.stamp(&mut event);
        Ok(event)
    }

    /// Sets the extensions naming the EventSource event.
    pub fn stamp(&self, event: &mut Event) {
        event.set_extension(EXT_NAMESPACE, self.labels.namespace.clone());
        event.set_extension(EXT_EVENTSOURCE, self.labels.eventsource.clone());
        event.set_extension(EXT_EVENT, self.labels.event.clone());
    }

    /// `None` when the message is no CloudEvent; `Some(Err)` when it claims to be one and is
    /// malformed.
    fn as_cloudevent(&self, message: &Message<'_>) -> Option<Result<Event, event::MalformedEvent>> {
        if message.binary.iter().any(|(name, _)| *name == "specversion") {
            return Some(
                event::from_binary(
                    message.binary.iter().copied(),
                    message.content_type,
                    message.payload,
                )
                .map_err(event::MalformedEvent::Binary),
            );
        }
        let media = message.content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
        match media {
            Some(m) if m.eq_ignore_ascii_case(STRUCTURED) => Some(
                serde_json::from_slice::<Event>(message.payload)
                    .map_err(event::MalformedEvent::Structured),
            ),
            Some(_) => None,
            // Without a content type, a JSON object with `specversion` is taken for a
            // structured CloudEvent (how MQTT 3.1.1, Redis and NATS core carry them).
            None if message.payload.first() == Some(&b'{') => {
                match serde_json::from_slice::<Event>(message.payload) {
                    Ok(event) => Some(Ok(event)),
                    Err(e) if contains(message.payload, b"\"specversion\"") => {
                        Some(Err(event::MalformedEvent::Structured(e)))
                    }
                    Err(_) => None,
                }
            }
            None => None,
        }
    }

    /// A new event around the payload.
    fn wrap(&self, message: &Message<'_>) -> Event {
        let id = match &message.identity {
            Some(identity) => uuid::Uuid::new_v5(&self.id_namespace, identity),
            None => uuid::Uuid::new_v4(),
        }
        .to_string();
        let content_type = match message.content_type {
            Some(c) if !c.eq_ignore_ascii_case(STRUCTURED) => c,
            _ if serde_json::from_slice::<serde::de::IgnoredAny>(message.payload).is_ok() => {
                "application/json"
            }
            _ => "application/octet-stream",
        };
        let time = message.time.unwrap_or_else(Utc::now).to_rfc3339();
        // `from_binary` percent-decodes values, as the bindings ask; escape what we set.
        let subject = event::percent_encode(message.subject);
        let mut attributes = vec![
            ("specversion", "1.0"),
            ("id", id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.event_type),
            ("time", time.as_str()),
        ];
        if !message.subject.is_empty() {
            attributes.push(("subject", subject.as_str()));
        }
        let encoded: Vec<(&str, String)> =
            message.extensions.iter().map(|(n, v)| (*n, event::percent_encode(v))).collect();
        attributes.extend(encoded.iter().map(|(n, v)| (*n, v.as_str())));
        // Every value above is well formed; should that ever change, keep the payload anyway.
        event::from_binary(attributes, Some(content_type), message.payload).unwrap_or_else(|e| {
            use cloudevents::EventBuilder as _;
            tracing::warn!(error = %e, "cannot set every attribute of a wrapped event");
            let mut event = cloudevents::EventBuilderV10::new()
                .id(id.clone())
                .source(self.source.clone())
                .ty(self.event_type)
                .build()
                .unwrap_or_default();
            event.set_data(content_type, message.payload.to_vec());
            event
        })
    }
}

/// Where an adapter's events go, and what counts them: the bus, the EventSource event's
/// subject and metric labels, and the shutdown signal that ends retries.
pub struct Publisher<'a> {
    /// The bus.
    pub bus: &'a dyn ofe_core::EventBus,
    /// The EventSource event's subject.
    pub subject: ofe_core::Subject,
    /// The EventSource event's metric labels.
    pub labels: &'a EventLabels,
    /// Counters.
    pub metrics: &'a crate::SourceMetrics,
    /// Ends retries.
    pub shutdown: &'a tokio_util::sync::CancellationToken,
}

impl Publisher<'_> {
    /// Counts `n` inputs received from upstream.
    pub fn received(&self, n: usize) {
        self.metrics.received.get_or_create(self.labels).inc_by(n as u64);
    }

    /// Publishes `event` until the bus has it; `false` if shutdown or a closed bus stopped it.
    pub async fn one(&self, event: &Event) -> bool {
        let Self { bus, subject, labels, metrics, shutdown } = self;
        let published = publish_with_retry(*bus, subject, event, labels, metrics, shutdown).await;
        if published && event.extension(EXT_INVALID).is_some() {
            metrics.invalid.get_or_create(labels).inc();
        }
        published
    }

    /// Publishes `events` together (issued in order, so the bus sees them in upstream order)
    /// and returns once the bus has every one; `false` if shutdown or a closed bus stopped any,
    /// in which case nothing of the batch may be acknowledged upstream.
    pub async fn all(&self, events: &[Event]) -> bool {
        futures::future::join_all(events.iter().map(|event| self.one(event)))
            .await
            .into_iter()
            .all(|ok| ok)
    }
}

/// The spans of one event's way onto the bus: `ingest` (from the input to the bus's
/// acknowledgement) and its child `publish`. Both end when dropped, `publish` first.
#[derive(Debug, Default)]
pub struct IngestSpans {
    publish: Span,
    ingest: Span,
}

impl IngestSpans {
    /// Records a failed publish attempt (it is retried, or refused upstream).
    pub fn publish_failed(&self, error: &(dyn std::error::Error + 'static)) {
        self.publish
            .note("publish failed", vec![KeyValue::new("error.message", ofe_core::chain(error))]);
    }

    /// Records that the event was refused upstream (the sender is told to retry).
    pub fn refused(&self, error: &(dyn std::error::Error + 'static)) {
        self.publish_failed(error);
        self.ingest.fail(format!("the bus did not take the event: {}", ofe_core::Report(error)));
    }
}

/// Starts the spans of `event`'s ingest by the EventSource event `labels` onto `subject`, as
/// a child of `parent` (the transport's trace context) or else of the event's own; returns
/// them with the event as it must be published, the trace recorded in it. With tracing off,
/// no spans and no copy: publish the event as it is.
pub fn trace_ingest(
    event: &Event,
    labels: &EventLabels,
    subject: &ofe_core::Subject,
    kind: SpanKind,
    parent: Option<ofe_core::trace::Context>,
) -> (IngestSpans, Option<Event>) {
    if !trace::enabled() {
        return (IngestSpans::default(), None);
    }
    let parent = parent.unwrap_or_else(|| trace::parent_of(event));
    let mut attributes = trace::event_attributes(event);
    attributes.extend([
        KeyValue::new("ofe.namespace", labels.namespace.clone()),
        KeyValue::new("ofe.eventsource", labels.eventsource.clone()),
        KeyValue::new("ofe.event", labels.event.clone()),
    ]);
    let name = format!("ingest {}/{}", labels.eventsource, labels.event);
    let ingest = Span::start(name, kind, &parent, attributes);
    let publish = Span::start(
        format!("publish {subject}"),
        SpanKind::Producer,
        &ingest.context(),
        trace::messaging("send", subject),
    );
    let mut event = event.clone();
    ingest.stamp_origin(&mut event);
    publish.stamp_hop(&mut event);
    (IngestSpans { publish, ingest }, Some(event))
}

/// Most upstream messages an adapter publishes and acknowledges together.
pub const BATCH: usize = 256;

/// PEM text as given, or read from the file it names (a mounted Secret, say); `field` names
/// the manifest field in the error.
#[cfg(any(feature = "amqp", feature = "mqtt", feature = "redis"))]
pub(crate) fn pem(field: &str, value: &str) -> Result<Vec<u8>, crate::SourceError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|e| crate::SourceError::Invalid {
        path: field.into(),
        message: format!("is neither PEM text nor a readable PEM file (`{value}`: {e})"),
    })
}

/// Exponential backoff between retries: 100 ms doubling up to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: std::time::Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(100);
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);

    /// The delay the next [`Backoff::wait`] sleeps.
    pub fn delay(&self) -> std::time::Duration {
        self.next
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the current delay and doubles it; `false` if `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What [`next_batch`] found.
#[cfg(any(feature = "amqp", feature = "nats"))]
pub(crate) enum Next<T, E> {
    /// Deliveries, and the error that ended the batch early, if one did: the caller stores
    /// and acknowledges the batch first, then returns the error.
    Batch(Vec<T>, Option<E>),
    /// The stream failed before anything arrived.
    Failed(E),
    /// The stream ended (the broker cancelled the consumer, or the connection closed).
    Ended,
    /// Shutdown.
    Stopped,
}

/// Waits for the next delivery of `stream`, then takes whatever else is ready at once, up to
/// `max`: a batch is what arrived while the last one was being stored, so a busy stream is
/// written to the bus in few large writes and a quiet one without waiting.
#[cfg(any(feature = "amqp", feature = "nats"))]
pub(crate) async fn next_batch<T, E, S>(
    stream: &mut S,
    max: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Next<T, E>
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
{
    use futures::{FutureExt as _, StreamExt as _};
    let first = tokio::select! {
        () = shutdown.cancelled() => return Next::Stopped,
        next = stream.next() => next,
    };
    let mut batch = match first {
        None => return Next::Ended,
        Some(Err(e)) => return Next::Failed(e),
        Some(Ok(first)) => vec![first],
    };
    while batch.len() < max {
        match stream.next().now_or_never() {
            Some(Some(Ok(item))) => batch.push(item),
            Some(Some(Err(e))) => return Next::Batch(batch, Some(e)),
            // Nothing ready, or the end, which the next wait reports.
            Some(None) | None => break,
        }
    }
    Next::Batch(batch, None)
}

/// Publishes until the bus has the event; `false` if shutdown or a closed bus stopped it.
pub async fn publish_with_retry(
    bus: &dyn ofe_core::EventBus,
    subject: &ofe_core::Subject,
    event: &Event,
    labels: &EventLabels,
    metrics: &crate::SourceMetrics,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let (spans, stamped) =
        trace_ingest(event, labels, subject, ofe_core::trace::SpanKind::Consumer, None);
    let event = stamped.as_ref().unwrap_or(event);
    let mut backoff = Backoff::default();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match bus.publish(subject, event).await {
            Ok(published) => {
                if tries > 1 {
                    tracing::info!(subject = %subject, tries, "published after the bus refused it");
                }
                if published.duplicate {
                    tracing::debug!(subject = %subject, "bus already had this event");
                }
                metrics
                    .published(labels, published.duplicate, || std::sync::Arc::new(event.clone()));
                return true;
            }
            Err(ofe_core::BusError::Closed) => return false,
            Err(error) => {
                metrics.publish_errors.get_or_create(labels).inc();
                spans.publish_failed(&error);
                // Said once per event; the retries that follow are counted in
                // `ofe_source_publish_errors_total`, not logged one by one.
                if tries == 1 {
                    tracing::warn!(error = %ofe_core::Report(&error), subject = %subject, "publish failed; retrying with backoff until the bus takes it");
                } else {
                    tracing::debug!(error = %ofe_core::Report(&error), subject = %subject, tries, retry_in = ?backoff.delay(), "publish failed again");
                }
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader as _;

    fn origin() -> Origin {
        Origin::new(
            EventLabels::new("ns", "es", "webhook", "e"),
            "io.openfunction.events.test",
            uuid::Uuid::from_u128(7),
        )
    }

    #[test]
    fn binary_mode_keeps_attributes() {
        let message = Message {
            payload: b"{\"a\":1}",
            content_type: Some("application/json"),
            binary: vec![
                ("specversion", "1.0"),
                ("id", "abc"),
                ("source", "/car"),
                ("type", "t"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ],
            subject: "topic",
            ..Message::default()
        };
        let event = origin().event(&message);
        assert_eq!((event.id(), event.ty()), ("abc", "t"));
        assert_eq!(event.source().as_str(), "/car");
        assert!(event.subject().is_none(), "a CloudEvent's attributes are kept as sent");
        assert!(event.extension("traceparent").is_some());
        assert_eq!(event.extension(EXT_EVENT).map(|v| v.to_string()).as_deref(), Some("e"));
    }

    #[test]
    fn structured_mode_without_content_type() {
        let payload = br#"{"specversion":"1.0","id":"x1","source":"/s","type":"t","data":{"k":2}}"#;
        let event = origin().event(&Message { payload, subject: "a/b", ..Message::default() });
        assert_eq!(event.id(), "x1");
        assert!(event.extension(EXT_INVALID).is_none());
    }

    #[test]
    fn malformed_cloudevent_is_flagged_not_dropped() {
        let payload = br#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        let message = Message {
            payload,
            subject: "a/b",
            identity: Some(b"p0/7".to_vec()),
            ..Message::default()
        };
        let event = origin().event(&message);
        let reason = event.extension(EXT_INVALID).map(|v| v.to_string()).unwrap_or_default();
        assert!(reason.contains("malformed structured CloudEvent"), "{reason}");
        assert_eq!(event.ty(), "io.openfunction.events.test");
        assert_eq!(event::data_bytes(&event), payload.to_vec(), "the payload is kept");
    }

    #[test]
    fn plain_payloads_get_deterministic_attributes() {
        let message = |identity: &[u8]| Message {
            payload: b"{\"speed\":130}",
            subject: "fleet/v1",
            identity: Some(identity.to_vec()),
            extensions: vec![("partitionkey", "v1".into())],
            ..Message::default()
        };
        let (a, b, c) = (
            origin().event(&message(b"p0/1")),
            origin().event(&message(b"p0/1")),
            origin().event(&message(b"p0/2")),
        );
        assert_eq!(a.id(), b.id(), "a redelivery has the same id");
        assert_ne!(a.id(), c.id());
        assert_eq!(a.subject(), Some("fleet/v1"));
        assert_eq!(a.datacontenttype(), Some("application/json"));
        assert_eq!(a.extension("partitionkey").map(|v| v.to_string()).as_deref(), Some("v1"));
        assert_eq!(a.source().as_str(), origin().source());
        let binary = origin().event(&Message {
            payload: &[0xff, 0x00],
            subject: "s p%ace",
            ..Message::default()
        });
        assert_eq!(binary.datacontenttype(), Some("application/octet-stream"));
        assert_eq!(binary.subject(), Some("s p%ace"), "the subject survives escaping");
    }
}
