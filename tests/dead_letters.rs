//! The dead-letter store against `ofe run`: with no `deadLetterSink` or `deadLetterTopic`, an
//! event whose sink fails for good is kept on the bus in the subscriber's dead-letter topic,
//! with the reason, where a Trigger (or a function on the broker) can read it; opting out
//! drops it, as before. `ofe deadletters` lists the letters, shows one, and after the sink
//! recovers redrives them (then the store is empty) or purges them; they survive a restart.
//! On the embedded bus, JetStream and Kafka (`OFE_TEST_NATS`, `OFE_TEST_KAFKA`; unset, those
//! tests skip and say so).

mod support;

use std::time::Duration;

use std::net::SocketAddr;

use support::{KillOnDrop, Receiver, free_addr, manifests, start_ofe, terminate, wait_ready};

/// The clock's ticks to a failing sink (one retry), and a Trigger `rescue` reading the
/// default dead-letter topic of `route`'s subscriber 0 into `BASE/dead`.
fn failing(ns: &str, base: &str, store: bool) -> String {
    let opt_out = if store { "" } else { ", deadLetterStore: false" };
    support::cron_and_trigger(
        ns,
        base,
        &format!(
            "  - condition: tick\n    sink: {{ uri: \"BASE/fail\" }}\n    \
             delivery: {{ retry: 1, backoffDelay: PT0.05S{opt_out} }}"
        ),
    ) + &support::trigger(
        ns,
        "rescue",
        &format!("    dead: {{ topic: \"{}\" }}", ofe_trigger::dead_letter_topic("route", 0)),
        &format!("  - condition: dead\n    sink: {{ uri: \"{base}/dead\" }}"),
    )
}

async fn kept_on_the_bus(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &(failing(&ns, &base, true) + &bus(&ns)));
    let listen = free_addr();
    let _ofe = KillOnDrop(start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "a dead letter read from the bus", |r| {
            !r.on("/dead").is_empty()
        })
        .await;
    let dead = receiver.on("/dead")[0].clone();
    assert_eq!(dead.header("ce-ofeerrorcode"), "500", "the sink's answer");
    assert_eq!(dead.header("ce-ofeerrorattempts"), "2", "the first attempt and one retry");
    assert_eq!(dead.header("ce-ofeerrordest"), format!("{base}/fail"));
    assert_eq!(dead.header("ce-ofeeventsource"), "clock", "the original event");
    let id = dead.header("ce-id");
    assert!(
        receiver.on("/fail").iter().any(|r| r.header("ce-id") == id),
        "the dead letter is the event that failed"
    );
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    let dead_lettered = support::counter(&metrics, "ofe_trigger_events_dead_lettered_total{");
    assert!(dead_lettered > 0, "counted as dead-lettered: {metrics}");
}

on_every_bus!(kept_on_the_bus:
    a_failed_event_is_kept_on_the_embedded_bus,
    a_failed_event_is_kept_on_jetstream,
    a_failed_event_is_kept_on_kafka
);

/// `deadLetterStore: false` drops what fails for good, logged and counted, as Knative does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_drops_the_event() {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = manifests(dir.path(), &failing(&ns, &base, false));
    let listen = free_addr();
    let _ofe = KillOnDrop(start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    receiver
        .wait_for(Duration::from_secs(30), "three failed events", |r| r.on("/fail").len() >= 6)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(receiver.on("/dead").is_empty(), "nothing is kept");
    let metrics = support::get(&format!("http://{listen}/metrics")).await;
    assert!(support::counter(&metrics, "ofe_trigger_events_dropped_total{") > 0, "{metrics}");
}

/// `ofe deadletters list --json` for Trigger `orders`: the ids held, in store order.
fn listed(listen: SocketAddr, ns: &str) -> Vec<String> {
    let out =
        support::tool(listen, &["deadletters", "list", "-n", ns, "--trigger", "orders", "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    answer["subscribers"][0]["result"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|l| l["id"].as_str().expect("an id").to_string())
        .collect()
}

/// Waits until the store holds `n` letters; returns their ids.
async fn wait_listed(listen: SocketAddr, ns: &str, n: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let ids = listed(listen, ns);
        if ids.len() == n {
            return ids;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{n} letters expected, have {ids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scenario: a sink fails for a while, its events are kept; they survive a restart; one
/// is purged; after the sink recovers a redrive delivers the rest, and the store is empty.
async fn redrive_after_recovery(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (receiver, base) = Receiver::start().await;
    receiver.set_flaky(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(
        &ns,
        &format!("{base}/flaky"),
        ", retry: 1, backoffDelay: PT0.05S",
        &bus(&ns),
    );
    let folder = manifests(dir.path(), &yaml);
    let data = dir.path().join("data");
    let (listen, webhooks) = (free_addr(), free_addr());
    let mut ofe = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    for n in 0..6 {
        support::post_order(webhooks, &ns, n).await;
    }
    let ids = wait_listed(listen, &ns, 6).await;
    let expected: Vec<String> = (0..6).map(|n| format!("order-{n}")).collect();
    assert_eq!(ids, expected, "every failed event is kept, in order");
    let label = format!("namespace=\"{ns}\"");
    let start = std::time::Instant::now();
    while support::gauge(listen, "ofe_trigger_dead_letters", &label).await != Some(6) {
        assert!(start.elapsed() < Duration::from_secs(30), "the gauge counts the 6 letters");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = support::tool(
        listen,
        &["deadletters", "show", "-n", &ns, "--trigger", "orders", "--id", "order-2"],
    );
    assert!(shown.contains("\"ofeerrorcode\": \"500\""), "{shown}");
    assert!(shown.contains(&format!("\"ofeerrordest\": \"{base}/flaky\"")), "{shown}");
    assert!(shown.contains("\"data\": {\n    \"n\": 2\n  }"), "JSON data shown as JSON: {shown}");
    let listed_text =
        support::tool(listen, &["deadletters", "list", "-n", &ns, "--trigger", "orders"]);
    assert!(
        listed_text.contains(&format!("{ns}/orders subscriber 0: 6 dead letters")),
        "{listed_text}"
    );

    // Kept on the bus, not in the process: a restart finds them all.
    assert!(terminate(&mut ofe.0).success());
    let (listen, webhooks) = (free_addr(), free_addr());
    let _again = KillOnDrop(support::start_ofe_with_webhooks(&folder, &data, listen, webhooks));
    wait_ready(listen).await;
    assert_eq!(wait_listed(listen, &ns, 6).await, expected, "the same letters after a restart");

    let purged = support::tool(
        listen,
        &["deadletters", "purge", "-n", &ns, "--trigger", "orders", "--id", "order-5"],
    );
    assert!(purged.contains("1 dead letter purged"), "{purged}");

    // The function is fixed; a redrive delivers what is left, each once, as it first was.
    receiver.set_flaky(false);
    let failed_before = receiver.on("/flaky").len();
    let redriven = support::tool(
        listen,
        &["deadletters", "redrive", "-n", &ns, "--trigger", "orders", "--all"],
    );
    assert!(
        redriven.contains("5 redriven and removed, 0 failed again, 0 left in the store"),
        "{redriven}"
    );
    let after: Vec<support::Received> =
        receiver.on("/flaky").into_iter().skip(failed_before).collect();
    let ids: Vec<String> = after.iter().map(|r| r.header("ce-id")).collect();
    assert_eq!(ids, expected[..5].to_vec(), "the five kept events, once each, in order");
    for r in &after {
        assert!(
            r.header("ce-ofeerrorcode").is_empty(),
            "redriven as the event was, without the error context"
        );
        let first = receiver
            .on("/flaky")
            .into_iter()
            .find(|f| f.header("ce-id") == r.header("ce-id"))
            .expect("a first attempt");
        assert_eq!(
            r.header("idempotency-key"),
            first.header("idempotency-key"),
            "the same key as the first attempts"
        );
    }
    assert!(listed(listen, &ns).is_empty(), "the store is empty after the redrive");
    let start = std::time::Instant::now();
    while support::gauge(listen, "ofe_trigger_dead_letters", &label).await != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(30), "the gauge drops to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_every_bus!(redrive_after_recovery:
    redrive_after_recovery_on_the_embedded_bus,
    redrive_after_recovery_on_jetstream,
    redrive_after_recovery_on_kafka
);

/// Asking for letters of what does not run says what does; a redrive without `--id` or
/// `--all` is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclear_requests_are_refused_with_the_fix() {
    let ns = support::unique_namespace();
    let (_receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(&ns, &format!("{base}/fn"), "", "");
    let folder = manifests(dir.path(), &yaml);
    let listen = free_addr();
    let _ofe = KillOnDrop(start_ofe(&folder, &dir.path().join("data"), listen));
    wait_ready(listen).await;
    let endpoint = format!("http://{listen}");
    let run = |args: &[&str]| {
        let output =
            support::ofe().args(args).args(["--endpoint", &endpoint]).output().expect("run");
        assert!(!output.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let error = run(&["deadletters", "list", "-n", &ns, "--trigger", "nope"]);
    assert!(
        error.contains(&format!(
            "no Trigger {ns}/nope runs here; running: {ns}/orders subscriber 0"
        )),
        "{error}"
    );
    let error = run(&["deadletters", "redrive", "-n", &ns, "--trigger", "orders"]);
    assert!(error.contains("--id ID for one event, or --all for every one"), "{error}");
}

/// While a sink keeps failing, letters keep coming and the bus never goes quiet: the store
/// still answers its first `list` at once (it reads in what the bus holds up to the letters it
/// holds, not until the letters stop), and lists what came.
async fn listed_while_letters_keep_coming(bus: impl Fn(&str) -> String) {
    let ns = support::unique_namespace();
    let (_receiver, base) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = support::orders_pipeline(&ns, &format!("{base}/fail"), ", retry: 0", &bus(&ns));
    let folder = manifests(dir.path(), &yaml);
    let run = support::Running::start(&folder, &dir.path().join("data")).await;
    let webhooks = run.webhooks;
    let flow_ns = ns.clone();
    let flow = tokio::spawn(async move {
        for n in 0.. {
            support::post_order(webhooks, &flow_ns, n).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let url = format!(
        "http://{}/deadletters/list?namespace={ns}&trigger=orders&subscriber=0",
        run.listen
    );
    let asked = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(8), support::get(&url))
        .await
        .expect("the list answers while letters keep coming");
    flow.abort();
    assert!(asked.elapsed() < Duration::from_secs(8));
    let listed: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    let letters = listed["subscribers"][0]["result"].as_array().map_or(0, Vec::len);
    assert!(letters >= 5, "the letters so far: {answer}");
}

on_every_bus!(listed_while_letters_keep_coming:
    listed_while_letters_keep_coming_on_embedded,
    listed_while_letters_keep_coming_on_jetstream,
    listed_while_letters_keep_coming_on_kafka);
