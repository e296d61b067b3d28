//! Durations in the Go format OpenFunction and Dapr use (`300ms`, `5s`, `1h30m`), and in the
//! ISO 8601 format Knative's delivery settings use (`PT0.2S`, `PT1M30S`, `P1D`).

use std::time::Duration;

/// Why a duration cannot be read: what is wrong, with the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses a Go-style duration: one or more `<number><unit>` terms, units `ns`, `us`/`µs`, `ms`,
/// `s`, `m` and `h`, with decimal fractions allowed (`1.5h`). Negative values are rejected, since
/// every duration in ofe's API is a length of time.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// assert_eq!(ofe_crds::duration::parse("1m30s"), Ok(Duration::from_secs(90)));
/// assert!(ofe_crds::duration::parse("5 seconds").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_text(text).map_err(DurationError)
}

fn parse_text(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. `30s`, `5m` or `1h30m`".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if let Some(iso) = s.strip_prefix('P') {
        return parse_iso(text, iso);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("`{text}` is not a duration; write e.g. `30s`, `5m` or `1h30m`"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{text}` has a malformed number; write e.g. `1.5h`"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "`{text}` lacks a unit; add one of ns, us, ms, s, m, h (e.g. `{text}s`)"
                ));
            }
            other => {
                return Err(format!(
                    "`{text}` has unknown unit `{other}`; use one of ns, us, ms, s, m, h"
                ));
            }
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("`{text}` is out of range"))
}

/// The part of an ISO 8601 duration after `P`: `[nD][T[nH][nM][nS]]`, fractions allowed.
fn parse_iso(text: &str, rest: &str) -> Result<Duration, String> {
    let bad =
        || format!("`{text}` is not an ISO 8601 duration; write e.g. `PT0.2S`, `PT5M` or `P1D`");
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, t),
        Some(_) => return Err(bad()),
        None => (rest, ""),
    };
    let mut total = 0f64;
    for (part, units) in [
        (date, &[('W', 604_800.0), ('D', 86_400.0)][..]),
        (time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..]),
    ] {
        let mut part = part;
        let mut allowed = units;
        while !part.is_empty() {
            let end = part.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
            let number: f64 = part[..end].parse().map_err(|_| bad())?;
            let unit = part[end..].chars().next().ok_or_else(bad)?;
            let at = allowed.iter().position(|(u, _)| *u == unit).ok_or_else(bad)?;
            total += number * allowed[at].1;
            allowed = &allowed[at + 1..];
            part = &part[end + unit.len_utf8()..];
        }
    }
    if date.is_empty() && time.is_empty() {
        return Err(bad());
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("`{text}` is out of range"))
}

/// Reads an RFC 3339 time (a replay's `from`/`to`, the `ofedeliverat` extension), in UTC; the
/// error says what is wrong and shows the form, for the caller to put after the field's name.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&chrono::Utc)).map_err(|e| {
        format!("`{text}` is not an RFC 3339 time ({e}); write e.g. 2026-12-03T10:00:00Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_durations_with_a_hint() {
        assert!(parse("").is_err());
        assert!(parse("10").unwrap_err().to_string().contains("lacks a unit"));
        assert!(parse("5d").unwrap_err().to_string().contains("unknown unit `d`"));
        assert!(parse("-5s").is_err());
        assert!(parse("s").is_err());
    }

    #[test]
    fn parses_iso_8601_durations_as_knative_writes_them() {
        assert_eq!(parse("PT0.2S"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("PT1M30S"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("P1DT1H"), Ok(Duration::from_secs(90_000)));
        assert_eq!(parse("PT0S"), Ok(Duration::ZERO));
        for bad in ["P", "PT", "PT5", "PT5X", "PT1S2M", "P1H"] {
            assert!(parse(bad).unwrap_err().to_string().contains("ISO 8601"), "{bad}");
        }
    }
}
