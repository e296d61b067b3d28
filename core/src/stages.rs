//! Where an event's time goes: sampled histograms of each stage of its path (ingest → bus,
//! bus → router, routing, queue → subscriber, delivery), which `ofe-bench` reads to show
//! where a latency tail comes from, and an operator can graph.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// One observation in this many is recorded. Uniform sampling keeps the distribution's shape
/// (its p99 too, given enough events) at a quarter of the cost on the hot path.
const SAMPLE_EVERY: u32 = 4;

/// A histogram of one stage's time, in seconds, recording one observation in
/// [`SAMPLE_EVERY`]. Buckets grow by half from 50 µs to about 6 s, fine enough to tell a
/// millisecond stall from a scheduling hiccup.
#[derive(Clone, Debug)]
pub struct StageHistogram {
    histogram: Histogram,
    tick: Arc<AtomicU32>,
}

impl Default for StageHistogram {
    fn default() -> Self {
        Self::new(stage_buckets())
    }
}

/// An empty histogram with the stage buckets, e.g. as a `Family`'s constructor.
pub fn stage_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 1.5, 30))
}

impl StageHistogram {
    /// Samples into `histogram` (a clone of one a `Family` holds shares its counts).
    pub fn new(histogram: Histogram) -> Self {
        Self { histogram, tick: Arc::default() }
    }

    /// Records `seconds()` if this observation is sampled; `seconds` is not called otherwise.
    pub fn observe(&self, seconds: impl FnOnce() -> f64) {
        if self.tick.fetch_add(1, Ordering::Relaxed).is_multiple_of(SAMPLE_EVERY) {
            self.histogram.observe(seconds().max(0.0));
        }
    }

    /// Records the time since `at` (a wall-clock stamp such as a delivery's `published_at`),
    /// if sampled.
    pub fn since(&self, at: DateTime<Utc>) {
        self.observe(|| (Utc::now() - at).as_seconds_f64());
    }

    /// The histogram, to register.
    pub fn histogram(&self) -> Histogram {
        self.histogram.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::StageHistogram;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn one_observation_in_four_is_recorded_and_a_clock_step_back_counts_as_zero() {
        let stage = StageHistogram::default();
        let mut registry = Registry::default();
        registry.register("stage_seconds", "test", stage.histogram());
        let mut called = 0;
        for _ in 0..8 {
            stage.observe(|| {
                called += 1;
                0.002
            });
        }
        assert_eq!(called, 2, "the time is not even computed for an unsampled observation");
        stage.since(chrono::Utc::now() + chrono::Duration::seconds(5));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(text.contains("stage_seconds_count 3"), "{text}");
        assert!(text.contains("stage_seconds_sum 0.004"), "a future stamp adds 0 s: {text}");
    }
}
