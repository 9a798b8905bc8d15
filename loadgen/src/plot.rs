//! Latency-by-percentile plots as SVG, drawn the way HdrHistogram's own plotter
//! draws them: the percentile axis is logarithmic in 1/(1-p), so 90%, 99%,
//! 99.9% ... are evenly spaced and the tail gets the room; latency is linear.
//!
//! Only SVG is produced here; `compare.rs` turns it into PNG with `rsvg-convert`
//! when asked for a `.png`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::stats::NANOS_PER_MS;

/// One curve: a label and its histogram (nanoseconds).
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// The latencies.
    pub hist: &'a Histogram<u64>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Colour-blind-safe palette (Okabe–Ito), cycled.
const COLOURS: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

/// The plotted points of one histogram: (log10(1/(1-p)), latency in ms), with
/// the 100% point (the max) placed at `x_max`.
pub fn curve(h: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    crate::hlog::percentile_rows(h, 10)
        .into_iter()
        .map(|(value, percent, _)| {
            let x = if percent >= 100.0 {
                x_max
            } else {
                (100.0 / (100.0 - percent)).log10().min(x_max)
            };
            (x, value as f64 / NANOS_PER_MS)
        })
        .collect()
}

/// Number of decades the percentile axis spans: enough for the largest run's
/// sample count (beyond 1/N a percentile is just the max), at least 2 (99%),
/// at most 7 (99.99999%).
pub fn decades(series: &[Series<'_>]) -> u32 {
    let n = series
        .iter()
        .map(|s| s.hist.len())
        .max()
        .unwrap_or(0)
        .max(1);
    ((n as f64).log10().ceil() as u32).clamp(2, 7)
}

/// A round axis maximum at or above `v`, and its tick step (1, 2 or 5 × 10^k).
pub fn nice_axis(v: f64) -> (f64, f64) {
    if !(v.is_finite() && v > 0.0) {
        return (1.0, 0.2);
    }
    let raw_step = v / 6.0;
    let mag = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * mag);
    ((v / step).ceil() * step, step)
}

/// The tick label for decade `d`: 0 → `0%`, 1 → `90%`, 3 → `99.9%`.
pub fn percentile_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// Draws `series` as an SVG document.
pub fn svg(series: &[Series<'_>], title: &str) -> String {
    let decades = decades(series);
    let x_max = f64::from(decades);
    let curves: Vec<Vec<(f64, f64)>> = series.iter().map(|s| curve(s.hist, x_max)).collect();
    let y_top = curves.iter().flatten().map(|p| p.1).fold(0.0, f64::max);
    let (y_max, y_step) = nice_axis(y_top);
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_max * pw;
    let py = |y: f64| TOP + ph - y / y_max * ph;

    let mut s = String::new();
    // Writing into a String cannot fail; results are ignored throughout.
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="28" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid and ticks.
    for d in 0..=decades {
        let x = px(f64::from(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph + 18.0,
            percentile_label(d)
        );
    }
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#dddddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 8.0,
            yy + 4.0,
            trim_float(y)
        );
        y += y_step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile</text>"##,
        LEFT + pw / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">Latency (ms)</text>"##,
        TOP + ph / 2.0
    );

    // Curves, then the legend over them.
    for (i, pts) in curves.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let mut path = String::new();
        for (j, (x, y)) in pts.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                px(*x),
                py(*y)
            );
        }
        let _ = writeln!(
            s,
            r##"<path d="{path}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>"##
        );
    }
    let legend_w = 12.0
        + 8.5
            * series
                .iter()
                .map(|s| s.label.chars().count() + 34)
                .max()
                .unwrap_or(10) as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{legend_w:.1}" height="{:.1}" fill="#ffffff" fill-opacity="0.85" stroke="#999999"/>"##,
        LEFT + 12.0,
        TOP + 12.0,
        10.0 + 20.0 * series.len() as f64
    );
    for (i, ser) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let yy = TOP + 30.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/>"##,
            LEFT + 20.0,
            yy - 4.0,
            LEFT + 44.0,
            yy - 4.0
        );
        let h = ser.hist;
        let stats = if h.is_empty() {
            "no samples".to_string()
        } else {
            let q = |x: f64| trim_float(h.value_at_quantile(x) as f64 / NANOS_PER_MS);
            format!(
                "p50 {} / p99 {} / max {} ms",
                q(0.5),
                q(0.99),
                trim_float(h.max() as f64 / NANOS_PER_MS)
            )
        };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{yy:.1}">{} — {stats}</text>"##,
            LEFT + 52.0,
            escape(ser.label)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn trim_float(v: f64) -> String {
    let t = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn hist(scale: u64) -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * scale).unwrap();
        }
        h
    }

    #[test]
    fn axis_helpers() {
        let close = |(a, b): (f64, f64), (c, d): (f64, f64)| {
            assert!(
                (a - c).abs() < 1e-9 && (b - d).abs() < 1e-9,
                "({a}, {b}) != ({c}, {d})"
            )
        };
        close(nice_axis(9.3), (10.0, 2.0));
        close(nice_axis(0.42), (0.5, 0.1));
        close(nice_axis(1234.0), (1500.0, 500.0));
        close(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(5), "99.999%");
        assert_eq!(trim_float(2.50), "2.5");
        assert_eq!(trim_float(0.125), "0.125");
        assert_eq!(trim_float(150.0), "150");
    }

    #[test]
    fn curve_is_monotone_and_ends_at_the_max() {
        let h = hist(1000);
        let pts = curve(&h, 4.0);
        assert!(pts.len() > 20);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = pts.last().unwrap();
        assert_eq!(last.0, 4.0);
        assert!((last.1 - h.max() as f64 / 1e6).abs() < 1e-9);
        assert!(pts[0].0.abs() < 1e-9);
        assert!(curve(&new_histogram(), 4.0).is_empty());
    }

    #[test]
    fn svg_has_one_path_per_run_and_escapes_labels() {
        let a = hist(1000);
        let b = hist(2000);
        let doc = svg(
            &[
                Series {
                    label: "base <a&b>",
                    hist: &a,
                },
                Series {
                    label: "new",
                    hist: &b,
                },
            ],
            "t",
        );
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<path ").count(), 2);
        assert!(doc.contains("base &lt;a&amp;b&gt;"));
        // 10,000 samples: the axis reaches 99.99%.
        assert!(doc.contains(">99.99%<"));
        assert!(!doc.contains(">99.999%<"));
        // The y axis covers the larger max (20 ms), rounded up.
        assert!(doc.contains(">20<") || doc.contains(">25<"));
    }
}
