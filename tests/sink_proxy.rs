//! Sinks behind an HTTP proxy: `ofe run` honours `HTTP_PROXY` and `NO_PROXY` as the Go-based
//! peers do, on both of its client paths.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use support::{Receiver, free_addr, manifests, ofe_run, terminate, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_behind_a_proxy_is_reached_through_it_and_no_proxy_sinks_directly() {
    // The proxy: answers every request itself, recording the request target (absolute for
    // a proxied request) and the Host header.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: Uri, headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
                seen.lock().expect("seen").push((uri.to_string(), host.to_string()));
                StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A sink on loopback, which NO_PROXY exempts.
    let (direct, base) = Receiver::start().await;

    let dir = tempfile::tempdir().expect("dir");
    // `sink.invalid` cannot resolve: only the proxy can take it.
    let subscribers = "  - condition: tick\n    sink: { uri: \"http://sink.invalid/fn\" }\n\
                       \x20 - condition: tick\n    sink: { uri: \"BASE/direct\" }";
    let yaml = support::cron_and_trigger("default", &base, subscribers);
    let listen = free_addr();
    let mut ofe = ofe_run(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen)
        .env("HTTP_PROXY", &proxy)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .spawn()
        .expect("spawn ofe run");
    wait_ready(listen).await;
    direct
        .wait_for(Duration::from_secs(20), "2 direct deliveries", |r| r.on("/direct").len() >= 2)
        .await;
    let start = std::time::Instant::now();
    while seen.lock().expect("seen").len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "the proxy got no deliveries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(&mut ofe);
    let seen = seen.lock().expect("seen").clone();
    for (target, host) in &seen {
        assert_eq!(target, "http://sink.invalid/fn", "only the proxied sink goes to the proxy");
        assert_eq!(host, "sink.invalid");
    }
    let delivered = direct.on("/direct");
    assert!(delivered.iter().all(|r| r.header("ce-type") == "io.openfunction.events.cron"));
}
