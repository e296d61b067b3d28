//! `delivery.dedupe: true` against `ofe run`: kill -9 twice during a stream gives no event
//! twice at the function, on the embedded bus, JetStream and Kafka; and the same event from
//! upstream again, after the bus's own duplicate window, is not sent again (a subscriber
//! without dedupe gets it twice). `OFE_TEST_NATS` and `OFE_TEST_KAFKA` name the brokers;
//! unset, those tests skip and say so.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Receiver, manifests, post_order};

/// Per event id, how often it arrived at `path`, and whether every arrival carried one key.
fn arrivals(receiver: &Receiver, path: &str) -> BTreeMap<String, (usize, bool)> {
    let mut out: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for r in receiver.on(path) {
        let entry = out.entry(r.header("ce-id")).or_default();
        entry.0 += 1;
        entry.1.push(r.header("idempotency-key"));
    }
    out.into_iter()
        .map(|(id, (n, keys))| (id, (n, keys.windows(2).all(|w| w[0] == w[1]))))
        .collect()
}

async fn kill_9_twice(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(&ns, &format!("{base}/fn"), ", dedupe: true", &bus(&ns))
        .replace("maxConcurrency: 1", "maxConcurrency: 16");
    let folder = manifests(dir.path(), &yaml);
    let data = dir.path().join("data");
    let mut run = support::Running::start(&folder, &data).await;
    let total = 90;
    for n in 0..total {
        if n == 30 || n == 60 {
            run.ofe.0.kill().expect("kill -9");
            let _ = run.ofe.0.wait();
            run = support::Running::start(&folder, &data).await;
        }
        post_order(run.webhooks, &ns, n).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver
        .wait_for(Duration::from_secs(60), "every event", |r| {
            arrivals(r, "/fn").len() >= total as usize
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = arrivals(&receiver, "/fn");
    assert_eq!(seen.len(), total as usize, "every event arrived");
    assert!(seen.values().all(|(_, one_key)| *one_key), "one Idempotency-Key per event");
    let twice: Vec<&String> = seen.iter().filter(|(_, (n, _))| *n > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "no event twice at the function: {twice:?}");
}

on_every_bus!(kill_9_twice:
    kill_9_twice_gives_no_duplicates_on_the_embedded_bus,
    kill_9_twice_gives_no_duplicates_on_jetstream,
    kill_9_twice_gives_no_duplicates_on_kafka
);

/// JetStream drops a republished event only within its duplicate window (1 s here): the same
/// event 2 s later reaches the bus again. The subscriber with `dedupe` does not send it again;
/// the one without does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn the_same_event_again_after_the_bus_window_is_not_sent_again() {
    let url = support::broker_var("OFE_TEST_NATS");
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A stream of its own: an existing stream keeps the window it was made with.
    let bus = support::jetstream_bus(&ns, &url)
        + &format!("    stream: \"DEDUPE-{ns}\"\n    duplicateWindow: 1s\n");
    let yaml = support::orders_pipeline(
        &ns,
        &format!("{base}/fn"),
        ", dedupe: true, dedupeWindow: 5m",
        &bus,
    );
    let yaml = yaml.replace(
        "  subscribers:\n",
        &format!("  subscribers:\n  - condition: hook\n    sink: {{ uri: \"{base}/plain\" }}\n"),
    );
    let folder = manifests(dir.path(), &yaml);
    let run = support::Running::start(&folder, &dir.path().join("data")).await;
    post_order(run.webhooks, &ns, 1).await;
    receiver
        .wait_for(Duration::from_secs(30), "the first", |r| {
            !r.on("/fn").is_empty() && !r.on("/plain").is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    post_order(run.webhooks, &ns, 1).await;
    receiver
        .wait_for(Duration::from_secs(30), "the second copy without dedupe", |r| {
            r.on("/plain").len() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.on("/fn").len(), 1, "the subscriber with dedupe sent it once");
    let metrics = support::get(&format!("http://{}/metrics", run.listen)).await;
    assert!(support::counter(&metrics, "ofe_trigger_events_deduplicated_total{") >= 1, "{metrics}");
}
