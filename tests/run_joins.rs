//! Keyed joins whose state lives in the bus backend: they survive `kill -9` and a restart, and
//! two `ofe run` processes sharing a JetStream bus join each other's events.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{KillOnDrop, Receiver, free_addr, manifests, start_ofe_with_webhooks, wait_ready};

/// A webhook EventSource with events `telemetry` and `alarm`, and a Trigger joining them per
/// car (`consume: true`) into `BASE/joined`.
fn join_manifests(ns: &str, base: &str) -> String {
    format!(
        r#"apiVersion: events.openfunction.io/v1alpha1
kind: EventSource
metadata: {{ name: cars, namespace: {ns} }}
spec:
  eventBus: default
  webhook:
    telemetry: {{ path: /telemetry }}
    alarm: {{ path: /alarm }}
---
apiVersion: events.openfunction.io/v1alpha1
kind: Trigger
metadata: {{ name: join, namespace: {ns} }}
spec:
  eventBus: default
  correlationKey: data.car
  consume: true
  inputs:
    telemetry: {{ eventSource: cars, event: telemetry }}
    alarm: {{ eventSource: cars, event: alarm }}
  subscribers:
  - condition: telemetry && alarm
    sink: {{ uri: "{base}/joined" }}
"#
    )
}

/// Posts a binary-mode CloudEvent with `id` about `car` to the webhook `path`.
async fn post(webhooks: SocketAddr, path: &str, id: &str, car: &str) {
    let answer = support::http()
        .post(format!("http://{webhooks}{path}"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/cars")
        .header("ce-type", "com.example.car")
        .header("content-type", "application/json")
        .body(format!(r#"{{"car":"{car}"}}"#))
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status().as_u16(), 202, "the webhook takes {id}");
}

/// Waits until the router has recorded `keys` correlation keys.
async fn wait_keys(listen: SocketAddr, keys: u64) {
    let start = std::time::Instant::now();
    loop {
        let metrics = support::get(&format!("http://{listen}/metrics")).await;
        if support::counter(&metrics, "ofe_trigger_join_keys{") >= keys {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the router did not record the event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The joined deliveries as (event id, `ofejoined`).
fn joined(receiver: &Receiver) -> Vec<(String, String)> {
    receiver.on("/joined").iter().map(|r| (r.header("ce-id"), r.header("ce-ofejoined"))).collect()
}

/// Half a join before `kill -9`, the other half after the restart: the join completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_survives_kill_9_and_restart() {
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = support::unique_namespace();
    let folder = manifests(dir.path(), &join_manifests(&ns, &base));
    let data = dir.path().join("data");
    let (listen, webhooks) = (free_addr(), free_addr());
    let mut first = KillOnDrop(start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    post(webhooks, "/telemetry", "t1", "c1").await;
    wait_keys(listen, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next publish is written with the router's position past t1, so t1 is not routed
    // again after the restart: only the stored join state can remember it.
    post(webhooks, "/telemetry", "t9", "c9").await;
    wait_keys(listen, 2).await;
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();

    let (listen, webhooks) = (free_addr(), free_addr());
    let _second = KillOnDrop(start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    post(webhooks, "/alarm", "a2", "c2").await; // another car: no join
    post(webhooks, "/alarm", "a1", "c1").await;
    receiver
        .wait_for(Duration::from_secs(20), "the joined alarm", |r| !r.on("/joined").is_empty())
        .await;
    post(webhooks, "/alarm", "a3", "c1").await; // consumed: waits for new telemetry
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(joined(&receiver), vec![("a1".to_string(), "telemetry=t1".to_string())]);
}

/// Two `ofe run` processes share a JetStream bus and its router consumer. The first routes
/// every car's telemetry; then, with the first paused, the alarms go in through the second,
/// whose router knows the telemetry only from the shared state: every pair joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn two_processes_on_jetstream_share_the_joins() {
    let url = support::broker_var("OFE_TEST_NATS");
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = support::unique_namespace();
    // A short ack wait, so that what the paused process had pulled goes to the other soon.
    let bus = format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\n\
         metadata: {{ name: default, namespace: {ns} }}\nspec:\n  jetstream:\n    url: \"{url}\"\n    ackWait: 2s\n"
    );
    let folder = manifests(dir.path(), &(join_manifests(&ns, &base) + &bus));
    let start = |n: usize| {
        let (listen, webhooks) = (free_addr(), free_addr());
        let data = dir.path().join(format!("data{n}"));
        (KillOnDrop(start_ofe_with_webhooks(&folder, &data, listen, webhooks)), listen, webhooks)
    };
    let (first, listen, hook) = start(0);
    wait_ready(listen).await;
    let cars = 10;
    for car in 0..cars {
        post(hook, "/telemetry", &format!("t{car}"), &format!("c{car}")).await;
    }
    wait_keys(listen, cars as u64).await;
    let (_second, listen, hook) = start(1);
    wait_ready(listen).await;
    let pid = first.0.id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &pid]).status();
        assert!(status.expect("kill").success(), "kill {sig}");
    };
    signal("-STOP");
    for car in 0..cars {
        post(hook, "/alarm", &format!("a{car}"), &format!("c{car}")).await;
    }
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        receiver.wait_for(Duration::from_secs(30), "every car's join", |r| {
            r.on("/joined").len() >= cars
        }),
    )
    .await;
    signal("-CONT");
    assert!(outcome.is_ok(), "timed out");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = joined(&receiver);
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    let mut want: Vec<(String, String)> =
        (0..cars).map(|c| (format!("a{c}"), format!("telemetry=t{c}"))).collect();
    want.sort();
    assert_eq!(distinct, want, "each alarm joined its own car's telemetry");
    // What the paused process had pulled was also delivered by the other after the ack wait,
    // and then by itself when it resumed: at-least-once allows these repeats, with the same
    // CloudEvent id, which the function can drop.
    println!("{} deliveries for {cars} joins", got.len());
}
