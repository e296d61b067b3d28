//! The NATS source against a real server. `OFE_TEST_NATS` names it (e.g.
//! `nats://127.0.0.1:4222`); unset, the tests skip and say so.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use cloudevents::AttributesReader;
use ofe_core::{Delivery, EventBus, StartPosition, Subject, SubscribeOptions, Subscription};
use ofe_crds::{NatsJetStreamSourceSpec, NatsSourceSpec};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::metrics::EventLabels;
use ofe_eventsource::nats::NatsSource;
use tokio_util::sync::CancellationToken;

struct Setup {
    url: String,
    client: async_nats::Client,
    bus: EmbeddedBus,
    sub: Box<dyn Subscription>,
    run: String,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let url = ofe_testkit::broker_var("OFE_TEST_NATS");
    let client = async_nats::connect(&url).await.expect("NATS must be reachable at OFE_TEST_NATS");
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let mut options = SubscribeOptions::new("test", vec![Subject::event("ns", "cars", "feed")]);
    options.start = StartPosition::All;
    let sub = bus.subscribe(options).await.expect("subscribe");
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    Setup { url, client, bus, sub, run, _dir: dir }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    ofe_testkit::next_within(sub, Duration::from_secs(20)).await
}

fn binary_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "n-1"),
        ("ce-source", "/cars/v3"),
        ("ce-type", "com.example.nats"),
        ("ce-traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("content-type", "application/json"),
    ] {
        h.insert(name, value);
    }
    h
}

fn text(event: &cloudevents::Event, name: &str) -> Option<String> {
    event.extension(name).map(ToString::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn core_subjects_become_events() {
    let mut s = setup().await;
    let spec = NatsSourceSpec {
        url: s.url.clone(),
        subject: format!("src.{}.>", s.run),
        ..Default::default()
    };
    let source = NatsSource::new("ns", "cars", "feed", &spec).expect("source");
    let shutdown = CancellationToken::new();
    let bus: Arc<dyn EventBus> = Arc::new(s.bus.clone());
    let task = tokio::spawn(source.run(bus, SourceMetrics::default(), shutdown.clone()));
    let subject = format!("src.{}.v3", s.run);
    // Core NATS keeps nothing for absent subscribers: publish until the subscription exists.
    let mut warm = None;
    for _ in 0..100 {
        s.client.publish(subject.clone(), "warm-up".into()).await.expect("publish");
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), s.sub.next()).await {
            warm = Some(d);
            break;
        }
    }
    let warm = warm.expect("a core NATS message reached the bus");
    assert_eq!(warm.event.ty(), "io.openfunction.events.nats");
    assert_eq!(warm.event.subject(), Some(subject.as_str()), "the NATS subject is the subject");
    assert_eq!(warm.event.datacontenttype(), Some("application/octet-stream"));
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), s.sub.next()).await {}
    s.client
        .publish_with_headers(subject.clone(), binary_headers(), r#"{"speed":77}"#.into())
        .await
        .expect("publish");
    let binary = next(&mut s.sub).await;
    assert_eq!(binary.event.id(), "n-1", "binary mode keeps the id");
    assert_eq!(binary.event.source().to_string(), "/cars/v3");
    assert_eq!(binary.event.ty(), "com.example.nats");
    assert_eq!(
        text(&binary.event, "traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(text(&binary.event, "ofeevent").as_deref(), Some("feed"));
    assert_eq!(ofe_core::event::data_bytes(&binary.event), br#"{"speed":77}"#.to_vec());
    shutdown.cancel();
    task.await.expect("source stops on shutdown");
    s.bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_nats),
    ignore = "needs OFE_TEST_NATS (scripts/test.sh starts the services)"
)]
async fn jetstream_messages_are_acked_after_the_bus_has_them() {
    let mut s = setup().await;
    let js = async_nats::jetstream::new(s.client.clone());
    let stream = format!("SRC_{}", s.run);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("jsrc.{}.>", s.run)],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let subject = format!("jsrc.{}.v3", s.run);
    let publish = async |payload: &'static str, headers: Option<HeaderMap>| {
        let ack = match headers {
            Some(h) => js.publish_with_headers(subject.clone(), h, payload.into()).await,
            None => js.publish(subject.clone(), payload.into()).await,
        };
        ack.expect("publish").await.expect("stored");
    };
    // Published before the source exists: JetStream keeps them.
    publish(r#"{"speed":120}"#, None).await;
    publish(r#"{"speed":77}"#, Some(binary_headers())).await;
    let spec = NatsSourceSpec {
        url: s.url.clone(),
        subject: format!("jsrc.{}.>", s.run),
        jetstream: Some(NatsJetStreamSourceSpec {
            stream: stream.clone(),
            initial_offset: Some("earliest".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let source = NatsSource::new("ns", "cars", "feed", &spec).expect("source");
    let bus: Arc<dyn EventBus> = Arc::new(s.bus.clone());
    let metrics = SourceMetrics::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.clone().run(bus.clone(), metrics.clone(), shutdown.clone()));
    let plain = next(&mut s.sub).await;
    assert_eq!(plain.event.subject(), Some(subject.as_str()));
    assert_eq!(plain.event.datacontenttype(), Some("application/json"));
    let binary = next(&mut s.sub).await;
    assert_eq!(binary.event.id(), "n-1");
    // Wait until the durable consumer has both acknowledged.
    let consumer_name = "ofe-ns-cars-feed";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(&stream)
            .await
            .expect("stream")
            .get_consumer(consumer_name)
            .await
            .expect("the durable consumer exists");
        let info = consumer.info().await.expect("info");
        if info.ack_floor.stream_sequence == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not acknowledged: {:?}", info.ack_floor);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.expect("source stops on shutdown");

    // A restart resumes after the acknowledged messages.
    publish("third", None).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(bus, metrics.clone(), shutdown.clone()));
    let third = next(&mut s.sub).await;
    assert_eq!(ofe_core::event::data_bytes(&third.event), b"third".to_vec());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let labels = EventLabels::new("ns", "cars", "nats", "feed");
    assert_eq!(metrics.received.get_or_create(&labels).get(), 3, "nothing acknowledged came again");
    shutdown.cancel();
    task.await.expect("source stops on shutdown");
    js.delete_stream(&stream).await.expect("delete stream");
    s.bus.close().await.expect("close");
}
