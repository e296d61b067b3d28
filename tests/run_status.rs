//! `/status` tells what the data plane sees: an MQTT EventSource whose broker is down is not
//! Ready, with the reason; once the broker is up it is Ready; when the broker goes away it is
//! not Ready again. Conditions stay one per type throughout.

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
