//! The peer measured side by side with ofe (`--peer`): Argo Events, built from the Go module
//! proxy by `scripts/peers/argo-events.sh`, running its own EventSource and Sensor code as two
//! plain processes (`bench/peers/argo-events`), and ofe beside it, both on one JetStream server
//! the bench starts for them with TLS, since Argo connects to its EventBus only over TLS (its
//! controller deploys NATS so).
//!
//! The pipeline is the one Argo's documentation starts with: a webhook EventSource, a
//! JetStream EventBus, and a Sensor whose HTTP trigger posts each event's body to the sink. The
//! trigger is `atLeastOnce`, as ofe's delivery is: the Sensor acknowledges an event on the bus
//! only after the sink answered. Argo's logs are discarded, which only flatters it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use std::sync::Arc;

use crate::load::{Event, Retries, Sink, closed_loop};
use crate::targets::{Process, find_program, free_addr};

/// The Argo Events release the script builds, and the bench looks for (the newest the Go
/// module proxy serves here).
pub(crate) const ARGO_VERSION: &str = "v1.9.11";

/// The peer's name in the report.
pub(crate) const ARGO_NAME: &str = "Argo Events v1.9.11";

/// Finds Argo Events' binary: `given`, else `argo-events` on `PATH`, else where
/// `scripts/peers/argo-events.sh` leaves it.
pub(crate) fn find_argo(given: Option<&Path>) -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cached = home.join(format!(".cache/ofe-tools/argo-events-{ARGO_VERSION}/bin/argo-events"));
    find_program(given, "argo-events", &[cached])
}

/// A NATS server with JetStream and TLS, of the peer run's own.
pub(crate) struct TlsNats {
    /// `tls://127.0.0.1:<port>`.
    pub(crate) url: String,
    /// The CA that signed the server's certificate.
    pub(crate) ca: PathBuf,
    _server: Process,
    /// Its certificates and store; removed when the run ends.
    _dir: tempfile::TempDir,
}

/// Starts `nats-server` (`binary`) with JetStream and TLS on a free port.
pub(crate) async fn start_tls_nats(binary: &Path) -> anyhow::Result<TlsNats> {
    let dir = tempfile::tempdir()?;
    ofe_testkit::certificates(dir.path());
    let port = free_addr()?.port();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("store"))
        .args(["--tls", "--tlscert"])
        .arg(&cert)
        .arg("--tlskey")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let server = Process(child);
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{} did not listen on port {port} within 30 s", binary.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(TlsNats {
        url: format!("tls://127.0.0.1:{port}"),
        ca: dir.path().join("ca.pem"),
        _server: server,
        _dir: dir,
    })
}

/// Finds `nats-server`: `given`, else on `PATH`.
pub(crate) fn find_nats_server(given: Option<&Path>) -> Option<PathBuf> {
    find_program(given, "nats-server", &[])
}

/// Argo's EventSource and Sensor, running.
pub(crate) struct Argo {
    /// The EventSource's process, then the Sensor's.
    pub(crate) processes: Vec<Process>,
    /// The webhook the load is sent to.
    pub(crate) webhook: String,
}

/// The stream settings Argo's controller gives an EventBus by default (its
/// `argo-events-controller-config`), with one replica, as the one server here holds it.
const STREAM_CONFIG: &str =
    "maxMsgs: 1000000\nmaxAge: 72h\nmaxBytes: 1GB\nreplicas: 1\nduplicates: 300s\n";

/// Starts Argo's EventSource (webhook on a free port, path `/w1`) and Sensor (HTTP trigger to
/// `sink_url`) on the JetStream server `nats`, and waits until an event goes through.
pub(crate) async fn start_argo(
    binary: &Path,
    nats: &TlsNats,
    sink: &Sink,
    sink_url: &str,
) -> anyhow::Result<Argo> {
    // A name of this run's own: Argo's consumers and its Sensor's state are named after it.
    let name = format!("bench{}", std::process::id());
    let port = free_addr()?.port();
    // No `tls`: Argo then connects over TLS without verifying the server, as it does to the
    // NATS its controller deploys (a CA would be read from a pod's secret volume).
    let bus =
        serde_json::json!({ "jetstream": { "url": nats.url, "streamConfig": STREAM_CONFIG } });
    let event_source = serde_json::json!({
        "metadata": { "name": name, "namespace": "ofe-bench" },
        "spec": { "webhook": { "w1": {
            "endpoint": "/w1", "method": "POST", "port": port.to_string(), "url": ""
        } } }
    });
    // The body of each event is posted as it came; its scheduled send time goes in the header
    // the sink reads latencies from, so both systems are timed the same way. Events of
    // throughput runs have no send time: `value` is what Argo sends then (without it the
    // trigger fails).
    let from = |key: &str| serde_json::json!({ "dependencyName": "d", "dataKey": key });
    let sent = serde_json::json!({
        "dependencyName": "d", "dataKey": "header.Ce-Sentns.0", "value": "none"
    });
    let sensor = serde_json::json!({
        "metadata": { "name": name, "namespace": "ofe-bench" },
        "spec": {
            "dependencies": [{ "name": "d", "eventSourceName": name, "eventName": "w1" }],
            "triggers": [{
                "atLeastOnce": true,
                "template": { "name": "sink", "http": {
                    "url": format!("{sink_url}/argo"),
                    "method": "POST",
                    "payload": [{ "src": from("body"), "dest": "" }],
                    "dynamicHeaders": [{ "src": sent, "dest": "Ce-Sentns" }]
                } }
            }]
        }
    });
    let encode = |value: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD.encode(value.to_string())
    };
    let start = |role: &str, object: (&str, &serde_json::Value)| -> anyhow::Result<Process> {
        let child = Command::new(binary)
            .arg(role)
            .env("EVENTBUS_CONFIG", encode(&bus))
            .env("EVENTBUS_SUBJECT", "eventbus-default")
            .env("POD_NAME", format!("{name}-{role}"))
            .env(object.0, encode(object.1))
            .env("ARGO_METRICS_ADDR", free_addr()?.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        Ok(Process(child))
    };
    let processes = vec![
        start("eventsource", ("EVENTSOURCE_OBJECT", &event_source))?,
        start("sensor", ("SENSOR_OBJECT", &sensor))?,
    ];
    let webhook = format!("http://127.0.0.1:{port}/w1");
    let argo = Argo { processes, webhook };
    argo.wait_ready(sink).await?;
    Ok(argo)
}

impl Argo {
    /// Sends an event a second until the sink has one: the Sensor reads only what is published
    /// after it subscribed, and says nowhere when that is.
    async fn wait_ready(&self, sink: &Sink) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let probe = [Event::new("bench.ready", 80)];
        sink.reset();
        loop {
            // Sent as every event of the load is; refusals while Argo starts are expected.
            let retries = Arc::new(Retries::default());
            let posted = closed_loop(&client, &self.webhook, &probe, 1, &retries).await;
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if sink.delivered.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                    // What the probes that went before may still bring is let through.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    sink.reset();
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if started.elapsed() > Duration::from_secs(90) {
                let last = match posted {
                    Ok(()) => "its webhook took the events".to_string(),
                    Err(e) => format!("its webhook last failed: {e:#}"),
                };
                bail!("Argo Events delivered nothing within 90 s ({last})");
            }
        }
    }
}
