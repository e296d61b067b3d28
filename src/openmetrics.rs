//! Reading the text exposition format `/metrics` serves: for `ofe status`, which reads another
//! process's, and for the console's history, which reads this process's own registry.

use std::collections::BTreeMap;

/// One sample line: its metric name, its labels (values unescaped) and its value; `None` for
/// a comment, a blank line, or a line that is not a sample.
pub(crate) fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().unwrap_or(0.0);
    Some(match series.split_once('{') {
        Some((name, rest)) => (name, labels(rest.trim_end_matches('}')), value),
        None => (series, BTreeMap::new(), value),
    })
}

/// The metric name of a sample line, without reading its labels.
pub(crate) fn name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or_default()
}

/// `a="x",b="y"` into a map; values are unescaped.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_line_is_read_with_its_labels_unescaped() {
        let line = r#"ofe_trigger_events_delivered_total{namespace="a",trigger="t",x="q\"} y"} 12"#;
        let (name, labels, value) = sample(line).expect("a sample");
        assert_eq!((name, value), ("ofe_trigger_events_delivered_total", 12.0));
        assert_eq!(labels["namespace"], "a");
        assert_eq!(labels["x"], r#"q"} y"#);
        assert_eq!(super::name(line), "ofe_trigger_events_delivered_total");
        assert_eq!(sample("up 1").map(|s| s.2), Some(1.0));
        assert!(sample("# TYPE x counter").is_none());
    }
}
