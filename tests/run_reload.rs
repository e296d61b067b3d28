//! `ofe run` applies changed manifests without a restart: with `--watch` when a file changes,
//! and on SIGHUP. A removed EventSource stops and leaves `/status`, a new one starts, a changed
//! Trigger delivers where it now says, what did not change keeps running, and manifests with
//! errors leave the running set alone.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{KillOnDrop, Receiver, free_addr, wait_ready};

/// A cron EventSource `name` and a Trigger `route-<name>` delivering its ticks to `BASE/<path>`.
fn clock_to(ns: &str, name: &str, path: &str, base: &str) -> String {
    format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: {name}, namespace: {ns} }}\nspec:\n  eventBus: default\n  \
         cron: {{ tick: {{ schedule: '@every 1s' }} }}\n"
    ) + &support::trigger(
        ns,
        &format!("route-{name}"),
        &format!("    tick: {{ eventSource: {name}, event: tick }}"),
        &format!("  - condition: tick\n    sink: {{ uri: \"{base}/{path}\" }}"),
    )
}

async fn names(listen: SocketAddr) -> Vec<String> {
    let body = support::get(&format!("http://{listen}/status")).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut names: Vec<String> = status["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            format!("{}/{}", r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""))
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_manifests_apply_without_a_restart() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = support::unique_namespace();
    let file = dir.path().join("manifests.yaml");
    let write = |yaml: &str| std::fs::write(&file, yaml).expect("write manifests");
    write(&(clock_to(&ns, "a", "a", &base) + &clock_to(&ns, "keep", "keep", &base)));
    let listen = free_addr();
    let ofe = KillOnDrop(
        support::ofe()
            .args(["run", "--watch", "-f"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &listen.to_string(), "--log-level", "warn"])
            .spawn()
            .expect("start ofe"),
    );
    wait_ready(listen).await;
    receiver.wait_for(Duration::from_secs(20), "ticks of a", |r| !r.on("/a").is_empty()).await;

    // 1. A file change (--watch): `a` goes, `b` comes, `keep` stays.
    write(&(clock_to(&ns, "b", "b", &base) + &clock_to(&ns, "keep", "keep", &base)));
    receiver.wait_for(Duration::from_secs(20), "ticks of b", |r| !r.on("/b").is_empty()).await;
    let a_after = receiver.on("/a").len();
    let keep_before = receiver.on("/keep").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.on("/a").len(), a_after, "the removed EventSource stopped");
    assert!(receiver.on("/keep").len() > keep_before, "what did not change kept running");
    let listed = names(listen).await;
    assert!(!listed.contains(&"EventSource/a".to_string()), "{listed:?}");
    assert!(!listed.contains(&"Trigger/route-a".to_string()), "{listed:?}");
    assert!(listed.contains(&"EventSource/b".to_string()), "{listed:?}");

    // 2. Manifests with an error leave the running set alone.
    write(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\nmetadata: { name: x }\nspec: {}\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let b_now = receiver.on("/b").len();
    receiver
        .wait_for(Duration::from_secs(10), "b to run on after a broken change", |r| {
            r.on("/b").len() > b_now
        })
        .await;

    // 3. SIGHUP: the Trigger of `b` now delivers elsewhere.
    write(&(clock_to(&ns, "b", "b2", &base) + &clock_to(&ns, "keep", "keep", &base)));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &ofe.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    receiver.wait_for(Duration::from_secs(20), "ticks at b2", |r| !r.on("/b2").is_empty()).await;
    let b_after = receiver.on("/b").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.on("/b").len(), b_after, "the changed Trigger left its old sink");
}
