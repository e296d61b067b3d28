//! JetStream connections with credentials and TLS, against servers that require them.
//! `OFE_TEST_NATS_SERVER` names the `nats-server` binary; unset, the tests are ignored, naming it.

use std::time::Duration;

use ofe_core::nats::NatsAuth;
use ofe_core::{EventBus, Subject, TlsFiles};
use ofe_eventbus::jetstream::{JetStreamBus, JetStreamConfig};
use ofe_testkit::{ChildGuard, sample_event, subscribe};

/// Starts a JetStream server requiring `extra`; returns it and its port.
async fn server(extra: &[&str]) -> (ChildGuard, u16, tempfile::TempDir) {
    let binary = ofe_testkit::broker_var("OFE_TEST_NATS_SERVER");
    let port = ofe_testkit::free_port();
    let store = tempfile::tempdir().expect("tempdir");
    let server = ChildGuard(ofe_testkit::start_nats_server(&binary, port, store.path(), extra));
    ofe_testkit::wait_port(port, "nats-server").await;
    (server, port, store)
}

/// Publishes and consumes one event through a bus connected with `config`.
async fn round_trip(config: JetStreamConfig) {
    let bus = JetStreamBus::connect(config).await.expect("connects with the right credentials");
    let s = Subject::event("ns", "auth", "e");
    let mut sub = subscribe(&bus, "auth-c", &s, 8).await;
    bus.publish(&s, &sample_event("auth-1", 1)).await.expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("delivery");
    d.ack().await.expect("ack");
    bus.close().await.expect("close");
}

async fn refused(config: JetStreamConfig) {
    let result = tokio::time::timeout(Duration::from_secs(30), JetStreamBus::connect(config)).await;
    assert!(matches!(result, Ok(Err(_))), "wrong credentials must fail to connect, with an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn user_and_password() {
    let (_server, port, _store) = server(&["--user", "ofe", "--pass", "s3cret"]).await;
    let url = format!("nats://127.0.0.1:{port}");
    let mut config = JetStreamConfig::new(&url);
    config.auth = NatsAuth::UserPassword { user: "ofe".into(), password: "s3cret".into() };
    round_trip(config.clone()).await;
    config.auth = NatsAuth::UserPassword { user: "ofe".into(), password: "wrong".into() };
    refused(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn token() {
    let (_server, port, _store) = server(&["--auth", "t0ken"]).await;
    let mut config = JetStreamConfig::new(format!("nats://127.0.0.1:{port}"));
    config.auth = NatsAuth::Token("t0ken".into());
    round_trip(config.clone()).await;
    config.auth = NatsAuth::Token("nope".into());
    refused(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn tls_with_a_private_ca() {
    let certs = tempfile::tempdir().expect("tempdir");
    ofe_testkit::certificates(certs.path());
    let cert = certs.path().join("server.pem");
    let key = certs.path().join("server.key");
    let tls_args = [
        "--tls",
        "--tlscert",
        cert.to_str().unwrap_or_default(),
        "--tlskey",
        key.to_str().unwrap_or_default(),
    ];
    let (_server, port, _store) = server(&tls_args).await;
    let mut config = JetStreamConfig::new(format!("tls://127.0.0.1:{port}"));
    config.tls = Some(TlsFiles { ca_file: Some(certs.path().join("ca.pem")), client: None });
    round_trip(config.clone()).await;
    // Without the CA the server's certificate is not trusted.
    config.tls = Some(TlsFiles::default());
    refused(config).await;
}
