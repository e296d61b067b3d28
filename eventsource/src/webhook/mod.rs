//! The HTTP webhook EventSource (an ofe addition).
//!
//! One listener serves every webhook of the process; each is found by its path. A request is:
//! Every webhook of the process is served by one listener (see [`crate::routes`]); each
//! claims its path when it starts and gives it back when it stops. A request is:
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

mod request;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::HeaderName;
use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::{EventSource, WebhookSpec};

use crate::ingest::Origin;
use crate::routes::RouteClaim;
use crate::{Source, SourceContext, SourceError, SourceName};
use request::{Auth, Bucket, Webhook};

/// The CloudEvents `type` of events made from plain webhook requests.
pub const WEBHOOK_EVENT_TYPE: &str = "io.openfunction.events.webhook";

/// UUID namespace of ids derived from a sender's delivery id.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f66_655f_7765_6268_8000_0000_0000_0001);

/// The default largest body, 1 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The `webhook` kind: `spec.webhook`, one [`WebhookSource`] per event.
pub struct Kind;

impl crate::SourceKind for Kind {
    fn field(&self) -> &'static str {
        "webhook"
    }

    fn sources(
        &self,
        es: &EventSource,
        at: SourceName<'_>,
    ) -> Vec<Result<Box<dyn Source>, SourceError>> {
        crate::source::per_event(es.spec.webhook.as_ref(), at, WebhookSource::new)
    }

    fn check(&self, es: &EventSource, at: SourceName<'_>) -> Vec<Diagnostic> {
        let events = es.spec.webhook.as_ref();
        crate::source::check_per_event("webhook", events, at, check, WebhookSource::new)
    }
}

/// One webhook event: its settings until it starts, then its claim on its path.
pub struct WebhookSource {
    origin: Origin,
    path: String,
    max_payload: usize,
    auth: Auth,
    rate_limit: Option<u32>,
    claim: Option<RouteClaim>,
}

impl WebhookSource {
    /// Webhook `event` of EventSource `eventsource` in `namespace`, as `spec` sets it.
    pub fn new(
        namespace: &str,
        eventsource: &str,
        event: &str,
        spec: &WebhookSpec,
    ) -> Result<Self, SourceError> {
        let field = format!("spec.webhook.{event}");
        crate::source::checked(check(&field, spec))?;
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
        Ok(Self {
            origin: Origin::of(
                namespace,
                eventsource,
                "webhook",
                event,
                WEBHOOK_EVENT_TYPE,
                ID_NAMESPACE,
            )
            .with_schema(&format!("spec.webhook.{event}"), spec.schema.as_ref())?,
            path: spec
                .path
                .clone()
                .unwrap_or_else(|| format!("/{namespace}/{eventsource}/{event}")),
            max_payload: spec
                .max_payload_size
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            auth,
            rate_limit: spec.rate_limit,
            claim: None,
        })
    }

    /// The path it is served at.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[async_trait]
impl Source for WebhookSource {
    fn part(&self) -> String {
        self.origin.labels.part()
    }

    fn bind(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        let labels = &self.origin.labels;
        let owner = format!(
            "EventSource `{}/{}` event `{}`",
            labels.namespace, labels.eventsource, labels.event
        );
        let hook = Webhook {
            subject: self.origin.subject(),
            origin: self.origin.clone(),
            path: self.path.clone(),
            max_payload: self.max_payload,
            auth: self.auth.clone(),
            bus: context.bus.clone(),
            metrics: context.metrics.clone(),
            limit: self.rate_limit.map(|rate| Mutex::new(Bucket::new(rate))),
            refusals: Mutex::default(),
        };
        let claim = context.routes.claim(&self.path, owner, Arc::new(hook)).map_err(|taken| {
            SourceError::Invalid {
                path: format!("spec.webhook.{}.path", labels.event),
                message: taken.to_string(),
            }
        })?;
        self.claim = Some(claim);
        Ok(())
    }

    async fn run(self: Box<Self>, context: SourceContext) {
        tracing::info!(path = %self.path, "serving webhook");
        context.reporter.up("Listening");
        context.shutdown.cancelled().await;
        // Dropping the claim (with `self`) stops serving the path.
    }
}

/// The checks of one `spec.webhook` event's fields on their own, each found at once (`ofe
/// validate` lists them all); `path` is the event's, e.g. `spec.webhook.<event>`. Making the
/// source runs them first, then compiles what they let through.
pub(crate) fn check(path: &str, hook: &WebhookSpec) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if hook.path.as_deref().is_some_and(|p| !p.starts_with('/') || p.contains(char::is_whitespace))
    {
        out.push(Diagnostic::error(
            format!("{path}.path"),
            "must start with `/` and contain no spaces",
        ));
    }
    if hook.max_payload_size.is_some_and(|n| n < 1) {
        out.push(Diagnostic::error(format!("{path}.maxPayloadSize"), "must be at least 1 byte"));
    }
    if hook.rate_limit == Some(0) {
        out.push(Diagnostic::error(
            format!("{path}.rateLimit"),
            "is 0, which refuses every request; allow at least 1 per second, or remove it for \
             no limit",
        ));
    }
    if hook.bearer_token.is_some() && hook.hmac.is_some() {
        out.push(Diagnostic::error(path, "sets both bearerToken and hmac; keep one"));
    }
    if let Some(hmac) = &hook.hmac
        && hmac.secret.is_empty()
        && !hmac.secret_key_ref.contains_key("secret")
    {
        out.push(Diagnostic::error(
            format!("{path}.hmac.secret"),
            "is empty; set the shared secret, or read it from a Secret with \
             `secretKeyRef: {secret: {name: ..., key: ...}}`",
        ));
    }
    if hook.bearer_token.as_deref().is_some_and(str::is_empty) {
        out.push(Diagnostic::error(
            format!("{path}.bearerToken"),
            "is empty; set a token or remove the field",
        ));
    }
    out
}
