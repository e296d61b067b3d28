//! Delayed delivery against `ofe run`, on the embedded bus, JetStream and Kafka: an event
//! with `ofedeliverat` 3 s ahead arrives 3 to 4 s later, across a kill -9 in between, and does
//! not hold back a later event that is due at once; `delivery.delay` delays every event; an
//! `ofedeliverat` that is not a time goes to the dead letter with the reason.
//! `OFE_TEST_NATS` and `OFE_TEST_KAFKA` name the brokers; unset, those tests skip and say so.

mod support;

use std::time::{Duration, Instant};

use support::{
    KillOnDrop, Receiver, free_addr, manifests, post_order, post_order_with, wait_ready,
};

/// When `id` arrived at `/fn`, if it did.
fn arrived(receiver: &Receiver, id: &str) -> Option<Instant> {
    receiver.on("/fn").iter().find(|r| r.header("ce-id") == id).map(|r| r.at)
}

async fn deliver_at_across_kill_9(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(&ns, &format!("{base}/fn"), "", &bus(&ns));
    let folder = manifests(dir.path(), &yaml);
    let data = dir.path().join("data");
    let (listen, webhooks) = (free_addr(), free_addr());
    let mut ofe = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    // Warm: the pipeline delivers before the clock starts.
    post_order(webhooks, &ns, 100).await;
    receiver.wait_for(Duration::from_secs(30), "a first event", |r| !r.on("/fn").is_empty()).await;

    let sent = Instant::now();
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    post_order_with(webhooks, &ns, 0, &[("ce-ofedeliverat", &at)]).await;
    post_order(webhooks, &ns, 1).await;
    receiver
        .wait_for(Duration::from_secs(2), "the event due at once", |r| {
            arrived(r, "order-1").is_some()
        })
        .await;
    assert!(arrived(&receiver, "order-0").is_none(), "the delayed event waits");

    // kill -9 while it waits, and start again: the bus kept it, with when it is due.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ofe.0.kill().expect("kill -9");
    let _ = ofe.0.wait();
    let (listen, webhooks) = (free_addr(), free_addr());
    let _again = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    receiver
        .wait_for(Duration::from_secs(10), "the delayed event", |r| arrived(r, "order-0").is_some())
        .await;
    let after = arrived(&receiver, "order-0").expect("arrived") - sent;
    assert!(
        after >= Duration::from_millis(2900) && after <= Duration::from_secs(4),
        "due 3 s after it was sent, arrived after {after:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copies = receiver.on("/fn").iter().filter(|r| r.header("ce-id") == "order-0").count();
    assert_eq!(copies, 1, "delivered once");
}

on_every_bus!(deliver_at_across_kill_9:
    deliver_at_on_the_embedded_bus,
    deliver_at_on_jetstream,
    deliver_at_on_kafka
);

/// `delivery.delay: 2s` holds every event two seconds; under an `orderKey`, a later event of
/// the same key waits for a delayed one before it; a bad `ofedeliverat` is dead-lettered with
/// the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_delay_and_order_and_a_bad_time() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(
        &ns,
        &format!("{base}/fn"),
        ", delay: 2s, orderKey: source, retry: 0",
        "",
    );
    let folder = manifests(dir.path(), &yaml);
    let run = support::Running::start(&folder, &dir.path().join("data")).await;
    let (listen, webhooks) = (run.listen, run.webhooks);
    let sent = Instant::now();
    let later = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    post_order_with(webhooks, &ns, 0, &[("ce-ofedeliverat", &later)]).await;
    post_order(webhooks, &ns, 1).await;
    post_order_with(webhooks, &ns, 2, &[("ce-ofedeliverat", "tomorrow")]).await;
    receiver
        .wait_for(Duration::from_secs(15), "both events", |r| {
            arrived(r, "order-0").is_some() && arrived(r, "order-1").is_some()
        })
        .await;
    let first = arrived(&receiver, "order-0").expect("0") - sent;
    let second = arrived(&receiver, "order-1").expect("1") - sent;
    assert!(
        first >= Duration::from_millis(3900),
        "ofedeliverat wins over a shorter delay: {first:?}"
    );
    assert!(second >= first, "under the order key, order wins: {second:?} after {first:?}");
    let listed = support::tool(listen, &["deadletters", "list", "-n", &ns, "--trigger", "orders"]);
    assert!(listed.contains("id=order-2"), "{listed}");
    assert!(listed.contains("ofedeliverat `tomorrow` is not an RFC 3339 time"), "{listed}");
    assert!(arrived(&receiver, "order-2").is_none(), "never sent to the function");
}
