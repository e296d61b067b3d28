//! The web console at `/console`: the live event mesh (EventSource events → Trigger
//! subscribers → sinks, with topic chains), each node's rates, errors, lag and readiness,
//! updated every second, and each node's events live through the tap.
//!
//! It is a page and an ES module embedded in the binary (no build step), reading what the CLI
//! reads: `/console/graph` for the mesh, `/metrics` and `/status` for the figures, and `/tail`
//! for the events. Viewing follows the console's rule: loopback, or the console token (given
//! to the page as `?token=`, which it then sends as a bearer token on every request).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::console::Console;

/// The page.
const INDEX: &str = include_str!("web/index.html");
/// Its script.
const APP: &str = include_str!("web/app.js");
/// Its style.
const STYLE: &str = include_str!("web/style.css");

/// The token a browser gives in the URL, where it cannot set a header.
#[derive(Debug, Default, Deserialize)]
pub struct PageToken {
    #[serde(default)]
    token: Option<String>,
}

/// `headers`, with `token` from the URL as a bearer token when the request carries none.
fn with_token(mut headers: HeaderMap, token: &PageToken) -> HeaderMap {
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(Ok(value)) =
            token.token.as_deref().map(|t| HeaderValue::try_from(format!("Bearer {t}")))
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `GET /console`: the page, under the console's access rule.
pub async fn index(
    State(console): State<Console>,
    Query(token): Query<PageToken>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = console.refuse(&with_token(headers, &token)) {
        return refused;
    }
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/app.js`: code, open like any static file (it holds no data; what it reads
/// is under the access rule).
pub async fn app() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

/// `GET /console/style.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /console/graph`: the mesh as of the last apply, as JSON.
pub async fn graph(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Some(refused) = console.refuse(&headers) {
        return refused;
    }
    let graph = console.topology.read().map(|g| g.clone()).unwrap_or_default();
    match serde_json::to_string(&graph) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
