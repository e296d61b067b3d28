//! `ofe run` with its bus on NATS JetStream: the example's flow, and kill -9 safety.
//! `OFE_TEST_NATS` names the server, `OFE_TEST_NATS_2_9` Debian's NATS 2.9; unset, the tests
//! skip and say so.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{Receiver, counter, free_addr, get, manifests, start_ofe, terminate, wait_ready};

fn nats() -> String {
    support::broker_var("OFE_TEST_NATS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn example_runs_on_jetstream() {
    let url = nats();
    support::example_flow_on_bus(|ns| support::jetstream_bus(ns, &url), async |_| {}).await;
}

/// kill -9 during a stream on JetStream, then a restart: every event the bus acknowledged
/// reaches the function. Deliveries held at the kill come back after the ack wait (30 s).
/// The cron example's flow (an EventSource, a Trigger and its router, a function) on the NATS 2.9 that Debian
/// ships. Before durable names lost their `%`, this server garbled every ack subject and the
/// client reconnected forever, delivering nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_2_9),
    ignore = "needs OFE_TEST_NATS_2_9 (scripts/test.sh starts the services)"
)]
async fn example_runs_on_debian_nats_2_9() {
    let url = support::broker_var("OFE_TEST_NATS_2_9");
    support::example_flow_on_bus(|ns| support::jetstream_bus(ns, &url), async |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn kill_9_on_jetstream_loses_no_acknowledged_event() {
    let url = nats();
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let yaml = support::cron_and_trigger(
        &ns,
        &base,
        "  - condition: tick\n    sink: { uri: \"BASE/slow\" }",
    ) + &support::jetstream_bus(&ns, &url);
    let report = support::kill_9_scenario(&yaml, &ns, &receiver, Duration::from_secs(60)).await;
    println!("kill -9 on JetStream: {report:?}, {} duplicates", report.duplicates());
}

/// An OpenFunction NATS Streaming bus, unchanged, is served by JetStream at its `natsURL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn nats_streaming_bus_is_served_by_jetstream() {
    let url = nats();
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = format!(
        "---\napiVersion: events.openfunction.io/v1alpha1\nkind: EventBus\nmetadata: {{ name: default, namespace: {ns} }}\n\
         spec:\n  natsStreaming:\n    natsURL: \"{url}\"\n    natsStreamingClusterID: stan\n    \
         subscriptionType: queue\n    durableSubscriptionName: ImDurable\n"
    );
    let yaml = support::cron_and_trigger(
        &ns,
        &base,
        "  - condition: tick\n    sink: { uri: \"BASE/fn\" }",
    ) + &bus;
    let listen = free_addr();
    let mut ofe = start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(20), "events via the natsStreaming bus", |r| {
            r.on("/fn").len() >= 2
        })
        .await;
    assert!(!dir.path().join("data/bus").exists(), "the natsStreaming bus must run on JetStream");
    assert!(terminate(&mut ofe).success());
}

/// The NATS server is killed and restarted while `ofe run` streams: every event the bus
/// acknowledged reaches the function, and the log says "lost" once and "connected" again, not
/// a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats_server),
    ignore = "needs OFE_TEST_NATS_SERVER (scripts/test.sh starts the services)"
)]
async fn broker_restart_while_running_loses_nothing_and_logs_a_clear_pair() {
    let binary = support::broker_var("OFE_TEST_NATS_SERVER");
    let port = free_addr().port();
    let store = tempfile::tempdir().expect("tempdir");
    let start_server = || ofe_testkit::start_nats_server(&binary, port, store.path(), &[]);
    let mut server = start_server();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ns, receiver, mut ofe, listen, log) = support::logged_cron_flow(dir.path(), |ns| {
        support::jetstream_bus(ns, &format!("nats://127.0.0.1:{port}"))
    })
    .await;
    receiver
        .wait_for(Duration::from_secs(20), "deliveries before the restart", |r| {
            r.on("/fn").len() >= 2
        })
        .await;

    server.kill().expect("kill nats-server");
    server.wait().expect("reap");
    // While the broker is away, the resources on that bus say so.
    let down = support::wait_ready_status(listen, "Trigger", "route", "False").await;
    assert_eq!(down["reason"], "BusUnreachable");
    assert!(down["message"].as_str().is_some_and(|m| m.starts_with("BusConnected:")), "{down}");
    support::wait_ready_status(listen, "EventSource", "clock", "False").await;
    let mut server = start_server();
    let after_restart = receiver.on("/fn").len();
    receiver
        .wait_for(Duration::from_secs(30), "deliveries after the restart", |r| {
            r.on("/fn").len() >= after_restart + 3
        })
        .await;
    support::wait_ready_status(listen, "Trigger", "route", "True").await;
    let metrics = get(&format!("http://{listen}/metrics")).await;
    let published = counter(
        &metrics,
        &format!(
            "ofe_eventsource_events_published_total{{namespace=\"{ns}\",eventsource=\"clock\""
        ),
    );
    // Every event the bus acknowledged reaches the function.
    receiver
        .wait_for(Duration::from_secs(30), "every acknowledged event", |r| {
            let ids: BTreeSet<String> = r.on("/fn").iter().map(|x| x.header("ce-id")).collect();
            u64::try_from(ids.len()).unwrap_or(0) >= published
        })
        .await;
    assert!(terminate(&mut ofe).success());
    let _ = server.kill();
    let _ = server.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    let lost = text.lines().filter(|l| l.contains("lost the connection to NATS")).count();
    let connected = text.lines().filter(|l| l.contains("connected to NATS")).count();
    let warnings = text.lines().filter(|l| l.contains(" WARN ")).count();
    println!(
        "broker restart: {published} acknowledged, all delivered; log: {lost} lost, {connected} connected, {warnings} warnings"
    );
    assert_eq!(lost, 1, "one 'lost' line per outage:\n{text}");
    assert!(connected >= 2, "a 'connected' line at start and after the outage:\n{text}");
    assert!(warnings <= 10, "the outage must not flood the log ({warnings} warnings):\n{text}");
}
