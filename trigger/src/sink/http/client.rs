//! The HTTP client deliveries use.
//!
//! Every delivery is one POST, so the client's cost per request is ofe's cost per event. A
//! request goes straight through hyper's pooled client: the sink's URL, checked when the
//! Trigger was loaded, becomes the request's URI with one cheap parse. reqwest, which wraps the same pool, also parses each request's URL
//! twice more for its redirect layer, copies its headers for its retry layer, and checks the
//! proxy settings; together that was about a tenth of ofe's instructions per event. reqwest
//! still serves what the direct path does not:
//! - a sink behind a proxy (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, as every
//!   Go-based peer honours them);
//! - a sink with credentials in its URL, sent as basic authentication;
//! - a sink that answers with a 307 or 308 redirect, followed with the event intact (at most
//!   10 hops). A 301, 302 or 303 is a failure: following it means a GET without the event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::header::HeaderMap;

/// The most redirects followed for one attempt.
const MAX_REDIRECTS: usize = 10;

/// Idle keep-alive connections kept per sink host. At least a subscriber's in-flight limit
/// (256 by default), several times over: with fewer, the connections a burst opened beyond
/// it are closed after one request and opened again for the next burst, which costs a
/// connect per event and, at thousands of events a second, fills the host's ephemeral ports
/// with TIME_WAIT until connects fail.
const IDLE_PER_HOST: usize = 1024;

/// The environment variables that put a proxy between ofe and its sinks.
const PROXY_VARIABLES: &[&str] =
    &["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

/// A pooled HTTP/1.1 client with keep-alive and `TCP_NODELAY`, trusting what its rustls
/// configuration trusts. Clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    direct: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    full: reqwest::Client,
    /// The proxy settings, when the environment has any.
    proxies: Option<Arc<Matcher>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("proxied", &self.proxies.is_some()).finish()
    }
}

/// What a sink answered.
#[derive(Debug)]
pub struct SinkResponse {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpClient {
    /// A client on `tls`, whose ALPN protocols it sets itself (HTTP/1.1).
    pub fn new(mut tls: rustls::ClientConfig) -> Result<Self, reqwest::Error> {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let full = reqwest::Client::builder()
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .tls_backend_preconfigured(tls.clone())
            // ofe retries by the subscriber's policy, and counts and traces each attempt;
            // the client's own retry layer would only copy every request's headers in case.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            // Only redirects that keep the method and body: a client following a 301, 302
            // or 303 sends a GET without the event, and the sink's 2xx to that would count
            // as delivered. Those, and the 11th hop, come back as they are: a failure.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                match attempt.status().as_u16() {
                    307 | 308 if attempt.previous().len() <= MAX_REDIRECTS => attempt.follow(),
                    _ => attempt.stop(),
                }
            }))
            .build()?;
        // Without ALPN, as hyper-rustls asks when it speaks HTTP/1.1 only.
        tls.alpn_protocols.clear();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let direct = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .build(https);
        let proxied = PROXY_VARIABLES.iter().any(|v| std::env::var_os(v).is_some());
        let proxies = proxied.then(|| Arc::new(Matcher::from_env()));
        Ok(Self { direct, full, proxies })
    }

    /// Sends to `url` with `method` what `request` builds (headers and body), within
    /// `timeout` for the whole exchange, body included. `request` is called again only if
    /// the sink redirects. The error is the reason, with its causes.
    pub async fn send(
        &self,
        method: &Method,
        url: &reqwest::Url,
        request: impl Fn() -> (HeaderMap, Vec<u8>),
        timeout: Duration,
    ) -> Result<SinkResponse, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A URL with credentials goes through reqwest, which sends them as basic
        // authentication and keeps them out of the request line, its pool and its logs.
        let credentials = !url.username().is_empty() || url.password().is_some();
        let uri: Option<Uri> = if credentials { None } else { url.as_str().parse().ok() };
        let direct =
            uri.filter(|uri| self.proxies.as_ref().is_none_or(|p| p.intercept(uri).is_none()));
        let Some(uri) = direct else {
            return within(deadline, timeout, self.through_reqwest(method, url, &request)).await?;
        };
        let (headers, body) = request();
        let mut message = Request::new(Full::new(Bytes::from(body)));
        *message.method_mut() = method.clone();
        *message.uri_mut() = uri;
        *message.headers_mut() = headers;
        let response = within(deadline, timeout, self.direct.request(message))
            .await?
            .map_err(|e| format!("request failed: {}", ofe_core::chain(&e)))?;
        let status = response.status();
        if matches!(status.as_u16(), 307 | 308)
            && response.headers().contains_key(reqwest::header::LOCATION)
        {
            return within(deadline, timeout, self.through_reqwest(method, url, &request)).await?;
        }
        let (parts, body) = response.into_parts();
        // The status decides; a body that breaks off is only less to read (a reply, a
        // failure's reason), not a reason to send the event again.
        let body = within(deadline, timeout, body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Ok(SinkResponse { status: status.as_u16(), headers: parts.headers, body })
    }

    /// The same exchange through reqwest: through a proxy, or following redirects.
    async fn through_reqwest(
        &self,
        method: &Method,
        url: &reqwest::Url,
        request: &impl Fn() -> (HeaderMap, Vec<u8>),
    ) -> Result<SinkResponse, String> {
        let (headers, body) = request();
        let mut response = self
            .full
            .request(method.clone(), url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", ofe_core::chain(&e)))?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let body = response.bytes().await.unwrap_or_default();
        Ok(SinkResponse { status, headers, body })
    }
}

/// `what`, unless `deadline` (the end of `timeout`) comes first.
async fn within<F: std::future::Future>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    what: F,
) -> Result<F::Output, String> {
    tokio::time::timeout_at(deadline, what)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))
}
