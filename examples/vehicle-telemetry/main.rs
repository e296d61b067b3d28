//! The vehicle-telemetry demo: a fleet simulator publishes JSON telemetry over MQTT, `ofe run`
//! turns it into CloudEvents (see `manifests.yaml`), an "alert" function receives overspeed
//! events over HTTP, and a "metrics" function, fed through a bus topic, keeps per-vehicle
//! gauges in Prometheus text format.
//!
//! It brings its own MQTT broker (an embedded rumqttd) unless `--mqtt-url` names one, prints
//! live progress each second and a summary at the end, and exits with status 1 when an event
//! went missing. Run it with `./examples/vehicle-telemetry/run.sh`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use clap::Parser;
use rumqttc::{AsyncClient, MqttOptions, QoS};

#[path = "../common/mod.rs"]
mod common;
use common::{OfeProcess, counter, free_addr, serve};

/// Speeds above this (km/h) are overspeed; the Trigger's filter says the same.
const LIMIT: f64 = 120.0;

#[derive(Parser, Debug)]
#[command(about = "Fleet telemetry → MQTT → ofe → alert and metrics functions")]
struct Args {
    /// Vehicles in the fleet.
    #[arg(long, default_value_t = 50)]
    vehicles: u32,
    /// Messages per vehicle per second.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// How long the fleet drives, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// An MQTT broker to use (tcp://host:port); without it an embedded one is started.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// The `ofe` binary (default: next to this example's directory, as cargo builds it).
    #[arg(long)]
    ofe: Option<std::path::PathBuf>,
    /// Seconds to wait after the drive for every event to arrive.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
}

/// What the functions saw.
#[derive(Default)]
struct Seen {
    alerts: AtomicU64,
    telemetry: AtomicU64,
    /// vehicle → (speed, battery, events)
    gauges: Mutex<BTreeMap<String, (f64, f64, u64)>>,
}

/// A tiny deterministic generator, so a run's overspeed count is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 10_000) as f64 / 10_000.0
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;

    // 1. The MQTT broker.
    let mqtt_url = match &args.mqtt_url {
        Some(url) => url.clone(),
        None => {
            let addr = free_addr()?;
            start_rumqttd(addr)?;
            println!("mqtt     embedded broker on tcp://{addr}");
            format!("tcp://{addr}")
        }
    };
    let broker = ofe_eventsource::mqtt::parse_url(&mqtt_url)
        .map_err(|e| anyhow::anyhow!("the MQTT URL {e}"))?;

    // 2. The functions.
    let seen = Arc::new(Seen::default());
    let alert_addr = serve(Router::new().route("/", post(alert)).with_state(seen.clone())).await?;
    let metrics_addr = serve(
        Router::new()
            .route("/", post(telemetry))
            .route("/metrics", get(prometheus))
            .with_state(seen.clone()),
    )
    .await?;
    println!("alert    sync function   http://{alert_addr}/");
    println!("metrics  async function  http://{metrics_addr}/ (gauges at /metrics)");

    // 3. ofe, on the example's manifests pointed at these addresses.
    let manifests = include_str!("manifests.yaml")
        .replace("tcp://127.0.0.1:1884", &format!("tcp://{}:{}", broker.host, broker.port))
        .replace("127.0.0.1:8091", &alert_addr.to_string())
        .replace("127.0.0.1:8092", &metrics_addr.to_string());
    std::fs::write(work.path().join("manifests.yaml"), manifests)?;
    ofe_core::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let ofe_binary = common::ofe_binary(args.ofe.as_ref())?;
    let mut ofe =
        OfeProcess::start(&ofe_binary, &work.path().join("manifests.yaml"), work.path(), &http)
            .await?;
    let ofe_metrics = ofe.metrics_url();
    println!("ofe      running, metrics at {ofe_metrics}");
    println!("console  open {} in a browser while the demo runs", ofe.console_url());

    // 4. The fleet. MQTT drops messages nobody subscribed to yet, so first wait until ofe
    //    takes a warm-up message.
    let mut options = MqttOptions::new("fleet-simulator", broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(options, 4096);
    // Polling after an error reconnects; a loop that stopped at the first error would leave
    // every later publish queued forever.
    tokio::spawn(async move {
        loop {
            if let Err(error) = events.poll().await {
                eprintln!("simulator: MQTT connection error ({error}); reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let started = Instant::now();
    while counter(&http, &ofe_metrics, "ofe_eventsource_events_received_total").await == 0 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("ofe's MQTT source did not subscribe within 30 s");
        }
        client.publish("fleet/warm-up/telemetry", QoS::AtLeastOnce, false, "{}").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warmups = counter(&http, &ofe_metrics, "ofe_eventsource_events_received_total").await;
    let total = (f64::from(args.vehicles) * args.rate * args.seconds as f64) as u64;
    println!(
        "fleet    {} vehicles × {}/s for {} s = {total} messages, speed limit {LIMIT} km/h\n",
        args.vehicles, args.rate, args.seconds
    );
    let sent = Arc::new(AtomicU64::new(0));
    let overspeed = Arc::new(AtomicU64::new(0));
    let driver = tokio::spawn(drive(
        client.clone(),
        args.vehicles,
        total,
        Duration::from_secs(args.seconds),
        sent.clone(),
        overspeed.clone(),
    ));

    // 5. Progress, then the summary.
    let began = Instant::now();
    let mut last = (0, Instant::now());
    let deadline = Duration::from_secs(args.seconds + args.drain_seconds);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let published = counter(&http, &ofe_metrics, "ofe_eventsource_events_published_total")
            .await
            .saturating_sub(warmups);
        let delivered = counter(&http, &ofe_metrics, "ofe_trigger_events_delivered_total").await;
        let (alerts, metrics_in) =
            (seen.alerts.load(Ordering::Relaxed), seen.telemetry.load(Ordering::Relaxed));
        let rate = (published - last.0.min(published)) as f64 / last.1.elapsed().as_secs_f64();
        last = (published, Instant::now());
        println!(
            "t={:>3}s  sent {:>6}  events in {:>6}  delivered {:>6}  alerts {:>4}  metrics {:>6}  {:>6.0} ev/s",
            began.elapsed().as_secs(),
            sent.load(Ordering::Relaxed),
            published,
            delivered,
            alerts,
            metrics_in,
            rate
        );
        let done = driver.is_finished()
            && alerts >= overspeed.load(Ordering::Relaxed)
            && metrics_in >= total;
        if done || began.elapsed() > deadline {
            break;
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), driver).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => eprintln!("simulator stopped early: {error}"),
        Ok(Err(error)) => eprintln!("simulator failed: {error}"),
        Err(_) => eprintln!("simulator still publishing after the deadline; stopping"),
    }
    let (sent, overspeed) = (sent.load(Ordering::Relaxed), overspeed.load(Ordering::Relaxed));
    let (alerts, metrics_in) =
        (seen.alerts.load(Ordering::Relaxed), seen.telemetry.load(Ordering::Relaxed));
    let vehicles = seen.gauges.lock().map(|g| g.len()).unwrap_or(0);
    let page = http.get(format!("http://{metrics_addr}/metrics")).send().await?.text().await?;
    println!("\nmetrics function (first lines of http://{metrics_addr}/metrics):");
    for line in page.lines().filter(|l| !l.starts_with('#')).take(6) {
        println!("  {line}");
    }
    println!("\nsummary");
    println!("  telemetry sent        {sent}");
    println!("  overspeed sent        {overspeed}");
    println!("  alerts received       {alerts}");
    println!("  metrics events        {metrics_in}");
    println!("  vehicles with gauges  {vehicles}");
    println!("  elapsed               {:.1} s", began.elapsed().as_secs_f64());
    let stopping = Instant::now();
    ofe.stop();
    println!("  ofe stopped in         {:.1} s", stopping.elapsed().as_secs_f64());
    let complete = alerts == overspeed && metrics_in == sent && vehicles == args.vehicles as usize;
    if complete {
        println!("\nevery message arrived exactly once: OK");
        Ok(())
    } else {
        bail!(
            "missing or repeated events: alerts {alerts}/{overspeed}, metrics {metrics_in}/{sent}, vehicles {vehicles}/{}",
            args.vehicles
        )
    }
}

/// Publishes `total` messages spread evenly over `over`, round-robin over the vehicles.
async fn drive(
    client: AsyncClient,
    vehicles: u32,
    total: u64,
    over: Duration,
    sent: Arc<AtomicU64>,
    overspeed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut state: Vec<(f64, f64, f64, f64)> = (0..vehicles)
        .map(|v| (48.1 + f64::from(v) * 0.001, 11.5, 60.0 + rng.next() * 50.0, 100.0))
        .collect();
    let interval = over.as_secs_f64() / total.max(1) as f64;
    let start = Instant::now();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(interval * n as f64);
        tokio::time::sleep_until(due.into()).await;
        let v = (n % u64::from(vehicles)) as usize;
        let (lat, lon, speed, battery) = &mut state[v];
        *speed = (*speed + (rng.next() - 0.45) * 12.0).clamp(0.0, 160.0);
        *lat += 0.0001 * *speed / 100.0;
        *lon += 0.0001;
        *battery = (*battery - 0.01).max(0.0);
        let speed = (*speed * 10.0).round() / 10.0;
        if speed > LIMIT {
            overspeed.fetch_add(1, Ordering::Relaxed);
        }
        let body = serde_json::json!({
            "vehicleId": format!("v{v:03}"),
            "seq": n,
            "lat": lat, "lon": lon,
            "speed": speed,
            "battery": (*battery * 10.0).round() / 10.0,
        });
        client
            .publish(format!("fleet/v{v:03}/telemetry"), QoS::AtLeastOnce, false, body.to_string())
            .await?;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The alert function: one POST per overspeed CloudEvent.
async fn alert(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> &'static str {
    // The Trigger's transform shapes what this function gets: exactly {vehicle, kmh, at}, as
    // an overspeed alert. Anything else is not counted, so the run reports it missing.
    let data: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("?");
    let shaped = data.as_object().is_some_and(|o| {
        o.len() == 3 && o["vehicle"].is_string() && o["kmh"].is_number() && o["at"].is_string()
    });
    if !shaped || header("ce-type") != "com.example.fleet.overspeed" {
        println!("UNEXPECTED alert {} of type {}: {data}", header("ce-id"), header("ce-type"));
        return "unexpected";
    }
    let n = seen.alerts.fetch_add(1, Ordering::Relaxed);
    if n < 3 {
        println!(
            "ALERT    {} at {} km/h, {} (CloudEvent {})",
            data["vehicle"].as_str().unwrap_or("?"),
            data["kmh"],
            data["at"].as_str().unwrap_or("?"),
            header("ce-id")
        );
    }
    "ok"
}

/// The metrics function: keeps the latest gauges per vehicle.
async fn telemetry(State(seen): State<Arc<Seen>>, body: Bytes) -> &'static str {
    let data: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(vehicle) = data["vehicleId"].as_str() else { return "ignored" };
    seen.telemetry.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut gauges) = seen.gauges.lock() {
        let entry = gauges.entry(vehicle.to_string()).or_default();
        *entry = (
            data["speed"].as_f64().unwrap_or_default(),
            data["battery"].as_f64().unwrap_or_default(),
            entry.2 + 1,
        );
    }
    "ok"
}

/// The gauges in Prometheus text format, as a Pushgateway would serve them.
async fn prometheus(State(seen): State<Arc<Seen>>) -> String {
    let mut out = String::from(
        "# TYPE vehicle_speed_kmh gauge\n# TYPE vehicle_battery_percent gauge\n# TYPE vehicle_events_total counter\n",
    );
    if let Ok(gauges) = seen.gauges.lock() {
        for (vehicle, (speed, battery, events)) in gauges.iter() {
            out.push_str(&format!(
                "vehicle_speed_kmh{{vehicle=\"{vehicle}\"}} {speed}\n\
                 vehicle_battery_percent{{vehicle=\"{vehicle}\"}} {battery}\n\
                 vehicle_events_total{{vehicle=\"{vehicle}\"}} {events}\n"
            ));
        }
    }
    out
}

/// An embedded rumqttd on `addr`, on a thread of its own.
fn start_rumqttd(addr: SocketAddr) -> anyhow::Result<()> {
    let config: rumqttd::Config = serde_json::from_value(serde_json::json!({
        "id": 0,
        "router": {
            "id": 0, "max_connections": 100, "max_outgoing_packet_count": 1000,
            "max_segment_size": 104857600, "max_segment_count": 10
        },
        "v4": { "1": {
            "name": "v4-1", "listen": addr.to_string(), "next_connection_delay_ms": 1,
            "connections": {
                "connection_timeout_ms": 60000, "max_payload_size": 1048576,
                "max_inflight_count": 1000, "dynamic_filters": true
            }
        }}
    }))?;
    std::thread::spawn(move || {
        if let Err(error) = rumqttd::Broker::new(config).start() {
            eprintln!("embedded MQTT broker stopped: {error}");
        }
    });
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the embedded MQTT broker did not open {addr}")
}
