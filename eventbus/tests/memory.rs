//! The in-memory bus passes the backend suite (it keeps the contract while the process lives),
//! and drops its oldest events past its size, without losing its place.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader as _;
use ofe_core::{EventBus, Subject};
use ofe_eventbus::embedded::{EmbeddedBus, MemoryConfig};
use ofe_testkit::{self as testing, sample_event, subscribe};

async fn fresh() -> Arc<dyn EventBus> {
    Arc::new(EmbeddedBus::in_memory(MemoryConfig::default()))
}

ofe_testkit::conformance_suite!(connect: fresh().await, settle: Duration::ZERO);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_duplicates() {
    let bus = EmbeddedBus::in_memory(MemoryConfig::default());
    testing::publish_reports_duplicates(&bus, "dups").await;
    bus.close().await.expect("close");
}

/// A full bus refuses publishes while its consumers still want what it holds, instead of
/// dropping any of it: backpressure reaches the source, and once the consumer catches up,
/// publishing resumes and every accepted event arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bus_refuses_rather_than_drop_what_consumers_want() {
    // Each sample event counts its data plus 256 bytes: about 265 bytes, so 11 fit in 3000.
    let bus = EmbeddedBus::in_memory(MemoryConfig { max_bytes: 3000, ..MemoryConfig::default() });
    let accepted = testing::a_full_bus_refuses_rather_than_drop(&bus, "maxBytes").await;
    assert!((5..=12).contains(&accepted), "about 11 events fit: {accepted}");
    bus.close().await.expect("close");
}

/// With no consumer using it, the bus keeps only its newest events (a ring, like retention on
/// the durable bus); a consumer that comes later with `StartPosition::All` gets what is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_consumer_the_oldest_events_make_room() {
    let bus = EmbeddedBus::in_memory(MemoryConfig { max_bytes: 3000, ..MemoryConfig::default() });
    let s = Subject::event("ns", "src", "e");
    for i in 0..100 {
        bus.publish(&s, &sample_event(&format!("e-{i}"), i)).await.expect("publish");
    }
    let mut late = subscribe(&bus, "late", &s, 1000).await;
    let mut kept = Vec::new();
    while kept.last() != Some(&99) {
        let d = testing::next_within(&mut late, Duration::from_secs(5)).await;
        kept.push(d.event.id().trim_start_matches("e-").parse::<u64>().expect("an e-N id"));
        d.ack().await.expect("ack");
    }
    assert!((5..=12).contains(&kept.len()), "about 11 events fit: {kept:?}");
    assert!(kept.windows(2).all(|w| w[0] + 1 == w[1]), "the newest, in order: {kept:?}");
    testing::assert_quiet(&mut late, Duration::from_millis(100)).await;
    bus.close().await.expect("close");
}

/// A consumer whose subjects are quiet never reads, so it must not hold back what fills the
/// bus: with it subscribed, a busy consumer that keeps up can stream far more than the bus
/// holds, and the quiet one still gets its own event when it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_consumer_does_not_hold_the_bus_full() {
    let bus = EmbeddedBus::in_memory(MemoryConfig { max_bytes: 3000, ..MemoryConfig::default() });
    let (busy_subject, quiet_subject) =
        (Subject::event("ns", "src", "busy"), Subject::event("ns", "src", "quiet"));
    let mut quiet = subscribe(&bus, "quiet", &quiet_subject, 16).await;
    let mut busy = subscribe(&bus, "busy", &busy_subject, 16).await;
    for i in 0..200 {
        bus.publish(&busy_subject, &sample_event(&format!("b-{i}"), i))
            .await
            .unwrap_or_else(|e| panic!("publish {i} of 200 into a bus that holds 11: {e}"));
        let d = testing::next_within(&mut busy, Duration::from_secs(5)).await;
        assert_eq!(d.event.id(), format!("b-{i}"));
        d.ack().await.expect("ack");
    }
    bus.publish(&quiet_subject, &sample_event("q", 0)).await.expect("publish");
    let d = testing::next_within(&mut quiet, Duration::from_secs(5)).await;
    assert_eq!(d.event.id(), "q");
    bus.close().await.expect("close");
}

/// Events older than `max_age` are gone, whoever has not read them: a consumer that comes
/// later gets only the newer ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_expire() {
    let config = MemoryConfig { max_age: Duration::from_millis(200), ..MemoryConfig::default() };
    let bus = EmbeddedBus::in_memory(config);
    let s = Subject::event("ns", "src", "e");
    for i in 0..3 {
        bus.publish(&s, &sample_event(&format!("old-{i}"), i)).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    bus.publish(&s, &sample_event("new", 0)).await.expect("publish");
    let mut late = subscribe(&bus, "late", &s, 16).await;
    let d = testing::next_within(&mut late, Duration::from_secs(5)).await;
    assert_eq!(d.event.id(), "new", "the expired events must not be delivered");
    d.ack().await.expect("ack");
    testing::assert_quiet(&mut late, Duration::from_millis(100)).await;
    bus.close().await.expect("close");
}
