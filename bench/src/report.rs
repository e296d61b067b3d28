//! The report: one row per figure, next to its baseline and goal, as a table or JSON; and
//! how much CPU the host stole during the run.

/// One line of the report.
#[derive(serde::Serialize)]
pub(crate) struct Row {
    /// `W1`…`W5`, or `P` for the peer.
    pub(crate) workload: &'static str,
    /// What was measured.
    pub(crate) what: String,
    /// ofe's figure.
    pub(crate) figure: f64,
    /// `events/s`, `deliveries/s`, `MB/s`, `ms`, `µs`, `s` or `MB`.
    pub(crate) unit: &'static str,
    /// What the figure is compared with.
    pub(crate) baseline_name: &'static str,
    /// Its figure, measured in the same run.
    pub(crate) baseline: f64,
    /// `figure / baseline` for rates and CPU; `figure - baseline` (added latency) in ms.
    pub(crate) ratio: Option<f64>,
    /// The goal, when the row has one.
    pub(crate) goal: &'static str,
    /// Whether the goal is met.
    pub(crate) met: Option<bool>,
    /// Whether `ratio` is `figure / baseline` even for latencies (see [`Row::relative`]).
    pub(crate) relative: bool,
}

impl Row {
    /// A figure shown next to a baseline for scale, with no goal of its own: their ratio, or,
    /// for latencies (`ms`), what ofe adds.
    pub(crate) fn info(
        workload: &'static str,
        what: &str,
        (figure, unit): (f64, &'static str),
        (baseline_name, baseline): (&'static str, f64),
    ) -> Self {
        let ratio = if unit == "ms" {
            Some(figure - baseline)
        } else {
            (baseline > 0.0).then(|| figure / baseline)
        };
        Self {
            workload,
            what: what.into(),
            figure,
            unit,
            baseline_name,
            baseline,
            ratio,
            goal: "",
            met: None,
            relative: false,
        }
    }

    /// The ratio as `figure / baseline` for a latency too: against a peer, what matters is how
    /// many times faster, not the milliseconds added over a forwarder.
    pub(crate) fn relative(self) -> Self {
        let ratio = (self.baseline > 0.0).then(|| self.figure / self.baseline);
        Self { ratio, relative: true, ..self }
    }

    /// A rate next to its baseline, met when the ratio reaches `min_ratio`.
    pub(crate) fn rate(
        workload: &'static str,
        what: &str,
        figure: (f64, &'static str),
        baseline: (&'static str, f64),
        goal: (&'static str, f64),
    ) -> Self {
        Self::info(workload, what, figure, baseline).at_least(goal)
    }

    /// Sets the goal `goal`: the ratio reaches `min_ratio`.
    pub(crate) fn at_least(self, (goal, min_ratio): (&'static str, f64)) -> Self {
        let met = self.ratio.map(|r| r >= min_ratio);
        Self { goal, met, ..self }
    }

    /// Sets the goal `goal`: the ratio (or, for latencies, the added ms) stays within `max`.
    pub(crate) fn at_most(self, (goal, max): (&'static str, f64)) -> Self {
        let met = self.ratio.map(|r| r <= max);
        Self { goal, met, ..self }
    }
}

/// Prints the rows as a table, then what was skipped and any connection errors.
pub(crate) fn print_table(rows: &[Row], notes: &Notes) {
    println!(
        "{:<4} {:<56} {:>12} {:>12} {:<24} {:>9}  {:<32} met",
        "", "workload", "ofe", "baseline", "baseline is", "ratio", "goal"
    );
    for r in rows {
        let ratio = match (r.unit, r.ratio) {
            ("ms", Some(added)) if !r.relative => format!("{added:+.3}ms"),
            (_, Some(x)) => format!("{x:.2}×"),
            (_, None) => String::new(),
        };
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        let figure = |x: f64| match r.unit {
            _ if x.is_nan() => "-".to_string(),
            "ms" => format!("{x:.3} ms"),
            "µs" => format!("{x:.1} µs"),
            "s" => format!("{x:.2} s"),
            "MB" | "MB/s" => format!("{x:.0} {}", r.unit),
            _ => format!("{x:.0}/s"),
        };
        println!(
            "{:<4} {:<56} {:>12} {:>12} {:<24} {:>9}  {:<32} {}",
            r.workload,
            r.what,
            figure(r.figure),
            figure(r.baseline),
            r.baseline_name,
            ratio,
            r.goal,
            met
        );
    }
    if !notes.stages.is_empty() {
        println!(
            "\nwhere ofe's time went (sampled stage histograms; each figure is its bucket's upper bound)"
        );
        println!(
            "{:<44} {:<14} {:>8} {:>10} {:>10} {:>10}",
            "W5 run", "stage", "samples", "p50 ms", "p99 ms", "p99.9 ms"
        );
        for s in &notes.stages {
            println!(
                "{:<44} {:<14} {:>8} {:>10.3} {:>10.3} {:>10.3}",
                s.run, s.stage, s.count, s.p50_ms, s.p99_ms, s.p999_ms
            );
        }
        println!();
    }
    for skipped in &notes.skipped {
        println!("skipped: {skipped}");
    }
    if notes.connection_errors.is_empty() {
        println!("requests sent again: none");
    }
    for e in &notes.connection_errors {
        println!(
            "requests sent again in {}: {} could not connect, {} broke before the answer, {} refused with 503",
            e.run, e.connect, e.broken, e.refused
        );
    }
}

/// What the report says beside its rows.
#[derive(Default, serde::Serialize)]
pub(crate) struct Notes {
    /// Rows not measured, and why (a missing nginx or NATS server).
    pub(crate) skipped: Vec<String>,
    /// Runs in which requests failed on their connection and were sent again.
    pub(crate) connection_errors: Vec<ConnectionErrors>,
    /// Where ofe's time went in each latency run, by stage.
    pub(crate) stages: Vec<crate::stages::StageLatency>,
    /// Every latency run's percentiles, by bus, target and offered rate: the latency/rate
    /// curve `--plot` draws.
    pub(crate) curve: Vec<CurvePoint>,
}

/// One latency run's percentiles.
#[derive(serde::Serialize)]
pub(crate) struct CurvePoint {
    /// The bus ofe ran on (`memory`, …).
    pub(crate) bus: String,
    /// `ofe`, or the baseline's name.
    pub(crate) target: String,
    /// Offered events/s.
    pub(crate) rate: f64,
    /// Percentiles in ms.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
}

/// Requests of one run that had to be sent again because their connection failed.
#[derive(serde::Serialize)]
pub(crate) struct ConnectionErrors {
    /// Which run, e.g. `W1 through ofe`.
    pub(crate) run: String,
    /// Connections that could not be made.
    pub(crate) connect: u64,
    /// Connections that broke before the answer came.
    pub(crate) broken: u64,
    /// Requests the target refused with 503 (a full bus), sent again after 5 ms.
    pub(crate) refused: u64,
}

/// The machine's CPU time so far, from `/proc/stat` (Linux), in clock ticks.
pub(crate) struct CpuTimes {
    pub(crate) total: u64,
    pub(crate) steal: u64,
}

impl CpuTimes {
    /// The share of CPU time since `earlier` that the hypervisor gave to other machines: a
    /// run on a shared host is slowed by it, and no baseline in the same run removes that
    /// from latency tails.
    pub(crate) fn steal_share_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            0.0
        } else {
            self.steal.saturating_sub(earlier.steal) as f64 / total as f64
        }
    }
}

pub(crate) fn cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal ...
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    Some(CpuTimes { total: fields.iter().take(8).sum(), steal: *fields.get(7)? })
}
