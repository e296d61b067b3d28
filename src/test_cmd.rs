//! `ofe test`: every Trigger of the manifests run offline against fixture events, for a
//! developer at a terminal and for CI. Nothing is connected: no bus, broker or sink.
//!
//! Exit status: 0 when every check passed; 1 when `--expect` differs from what fired; 2 when
//! the manifests or the fixtures cannot be used (each problem named, with its file and line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader as _, Event};
use ofe_core::Subject;
use ofe_crds::manifest::{DEFAULT_NAMESPACE, Resource};
use ofe_trigger::offline::{Offline, Verdict};
use serde::{Deserialize, Serialize};

/// `ofe test`'s arguments.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Files or folders of YAML manifests (their Triggers are run; ConfigMaps and the rest are
    /// read as `ofe validate` reads them).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// The fixtures: structured-mode CloudEvents, one JSON object per line, in order. Each names
    /// its input with the extensions `ofeeventsource` and `ofeevent` (or `ofetopic`), and
    /// `ofenamespace` unless it is `default`. Without a `time`, an event comes 1 ms after the
    /// one before.
    #[arg(long)]
    events: PathBuf,
    /// The firings expected, one JSON object per line: `{"event": "<id>", "trigger":
    /// "<namespace>/<name>", "subscriber": <index>}`. Any difference is printed and exits 1.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Print the results as one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

/// One fixture event and what every subscriber made of it.
#[derive(Serialize)]
struct Outcome {
    /// The event's id.
    event: String,
    /// Its input: `<namespace>/<eventsource>/<event>` or `<namespace>/topic/<topic>`.
    input: String,
    /// Per subscriber that reads the input.
    verdicts: Vec<Verdict>,
}

/// One fixture: its input's subject and name, the event, and its time.
type Fixture = (Subject, String, Event, DateTime<Utc>);

/// One firing, as `--expect` lists them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Firing {
    event: String,
    trigger: String,
    subscriber: usize,
}

/// `ofe test`.
pub fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let checked = ofe_runtime::load_and_check(&args.paths, None);
    if checked.has_errors() {
        crate::validate::report(&checked.diagnostics);
        eprintln!("the manifests have errors (above); fix them first");
        return Ok(ExitCode::from(2));
    }
    let triggers: Vec<_> = checked
        .manifests
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::Trigger(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let mut offline = match Offline::new(&triggers) {
        Ok(offline) => offline,
        Err(errors) => {
            crate::validate::report(&errors);
            return Ok(ExitCode::from(2));
        }
    };
    let fixtures = match read_fixtures(&args.events) {
        Ok(fixtures) => fixtures,
        Err(problems) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let mut outcomes = Vec::new();
    for fixture in fixtures {
        // A subscriber's `topic` is another Trigger's input: what it publishes is routed
        // next, as the bus would, so a chain shows whole (up to the hop limit).
        let mut queue = std::collections::VecDeque::from([fixture]);
        while let Some((subject, input, event, at)) = queue.pop_front() {
            let verdicts = offline.run(&subject, &event, at);
            let hops = ofe_trigger::sink::topic::hops(&event) + 1;
            for v in verdicts.iter().filter(|v| v.fired) {
                let (Some(topic), Some(published)) = (&v.topic, &v.event) else { continue };
                let Ok(next) = serde_json::from_value::<Event>(published.clone()) else { continue };
                if hops > ofe_trigger::sink::topic::DEFAULT_MAX_HOPS {
                    continue;
                }
                let (namespace, name) = topic.split_once('/').unwrap_or((DEFAULT_NAMESPACE, topic));
                queue.push_back((
                    Subject::topic(namespace, name),
                    format!("{namespace}/topic/{name}, from {}[{}]", v.trigger, v.subscriber),
                    ofe_trigger::sink::topic::with_hops(&next, hops),
                    at,
                ));
            }
            outcomes.push(Outcome { event: event.id().to_string(), input, verdicts });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print_text(&outcomes);
    }
    let Some(expect) = &args.expect else { return Ok(ExitCode::SUCCESS) };
    let expected = match read_expected(expect) {
        Ok(expected) => expected,
        Err(problems) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    Ok(compare(&outcomes, expected))
}

/// The fixtures of `path`: each event with its input's subject and name and its time; or every
/// line that cannot be used, with why.
fn read_fixtures(path: &Path) -> Result<Vec<Fixture>, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut last: Option<DateTime<Utc>> = None;
    for (n, line) in text.lines().enumerate() {
        let at_line = || format!("{}:{}", path.display(), n + 1);
        if line.trim().is_empty() || line.trim_start().starts_with("//") {
            continue;
        }
        let event: Event = match serde_json::from_str(line) {
            Ok(event) => event,
            Err(e) => {
                problems.push(format!(
                    "{}: not a structured-mode CloudEvent (a JSON object with specversion, id, \
                     source and type): {e}",
                    at_line()
                ));
                continue;
            }
        };
        let ext = |name: &str| event.extension(name).map(ToString::to_string);
        let namespace = ext("ofenamespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let (subject, input) = match (ext("ofetopic"), ext("ofeeventsource"), ext("ofeevent")) {
            (Some(topic), _, _) => {
                (Subject::topic(&namespace, &topic), format!("{namespace}/topic/{topic}"))
            }
            (None, Some(es), Some(name)) => {
                (Subject::event(&namespace, &es, &name), format!("{namespace}/{es}/{name}"))
            }
            _ => {
                problems.push(format!(
                    "{}: event `{}` names no input; add the extensions `ofeeventsource` and \
                     `ofeevent` (or `ofetopic`), and `ofenamespace` unless it is `default`",
                    at_line(),
                    event.id()
                ));
                continue;
            }
        };
        let at = match (event.time(), last) {
            (Some(time), _) => *time,
            (None, Some(last)) => last + chrono::Duration::milliseconds(1),
            (None, None) => Utc::now(),
        };
        last = Some(at);
        out.push((subject, input, event, at));
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// The firings `path` lists; or every line that cannot be used, with why.
fn read_expected(path: &Path) -> Result<Vec<Firing>, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with("//") {
            continue;
        }
        match serde_json::from_str::<Firing>(line) {
            Ok(firing) => out.push(firing),
            Err(e) => problems.push(format!(
                "{}:{}: not a firing `{{\"event\": \"<id>\", \"trigger\": \"<namespace>/<name>\", \
                 \"subscriber\": <index>}}`: {e}",
                path.display(),
                n + 1
            )),
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// Compares what fired with `expected`; prints each difference, with why a missing firing did
/// not happen.
fn compare(outcomes: &[Outcome], mut expected: Vec<Firing>) -> ExitCode {
    let mut fired = Vec::new();
    let mut why: BTreeMap<Firing, String> = BTreeMap::new();
    for outcome in outcomes {
        for v in &outcome.verdicts {
            let firing = Firing {
                event: outcome.event.clone(),
                trigger: v.trigger.clone(),
                subscriber: v.subscriber,
            };
            if v.fired {
                fired.push(firing);
            } else if let Some(reason) = &v.why_not {
                why.insert(firing, reason.clone());
            }
        }
    }
    fired.sort();
    expected.sort();
    let missing: Vec<&Firing> = expected.iter().filter(|f| !fired.contains(f)).collect();
    let extra: Vec<&Firing> = fired.iter().filter(|f| !expected.contains(f)).collect();
    for f in &missing {
        let reason = why.get(*f).map_or("it reads no such input", String::as_str);
        eprintln!(
            "expected, but did not fire: event {} → {}[{}]: {reason}",
            f.event, f.trigger, f.subscriber
        );
    }
    for f in &extra {
        eprintln!("fired, but not expected: event {} → {}[{}]", f.event, f.trigger, f.subscriber);
    }
    if missing.is_empty() && extra.is_empty() {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let (events, firings) = (outcomes.len(), fired.len());
        eprintln!(
            "{events} event{}, {firings} firing{}: as expected",
            plural(events),
            plural(firings)
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} firings differ from the expected ({} missing, {} not expected)",
            missing.len() + extra.len(),
            missing.len(),
            extra.len()
        );
        ExitCode::FAILURE
    }
}

/// The outcomes as text, one block per event.
fn print_text(outcomes: &[Outcome]) {
    for outcome in outcomes {
        println!("event {} ({})", outcome.event, outcome.input);
        if outcome.verdicts.is_empty() {
            println!("  no Trigger reads this input");
        }
        for v in &outcome.verdicts {
            let at = format!("{}[{}]", v.trigger, v.subscriber);
            if !v.fired {
                println!("  {at}: not fired: {}", v.why_not.as_deref().unwrap_or_default());
                continue;
            }
            println!("  {at}: fired");
            if let Some(event) = &v.event {
                println!("    event: {event}");
            }
            if let Some(topic) = &v.topic {
                println!("    topic: {topic}");
            }
            if let Some(request) = &v.request {
                println!("    request: {} {}", request.method, request.url);
                for (name, value) in &request.headers {
                    println!("      {name}: {value}");
                }
                println!("      body: {}", request.body);
            }
        }
    }
}
