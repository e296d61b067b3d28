//! `ofe`: OpenFunction Events in one binary.
//!
//! - `ofe run -f PATH...` runs every EventSource and Trigger found, with the embedded bus.
//! - `ofe validate -f PATH...` checks manifests and explains every problem.
//! - `ofe operator` runs them as the API server holds them, and writes their status.
//! - `ofe test -f PATH... --events FILE` runs the Triggers offline against fixture events.
//! - `ofe crds` prints the CustomResourceDefinitions.
//! - `ofe send`, `ofe tail`, `ofe status`, `ofe pause`, `ofe resume`, `ofe deadletters`
//!   and `ofe replay` talk to a running process's endpoint.

mod client;
mod endpoint;
mod logging;
mod openmetrics;
#[cfg(feature = "operator")]
mod operator;
mod run;
mod test_cmd;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a profile of the HTTP → bus → HTTP path spent
/// about a fifth of ofe's CPU time in glibc's malloc and free (with `malloc_consolidate`), on
/// the many short-lived buffers of every event.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks the kernel for them, and
/// each 2 MiB page it touches is zeroed whole (and first compacted for, when memory is
/// fragmented): a profile of W1 spent 8% of ofe's CPU zeroing huge pages as mimalloc returned
/// and took back memory, and 10,000 Triggers started in anything from 0.7 s to 2.3 s as the
/// kernel found pages or not. With 4 KiB pages neither happens; ofe's memory is tens of
/// megabytes, where huge pages save little. Databases (Redis, MongoDB) advise the same.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        // Refused only by a kernel without it (before 3.15): nothing to turn off then.
        eprintln!("ofe: cannot turn transparent huge pages off: {error}");
    }
}

/// OpenFunction Events, rebuilt: event sources, a durable event bus and CEL triggers.
#[derive(Parser)]
#[command(name = "ofe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every EventSource and Trigger in the given manifests, in this process.
    Run(run::RunArgs),
    /// Run the EventSources and Triggers of a Kubernetes cluster: watch the CRDs, run them
    /// in this process (replicas share the work), and write their status.
    #[cfg(feature = "operator")]
    Operator(operator::OperatorArgs),
    /// Check manifests: schema, conditions, schedules, sinks and references.
    Validate {
        /// Files or folders of YAML manifests (multi-document files allowed).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
    },
    /// Run every Trigger offline against fixture events (one structured CloudEvent a line):
    /// which subscribers fire and why not, the transformed event and the request each sink
    /// would get; `--expect` compares the firings with a list, for CI. Nothing is connected.
    Test(test_cmd::TestArgs),
    /// Publish a test CloudEvent as an EventSource's event, or on a topic, through a running
    /// ofe.
    Send(client::send::SendArgs),
    /// Pause a Trigger's subscribers in a running ofe: events that fire wait on the bus, in
    /// order, until `ofe resume`. Stored on the bus: it survives restarts and reaches every
    /// replica.
    Pause(client::pause::PauseArgs),
    /// Resume subscribers `ofe pause` paused: they deliver what waited, in order.
    Resume(client::pause::PauseArgs),
    /// List, show, redrive or purge the events a Trigger's subscribers kept after they failed
    /// for good (their dead-letter store on the bus).
    Deadletters(client::deadletters::DeadLettersArgs),
    /// Deliver a Trigger subscriber's past events again, from a point in time, beside its live
    /// delivery; or list or cancel replays.
    Replay(client::replay::ReplayArgs),
    /// Print each step of the events' paths (published, routed, filtered, delivered,
    /// retrying, dead-lettered, dropped) as they flow through a running ofe.
    Tail(client::tail::TailArgs),
    /// Show each EventSource and Trigger of a running ofe with its condition, rates and
    /// errors; exits 3 when something is not ready.
    Status(client::status::StatusArgs),
    /// Print the four CustomResourceDefinitions as YAML.
    Crds {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    ofe_core::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths } => Ok(validate::validate_command(&paths)),
        Command::Crds { out } => crds(out),
        Command::Test(args) => test_cmd::test(args),
        Command::Run(args) => run::main(args),
        #[cfg(feature = "operator")]
        Command::Operator(args) => operator::main(args),
        Command::Send(args) => client::send::send(args),
        Command::Pause(args) => client::pause::set(args, true),
        Command::Resume(args) => client::pause::set(args, false),
        Command::Deadletters(args) => client::deadletters::deadletters(args),
        Command::Replay(args) => client::replay::replay(args),
        Command::Tail(args) => client::tail::tail(args),
        Command::Status(args) => client::status::status(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn crds(out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match out {
        None => {
            // A closed pipe (`ofe crds | head`) is not an error worth a panic.
            use std::io::Write as _;
            let text = ofe_crds::crd::all_yaml()?;
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, crd) in ofe_crds::crd::all() {
                std::fs::write(dir.join(file), ofe_crds::crd::to_yaml(&crd)?)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
