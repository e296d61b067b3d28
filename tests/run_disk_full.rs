//! The embedded bus on a full disk: it refuses events while it cannot write, says so once
//! (not in a loop), reports itself down (`BusConnected=False`, `StorageFull`, `/healthz`
//! 503), and once the filesystem has room again it recovers by itself, without a restart,
//! losing nothing it accepted and delivering nothing twice. The disk is a tmpfs of 8 MiB
//! that the test mounts (it needs root, as CI has) and then grows to 64 MiB.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{KillOnDrop, Receiver, free_addr, get, manifests, wait_ready};

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot grow the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// POSTs event `id` (4 KiB of data) to the webhook; the status code, 0 when nothing answered.
async fn post(client: &reqwest::Client, url: &str, id: &str) -> u16 {
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let request = client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/disk")
        .header("ce-type", "disk.event")
        .header("content-type", "application/json")
        .body(data)
        .timeout(Duration::from_secs(10));
    request.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ofe_test_root), ignore = "needs root, to mount a small tmpfs (CI runs as root)")]
async fn a_full_disk_refuses_reports_and_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let disk = Tmpfs::mount(&data, "8m");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: hook, namespace: {ns} }}\n\
         spec:\n  eventBus: default\n  webhook:\n    in: {{ maxPayloadSize: 8192 }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    all: { eventSource: hook, event: in }",
        &format!("  - condition: all\n    sink: {{ uri: \"{base}/fn\" }}"),
    );
    let folder = manifests(dir.path(), &yaml);
    let (listen, webhooks) = (free_addr(), free_addr());
    let log = dir.path().join("ofe.log");
    let file = std::fs::File::create(&log).expect("log file");
    let _ofe = KillOnDrop(
        support::ofe_run(&folder, &data, listen)
            .args(["--log-level", "info", "--webhook-listen", &webhooks.to_string()])
            .env("NO_COLOR", "1")
            .stderr(file)
            .spawn()
            .expect("spawn ofe run"),
    );
    wait_ready(listen).await;
    let url = format!("http://{webhooks}/{ns}/hook/in");
    let client = support::http();

    // Fill the disk: accepted events until the bus refuses for a while.
    let mut accepted = Vec::new();
    let mut refused_in_a_row = 0;
    let mut n = 0;
    while refused_in_a_row < 20 {
        assert!(n < 20_000, "the 8 MiB disk never filled");
        let id = format!("e-{n}");
        match post(&client, &url, &id).await {
            202 => {
                accepted.push(id);
                refused_in_a_row = 0;
            }
            503 => {
                refused_in_a_row += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the webhook answered {other}"),
        }
        n += 1;
    }
    assert!(accepted.len() > 100, "only {} events were accepted", accepted.len());

    // Down, and saying why.
    let start = Instant::now();
    loop {
        let status = support::condition(listen, "EventSource", "hook", "BusConnected").await;
        let healthz = support::http()
            .get(format!("http://{listen}/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if let Some((c, _)) = status
            && c["status"] == "False"
            && c["reason"] == "StorageFull"
            && healthz == 503
        {
            let message = c["message"].as_str().unwrap_or_default();
            assert!(message.contains("full"), "{message}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "BusConnected never turned False with StorageFull, or /healthz stayed 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // While full, a few seconds pass: still refusing, and quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(post(&client, &url, "while-full").await, 503, "a full bus refuses");

    // Room again: it recovers by itself, and takes events.
    disk.resize("64m");
    let start = Instant::now();
    while get(&format!("http://{listen}/healthz")).await != "ok\n" {
        assert!(start.elapsed() < Duration::from_secs(15), "the bus did not recover by itself");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_in = start.elapsed();
    for i in 0..20 {
        let id = format!("after-{i}");
        let started = Instant::now();
        loop {
            match post(&client, &url, &id).await {
                202 => break,
                _ if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("after recovery the webhook still answers {other}"),
            }
        }
        accepted.push(id);
    }
    let (c, _) = support::condition(listen, "EventSource", "hook", "BusConnected")
        .await
        .expect("BusConnected");
    assert_eq!(c["status"], "True", "{c}");

    // Everything accepted arrives, each once.
    receiver
        .wait_for(Duration::from_secs(60), "every accepted event at the function", |r| {
            let seen: std::collections::BTreeSet<String> =
                r.on("/fn").iter().map(|x| x.header("ce-id")).collect();
            accepted.iter().all(|id| seen.contains(id))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for got in receiver.on("/fn") {
        *counts.entry(got.header("ce-id")).or_insert(0) += 1;
    }
    let twice: Vec<&String> = counts.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");

    // Said once (and reminded at most once a minute), not once per write.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = text.lines().filter(|l| l.contains("ERROR") && l.contains("ofe_eventbus")).count();
    println!(
        "full disk: {} events accepted ({} before it filled), {errors} ERROR lines from the bus; \
         recovered by itself in {:.1} s after the disk grew",
        accepted.len(),
        accepted.len() - 20,
        recovered_in.as_secs_f64()
    );
    assert!((1..=3).contains(&errors), "{errors} ERROR lines:\n{text}");
    if std::env::var("OFE_TEST_LOG").is_ok() {
        println!("{text}");
    }
}
