//! The in-memory bus passes the backend suite (it keeps the contract while the process lives),
//! and drops its oldest events past its size, without losing its place.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader as _;
use ofe_eventbus::embedded::{EmbeddedBus, MemoryConfig};
use ofe_eventbus::testing::{self, sample_event, subscribe};
use ofe_eventbus::{EventBus, Subject};

async fn fresh() -> Option<Arc<dyn EventBus>> {
    Some(Arc::new(EmbeddedBus::in_memory(MemoryConfig::default())))
}

ofe_eventbus::conformance_suite!(connect: fresh().await, settle: Duration::ZERO);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_duplicates() {
    let bus = EmbeddedBus::in_memory(MemoryConfig::default());
    testing::publish_reports_duplicates(&bus, "dups").await;
    bus.close().await.expect("close");
}

/// Past `max_bytes` the oldest events go: a consumer that was behind skips them and carries
/// on with what is kept, in order; one that keeps up gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_the_oldest_and_consumers_carry_on() {
    // Each sample event counts its data plus 256 bytes: about 300 bytes, so 10 fit in 3000.
    let config = MemoryConfig { max_bytes: 3000, ..MemoryConfig::default() };
    let bus = EmbeddedBus::in_memory(config);
    let s = Subject::event("ns", "src", "e");
    let mut live = subscribe(&bus, "live", &s, 1000).await;
    let mut late = subscribe(&bus, "late", &s, 1).await;
    for i in 0..100 {
        bus.publish(&s, &sample_event(&format!("e-{i}"), i)).await.expect("publish");
        let d = testing::next_within(&mut live, Duration::from_secs(5)).await;
        assert_eq!(d.event.id(), format!("e-{i}"), "a consumer that keeps up gets each event");
        d.ack().await.expect("ack");
    }
    // `late` read nothing while its backlog outgrew the bus: it resumes at the oldest event
    // kept, and gets the rest in order.
    let mut kept = Vec::new();
    loop {
        let d = testing::next_within(&mut late, Duration::from_secs(5)).await;
        let id = d.event.id().to_string();
        d.ack().await.expect("ack");
        kept.push(id.trim_start_matches("e-").parse::<u64>().expect("an e-N id"));
        if kept.last() == Some(&99) {
            break;
        }
    }
    assert!((5..=12).contains(&kept.len()), "about ten events fit in 3000 bytes: {kept:?}");
    assert!(kept.windows(2).all(|w| w[0] + 1 == w[1]), "what is kept comes in order: {kept:?}");
    testing::assert_quiet(&mut late, Duration::from_millis(100)).await;
    bus.close().await.expect("close");
}
