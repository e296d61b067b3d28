//! The web console at `/console`: the live event mesh (EventSource events → Trigger
//! subscribers → sinks, with topic chains), each node's rates, errors, lag and readiness,
//! updated every second, and each node's events live through the tap.
//!
//! It is a page and an ES module embedded in the binary (no build step). It reads
//! `/console/graph` for the mesh, `/console/live` (Server-Sent Events, a frame a second) for
//! every node's figures and readiness, `/console/history` for a node's last 15 minutes,
//! `/console/path` to find an event by id, and `/tail` for a node's events; its actions use
//! the endpoints the CLI uses. Viewing follows the console's rule: loopback, or the console
//! token (given to the page as `?token=`, which it then sends as a bearer token on every
//! request, and in the URL where a browser cannot set a header: `EventSource`).

use std::convert::Infallible;

use axum::extract::Query;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::console::Console;

/// The page.
const INDEX: &str = include_str!("web/index.html");
/// Its script.
const APP: &str = include_str!("web/app.js");
/// Its style.
const STYLE: &str = include_str!("web/style.css");

/// `/console/history`'s and `/console/path`'s query.
#[derive(Debug, Default, Deserialize)]
pub struct Lookup {
    /// The node, for the history.
    #[serde(default)]
    node: Option<String>,
    /// The event's id, for its path.
    #[serde(default)]
    id: Option<String>,
    /// The event's source, to tell apart two events with one id.
    #[serde(default)]
    source: Option<String>,
}

/// A request the console's access rule lets in, with the process's console. The token may
/// also come in the URL (`?token=`), where a browser cannot set a header (the page itself, and
/// `EventSource`).
pub struct Viewer(Console);

impl axum::extract::FromRequestParts<Console> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        console: &Console,
    ) -> Result<Self, Response> {
        #[derive(Deserialize)]
        struct PageToken {
            token: Option<String>,
        }
        let mut headers = parts.headers.clone();
        let given = Query::<PageToken>::try_from_uri(&parts.uri).ok().and_then(|q| q.0.token);
        if !headers.contains_key(header::AUTHORIZATION)
            && let Some(Ok(value)) = given.map(|t| HeaderValue::try_from(format!("Bearer {t}")))
        {
            headers.insert(header::AUTHORIZATION, value);
        }
        match console.refuse(&headers) {
            Some(refused) => Err(refused),
            None => Ok(Self(console.clone())),
        }
    }
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `GET /console`: the page, under the console's access rule.
pub async fn index(_: Viewer) -> Response {
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
pub async fn graph(Viewer(console): Viewer) -> Response {
    let graph = console.topology.read().map(|g| g.clone()).unwrap_or_default();
    json(&graph)
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /console/live`: Server-Sent Events, one `data:` frame a second with every node's
/// figures (`nodes`, by id) and every resource's `Ready` condition (`ready`). While it is
/// open, the trail records every event's steps for `/console/path`.
pub async fn live(Viewer(console): Viewer) -> Response {
    let watching = console.trail.watch(&console.tap);
    let frames = console.history.frames();
    let stream = futures::stream::unfold((frames, watching), |(mut frames, watching)| async move {
        frames.changed().await.ok()?;
        let frame = frames.borrow_and_update().clone();
        Some((Ok::<_, Infallible>(SseEvent::default().data(&*frame)), (frames, watching)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /console/history?node=ID`: the node's last 15 minutes, a point a second, oldest first.
pub async fn history(Viewer(console): Viewer, Query(lookup): Query<Lookup>) -> Response {
    let Some(node) = lookup.node.as_deref() else {
        return (axum::http::StatusCode::BAD_REQUEST, "name the node: ?node=<id>").into_response();
    };
    json(&serde_json::json!({ "node": node, "points": console.history.of(node) }))
}

/// `GET /console/path?id=ID[&source=S]`: every step the trail holds of that event.
pub async fn path(Viewer(console): Viewer, Query(lookup): Query<Lookup>) -> Response {
    let Some(id) = lookup.id.as_deref().filter(|id| !id.is_empty()) else {
        return (axum::http::StatusCode::BAD_REQUEST, "name the event: ?id=<id>").into_response();
    };
    json(&console.trail.path(id, lookup.source.as_deref()))
}
