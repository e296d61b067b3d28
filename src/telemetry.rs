//! Logs, and the HTTP endpoint: `/healthz`, `/metrics`, `/status`, and the console's `/send`
//! and `/tail`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use ofe_eventbus::health::Health;
use prometheus_client::registry::Registry;

use crate::console::Console;
use tokio_util::sync::CancellationToken;

/// Installs the log subscriber: `RUST_LOG` if set, else `level`; JSON lines when asked.
pub fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Serves `/healthz`, `/metrics` and `/status` on `listener` until `shutdown`. `/healthz`
/// answers 503 until `ready` is set: once every resource runs, so that a readiness probe (or a
/// test) does not send events to webhooks that are not listening yet.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Health,
    ready: Arc<std::sync::atomic::AtomicBool>,
    console: Console,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let healthz = move || {
        let ready = ready.load(std::sync::atomic::Ordering::Acquire);
        async move {
            if ready {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(registry)
        .route("/status", get(status).with_state(health))
        .route("/send", post(crate::console::send).with_state(console.clone()))
        .route("/tail", get(crate::console::tail).with_state(console));
    axum::serve(listener.tap_io(no_delay), app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Turns Nagle's algorithm off on an accepted connection, as Go's servers do by default:
/// with it, a response written in two parts can wait for the client's delayed ACK (up to
/// 40 ms on Linux) before its second part leaves.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
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
