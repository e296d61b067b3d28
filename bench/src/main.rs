//! `ofe-bench`: the ofe benchmark. Every workload runs against `ofe run` (a release build, as a
//! process of its own) and next to a baseline measured in the same run on the same machine, and
//! is reported as a ratio to it, because absolute figures on shared machines drift.
//!
//! - **W1** HTTP CloudEvent in (webhook) → bus → 1 Trigger (exact `type`) → HTTP sink, 1 KiB
//!   events, keep-alive. Baseline: a minimal forwarder (HTTP in → HTTP out, no parsing) between
//!   the same load generator and the same sink.
//! - **W2** the same with 1000 Triggers whose filters are CEL over data
//!   (`type == 's.N' && data.speed > 120`), 1% of the events matching. Baseline: W1.
//! - **W3** the durable path on JetStream (with `--nats`). Baseline: the raw async-nats client
//!   publishing (acknowledged) and consuming (acknowledging) the same events.
//! - **W4** fan-out to 10 matching subscribers. Baseline: W1's deliveries/s.
//! - **B** W1 with the subscriber delivering in batches of 10 and of 100 (`delivery.batch`).
//!   Baseline: W1 (one event a request).
//! - **C** W1 while a web console is open (its live stream read), so that ofe records every
//!   event's steps for finding an event by id. Baseline: W1 (no console open).
//! - **W5** latency under an open-loop fixed rate (1k events/s, and 50% of W1's rate): p50,
//!   p99 and p99.9 added over the forwarder at the same rate. Each event's latency is counted
//!   from the time it was *scheduled* to be sent, so a stall is not hidden by the sender
//!   waiting (no coordinated omission).
//!
//! The load generator, the sink, the forwarder and ofe share the machine; the figures are for
//! that setup, which is why only the ratios are compared with goals.

mod load;
mod peer;
mod plot;
mod report;
mod stages;
mod targets;
mod w3;
mod workloads;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use anyhow::bail;
use clap::{Parser, Subcommand};

use report::{Notes, Row, cpu_times, print_table};
use targets::forwarder;
use workloads::Bench;

/// Event size, as the workloads specify.
pub(crate) const EVENT_BYTES: usize = 1024;

/// Numbers the batches of events, so that ids never repeat across runs (ofe drops a repeated
/// id as a duplicate, as it should).
pub(crate) static BATCH: AtomicU64 = AtomicU64::new(0);

#[derive(Parser)]
#[command(name = "ofe-bench", about = "The ofe benchmark: W1-W5 next to same-run baselines")]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Events per throughput run.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Requests in flight from the load generator.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of each open-loop latency run.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Only these workloads, e.g. `W1,W5`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A NATS server with JetStream for W3, e.g. `nats://127.0.0.1:4222` (W3 is skipped,
    /// saying so, without it).
    #[arg(long, env = "OFE_BENCH_NATS")]
    nats: Option<String>,
    /// nginx, run as a reverse proxy: the second baseline (default: `nginx` on `PATH`, else
    /// `/usr/sbin/nginx`; without it, its rows are skipped, saying so).
    #[arg(long, env = "OFE_BENCH_NGINX")]
    nginx: Option<PathBuf>,
    /// Also run the peer side by side: Argo Events, built by `scripts/peers/argo-events.sh`
    /// (skipped, saying so, when it is not built or no `nats-server` is found).
    #[arg(long)]
    peer: bool,
    /// `nats-server` for `--peer`: the peer run starts one of its own, with TLS (default:
    /// `nats-server` on `PATH`).
    #[arg(long, env = "OFE_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Argo Events' binary for `--peer` (default: `argo-events` on `PATH`, else where
    /// `scripts/peers/argo-events.sh` puts it).
    #[arg(long, env = "OFE_BENCH_ARGO")]
    argo: Option<PathBuf>,
    /// Events per throughput run against the peer and ofe beside it (fewer than `--events`: a
    /// peer may be far slower).
    #[arg(long, default_value_t = 10_000)]
    peer_events: usize,
    /// Triggers in the scale run (S).
    #[arg(long, default_value_t = 10_000)]
    scale_triggers: usize,
    /// Live join keys in the scale run (S).
    #[arg(long, default_value_t = 100_000)]
    scale_keys: usize,
    /// The `ofe` binary (default: beside this one).
    #[arg(long)]
    ofe: Option<PathBuf>,
    /// Also write SVG charts into this directory: `throughput.svg` (each workload next to its
    /// forwarders) and `latency.svg` (latency against offered rate, every bus).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Internal {
    /// The baseline forwarder: every request to `--listen` is sent on to `--to`, as is.
    Forwarder {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        to: String,
    },
}

/// Whether `id` is among the workloads asked for (all when none are named).
fn wanted(only: &[String], id: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(id))
}

async fn run(cli: &Cli) -> anyhow::Result<(Vec<Row>, Notes)> {
    let ofe = match &cli.ofe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ofe"),
    };
    if !ofe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p ofe -p ofe-bench`, or pass --ofe",
            ofe.display()
        );
    }
    let mut bench = Bench::start(cli, ofe).await?;
    let w1 = bench.w1_and_w5().await?;
    if wanted(&cli.only, "W2") {
        bench.w2(w1).await?;
    }
    if wanted(&cli.only, "W4") {
        bench.w4(w1).await?;
    }
    if wanted(&cli.only, "B") {
        bench.batches(w1).await?;
    }
    if wanted(&cli.only, "C") {
        bench.console(w1).await?;
    }
    if wanted(&cli.only, "W3") {
        bench.w3().await?;
    }
    if wanted(&cli.only, "S") {
        bench.scale(w1).await?;
    }
    if cli.peer {
        bench.peer().await?;
    }
    Ok((bench.rows, bench.notes))
}

fn main() -> anyhow::Result<()> {
    ofe_core::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(Internal::Forwarder { listen, to }) = cli.command {
        return runtime.block_on(forwarder(listen, to));
    }
    let json = cli.json;
    let before = cpu_times();
    let (rows, notes) = runtime.block_on(run(&cli))?;
    let steal = before.zip(cpu_times()).map(|(a, b)| b.steal_share_since(&a));
    if let Some(dir) = &cli.plot {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let host = ofe_core::host_name().unwrap_or_else(|| "this host".into());
        let title = format!("{host}, {cores} cores, {}", chrono::Utc::now().format("%Y-%m-%d"));
        plot::write(dir, &title, &rows, &notes.curve)?;
        if !json {
            eprintln!("charts written to {}", dir.display());
        }
    }
    if json {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let report = serde_json::json!({
            "cores": cores,
            "cpu_steal": steal,
            "rows": rows,
            "skipped": notes.skipped,
            "connection_errors": notes.connection_errors,
            "stages": notes.stages,
            "curve": notes.curve,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&rows, &notes);
        if let Some(steal) = steal {
            println!(
                "CPU stolen by the host during the run: {:.1}%{}",
                steal * 100.0,
                if steal > 0.02 {
                    " (a noisy host: other machines' work slowed this run, and its tails most)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
