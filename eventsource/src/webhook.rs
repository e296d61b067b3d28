//! The HTTP webhook EventSource (an ofe addition).
//!
//! One listener serves every webhook of the process; each is found by its path. A request is:
//! - a CloudEvent in **binary** mode (`ce-specversion` header): its attributes and extensions
//!   (`traceparent` included) are kept as sent;
//! - a CloudEvent in **structured** mode (`application/cloudevents+json`), kept as sent;
//! - a **batch** (`application/cloudevents-batch+json`), each event kept as sent;
//! - anything else, which becomes the data of a new event: type
//!   `io.openfunction.events.webhook`, the EventSource's `source`, the event name as `subject`,
//!   the request's content type, and an id derived from the sender's `Idempotency-Key`,
//!   `X-Request-Id` or `X-GitHub-Delivery` header when there is one (so a retried delivery is a
//!   detectable duplicate), else a random one.
//!
//! Every event also gets the `ofenamespace`, `ofeeventsource` and `ofeevent` extensions. The
//! answer is 202 only after the bus has every event durably; 503 (with `Retry-After`) when the
//! bus cannot take them; 400, 401, 404, 405 or 413 with the reason otherwise. A malformed
//! CloudEvent is refused with 400 rather than published: the sender learns at once, and
//! nothing invalid enters the bus.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cloudevents::Event;
use hmac::{Hmac, Mac};
use ofe_crds::EventSource;
use ofe_eventbus::event::{EXT_EVENT, EXT_EVENTSOURCE, EXT_NAMESPACE};
use ofe_eventbus::{EventBus, Subject, event};
use sha2::Sha256;

use crate::SourceError;
use crate::cron::source_uri;
use crate::metrics::{EventLabels, SourceMetrics};

/// The CloudEvents `type` of events made from plain webhook requests.
pub const WEBHOOK_EVENT_TYPE: &str = "io.openfunction.events.webhook";

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
    labels: EventLabels,
    path: String,
    max_payload: usize,
    auth: Auth,
    subject: Subject,
    bus: Arc<dyn EventBus>,
}

impl Webhook {
    /// The path it is served at.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The webhooks of `es`, publishing to `bus`.
pub fn webhooks(es: &EventSource, bus: &Arc<dyn EventBus>) -> Result<Vec<Webhook>, SourceError> {
    let namespace = es.metadata.namespace.clone().unwrap_or_else(|| "default".into());
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
            labels: EventLabels {
                namespace: namespace.clone(),
                eventsource: name.clone(),
                event: event.clone(),
            },
            path: spec.path.clone().unwrap_or_else(|| format!("/{namespace}/{name}/{event}")),
            max_payload: spec
                .max_payload_size
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            auth,
            subject: Subject::event(&namespace, &name, event),
            bus: bus.clone(),
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
                path: format!("spec.webhook.{}.path", hook.labels.event),
                message: format!(
                    "`{}` is already served for EventSource `{}` event `{}`; give one of them another path",
                    hook.path, other.labels.eventsource, other.labels.event
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
    for event in &events {
        metrics.received.get_or_create(&hook.labels).inc();
        match hook.bus.publish(&hook.subject, event).await {
            Ok(p) if p.duplicate => {
                metrics.duplicates.get_or_create(&hook.labels).inc();
            }
            Ok(_) => {
                metrics.published.get_or_create(&hook.labels).inc();
            }
            Err(error) => {
                metrics.publish_errors.get_or_create(&hook.labels).inc();
                tracing::warn!(%error, path = %hook.path, "webhook event not accepted: the bus is unavailable");
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
        format!("{{\"accepted\":{}}}\n", events.len()),
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

/// The events a request carries, or why it is malformed.
fn to_events(hook: &Webhook, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let media =
        content_type.as_deref().map(|c| c.split(';').next().unwrap_or(c).trim().to_string());
    let mut events = match media.as_deref() {
        Some("application/cloudevents-batch+json") => serde_json::from_slice::<Vec<Event>>(body)
            .map_err(|e| format!("not a CloudEvents batch: {e}"))?,
        Some("application/cloudevents+json") => {
            vec![
                serde_json::from_slice::<Event>(body)
                    .map_err(|e| format!("not a structured CloudEvent: {e}"))?,
            ]
        }
        _ if headers.contains_key("ce-specversion") => {
            let mut attributes = Vec::new();
            for (name, value) in headers {
                if let Some(attribute) = name.as_str().strip_prefix("ce-") {
                    let value =
                        value.to_str().map_err(|_| format!("header `{name}` is not text"))?;
                    attributes.push((attribute, value));
                }
            }
            let raw_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            vec![
                event::from_binary(attributes, raw_type, body)
                    .map_err(|e| format!("not a binary-mode CloudEvent: {e}"))?,
            ]
        }
        _ => vec![wrap(hook, headers, body)?],
    };
    for event in &mut events {
        event.set_extension(EXT_NAMESPACE, hook.labels.namespace.clone());
        event.set_extension(EXT_EVENTSOURCE, hook.labels.eventsource.clone());
        event.set_extension(EXT_EVENT, hook.labels.event.clone());
    }
    Ok(events)
}

/// A new event whose data is the request body.
fn wrap(hook: &Webhook, headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    const ID_NAMESPACE: uuid::Uuid =
        uuid::Uuid::from_u128(0x6f66_655f_7765_6268_8000_0000_0000_0001);
    let delivery =
        DELIVERY_ID_HEADERS.iter().find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
    let id = match delivery {
        Some(key) => {
            let scoped = format!("{}/{}", hook.path, key);
            uuid::Uuid::new_v5(&ID_NAMESPACE, scoped.as_bytes())
        }
        None => uuid::Uuid::new_v4(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let (ns, es) = (&hook.labels.namespace, &hook.labels.eventsource);
    event::from_binary(
        [
            ("specversion", "1.0"),
            ("id", id.to_string().as_str()),
            ("source", source_uri(ns, es).as_str()),
            ("type", WEBHOOK_EVENT_TYPE),
            ("subject", hook.labels.event.as_str()),
            ("time", chrono::Utc::now().to_rfc3339().as_str()),
        ],
        Some(&content_type),
        body,
    )
    .map_err(|e| format!("cannot make an event of this request: {e}"))
}
