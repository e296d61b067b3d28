//! What the examples share: starting `ofe run` on a manifest, serving a function, reading a
//! counter of ofe's metrics.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;

/// A free loopback address.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Serves `router` on a free loopback port.
pub async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The sum of every series of counter `name` on ofe's `/metrics` page (0 when unreachable).
pub async fn counter(http: &reqwest::Client, url: &str, name: &str) -> u64 {
    let Ok(response) = http.get(url).send().await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The `ofe` binary: `given`, else the one cargo built next to this example's directory.
pub fn ofe_binary(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("ofe"))
            .context("cannot locate the ofe binary; pass --ofe"),
    }
}

/// A running `ofe run`, killed when dropped.
pub struct OfeProcess {
    child: Child,
    /// Where its `/healthz` and `/metrics` are.
    pub listen: SocketAddr,
    /// Where it serves webhook EventSources.
    pub webhooks: SocketAddr,
}

impl OfeProcess {
    /// Starts `ofe run -f manifests` with its data in `work/data` and waits until it serves
    /// `/healthz`.
    pub async fn start(
        binary: &Path,
        manifests: &Path,
        work: &Path,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let (listen, webhooks) = (free_addr()?, free_addr()?);
        let child = Command::new(binary)
            .args(["run", "-f"])
            .arg(manifests)
            .arg("--data-dir")
            .arg(work.join("data"))
            .args(["--listen", &listen.to_string(), "--log-level", "warn"])
            .args(["--webhook-listen", &webhooks.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let ofe = Self { child, listen, webhooks };
        let started = Instant::now();
        let healthz = format!("http://{listen}/healthz");
        // 503 until every resource runs.
        while !http.get(&healthz).send().await.is_ok_and(|r| r.status().is_success()) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("ofe did not start; run it by hand to see why");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ofe)
    }

    /// Its metrics page.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.listen)
    }

    /// Its web console: the live mesh, each node's events, and the actions.
    pub fn console_url(&self) -> String {
        format!("http://{}/console", self.listen)
    }

    /// SIGTERM, then up to 40 s for the graceful stop, then SIGKILL.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(40) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("ofe did not stop within 40 s of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OfeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
