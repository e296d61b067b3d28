//! The process's HTTP endpoint: `/healthz`, `/metrics`, `/status`, and the console's `/send`,
//! `/tail`, `/pause`, `/resume`, `/pauses`, `/deadletters/{action}`, `/replay`, `/replay/cancel`
//! and `/replays` ([`console`]), and the web console under `/console` ([`web`]).

pub mod console;
pub mod history;
pub mod trail;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use ofe_core::health::Health;
use prometheus_client::registry::Registry;

use console::Console;
use tokio_util::sync::CancellationToken;

pub use ofe_runtime::no_delay;

/// Why a bus's own storage cannot write, as `/healthz` says it, if one cannot.
fn storage_failure(health: &Health) -> Option<String> {
    health.snapshot().into_iter().find_map(|(key, conditions)| {
        conditions.into_iter().find_map(|c| {
            let storage = matches!(c.reason.as_deref(), Some("StorageFull" | "StorageFailed"));
            (c.r#type == "BusConnected" && c.status == "False" && storage).then(|| {
                format!(
                    "{}: {} {}/{}: {}",
                    c.reason.unwrap_or_default(),
                    key.kind,
                    key.namespace,
                    key.name,
                    c.message.unwrap_or_default()
                )
            })
        })
    })
}

/// Serves `/healthz`, `/metrics` and `/status` on `listener` until `shutdown`. `/healthz`
/// answers 503 until `ready` is set: once every resource runs, so that a readiness probe (or a
/// test) does not send events to webhooks that are not listening yet. It answers 503 too
/// while a bus's own storage cannot write (`BusConnected=False` with `StorageFull` or
/// `StorageFailed`): the process then takes no events, although it recovers by itself once
/// there is room. A broker that is unreachable does not fail it: restarting ofe would not
/// bring the broker back.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Health,
    ready: Arc<std::sync::atomic::AtomicBool>,
    console: Console,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tokio::spawn(history::sample(
        registry.clone(),
        health.clone(),
        console.topology.clone(),
        console.history.clone(),
        shutdown.clone(),
    ));
    let board = health.clone();
    let healthz = move || {
        let ready = ready.load(std::sync::atomic::Ordering::Acquire);
        let storage = storage_failure(&board);
        async move {
            match (ready, storage) {
                (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string()),
                (true, Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                (true, None) => (StatusCode::OK, "ok\n".to_string()),
            }
        }
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(registry)
        .route("/status", get(status).with_state(health))
        .route("/send", post(crate::endpoint::console::send).with_state(console.clone()))
        .route("/tail", get(crate::endpoint::console::tail).with_state(console.clone()))
        .route("/pause", post(crate::endpoint::console::pause).with_state(console.clone()))
        .route("/resume", post(crate::endpoint::console::resume).with_state(console.clone()))
        .route("/pauses", get(crate::endpoint::console::pauses).with_state(console.clone()))
        .route(
            "/deadletters/{action}",
            get(crate::endpoint::console::dead_letters)
                .post(crate::endpoint::console::dead_letters)
                .with_state(console.clone()),
        )
        .route("/replay", post(crate::endpoint::console::replay).with_state(console.clone()))
        .route(
            "/replay/cancel",
            post(crate::endpoint::console::cancel_replay).with_state(console.clone()),
        )
        .route("/replays", get(crate::endpoint::console::replays).with_state(console.clone()))
        .route("/console", get(web::index).with_state(console.clone()))
        .route("/console/app.js", get(web::app))
        .route("/console/style.css", get(web::style))
        .route("/console/live", get(web::live).with_state(console.clone()))
        .route("/console/history", get(web::history).with_state(console.clone()))
        .route("/console/path", get(web::path).with_state(console.clone()))
        .route("/console/graph", get(web::graph).with_state(console));
    axum::serve(listener.tap_io(no_delay), app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Every resource this process runs, with its conditions as the data plane sees them: the
/// same conditions the operator writes into `.status` in Kubernetes mode.
async fn status(State(health): State<Health>) -> impl IntoResponse {
    let resources: Vec<serde_json::Value> = health
        .snapshot()
        .into_iter()
        .map(|(key, conditions)| {
            serde_json::json!({
                "kind": key.kind,
                "namespace": key.namespace,
                "name": key.name,
                "conditions": conditions,
            })
        })
        .collect();
    let body = serde_json::json!({ "resources": resources }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The address the endpoint is bound to, for the log.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}
