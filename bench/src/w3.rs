//! W3's bus API loops: ofe's bus publishing and consuming, and the raw async-nats client doing
//! the same.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use ofe_core::{EventBus, Subject, SubscribeOptions};

use crate::BATCH;
use crate::EVENT_BYTES;
use crate::load::Event;
use crate::targets::namespace;

/// Publish acknowledgements W3 keeps outstanding, on both of its sides.
pub(crate) const WINDOW: usize = 256;

/// Adds a publish's acknowledgement to `acks`, then waits for one while [`WINDOW`] are
/// outstanding: the load shape both sides of W3 are driven with.
pub(crate) async fn windowed<F, T, E>(
    acks: &mut futures::stream::FuturesUnordered<F>,
    ack: F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::StreamExt as _;
    acks.push(ack);
    if acks.len() >= WINDOW
        && let Some(ack) = acks.next().await
    {
        ack?;
    }
    Ok(())
}

/// Waits for every acknowledgement left in `acks`.
pub(crate) async fn drain<F, T, E>(
    acks: &mut futures::stream::FuturesUnordered<F>,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::StreamExt as _;
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}

/// W3's loop through ofe's own bus API, shaped as [`raw_jetstream`]: `n` 1 KiB CloudEvents
/// published with up to [`WINDOW`] awaiting their acknowledgement, while a durable consumer
/// (as many in flight) takes and acknowledges each.
pub(crate) async fn bus_loop(bus: Arc<dyn EventBus>, n: usize) -> anyhow::Result<f64> {
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let subject = Subject::event(&namespace(), "bench", &format!("w3-{batch}"));
    let mut options = SubscribeOptions::new(format!("bench-w3-{batch}"), vec![subject.clone()]);
    options.max_in_flight = WINDOW;
    let mut subscription = bus.subscribe(options).await?;
    let events = (0..n)
        .map(|i| {
            let body = Event::new("bench.w3", 80).body(i);
            use cloudevents::EventBuilder as _;
            cloudevents::EventBuilderV10::new()
                .id(format!("w3-{batch}-{i}"))
                .source("ofe-bench")
                .ty("bench.w3")
                .data("application/json", body)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let consume = tokio::spawn(async move {
        for _ in 0..n {
            subscription.next().await?.ack().await?;
        }
        anyhow::Ok(())
    });
    let mut acks = futures::stream::FuturesUnordered::new();
    for event in &events {
        windowed(&mut acks, bus.publish(&subject, event)).await?;
    }
    drain(&mut acks).await?;
    consume.await??;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The raw async-nats loop W3 is measured against: `n` 1 KiB messages published (each
/// acknowledged by JetStream) while a durable pull consumer consumes and acknowledges them.
pub(crate) async fn raw_jetstream(url: &str, n: usize) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let name = format!("BENCH_RAW_{}", std::process::id());
    let subject = format!("bench.raw.{}", std::process::id());
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("raw".into()),
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let consume = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut seen = 0;
        while seen < n {
            let Some(m) = messages.next().await else { break };
            m.map_err(|e| anyhow::anyhow!("{e}"))?
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
        }
        anyhow::Ok(())
    });
    let payload = Bytes::from(vec![b'x'; EVENT_BYTES]);
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        let ack = js.publish(subject.clone(), payload.clone()).await?;
        windowed(&mut acks, std::future::IntoFuture::into_future(ack)).await?;
    }
    drain(&mut acks).await?;
    consume.await??;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}
