//! `/status` tells what the data plane sees: an MQTT EventSource whose broker is down is not
//! Ready, with the reason; once the broker is up it is Ready; when the broker goes away it is
//! not Ready again. Conditions stay one per type throughout. A Trigger whose sink refuses
//! every connection shows `Delivering=False` with the error and since when, in `/status` and
//! in `ofe status`, until the sink answers again.

mod support;

use std::process::{Command, Stdio};

use support::{KillOnDrop, free_addr, manifests, start_ofe, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_mosquitto_server),
    ignore = "needs OFE_TEST_MOSQUITTO_SERVER (scripts/test.sh starts the services)"
)]
async fn status_follows_the_broker_down_up_and_down() {
    let mosquitto = support::broker_var("OFE_TEST_MOSQUITTO_SERVER");
    let (_receiver, base) = support::Receiver::start().await;
    let port = free_addr().port();
    let ns = support::unique_namespace();
    let yaml = format!(
        "apiVersion: events.openfunction.io/v1alpha1\nkind: EventSource\n\
         metadata: {{ name: cars, namespace: {ns} }}\nspec:\n  eventBus: default\n  mqtt:\n    \
         telemetry: {{ url: \"tcp://127.0.0.1:{port}\", topic: cars }}\n"
    ) + &support::trigger(
        &ns,
        "route",
        "    telemetry: { eventSource: cars, event: telemetry }",
        &format!("  - condition: telemetry\n    sink: {{ uri: \"{base}/fn\" }}"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let _ofe =
        KillOnDrop(start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen));
    wait_ready(listen).await;

    let down = support::wait_ready_status(listen, "EventSource", "cars", "False").await;
    assert_eq!(down["reason"], "BrokerUnreachable");
    let message = down["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("SourceConnected:"), "{message}");
    assert!(down["lastTransitionTime"].is_string());
    let trigger = support::wait_ready_status(listen, "Trigger", "route", "True").await;
    assert_eq!(trigger["reason"], "AllPartsReady");

    let broker = KillOnDrop(
        Command::new(&mosquitto)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("OFE_TEST_MOSQUITTO_SERVER={mosquitto}: {e}")),
    );
    let up = support::wait_ready_status(listen, "EventSource", "cars", "True").await;
    assert_eq!(up["reason"], "AllPartsReady");

    drop(broker);
    let again = support::wait_ready_status(listen, "EventSource", "cars", "False").await;
    assert_eq!(again["reason"], "BrokerUnreachable");
}

/// Waits until `/status` shows `name`'s `Delivering` with `status`; returns the condition.
async fn wait_delivering(
    listen: std::net::SocketAddr,
    name: &str,
    status: &str,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        if let Some((c, _)) = support::condition(listen, "Trigger", name, "Delivering").await
            && c["status"] == status
        {
            return c;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "Trigger {name} never showed Delivering={status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_refuses_every_connection_shows_as_not_delivering() {
    let sink = free_addr();
    let ns = support::unique_namespace();
    let subscribers = format!(
        "  - condition: tick\n    sink: {{ uri: \"http://{sink}/fn\" }}\n    \
         delivery: {{ retry: 1, backoffDelay: PT0.1S }}"
    );
    let yaml = support::clock(&ns, None)
        + &support::trigger(
            &ns,
            "route",
            "    tick: { eventSource: clock, event: tick }",
            &subscribers,
        );
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let _ofe =
        KillOnDrop(start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen));
    wait_ready(listen).await;

    let failing = wait_delivering(listen, "route", "False").await;
    assert_eq!(failing["reason"], "DeliveryFailing", "{failing}");
    let message = failing["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("http://{sink}/fn")) && message.contains("failing since"),
        "the message names the sink, the error and since when: {message}"
    );
    let (ready, _) = support::ready_condition(listen, "Trigger", "route").await.expect("Ready");
    assert_eq!(ready["status"], "True", "Ready stays about running the Trigger as written");
    let status = support::ofe()
        .args(["status", "--window", "200ms", "--endpoint", &format!("http://{listen}")])
        .output()
        .expect("ofe status");
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(3), "ofe status says something needs attention: {table}");
    assert!(table.contains("DELIVERING"), "{table}");
    assert!(
        table.contains(&format!("Trigger {ns}/route: DeliveryFailing to http://{sink}/fn")),
        "{table}"
    );

    // The sink comes up: the next delivery turns it back.
    let receiver = support::Receiver::default();
    let listener = tokio::net::TcpListener::bind(sink).await.expect("bind the sink's port");
    let app = axum::Router::new().fallback(support::record).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let delivering = wait_delivering(listen, "route", "True").await;
    assert_eq!(delivering["reason"], "Delivered", "{delivering}");
    assert!(!receiver.on("/fn").is_empty());
}
