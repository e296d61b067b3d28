//! Delivering events to destinations, whatever their sink (see [`crate::sink`]): retries,
//! linear or exponential backoff, `Retry-After`, and dead letters.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::Event;
use ofe_core::EventBus;
use ofe_core::trace::{self, KeyValue};
use tokio_util::sync::CancellationToken;

use crate::sink::http::BODY_LIMIT;
use crate::sink::http::tls::{ClientError, http_client};
use crate::sink::topic::DEFAULT_MAX_HOPS;
pub use crate::sink::{Destination, Failure, Reply};
use crate::sink::{HttpClient, SinkContext};

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

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackoffPolicy {
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
    pub backoff: BackoffPolicy,
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
            backoff: BackoffPolicy::Exponential,
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
            BackoffPolicy::Exponential => self.delay.saturating_mul(2u32.saturating_pow(n - 1)),
            BackoffPolicy::Linear => self.delay.saturating_mul(n),
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

/// Sends events to destinations. Cheap to clone; the HTTP connection pool is shared.
#[derive(Clone)]
pub struct Deliverer {
    http: HttpClient,
    bus: Arc<dyn EventBus>,
    max_hops: u32,
    /// The subscriber it delivers for (its durable consumer's name), which with the event
    /// makes each request's `Idempotency-Key`.
    subscriber: Option<Arc<str>>,
    /// Where the outcome of each attempt at a subscriber's own destinations is reported.
    health: Option<Arc<crate::delivering::DeliveryHealth>>,
    /// The subscriber's record of what it delivered (`delivery.dedupe`).
    dedupe: Option<Arc<crate::dedupe::Dedupe>>,
    /// The subscriber's dead-letter store, opened when it first keeps a letter.
    letters: Option<Arc<crate::deadletters::Lazy>>,
}

impl Deliverer {
    /// A deliverer with its own HTTP connection pool, publishing topics to `bus`.
    pub fn new(bus: Arc<dyn EventBus>) -> Result<Self, ClientError> {
        Ok(Self::with_client(http_client()?, bus))
    }

    /// A deliverer using `http` (a shared connection pool), publishing topics to `bus`.
    pub fn with_client(http: HttpClient, bus: Arc<dyn EventBus>) -> Self {
        Self {
            http,
            bus,
            max_hops: DEFAULT_MAX_HOPS,
            subscriber: None,
            health: None,
            dedupe: None,
            letters: None,
        }
    }

    /// The same deliverer, reporting how attempts at the subscriber's destinations go (see
    /// [`Deliverer::send_reported`]) to `health`.
    pub fn with_health(mut self, health: crate::delivering::DeliveryHealth) -> Self {
        self.health = Some(Arc::new(health));
        self
    }

    /// The same deliverer, skipping events `dedupe` says were delivered, and recording those
    /// it settles there.
    pub fn with_dedupe(mut self, dedupe: Arc<crate::dedupe::Dedupe>) -> Self {
        self.dedupe = Some(dedupe);
        self
    }

    /// The same deliverer, opening `letters` when it first keeps a letter there.
    pub fn with_letters(mut self, letters: Arc<crate::deadletters::Lazy>) -> Self {
        self.letters = Some(letters);
        self
    }

    /// The subscriber's dead-letter store, when it keeps one.
    pub fn letters(&self) -> Option<&Arc<crate::deadletters::Lazy>> {
        self.letters.as_ref()
    }

    /// The subscriber's record of what it delivered, when it keeps one.
    pub fn dedupe(&self) -> Option<&Arc<crate::dedupe::Dedupe>> {
        self.dedupe.as_ref()
    }

    /// The same deliverer, refusing to pass on events that already made `max_hops` hops.
    pub fn with_max_hops(mut self, max_hops: u32) -> Self {
        self.max_hops = max_hops;
        self
    }

    /// The same deliverer, delivering for `subscriber` (its durable consumer's name): every
    /// attempt of one event then carries one `Idempotency-Key` ([`idempotency_key`]).
    pub fn for_subscriber(mut self, subscriber: &str) -> Self {
        self.subscriber = Some(subscriber.into());
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
        self.attempt(dest, Payload::One(event), timeout, 1).await
    }

    /// Attempt number `n`, traced as a child of the current span when tracing is on.
    async fn attempt(
        &self,
        dest: &Destination,
        payload: Payload<'_>,
        timeout: Duration,
        n: u32,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let span = if trace::enabled() {
            // A first attempt is no resend, and has no count, as OpenTelemetry's HTTP
            // conventions ask.
            let resend =
                (n > 1).then(|| KeyValue::new("http.request.resend_count", i64::from(n - 1)));
            dest.sink().span(resend)
        } else {
            trace::Span::default()
        };
        let result = self.attempt_traced(dest, payload, timeout, &span).await;
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
        payload: Payload<'_>,
        timeout: Duration,
        span: &trace::Span,
    ) -> Result<Option<Box<Reply>>, Failure> {
        let key = self.subscriber.as_deref().map(|s| match payload {
            Payload::One(event) => idempotency_key(s, event),
            Payload::Batch(events) => batch_key(s, events),
        });
        let context = SinkContext {
            http: &self.http,
            bus: &self.bus,
            max_hops: self.max_hops,
            timeout,
            span,
            idempotency_key: key.as_deref(),
        };
        match payload {
            Payload::One(event) => dest.sink().attempt(event, &context).await,
            Payload::Batch(events) => {
                dest.sink().attempt_batch(events, &context).await.map(|()| None)
            }
        }
    }

    /// Attempts until success, a non-retryable failure, the retries run out, or shutdown.
    /// `on_retry` is called before each retry with the failure retried (for metrics and the
    /// tap).
    pub async fn send(
        &self,
        dest: &Destination,
        event: &Event,
        policy: &RetryPolicy,
        shutdown: &CancellationToken,
        on_retry: impl Fn(&Failure),
    ) -> Outcome {
        self.send_to(dest, Payload::One(event), policy, shutdown, on_retry, None).await
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
        on_retry: impl Fn(&Failure),
    ) -> Outcome {
        let health = self.health.as_deref();
        self.send_to(dest, Payload::One(event), policy, shutdown, on_retry, health).await
    }

    /// [`Deliverer::send_reported`] of `events` as one batch ([`crate::sink::Sink::attempt_batch`]):
    /// retried, and failing, as a whole.
    pub async fn send_batch_reported(
        &self,
        dest: &Destination,
        events: &[Arc<Event>],
        policy: &RetryPolicy,
        shutdown: &CancellationToken,
        on_retry: impl Fn(&Failure),
    ) -> Outcome {
        let health = self.health.as_deref();
        self.send_to(dest, Payload::Batch(events), policy, shutdown, on_retry, health).await
    }

    async fn send_to(
        &self,
        dest: &Destination,
        payload: Payload<'_>,
        policy: &RetryPolicy,
        shutdown: &CancellationToken,
        on_retry: impl Fn(&Failure),
        health: Option<&crate::delivering::DeliveryHealth>,
    ) -> Outcome {
        let outcome = retry(policy, shutdown, on_retry, |n| async move {
            let result = self.attempt(dest, payload, policy.timeout, n).await;
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

/// What one attempt carries: an event, or a batch of them.
#[derive(Clone, Copy)]
enum Payload<'a> {
    One(&'a Event),
    Batch(&'a [Arc<Event>]),
}

/// The `Idempotency-Key` of every attempt of a batch of `events` to `subscriber`: as
/// [`idempotency_key`], over every event's `source` and `id`, in order. A batch that comes
/// again after a crash holds what was unsettled then, so it may differ.
pub fn batch_key(subscriber: &str, events: &[Arc<Event>]) -> String {
    use cloudevents::AttributesReader as _;
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update((subscriber.len() as u64).to_be_bytes());
    hash.update(subscriber.as_bytes());
    for event in events {
        for part in [event.source().as_str(), event.id()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
    }
    hex::encode(&hash.finalize()[..16])
}

/// The `Idempotency-Key` of every attempt of `event` to `subscriber`: the first 128 bits of
/// SHA-256 over the subscriber's name and the event's `source` and `id` (the pair that names
/// a CloudEvent), in hex. The same after retries, redeliveries and restarts, and different
/// for every other subscriber, so a sink that keeps the keys it has answered can drop a
/// second copy (the IETF draft `Idempotency-Key` header, as Stripe and others read it).
pub fn idempotency_key(subscriber: &str, event: &Event) -> String {
    use cloudevents::AttributesReader as _;
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    // Each part length-prefixed, so that no two different triples hash the same bytes.
    for part in [subscriber, event.source().as_str(), event.id()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// Runs `attempt` (given its 1-based number) until it succeeds, fails for good, the retries
/// run out, or `shutdown`; between attempts it waits as `policy` says, on the tokio clock.
pub async fn retry<F, Fut>(
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
    on_retry: impl Fn(&Failure),
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
                on_retry(&failure);
                n += 1;
            }
        }
    }
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
    use crate::sink::http::*;
    use cloudevents::AttributesReader as _;
    use cloudevents::{EventBuilder, EventBuilderV10};
    use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

    #[test]
    fn backoff_grows_as_its_policy_says_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(800));
        assert_eq!(p.delay(40), Duration::from_secs(3600));
        let linear = RetryPolicy { backoff: BackoffPolicy::Linear, ..p };
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
