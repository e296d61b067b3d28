//! Status conditions that mean something and stay bounded.
//!
//! OpenFunction appended a condition on every change, so the list grew for ever, and its
//! `Ready` only meant "objects written". Here each resource has one condition per type, updated
//! in place: one per part of the resource that can fail (`BusConnected`, `SourceConnected`,
//! `SinkResolved`, ...) and `Ready`, which sums them up and is always last, so OpenFunction's
//! printer column (`.status.conditions[-1].type`) keeps showing it. `lastTransitionTime`
//! changes only when a condition's status does; `observedGeneration` says which spec the
//! conditions describe.

use chrono::{DateTime, SecondsFormat, Utc};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One status condition: OpenFunction's shape, plus the Kubernetes fields
/// `lastTransitionTime` and `observedGeneration` (see [`apply`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// When the condition was recorded (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` of the resource this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Type of condition, e.g. `Ready`, `Error` or `Pending`.
    pub r#type: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: String,
    /// One-word CamelCase reason for the condition's last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details of the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The type of the condition that sums up the others.
pub const READY: &str = "Ready";

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Working.
    True,
    /// Not working; the reason says why.
    False,
    /// Not known yet (starting, or the part was never tried).
    Unknown,
}

impl Status {
    /// As Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// What one part of a resource reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Condition type, e.g. `BusConnected`.
    pub kind: String,
    /// Its status.
    pub status: Status,
    /// One CamelCase word, e.g. `BrokerUnreachable`.
    pub reason: String,
    /// Details for people, e.g. the broker's error.
    pub message: String,
}

impl Part {
    /// A part that works.
    pub fn ok(kind: &str, reason: &str) -> Self {
        Self {
            kind: kind.into(),
            status: Status::True,
            reason: reason.into(),
            message: String::new(),
        }
    }

    /// A part that does not work, and why.
    pub fn failed(kind: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            status: Status::False,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A part whose state is not known yet.
    pub fn unknown(kind: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            status: Status::Unknown,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Condition types shown beside `Ready` but not summed into it. `Delivering` says whether a
/// subscriber's sink takes its events; as in Knative, `Ready` stays about whether the resource
/// runs as written (buses, sources, sinks resolved, consumers open), which a sink that is
/// down for a while does not change.
pub const NOT_IN_READY: &[&str] = &["Delivering"];

/// `Ready` from the parts: `True` when every part is; else `False` with the first failed
/// part's reason and message; else `Unknown` with the first unknown part's. The parts in
/// [`NOT_IN_READY`] do not count.
pub fn ready(parts: &[Part]) -> Part {
    let counted: Vec<&Part> =
        parts.iter().filter(|p| !NOT_IN_READY.contains(&p.kind.as_str())).collect();
    let parts = counted.as_slice();
    if let Some(failed) = parts.iter().find(|p| p.status == Status::False) {
        return Part {
            kind: READY.into(),
            status: Status::False,
            reason: failed.reason.clone(),
            message: format!("{}: {}", failed.kind, failed.message),
        };
    }
    if let Some(unknown) = parts.iter().find(|p| p.status == Status::Unknown) {
        return Part {
            kind: READY.into(),
            status: Status::Unknown,
            reason: unknown.reason.clone(),
            message: format!("{}: {}", unknown.kind, unknown.message),
        };
    }
    Part::ok(READY, "AllPartsReady")
}

/// Makes `conditions` say `parts` and their `Ready`, in place: one condition per type, `Ready`
/// last, types no longer reported removed. Returns whether anything changed, so that an
/// unchanged status is not written again.
pub fn apply(
    conditions: &mut Vec<Condition>,
    parts: &[Part],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let now = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let summary = ready(parts);
    let wanted: Vec<&Part> = parts.iter().filter(|p| p.kind != READY).chain([&summary]).collect();
    let mut next = Vec::with_capacity(wanted.len());
    for part in wanted {
        let old = conditions.iter().find(|c| c.r#type == part.kind);
        let same_status = old.is_some_and(|c| c.status == part.status.as_str());
        let reason = (!part.reason.is_empty()).then(|| part.reason.clone());
        let message = (!part.message.is_empty()).then(|| part.message.clone());
        let unchanged = same_status
            && old.is_some_and(|c| {
                c.reason == reason && c.message == message && c.observed_generation == generation
            });
        if let (true, Some(old)) = (unchanged, old) {
            next.push(old.clone());
            continue;
        }
        let transition = match old {
            Some(c) if same_status => c.last_transition_time.clone().unwrap_or_else(|| now.clone()),
            _ => now.clone(),
        };
        next.push(Condition {
            timestamp: transition.clone(),
            last_transition_time: Some(transition),
            observed_generation: generation,
            r#type: part.kind.clone(),
            status: part.status.as_str().into(),
            reason,
            message,
        });
    }
    let changed = next != *conditions;
    *conditions = next;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn delivering_is_shown_but_not_summed_into_ready() {
        let parts = [
            Part::ok("BusConnected", "Connected"),
            Part::failed("Delivering", "DeliveryFailing", "to http://f: connection refused"),
        ];
        assert_eq!(ready(&parts).status, Status::True);
        let mut conditions = Vec::new();
        apply(&mut conditions, &parts, None, at(0));
        let types: Vec<&str> = conditions.iter().map(|c| c.r#type.as_str()).collect();
        assert_eq!(types, ["BusConnected", "Delivering", "Ready"]);
    }

    #[test]
    fn ready_sums_up_the_parts() {
        let ok = [Part::ok("BusConnected", "Connected"), Part::ok("SinkResolved", "Resolved")];
        assert_eq!(ready(&ok).status, Status::True);
        let broken = [
            Part::unknown("SourceConnected", "Connecting", "first attempt"),
            Part::failed("BusConnected", "BrokerUnreachable", "nats://10.0.0.9:4222: timed out"),
        ];
        let r = ready(&broken);
        assert_eq!((r.status, r.reason.as_str()), (Status::False, "BrokerUnreachable"));
        assert_eq!(r.message, "BusConnected: nats://10.0.0.9:4222: timed out");
        assert_eq!(ready(&broken[..1]).status, Status::Unknown);
    }

    #[test]
    fn conditions_update_in_place_with_ready_last() {
        let mut conditions = Vec::new();
        let up = [Part::ok("BusConnected", "Connected")];
        assert!(apply(&mut conditions, &up, Some(1), at(0)));
        let types: Vec<&str> = conditions.iter().map(|c| c.r#type.as_str()).collect();
        assert_eq!(types, ["BusConnected", READY]);
        assert!(!apply(&mut conditions, &up, Some(1), at(5)), "nothing changed, nothing to write");
        let down = [Part::failed("BusConnected", "BrokerUnreachable", "refused")];
        assert!(apply(&mut conditions, &down, Some(1), at(10)));
        let ready = &conditions[1];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("BrokerUnreachable"))
        );
        assert_eq!(ready.last_transition_time.as_deref(), Some("2027-01-15T08:00:10Z"));
        // Another failure message keeps the transition time: the status did not change.
        let still_down = [Part::failed("BusConnected", "BrokerUnreachable", "timed out")];
        assert!(apply(&mut conditions, &still_down, Some(2), at(20)));
        assert_eq!(conditions[1].last_transition_time.as_deref(), Some("2027-01-15T08:00:10Z"));
        assert_eq!(conditions[1].observed_generation, Some(2));
        // A part no longer reported goes away.
        assert!(apply(&mut conditions, &[], Some(2), at(30)));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].r#type, READY);
    }

    #[test]
    fn status_stays_bounded_over_many_reconciles() {
        let mut conditions = Vec::new();
        for n in 0..1000 {
            let bus = if n % 3 == 0 {
                Part::failed("BusConnected", "BrokerUnreachable", format!("attempt {n}"))
            } else {
                Part::ok("BusConnected", "Connected")
            };
            let parts = [bus, Part::ok("SinkResolved", "Resolved")];
            apply(&mut conditions, &parts, Some(n / 100), at(0) + TimeDelta::seconds(n));
        }
        assert_eq!(conditions.len(), 3, "one condition per type: {conditions:?}");
    }
}
