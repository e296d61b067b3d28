//! The Redis source against a real server. `OFE_TEST_REDIS` names it (e.g.
//! `redis://127.0.0.1:6379`); unset, the tests skip and say so.

use std::sync::Arc;
use std::time::Duration;

use cloudevents::AttributesReader;
use ofe_core::{Delivery, EventBus, StartPosition, Subject, SubscribeOptions, Subscription};
use ofe_crds::RedisSpec;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventsource::SourceMetrics;
use ofe_eventsource::redis::RedisSource;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

struct Setup {
    bus: EmbeddedBus,
    sub: Box<dyn Subscription>,
    redis: redis::aio::MultiplexedConnection,
    host: String,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let url = ofe_testkit::broker_var("OFE_TEST_REDIS");
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be reachable at OFE_TEST_REDIS");
    let host = url.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus");
    let mut options = SubscribeOptions::new("test", vec![Subject::event("ns", "cars", "feed")]);
    options.start = StartPosition::All;
    let sub = bus.subscribe(options).await.expect("subscribe");
    Setup { bus, sub, redis, host, _dir: dir }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    ofe_testkit::next_within(sub, Duration::from_secs(20)).await
}

fn text(event: &cloudevents::Event, name: &str) -> Option<String> {
    event.extension(name).map(ToString::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis),
    ignore = "needs OFE_TEST_REDIS (scripts/test.sh starts the services)"
)]
async fn stream_entries_become_events_and_are_acked_after_the_bus_has_them() {
    let mut s = setup().await;
    let stream = format!("ofe-test-{}", uuid::Uuid::new_v4().simple());
    let spec = RedisSpec {
        redis_host: s.host.clone(),
        stream: Some(stream.clone()),
        initial_offset: Some("earliest".into()),
        processing_timeout: Some("0s".into()),
        ..Default::default()
    };
    let source = RedisSource::new("ns", "cars", "feed", &spec).expect("source");
    // A consumer of the group that read an entry and died: its entry is reclaimed.
    let _: () = s.redis.xgroup_create_mkstream(&stream, source.group(), "0").await.expect("group");
    let _: String = s.redis.xadd(&stream, "*", &[("orphan", "yes")]).await.expect("xadd");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(source.group())
        .arg("dead-replica")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut s.redis)
        .await
        .expect("read as the dead consumer");

    let shutdown = CancellationToken::new();
    let bus: Arc<dyn EventBus> = Arc::new(s.bus.clone());
    let task = tokio::spawn(source.clone().run(bus, SourceMetrics::default(), shutdown.clone()));
    let orphan = next(&mut s.sub).await;
    assert_eq!(
        ofe_core::event::data_bytes(&orphan.event),
        br#"{"orphan":"yes"}"#.to_vec(),
        "the dead consumer's pending entry is claimed and published"
    );

    let plain: String =
        s.redis.xadd(&stream, "*", &[("vehicleId", "v9"), ("speed", "131")]).await.expect("xadd");
    let _: String = s
        .redis
        .xadd(
            &stream,
            "*",
            &[
                ("ce_specversion", "1.0"),
                ("ce_id", "r-1"),
                ("ce_source", "/cars/v9"),
                ("ce_type", "com.example.redis"),
                ("ce_traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("datacontenttype", "application/json"),
                ("data", r#"{"speed":99}"#),
            ],
        )
        .await
        .expect("xadd");
    let _: String = s
        .redis
        .xadd(&stream, "*", &[("data", r#"{"specversion":"1.0","type":"t"}"#)])
        .await
        .expect("xadd");

    let first = next(&mut s.sub).await;
    assert_eq!(first.event.ty(), "io.openfunction.events.redis");
    assert_eq!(first.event.subject(), Some(stream.as_str()), "the stream is the subject");
    assert_eq!(first.event.datacontenttype(), Some("application/json"));
    let data: serde_json::Value =
        serde_json::from_slice(&ofe_core::event::data_bytes(&first.event)).expect("json");
    assert_eq!(data, serde_json::json!({"vehicleId": "v9", "speed": "131"}));
    let millis: i64 = plain.split('-').next().and_then(|m| m.parse().ok()).expect("entry id");
    assert_eq!(first.event.time().map(|t| t.timestamp_millis()), Some(millis), "entry time");
    assert_eq!(text(&first.event, "ofeeventsource").as_deref(), Some("cars"));

    let binary = next(&mut s.sub).await;
    assert_eq!(binary.event.id(), "r-1", "a CloudEvent in ce_ fields keeps its id");
    assert_eq!(binary.event.source().to_string(), "/cars/v9");
    assert_eq!(binary.event.ty(), "com.example.redis");
    assert_eq!(
        text(&binary.event, "traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(ofe_core::event::data_bytes(&binary.event), br#"{"speed":99}"#.to_vec());

    let invalid = next(&mut s.sub).await;
    let reason = text(&invalid.event, "ofeinvalid").unwrap_or_default();
    assert!(reason.contains("structured CloudEvent"), "flagged with the reason: {reason}");

    // Everything was acknowledged once the bus had it: nothing stays pending in the group.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(source.group())
            .query_async(&mut s.redis)
            .await
            .expect("xpending");
        if pending.0 == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} entries still pending", pending.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.expect("source stops on shutdown");
    s.bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ofe_test_redis),
    ignore = "needs OFE_TEST_REDIS (scripts/test.sh starts the services)"
)]
async fn channel_messages_become_events() {
    let mut s = setup().await;
    let prefix = format!("ofe-test-{}", uuid::Uuid::new_v4().simple());
    let spec = RedisSpec {
        redis_host: s.host.clone(),
        channel: Some(format!("{prefix}.*")),
        ..Default::default()
    };
    let source = RedisSource::new("ns", "cars", "feed", &spec).expect("source");
    let shutdown = CancellationToken::new();
    let bus: Arc<dyn EventBus> = Arc::new(s.bus.clone());
    let task = tokio::spawn(source.run(bus, SourceMetrics::default(), shutdown.clone()));
    let channel = format!("{prefix}.v9");
    // Pub/sub keeps nothing for absent subscribers: publish until the subscription exists.
    let mut got = None;
    for _ in 0..100 {
        let _: i64 = s.redis.publish(&channel, r#"{"speed":140}"#).await.expect("publish");
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), s.sub.next()).await {
            got = Some(d);
            break;
        }
    }
    let delivery = got.expect("a pub/sub message reached the bus");
    assert_eq!(delivery.event.subject(), Some(channel.as_str()), "the channel is the subject");
    assert_eq!(delivery.event.datacontenttype(), Some("application/json"));
    assert_eq!(ofe_core::event::data_bytes(&delivery.event), br#"{"speed":140}"#.to_vec());
    shutdown.cancel();
    task.await.expect("source stops on shutdown");
    s.bus.close().await.expect("close");
}
