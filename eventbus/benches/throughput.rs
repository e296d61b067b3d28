//! Publish-then-consume throughput and latency through each bus backend, next to the raw client
//! doing the same work in the same run.
//!
//! ```sh
//! eval "$(scripts/services.sh)"
//! cargo bench -p ofe-eventbus --bench throughput            # OFE_BENCH_EVENTS=20000 by default
//! ```
//!
//! Workload: N CloudEvents with 1 KiB of data, published by 64 concurrent publishers that each
//! wait for the broker's acknowledgement, while one subscription consumes and acks each one.
//! The rate is N divided by the time from the first publish to the last ack; latency is from
//! the start of an event's publish to its consumption. The raw baselines do the same with the
//! client library alone: async-nats (JetStream publish + pull consumer with explicit acks) and
//! rdkafka (idempotent producer + consumer group). A backend whose broker variable
//! (`OFE_TEST_NATS`, `OFE_TEST_KAFKA`) is unset is skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use futures::StreamExt;
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventbus::jetstream::{JetStreamBus, JetStreamConfig};
use ofe_eventbus::kafka::{KafkaBus, KafkaConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PUBLISHERS: usize = 64;
/// A run that makes no progress for this long fails instead of hanging.
const STALL: Duration = Duration::from_secs(60);

/// A broker variable, when set to something.
fn broker(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

struct Result {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl Result {
    fn from(n: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(i).copied().unwrap_or_default()
        };
        Self { rate: n as f64 / elapsed.as_secs_f64(), p50: at(0.50), p99: at(0.99) }
    }
}

type Starts = Arc<Mutex<HashMap<String, Instant>>>;

/// Publishes `n` events with `PUBLISHERS` concurrent publishers through `publish`.
async fn publish_all<F, Fut>(n: usize, starts: Starts, publish: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (publish, starts) = (publish.clone(), starts.clone());
        tasks.push(tokio::spawn(async move {
            for i in (p..n).step_by(PUBLISHERS) {
                let id = format!("e{i}");
                starts.lock().expect("lock").insert(id.clone(), Instant::now());
                publish(id).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
}

fn body() -> Vec<u8> {
    vec![b'x'; 1024]
}

async fn through_ofe(bus: Arc<dyn EventBus>, n: usize, tag: &str) -> Result {
    let subject = Subject::event("bench", tag, "e");
    let mut options = SubscribeOptions::new(format!("bench-{tag}"), vec![subject.clone()]);
    options.max_in_flight = 1024;
    options.start = StartPosition::New;
    let mut sub = bus.subscribe(options).await.expect("subscribe");
    let starts: Starts = Arc::default();
    let started = Instant::now();
    let publisher = {
        let (bus, subject) = (bus.clone(), subject.clone());
        tokio::spawn(publish_all(n, starts.clone(), move |id| {
            let (bus, subject) = (bus.clone(), subject.clone());
            async move {
                let event = EventBuilderV10::new()
                    .id(id)
                    .source("bench")
                    .ty("bench")
                    .data("application/octet-stream", body())
                    .build()
                    .expect("event");
                bus.publish(&subject, &event).await.expect("publish");
            }
        }))
    };
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let d = tokio::time::timeout(STALL, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{tag}: no delivery for {STALL:?}"))
            .expect("delivery");
        let start = starts.lock().expect("lock").get(d.event.id()).copied();
        latencies.push(start.map_or(Duration::ZERO, |s| s.elapsed()));
        d.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    publisher.await.expect("publisher");
    Result::from(n, elapsed, latencies)
}

async fn raw_nats(url: &str, n: usize) -> Result {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let name = format!("BENCH_{}", uuid::Uuid::new_v4().simple());
    let subject = format!("bench.{name}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages =
        consumer.stream().max_messages_per_batch(256).messages().await.expect("messages");
    let starts: Starts = Arc::default();
    let started = Instant::now();
    let publisher = {
        let (js, subject) = (js.clone(), subject.clone());
        tokio::spawn(publish_all(n, starts.clone(), move |id| {
            let (js, subject) = (js.clone(), subject.clone());
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert("ce-id", id.as_str());
                js.publish_with_headers(subject, headers, body().into())
                    .await
                    .expect("publish")
                    .await
                    .expect("puback");
            }
        }))
    };
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let m = tokio::time::timeout(STALL, messages.next())
            .await
            .unwrap_or_else(|_| panic!("raw async-nats: no message for {STALL:?}"))
            .expect("stream")
            .expect("message");
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("ce-id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let start = starts.lock().expect("lock").get(&id).copied();
        latencies.push(start.map_or(Duration::ZERO, |s| s.elapsed()));
        m.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    publisher.await.expect("publisher");
    let _ = js.delete_stream(&name).await;
    Result::from(n, elapsed, latencies)
}

async fn raw_kafka(brokers: &str, n: usize) -> Result {
    let topic = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    // Create the topic by producing one record, as a plain client would with auto-create.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("broker.address.family", "v4")
            .create()
            .expect("admin");
    let new = rdkafka::admin::NewTopic::new(&topic, 3, rdkafka::admin::TopicReplication::Fixed(1));
    let _ = admin.create_topics([&new], &rdkafka::admin::AdminOptions::new()).await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4")
        .set("group.id", &topic)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let starts: Starts = Arc::default();
    let started = Instant::now();
    let publisher = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(publish_all(n, starts.clone(), move |id| {
            let (producer, topic) = (producer.clone(), topic.clone());
            async move {
                let payload = body();
                let record = FutureRecord::to(&topic).key(&id).payload(&payload);
                producer.send(record, Duration::from_secs(30)).await.expect("send");
            }
        }))
    };
    let latencies = tokio::task::spawn_blocking({
        let starts = starts.clone();
        move || {
            use rdkafka::message::Message;
            let mut latencies = Vec::with_capacity(n);
            let mut last = Instant::now();
            while latencies.len() < n {
                assert!(last.elapsed() < STALL, "raw rdkafka: no message for {STALL:?}");
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    last = Instant::now();
                    let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    let start = starts.lock().expect("lock").get(&id).copied();
                    latencies.push(start.map_or(Duration::ZERO, |s| s.elapsed()));
                    let _ = consumer.store_offset_from_message(&m);
                }
            }
            let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
            latencies
        }
    })
    .await
    .expect("consumer");
    let elapsed = started.elapsed();
    publisher.await.expect("publisher");
    Result::from(n, elapsed, latencies)
}

fn row(name: &str, r: &Result, baseline: Option<&Result>) {
    let ratio = baseline.map_or("-".to_string(), |b| format!("{:.2}x", r.rate / b.rate));
    println!(
        "| {name:<22} | {:>10.0} | {:>9.2} | {:>9.2} | {ratio:>8} |",
        r.rate,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize =
        std::env::var("OFE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    println!("{n} events of 1 KiB, {PUBLISHERS} concurrent publishers, one consumer acking each\n");
    println!("| path                   |   events/s |  p50 ms   |  p99 ms   | vs raw   |");
    println!("|------------------------|-----------:|----------:|----------:|---------:|");
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("embedded");
    let r = through_ofe(Arc::new(embedded.clone()), n, "embedded").await;
    row("ofe embedded (fsync)", &r, None);
    embedded.close().await.expect("close");

    if let Some(url) = broker("OFE_TEST_NATS") {
        let raw = raw_nats(&url, n).await;
        row("raw async-nats", &raw, None);
        let bus = JetStreamBus::connect(JetStreamConfig::new(&url)).await.expect("jetstream");
        let tag = format!("js{}", uuid::Uuid::new_v4().simple());
        let ofe = through_ofe(Arc::new(bus), n, &tag).await;
        row("ofe jetstream", &ofe, Some(&raw));
    } else {
        println!("(jetstream skipped: OFE_TEST_NATS is not set)");
    }
    if let Some(brokers) = broker("OFE_TEST_KAFKA") {
        let raw = raw_kafka(&brokers, n).await;
        row("raw rdkafka", &raw, None);
        let mut config = KafkaConfig::new(&brokers);
        config.topic_prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let bus = KafkaBus::connect(config).await.expect("kafka");
        let ofe = through_ofe(Arc::new(bus), n, "kafka").await;
        row("ofe kafka", &ofe, Some(&raw));
    } else {
        println!("(kafka skipped: OFE_TEST_KAFKA is not set)");
    }
}
