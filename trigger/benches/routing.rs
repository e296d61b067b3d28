//! Routing throughput with 1 Trigger and with 1000, on the same stream, in the same run.
//!
//! ```sh
//! cargo bench -p ofe-trigger --bench routing      # OFE_BENCH_EVENTS=100000 by default
//! ```
//!
//! Workload (the "1000 CEL triggers" shape): every Trigger `n` has one input on the same
//! EventSource event with the filter `cel: "type == 's.n' && data.temp > 30"`. Events carry
//! 1 KiB of JSON data with `temp: 31`, and types spread so that 1% of them match some Trigger
//! (with 1 Trigger: types `s.0`..`s.99`; with 1000: `s.0`..`s.99999`).
//!
//! Two measurements per Trigger count:
//! - `route`: the router's decision alone (index lookup, filters, condition, state), in events
//!   per second of one core.
//! - `bus`: end to end through the embedded bus. The events are published first; then the
//!   router consumes them, puts the matching ones on their subscribers' queues, and acks; the
//!   clock stops when a queue reader has seen the last matching event.
//!
//! Each figure is the median of several runs (9 for `route`, 3 for `bus`). The ratio 1000/1 of
//! each is the figure the index is for: it should stay near 1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use cloudevents::{Event, EventBuilder as _, EventBuilderV10};
use ofe_core::{EventBus, StartPosition, Subject, SubscribeOptions};
use ofe_crds::manifest::{Resource, parse_document};
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_trigger::{PlanOptions, Router, Routing, TriggerMetrics, plan};
use tokio_util::sync::CancellationToken;

/// The input every Trigger reads.
fn input() -> Subject {
    Subject::event("bench", "sensors", "reading")
}

/// The routed subscribers of `n` Triggers.
fn routings(n: usize) -> Vec<Arc<Routing>> {
    (0..n)
        .flat_map(|i| {
            let yaml = format!(
                r#"
apiVersion: events.openfunction.io/v1alpha1
kind: Trigger
metadata: {{ name: t{i}, namespace: bench }}
spec:
  eventBus: default
  inputs:
    x:
      eventSource: sensors
      event: reading
      filters: [ {{ cel: "type == 's.{i}' && data.temp > 30" }} ]
  subscribers:
  - condition: x
    sink: {{ uri: "http://127.0.0.1:9/" }}
"#
            );
            let doc = serde_saphyr::from_str::<serde_json::Value>(&yaml).expect("yaml");
            let Ok(Some(Resource::Trigger(t))) = parse_document(doc) else { panic!("trigger") };
            plan(&t, &PlanOptions::default()).expect("plan").into_iter().filter_map(|p| p.routing)
        })
        .collect()
}

/// Event `k` of a run with `triggers` Triggers: one in a hundred has the type of a Trigger.
fn event(k: usize, triggers: usize) -> Event {
    let padding = "x".repeat(1000);
    EventBuilderV10::new()
        .id(format!("e{k}"))
        .source("/bench")
        .ty(format!("s.{}", (k * 7919) % (triggers * 100)))
        .data("application/json", serde_json::json!({ "temp": 31, "pad": padding }))
        .build()
        .expect("event")
}

fn matches(k: usize, triggers: usize) -> bool {
    (k * 7919) % (triggers * 100) < triggers
}

/// Events per second of `Router::route` alone.
fn route_rate(triggers: usize, events: &[Arc<Event>]) -> f64 {
    let mut router = Router::new(routings(triggers), TriggerMetrics::default());
    let subject = input();
    let now = Utc::now();
    let started = Instant::now();
    let mut fired = 0;
    for event in events {
        fired += router.route(&subject, event, now).len();
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    let expected = (0..events.len()).filter(|k| matches(*k, triggers)).count();
    assert_eq!(fired, expected, "every matching event fires exactly its Trigger");
    rate
}

/// Events per second through the embedded bus: router consume, queue publish, ack.
async fn bus_rate(triggers: usize, count: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus: Arc<dyn EventBus> =
        Arc::new(EmbeddedBus::open(EmbeddedConfig::new(dir.path())).expect("bus"));
    let router = Router::new(routings(triggers), TriggerMetrics::default());
    let queues: Vec<Subject> = router.routings().iter().map(|r| r.queue.clone()).collect();
    let subscription = ofe_trigger::router::subscribe(&router, bus.as_ref(), "router", 1024)
        .await
        .expect("subscribe");
    let mut reader = bus
        .subscribe(SubscribeOptions {
            start: StartPosition::All,
            max_in_flight: 4096,
            ..SubscribeOptions::new("reader", queues)
        })
        .await
        .expect("reader");
    // The last event matches, so seeing it on a queue means everything before was routed.
    let last = (0..count).rev().find(|k| matches(*k, triggers)).expect("a match");
    let expected = (0..=last).filter(|k| matches(*k, triggers)).count();
    let all: Vec<usize> = (0..=last).collect();
    for chunk in all.chunks(256) {
        futures::future::join_all(chunk.iter().map(|k| {
            let (bus, event) = (bus.clone(), event(*k, triggers));
            async move { bus.publish(&input(), &event).await.expect("publish") }
        }))
        .await;
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task =
        tokio::spawn(ofe_trigger::router::run(router, subscription, bus.clone(), stop.clone()));
    let mut seen = 0;
    while seen < expected {
        let d = tokio::time::timeout(Duration::from_secs(60), reader.next())
            .await
            .expect("routing stalled")
            .expect("delivery");
        seen += 1;
        d.ack().await.expect("ack");
    }
    let rate = (last + 1) as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    bus.close().await.expect("close");
    rate
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let count: usize =
        std::env::var("OFE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("routing, {count} events of 1 KiB, 1% matching\n");
    println!("{:>9} {:>16} {:>16}", "triggers", "route (ev/s)", "bus (ev/s)");
    let mut rows = Vec::new();
    for triggers in [1, 1000] {
        let events: Vec<Arc<Event>> = (0..count).map(|k| Arc::new(event(k, triggers))).collect();
        // Warm up, then the median of several passes: one pass takes milliseconds, so a
        // single one is at the mercy of whatever else the machine does.
        route_rate(triggers, &events[..count.min(5000)]);
        let route = median((0..9).map(|_| route_rate(triggers, &events)).collect());
        let bus = median((0..3).map(|_| runtime.block_on(bus_rate(triggers, count))).collect());
        println!("{triggers:>9} {route:>16.0} {bus:>16.0}");
        rows.push((route, bus));
    }
    println!(
        "\nratio 1000/1: route {:.2}, bus {:.2}",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1
    );
}
