//! The subscriber runner against the embedded bus and a real HTTP receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Uri};
use ofe_core::{EventBus, Subject};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_testkit::sample_event;
use ofe_trigger::runner::{self, Route, SubscriberPlan};
use ofe_trigger::{Deliverer, Destination, RetryPolicy, SubscriberLabels, TriggerMetrics};
use tokio_util::sync::CancellationToken;

/// One request a test server received.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    headers: HeaderMap,
    /// When it arrived, from the server's start.
    at: Duration,
    /// When the answer was sent; zero until then.
    done: Duration,
}

type Seen = Arc<Mutex<Vec<Request>>>;

/// What the server answers to the `n`th request (0-based) on a path: status, extra headers,
/// body, and how long it takes.
type Answer = fn(&str, usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration);

/// A real HTTP server on loopback that records requests and answers as `answer` says; with
/// it, the largest number of requests it served at once.
async fn server(answer: Answer) -> (Seen, String, Arc<Mutex<(usize, usize)>>) {
    let seen: Seen = Arc::default();
    let busy: Arc<Mutex<(usize, usize)>> = Arc::default();
    let (record, gauge) = (seen.clone(), busy.clone());
    let start = std::time::Instant::now();
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let (record, gauge) = (record.clone(), gauge.clone());
        async move {
            let path = uri.path().to_string();
            let (n, index) = {
                let mut seen = record.lock().expect("lock");
                let n = seen.iter().filter(|r| r.path == path).count();
                let at = start.elapsed();
                seen.push(Request { path: path.clone(), headers, at, done: Duration::ZERO });
                (n, seen.len() - 1)
            };
            {
                let mut g = gauge.lock().expect("lock");
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            let (status, extra, body, delay) = answer(&path, n);
            tokio::time::sleep(delay).await;
            gauge.lock().expect("lock").0 -= 1;
            record.lock().expect("lock")[index].done = start.elapsed();
            let mut response = axum::response::Response::new(axum::body::Body::from(body));
            *response.status_mut() = axum::http::StatusCode::from_u16(status).expect("status");
            for (name, value) in extra {
                response.headers_mut().insert(name, value.parse().expect("header"));
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, base, busy)
}

fn ok(_: &str, _: usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration) {
    (200, Vec::new(), Vec::new(), Duration::ZERO)
}

/// A plan delivering `subject` to `base/sink`, dead letters to `base/dead`.
fn plan(consumer: &str, subject: &Subject, base: &str) -> SubscriberPlan {
    SubscriberPlan {
        labels: SubscriberLabels {
            namespace: "ns".into(),
            trigger: "t".into(),
            subscriber: "0".into(),
        },
        consumer: consumer.into(),
        subjects: vec![subject.clone()],
        routing: None,
        routes: vec![Route {
            destination: Destination::http(&format!("{base}/sink")).expect("a URL"),
            dead_letter: Some(Destination::http(&format!("{base}/dead")).expect("a URL")),
        }],
        max_in_flight: 4,
        retry: RetryPolicy { delay: Duration::from_millis(10), ..RetryPolicy::default() },
        order_key: None,
        reply: None,
        rate_limit: None,
        delay: None,
        dedupe: None,
        max_deliver: 3,
        paused: false,
        dead_letters: None,
        transform: None,
        batch: None,
    }
}

/// A bus in a temporary directory.
fn bus() -> (tempfile::TempDir, Arc<dyn EventBus>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    (dir, Arc::new(bus))
}

/// Publishes `events`, then runs `plan` until `seen` holds `count` requests (or 20 s pass),
/// then stops it.
async fn run_until(
    plan: SubscriberPlan,
    bus: &Arc<dyn EventBus>,
    events: Vec<cloudevents::Event>,
    seen: &Seen,
    count: usize,
) {
    let subscription = runner::subscribe(&plan, bus.as_ref()).await.expect("subscribe");
    run_subscribed(plan, subscription, bus, events, seen, count).await;
}

/// [`run_until`] on an open subscription.
async fn run_subscribed(
    plan: SubscriberPlan,
    subscription: Box<dyn ofe_core::Subscription>,
    bus: &Arc<dyn EventBus>,
    events: Vec<cloudevents::Event>,
    seen: &Seen,
    count: usize,
) {
    let subject = plan.subjects[0].clone();
    for event in &events {
        bus.publish(&subject, event).await.expect("publish");
    }
    let deliverer = Deliverer::new(bus.clone()).expect("client");
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner::run(
        plan,
        subscription,
        deliverer,
        TriggerMetrics::default(),
        tokio::sync::watch::channel(false).1,
        stop.clone(),
        Duration::from_secs(5),
    ));
    for _ in 0..400 {
        if seen.lock().expect("lock").len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.expect("join").expect("runner");
}

fn header(r: &Request, name: &str) -> String {
    r.headers.get(name).map(|v| v.to_str().expect("text").to_string()).unwrap_or_default()
}

/// An event the process kept dying on (abandoned deliveries) is dead-lettered, unattempted,
/// once it exceeds `max_deliver`, with the reason, instead of looping for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_dead_lettered_after_max_deliver() {
    let (_dir, shared) = bus();
    let (seen, base, _) = server(ok).await;
    let subject = Subject::event("ns", "src", "e");
    let plan = plan("poison", &subject, &base);
    let subscription = runner::subscribe(&plan, shared.as_ref()).await.expect("subscribe");
    shared.publish(&subject, &sample_event("poison-1", 1)).await.expect("publish");
    // Three processes took the event and died without settling it.
    let mut crashing = runner::subscribe(&plan, shared.as_ref()).await.expect("subscribe");
    for attempt in 1..=3 {
        let d = crashing.next().await.expect("delivery");
        assert_eq!(d.attempt, attempt);
        drop(d);
    }
    drop(crashing);
    run_subscribed(plan, subscription, &shared, Vec::new(), &seen, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "exactly one request, to the dead letter: {seen:?}");
    assert_eq!(seen[0].path, "/dead", "the sink must not be attempted again");
    let reason = header(&seen[0], "ce-ofeerrorreason");
    assert!(reason.contains("delivered 4 times"), "{reason}");
    assert!(reason.contains("max_deliver 3"), "{reason}");
    shared.close().await.expect("close");
}

/// A sink answering 500 is retried, then the event reaches the dead letter with the
/// destination, status, attempt count and the start of the body (base64, since a body need
/// not be text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_of_a_500_carries_the_documented_attributes() {
    fn fail(path: &str, _: usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration) {
        match path {
            "/sink" => {
                let mut body = b"database down\n".to_vec();
                body.extend(std::iter::repeat_n(0xffu8, 2000));
                (500, Vec::new(), body, Duration::ZERO)
            }
            _ => ok(path, 0),
        }
    }
    let (_dir, shared) = bus();
    let (seen, base, _) = server(fail).await;
    let subject = Subject::event("ns", "src", "e");
    let mut plan = plan("dlq", &subject, &base);
    plan.retry.retries = 2;
    run_until(plan, &shared, vec![sample_event("e-500", 1)], &seen, 4).await;
    let seen = seen.lock().expect("lock").clone();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/sink", "/sink", "/sink", "/dead"]);
    let dead = &seen[3];
    assert_eq!(header(dead, "ce-id"), "e-500", "the dead letter is the original event");
    assert_eq!(header(dead, "ce-ofeerrordest"), format!("{base}/sink"));
    assert_eq!(header(dead, "ce-ofeerrorcode"), "500");
    assert_eq!(header(dead, "ce-ofeerrorattempts"), "3");
    assert!(header(dead, "ce-ofeerrorreason").starts_with("HTTP 500: database down"));
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(header(dead, "ce-ofeerrordata"))
        .expect("base64");
    assert_eq!(data.len(), 1024, "the body is truncated to 1 KiB");
    assert!(data.starts_with(b"database down\n\xff\xff"));
    shared.close().await.expect("close");
}

/// Every attempt of one event to one subscriber carries the same `Idempotency-Key`, which
/// differs for another event and for another subscriber, so an idempotent sink can drop
/// what it already answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_an_event_carries_one_idempotency_key() {
    fn flaky(path: &str, n: usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration) {
        match (path, n) {
            ("/sink", 0 | 1) => (503, Vec::new(), Vec::new(), Duration::ZERO),
            _ => ok(path, n),
        }
    }
    let (_dir, shared) = bus();
    let (seen, base, _) = server(flaky).await;
    let subject = Subject::event("ns", "src", "e");
    let mut first = plan("idem-a", &subject, &base);
    first.max_in_flight = 1;
    let events = vec![sample_event("k-1", 1), sample_event("k-2", 2)];
    run_until(first, &shared, events.clone(), &seen, 4).await;
    let requests = seen.lock().expect("lock").clone();
    let keys: Vec<String> = requests.iter().map(|r| header(r, "idempotency-key")).collect();
    assert_eq!(keys.len(), 4, "two failed attempts and a success, then the second event");
    let expected = ofe_trigger::delivery::idempotency_key("idem-a", &events[0]);
    assert_eq!(expected.len(), 32, "{expected}");
    assert_eq!(keys[..3], [expected.clone(), expected.clone(), expected.clone()]);
    assert_eq!(keys[3], ofe_trigger::delivery::idempotency_key("idem-a", &events[1]));
    assert_ne!(keys[3], expected, "another event, another key");
    assert_ne!(
        ofe_trigger::delivery::idempotency_key("idem-b", &events[0]),
        expected,
        "another subscriber, another key"
    );
    shared.close().await.expect("close");
}

/// A real 429 with `Retry-After: 1` holds the retry for a second, though the backoff is 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured() {
    fn throttle(path: &str, n: usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration) {
        match (path, n) {
            ("/sink", 0) => (429, vec![("retry-after", "1".into())], Vec::new(), Duration::ZERO),
            _ => ok(path, n),
        }
    }
    let (_dir, shared) = bus();
    let (seen, base, _) = server(throttle).await;
    let subject = Subject::event("ns", "src", "e");
    run_until(
        plan("throttled", &subject, &base),
        &shared,
        vec![sample_event("e-429", 1)],
        &seen,
        2,
    )
    .await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}, before Retry-After");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    shared.close().await.expect("close");
}

/// With an order key, each key's events arrive one at a time and in order, while different
/// keys are delivered side by side, never more at once than `maxConcurrency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_key_keeps_each_keys_order_and_concurrency_is_bounded() {
    fn slow(_: &str, n: usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration) {
        // Uneven latencies, so that unordered delivery would reorder.
        (200, Vec::new(), Vec::new(), Duration::from_millis(((n * 37) % 5 * 10) as u64))
    }
    let (_dir, shared) = bus();
    let (seen, base, busy) = server(slow).await;
    let subject = Subject::event("ns", "src", "e");
    let mut plan = plan("ordered", &subject, &base);
    plan.max_in_flight = 3;
    plan.order_key = Some(Arc::new(ofe_trigger::KeyExpr::compile("data.k").expect("key")));
    let events: Vec<_> = (0..40)
        .map(|i| {
            let mut e = sample_event(&format!("e{i}"), 1);
            e.set_data("application/json", serde_json::json!({ "k": i % 4, "seq": i }));
            e
        })
        .collect();
    run_until(plan, &shared, events, &seen, 40).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 40);
    for key in 0..4 {
        let of_key: Vec<&Request> = seen
            .iter()
            .filter(|r| header(r, "ce-id")[1..].parse::<usize>().expect("id") % 4 == key)
            .collect();
        let ids: Vec<usize> =
            of_key.iter().map(|r| header(r, "ce-id")[1..].parse().expect("id")).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "key {key} out of order");
        for pair in of_key.windows(2) {
            assert!(
                pair[1].at >= pair[0].done,
                "key {key}: {} started before {} was answered",
                header(pair[1], "ce-id"),
                header(pair[0], "ce-id")
            );
        }
    }
    let peak = busy.lock().expect("lock").1;
    assert!((2..=3).contains(&peak), "peak concurrency {peak}, want 2..=3");
    shared.close().await.expect("close");
}

/// A rate limit paces deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_deliveries() {
    let (_dir, shared) = bus();
    let (seen, base, _) = server(ok).await;
    let subject = Subject::event("ns", "src", "e");
    let mut plan = plan("paced", &subject, &base);
    plan.rate_limit = Some(20);
    let events = (0..11).map(|i| sample_event(&format!("r{i}"), 1)).collect();
    run_until(plan, &shared, events, &seen, 11).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 11);
    let span = seen[10].at - seen[0].at;
    assert!(span >= Duration::from_millis(480), "11 events at 20/s took {span:?}");
    shared.close().await.expect("close");
}

/// A sink that answers every event with a binary-mode CloudEvent.
fn replying(path: &str, n: usize) -> (u16, Vec<(&'static str, String)>, Vec<u8>, Duration) {
    if path != "/sink" {
        return ok(path, n);
    }
    let headers = vec![
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", format!("reply-{n}")),
        ("ce-source", "/front".to_string()),
        ("ce-type", "com.example.enriched".to_string()),
        ("content-type", "application/json".to_string()),
    ];
    (200, headers, br#"{"enriched":true}"#.to_vec(), Duration::ZERO)
}

/// A sink's CloudEvent reply is published to the reply topic, one hop further, before the
/// event is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_reply_reaches_the_reply_topic() {
    let (_dir, shared) = bus();
    let (seen, base, _) = server(replying).await;
    let subject = Subject::event("ns", "src", "e");
    let replies = Subject::topic("ns", "enriched");
    let mut reader = shared
        .subscribe(ofe_core::SubscribeOptions {
            start: ofe_core::StartPosition::All,
            ..ofe_core::SubscribeOptions::new("reader", vec![replies.clone()])
        })
        .await
        .expect("reader");
    let mut plan = plan("replying", &subject, &base);
    plan.reply = Some(replies);
    run_until(plan, &shared, vec![sample_event("order-1", 1)], &seen, 1).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .expect("a reply in time")
        .expect("delivery");
    use cloudevents::AttributesReader as _;
    assert_eq!(reply.event.id(), "reply-0");
    assert_eq!(reply.event.ty(), "com.example.enriched");
    assert_eq!(
        reply.event.extension(ofe_trigger::sink::topic::EXT_HOPS).map(ToString::to_string),
        Some("1".to_string())
    );
    assert_eq!(ofe_core::event::data_bytes(&reply.event), br#"{"enriched":true}"#);
    shared.close().await.expect("close");
}

/// A subscriber whose replies come back to its own input loops; the hop limit stops it and
/// the metric shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_loop_stops_at_the_hop_limit() {
    let (_dir, shared) = bus();
    let (seen, base, _) = server(replying).await;
    let subject = Subject::topic("ns", "loop");
    let mut plan = plan("looping", &subject, &base);
    plan.reply = Some(subject.clone());
    let subscription = runner::subscribe(&plan, shared.as_ref()).await.expect("subscribe");
    shared.publish(&subject, &sample_event("start", 1)).await.expect("publish");
    let metrics = TriggerMetrics::default();
    let deliverer = Deliverer::new(shared.clone()).expect("client").with_max_hops(3);
    let stop = CancellationToken::new();
    let labels = plan.labels.clone();
    let task = tokio::spawn(runner::run(
        plan,
        subscription,
        deliverer,
        metrics.clone(),
        tokio::sync::watch::channel(false).1,
        stop.clone(),
        Duration::from_secs(5),
    ));
    for _ in 0..200 {
        if metrics.loops.get_or_create(&labels).get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await.expect("join").expect("runner");
    assert_eq!(metrics.loops.get_or_create(&labels).get(), 1);
    // The original (0 hops) and its replies at 1, 2 and 3 hops reached the sink; the reply to
    // the third would have made a fourth hop.
    let hops: Vec<String> =
        seen.lock().expect("lock").iter().map(|r| header(r, "ce-ofehops")).collect();
    assert_eq!(hops, ["", "1", "2", "3"]);
    shared.close().await.expect("close");
}

/// A paused subscriber reads nothing more: events wait on the bus (its lag counts them), and
/// on resume they arrive in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscriber_reads_nothing_and_resumes_in_order() {
    let (_dir, shared) = bus();
    let (seen, base, _) = server(ok).await;
    let subject = Subject::event("ns", "src", "e");
    let mut plan = plan("paused", &subject, &base);
    plan.max_in_flight = 1;
    let consumer = plan.consumer.clone();
    let subscription = runner::subscribe(&plan, shared.as_ref()).await.expect("subscribe");
    let (pause, paused) = tokio::sync::watch::channel(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner::run(
        plan,
        subscription,
        Deliverer::new(shared.clone()).expect("client"),
        TriggerMetrics::default(),
        paused,
        stop.clone(),
        Duration::from_secs(5),
    ));
    let delivered = || seen.lock().expect("lock").len();
    let wait_for = |count: usize| {
        let seen = seen.clone();
        async move {
            for _ in 0..400 {
                if seen.lock().expect("lock").len() >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{count} deliveries did not arrive");
        }
    };
    for n in 0..10 {
        shared.publish(&subject, &sample_event(&format!("p-{n}"), n)).await.expect("publish");
    }
    wait_for(10).await;
    pause.send_replace(true);
    for n in 10..20 {
        shared.publish(&subject, &sample_event(&format!("p-{n}"), n)).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(delivered(), 10, "nothing is delivered while paused");
    assert_eq!(shared.lag(&consumer).await.expect("lag"), Some(10), "the events wait on the bus");
    pause.send_replace(false);
    wait_for(20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<String> = seen.lock().expect("lock").iter().map(|r| header(r, "ce-id")).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("p-{n}")).collect();
    assert_eq!(ids, expected, "every event once, in order");
    stop.cancel();
    task.await.expect("join").expect("runner");
    shared.close().await.expect("close");
}
