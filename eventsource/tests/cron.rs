//! The cron source publishes CloudEvents with the documented attributes on the bus, and a
//! re-fired tick is recognised as a duplicate.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cloudevents::AttributesReader;
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::{CronSource, Schedule, SourceMetrics};
use tokio_util::sync::CancellationToken;

fn source() -> CronSource {
    CronSource {
        namespace: "team-a".into(),
        eventsource: "clock".into(),
        event: "tick".into(),
        schedule_text: "@every 1s".into(),
        schedule: Schedule::parse("@every 1s", None).expect("schedule"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_events_reach_the_bus_with_their_attributes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    let subject = Subject::event("team-a", "clock", "tick");
    let mut options = SubscribeOptions::new("test", vec![subject.clone()]);
    options.start = StartPosition::All;
    let mut sub = bus.subscribe(options).await.expect("subscribe");

    let metrics = SourceMetrics::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source().run(shared, metrics.clone(), shutdown.clone()));

    let mut times = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a fire within 5s")
            .expect("delivery");
        let e = &d.event;
        assert_eq!(e.ty(), "io.openfunction.events.cron");
        assert_eq!(
            e.source().to_string(),
            "/apis/events.openfunction.io/v1alpha1/namespaces/team-a/eventsources/clock"
        );
        assert_eq!(e.subject(), Some("tick"));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        for (ext, want) in
            [("ofenamespace", "team-a"), ("ofeeventsource", "clock"), ("ofeevent", "tick")]
        {
            assert_eq!(e.extension(ext).map(ToString::to_string).as_deref(), Some(want), "{ext}");
        }
        let time = e.time().copied().expect("time set");
        assert_eq!(time.timestamp_subsec_millis(), 0, "@every 1s fires on whole seconds");
        times.push(time);
        d.ack().await.expect("ack");
    }
    assert_eq!((times[1] - times[0]).num_seconds(), 1);
    shutdown.cancel();
    task.await.expect("task ends on shutdown");

    // The same tick fired again (a restart, or a second replica) is recognised.
    let again = source().event_for(times[0]).expect("event");
    let published = bus.publish(&subject, &again).await.expect("publish");
    assert!(published.duplicate, "a re-fired tick must be a detectable duplicate");
    bus.close().await.expect("close");
}

#[test]
fn ids_are_deterministic_per_tick_and_distinct_between_ticks() {
    let now = Utc::now();
    let a = source().event_for(now).expect("event");
    let b = source().event_for(now).expect("event");
    let c = source().event_for(now + chrono::TimeDelta::seconds(1)).expect("event");
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id(), c.id());
    let mut other = source();
    other.namespace = "team-b".into();
    assert_ne!(other.event_for(now).expect("event").id(), a.id());
}
