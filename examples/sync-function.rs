//! A small sync function: an HTTP server that logs every CloudEvent it receives.
//!
//! Run it with `cargo run -p ofe-examples --bin sync-function -- 127.0.0.1:8081`. It answers 200 on every
//! path except `/fail`, which answers 500, so dead-lettering can be watched.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};

async fn receive(uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let ce =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    println!(
        "{} received CloudEvent id={} source={} type={} specversion={} time={} body={}",
        uri.path(),
        ce("ce-id"),
        ce("ce-source"),
        ce("ce-type"),
        ce("ce-specversion"),
        ce("ce-time"),
        String::from_utf8_lossy(&body)
    );
    if uri.path() == "/fail" { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("sync function listening on http://{addr}/");
    axum::serve(listener, Router::new().fallback(receive)).await
}
