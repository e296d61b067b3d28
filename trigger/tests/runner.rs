//! The subscriber runner against the embedded bus and a real HTTP receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Uri};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventbus::testing::sample_event;
use ofe_eventbus::{EventBus, Subject};
use ofe_trigger::runner::{self, Route, SubscriberPlan};
use ofe_trigger::{Deliverer, Destination, RetryPolicy, SubscriberLabels, TriggerMetrics};
use tokio_util::sync::CancellationToken;

type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

async fn receiver() -> (Seen, String) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let record = record.clone();
        async move {
            record.lock().expect("lock").push((uri.path().to_string(), headers));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, base)
}

/// An event the process kept dying on (abandoned deliveries) is dead-lettered, unattempted,
/// once it exceeds `max_deliver`, with the reason, instead of looping for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_dead_lettered_after_max_deliver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let shared: Arc<dyn EventBus> = Arc::new(bus.clone());
    let (seen, base) = receiver().await;
    let subject = Subject::event("ns", "src", "e");
    let plan = SubscriberPlan {
        labels: SubscriberLabels {
            namespace: "ns".into(),
            trigger: "t".into(),
            subscriber: "0".into(),
        },
        consumer: "poison".into(),
        subjects: vec![subject.clone()],
        routing: None,
        routes: vec![Route {
            destination: Destination::Http { url: format!("{base}/sink") },
            dead_letter: Some(Destination::Http { url: format!("{base}/dead") }),
        }],
        max_in_flight: 4,
        retry: RetryPolicy::default(),
        max_deliver: 3,
    };
    let subscription = runner::subscribe(&plan, shared.as_ref()).await.expect("subscribe");
    bus.publish(&subject, &sample_event("poison-1", 1)).await.expect("publish");
    // Three processes took the event and died without settling it.
    let mut crashing = runner::subscribe(&plan, shared.as_ref()).await.expect("subscribe");
    for attempt in 1..=3 {
        let d = crashing.next().await.expect("delivery");
        assert_eq!(d.attempt, attempt);
        drop(d);
    }
    drop(crashing);
    let deliverer = Deliverer::new(shared.clone()).expect("client");
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner::run(
        plan,
        subscription,
        deliverer,
        TriggerMetrics::default(),
        stop.clone(),
        Duration::from_secs(5),
    ));
    for _ in 0..100 {
        if !seen.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    task.await.expect("join").expect("runner");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "exactly one request, to the dead letter: {seen:?}");
    let (path, headers) = &seen[0];
    assert_eq!(path, "/dead", "the sink must not be attempted again");
    let reason = headers["ce-ofeerrorreason"].to_str().expect("text");
    assert!(reason.contains("delivered 4 times"), "{reason}");
    assert!(reason.contains("max_deliver 3"), "{reason}");
    bus.close().await.expect("close");
}
