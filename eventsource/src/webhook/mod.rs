//! The HTTP webhook EventSource (an ofe addition).
//!
//! One listener serves every webhook of the process; each is found by its path. A request is:
//! - a CloudEvent in **binary** mode (`ce-specversion` header): its attributes and extensions
//!   (`traceparent` included) are kept as sent;
//! - a CloudEvent in **structured** mode (`application/cloudevents+json`), kept as sent;
//! - a **batch** (`application/cloudevents-batch+json`), each event kept as sent;
//! - anything else, which becomes the data of a new event: type
//!   `io.openfunction.events.webhook`, the EventSource's `source`, the event name as `subject`,
//!   the request's content type (else `application/json` for a JSON body, else
//!   `application/octet-stream`), and an id derived from the sender's `Idempotency-Key`,
//!   `X-Request-Id` or `X-GitHub-Delivery` header when there is one (so a retried delivery is a
//!   detectable duplicate), else a random one.
//!
//! Every event also gets the `ofenamespace`, `ofeeventsource` and `ofeevent` extensions. The
//! answer is 202 only after the bus has every event durably; 503 (with `Retry-After`) when the
//! bus cannot take them; 400, 401, 404, 405 or 413 with the reason otherwise. A malformed
//! CloudEvent is refused with 400 rather than published: the sender learns at once, and
//! nothing invalid enters the bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cloudevents::Event;
use hmac::{Hmac, Mac};
use ofe_core::trace::SpanKind;
use ofe_core::{EventBus, Subject};
use ofe_crds::EventSource;
use sha2::Sha256;

use crate::SourceError;
use crate::ingest::{Message, Origin};
use crate::metrics::SourceMetrics;

/// The CloudEvents `type` of events made from plain webhook requests.
pub const WEBHOOK_EVENT_TYPE: &str = "io.openfunction.events.webhook";

/// UUID namespace of ids derived from a sender's delivery id.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_7765_6268_8000_0000_0000_0001);

/// The default largest body, 1 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Headers a sender may use to name its delivery; the first present one makes the event id.
const DELIVERY_ID_HEADERS: &[&str] = &["idempotency-key", "x-request-id", "x-github-delivery"];

/// How a webhook authenticates requests.
#[derive(Clone, Debug)]
enum Auth {
    None,
    Bearer(String),
    Hmac { secret: Vec<u8>, header: HeaderName },
}

/// One webhook, ready to serve.
#[derive(Clone)]
pub struct Webhook {
    origin: Origin,
    path: String,
    max_payload: usize,
    auth: Auth,
    subject: Subject,
    bus: Arc<dyn EventBus>,
    /// `rateLimit`, shared by the clones that serve it.
    limit: Option<Arc<Mutex<Bucket>>>,
    /// When a refusal was last logged, and how many went unlogged since.
    refusals: Arc<Mutex<(Option<std::time::Instant>, u64)>>,
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
struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
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

impl Webhook {
    /// The path it is served at.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The webhooks of `es`, publishing to `bus`.
pub fn webhooks(es: &EventSource, bus: &Arc<dyn EventBus>) -> Result<Vec<Webhook>, SourceError> {
    let namespace = ofe_crds::manifest::namespace_of(&es.metadata).to_string();
    let name = es.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (event, spec) in es.spec.webhook.iter().flatten() {
        let field = format!("spec.webhook.{event}");
        let auth = match (&spec.bearer_token, &spec.hmac) {
            (Some(token), _) => Auth::Bearer(token.clone()),
            (None, Some(hmac)) => {
                let header = hmac.header.as_deref().unwrap_or("X-Hub-Signature-256");
                let header = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                    .map_err(|_| SourceError::Invalid {
                        path: format!("{field}.hmac.header"),
                        message: format!("`{header}` is not a valid HTTP header name"),
                    })?;
                Auth::Hmac { secret: hmac.secret.clone().into_bytes(), header }
            }
            (None, None) => Auth::None,
        };
        out.push(Webhook {
            subject: Subject::event(&namespace, &name, event),
            origin: Origin::of(
                &namespace,
                &name,
                "webhook",
                event,
                WEBHOOK_EVENT_TYPE,
                ID_NAMESPACE,
            ),
            path: spec.path.clone().unwrap_or_else(|| format!("/{namespace}/{name}/{event}")),
            max_payload: spec
                .max_payload_size
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            auth,
            bus: bus.clone(),
            limit: spec.rate_limit.map(|rate| Arc::new(Mutex::new(Bucket::new(rate)))),
            refusals: Arc::default(),
        });
    }
    Ok(out)
}

struct Routes {
    by_path: HashMap<String, Webhook>,
    metrics: SourceMetrics,
}

/// The router serving `hooks`. Two webhooks on one path are an error.
pub fn router(hooks: Vec<Webhook>, metrics: SourceMetrics) -> Result<Router, SourceError> {
    let mut by_path = HashMap::new();
    let mut largest = DEFAULT_MAX_PAYLOAD;
    for hook in hooks {
        largest = largest.max(hook.max_payload);
        if let Some(other) = by_path.insert(hook.path.clone(), hook.clone()) {
            return Err(SourceError::Invalid {
                path: format!("spec.webhook.{}.path", hook.origin.labels.event),
                message: format!(
                    "`{}` is already served for EventSource `{}` event `{}`; give one of them another path",
                    hook.path, other.origin.labels.eventsource, other.origin.labels.event
                ),
            });
        }
    }
    let routes = Arc::new(Routes { by_path, metrics });
    Ok(Router::new().fallback(handle).layer(DefaultBodyLimit::max(largest)).with_state(routes))
}

fn reply(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], reason.into() + "\n")
        .into_response()
}

async fn handle(
    State(routes): State<Arc<Routes>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hook) = routes.by_path.get(uri.path()) else {
        return reply(StatusCode::NOT_FOUND, format!("no webhook is served at {}", uri.path()));
    };
    if method != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "webhooks accept POST only");
    }
    // Before any other work, so a flood costs as little as it can.
    if let Some(limit) = &hook.limit
        && let Some(refusal) = limit.lock().ok().and_then(|mut bucket| bucket.refusal())
    {
        return refusal;
    }
    if body.len() > hook.max_payload {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body has {} bytes; this webhook accepts at most {}",
                body.len(),
                hook.max_payload
            ),
        );
    }
    if let Err(reason) = authenticate(&hook.auth, &headers, &body) {
        return reply(StatusCode::UNAUTHORIZED, reason);
    }
    let events = match to_events(hook, &headers, &body) {
        Ok(events) => events,
        Err(reason) => return reply(StatusCode::BAD_REQUEST, reason),
    };
    let metrics = &routes.metrics;
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
            Ok(p) => metrics.published(&hook.origin.labels, p.duplicate, || event),
            Err(error) => {
                spans.refused(&error);
                metrics.publish_errors.get_or_create(&hook.origin.labels).inc();
                match hook.refusal_to_log() {
                    Some(refused) => {
                        tracing::warn!(%error, path = %hook.path, refused, "webhook events not accepted: the bus is unavailable (said at most every 10 s)")
                    }
                    None => {
                        tracing::debug!(%error, path = %hook.path, "webhook event not accepted")
                    }
                }
                let mut response = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the event bus cannot take the event now ({error}); retry later"),
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
    Ok(vec![hook.origin.strict_event(&message)?])
}
