//! `metalbus nodes metrics`: current, average and peak per resource, with a sparkline.

use std::fmt::Write;

use metalbus_protocol::api::{NodeMetrics, PercentMetrics};
use metalbus_protocol::Timestamp;

use super::render::{ago, table};

/// Columns of every sparkline.
pub const WIDTH: usize = 40;

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `values` drawn in exactly `width` block characters (none when there are no values),
/// scaled from `lo` (▁) to `hi` (█). Each column shows the mean of the values that fall
/// in it; with fewer values than columns, values repeat across columns.
pub fn sparkline(values: &[f64], width: usize, lo: f64, hi: f64) -> String {
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let n = values.len();
    let range = hi - lo;
    (0..width)
        .map(|col| {
            let start = col * n / width;
            let end = ((col + 1) * n / width).max(start + 1);
            let slice = &values[start..end];
            let mean = slice.iter().sum::<f64>() / slice.len() as f64;
            let level = if range > 0.0 && mean.is_finite() {
                ((mean - lo) / range * 7.0).round().clamp(0.0, 7.0) as usize
            } else {
                0
            };
            BARS[level]
        })
        .collect()
}

fn num(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.1}{unit}"))
}

fn percent_row(name: &str, m: &PercentMetrics) -> Vec<String> {
    let values: Vec<f64> = m.series.iter().map(|p| p.value).collect();
    vec![
        name.into(),
        num(m.current_percentage, "%"),
        num(m.average_percentage, "%"),
        num(m.peak_percentage, "%"),
        sparkline(&values, WIDTH, 0.0, 100.0),
    ]
}

/// The table: one row per resource, network in and out on rows of their own (scaled to
/// their own peak).
pub fn metrics(m: &NodeMetrics, now: Timestamp) -> String {
    let mut rows = vec![["RESOURCE", "CURRENT", "AVERAGE", "PEAK", "TREND"]
        .map(String::from)
        .to_vec()];
    if let Some(c) = &m.cpu {
        rows.push(percent_row("cpu", &c.usage));
    }
    if let Some(s) = &m.memory {
        rows.push(percent_row("memory", &s.usage));
    }
    if let Some(s) = &m.storage {
        rows.push(percent_row("storage", &s.usage));
    }
    if let Some(n) = &m.network {
        let ins: Vec<f64> = n.series.iter().map(|p| p.in_mbps).collect();
        let outs: Vec<f64> = n.series.iter().map(|p| p.out_mbps).collect();
        let top = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let lines = [
            ("net in", n.in_mbps, n.average_in_mbps, n.peak_in_mbps, ins),
            (
                "net out",
                n.out_mbps,
                n.average_out_mbps,
                n.peak_out_mbps,
                outs,
            ),
        ];
        for (label, current, average, peak, series) in lines {
            rows.push(vec![
                label.into(),
                num(current, " Mb/s"),
                num(average, " Mb/s"),
                num(peak, " Mb/s"),
                sparkline(&series, WIDTH, 0.0, top(&series)),
            ]);
        }
    }
    let mut out = format!(
        "{}: last {} (newest sample {})\n",
        m.node_id,
        m.period,
        ago(m.sampled_at, now)
    );
    out.push_str(&table(&rows));
    if let Some(step) = m.step_s {
        let _ = writeln!(out, "(series merged into steps of {step}s)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_and_has_a_fixed_width() {
        assert_eq!(sparkline(&[0.0, 100.0], 2, 0.0, 100.0), "▁█");
        let ramp: Vec<f64> = (0..8).map(f64::from).collect();
        assert_eq!(sparkline(&ramp, 8, 0.0, 7.0), "▁▂▃▄▅▆▇█");
        // More values than columns: each column is the mean of its values.
        assert_eq!(sparkline(&[0.0, 0.0, 100.0, 100.0], 2, 0.0, 100.0), "▁█");
        assert_eq!(sparkline(&[0.0, 100.0, 0.0, 100.0], 2, 0.0, 100.0), "▅▅");
        // Fewer values than columns: stretched to the width.
        assert_eq!(sparkline(&[0.0, 100.0], 4, 0.0, 100.0), "▁▁██");
        for n in [1, 7, 40, 41, 360] {
            let v: Vec<f64> = (0..n).map(|i| f64::from(i % 50)).collect();
            assert_eq!(
                sparkline(&v, WIDTH, 0.0, 100.0).chars().count(),
                WIDTH,
                "{n}"
            );
        }
        // Out of range is clamped; a flat or empty scale is the lowest bar; no data, no line.
        assert_eq!(sparkline(&[-5.0, 500.0], 2, 0.0, 100.0), "▁█");
        assert_eq!(sparkline(&[3.0, 3.0], 2, 0.0, 0.0), "▁▁");
        assert_eq!(sparkline(&[], 40, 0.0, 100.0), "");
    }
}
