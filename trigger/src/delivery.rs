//! Delivering events to destinations: HTTP sinks (CloudEvents binary mode) and bus topics,
//! with retries, linear or exponential backoff, `Retry-After`, and dead letters.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::{AttributesReader, Event};
use ofe_core::trace::{self, KeyValue, SpanKind};
use ofe_core::{EventBus, Subject, event};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

/// Extension attribute on a dead-lettered event: the destination that failed.
pub const EXT_ERROR_DEST: &str = "ofeerrordest";
/// Extension attribute on a dead-lettered event: the last HTTP status (0 for no response).
pub const EXT_ERROR_CODE: &str = "ofeerrorcode";
/// Extension attribute on a dead-lettered event: why the last attempt failed, including up to
/// 1024 bytes of the response body.
pub const EXT_ERROR_REASON: &str = "ofeerrorreason";
/// Extension attribute on a dead-lettered event: how many attempts were made.
pub const EXT_ERROR_ATTEMPTS: &str = "ofeerrorattempts";
/// Extension attribute on a dead-lettered event: the start of the last response body (up to
/// 1024 bytes), base64-encoded, so that any body can travel as an attribute.
pub const EXT_ERROR_DATA: &str = "ofeerrordata";

/// Extension attribute counting how many times ofe has passed an event on to a topic or
/// published a reply derived from it, so that a loop of Triggers stops (as Knative's broker
/// TTL does).
pub const EXT_HOPS: &str = "ofehops";

/// The hop limit when none is configured.
pub const DEFAULT_MAX_HOPS: u32 = 16;

/// The hop count of `event` (0 when it has none).
pub fn hops(event: &Event) -> u32 {
    event.extension(EXT_HOPS).and_then(|v| v.to_string().parse().ok()).unwrap_or(0)
}

/// `event` with its hop count set to `n`.
pub fn with_hops(event: &Event, n: u32) -> Event {
    let mut out = event.clone();
    out.set_extension(EXT_HOPS, i64::from(n));
    out
}

/// How much of a failing response body is kept.
const BODY_LIMIT: usize = 1024;

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backoff {
    /// Retry `n` waits `delay * 2^(n-1)`.
    #[default]
    Exponential,
    /// Retry `n` waits `delay * n`.
    Linear,
}

/// Retry settings for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Default 5.
    pub retries: u32,
    /// How the wait grows. Default exponential.
    pub backoff: Backoff,
    /// The wait before the first retry. Default 200 ms.
    pub delay: Duration,
    /// Longest wait between attempts. Default 1 hour.
    pub max_backoff: Duration,
    /// Timeout of one HTTP attempt. Default 30 s.
    pub timeout: Duration,
    /// Longest wait a `Retry-After` header may ask for. Default 60 s; zero ignores the header.
    pub retry_after_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            backoff: Backoff::Exponential,
            delay: Duration::from_millis(200),
            max_backoff: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `n` (1-based), capped at `max_backoff`.
    pub fn delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        let wait = match self.backoff {
            Backoff::Exponential => self.delay.saturating_mul(2u32.saturating_pow(n - 1)),
            Backoff::Linear => self.delay.saturating_mul(n),
        };
        wait.min(self.max_backoff)
    }

    /// The wait before retry `n` after `failure`: the backoff, or longer when the destination
    /// asked for it with `Retry-After` (up to `retry_after_max`).
    pub fn wait_after(&self, n: u32, failure: &Failure) -> Duration {
        let asked = failure.retry_after.map_or(Duration::ZERO, |d| d.min(self.retry_after_max));
        self.delay(n).max(asked)
    }
}

/// Where an event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An HTTP endpoint; the event is POSTed in CloudEvents binary mode.
    Http {
        /// Absolute URL, parsed once rather than for every request.
        url: reqwest::Url,
    },
    /// A topic on the bus.
    Topic {
        /// Topic name, as written in the manifest.
        name: String,
        /// Its subject.
        subject: Subject,
    },
}

impl Destination {
    /// An HTTP endpoint at `url`; the error says why it is not an absolute http(s) URL, as
    /// `ofe validate` does.
    pub fn http(url: &str) -> Result<Self, String> {
        ofe_crds::validate::http_url(url).map(|url| Self::Http { url })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { url } => f.write_str(&redacted(url)),
            Self::Topic { name, .. } => write!(f, "topic:{name}"),
        }
    }
}

/// `url` as logs, the tap and spans show it: a password in it, and the query's values, which
/// often carry tokens, become `***`.
pub fn redacted(url: &reqwest::Url) -> String {
    if url.password().is_none() && url.query().is_none() {
        return url.to_string();
    }
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let names: Vec<String> = url.query_pairs().map(|(name, _)| name.into_owned()).collect();
        url.query_pairs_mut().clear().extend_pairs(names.iter().map(|n| (n.as_str(), "***")));
    }
    url.to_string()
}

/// Why one attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Failure {
    /// HTTP status, if a response came back.
    pub code: Option<u16>,
    /// Human-readable reason, with the start of the response body.
    pub reason: String,
    /// Whether trying again may help: 5xx, 404, 408, 409, 429 and network errors.
    pub retryable: bool,
    /// The wait a 429 or 503 response asked for with `Retry-After`.
    pub retry_after: Option<Duration>,
    /// The start of the response body, up to 1024 bytes.
    pub body: Vec<u8>,
}

impl Failure {
    /// A failure without a response (network error, bus error), worth retrying.
    pub fn transient(reason: String) -> Self {
        Self { reason, retryable: true, ..Self::default() }
    }
}

/// The wait a `Retry-After` value asks for: delta-seconds, or an HTTP date (from `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The outcome of delivering with retries.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered after this many attempts; with the destination's reply, when it answered
    /// with a CloudEvent.
    Delivered(u32, Option<Box<Reply>>),
    /// Gave up after this many attempts.
    Failed(Failure, u32),
    /// Shutdown interrupted the retries; the event must be delivered again later.
    Interrupted,
}

/// What a sink answered beyond success: a CloudEvent, or one that could not be read.
pub type Reply = Result<Event, String>;

/// Whether a status is worth retrying (the same set as Knative Eventing).
pub fn is_retryable(status: u16) -> bool {
    status >= 500 || matches!(status, 404 | 408 | 409 | 429)
}

pub use crate::sink_client::HttpClient;

/// How the delivery client proves who it talks to, and who it is, over HTTPS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkTls {
    /// PEM certificates of CAs to trust besides the system's (a cluster's private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// A PEM client certificate and key, for sinks that ask for one (mutual TLS).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Why the delivery client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A certificate or key file is unreadable or not PEM; names the file and the fix.
    #[error("{0}")]
    Tls(String),
    /// The HTTP client itself.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// The HTTP client deliveries use: a keep-alive connection pool, trusting the system's CAs.
/// Clones share it.
pub fn http_client() -> Result<HttpClient, ClientError> {
    http_client_with(&SinkTls::default())
}

/// [`http_client`] with `tls`: more CAs to trust, and a client certificate.
pub fn http_client_with(tls: &SinkTls) -> Result<HttpClient, ClientError> {
    Ok(HttpClient::new(rustls_config(tls, &SINK_TLS_NAMES)?)?)
}

/// What a TLS setting is called where the user gives it, for errors: a flag, an env var.
#[derive(Clone, Copy, Debug)]
pub struct TlsNames {
    /// The CA file's name.
    pub ca: &'static str,
    /// The client certificate file's name.
    pub cert: &'static str,
    /// The client key file's name.
    pub key: &'static str,
}

const SINK_TLS_NAMES: TlsNames =
    TlsNames { ca: "--sink-ca-file", cert: "--sink-cert-file", key: "--sink-key-file" };

/// A rustls configuration on the ring provider (the one every TLS connection of ofe uses):
/// the system's roots plus `tls.ca_file`, and the client certificate if any; errors name the
/// settings as `names` says.
pub fn rustls_config(tls: &SinkTls, names: &TlsNames) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| ClientError::Tls(format!("cannot read {what} {}: {e}", path.display())))
    };
    let certs = |path: &std::path::Path, what: &str| {
        let found = CertificateDer::pem_slice_iter(&read(path, what)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("{what} {} is not PEM: {e}", path.display())))?;
        if found.is_empty() {
            return Err(ClientError::Tls(format!(
                "{what} {} holds no certificate; give a PEM file",
                path.display()
            )));
        }
        Ok(found)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(ca) = &tls.ca_file {
        for cert in certs(ca, names.ca)? {
            roots.add(cert).map_err(|e| ClientError::Tls(format!("{}: {e}", names.ca)))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        Some((cert, key)) => {
            let chain = certs(cert, names.cert)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key, names.key)?).map_err(|e| {
                ClientError::Tls(format!("{} {} is not a PEM key: {e}", names.key, key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", names.cert)))?
        }
        None => builder.with_no_client_auth(),
    };
    // reqwest speaks HTTP/1.1 here; offer it, as its own configuration would.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Sends events to destinations. Cheap to clone; the HTTP connection pool is shared.
#[derive(Clone)]
pub struct Deliverer {
    http: HttpClient,
    bus: Arc<dyn EventBus>,
    max_hops: u32,
    /// Where the outcome of each attempt at a subscriber's own destinations is reported.
    health: Option<Arc<crate::delivering::DeliveryHealth>>,
}

impl Deliverer {
    /// A deliverer with its own HTTP connection pool, publishing topics to `bus`.
    pub fn new(bus: Arc<dyn EventBus>) -> Result<Self, ClientError> {
        Ok(Self::with_client(http_client()?, bus))
    }

    /// A deliverer using `http` (a shared connection pool), publishing topics to `bus`.
    pub fn with_client(http: HttpClient, bus: Arc<dyn EventBus>) -> Self {
        Self { http, bus, max_hops: DEFAULT_MAX_HOPS, health: None }
    }

    /// The same deliverer, reporting how attempts at the subscriber's destinations go (see
    /// [`Deliverer::send_reported`]) to `health`.
    pub fn with_health(mut self, health: crate::delivering::DeliveryHealth) -> Self {
        self.health = Some(Arc::new(health));
        self
    }

    /// The same deliverer, refusing to pass on events that already made `max_hops` hops.
    pub fn with_max_hops(mut self, max_hops: u32) -> Self {
        self.max_hops = max_hops;
        self
    }

    /// The hop limit.
    pub fn max_hops(&self) -> u32 {
        self.max_hops
    }

    /// The bus topics are published to.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// One attempt; on success, the reply if the destination answered with a CloudEvent.
    pub async fn send_once(
        &self,
        dest: &Destination,
        event: &Event,
        timeout: Duration,
    ) -> Result<Option<Box<Reply>>, Failure> {
        self.attempt(dest, event, timeout, 1).await
    }

    /// Attempt number `n`, traced as a child of the current span when tracing is on.
    async fn attempt(
        &self,
        dest: &Destination,
        event: &Event,
        timeout: Duration,
        n: u32,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let span = attempt_span(dest, n);
        let result = self.attempt_traced(dest, event, timeout, &span).await;
        if let Err(failure) = &result {
            if let Some(code) = failure.code {
                span.set(KeyValue::new("error.type", code.to_string()));
            }
            span.fail(failure.reason.clone());
        }
        result
    }

    async fn attempt_traced(
        &self,
        dest: &Destination,
        event: &Event,
        timeout: Duration,
        span: &trace::Span,
    ) -> Result<Option<Box<Reply>>, Failure> {
        match dest {
            Destination::Http { url } => {
                let request = || {
                    let (mut headers, body) = binary_mode(event);
                    // The function continues this attempt's span, as it would behind any
                    // OpenTelemetry-instrumented client.
                    if let Some((parent, state)) = span.traceparent() {
                        if let Ok(value) = HeaderValue::try_from(parent) {
                            headers.insert(TRACEPARENT, value);
                        }
                        match HeaderValue::try_from(state) {
                            Ok(value) if !value.is_empty() => {
                                drop(headers.insert(TRACESTATE, value));
                            }
                            _ => drop(headers.remove(TRACESTATE)),
                        }
                    }
                    (headers, body)
                };
                let response =
                    self.http.post(url, request, timeout).await.map_err(Failure::transient)?;
                let status = response.status;
                span.set(KeyValue::new("http.response.status_code", i64::from(status)));
                if (200..300).contains(&status) {
                    return Ok(read_reply(&response.headers, &response.body).map(Box::new));
                }
                let retry_after = if matches!(status, 429 | 503) {
                    response
                        .headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
                } else {
                    None
                };
                // Only the start of the body is kept: copied once, not whole and then cut.
                let body = response.body[..response.body.len().min(BODY_LIMIT)].to_vec();
                let text = String::from_utf8_lossy(&body).into_owned();
                Err(Failure {
                    code: Some(status),
                    reason: format!("HTTP {status}: {text}"),
                    retryable: is_retryable(status),
                    retry_after,
                    body,
                })
            }
            Destination::Topic { subject, .. } => {
                let hops = hops(event) + 1;
                if hops > self.max_hops {
                    return Err(Failure {
                        reason: format!(
                            "hop limit {} reached: the event has passed through Triggers {} \
                             times; a loop of Triggers?",
                            self.max_hops,
                            hops - 1
                        ),
                        ..Failure::default()
                    });
                }
                let mut next = with_hops(event, hops);
                span.stamp_hop(&mut next);
                self.bus
                    .publish_shared(subject, Arc::new(next))
                    .await
                    .map(|_| None)
                    .map_err(|e| Failure::transient(format!("publish failed: {e}")))
            }
        }
    }

    /// Attempts until success, a non-retryable failure, the retries run out, or shutdown.
    /// `on_retry` is called before each retry (for metrics).
    pub async fn send(
        &self,
        dest: &Destination,
        event: &Event,
        policy: &RetryPolicy,
        shutdown: &CancellationToken,
        on_retry: impl Fn(),
    ) -> Outcome {
        self.send_to(dest, event, policy, shutdown, on_retry, None).await
    }

    /// [`Deliverer::send`] to one of the subscriber's own destinations (not a dead letter,
    /// whose success must not clear a failing sink): every failed attempt and every success
    /// is reported to its delivery health.
    pub async fn send_reported(
        &self,
        dest: &Destination,
        event: &Event,
        policy: &RetryPolicy,
        shutdown: &CancellationToken,
        on_retry: impl Fn(),
    ) -> Outcome {
        let health = self.health.as_deref();
        self.send_to(dest, event, policy, shutdown, on_retry, health).await
    }

    async fn send_to(
        &self,
        dest: &Destination,
        event: &Event,
        policy: &RetryPolicy,
        shutdown: &CancellationToken,
        on_retry: impl Fn(),
        health: Option<&crate::delivering::DeliveryHealth>,
    ) -> Outcome {
        let outcome = retry(policy, shutdown, on_retry, |n| async move {
            let result = self.attempt(dest, event, policy.timeout, n).await;
            if let (Err(failure), Some(health)) = (&result, health) {
                health.failed(dest, failure);
            }
            result
        })
        .await;
        if let (Outcome::Delivered(..), Some(health)) = (&outcome, health) {
            health.delivered();
        }
        outcome
    }
}

/// The span of attempt `n` to `dest` (a child of the current span), after OpenTelemetry's HTTP
/// and messaging conventions; nothing when tracing is off.
fn attempt_span(dest: &Destination, n: u32) -> trace::Span {
    if !trace::enabled() {
        return trace::Span::default();
    }
    // A first attempt is no resend, and has no count, as OpenTelemetry's HTTP conventions ask.
    let resend = (n > 1).then(|| KeyValue::new("http.request.resend_count", i64::from(n - 1)));
    match dest {
        Destination::Http { url } => {
            let mut attributes = vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.full", redacted(url)),
                KeyValue::new("server.address", url.host_str().unwrap_or_default().to_string()),
            ];
            if let Some(port) = url.port_or_known_default() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            attributes.extend(resend);
            trace::Span::start("POST", SpanKind::Client, &trace::current(), attributes)
        }
        Destination::Topic { subject, .. } => {
            let mut attributes = trace::messaging("send", subject);
            attributes.extend(resend);
            let name = format!("publish {subject}");
            trace::Span::start(name, SpanKind::Producer, &trace::current(), attributes)
        }
    }
}

/// Runs `attempt` (given its 1-based number) until it succeeds, fails for good, the retries
/// run out, or `shutdown`; between attempts it waits as `policy` says, on the tokio clock.
pub async fn retry<F, Fut>(
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
    on_retry: impl Fn(),
    mut attempt: F,
) -> Outcome
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Box<Reply>>, Failure>>,
{
    let mut n = 1;
    loop {
        match attempt(n).await {
            Ok(reply) => return Outcome::Delivered(n, reply),
            Err(failure) if !failure.retryable || n > policy.retries => {
                return Outcome::Failed(failure, n);
            }
            Err(failure) => {
                let wait = policy.wait_after(n, &failure);
                tracing::debug!(attempt = n, reason = %failure.reason, ?wait, "delivery failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Outcome::Interrupted,
                    () = tokio::time::sleep(wait) => {}
                }
                on_retry();
                n += 1;
            }
        }
    }
}

/// The CloudEvent in a sink's response, in binary mode (`ce-*` headers) or structured mode
/// (`application/cloudevents+json`); `None` when the response is not a CloudEvent.
pub fn read_reply(headers: &HeaderMap, body: &[u8]) -> Option<Reply> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if headers.contains_key("ce-specversion") {
        let attributes: Vec<(&str, &str)> = headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().strip_prefix("ce-")?, value.to_str().ok()?))
            })
            .collect();
        return Some(
            event::from_binary(attributes, content_type, body)
                .map_err(|e| format!("malformed binary-mode CloudEvent reply: {e}")),
        );
    }
    let media = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    if media.is_some_and(|m| m.eq_ignore_ascii_case("application/cloudevents+json")) {
        return Some(
            serde_json::from_slice::<Event>(body)
                .map_err(|e| format!("malformed structured CloudEvent reply: {e}")),
        );
    }
    None
}

/// The HTTP headers and body of `event` in CloudEvents binary content mode: attributes and
/// extensions as `ce-*` headers, `datacontenttype` as `Content-Type`, data as the body.
pub fn binary_mode(event: &Event) -> (HeaderMap, Vec<u8>) {
    let attributes = event::binary_attributes(event);
    let mut headers = HeaderMap::with_capacity(attributes.len() + 3);
    for (name, value) in attributes {
        if name == trace::EXT_HOP {
            // ofe's own hop; the W3C headers carry the delivery's span instead.
            continue;
        }
        let value = match value {
            // An encoded value's buffer becomes the header's as it is.
            std::borrow::Cow::Owned(text) => HeaderValue::try_from(text),
            std::borrow::Cow::Borrowed(text) => HeaderValue::from_str(text),
        };
        let (Some(header), Ok(value)) = (ce_header(name), value) else { continue };
        // The CloudEvents distributed-tracing extension, also as W3C Trace Context headers:
        // a function instrumented with OpenTelemetry reads those, not `ce-traceparent`, and
        // so continues the sender's trace.
        match name {
            "traceparent" => drop(headers.insert(TRACEPARENT, value.clone())),
            "tracestate" => drop(headers.insert(TRACESTATE, value.clone())),
            _ => {}
        }
        headers.insert(header, value);
    }
    if let Some(Ok(value)) = event.datacontenttype().map(HeaderValue::from_str) {
        headers.insert(CONTENT_TYPE, value);
    }
    (headers, event::data_bytes(event))
}

/// W3C Trace Context's header naming the trace and the caller's span.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context's vendor-specific trace state.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `ce-` header of attribute `name`: the spec's attributes, and the extensions every
/// event through ofe carries, without building the name.
fn ce_header(name: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match name {
        "id" => "ce-id",
        "source" => "ce-source",
        "specversion" => "ce-specversion",
        "type" => "ce-type",
        "subject" => "ce-subject",
        "time" => "ce-time",
        "dataschema" => "ce-dataschema",
        event::EXT_NAMESPACE => "ce-ofenamespace",
        event::EXT_EVENTSOURCE => "ce-ofeeventsource",
        event::EXT_EVENT => "ce-ofeevent",
        EXT_HOPS => "ce-ofehops",
        "traceparent" => "ce-traceparent",
        "tracestate" => "ce-tracestate",
        _ => return HeaderName::from_bytes(format!("ce-{name}").as_bytes()).ok(),
    }))
}

/// The event to dead-letter: the original, with the failure recorded in extension attributes.
pub fn dead_letter_event(
    event: &Event,
    dest: &Destination,
    failure: &Failure,
    attempts: u32,
) -> Event {
    let mut dead = event.clone();
    let mut reason: String = failure.reason.chars().take(BODY_LIMIT + 64).collect();
    reason.retain(|c| !c.is_control() || c == ' ');
    dead.set_extension(EXT_ERROR_DEST, dest.to_string());
    dead.set_extension(EXT_ERROR_CODE, i64::from(failure.code.unwrap_or(0)));
    dead.set_extension(EXT_ERROR_REASON, reason);
    dead.set_extension(EXT_ERROR_ATTEMPTS, i64::from(attempts));
    if !failure.body.is_empty() {
        use base64::Engine as _;
        dead.set_extension(
            EXT_ERROR_DATA,
            base64::engine::general_purpose::STANDARD.encode(&failure.body),
        );
    }
    dead
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    #[test]
    fn backoff_grows_as_its_policy_says_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(800));
        assert_eq!(p.delay(40), Duration::from_secs(3600));
        let linear = RetryPolicy { backoff: Backoff::Linear, ..p };
        assert_eq!(linear.delay(1), Duration::from_millis(200));
        assert_eq!(linear.delay(3), Duration::from_millis(600));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn replies_are_read_in_binary_and_structured_mode() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "r1"),
            ("ce-source", "/front"),
            ("ce-type", "enriched"),
            ("ce-traceparent", "00-abc-def-01"),
            ("content-type", "application/json"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let reply = read_reply(&headers, b"{\"a\":1}").expect("a reply").expect("valid");
        assert_eq!((reply.id(), reply.ty()), ("r1", "enriched"));
        assert_eq!(
            reply.extension("traceparent").map(ToString::to_string).as_deref(),
            Some("00-abc-def-01")
        );
        let mut structured = HeaderMap::new();
        structured.insert(CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
        let body = br#"{"specversion":"1.0","id":"r2","source":"/f","type":"t","data":{"b":2}}"#;
        assert_eq!(read_reply(&structured, body).expect("reply").expect("valid").id(), "r2");
        assert!(read_reply(&structured, b"{}").expect("reply").is_err(), "malformed");
        let mut plain = HeaderMap::new();
        plain.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(read_reply(&plain, b"{\"ok\":true}").is_none(), "not a CloudEvent");
    }

    #[test]
    fn retryable_statuses_match_knative() {
        for s in [500, 503, 404, 408, 409, 429] {
            assert!(is_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 413, 422] {
            assert!(!is_retryable(s), "{s}");
        }
    }

    #[test]
    fn binary_mode_headers() {
        let mut event = EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .data("application/json", serde_json::json!({"a": 1}))
            .build()
            .expect("event");
        event.set_extension("ofeevent", "tick");
        event.set_extension("note", "naïve");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        event.set_extension("traceparent", parent);
        event.set_extension("tracestate", "congo=t61rcWkgMzE");
        let (h, body) = binary_mode(&event);
        assert_eq!(h["traceparent"], parent);
        assert_eq!(h["ce-traceparent"], parent);
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(h["ce-id"], "1");
        assert_eq!(h["ce-source"], "/s");
        assert_eq!(h["ce-type"], "t");
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-ofeevent"], "tick");
        assert_eq!(h["ce-note"], "na%C3%AFve");
        assert_eq!(h["content-type"], "application/json");
        assert!(!h.contains_key("ce-datacontenttype"));
        assert_eq!(body, br#"{"a":1}"#);
    }

    #[test]
    fn dead_letters_record_the_failure() {
        let event = EventBuilderV10::new().id("1").source("/s").ty("t").build().expect("event");
        let failure = Failure {
            code: Some(500),
            reason: "HTTP 500: boom\n".into(),
            retryable: true,
            retry_after: None,
            body: b"boom\n\xff".to_vec(),
        };
        let dest = Destination::http("http://127.0.0.1:1/x").expect("a URL");
        let dead = dead_letter_event(&event, &dest, &failure, 6);
        assert_eq!(
            dead.extension(EXT_ERROR_DEST).map(ToString::to_string).as_deref(),
            Some("http://127.0.0.1:1/x")
        );
        assert_eq!(dead.extension(EXT_ERROR_CODE).map(ToString::to_string).as_deref(), Some("500"));
        assert_eq!(
            dead.extension(EXT_ERROR_REASON).map(ToString::to_string).as_deref(),
            Some("HTTP 500: boom")
        );
        assert_eq!(
            dead.extension(EXT_ERROR_ATTEMPTS).map(ToString::to_string).as_deref(),
            Some("6")
        );
        // Bytes that are not text still travel: base64 of the body as received.
        assert_eq!(
            dead.extension(EXT_ERROR_DATA).map(ToString::to_string).as_deref(),
            Some("Ym9vbQr/")
        );
    }
}
