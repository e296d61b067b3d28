//! How a webhook answers one request: rate limit, authentication, decoding, and the bus
//! publish that comes before the answer.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::Event;
use hmac::{Hmac, Mac};
use ofe_core::trace::SpanKind;
use ofe_core::{EventBus, Subject};
use sha2::Sha256;

use crate::ingest::{Message, Origin};
use crate::metrics::SourceMetrics;
use crate::routes::{PushHandler, PushRequest, reply};

/// Headers a sender may use to name its delivery; the first present one makes the event id.
const DELIVERY_ID_HEADERS: &[&str] = &["idempotency-key", "x-request-id", "x-github-delivery"];

/// How a webhook authenticates requests.
#[derive(Clone, Debug)]
pub(super) enum Auth {
    None,
    Bearer(String),
    Hmac { secret: Vec<u8>, header: HeaderName },
}

/// One webhook, serving its path.
pub(super) struct Webhook {
    pub(super) origin: Origin,
    pub(super) path: String,
    pub(super) max_payload: usize,
    pub(super) auth: Auth,
    pub(super) subject: Subject,
    pub(super) bus: Arc<dyn EventBus>,
    pub(super) metrics: SourceMetrics,
    /// `rateLimit`.
    pub(super) limit: Option<Mutex<Bucket>>,
    /// When a refusal was last logged, and how many went unlogged since.
    pub(super) refusals: Mutex<(Option<std::time::Instant>, u64)>,
}

/// How often a webhook logs that the bus refuses its events: a full or unreachable bus
/// refuses every request, and each is answered 503 with the reason, so the log says it once
/// in this interval, with the count, instead of once per request.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Webhook {
    /// Counts a refusal; the number of refusals to report when one should be logged now.
    fn refusal_to_log(&self) -> Option<u64> {
        let mut guard = self.refusals.lock().ok()?;
        let (last, unlogged) = &mut *guard;
        *unlogged += 1;
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

/// A token bucket: `rate` requests a second, in bursts of as many.
pub(super) struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self { rate, tokens: rate, at: std::time::Instant::now() }
    }

    /// Takes a token; when there is none, the 429 to answer, saying when one is free.
    fn refusal(&mut self) -> Option<Response> {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        let mut response = reply(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this webhook takes at most {} requests a second; retry later", self.rate),
        );
        let seconds = wait.ceil().max(1.0) as u64;
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        Some(response)
    }
}

#[async_trait]
impl PushHandler for Webhook {
    fn max_body(&self) -> usize {
        self.max_payload
    }

    async fn handle(&self, request: PushRequest) -> Response {
        let PushRequest { method, headers, body, received, .. } = request;
        let hook = self;
        if method != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "webhooks accept POST only");
        }
        // Before any other work, so a flood costs as little as it can.
        if let Some(limit) = &hook.limit
            && let Some(refusal) = limit.lock().ok().and_then(|mut bucket| bucket.refusal())
        {
            return refusal;
        }
        // The body is within `max_payload`: the listener read it with that limit.
        if let Err(reason) = authenticate(&hook.auth, &headers, &body) {
            return reply(StatusCode::UNAUTHORIZED, reason);
        }
        let events = match to_events(hook, &headers, &body) {
            Ok(events) => events,
            Err(reason) => {
                hook.metrics.invalid.get_or_create(&hook.origin.labels).inc();
                return reply(StatusCode::BAD_REQUEST, reason);
            }
        };
        let metrics = &hook.metrics;
        let count = events.len();
        // The request's own trace context is the hop before this one.
        let parent = ofe_core::trace::enabled()
            .then(|| headers.get("traceparent").and_then(|v| v.to_str().ok()))
            .flatten()
            .and_then(|p| {
                let state = headers.get("tracestate").and_then(|v| v.to_str().ok());
                ofe_core::trace::remote(p, state)
            });
        for event in events {
            metrics.received.get_or_create(&hook.origin.labels).inc();
            let (spans, stamped) = crate::ingest::trace_ingest(
                &event,
                &hook.origin.labels,
                &hook.subject,
                SpanKind::Server,
                parent.clone(),
            );
            let event = Arc::new(stamped.unwrap_or(event));
            match hook.bus.publish_shared(&hook.subject, event.clone()).await {
                Ok(p) => {
                    metrics.ingest.observe(|| received.elapsed().as_secs_f64());
                    metrics.published(&hook.origin.labels, p.duplicate, || event);
                }
                Err(error) => {
                    spans.refused(&error);
                    metrics.publish_errors.get_or_create(&hook.origin.labels).inc();
                    match hook.refusal_to_log() {
                        Some(refused) => {
                            tracing::warn!(error = %ofe_core::Report(&error), path = %hook.path, refused, "webhook events not accepted: the bus is unavailable (said at most every 10 s)")
                        }
                        None => {
                            tracing::debug!(error = %ofe_core::Report(&error), path = %hook.path, "webhook event not accepted")
                        }
                    }
                    let mut response = reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the event bus cannot take the event now ({}); retry later",
                            ofe_core::Report(&error)
                        ),
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                    return response;
                }
            }
        }
        (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"accepted\":{count}}}\n"),
        )
            .into_response()
    }
}

fn authenticate(auth: &Auth, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    match auth {
        Auth::None => Ok(()),
        Auth::Bearer(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or("missing `Authorization: Bearer <token>`")?;
            // Compare as HMACs of both, so the time taken says nothing about the token.
            let digest = |s: &str| {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(b"ofe-bearer").map_err(|e| e.to_string())?;
                mac.update(s.as_bytes());
                Ok::<_, String>(mac.finalize().into_bytes())
            };
            if digest(given)? == digest(token)? {
                Ok(())
            } else {
                Err("the bearer token is not accepted".into())
            }
        }
        Auth::Hmac { secret, header } => {
            let given = headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("missing signature header `{header}`"))?;
            let hex = given.strip_prefix("sha256=").unwrap_or(given);
            let signature =
                hex::decode(hex).map_err(|_| format!("`{header}` is not `sha256=<hex>`"))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
            mac.update(body);
            mac.verify_slice(&signature)
                .map_err(|_| format!("the `{header}` signature does not match the body"))
        }
    }
}

/// The events a request carries, or why it is malformed. A batch is parsed here; a single
/// request follows the rules every adapter shares (see [`crate::ingest`]), except that a
/// malformed CloudEvent is refused rather than flagged: HTTP can tell the sender.
fn to_events(hook: &Webhook, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = decode(hook, headers, body)?;
    // The sender can fix what the schema refuses, and send again: refused, whole.
    for (i, event) in events.iter().enumerate() {
        if let Err(violation) = hook.origin.check_schema(event) {
            let which =
                if events.len() > 1 { format!("event {i} of the batch: ") } else { String::new() };
            return Err(format!("{which}the data does not satisfy the schema: {violation}"));
        }
    }
    // A sender that traces with W3C Trace Context headers, but does not set the CloudEvents
    // tracing extension, still has its trace carried on to the functions.
    for name in ["traceparent", "tracestate"] {
        let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else { continue };
        for event in events.iter_mut().filter(|e| e.extension(name).is_none()) {
            event.set_extension(name, value.to_string());
        }
    }
    Ok(events)
}

/// The events of a request, as the sender gave them.
fn decode(hook: &Webhook, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    if media.is_some_and(|m| m.eq_ignore_ascii_case("application/cloudevents-batch+json")) {
        let mut events = serde_json::from_slice::<Vec<Event>>(body)
            .map_err(|e| format!("not a CloudEvents batch: {e}"))?;
        events.iter_mut().for_each(|event| hook.origin.stamp(event));
        return Ok(events);
    }
    let mut binary = Vec::new();
    for (name, value) in headers {
        if let Some(attribute) = name.as_str().strip_prefix("ce-") {
            let value = value.to_str().map_err(|_| format!("header `{name}` is not text"))?;
            binary.push((attribute, value));
        }
    }
    // The sender's delivery id makes the event id, so a retried delivery is a duplicate.
    let identity = DELIVERY_ID_HEADERS
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(|key| format!("{}/{key}", hook.path).into_bytes());
    let message = Message {
        payload: body,
        content_type,
        binary,
        subject: &hook.origin.labels.event,
        identity,
        ..Message::default()
    };
    Ok(vec![hook.origin.strict_event(&message).map_err(|e| e.to_string())?])
}
