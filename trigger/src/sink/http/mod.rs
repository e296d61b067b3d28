//! The HTTP sink: an HTTP POST of the CloudEvent in binary content mode, as Knative and
//! OpenFunction's functions take it, continuing the sender's trace in W3C headers; a reply in
//! binary or structured mode is read back.
//!
//! - [`client`]: the connection pool (keep-alive, HTTP/1.1);
//! - [`tls`]: the client's TLS (the system's roots plus a cluster CA, a client certificate).

pub mod client;
pub mod oauth2;
pub mod request;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::{AttributesReader as _, Event};
use ofe_core::event;
use ofe_core::trace::{self, KeyValue, SpanKind};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{Destination, Failure, HttpClient, Reply, Sink, SinkContext};
use crate::sink::topic::EXT_HOPS;
use ofe_crds::SinkSpec;
use ofe_crds::diagnostic::Diagnostic;

/// How much of a failing response body is kept.
pub(crate) const BODY_LIMIT: usize = 1024;

/// A function's HTTP endpoint.
#[derive(Clone, Debug)]
pub struct HttpSink {
    /// Absolute URL, parsed once rather than for every request. With expressions in the
    /// sink's URI, the URI with each expression as `x`, which names the sink in logs.
    pub url: reqwest::Url,
    /// The sink's method, headers, URI expressions and mode, when it sets any.
    pub request: Option<Arc<request::RequestMap>>,
    /// The sink's own client, when it has a client certificate of its own (`auth.tls`);
    /// otherwise the one every sink shares.
    pub client: Option<HttpClient>,
    /// The sink's OAuth2 client, when it authenticates so (`auth.oauth2`).
    pub oauth2: Option<Arc<oauth2::OAuth2>>,
}

impl HttpSink {
    /// The sink at `url`, which must be an absolute http(s) URL; the error says why not, as
    /// `ofe validate` does.
    pub fn parse(url: &str) -> Result<Self, ofe_crds::validate::UriError> {
        ofe_crds::validate::http_url(url).map(|url| Self {
            url,
            request: None,
            client: None,
            oauth2: None,
        })
    }

    fn method(&self) -> &reqwest::Method {
        self.request.as_ref().map_or(&reqwest::Method::POST, |r| &r.method)
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn describe(&self) -> String {
        redacted(&self.url)
    }

    fn span(&self, resend: Option<KeyValue>) -> trace::Span {
        // Span names are static: the methods a sink may use.
        let method = match *self.method() {
            reqwest::Method::PUT => "PUT",
            reqwest::Method::PATCH => "PATCH",
            _ => "POST",
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.full", redacted(&self.url)),
            KeyValue::new("server.address", self.url.host_str().unwrap_or_default().to_string()),
        ];
        if let Some(port) = self.url.port_or_known_default() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        attributes.extend(resend);
        trace::Span::start(method, SpanKind::Client, &trace::current(), attributes)
    }

    async fn attempt(
        &self,
        event: &Event,
        context: &SinkContext<'_>,
    ) -> Result<Option<Box<Reply>>, Failure> {
        // What the sink's request mapping computes for this event, once for every attempt's
        // request; an event it cannot compute goes to the dead letter, never half-built.
        let view = crate::filter::EventData::new(event);
        let mut mapped = HeaderMap::new();
        let mut url = None;
        let mut structured = None;
        if let Some(map) = &self.request {
            url = map.url(&view).map_err(Failure::permanent)?;
            map.headers(&view, &mut mapped).map_err(Failure::permanent)?;
            if map.structured {
                let body = event::to_structured(event)
                    .map_err(|e| Failure::permanent(ofe_core::chain(&e)))?;
                structured = Some(body);
            }
        }
        let url = url.as_ref().unwrap_or(&self.url);
        let request = || {
            let (mut headers, body) = match &structured {
                Some(body) => {
                    let mut headers = HeaderMap::with_capacity(4);
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static(STRUCTURED));
                    (headers, body.clone())
                }
                None => binary_mode(event),
            };
            for (name, value) in &mapped {
                headers.insert(name, value.clone());
            }
            (headers, body)
        };
        let response = self.exchange(url, request, context).await?;
        Ok(read_reply(&response.headers, &response.body).map(Box::new))
    }

    async fn attempt_batch(
        &self,
        events: &[Arc<Event>],
        context: &SinkContext<'_>,
    ) -> Result<(), Failure> {
        // One JSON array of structured events, built once for every attempt's request.
        let mut body = Vec::with_capacity(events.len() * 256 + 2);
        body.push(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let one =
                event::to_structured(event).map_err(|e| Failure::permanent(ofe_core::chain(&e)))?;
            body.extend_from_slice(&one);
        }
        body.push(b']');
        let mut fixed = HeaderMap::new();
        if let (Some(map), Some(first)) = (&self.request, events.first()) {
            // Only the headers every request carries: checked at load, a batched sink has
            // no header computed per event.
            let view = crate::filter::EventData::new(first);
            map.headers(&view, &mut fixed).map_err(Failure::permanent)?;
        }
        let request = || {
            let mut headers = fixed.clone();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH));
            (headers, body.clone())
        };
        self.exchange(&self.url, request, context).await.map(drop)
    }
}

impl HttpSink {
    /// Sends what `request` builds to `url`, with the credentials, the trace context and the
    /// idempotency key every request carries; a response outside 2xx is the failure.
    async fn exchange(
        &self,
        url: &reqwest::Url,
        request: impl Fn() -> (HeaderMap, Vec<u8>),
        context: &SinkContext<'_>,
    ) -> Result<client::SinkResponse, Failure> {
        let http = self.client.as_ref().unwrap_or(context.http);
        let bearer = match &self.oauth2 {
            Some(oauth2) => Some(oauth2.authorization(http, context.timeout).await?),
            None => None,
        };
        let request = || {
            let (mut headers, body) = request();
            if let Some(bearer) = &bearer {
                headers.insert(reqwest::header::AUTHORIZATION, bearer.clone());
            }
            // The function continues this attempt's span, as it would behind any
            // OpenTelemetry-instrumented client.
            if let Some((parent, state)) = context.span.traceparent() {
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
            if let Some(Ok(key)) = context.idempotency_key.map(HeaderValue::from_str) {
                headers.insert(IDEMPOTENCY_KEY, key);
            }
            (headers, body)
        };
        let response = http
            .send(self.method(), url, request, context.timeout)
            .await
            .map_err(Failure::transient)?;
        let status = response.status;
        context.span.set(KeyValue::new("http.response.status_code", i64::from(status)));
        if (200..300).contains(&status) {
            return Ok(response);
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
        // A refused OAuth2 token is dropped, and the next attempt, with a new one, may pass.
        let refused = match (&self.oauth2, &bearer) {
            (Some(oauth2), Some(sent)) if status == 401 => {
                oauth2.refused(sent);
                true
            }
            _ => false,
        };
        let reason = if refused {
            format!(
                "HTTP {status} (the OAuth2 token was dropped; the next attempt fetches another): {text}"
            )
        } else {
            format!("HTTP {status}: {text}")
        };
        Err(Failure {
            code: Some(status),
            reason,
            retryable: refused || is_retryable(status),
            retry_after,
            body,
        })
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

/// The wait a `Retry-After` value asks for: delta-seconds, or an HTTP date (from `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a status is worth retrying (the same set as Knative Eventing).
pub fn is_retryable(status: u16) -> bool {
    status >= 500 || matches!(status, 404 | 408 | 409 | 429)
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
                .map_err(event::MalformedEvent::Binary),
        );
    }
    let media = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    if media.is_some_and(|m| m.eq_ignore_ascii_case("application/cloudevents+json")) {
        return Some(
            serde_json::from_slice::<Event>(body).map_err(event::MalformedEvent::Structured),
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

/// The media type of a structured-mode CloudEvent.
const STRUCTURED: &str = "application/cloudevents+json";

/// The media type of a CloudEvents JSON batch: an array of structured-mode events.
const BATCH: &str = "application/cloudevents-batch+json";

/// The header that names one event to one subscriber across every attempt.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

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

/// Where a `sink` points: its `uri`, or its `ref` through `options.ref_url_template`, in
/// `namespace` unless the ref names another.
pub fn destination(
    path: &str,
    sink: &SinkSpec,
    namespace: &str,
    options: &crate::PlanOptions,
) -> Result<Destination, Diagnostic> {
    let request = request::RequestMap::compile(path, sink)
        .map_err(|mut errors| errors.swap_remove(0))?
        .map(Arc::new);
    let auth = sink.auth.as_ref();
    let oauth2 = match auth.and_then(|a| a.oauth2.as_ref()) {
        Some(spec) => Some(Arc::new(
            oauth2::OAuth2::compile(spec)
                .map_err(|e| Diagnostic::error(format!("{path}.auth.oauth2"), e))?,
        )),
        None => None,
    };
    let client = match auth.and_then(|a| a.tls.as_ref()) {
        Some(spec) => Some(own_client(&format!("{path}.auth.tls"), spec, &options.sink_tls)?),
        None => None,
    };
    let with = |url: reqwest::Url| {
        Destination::new(HttpSink {
            url,
            request: request.clone(),
            client: client.clone(),
            oauth2: oauth2.clone(),
        })
    };
    match (&sink.uri, &sink.r#ref, &options.ref_url_template) {
        (Some(uri), _, _) => ofe_crds::validate::sink_url(uri)
            .map(with)
            .map_err(|e| Diagnostic::error(format!("{path}.uri"), e.to_string())),
        (None, Some(r), Some(template)) => {
            let url = template
                .replace("{name}", &r.name)
                .replace("{namespace}", r.namespace.as_deref().unwrap_or(namespace))
                .replace("{kind}", &r.kind.to_ascii_lowercase());
            ofe_crds::validate::http_url(&url)
                .map(with)
                .map_err(|e| Diagnostic::error(format!("{path}.ref"), e.to_string()))
        }
        (None, Some(r), None) => Err(Diagnostic::error(
            format!("{path}.ref"),
            format!(
                "{} `{}` can only be resolved in Kubernetes mode; use `uri` when running \
                 standalone, or give `ofe run --ref-url-template` (e.g. \
                 `http://{{name}}.{{namespace}}.svc.cluster.local`)",
                r.kind, r.name
            ),
        )),
        (None, None, _) => Err(Diagnostic::error(path, "neither uri nor ref is set")),
    }
}

/// The client of a sink with a TLS setting of its own (`auth.tls` at `path`): its client
/// certificate, and its CA or else the one every sink trusts (`--sink-ca-file`). Its files
/// are read now, and an error names the field.
fn own_client(
    path: &str,
    spec: &ofe_crds::TlsSpec,
    shared: &tls::SinkTls,
) -> Result<HttpClient, Diagnostic> {
    let settings = tls::SinkTls {
        ca_file: spec.ca_file.as_ref().map(Into::into).or_else(|| shared.ca_file.clone()),
        client: match (&spec.cert_file, &spec.key_file) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            _ => None,
        },
    };
    let names = tls::TlsNames {
        ca: if spec.ca_file.is_some() { "caFile" } else { "--sink-ca-file" },
        cert: "certFile",
        key: "keyFile",
    };
    let config = tls::rustls_config(&settings, &names)
        .map_err(|e| Diagnostic::error(path, ofe_core::chain(&e)))?;
    HttpClient::new(config).map_err(|e| Diagnostic::error(path, ofe_core::chain(&e)))
}

/// The `sink` kind: `sink` (a broker, or a URL, or a Knative Service or Function by `ref`), with
/// `deadLetterSink`, or Knative's `delivery.deadLetterSink`.
pub struct Kind;

impl super::SinkKind for Kind {
    fn route(
        &self,
        sub: &ofe_crds::trigger::Subscriber,
        at: &super::SinkSite<'_>,
    ) -> Option<Result<super::KindRoute, Diagnostic>> {
        let sink = sub.sink.as_ref()?;
        let resolve = |field: &str, spec: &SinkSpec| {
            super::destination(&format!("{}.{field}", at.path), spec, at.namespace, at.options)
        };
        let knative = sub.delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref());
        let dead_letter = match (&sub.dead_letter_sink, knative) {
            (Some(s), _) => Some(resolve("deadLetterSink", s)),
            (None, Some(s)) => Some(resolve("delivery.deadLetterSink", s)),
            (None, None) => None,
        };
        Some(resolve("sink", sink).and_then(|destination| {
            Ok(super::KindRoute { destination, dead_letter: dead_letter.transpose()? })
        }))
    }
}
