//! Whether a subscriber's deliveries succeed, as its resource's `Delivering` condition.
//!
//! A sink that refuses every connection fails each event after its retries, and the event
//! goes to the dead letter (or is dropped); nothing else in the status says so. Each
//! subscriber therefore reports `Delivering`: `False` (reason `DeliveryFailing`) once
//! attempts keep failing with no success in between, with the last error, the destination
//! and since when; `True` again at the next success. The failing state is reported once it
//! has lasted [`FAILURES_BEFORE_REPORT`] attempts or [`TIME_BEFORE_REPORT`], so that one
//! retried blip does not flap the status, and its message is refreshed at most every
//! [`REFRESH`], so that a status writer (the operator) is not woken on every failure.
//!
//! `Delivering` does not count towards `Ready` (see `ofe_core::health::conditions::ready`): as in
//! Knative, `Ready` says whether ofe can run the resource as written, which a restart of the
//! sink does not change.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use ofe_core::health::Reporter;

use crate::delivery::{Destination, Failure};

/// The condition type.
pub const DELIVERING: &str = "Delivering";

/// Failed attempts in a row after which the subscriber reports itself failing.
pub const FAILURES_BEFORE_REPORT: u64 = 3;

/// How long attempts may fail without a success before the subscriber reports itself
/// failing, however few they were.
pub const TIME_BEFORE_REPORT: Duration = Duration::from_secs(5);

/// How often the message of a failing subscriber is brought up to date.
pub const REFRESH: Duration = Duration::from_secs(10);

/// One subscriber's delivery health. Cheap on the path of a successful delivery: one atomic
/// load while nothing fails.
pub struct DeliveryHealth {
    reporter: Reporter,
    /// Whether any attempt failed since the last success.
    troubled: AtomicBool,
    state: Mutex<Failing>,
}

#[derive(Default)]
struct Failing {
    since: Option<(Instant, DateTime<Utc>)>,
    failures: u64,
    /// When `False` was last reported; `None` while it is not.
    reported: Option<Instant>,
}

impl DeliveryHealth {
    /// Reports through `reporter` (whose part is the subscriber), starting as delivering.
    pub fn new(reporter: Reporter) -> Self {
        reporter.up("NoFailures");
        Self { reporter, troubled: AtomicBool::new(false), state: Mutex::default() }
    }

    /// An attempt to `destination` failed with `failure` (it may still be retried).
    pub fn failed(&self, destination: &Destination, failure: &Failure) {
        self.troubled.store(true, Ordering::Release);
        let Ok(mut t) = self.state.lock() else { return };
        let now = Instant::now();
        let (since, since_wall) = *t.since.get_or_insert((now, Utc::now()));
        t.failures += 1;
        let due = match t.reported {
            None => {
                t.failures >= FAILURES_BEFORE_REPORT
                    || now.duration_since(since) >= TIME_BEFORE_REPORT
            }
            Some(at) => now.duration_since(at) >= REFRESH,
        };
        if due {
            t.reported = Some(now);
            let message = format!(
                "to {destination}: {}; failing since {}, {} failed attempts and no delivery since",
                failure.reason,
                since_wall.to_rfc3339_opts(SecondsFormat::Secs, true),
                t.failures
            );
            self.reporter.down("DeliveryFailing", message);
        }
    }

    /// A delivery succeeded.
    pub fn delivered(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut t) = self.state.lock() else { return };
        self.troubled.store(false, Ordering::Release);
        let was_reported = t.reported.is_some();
        *t = Failing::default();
        if was_reported {
            self.reporter.up("Delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ofe_core::health::{Health, ResourceKey};

    fn key() -> ResourceKey {
        ResourceKey::new("Trigger", "ns", "t")
    }

    fn delivering(health: &Health) -> (String, Option<String>, Option<String>) {
        let c = health.conditions(&key());
        let d = c.iter().find(|c| c.r#type == DELIVERING).cloned().expect("Delivering");
        (d.status, d.reason, d.message)
    }

    #[test]
    fn failing_shows_after_a_few_attempts_and_clears_on_success() {
        let health = Health::default();
        let d = DeliveryHealth::new(health.handle(key(), DELIVERING, "subscriber 0"));
        let dest = Destination::http("http://127.0.0.1:9/fn").expect("url");
        let failure = Failure { reason: "connection refused".into(), ..Failure::default() };
        assert_eq!(delivering(&health).0, "True");
        d.failed(&dest, &failure);
        d.failed(&dest, &failure);
        assert_eq!(delivering(&health).0, "True", "two failures are a blip");
        d.failed(&dest, &failure);
        let (status, reason, message) = delivering(&health);
        assert_eq!((status.as_str(), reason.as_deref()), ("False", Some("DeliveryFailing")));
        let message = message.unwrap_or_default();
        assert!(
            message.contains("connection refused") && message.contains("failing since"),
            "{message}"
        );
        assert!(message.contains("http://127.0.0.1:9/fn"), "{message}");
        let ready = health.conditions(&key()).into_iter().find(|c| c.r#type == "Ready");
        assert_eq!(ready.map(|r| r.status).as_deref(), Some("True"), "Ready is not about delivery");
        d.delivered();
        assert_eq!(delivering(&health).0, "True");
        d.failed(&dest, &failure);
        d.delivered();
        d.failed(&dest, &failure);
        d.failed(&dest, &failure);
        assert_eq!(delivering(&health).0, "True", "the count starts again after a success");
    }
}
