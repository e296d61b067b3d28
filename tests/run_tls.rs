//! HTTPS sinks: `ofe run` delivers to a function served over TLS by a private CA when given
//! `--sink-ca-file`, presents `--sink-cert-file` to a function that asks for a client
//! certificate, and without the CA refuses the function's certificate (nothing is delivered).
//! A sink with a certificate of its own (`sink.auth.tls`, its key read from a Secret)
//! presents it, while another sink of the same function, without one, is refused.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{KillOnDrop, Receiver, free_addr, manifests, ofe, wait_ready};

/// TLS connections accepted on a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A client that refuses our certificate fails its handshake: wait for the next.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A recording function served over HTTPS with the CA-signed certificate in `certs`;
/// with `client_ca`, it accepts only clients with a certificate that CA signed.
async fn https_function(certs: &Path, client_ca: bool) -> (Receiver, String) {
    let pem = |name: &str| std::fs::read(certs.join(name)).expect("certificate file");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem("server.pem"))
        .collect::<Result<_, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_slice(&pem("server.key")).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocols");
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem("ca.pem")) {
            roots.add(cert.expect("CA")).expect("CA");
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("https://127.0.0.1:{}", tcp.local_addr().expect("addr").port());
    let (receiver, _) = Receiver::start().await;
    let app = axum::Router::new().fallback(support::record).with_state(receiver.clone());
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, base)
}

fn run(dir: &Path, yaml: &str, tls: &[&str]) -> (KillOnDrop, SocketAddr) {
    run_with(dir, yaml, tls, &[])
}

fn run_with(
    dir: &Path,
    yaml: &str,
    tls: &[&str],
    env: &[(&str, String)],
) -> (KillOnDrop, SocketAddr) {
    let listen = free_addr();
    let child = ofe()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["run", "-f"])
        .arg(manifests(dir, yaml))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &listen.to_string(), "--log-level", "error"])
        .args(["--webhook-listen", &free_addr().to_string()])
        .args(tls)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn ofe run");
    (KillOnDrop(child), listen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sinks_trust_the_given_ca_and_get_the_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    ofe_testkit::certificates(certs.path());
    let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let subscribers = "  - condition: tick\n    sink: { uri: \"BASE/fn\" }";

    // Server authentication by a private CA.
    let (receiver, base) = https_function(certs.path(), false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::cron_and_trigger("default", &base, subscribers);
    let (_ofe, listen) = run(dir.path(), &yaml, &["--sink-ca-file", &file("ca.pem")]);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "events over HTTPS", |r| r.on("/fn").len() >= 2)
        .await;
    assert_eq!(receiver.on("/fn")[0].header("ce-ofeeventsource"), "clock");

    // Mutual TLS: the function asks for a certificate its CA signed.
    let (receiver, base) = https_function(certs.path(), true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::cron_and_trigger("default", &base, subscribers);
    let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let args = ["--sink-ca-file", &ca, "--sink-cert-file", &cert, "--sink-key-file", &key];
    let (_ofe, listen) = run(dir.path(), &yaml, &args);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "events over mutual TLS", |r| r.on("/fn").len() >= 2)
        .await;

    // Without the CA, the function's certificate is not trusted: nothing is delivered, and
    // the failures are retried.
    let (receiver, base) = https_function(certs.path(), false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::cron_and_trigger("default", &base, subscribers);
    let (_ofe, listen) = run(dir.path(), &yaml, &[]);
    wait_ready(listen).await;
    let metrics_url = format!("http://{listen}/metrics");
    let start = std::time::Instant::now();
    while support::counter(&support::get(&metrics_url).await, "ofe_trigger_delivery_retries_total")
        < 2
    {
        assert!(start.elapsed() < Duration::from_secs(20), "no retries of the untrusted sink");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(receiver.on("/fn").is_empty(), "an untrusted certificate must not get events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_presents_its_own_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    ofe_testkit::certificates(certs.path());
    let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let (receiver, base) = https_function(certs.path(), true).await;
    // One sink with a certificate of its own (its key from a Secret, as a file field), one
    // without; no global certificate.
    let subscribers = format!(
        "  - condition: tick\n    sink:\n      uri: \"BASE/own\"\n      auth:\n        tls:\n          \
         caFile: \"{}\"\n          certFile: \"{}\"\n          \
         secretKeyRef: {{ keyFile: {{ name: fn-tls, key: tls.key }} }}\n\
         \x20 - condition: tick\n    sink: {{ uri: \"BASE/none\" }}\n    \
         delivery: {{ retry: 100, backoffPolicy: linear, backoffDelay: PT0.1S }}",
        file("ca.pem"),
        file("server.pem"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::cron_and_trigger("default", &base, &subscribers);
    let key = std::fs::read_to_string(certs.path().join("server.key")).expect("key");
    let env = [("OFE_SECRET_FN_TLS_TLS_KEY", key)];
    let (_ofe, listen) = run_with(dir.path(), &yaml, &["--sink-ca-file", &file("ca.pem")], &env);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "events with the sink's certificate", |r| {
            r.on("/own").len() >= 2
        })
        .await;
    let metrics_url = format!("http://{listen}/metrics");
    let start = std::time::Instant::now();
    while support::counter(&support::get(&metrics_url).await, "ofe_trigger_delivery_retries_total")
        < 2
    {
        assert!(start.elapsed() < Duration::from_secs(20), "no retries of the sink without one");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(receiver.on("/none").is_empty(), "a sink without a certificate must be refused");
}
