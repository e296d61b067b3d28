//! The embedded bus passes the backend suite, and keeps what it acknowledged across restarts.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader as _;
use ofe_core::{EventBus, Subject};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_testkit::{self as testing, sample_event, subscribe};

fn open(dir: &std::path::Path) -> EmbeddedBus {
    EmbeddedBus::open(EmbeddedConfig::new(dir)).expect("open embedded bus")
}

/// A bus in a directory that lives as long as the test process (tests are short).
async fn fresh() -> Arc<dyn EventBus> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir").keep();
    Arc::new(open(&dir))
}

ofe_testkit::conformance_suite!(connect: fresh().await, settle: Duration::ZERO);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    testing::publish_reports_duplicates(&bus, "dups").await;
    bus.close().await.expect("close");
}

/// Acked events stay acked after a restart; unacked ones come back; new ones continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_after_the_last_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Subject::event("ns", "src", "e");
    {
        let bus = open(dir.path());
        let mut sub = subscribe(&bus, "c", &s, 16).await;
        for i in 0..10 {
            bus.publish(&s, &sample_event(&format!("e-{i}"), i)).await.expect("publish");
        }
        for _ in 0..4 {
            let d = sub.next().await.expect("next");
            d.ack().await.expect("ack");
        }
        let held = sub.next().await.expect("next");
        assert_eq!(held.event.id(), "e-4");
        std::mem::forget(held); // as if the process died holding it
        bus.close().await.expect("close");
    }
    let bus = open(dir.path());
    assert_eq!(bus.last_sequence(), 10, "sequence numbering must survive a restart");
    let mut sub = subscribe(&bus, "c", &s, 16).await;
    let first = sub.next().await.expect("next");
    assert_eq!(first.event.id(), "e-4", "resume must start at the first unacked event");
    first.ack().await.expect("ack");
    bus.publish(&s, &sample_event("e-10", 10)).await.expect("publish after restart");
    let mut rest = Vec::new();
    for _ in 0..6 {
        let d = sub.next().await.expect("next");
        rest.push(d.event.id().to_string());
        d.ack().await.expect("ack");
    }
    assert_eq!(rest, ["e-5", "e-6", "e-7", "e-8", "e-9", "e-10"]);
    bus.close().await.expect("close");
}

/// A new consumer starting at `New` does not see history, and that start point is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_consumer_starts_at_new_and_remembers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Subject::event("ns", "src", "e");
    {
        let bus = open(dir.path());
        bus.publish(&s, &sample_event("old", 0)).await.expect("publish");
        let options = ofe_core::SubscribeOptions::new("late", vec![s.clone()]);
        let mut sub = bus.subscribe(options).await.expect("subscribe");
        testing::assert_quiet(&mut sub, Duration::from_millis(200)).await;
        bus.publish(&s, &sample_event("during", 1)).await.expect("publish");
        bus.close().await.expect("close");
    }
    let bus = open(dir.path());
    let options = ofe_core::SubscribeOptions::new("late", vec![s.clone()]);
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("next");
    assert_eq!(d.event.id(), "during", "an event published after the consumer existed was lost");
    d.ack().await.expect("ack");
    bus.close().await.expect("close");
}

/// The duplicate window survives a restart, so a re-fired deterministic id is still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_window_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Subject::event("ns", "src", "e");
    let event = sample_event("fixed-id", 1);
    {
        let bus = open(dir.path());
        assert!(!bus.publish(&s, &event).await.expect("publish").duplicate);
        bus.close().await.expect("close");
    }
    let bus = open(dir.path());
    assert!(bus.publish(&s, &event).await.expect("publish").duplicate);
    bus.close().await.expect("close");
}

/// After close, publishing fails instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_bus_refuses_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let s = Subject::event("ns", "src", "e");
    let mut sub = subscribe(&bus, "c", &s, 1).await;
    bus.close().await.expect("close");
    assert!(bus.publish(&s, &sample_event("x", 0)).await.is_err());
    assert!(matches!(sub.next().await, Err(ofe_core::BusError::Closed)));
}

/// The generic restart check of the suite, as every backend runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_restart_resumes_after_the_last_ack() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let reopen: testing::Reopen = Box::new(move || {
        let dir = dir.clone();
        Box::pin(async move { Arc::new(open(dir.path())) as Arc<dyn EventBus> })
    });
    testing::restart_resumes_after_the_last_ack(reopen, "restart").await;
}

/// A consumer nobody reads any more may take other subjects (a router whose Triggers changed)
/// and carries on from where it was; while someone reads it, its subjects are fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_consumer_can_change_its_subjects() {
    use ofe_core::{BusError, SubscribeOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let (a, b) = (Subject::event("ns", "a", "e"), Subject::event("ns", "b", "e"));
    let mut first =
        bus.subscribe(SubscribeOptions::new("router", vec![a.clone()])).await.expect("subscribe");
    bus.publish(&a, &sample_event("a1", 1)).await.expect("publish");
    let d = testing::next_within(&mut first, Duration::from_secs(5)).await;
    assert_eq!(d.event.id(), "a1");
    d.ack().await.expect("ack");
    let both = SubscribeOptions::new("router", vec![a.clone(), b.clone()]);
    assert!(
        matches!(bus.subscribe(both.clone()).await, Err(BusError::ConsumerConflict { .. })),
        "a consumer someone reads keeps its subjects"
    );
    drop(first);
    bus.publish(&b, &sample_event("b1", 2)).await.expect("publish");
    bus.publish(&a, &sample_event("a2", 3)).await.expect("publish");
    let mut second = bus.subscribe(both).await.expect("the idle consumer takes new subjects");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = testing::next_within(&mut second, Duration::from_secs(5)).await;
        ids.push(d.event.id().to_string());
        d.ack().await.expect("ack");
    }
    assert_eq!(ids, ["b1", "a2"], "it carries on after a1, now with b too");
    bus.close().await.expect("close");
}

/// A consumer far behind on a busy log gets every event of its subject, in order: past what
/// the subject index remembers it reads the log, then the index takes it straight to each
/// event; a consumer of another subject, idle meanwhile, is woken for its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_far_behind_gets_every_event_of_its_subject_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let (a, b) = (Subject::event("ns", "src", "a"), Subject::event("ns", "src", "b"));
    let mut sub_a = subscribe(&bus, "reads-a", &a, 1).await;
    let mut sub_b = subscribe(&bus, "reads-b", &b, 1).await;
    for i in 0..1000 {
        let s = if i % 4 == 0 { &b } else { &a };
        bus.publish(s, &sample_event(&format!("e-{i}"), i)).await.expect("publish");
    }
    for (sub, mine) in [(&mut sub_a, 1..4), (&mut sub_b, 0..1)] {
        for i in (0..1000).filter(|i| mine.contains(&(i % 4))) {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("in time")
                .expect("delivery");
            assert_eq!(d.event.id(), format!("e-{i}"));
            d.ack().await.expect("ack");
        }
    }
    // Idle and up to date, b is woken by the next event of its own.
    bus.publish(&b, &sample_event("late", 1000)).await.expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), sub_b.next())
        .await
        .expect("woken in time")
        .expect("delivery");
    assert_eq!(d.event.id(), "late");
    bus.close().await.expect("close");
}

/// When its live consumers fall behind by most of `maxBytes`, the durable bus refuses new
/// events from sources instead of letting retention by size drop events they still want:
/// backpressure reaches the source (a webhook answers 503, a broker source waits). Hops inside
/// ofe are still taken, and once the consumer catches up, publishing resumes; nothing
/// accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_near_max_bytes_refuses_sources_rather_than_lose_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EmbeddedConfig { max_bytes: 20_000, ..EmbeddedConfig::new(dir.path()) };
    let bus = EmbeddedBus::open(config).expect("open");
    let accepted =
        testing::a_full_bus_refuses_rather_than_drop(&bus, "spec.embedded.maxBytes").await;
    assert!(accepted >= 20, "refused too early: after {accepted} events");
    let s = Subject::event("ns", "src", "e");
    // With no live consumer, nothing is held back: retention keeps the newest, as a ring.
    for i in 0..2 * accepted {
        bus.publish(&s, &sample_event(&format!("late-{i}"), i))
            .await
            .expect("no consumer holds it");
    }
    bus.close().await.expect("close");
}
