//! Where ofe's time goes during a latency run: the stage histograms ofe exports
//! (`ofe_eventsource_ingest_seconds`, `ofe_trigger_stage_seconds{stage}`), read from its
//! `/metrics` before and after the run, and their difference summarised as percentiles.

use std::collections::BTreeMap;

/// One stage's time during one run.
#[derive(serde::Serialize)]
pub(crate) struct StageLatency {
    /// Which run, e.g. `memory bus at 50% of W1`.
    pub(crate) run: String,
    /// `client_wait` (in the load generator, before ofe sees the request), `ingest`,
    /// `bus_to_router`, `route`, `queue_wait` or `deliver`.
    pub(crate) stage: String,
    /// Sampled observations during the run.
    pub(crate) count: u64,
    /// Percentiles in ms, each the upper bound of the histogram bucket it falls in.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
}

impl StageLatency {
    /// A stage measured exactly, from its `sorted` samples (ns), rather than from ofe's
    /// histograms.
    pub(crate) fn from_samples(run: &str, stage: &str, sorted: &[u64]) -> Self {
        let at = |p| crate::load::percentile(sorted, p);
        Self {
            run: run.to_string(),
            stage: stage.to_string(),
            count: sorted.len() as u64,
            p50_ms: at(50.0),
            p99_ms: at(99.0),
            p999_ms: at(99.9),
        }
    }
}

/// Cumulative bucket counts of every stage: stage → (upper bound in s, count).
pub(crate) type Buckets = BTreeMap<String, Vec<(f64, u64)>>;

/// Reads the stage histograms from ofe's metrics at `url`; empty when it cannot.
pub(crate) async fn read(client: &reqwest::Client, url: &str) -> Buckets {
    let Ok(answer) = client.get(url).send().await else { return Buckets::new() };
    let Ok(text) = answer.text().await else { return Buckets::new() };
    parse(&text)
}

/// The sum of every series of the gauge or counter `name` in ofe's metrics at `url`.
pub(crate) async fn sum(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        total = Some(total.unwrap_or(0.0) + value);
    }
    total
}

/// The stage buckets of an OpenMetrics text.
fn parse(text: &str) -> Buckets {
    let mut buckets = Buckets::new();
    for line in text.lines() {
        let stage = if line.starts_with("ofe_eventsource_ingest_seconds_bucket{") {
            Some("ingest".to_string())
        } else if line.starts_with("ofe_trigger_stage_seconds_bucket{") {
            label(line, "stage")
        } else {
            None
        };
        let (Some(stage), Some(le)) = (stage, label(line, "le")) else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<u64>().ok()) else {
            continue;
        };
        buckets.entry(stage).or_default().push((le, count));
    }
    for counts in buckets.values_mut() {
        counts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    buckets
}

/// The value of label `name` in a metric line.
fn label(line: &str, name: &str) -> Option<String> {
    let labels = &line[line.find('{')? + 1..line.find('}')?];
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Each stage's percentiles over what was observed between `before` and `after`.
pub(crate) fn between(run: &str, before: &Buckets, after: &Buckets) -> Vec<StageLatency> {
    const ORDER: [&str; 5] = ["ingest", "bus_to_router", "route", "queue_wait", "deliver"];
    let mut out = Vec::new();
    for stage in ORDER {
        let Some(now) = after.get(stage) else { continue };
        let then = before.get(stage);
        let counts: Vec<(f64, u64)> = now
            .iter()
            .enumerate()
            .map(|(i, &(le, n))| {
                let earlier = then.and_then(|t| t.get(i)).map_or(0, |&(_, c)| c);
                (le, n.saturating_sub(earlier))
            })
            .collect();
        let total = counts.last().map_or(0, |&(_, n)| n);
        if total == 0 {
            continue;
        }
        let quantile = |q: f64| {
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            counts.iter().find(|&&(_, n)| n >= rank).map_or(f64::NAN, |&(le, _)| le * 1e3)
        };
        out.push(StageLatency {
            run: run.to_string(),
            stage: stage.to_string(),
            count: total,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{between, parse};

    #[test]
    fn percentiles_come_from_the_buckets_filled_during_the_run() {
        let before = parse(
            "ofe_trigger_stage_seconds_bucket{le=\"0.001\",stage=\"route\"} 10\n\
             ofe_trigger_stage_seconds_bucket{le=\"0.01\",stage=\"route\"} 10\n\
             ofe_trigger_stage_seconds_bucket{le=\"+Inf\",stage=\"route\"} 10\n",
        );
        let after = parse(
            "ofe_trigger_stage_seconds_bucket{le=\"0.001\",stage=\"route\"} 108\n\
             ofe_trigger_stage_seconds_bucket{le=\"0.01\",stage=\"route\"} 110\n\
             ofe_trigger_stage_seconds_bucket{le=\"+Inf\",stage=\"route\"} 110\n\
             ofe_eventsource_ingest_seconds_bucket{le=\"0.001\"} 0\n\
             ofe_eventsource_ingest_seconds_bucket{le=\"+Inf\"} 0\n",
        );
        let stages = between("run", &before, &after);
        assert_eq!(stages.len(), 1, "a stage with nothing observed is left out");
        let route = &stages[0];
        assert_eq!((route.stage.as_str(), route.count), ("route", 100));
        assert!((route.p50_ms - 1.0).abs() < 1e-9, "{}", route.p50_ms);
        assert!((route.p99_ms - 10.0).abs() < 1e-9, "2 of 100 took over 1 ms: {}", route.p99_ms);
    }
}
