//! `--plot DIR`: the report as SVG charts, drawn with plotters. `throughput.svg` shows each
//! throughput workload next to its forwarders; `latency.svg` the latency/rate curve of every
//! bus, ofe against the forwarders at the same offered rates.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::report::{CurvePoint, Row};

/// Colours by target: ofe first, then the baselines in the order they appear.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Writes `throughput.svg` and `latency.svg` into `dir`, titled with `title` (host and date).
pub(crate) fn write(
    dir: &Path,
    title: &str,
    rows: &[Row],
    curve: &[CurvePoint],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    throughput(&dir.join("throughput.svg"), title, rows)?;
    latency(&dir.join("latency.svg"), title, curve)?;
    Ok(())
}

/// One bar group: a workload, and each target's events/s.
struct Group {
    label: String,
    bars: Vec<(String, f64)>,
}

/// The rate rows against a forwarder or the peer, grouped by workload: ofe's bar, then each
/// baseline's.
fn groups(rows: &[Row]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for r in rows.iter().filter(|r| r.unit == "events/s" && r.baseline.is_finite()) {
        let baselines = ["bare forwarder", "nginx proxy", crate::peer::ARGO_NAME];
        if !baselines.contains(&r.baseline_name) {
            continue;
        }
        let label = format!("{} {}", r.workload, short(&r.what));
        let group = match groups.iter_mut().position(|g| g.label == label) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group { label, bars: vec![("ofe".into(), r.figure)] });
                let last = groups.len() - 1;
                &mut groups[last]
            }
        };
        group.bars.push((r.baseline_name.to_string(), r.baseline));
    }
    groups
}

/// The bus of a `HTTP → bus (memory) → …` description, or the description.
fn short(what: &str) -> String {
    match what.split_once('(').and_then(|(_, rest)| rest.split_once(')')) {
        Some((bus, _)) => bus.to_string(),
        None => what.to_string(),
    }
}

fn throughput(file: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    let groups = groups(rows);
    let top = groups.iter().flat_map(|g| g.bars.iter().map(|b| b.1)).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(file, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Throughput, events/s ({title})"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, 0f64..top)?;
    let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let at = x - x.floor();
            match labels.get(x.floor() as usize) {
                Some(label) if (at - 0.5).abs() < 0.01 => label.clone(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("events/s")
        .draw()?;
    let mut names: Vec<String> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let width = 0.8 / group.bars.len() as f64;
        for (b, (name, value)) in group.bars.iter().enumerate() {
            let index = match names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    names.push(name.clone());
                    names.len() - 1
                }
            };
            let colour = COLOURS[index % COLOURS.len()];
            let x = g as f64 + 0.1 + b as f64 * width;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, 0.0), (x + width * 0.9, *value)],
                colour.filled(),
            )))?;
        }
    }
    for (i, name) in names.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn latency(file: &Path, title: &str, curve: &[CurvePoint]) -> anyhow::Result<()> {
    let mut buses: Vec<&str> = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    for p in curve {
        if !buses.contains(&p.bus.as_str()) {
            buses.push(&p.bus);
        }
        if !targets.contains(&p.target.as_str()) {
            targets.push(&p.target);
        }
    }
    let max_ms = curve.iter().map(|p| p.p999_ms).filter(|v| v.is_finite()).fold(1.0, f64::max);
    let root = SVGBackend::new(file, (420 * buses.len().max(1) as u32, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Latency against offered rate: p99 (lines and filled dots), p99.9 (rings) ({title})"
        ),
        ("sans-serif", 18),
    )?;
    let panels = root.split_evenly((1, buses.len().max(1)));
    for (bus, panel) in buses.iter().zip(panels.iter()) {
        let points: Vec<&CurvePoint> = curve.iter().filter(|p| p.bus == *bus).collect();
        let max_rate = points.iter().map(|p| p.rate).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{bus} bus"), ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_rate, (0.1f64..max_ms * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .x_desc("offered events/s")
            .y_desc("ms (log)")
            .draw()?;
        for (t, target) in targets.iter().enumerate() {
            let mut mine: Vec<&&CurvePoint> =
                points.iter().filter(|p| p.target == *target).collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let colour = COLOURS[t % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    mine.iter().map(|p| (p.rate, p.p99_ms.max(0.1))),
                    colour.stroke_width(2),
                ))?
                .label(*target)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                mine.iter().map(|p| Circle::new((p.rate, p.p99_ms.max(0.1)), 3, colour.filled())),
            )?;
            chart.draw_series(
                mine.iter().map(|p| Circle::new((p.rate, p.p999_ms.max(0.1)), 3, colour)),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{groups, short};
    use crate::report::Row;

    #[test]
    fn rate_rows_group_by_workload_with_ofe_first() {
        let rows = vec![
            Row::info(
                "W1",
                "HTTP → bus (memory) → 1 Trigger → HTTP",
                (10.0, "events/s"),
                ("bare forwarder", 12.0),
            ),
            Row::info(
                "W1",
                "HTTP → bus (memory) → 1 Trigger → HTTP",
                (10.0, "events/s"),
                ("nginx proxy", 14.0),
            ),
            Row::info("W1", "CPU per event", (50.0, "µs"), ("bare forwarder", 40.0)),
            Row::info("W2", "W1 with 1000 CEL Triggers", (9.0, "events/s"), ("W1", 10.0)),
        ];
        let groups = groups(&rows);
        assert_eq!(groups.len(), 1, "only rates against a forwarder");
        assert_eq!(groups[0].label, "W1 memory");
        let bars: Vec<&str> = groups[0].bars.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(bars, ["ofe", "bare forwarder", "nginx proxy"]);
        assert_eq!(short("bus API (JetStream): publish"), "JetStream");
    }
}
