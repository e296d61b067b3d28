//! Delivering events to destinations: HTTP sinks (CloudEvents binary mode) and bus topics,
//! with retries, exponential backoff and dead letters.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::{AttributesReader, Event};
use ofe_eventbus::{EventBus, Subject, event};
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

/// How much of a failing response body is kept in the reason.
const BODY_LIMIT: usize = 1024;

/// Retry settings for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Default 5.
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one. Default 200 ms.
    pub backoff: Duration,
    /// Largest delay between attempts. Default 30 s.
    pub max_backoff: Duration,
    /// Timeout of one HTTP attempt. Default 30 s.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry `n` (1-based): `backoff * 2^(n-1)`, capped.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Where an event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An HTTP endpoint; the event is POSTed in CloudEvents binary mode.
    Http {
        /// Absolute URL.
        url: String,
    },
    /// A topic on the bus.
    Topic {
        /// Topic name, as written in the manifest.
        name: String,
        /// Its subject.
        subject: Subject,
    },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { url } => f.write_str(url),
            Self::Topic { name, .. } => write!(f, "topic:{name}"),
        }
    }
}

/// Why one attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status, if a response came back.
    pub code: Option<u16>,
    /// Human-readable reason, with the start of the response body.
    pub reason: String,
    /// Whether trying again may help: 5xx, 404, 408, 409, 429 and network errors.
    pub retryable: bool,
}

/// The outcome of delivering with retries.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered after this many attempts.
    Delivered(u32),
    /// Gave up after this many attempts.
    Failed(Failure, u32),
    /// Shutdown interrupted the retries; the event must be delivered again later.
    Interrupted,
}

/// Whether a status is worth retrying (the same set as Knative Eventing).
pub fn is_retryable(status: u16) -> bool {
    status >= 500 || matches!(status, 404 | 408 | 409 | 429)
}

/// The HTTP client deliveries use: a keep-alive connection pool. Clones share it.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().pool_max_idle_per_host(64).build()
}

/// Sends events to destinations. Cheap to clone; the HTTP connection pool is shared.
#[derive(Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    bus: Arc<dyn EventBus>,
}

impl Deliverer {
    /// A deliverer with its own HTTP connection pool, publishing topics to `bus`.
    pub fn new(bus: Arc<dyn EventBus>) -> Result<Self, reqwest::Error> {
        Ok(Self::with_client(http_client()?, bus))
    }

    /// A deliverer using `http` (a shared connection pool), publishing topics to `bus`.
    pub fn with_client(http: reqwest::Client, bus: Arc<dyn EventBus>) -> Self {
        Self { http, bus }
    }

    /// One attempt.
    pub async fn send_once(
        &self,
        dest: &Destination,
        event: &Event,
        timeout: Duration,
    ) -> Result<(), Failure> {
        match dest {
            Destination::Http { url } => {
                let (headers, body) = binary_mode(event);
                let response = self
                    .http
                    .post(url)
                    .headers(headers)
                    .body(body)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| Failure {
                        code: None,
                        reason: format!("request failed: {}", error_chain(&e)),
                        retryable: true,
                    })?;
                let status = response.status().as_u16();
                if response.status().is_success() {
                    return Ok(());
                }
                let body = response.bytes().await.unwrap_or_default();
                let text =
                    String::from_utf8_lossy(&body[..body.len().min(BODY_LIMIT)]).into_owned();
                Err(Failure {
                    code: Some(status),
                    reason: format!("HTTP {status}: {text}"),
                    retryable: is_retryable(status),
                })
            }
            Destination::Topic { subject, .. } => {
                self.bus.publish(subject, event).await.map(|_| ()).map_err(|e| Failure {
                    code: None,
                    reason: format!("publish failed: {e}"),
                    retryable: true,
                })
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
        let mut attempt = 1;
        loop {
            match self.send_once(dest, event, policy.timeout).await {
                Ok(()) => return Outcome::Delivered(attempt),
                Err(failure) if !failure.retryable || attempt > policy.retries => {
                    return Outcome::Failed(failure, attempt);
                }
                Err(failure) => {
                    let delay = policy.delay(attempt);
                    tracing::debug!(destination = %dest, attempt, reason = %failure.reason, ?delay, "delivery failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Outcome::Interrupted,
                        () = tokio::time::sleep(delay) => {}
                    }
                    on_retry();
                    attempt += 1;
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The HTTP headers and body of `event` in CloudEvents binary content mode: attributes and
/// extensions as `ce-*` headers, `datacontenttype` as `Content-Type`, data as the body.
pub fn binary_mode(event: &Event) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    for (name, value) in event::binary_attributes(event) {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(format!("ce-{name}").as_bytes()), HeaderValue::from_str(&value))
        {
            headers.insert(name, value);
        }
    }
    if let Some(Ok(value)) = event.datacontenttype().map(HeaderValue::from_str) {
        headers.insert(CONTENT_TYPE, value);
    }
    (headers, event::data_bytes(event))
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
    dead
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(800));
        assert_eq!(p.delay(30), Duration::from_secs(30));
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
        let (h, body) = binary_mode(&event);
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
        let failure =
            Failure { code: Some(500), reason: "HTTP 500: boom\n".into(), retryable: true };
        let dest = Destination::Http { url: "http://127.0.0.1:1/x".into() };
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
    }
}
