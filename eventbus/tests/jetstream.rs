//! The JetStream backend passes the backend suite against a real NATS server.
//!
//! `OFE_TEST_NATS` names the server (e.g. `nats://127.0.0.1:14222`); unset, every test skips and
//! says so. `OFE_TEST_NATS_SERVER` names a `nats-server` binary for the broker-restart test,
//! which runs a server of its own.

use std::sync::Arc;
use std::time::Duration;

use ofe_eventbus::EventBus;
use ofe_eventbus::jetstream::{JetStreamBus, JetStreamConfig};
use ofe_eventbus::testing;

fn url() -> Option<String> {
    testing::broker_var("OFE_TEST_NATS")
}

async fn connect(url: &str) -> JetStreamBus {
    let mut config = JetStreamConfig::new(url);
    config.ack_wait = Duration::from_secs(5);
    JetStreamBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("OFE_TEST_NATS={url} is set but: {e}"))
}

async fn bus() -> Option<Arc<dyn EventBus>> {
    let url = url()?;
    Some(Arc::new(connect(&url).await))
}

ofe_eventbus::conformance_suite!(connect: bus().await, settle: Duration::ZERO);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_duplicates() {
    let Some(url) = url() else { return };
    testing::publish_reports_duplicates(&connect(&url).await, &testing::unique("dups")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_after_the_last_ack() {
    let Some(url) = url() else { return };
    let reopen: testing::Reopen = Box::new(move || {
        let url = url.clone();
        Box::pin(async move { Arc::new(connect(&url).await) as Arc<dyn EventBus> })
    });
    testing::restart_resumes_after_the_last_ack(reopen, &testing::unique("restart")).await;
}

/// A server of our own, on a free port, that the test can stop and start again.
struct Server {
    binary: String,
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Server {
    fn spawn(binary: &str, port: u16, dir: tempfile::TempDir) -> Self {
        let child = Self::start(binary, port, &dir);
        Self { binary: binary.into(), port, dir, child }
    }

    fn start(binary: &str, port: u16, dir: &tempfile::TempDir) -> std::process::Child {
        ofe_eventbus::testing::start_nats_server(binary, port, dir.path(), &[])
    }

    /// kill -9, then start again on the same port and store.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(500));
        self.child = Self::start(&self.binary, self.port, &self.dir);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker is killed and started again while events flow: every event whose publish was
/// acknowledged is delivered, and the subscription recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() {
    let Ok(binary) = std::env::var("OFE_TEST_NATS_SERVER") else {
        eprintln!("skipped: OFE_TEST_NATS_SERVER is not set (a nats-server binary to restart)");
        return;
    };
    let port = ofe_eventbus::testing::free_port();
    let mut server = Server::spawn(&binary, port, tempfile::tempdir().expect("tempdir"));
    let url = format!("nats://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bus = connect(&url).await;
    testing::broker_restart_loses_nothing(&bus, &testing::unique("restart"), || async {
        server.restart();
    })
    .await;
    drop(server);
}
