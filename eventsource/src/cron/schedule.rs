//! Cron schedules in the formats OpenFunction (through Dapr) accepted, plus time zones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// `@every <duration>`: fires at every multiple of the interval since the Unix epoch, so
    /// every replica and every restart computes the same fire times.
    Every(Duration),
    /// A cron expression read in a time zone.
    Cron(Box<Cron>, Tz),
}

/// Why a schedule cannot be used, by the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `timezone` names no IANA time zone.
    #[error("{0}")]
    TimeZone(String),
    /// `schedule` is not a schedule ofe can run.
    #[error("{0}")]
    Schedule(String),
}

impl ScheduleError {
    /// The field of a cron event the error is about: `timezone` or `schedule`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TimeZone(_) => "timezone",
            Self::Schedule(_) => "schedule",
        }
    }
}

impl Schedule {
    /// Parses `schedule`:
    /// - `@every 5s` (a Go duration, at least 1 s);
    /// - `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`;
    /// - 5 fields (`min hour dom month dow`) or 6 fields (`sec min hour dom month dow`), as
    ///   Dapr's cron binding reads them.
    ///
    /// `timezone` is an IANA name (default UTC); it has no effect on `@every`.
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        Self::parse_tz(timezone)
            .map_err(ScheduleError::TimeZone)
            .and_then(|tz| Self::parse_in(schedule, tz).map_err(ScheduleError::Schedule))
    }

    fn parse_tz(timezone: Option<&str>) -> Result<Tz, String> {
        let tz: Tz = match timezone {
            None => Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                format!(
                    "unknown time zone `{name}`; use an IANA name such as `Europe/Berlin` or `UTC`"
                )
            })?,
        };
        Ok(tz)
    }

    fn parse_in(schedule: &str, tz: Tz) -> Result<Self, String> {
        let text = schedule.trim();
        if let Some(every) = text.strip_prefix("@every") {
            let interval = ofe_crds::duration::parse(every.trim())
                .map_err(|e| format!("`{schedule}`: {e}"))?;
            if interval < Duration::from_secs(1) {
                return Err(format!("`{schedule}` is shorter than 1s; use `@every 1s` or longer"));
            }
            return Ok(Self::Every(interval));
        }
        let expression = match text {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * 0",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "unknown descriptor `{other}`; use @every <duration>, @hourly, @daily, @weekly, \
                     @monthly or @yearly"
                ));
            }
            other => other,
        };
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "`{schedule}` has {fields} fields; write 5 (`*/5 * * * *`), 6 with seconds first \
                 (`*/10 * * * * *`), or `@every 10s`"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| format!("`{schedule}` is not a valid cron expression: {e}"))?;
        Ok(Self::Cron(Box::new(cron), tz))
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(interval) => {
                let step = i64::try_from(interval.as_millis()).ok()?;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(step) + 1).checked_mul(step)?;
                DateTime::from_timestamp_millis(next)
            }
            Self::Cron(cron, tz) => {
                let local = after.with_timezone(tz);
                cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let s = Schedule::parse("@every 5s", None).expect("parse");
        assert_eq!(s.next_after(at("2026-01-01T00:00:03Z")), Some(at("2026-01-01T00:00:05Z")));
        assert_eq!(s.next_after(at("2026-01-01T00:00:05Z")), Some(at("2026-01-01T00:00:10Z")));
    }

    #[test]
    fn five_and_six_fields_and_descriptors() {
        let five = Schedule::parse("*/15 * * * *", None).expect("5 fields");
        assert_eq!(five.next_after(at("2026-01-01T00:01:00Z")), Some(at("2026-01-01T00:15:00Z")));
        let six = Schedule::parse("*/10 * * * * *", None).expect("6 fields");
        assert_eq!(six.next_after(at("2026-01-01T00:00:01Z")), Some(at("2026-01-01T00:00:10Z")));
        let hourly = Schedule::parse("@hourly", None).expect("hourly");
        assert_eq!(hourly.next_after(at("2026-01-01T00:30:00Z")), Some(at("2026-01-01T01:00:00Z")));
    }

    #[test]
    fn time_zone_shifts_fire_times() {
        let s = Schedule::parse("0 9 * * *", Some("Asia/Shanghai")).expect("parse");
        // 09:00 in Shanghai is 01:00 UTC.
        let next = s.next_after(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("t"));
        assert_eq!(next, Some(at("2026-01-01T01:00:00Z")));
    }

    #[test]
    fn bad_schedules_explain_the_fix() {
        assert!(
            Schedule::parse("@every", None).unwrap_err().to_string().contains("empty duration")
        );
        assert!(
            Schedule::parse("@every 100ms", None)
                .unwrap_err()
                .to_string()
                .contains("shorter than 1s")
        );
        assert!(
            Schedule::parse("@sometimes", None)
                .unwrap_err()
                .to_string()
                .contains("unknown descriptor")
        );
        assert!(Schedule::parse("* * *", None).unwrap_err().to_string().contains("has 3 fields"));
        assert!(
            Schedule::parse("61 * * * *", None)
                .unwrap_err()
                .to_string()
                .contains("not a valid cron")
        );
        assert!(
            matches!(Schedule::parse("@hourly", Some("Mars/Base")), Err(ScheduleError::TimeZone(m)) if m.contains("unknown time zone"))
        );
    }
}
