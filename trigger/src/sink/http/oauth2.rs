//! OAuth2 client credentials for an HTTP sink (`sink.auth.oauth2`): a token from the token
//! endpoint, shared by every delivery of the sink and kept until shortly before it expires.
//!
//! The token is fetched when the first delivery needs it, not when the Trigger loads: a token
//! endpoint that is down delays deliveries (which retry), not the start of the process. One
//! fetch runs at a time; the deliveries that wait for it use what it got. A sink that answers
//! 401 drops the token it was sent, so the next attempt fetches a new one (a revoked or rotated
//! token does not fail every delivery until it would have expired).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::client::HttpClient;
use crate::sink::Failure;

/// The most a token is refreshed ahead of its expiry; a tenth of its lifetime when that is
/// less, so that short-lived tokens are still used for most of their life.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// How the client proves who it is to the token endpoint. RFC 6749 asks every endpoint to take
/// HTTP basic authentication; some take only the form's `client_id` and `client_secret`. As
/// Go's `oauth2` package does, basic is tried first, and the one that worked is kept.
const STYLE_UNKNOWN: u8 = 0;
const STYLE_BASIC: u8 = 1;
const STYLE_FORM: u8 = 2;

/// A sink's OAuth2 client, compiled from `sink.auth.oauth2` once.
pub struct OAuth2 {
    token_url: reqwest::Url,
    client_id: String,
    client_secret: String,
    /// The form's fields besides the credentials: `grant_type`, `scope` and `endpointParams`.
    form: String,
    style: AtomicU8,
    token: RwLock<Option<Token>>,
    /// Held while a token is fetched, so that one fetch serves every waiting delivery.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret nor the token.
        f.debug_struct("OAuth2").field("token_url", &self.token_url.as_str()).finish()
    }
}

/// A token and when to fetch the next.
#[derive(Clone)]
struct Token {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// `None`: the endpoint gave no lifetime; kept until a sink refuses it.
    refresh_at: Option<Instant>,
}

/// What the token endpoint answers (RFC 6749, section 5.1).
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds; some endpoints send it as a string.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl OAuth2 {
    /// The client of `spec`, whose Secret-read fields hold their values by now; the error
    /// names the field that is missing or wrong (what `check_sink` already refused).
    pub fn compile(spec: &ofe_crds::OAuth2Spec) -> Result<Self, String> {
        let token_url =
            ofe_crds::validate::http_url(&spec.token_url).map_err(|e| format!("tokenUrl: {e}"))?;
        let (Some(client_id), Some(client_secret)) = (&spec.client_id, &spec.client_secret) else {
            return Err("the client credentials grant needs `clientId` and `clientSecret`".into());
        };
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !spec.scopes.is_empty() {
            form.append_pair("scope", &spec.scopes.join(" "));
        }
        for (name, value) in &spec.endpoint_params {
            form.append_pair(name, value);
        }
        Ok(Self {
            token_url,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            form: form.finish(),
            style: AtomicU8::new(STYLE_UNKNOWN),
            token: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The `Authorization` value to send: the kept token while it is fresh, else a new one.
    /// A token endpoint that cannot be reached is a failure worth retrying; one that refuses
    /// the client's credentials is not.
    pub async fn authorization(
        &self,
        http: &HttpClient,
        timeout: Duration,
    ) -> Result<HeaderValue, Failure> {
        if let Some(header) = self.fresh() {
            return Ok(header);
        }
        let _one = self.fetching.lock().await;
        // Another delivery may have fetched it while this one waited.
        if let Some(header) = self.fresh() {
            return Ok(header);
        }
        let token = self.fetch(http, timeout).await?;
        let header = token.header.clone();
        *self.token.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token);
        tracing::debug!(token_url = %self.token_url, "fetched an OAuth2 token");
        Ok(header)
    }

    /// Drops the token `sent`, which the sink refused, unless a newer one replaced it.
    pub fn refused(&self, sent: &HeaderValue) {
        let mut token = self.token.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if token.as_ref().is_some_and(|t| t.header == *sent) {
            *token = None;
        }
    }

    fn fresh(&self) -> Option<HeaderValue> {
        let token = self.token.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let token = token.as_ref()?;
        token.refresh_at.is_none_or(|at| Instant::now() < at).then(|| token.header.clone())
    }

    async fn fetch(&self, http: &HttpClient, timeout: Duration) -> Result<Token, Failure> {
        let style = self.style.load(Ordering::Relaxed);
        let first = if style == STYLE_FORM { STYLE_FORM } else { STYLE_BASIC };
        let mut answer = self.request(http, first, timeout).await?;
        // Basic refused, and it was never known to work: try the form, as Go's client does.
        if style == STYLE_UNKNOWN && matches!(answer.0, 400 | 401) {
            let again = self.request(http, STYLE_FORM, timeout).await?;
            if (200..300).contains(&again.0) {
                self.style.store(STYLE_FORM, Ordering::Relaxed);
            }
            answer = again;
        } else if (200..300).contains(&answer.0) {
            self.style.store(first, Ordering::Relaxed);
        }
        let (status, body) = answer;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body[..body.len().min(super::BODY_LIMIT)]);
            let reason = format!(
                "the OAuth2 token endpoint {} answered HTTP {status}: {text}",
                self.token_url
            );
            return Err(Failure {
                code: None,
                retryable: super::is_retryable(status),
                ..Failure::permanent(reason)
            });
        }
        let response: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Failure::transient(format!(
                "the OAuth2 token endpoint {} answered without a token (`access_token`): {e}",
                self.token_url
            ))
        })?;
        let mut header = HeaderValue::try_from(format!("Bearer {}", response.access_token))
            .map_err(|_| {
                Failure::transient(format!(
                    "the OAuth2 token endpoint {} gave a token a header cannot carry",
                    self.token_url
                ))
            })?;
        header.set_sensitive(true);
        let lifetime = match response.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64);
        let refresh_at = lifetime.map(|life| Instant::now() + life - (life / 10).min(MAX_MARGIN));
        Ok(Token { header, refresh_at })
    }

    /// One token request; its status and body. A network failure is worth retrying.
    async fn request(
        &self,
        http: &HttpClient,
        style: u8,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), Failure> {
        use base64::Engine as _;
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let request = || {
            let mut headers = HeaderMap::with_capacity(3);
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            let mut body = self.form.clone();
            if style == STYLE_BASIC {
                // RFC 6749, section 2.3.1: each part form-encoded before the basic encoding.
                let pair = format!("{}:{}", encode(&self.client_id), encode(&self.client_secret));
                let value =
                    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
                if let Ok(mut value) = HeaderValue::try_from(value) {
                    value.set_sensitive(true);
                    headers.insert(AUTHORIZATION, value);
                }
            } else {
                body.push_str("&client_id=");
                body.push_str(&encode(&self.client_id));
                body.push_str("&client_secret=");
                body.push_str(&encode(&self.client_secret));
            }
            (headers, body.into_bytes())
        };
        let response = http
            .send(&reqwest::Method::POST, &self.token_url, request, timeout)
            .await
            .map_err(|e| {
            Failure::transient(format!("the OAuth2 token endpoint {}: {e}", self.token_url))
        })?;
        Ok((response.status, response.body))
    }
}
