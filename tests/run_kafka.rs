//! `ofe run` with its bus on Kafka. `OFE_TEST_KAFKA` names the brokers; unset, the test skips
//! and says so.

mod support;

use std::time::Duration;

use support::{Receiver, free_addr, manifests, start_ofe, terminate, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runs_on_kafka() {
    let Ok(brokers) = std::env::var("OFE_TEST_KAFKA") else {
        eprintln!("skipped: OFE_TEST_KAFKA is not set (run `eval \"$(scripts/services.sh)\"`)");
        return;
    };
    let ns = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::cron_and_trigger(
        &ns,
        &base,
        "  - condition: tick\n    sink: { uri: \"BASE/fn\" }",
    ) + &support::kafka_bus(&ns, &brokers);
    let listen = free_addr();
    let mut ofe = start_ofe(&manifests(dir.path(), &yaml), &dir.path().join("data"), listen);
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "3 events via Kafka", |r| r.on("/fn").len() >= 3)
        .await;
    for got in receiver.on("/fn") {
        assert_eq!(got.header("ce-specversion"), "1.0");
        assert_eq!(got.header("ce-type"), "io.openfunction.events.cron");
        assert_eq!(got.header("ce-ofenamespace"), ns);
    }
    assert!(!dir.path().join("data/bus").exists(), "a Kafka bus must not open the embedded store");
    assert!(terminate(&mut ofe).success());
}
