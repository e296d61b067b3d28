//! HTTP routes of push sources: one listener per process serves every path a push source
//! (the webhook) has claimed, and a source claims and gives back its own path as it starts and
//! stops, so the listener is never rebuilt when one EventSource changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// One request to a push source, its body read in full (and within the source's limit).
pub struct PushRequest {
    /// The request method.
    pub method: Method,
    /// The request URI.
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// When the request reached the listener, before its body was read.
    pub received: std::time::Instant,
}

/// What serves one claimed path.
#[async_trait]
pub trait PushHandler: Send + Sync + 'static {
    /// The largest body it takes: a larger one is answered 413 without being read in full.
    fn max_body(&self) -> usize;

    /// The answer to `request`.
    async fn handle(&self, request: PushRequest) -> Response;
}

/// The path table of the process's push listener. Cloning shares the table.
#[derive(Clone, Default)]
pub struct HttpRoutes {
    table: Arc<RwLock<HashMap<String, Route>>>,
}

struct Route {
    /// Who claimed it, for the error a second claim gets.
    owner: String,
    /// Tells this claim from a later one of the same path.
    claim: u64,
    handler: Arc<dyn PushHandler>,
}

/// A path that another source already serves.
#[derive(Debug, thiserror::Error)]
#[error("`{path}` is already served for {owner}; give one of them another path")]
pub struct RouteTaken {
    /// The path.
    pub path: String,
    /// Who serves it, e.g. `EventSource ns/hooks event push`.
    pub owner: String,
}

/// A path served for as long as this lives.
pub struct RouteClaim {
    routes: HttpRoutes,
    path: String,
    claim: u64,
}

impl Drop for RouteClaim {
    fn drop(&mut self) {
        if let Ok(mut table) = self.routes.table.write()
            && table.get(&self.path).is_some_and(|r| r.claim == self.claim)
        {
            table.remove(&self.path);
        }
    }
}

impl HttpRoutes {
    /// Serves `path` with `handler` until the claim is dropped, or says who serves it already.
    pub fn claim(
        &self,
        path: &str,
        owner: String,
        handler: Arc<dyn PushHandler>,
    ) -> Result<RouteClaim, RouteTaken> {
        static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut table = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(other) = table.get(path) {
            return Err(RouteTaken { path: path.into(), owner: other.owner.clone() });
        }
        let claim = CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        table.insert(path.into(), Route { owner, claim, handler });
        Ok(RouteClaim { routes: self.clone(), path: path.into(), claim })
    }

    /// The paths served now, sorted.
    pub fn paths(&self) -> Vec<String> {
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut paths: Vec<String> = table.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// The service of the table: each request goes to the handler of its path, as the table
    /// is when it arrives; 404 when none serves it.
    pub fn router(&self) -> Router {
        // Each handler sets its own limit, read below; axum's default of 2 MiB would otherwise
        // cap a webhook configured for more.
        Router::new().fallback(serve).layer(DefaultBodyLimit::disable()).with_state(self.clone())
    }
}

/// A plain-text answer, as every push source gives them.
pub fn reply(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], reason.into() + "\n")
        .into_response()
}

async fn serve(State(routes): State<HttpRoutes>, request: Request<Body>) -> Response {
    let received = std::time::Instant::now();
    let handler = {
        let table = routes.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        table.get(request.uri().path()).map(|r| r.handler.clone())
    };
    let Some(handler) = handler else {
        let path = request.uri().path().to_string();
        return reply(StatusCode::NOT_FOUND, format!("no webhook is served at {path}"));
    };
    let (parts, body) = request.into_parts();
    let limit = handler.max_body();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(error) => {
            let inner = error.into_inner();
            if inner.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body is larger than this webhook accepts, which is at most {limit} bytes"
                    ),
                );
            }
            return reply(StatusCode::BAD_REQUEST, format!("the body could not be read: {inner}"));
        }
    };
    handler
        .handle(PushRequest {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            received,
        })
        .await
}
