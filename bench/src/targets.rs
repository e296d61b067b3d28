//! What the load is sent through: `ofe run` on generated manifests, and the baselines (the
//! bare forwarder, nginx as a reverse proxy), each a process of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::serve::ListenerExt as _;

/// A process that is killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers only when asked (killed, it would
        // leave them serving), and ofe closes its buses cleanly.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) async fn wait_http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{url} did not answer within a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ofe run` on `yaml`; returns the process, the webhook URL of `ingest/hook` and the URL of
/// its metrics.
pub(crate) async fn start_ofe(
    ofe: &Path,
    dir: &Path,
    yaml: &str,
) -> anyhow::Result<(Process, String, String)> {
    let manifests = dir.join("manifests.yaml");
    std::fs::write(&manifests, yaml)?;
    let (listen, webhooks) = (free_addr()?, free_addr()?);
    let child = Command::new(ofe)
        .args(["run", "-f"])
        .arg(&manifests)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &listen.to_string(), "--webhook-listen", &webhooks.to_string()])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", ofe.display()))?;
    let process = Process(child);
    wait_http(&format!("http://{listen}/healthz")).await?;
    let webhook = format!("http://{webhooks}/{}/ingest/hook", namespace());
    Ok((process, webhook, format!("http://{listen}/metrics")))
}

/// The baseline forwarder, as a process of its own like ofe.
pub(crate) async fn start_forwarder(to: &str) -> anyhow::Result<(Process, String)> {
    let listen = free_addr()?;
    let child = Command::new(std::env::current_exe()?)
        .args(["forwarder", "--listen", &listen.to_string(), "--to", to])
        .stdout(Stdio::null())
        .spawn()?;
    let process = Process(child);
    // The forwarder answers whatever the sink answers; the sink answers 200 to anything.
    wait_http(&format!("http://{listen}/ready")).await?;
    Ok((process, format!("http://{listen}/w1")))
}

pub(crate) async fn forwarder(listen: String, to: String) -> anyhow::Result<()> {
    // Every connection is kept for reuse (reqwest's default): a bounded idle pool closes the
    // connections a burst opened, and at thousands of events a second the closed ones fill
    // the host's ephemeral ports with TIME_WAIT until connects fail.
    let client = reqwest::Client::builder().build()?;
    let app = axum::Router::new().fallback(move |request: Request| {
        let (client, to) = (client.clone(), to.clone());
        async move {
            let (parts, body) = request.into_parts();
            let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
                return StatusCode::BAD_REQUEST;
            };
            let mut headers = parts.headers;
            headers.remove("host");
            headers.remove("content-length");
            let url = format!("{to}{}", parts.uri.path());
            match client.post(url).headers(headers).body(body).send().await {
                Ok(r) => {
                    StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                Err(_) => StatusCode::BAD_GATEWAY,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener.tap_io(no_delay), app).await?;
    Ok(())
}

/// TCP_NODELAY on every accepted connection, as ofe's own listeners set it: the sink and the
/// forwarder must not answer later than they could, or the baselines would flatter ofe.
pub(crate) fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// The namespace of this run's resources: new subjects and consumers on a shared broker.
pub(crate) fn namespace() -> String {
    format!("bench{}", std::process::id())
}

/// The in-memory EventBus `mem`, which W1, W2, W4 and W5 run on: they measure routing and
/// delivery; W3 measures the durable buses.
pub(crate) fn memory_bus() -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: mem, namespace: {} }}\nspec:\n  memory: {{}}\n",
        namespace()
    )
}

/// The JetStream EventBus `js` on the server at `url` (over TLS when `ca`, the CA that signed
/// its certificate, is given), with the bus's default stream (one server holds one ofe stream).
pub(crate) fn jetstream_bus(url: &str, ca: Option<&Path>) -> String {
    let tls = match ca {
        Some(ca) => format!("    tls: {{ caFile: \"{}\" }}\n", ca.display()),
        None => String::new(),
    };
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: js, namespace: {} }}\n\
         spec:\n  jetstream:\n    url: \"{url}\"\n{tls}",
        namespace()
    )
}

/// The webhook EventSource `ingest` (event `hook`) on `bus`.
pub(crate) fn source(bus: &str) -> String {
    let ns = namespace();
    format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: ingest, namespace: {ns} }}\n\
         spec:\n  eventBus: {bus}\n  webhook:\n    hook: {{}}\n"
    )
}

pub(crate) fn trigger(name: &str, bus: &str, filter: &str, sinks: &[String]) -> String {
    trigger_with(name, bus, filter, sinks, "")
}

/// [`trigger`] whose subscribers also have the fields `more` sets: YAML lines at the
/// subscriber's indent (six spaces), e.g. `      delivery: { batch: { maxSize: 10 } }\n`.
pub(crate) fn trigger_with(
    name: &str,
    bus: &str,
    filter: &str,
    sinks: &[String],
    more: &str,
) -> String {
    let subscribers: String = sinks
        .iter()
        .map(|s| format!("    - condition: hook\n      sink: {{ uri: \"{s}\" }}\n{more}"))
        .collect();
    let ns = namespace();
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
         metadata: {{ name: {name}, namespace: {ns} }}\n\
         spec:\n  eventBus: {bus}\n  inputs:\n    hook:\n      eventSource: ingest\n      event: hook\n      \
         filters:\n        - {filter}\n  subscribers:\n{subscribers}"
    )
}

/// Finds a program: `given`, else `name` on `PATH`, else the first of `also` that exists.
pub(crate) fn find_program(given: Option<&Path>, name: &str, also: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path.to_path_buf());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path.chain(also.iter().cloned()).find(|p| p.is_file())
}

/// Finds nginx: `given`, else `nginx` on `PATH`, else Debian's `/usr/sbin/nginx`.
pub(crate) fn find_nginx(given: Option<&Path>) -> Option<PathBuf> {
    find_program(given, "nginx", &[PathBuf::from("/usr/sbin/nginx")])
}

/// nginx as a reverse proxy to the sink at `to`, with a pool of keep-alive connections to it:
/// the best bare forwarder there is, and what a platform team would put in front of a
/// function. One worker per core, as `worker_processes auto` gives; request bodies and
/// answers are buffered in memory, never on disk.
pub(crate) async fn start_nginx(
    nginx: &Path,
    dir: &Path,
    to: &str,
) -> anyhow::Result<(Process, String)> {
    let listen = free_addr()?;
    let upstream = to.trim_start_matches("http://");
    let temp = dir.join("temp");
    std::fs::create_dir_all(&temp)?;
    let temp = temp.display();
    let config = format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes auto;\n\
         pid {pid};\n\
         error_log stderr error;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {temp}/body;\n\
           proxy_temp_path {temp}/proxy;\n\
           fastcgi_temp_path {temp}/fastcgi;\n\
           uwsgi_temp_path {temp}/uwsgi;\n\
           scgi_temp_path {temp}/scgi;\n\
           client_body_buffer_size 128k;\n\
           client_max_body_size 16m;\n\
           tcp_nodelay on;\n\
           keepalive_requests 1000000;\n\
           keepalive_timeout 75s;\n\
           upstream sink {{ server {upstream}; keepalive 4096; keepalive_requests 1000000; }}\n\
           server {{\n\
             listen {listen} backlog=4096;\n\
             location / {{\n\
               proxy_pass http://sink;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
             }}\n\
           }}\n\
         }}\n",
        pid = dir.join("nginx.pid").display(),
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, config)?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&file)
        .args(["-e", "stderr"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", nginx.display()))?;
    let process = Process(child);
    wait_http(&format!("http://{listen}/ready")).await?;
    Ok((process, format!("http://{listen}/w1")))
}
