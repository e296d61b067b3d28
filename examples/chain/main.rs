//! A sync function chained to an async one, with the async one down for a while: orders go
//! over HTTP to a webhook EventSource, the sync function "front" answers each with an enriched
//! CloudEvent, ofe publishes the reply to a topic, and a second Trigger delivers it to the
//! async function "back". Partway through, "back" goes away for `--outage-seconds`; ofe keeps
//! retrying, and every order still reaches it.
//!
//! It prints a summary and exits with status 1 if any order did not reach "back". Run it with
//! `./examples/chain/run.sh`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Parser;

#[path = "../common/mod.rs"]
mod common;
use common::{OfeProcess, counter, serve};

#[derive(Parser, Debug)]
#[command(about = "HTTP orders → ofe → sync function front → topic → async function back")]
struct Args {
    /// Orders to send.
    #[arg(long, default_value_t = 200)]
    orders: u64,
    /// Orders per second.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// How long "back" is down, starting when a third of the orders are sent.
    #[arg(long, default_value_t = 10)]
    outage_seconds: u64,
    /// The `ofe` binary (default: next to this example's directory, as cargo builds it).
    #[arg(long)]
    ofe: Option<std::path::PathBuf>,
    /// Seconds to wait, after the last order, for every order to reach "back".
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
}

/// What "back" received: order id → deliveries.
#[derive(Default)]
struct Back {
    orders: Mutex<BTreeMap<String, u64>>,
}

/// The sync function: answers an order with an enriched order, as a binary-mode CloudEvent.
async fn front(
    State(calls): State<Arc<AtomicU64>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    calls.fetch_add(1, Ordering::Relaxed);
    let order: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let amount = order["amount"].as_f64().unwrap_or(0.0);
    let enriched = serde_json::json!({
        "orderId": order["orderId"],
        "amount": amount,
        "tax": (amount * 0.2 * 100.0).round() / 100.0,
    });
    let id = headers.get("ce-id").and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let mut reply = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", format!("enriched-{id}")),
        ("ce-source", "/functions/front".to_string()),
        ("ce-type", "com.example.order.enriched".to_string()),
        ("content-type", "application/json".to_string()),
    ] {
        if let Ok(value) = value.parse() {
            reply.insert(name, value);
        }
    }
    (StatusCode::OK, reply, enriched.to_string().into_bytes())
}

/// The async function: records each enriched order it receives.
async fn back(State(back): State<Arc<Back>>, body: Bytes) -> StatusCode {
    let order: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(id) = order["orderId"].as_str() else { return StatusCode::BAD_REQUEST };
    if let Ok(mut orders) = back.orders.lock() {
        *orders.entry(id.to_string()).or_default() += 1;
    }
    StatusCode::OK
}

/// Serves "back" on `addr` until `stop` fires.
async fn serve_back(
    addr: SocketAddr,
    state: Arc<Back>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.context("cannot bind back")?;
    let app = Router::new().route("/", post(back)).with_state(state);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.await;
            })
            .await;
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;

    // 1. The functions.
    let front_calls = Arc::new(AtomicU64::new(0));
    let front_addr =
        serve(Router::new().route("/", post(front)).with_state(front_calls.clone())).await?;
    let back_state = Arc::new(Back::default());
    let back_addr = common::free_addr()?;
    let (stop_back, stopped) = tokio::sync::oneshot::channel();
    let back_task = serve_back(back_addr, back_state.clone(), stopped).await?;
    println!("front  sync function   http://{front_addr}/");
    println!("back   async function  http://{back_addr}/");

    // 2. ofe, on the example's manifests pointed at these addresses.
    let manifests = include_str!("manifests.yaml")
        .replace("127.0.0.1:8093", &front_addr.to_string())
        .replace("127.0.0.1:8094", &back_addr.to_string());
    let manifest_path = work.path().join("manifests.yaml");
    std::fs::write(&manifest_path, manifests)?;
    ofe_core::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let ofe_binary = common::ofe_binary(args.ofe.as_ref())?;
    let mut ofe = OfeProcess::start(&ofe_binary, &manifest_path, work.path(), &http).await?;
    let webhook = format!("http://{}/orders", ofe.webhooks);
    println!("ofe    running, orders go to {webhook}\n");

    // 3. The orders, with "back" down for a while after a third of them.
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let outage_at = args.orders / 3;
    let mut stop_back = Some(stop_back);
    let mut back_task = Some(back_task);
    let mut outage_ends = None;
    for i in 0..args.orders {
        if i == outage_at
            && let (Some(stop), Some(task)) = (stop_back.take(), back_task.take())
        {
            let _ = stop.send(());
            let _ = task.await;
            println!(
                "t={:>4.1}s  back is DOWN for {} s",
                started.elapsed().as_secs_f64(),
                args.outage_seconds
            );
            outage_ends = Some(Instant::now() + Duration::from_secs(args.outage_seconds));
        }
        if outage_ends.is_some_and(|end| Instant::now() >= end) {
            outage_ends = None;
            let (keep, running) = tokio::sync::oneshot::channel();
            serve_back(back_addr, back_state.clone(), running).await?;
            stop_back = Some(keep);
            println!("t={:>4.1}s  back is UP again", started.elapsed().as_secs_f64());
        }
        let body = serde_json::json!({ "orderId": format!("o-{i}"), "amount": 10 + i % 90 });
        // The webhook answers 200 once the order is durably on the bus; retry until then.
        loop {
            let sent = http
                .post(&webhook)
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("order-{i}"))
                .header("ce-source", "/shop/checkout")
                .header("ce-type", "com.example.order.placed")
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => bail!("the webhook refused order {i}: HTTP {}", r.status()),
                Err(e) => {
                    eprintln!("order {i}: {e}; sending again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
    if let Some(end) = outage_ends {
        tokio::time::sleep_until(end.into()).await;
        let (keep, running) = tokio::sync::oneshot::channel();
        serve_back(back_addr, back_state.clone(), running).await?;
        stop_back = Some(keep);
        println!("t={:>4.1}s  back is UP again", started.elapsed().as_secs_f64());
    }
    // Keeps "back" serving until the end.
    let _back_running = stop_back;
    println!("t={:>4.1}s  all {} orders sent", started.elapsed().as_secs_f64(), args.orders);

    // 4. Wait for every order at "back", then the summary.
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    let distinct = || back_state.orders.lock().map(|o| o.len() as u64).unwrap_or(0);
    while distinct() < args.orders && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = ofe.metrics_url();
    let replies = counter(&http, &metrics, "ofe_trigger_replies_total").await;
    let retries = counter(&http, &metrics, "ofe_trigger_delivery_retries_total").await;
    let dead = counter(&http, &metrics, "ofe_trigger_events_dead_lettered_total").await;
    ofe.stop();
    let (received, deliveries) = back_state
        .orders
        .lock()
        .map(|o| (o.len() as u64, o.values().sum::<u64>()))
        .unwrap_or_default();
    println!("\nsummary after {:.1} s", started.elapsed().as_secs_f64());
    println!("  orders sent            {}", args.orders);
    println!("  front calls            {}", front_calls.load(Ordering::Relaxed));
    println!("  replies published      {replies}");
    println!("  orders at back         {received}");
    println!("  deliveries to back     {deliveries}");
    println!("  delivery retries       {retries}");
    println!("  dead-lettered          {dead}");
    if received < args.orders {
        println!("\nFAILED: {} orders never reached back", args.orders - received);
        std::process::exit(1);
    }
    println!("\nevery order reached back");
    Ok(())
}
