//! The data plane started in-process, as tests and the benchmark can drive it without spawning
//! `ofe`: a cron EventSource on the embedded bus and a Trigger delivering to an HTTP function
//! served by this test; then a changed Trigger applied in place; then shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ofe_crds::manifest::ManifestSet;
use ofe_runtime::{Plane, Settings};

/// Serves `POST /<path>` on loopback, recording each request's path and `ce-type`.
async fn function() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let record = record.clone();
        async move {
            let ty = request
                .headers()
                .get("ce-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            record.lock().expect("lock").push((request.uri().path().to_string(), ty));
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), seen)
}

fn manifests(sink: &str) -> Vec<ofe_crds::manifest::Manifest> {
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: clock, namespace: inproc }}\n\
         spec:\n  eventBus: default\n  cron:\n    tick: {{ schedule: \"@every 1s\" }}\n---\n\
         apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: ticks, namespace: inproc }}\n\
         spec:\n  eventBus: default\n  inputs:\n    tick: {{ eventSource: clock, event: tick }}\n\
         \x20 subscribers:\n  - condition: tick\n    sink: {{ uri: \"{sink}\" }}\n"
    );
    let mut set = ManifestSet::default();
    ofe_crds::manifest::parse_file(std::path::Path::new("inproc.yaml"), &yaml, &mut set);
    assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
    set.manifests
}

async fn wait_for(seen: &Arc<Mutex<Vec<(String, String)>>>, path: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.lock().expect("lock").iter().any(|(p, _)| p == path) {
        assert!(tokio::time::Instant::now() < deadline, "nothing reached {path}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plane_runs_in_process_and_changes_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, seen) = function().await;
    let mut plane = Plane::new(
        Settings::new(dir.path().to_path_buf()),
        Default::default(),
        Default::default(),
        Default::default(),
        Default::default(),
    )
    .expect("plane");
    let failures = plane.apply(&manifests(&format!("{base}/first"))).await.expect("apply");
    assert!(failures.is_empty(), "{failures:?}");
    wait_for(&seen, "/first").await;
    let (_, ty) = seen.lock().expect("lock")[0].clone();
    assert_eq!(ty, "io.openfunction.events.cron");
    // The Trigger changes; the EventSource keeps running, and ticks go to the new sink.
    let failures = plane.apply(&manifests(&format!("{base}/second"))).await.expect("apply");
    assert!(failures.is_empty(), "{failures:?}");
    wait_for(&seen, "/second").await;
    plane.shutdown().await;
}
