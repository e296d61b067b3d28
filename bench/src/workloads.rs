//! The workloads, each run next to its baselines: the bare forwarder, and nginx as a reverse
//! proxy when nginx is installed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ofe_core::EventBus;
use ofe_eventbus::embedded::{EmbeddedBus, EmbeddedConfig};
use ofe_eventbus::jetstream::{JetStreamBus, JetStreamConfig};

use crate::Cli;
use crate::load::{Event, Load, Retries, Sink, Throughput, open_loop, percentile, resident_mb};
use crate::peer::{
    ARGO_NAME, ARGO_VERSION, find_argo, find_nats_server, start_argo, start_tls_nats,
};
use crate::report::{CurvePoint, Notes, Row};
use crate::stages;
use crate::targets::{
    Process, find_nginx, jetstream_bus, memory_bus, namespace, source, start_forwarder,
    start_nginx, start_ofe, trigger, trigger_with,
};
use crate::w3::{bus_loop, raw_jetstream};

/// A baseline forwarder between the load generator and the sink, kept running through the
/// run so each latency run can use it at the rate ofe is measured at.
struct Baseline {
    /// `bare forwarder` or `nginx proxy`.
    name: &'static str,
    /// The baseline's name for latency rows, which compare at one rate.
    at_rate: &'static str,
    url: String,
    /// Kept running until the run ends.
    process: Process,
    /// W1's load through it.
    measured: Throughput,
    /// Where nginx keeps its configuration; removed when the run ends.
    _dir: Option<tempfile::TempDir>,
}

/// `ofe run` under test.
struct Ofe {
    process: Process,
    /// The webhook the load is sent to.
    webhook: String,
    /// Its metrics, where the stage histograms are read.
    metrics: String,
    /// Its manifests and data; removed when it is dropped.
    _dir: tempfile::TempDir,
}

/// The percentiles every latency run reports.
const PERCENTILES: [f64; 3] = [50.0, 99.0, 99.9];

/// One benchmark run: the sink, the load generator, the baselines and the report so far.
pub(crate) struct Bench<'a> {
    cli: &'a Cli,
    ofe: PathBuf,
    sink: Sink,
    sink_url: String,
    client: reqwest::Client,
    baselines: Vec<Baseline>,
    /// The rows measured so far.
    pub(crate) rows: Vec<Row>,
    /// What was skipped, and connection errors.
    pub(crate) notes: Notes,
}

impl<'a> Bench<'a> {
    /// Starts the sink and the baselines, and measures W1's load through each baseline.
    pub(crate) async fn start(cli: &'a Cli, ofe: PathBuf) -> anyhow::Result<Self> {
        let (sink, sink_url) = Sink::start(Instant::now()).await?;
        // Every connection is kept for reuse (reqwest's default). A bounded idle pool closed
        // the connections an open-loop burst opened; at 10k events/s the closed ones filled
        // the ephemeral ports with TIME_WAIT until connects failed (the aborted runs).
        let client = reqwest::Client::builder().build()?;
        let mut bench = Self {
            cli,
            ofe,
            sink,
            sink_url,
            client,
            baselines: Vec::new(),
            rows: Vec::new(),
            notes: Notes::default(),
        };
        bench.say("baseline: the bare forwarder");
        let (process, url) = start_forwarder(&bench.sink_url).await?;
        bench.add_baseline("bare forwarder", "forwarder, same rate", process, url, None).await?;
        match find_nginx(cli.nginx.as_deref()) {
            Some(nginx) => {
                bench.say("baseline: nginx as a reverse proxy");
                let dir = tempfile::tempdir()?;
                let (process, url) = start_nginx(&nginx, dir.path(), &bench.sink_url).await?;
                bench
                    .add_baseline("nginx proxy", "nginx proxy, same rate", process, url, Some(dir))
                    .await?;
            }
            None => bench.skip(
                "the nginx baseline: nginx is not installed (apt-get install nginx, or pass --nginx PATH)",
            ),
        }
        Ok(bench)
    }

    async fn add_baseline(
        &mut self,
        name: &'static str,
        at_rate: &'static str,
        process: Process,
        url: String,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<()> {
        let measured = self.throughput(&url, &[&process], &self.same("bench.w1"), None).await?;
        self.baselines.push(Baseline { name, at_rate, url, process, measured, _dir: dir });
        Ok(())
    }

    fn say(&self, what: &str) {
        if !self.cli.json {
            eprintln!("… {what}");
        }
    }

    fn skip(&mut self, what: &str) {
        if !self.cli.json {
            eprintln!("skipped: {what}");
        }
        self.notes.skipped.push(what.to_string());
    }

    /// `--events` events of type `kind`, none matching W2's data filter.
    fn same(&self, kind: &str) -> Vec<Event> {
        (0..self.cli.events).map(|_| Event::new(kind, 80)).collect()
    }

    /// `events` through `url`, served by `processes`, until the sink has `expected` deliveries
    /// (one per event unless given).
    async fn throughput(
        &self,
        url: &str,
        processes: &[&Process],
        events: &[Event],
        expected: Option<u64>,
    ) -> anyhow::Result<Throughput> {
        let load =
            Load { client: &self.client, sink: &self.sink, concurrency: self.cli.concurrency };
        let expected = expected.unwrap_or(events.len() as u64);
        load.run(url, processes, events, expected).await
    }

    /// Notes the requests `retries` counted as sent again during `run`, if any.
    fn note_errors(&mut self, run: &str, retries: &Retries) {
        if let Some(errors) = retries.report(run) {
            self.notes.connection_errors.push(errors);
        }
    }

    /// W1's manifests: the webhook, the memory bus, and the Trigger `name` delivering events
    /// of type `kind` to the sink's path `/<name>`.
    fn one_trigger(&self, name: &str, kind: &str) -> String {
        let sink = format!("{}/{name}", self.sink_url);
        source("mem")
            + &trigger(name, "mem", &format!("exact: {{ type: {kind} }}"), &[sink])
            + &memory_bus()
    }

    /// `ofe run` on `yaml`, in a directory of its own.
    async fn ofe(&self, yaml: &str) -> anyhow::Result<Ofe> {
        let dir = tempfile::tempdir()?;
        let (process, webhook, metrics) = start_ofe(&self.ofe, dir.path(), yaml).await?;
        Ok(Ofe { process, webhook, metrics, _dir: dir })
    }

    /// W1: webhook → memory bus → 1 Trigger → sink, against each baseline, and CPU per event;
    /// then W5 through the same ofe. Returns W1's rate.
    pub(crate) async fn w1_and_w5(&mut self) -> anyhow::Result<f64> {
        let baselines: Vec<_> =
            self.baselines.iter().map(|b| (b.name, b.measured.retries.clone())).collect();
        for (name, retries) in baselines {
            self.note_errors(&format!("W1 through the {name}"), &retries);
        }
        self.say("W1: webhook → memory bus → 1 Trigger → sink");
        let ofe = self.ofe(&self.one_trigger("w1", "bench.w1")).await?;
        let measured =
            self.throughput(&ofe.webhook, &[&ofe.process], &self.same("bench.w1"), None).await?;
        self.note_errors("W1 through ofe", &measured.retries);
        let w1 = measured.rate;
        let what = "HTTP → bus (memory) → 1 Trigger → HTTP";
        for b in &self.baselines {
            let row = Row::info("W1", what, (w1, "events/s"), (b.name, b.measured.rate));
            let row = match b.name {
                "nginx proxy" => row.at_least(("≥ 0.8× the nginx proxy", 0.8)),
                _ => {
                    let mut row = row.at_least(("≥ 0.7× and ≥ 20,000 events/s", 0.7));
                    row.met = row.met.map(|met| met && w1 >= 20_000.0);
                    row
                }
            };
            self.rows.push(row);
        }
        for b in &self.baselines {
            // A baseline whose CPU time was below the clock's resolution (a short run of a
            // process as light as nginx) has no figure to compare with: no row, not a 0.
            let baseline_cpu = b.measured.cpu_us.filter(|us| *us > 0.0);
            if let (Some(ofe_cpu), Some(baseline_cpu)) = (measured.cpu_us, baseline_cpu) {
                let row = Row::info(
                    "W1",
                    "CPU per event, the process under test",
                    (ofe_cpu, "µs"),
                    (b.name, baseline_cpu),
                );
                self.rows.push(match b.name {
                    "bare forwarder" => row.at_most(("≤ 1.2× the forwarder's", 1.2)),
                    _ => row,
                });
            }
        }
        if crate::wanted(&self.cli.only, "W5") {
            let rates = [
                ("1k events/s".to_string(), 1000.0),
                ("25% of W1".to_string(), w1 * 0.25),
                ("50% of W1".to_string(), w1 * 0.5),
                ("75% of W1".to_string(), w1 * 0.75),
            ];
            for (label, rate) in rates {
                self.latency("memory", &label, &ofe, rate.max(100.0)).await?;
            }
        }
        drop(ofe);
        Ok(w1)
    }

    /// `--latency-seconds` of W1's events at `rate` through `url`, open loop: what the sink
    /// measured, and the requests sent again.
    async fn open_loop_at(
        &self,
        url: &str,
        rate: f64,
    ) -> anyhow::Result<(crate::load::OpenLoop, Arc<Retries>)> {
        let retries = Arc::new(Retries::default());
        let (seconds, connections) = (self.cli.latency_seconds, self.cli.concurrency);
        let shape = (rate, seconds, connections);
        let run = open_loop(&self.client, (url, &self.sink), "bench.w1", shape, &retries).await?;
        Ok((run, retries))
    }

    /// W5 at `rate` through `ofe` (on `bus`) and through each baseline: p50, p99 and
    /// p99.9, as latency added over the baseline. Goals: at 1k/s, p99 adds ≤ 0.5 ms; at half
    /// of ofe's own maximum rate, p99 adds ≤ 1 ms and p99.9 ≤ 5 ms.
    async fn latency(
        &mut self,
        bus: &str,
        label: &str,
        ofe: &Ofe,
        rate: f64,
    ) -> anyhow::Result<()> {
        self.say(&format!("W5 ({bus} bus): open loop at {label} ({rate:.0}/s)"));
        let before = stages::read(&self.client, &ofe.metrics).await;
        let (through_ofe, retries) = self.open_loop_at(&ofe.webhook, rate).await?;
        let after = stages::read(&self.client, &ofe.metrics).await;
        let run = format!("{bus} bus at {label} ({rate:.0}/s)");
        // The generator's own queue first: time the event waited for one of its connections,
        // which no stage inside ofe can see.
        let waited = stages::StageLatency::from_samples(&run, "client_wait", &through_ofe.waits);
        self.notes.stages.push(waited);
        self.notes.stages.extend(stages::between(&run, &before, &after));
        let through_ofe = through_ofe.latencies;
        self.note_errors(&format!("W5 {bus} at {label} through ofe"), &retries);
        let mut through_baselines = Vec::new();
        for b in &self.baselines {
            let (latencies, retries) = self.open_loop_at(&b.url, rate).await?;
            let latencies = latencies.latencies;
            through_baselines.push((b.at_rate, b.name, latencies, retries));
        }
        let point = |target: &str, latencies: &[u64]| CurvePoint {
            bus: bus.to_string(),
            target: target.to_string(),
            rate,
            p50_ms: percentile(latencies, 50.0),
            p99_ms: percentile(latencies, 99.0),
            p999_ms: percentile(latencies, 99.9),
        };
        self.notes.curve.push(point("ofe", &through_ofe));
        for (_, name, latencies, _) in &through_baselines {
            self.notes.curve.push(point(name, latencies));
        }
        for (at_rate, name, latencies, retries) in through_baselines {
            self.note_errors(&format!("W5 {bus} at {label} through the {name}"), &retries);
            for p in PERCENTILES {
                let row = Row::info(
                    "W5",
                    &format!("{bus} bus: p{p} latency at {label} ({rate:.0}/s)"),
                    (percentile(&through_ofe, p), "ms"),
                    (at_rate, percentile(&latencies, p)),
                );
                let goal = match (label, p) {
                    ("1k events/s", 99.0) => Some(("added p99 ≤ 0.5 ms at 1k/s", 0.5)),
                    (l, 99.0) if l.starts_with("50%") => Some(("added p99 ≤ 1 ms at 50%", 1.0)),
                    (l, 99.9) if l.starts_with("50%") => Some(("added p99.9 ≤ 5 ms at 50%", 5.0)),
                    _ => None,
                };
                self.rows.push(match goal {
                    Some(goal) => row.at_most(goal),
                    None => row,
                });
            }
        }
        Ok(())
    }

    /// W2: W1 with 1000 Triggers filtering with CEL over data, 1% matching.
    pub(crate) async fn w2(&mut self, w1: f64) -> anyhow::Result<()> {
        self.say("W2: 1000 Triggers, CEL over data, 1% matching");
        let mut yaml = source("mem") + &memory_bus();
        for k in 0..1000 {
            let filter = format!("cel: \"type == 's.{k}' && data.speed > 120\"");
            yaml += &trigger(&format!("t{k}"), "mem", &filter, &[format!("{}/w2", self.sink_url)]);
        }
        let ofe = self.ofe(&yaml).await?;
        let events: Vec<Event> = (0..self.cli.events)
            .map(|i| {
                if i % 100 == 0 {
                    Event::new(format!("s.{}", (i / 100) % 1000), 130)
                } else {
                    Event::new(format!("s.{}", i % 1000), 80)
                }
            })
            .collect();
        let expected = events.iter().filter(|e| e.speed > 120).count() as u64;
        let measured =
            self.throughput(&ofe.webhook, &[&ofe.process], &events, Some(expected)).await?;
        self.note_errors("W2 through ofe", &measured.retries);
        self.rows.push(Row::rate(
            "W2",
            "W1 with 1000 CEL Triggers, 1% matching",
            (measured.rate, "events/s"),
            ("W1", w1),
            ("≥ 0.8× W1", 0.8),
        ));
        Ok(())
    }

    /// B: W1 with the subscriber delivering in batches of 10 and of 100 (`delivery.batch`),
    /// against W1 delivering one event a request, in events/s.
    pub(crate) async fn batches(&mut self, w1: f64) -> anyhow::Result<()> {
        for size in [10, 100] {
            self.say(&format!("B: W1 in batches of {size}"));
            let sink = format!("{}/batch", self.sink_url);
            let delivery =
                format!("      delivery: {{ batch: {{ maxSize: {size}, maxWait: 50ms }} }}\n");
            let yaml = source("mem")
                + &trigger_with("batch", "mem", "exact: { type: bench.b }", &[sink], &delivery)
                + &memory_bus();
            let ofe = self.ofe(&yaml).await?;
            let measured =
                self.throughput(&ofe.webhook, &[&ofe.process], &self.same("bench.b"), None).await?;
            self.note_errors(&format!("B{size} through ofe"), &measured.retries);
            self.rows.push(Row::info(
                "B",
                &format!("W1 delivered in batches of {size} (maxWait 50 ms)"),
                (measured.rate, "events/s"),
                ("W1, one event a request", w1),
            ));
        }
        Ok(())
    }

    /// C: W1 while a web console is open: its live stream read, so ofe records every
    /// event's steps for finding an event by id (the trail, which only runs while a console
    /// is open).
    pub(crate) async fn console(&mut self, w1: f64) -> anyhow::Result<()> {
        self.say("C: W1 with a web console open");
        let ofe = self.ofe(&self.one_trigger("console", "bench.c")).await?;
        let live = ofe.metrics.replace("/metrics", "/console/live");
        let mut stream = reqwest::get(&live).await?.error_for_status()?;
        // The first frame: the console is open, and the trail listens.
        stream.chunk().await?;
        let reader = tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
        let measured =
            self.throughput(&ofe.webhook, &[&ofe.process], &self.same("bench.c"), None).await;
        reader.abort();
        let measured = measured?;
        self.note_errors("C through ofe", &measured.retries);
        self.rows.push(Row::info(
            "C",
            "W1 with a web console open (every step recorded for find-by-id)",
            (measured.rate, "events/s"),
            ("W1, no console open", w1),
        ));
        Ok(())
    }

    /// W4: one input fanned out to 10 subscribers, in deliveries/s.
    pub(crate) async fn w4(&mut self, w1: f64) -> anyhow::Result<()> {
        self.say("W4: fan-out to 10 subscribers");
        let sinks: Vec<String> = (0..10).map(|i| format!("{}/fan/{i}", self.sink_url)).collect();
        let yaml = source("mem")
            + &trigger("fan", "mem", "exact: { type: bench.w4 }", &sinks)
            + &memory_bus();
        let ofe = self.ofe(&yaml).await?;
        let events = self.same("bench.w4");
        let expected = 10 * events.len() as u64;
        let measured =
            self.throughput(&ofe.webhook, &[&ofe.process], &events, Some(expected)).await?;
        self.note_errors("W4 through ofe", &measured.retries);
        self.rows.push(Row::rate(
            "W4",
            "fan-out: 1 input → 10 subscribers (deliveries/s)",
            (measured.rate * 10.0, "deliveries/s"),
            ("W1 deliveries/s", w1),
            ("≥ 0.8× W1", 0.8),
        ));
        drop(ofe);
        // The same with a transform on each subscriber: what reshaping costs, each of the ten
        // evaluating its CEL over the event's data.
        self.say("W4: fan-out to 10 subscribers, each with a transform");
        let transform =
            "      transform: { data: '{\"vehicle\": data.vehicle, \"kmh\": data.speed}' }\n";
        let yaml = source("mem")
            + &trigger_with("fan", "mem", "exact: { type: bench.w4t }", &sinks, transform)
            + &memory_bus();
        let transformed = self.ofe(&yaml).await?;
        let events = self.same("bench.w4t");
        let expected = 10 * events.len() as u64;
        let with = self
            .throughput(&transformed.webhook, &[&transformed.process], &events, Some(expected))
            .await?;
        self.note_errors("W4 with transforms through ofe", &with.retries);
        self.rows.push(Row::info(
            "W4",
            "the same, each subscriber with a transform (deliveries/s)",
            (with.rate * 10.0, "deliveries/s"),
            ("W4 without", measured.rate * 10.0),
        ));
        Ok(())
    }

    /// W1 end to end on a durable bus (`bus`, defined by `bus_yaml`), against each baseline
    /// (`goal` against nginx), then W5 at half of the rate it reached.
    async fn durable_end_to_end(
        &mut self,
        bus: (&'static str, &str),
        bus_yaml: &str,
        goal: (&'static str, f64),
    ) -> anyhow::Result<()> {
        let (label, name) = bus;
        self.say(&format!("W3: webhook → {label} bus → 1 Trigger → sink"));
        let yaml = source(name)
            + &trigger("w3", name, "exact: { type: bench.w1 }", &[format!("{}/w3", self.sink_url)])
            + bus_yaml;
        let ofe = self.ofe(&yaml).await?;
        let measured =
            self.throughput(&ofe.webhook, &[&ofe.process], &self.same("bench.w1"), None).await?;
        self.note_errors(&format!("W3 {label} through ofe"), &measured.retries);
        let what = format!("HTTP → bus ({label}) → 1 Trigger → HTTP");
        for b in &self.baselines {
            let row =
                Row::info("W3", &what, (measured.rate, "events/s"), (b.name, b.measured.rate));
            self.rows.push(if b.name == "nginx proxy" { row.at_least(goal) } else { row });
        }
        if crate::wanted(&self.cli.only, "W5") {
            let rate = (measured.rate * 0.5).max(100.0);
            self.latency(label, "50% of its W3", &ofe, rate).await?;
        }
        drop(ofe);
        Ok(())
    }

    /// W3: the durable buses, end to end and through their API.
    pub(crate) async fn w3(&mut self) -> anyhow::Result<()> {
        self.durable_end_to_end(
            ("embedded, durable", "default"),
            "",
            ("≥ 0.6× the nginx proxy", 0.6),
        )
        .await?;
        self.say("W3: the embedded bus's publish + consume");
        let dir = tempfile::tempdir()?;
        let embedded: Arc<dyn EventBus> =
            Arc::new(EmbeddedBus::open(EmbeddedConfig::new(dir.path()))?);
        let n = self.cli.events;
        let embedded_rate = bus_loop(embedded.clone(), n).await?;
        embedded.close().await?;
        let what = "bus API (embedded, fsync per batch): publish + consume";
        let Some(url) = self.cli.nats.clone() else {
            self.skip("W3 on JetStream: no NATS server; pass --nats nats://127.0.0.1:4222 (or set OFE_BENCH_NATS)");
            self.rows.push(Row::info(
                "W3",
                what,
                (embedded_rate, "events/s"),
                ("raw async-nats (needs --nats)", f64::NAN),
            ));
            return Ok(());
        };
        self.say("W3: baseline, the raw JetStream client");
        let raw = raw_jetstream(&url, n).await?;
        let baseline = ("raw async-nats client", raw);
        let goal = ("≥ 0.5× the raw client", 0.5);
        self.rows.push(Row::rate("W3", what, (embedded_rate, "events/s"), baseline, goal));
        self.say("W3: the JetStream bus's publish + consume");
        let jetstream: Arc<dyn EventBus> =
            Arc::new(JetStreamBus::connect(JetStreamConfig::new(&url)).await?);
        let jetstream_rate = bus_loop(jetstream.clone(), n).await?;
        jetstream.close().await?;
        let what = "bus API (JetStream): publish + consume";
        self.rows.push(Row::rate("W3", what, (jetstream_rate, "events/s"), baseline, goal));
        let bus = jetstream_bus(&url, None);
        self.durable_end_to_end(("JetStream", "js"), &bus, ("≥ 0.5× the nginx proxy", 0.5)).await
    }
}

impl Bench<'_> {
    /// The peer, side by side (`--peer`): Argo Events and ofe, each webhook → JetStream →
    /// HTTP sink, with the same events, the same sink and the same JetStream server (one of
    /// the run's own, with TLS, which Argo requires). Goals:
    /// ofe's throughput ≥ 5× the peer's, and at half of the peer's own maximum rate, ofe's p99
    /// ≤ 1/5 of the peer's.
    pub(crate) async fn peer(&mut self) -> anyhow::Result<()> {
        let Some(nats_server) = find_nats_server(self.cli.nats_server.as_deref()) else {
            self.skip("the peer: no nats-server to run its JetStream EventBus on; put it on PATH or pass --nats-server PATH");
            return Ok(());
        };
        let Some(binary) = find_argo(self.cli.argo.as_deref()) else {
            self.skip(&format!(
                "the peer, Argo Events {ARGO_VERSION}: it is not built; run scripts/peers/argo-events.sh (it builds from the Go module proxy into ~/.cache/ofe-tools, several minutes once), or pass --argo PATH"
            ));
            return Ok(());
        };
        self.say(&format!(
            "peer: Argo Events {ARGO_VERSION}, webhook EventSource → JetStream EventBus → Sensor HTTP trigger"
        ));
        let events: Vec<Event> =
            (0..self.cli.peer_events.max(1)).map(|_| Event::new("bench.w1", 80)).collect();
        let nats = start_tls_nats(&nats_server).await?;
        let argo = start_argo(&binary, &nats, &self.sink, &self.sink_url).await?;
        let processes: Vec<&Process> = argo.processes.iter().collect();
        let peer = self.throughput(&argo.webhook, &processes, &events, None).await?;
        self.note_errors("the peer through Argo Events", &peer.retries);

        self.say("peer: the same through ofe on its JetStream bus");
        let yaml = source("js")
            + &trigger(
                "peer",
                "js",
                "exact: { type: bench.w1 }",
                &[format!("{}/peer", self.sink_url)],
            )
            + &jetstream_bus(&nats.url, Some(&nats.ca));
        let ofe = self.ofe(&yaml).await?;
        let measured = self.throughput(&ofe.webhook, &[&ofe.process], &events, None).await?;
        self.note_errors("the peer run through ofe", &measured.retries);
        let what = "HTTP → bus (JetStream) → 1 trigger → HTTP, against the peer";
        self.rows.push(Row::rate(
            "P",
            what,
            (measured.rate, "events/s"),
            (ARGO_NAME, peer.rate),
            ("≥ 5× Argo Events", 5.0),
        ));
        if let (Some(ofe_cpu), Some(argo_cpu)) = (measured.cpu_us, peer.cpu_us) {
            self.rows.push(Row::info(
                "P",
                "CPU per event, every process of the target",
                (ofe_cpu, "µs"),
                (ARGO_NAME, argo_cpu),
            ));
        }

        // Each at the peer's own half-load rate, where it is not yet saturated.
        let rate = (peer.rate * 0.5).max(10.0);
        let label = format!("50% of Argo's maximum ({rate:.0}/s)");
        self.say(&format!("peer: open loop at {label}, through Argo Events, then ofe"));
        let mut runs = Vec::new();
        for (name, url) in [("Argo Events", argo.webhook.as_str()), ("ofe", ofe.webhook.as_str())] {
            let (run, retries) = self.open_loop_at(url, rate).await?;
            self.note_errors(&format!("the peer's latency run through {name}"), &retries);
            runs.push(run.latencies);
        }
        let (through_argo, through_ofe) = (&runs[0], &runs[1]);
        for (target, latencies) in [(ARGO_NAME, through_argo), ("ofe", through_ofe)] {
            self.notes.curve.push(CurvePoint {
                bus: "JetStream".into(),
                target: target.into(),
                rate,
                p50_ms: percentile(latencies, 50.0),
                p99_ms: percentile(latencies, 99.0),
                p999_ms: percentile(latencies, 99.9),
            });
        }
        for p in PERCENTILES {
            let row = Row::info(
                "P",
                &format!("p{p} latency at {label}"),
                (percentile(through_ofe, p), "ms"),
                (ARGO_NAME, percentile(through_argo, p)),
            )
            .relative();
            self.rows.push(if p == 99.0 {
                row.at_most(("≤ 1/5 of Argo's p99", 0.2))
            } else {
                row
            });
        }
        drop(ofe);
        drop(argo);
        drop(nats);
        Ok(())
    }
}

/// Bytes of data of the large events.
const LARGE_EVENT: usize = 64 * 1024;

impl Bench<'_> {
    /// Scale (`S`): `--scale-triggers` Triggers (throughput against W1, start-up, memory),
    /// `--scale-keys` live join keys (memory, and throughput while they are held), and 64 KiB
    /// events (MB/s against each forwarder).
    pub(crate) async fn scale(&mut self, w1: f64) -> anyhow::Result<()> {
        let triggers = self.cli.scale_triggers.max(1);
        self.say("S: W1's ofe, for its start-up and memory");
        let (ofe, w1_startup) = self.started(&self.one_trigger("t0", "s.0"), "s.0").await?;
        let w1_rss = resident_mb(ofe.process.0.id()).unwrap_or(f64::NAN);
        drop(ofe);

        self.say(&format!("S: {triggers} Triggers, each event matching one"));
        let mut yaml = source("mem") + &memory_bus();
        for k in 0..triggers {
            let filter = format!("exact: {{ type: s.{k} }}");
            yaml += &trigger(&format!("t{k}"), "mem", &filter, &[format!("{}/s", self.sink_url)]);
        }
        let last = format!("s.{}", triggers - 1);
        let (ofe, startup) = self.started(&yaml, &last).await?;
        let events: Vec<Event> =
            (0..self.cli.events).map(|i| Event::new(format!("s.{}", i % triggers), 80)).collect();
        let measured = self.throughput(&ofe.webhook, &[&ofe.process], &events, None).await?;
        self.note_errors(&format!("S: {triggers} Triggers through ofe"), &measured.retries);
        let rss = resident_mb(ofe.process.0.id()).unwrap_or(f64::NAN);
        drop(ofe);
        let what = format!("{triggers} Triggers (exact type), each event matching one");
        self.rows.push(Row::rate(
            "S",
            &what,
            (measured.rate, "events/s"),
            ("W1", w1),
            ("≥ 0.8× W1", 0.8),
        ));
        let mut row = Row::info(
            "S",
            &format!("{triggers} Triggers: start-up to the last one delivering"),
            (startup, "s"),
            ("W1's ofe (1 Trigger)", w1_startup),
        );
        row.goal = "≤ 2 s";
        row.met = Some(startup <= 2.0);
        self.rows.push(row);
        self.rows.push(Row::info(
            "S",
            &format!("{triggers} Triggers: resident memory after the run"),
            (rss, "MB"),
            ("W1's ofe (1 Trigger)", w1_rss),
        ));

        self.join_keys(w1).await?;
        self.large_events().await
    }

    /// `ofe run` on `yaml`, and the seconds from starting it to an event of type `kind`
    /// reaching the sink: the start-up a user waits for.
    async fn started(&self, yaml: &str, kind: &str) -> anyhow::Result<(Ofe, f64)> {
        let began = Instant::now();
        let ofe = self.ofe(yaml).await?;
        self.sink.reset();
        let retries = Arc::new(Retries::default());
        let probe = [Event::new(kind, 80)];
        while self.sink.delivered.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            if began.elapsed() > std::time::Duration::from_secs(120) {
                anyhow::bail!("ofe delivered no `{kind}` event within two minutes of starting");
            }
            crate::load::closed_loop(&self.client, &ofe.webhook, &probe, 1, &retries).await?;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok((ofe, began.elapsed().as_secs_f64()))
    }

    /// `--scale-keys` keys held by a join (`a && b` by `data.vehicle`), then W1's load completing
    /// joins while they are held.
    async fn join_keys(&mut self, w1: f64) -> anyhow::Result<()> {
        let keys = self.cli.scale_keys.max(1);
        self.say(&format!("S: {keys} live join keys"));
        let ns = namespace();
        let join = format!(
            "---\napiVersion: events.openfunction.io/v1alpha1\nkind: Trigger\n\
             metadata: {{ name: join, namespace: {ns} }}\n\
             spec:\n  eventBus: mem\n  window: 1h\n  maxKeys: {max}\n  correlationKey: data.vehicle\n  inputs:\n    \
             a: {{ eventSource: ingest, event: hook, filters: [ {{ exact: {{ type: bench.a }} }} ] }}\n    \
             b: {{ eventSource: ingest, event: hook, filters: [ {{ exact: {{ type: bench.b }} }} ] }}\n  \
             subscribers:\n    - condition: a && b\n      sink: {{ uri: \"{sink}/join\" }}\n",
            max = keys * 2,
            sink = self.sink_url,
        );
        let ofe = self.ofe(&(source("mem") + &join + &memory_bus())).await?;
        let before = resident_mb(ofe.process.0.id()).unwrap_or(f64::NAN);
        // Keys `car-0`, `car-1`, …, one `a` each: nothing fires yet.
        let halves: Vec<Event> = (0..keys).map(|_| Event::new("bench.a", 80)).collect();
        let retries = Arc::new(Retries::default());
        let concurrency = self.cli.concurrency;
        crate::load::closed_loop(&self.client, &ofe.webhook, &halves, concurrency, &retries)
            .await?;
        self.note_errors("S: join keys sent to ofe", &retries);
        let began = Instant::now();
        loop {
            let held = stages::sum(&self.client, &ofe.metrics, "ofe_trigger_join_keys").await;
            if held.is_some_and(|h| h >= keys as f64) {
                break;
            }
            if began.elapsed() > std::time::Duration::from_secs(120) {
                anyhow::bail!("ofe held {held:?} join keys two minutes after {keys} were sent");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let held = resident_mb(ofe.process.0.id()).unwrap_or(f64::NAN);
        // Then `b`s for the same keys: each completes a join and is delivered.
        let n = self.cli.events.min(keys);
        let events: Vec<Event> = (0..n).map(|_| Event::new("bench.b", 80)).collect();
        let measured = self.throughput(&ofe.webhook, &[&ofe.process], &events, None).await?;
        self.note_errors("S: joins through ofe", &measured.retries);
        drop(ofe);
        self.rows.push(Row::rate(
            "S",
            &format!("{keys} live join keys: b events completing joins"),
            (measured.rate, "events/s"),
            ("W1", w1),
            ("≥ 0.8× W1", 0.8),
        ));
        self.rows.push(Row::info(
            "S",
            &format!("{keys} live join keys: resident memory"),
            (held, "MB"),
            ("the same ofe before them", before),
        ));
        Ok(())
    }

    /// W1 with 64 KiB events, in MB/s, against each forwarder.
    async fn large_events(&mut self) -> anyhow::Result<()> {
        self.say("S: W1 with 64 KiB events");
        let n = (self.cli.events / 10).max(100);
        let events = || -> Vec<Event> {
            (0..n).map(|_| Event { size: LARGE_EVENT, ..Event::new("bench.large", 80) }).collect()
        };
        let mb = |rate: f64| rate * LARGE_EVENT as f64 / 1e6;
        let mut through = Vec::new();
        for b in &self.baselines {
            let measured = self.throughput(&b.url, &[&b.process], &events(), None).await?;
            through.push((b.name, measured));
        }
        let ofe = self.ofe(&self.one_trigger("large", "bench.large")).await?;
        let measured = self.throughput(&ofe.webhook, &[&ofe.process], &events(), None).await?;
        drop(ofe);
        self.note_errors("S: 64 KiB events through ofe", &measured.retries);
        for (name, baseline) in through {
            self.note_errors(&format!("S: 64 KiB events through the {name}"), &baseline.retries);
            self.rows.push(Row::info(
                "S",
                "W1 with 64 KiB events (memory bus)",
                (mb(measured.rate), "MB/s"),
                (name, mb(baseline.rate)),
            ));
        }
        Ok(())
    }
}
