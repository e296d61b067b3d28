//! The Redis source over TLS with a private CA, against a redis-server started for the test.
//! `OFE_TEST_REDIS_SERVER` names the `redis-server` binary; unset, the test skips and says so.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_crds::RedisSpec;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::redis::RedisSource;
use ofe_testkit::{ChildGuard, free_port, wait_port};
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis_server),
    ignore = "needs OFE_TEST_REDIS_SERVER (scripts/test.sh starts the services)"
)]
async fn stream_over_tls_with_a_private_ca() {
    let binary = ofe_testkit::broker_var("OFE_TEST_REDIS_SERVER");
    let dir = tempfile::tempdir().expect("tempdir");
    ofe_testkit::certificates(dir.path());
    let port = free_port();
    let path = |name: &str| dir.path().join(name);
    let _server = ChildGuard(
        Command::new(&binary)
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(path("server.pem"))
            .arg("--tls-key-file")
            .arg(path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(path("ca.pem"))
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("OFE_TEST_REDIS_SERVER={binary}: {e}")),
    );
    wait_port(port, "redis-server (TLS)").await;

    let ca = std::fs::read(path("ca.pem")).expect("ca");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let producer = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}"),
        redis::TlsCertificates { client_tls: None, root_cert: Some(ca) },
    )
    .expect("tls client");
    let mut producer = producer.get_multiplexed_async_connection().await.expect("TLS connection");
    let _: String = producer.xadd("cars", "*", &[("data", "over-tls")]).await.expect("xadd");

    let store = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(store.path())).expect("bus");
    let mut options = SubscribeOptions::new("test", vec![Subject::event("ns", "cars", "feed")]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let spec = RedisSpec {
        redis_host: format!("127.0.0.1:{port}"),
        enable_tls: Some(true),
        // A file path, as a mounted Secret would give it.
        ca_cert: Some(path("ca.pem").display().to_string()),
        stream: Some("cars".into()),
        initial_offset: Some("earliest".into()),
        ..Default::default()
    };
    let source = RedisSource::new("ns", "cars", "feed", &spec).expect("source");
    let shutdown = CancellationToken::new();
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    let task = tokio::spawn(source.run(shared, SourceMetrics::default(), shutdown.clone()));
    let delivery = ofe_testkit::next_within(&mut sub, Duration::from_secs(20)).await;
    assert_eq!(ofe_core::event::data_bytes(&delivery.event), b"over-tls".to_vec());
    shutdown.cancel();
    task.await.expect("source stops on shutdown");

    let plain = RedisSpec { ca_cert: Some("x".into()), enable_tls: None, ..spec };
    let error = RedisSource::new("ns", "cars", "feed", &plain).expect_err("caCert without TLS");
    assert!(error.to_string().contains("spec.redis.feed.caCert"), "{error}");
    bus.close().await.expect("close");
}
