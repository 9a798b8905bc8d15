//! `loadgen compare`: loads runs (JSON summaries from `--json`, or `.hlog`
//! interval logs from `--hist-out` or any HdrHistogram writer), prints their
//! percentiles side by side with ratios to the first run, and draws them.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hdrhistogram::Histogram;

use crate::hlog::{decode_histogram, read_hlog, HlogError};
use crate::plot::{svg, Series};
use crate::report::Summary;
use crate::stats::{Phase, NANOS_PER_MS};

/// A run that could not be loaded, or a plot that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither a loadgen JSON summary nor an interval log.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The plot could not be written or converted.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The output file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// One loaded run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Name in the table and legend.
    pub label: String,
    /// Latencies of the chosen phase, nanoseconds.
    pub hist: Histogram<u64>,
    /// Accepted messages per second: from the summary, or count / logged time for an `.hlog`.
    pub msgs_per_s: Option<f64>,
}

/// Loads `arg`, which is `PATH` or `LABEL=PATH`; `.hlog` files are read as
/// interval logs, anything else as a JSON summary.
///
/// # Errors
/// [`CompareError`] when the file is missing or not a run.
pub fn load_run(arg: &str, phase: Phase) -> Result<Run, CompareError> {
    let (explicit, path) = match arg.split_once('=') {
        Some((label, path)) if !label.is_empty() => (Some(label.to_string()), Path::new(path)),
        _ => (None, Path::new(arg)),
    };
    let bytes = std::fs::read(path).map_err(|source| CompareError::Read {
        path: path.into(),
        source,
    })?;
    let format = |reason: String| CompareError::Format {
        path: path.into(),
        reason,
    };
    let stem = path
        .file_stem()
        .map_or_else(|| arg.to_string(), |s| s.to_string_lossy().into_owned());
    if path.extension().is_some_and(|e| e == "hlog") {
        let (hist, logged) = read_hlog(&bytes).map_err(|e| format(e.to_string()))?;
        let secs = logged.as_secs_f64();
        let msgs_per_s = (phase == Phase::E2e && secs > 0.0).then(|| hist.len() as f64 / secs);
        return Ok(Run {
            label: explicit.unwrap_or(stem),
            hist,
            msgs_per_s,
        });
    }
    let summary: Summary = serde_json::from_slice(&bytes)
        .map_err(|e| format(format!("not a loadgen JSON summary or .hlog ({e})")))?;
    let encoded = summary
        .histograms
        .get(phase.name())
        .ok_or_else(|| format(format!("no {} histogram in the summary", phase.name())))?;
    let hist = decode_histogram(encoded).map_err(|e: HlogError| format(e.to_string()))?;
    let label = explicit.unwrap_or(if summary.label.is_empty() {
        stem
    } else {
        summary.label
    });
    Ok(Run {
        label,
        hist,
        msgs_per_s: Some(summary.msgs_per_s),
    })
}

/// Makes labels unique by appending `#2`, `#3`... to repeats.
pub fn dedupe_labels(runs: &mut [Run]) {
    let original: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    for (i, run) in runs.iter_mut().enumerate() {
        let repeats = original[..i].iter().filter(|l| **l == original[i]).count();
        if repeats > 0 {
            run.label = format!("{} #{}", original[i], repeats + 1);
        }
    }
}

/// The side-by-side table: one column per run, then `run/first` ratio columns.
pub fn table(runs: &[Run], phase: Phase) -> String {
    let mut s = String::new();
    let width = runs
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(10, 28);
    let ms = |h: &Histogram<u64>, q: Option<f64>| -> Option<f64> {
        if h.is_empty() {
            return None;
        }
        Some(
            match q {
                Some(q) => h.value_at_quantile(q),
                None => h.max(),
            } as f64
                / NANOS_PER_MS,
        )
    };
    // Writing into a String cannot fail; results are ignored throughout.
    let _ = write!(s, "{:<16}", format!("{} (ms)", phase.name()));
    for r in runs {
        let _ = write!(s, " {:>width$}", truncate(&r.label, width));
    }
    for (i, r) in runs.iter().enumerate().skip(1) {
        let mut head = format!("{}/{}", r.label, runs[0].label);
        if head.chars().count() > 10 {
            head = format!("run{}/run1", i + 1);
        }
        let _ = write!(s, " {head:>10}");
    }
    let _ = writeln!(s);
    let rows: [(&str, Option<f64>); 6] = [
        ("p50", Some(0.5)),
        ("p90", Some(0.9)),
        ("p99", Some(0.99)),
        ("p99.9", Some(0.999)),
        ("p99.99", Some(0.9999)),
        ("max", None),
    ];
    let mut row = |name: &str, values: Vec<Option<f64>>, digits: usize| {
        let _ = write!(s, "{name:<16}");
        for v in &values {
            let cell = v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
            let _ = write!(s, " {cell:>width$}");
        }
        for v in values.iter().skip(1) {
            let cell = match (v, values[0]) {
                (Some(v), Some(base)) if base > 0.0 => format!("{:.2}x", v / base),
                _ => "-".to_string(),
            };
            let _ = write!(s, " {cell:>10}");
        }
        let _ = writeln!(s);
    };
    for (name, q) in rows {
        row(name, runs.iter().map(|r| ms(&r.hist, q)).collect(), 3);
    }
    row(
        "mean",
        runs.iter()
            .map(|r| (!r.hist.is_empty()).then(|| r.hist.mean() / NANOS_PER_MS))
            .collect(),
        3,
    );
    row(
        "count",
        runs.iter().map(|r| Some(r.hist.len() as f64)).collect(),
        0,
    );
    row("msgs/s", runs.iter().map(|r| r.msgs_per_s).collect(), 1);
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Writes the percentile plot of `runs` to `path`: SVG, or PNG (rendered by
/// `rsvg-convert`, Debian package librsvg2-bin) when `path` ends in `.png`.
///
/// # Errors
/// [`CompareError::Plot`] when the file cannot be written or the converter is
/// missing or fails.
pub fn write_plot(runs: &[Run], phase: Phase, path: &Path) -> Result<(), CompareError> {
    let series: Vec<Series<'_>> = runs
        .iter()
        .map(|r| Series {
            label: &r.label,
            hist: &r.hist,
        })
        .collect();
    let doc = svg(&series, &format!("{} latency by percentile", phase.title()));
    let plot_err = |reason: String| CompareError::Plot {
        path: path.into(),
        reason,
    };
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return std::fs::write(path, doc).map_err(|e| plot_err(e.to_string()));
    }
    let mut child = Command::new("rsvg-convert")
        .args(["--format", "png", "--background-color", "white", "--output"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| {
            plot_err(format!(
                "PNG needs rsvg-convert (Debian: apt-get install librsvg2-bin), or ask for .svg: {e}"
            ))
        })?;
    // stdin was requested as piped just above.
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(doc.as_bytes())
        .map_err(|e| plot_err(e.to_string()))?;
    drop(stdin);
    let status = child.wait().map_err(|e| plot_err(e.to_string()))?;
    if !status.success() {
        return Err(plot_err(format!("rsvg-convert failed: {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn run(label: &str, scale: u64) -> Run {
        let mut hist = new_histogram();
        for i in 1..=1000u64 {
            hist.record(i * scale).unwrap();
        }
        Run {
            label: label.into(),
            hist,
            msgs_per_s: Some(1000.0 * 1_000_000.0 / scale as f64),
        }
    }

    #[test]
    fn table_has_ratios_against_the_first_run() {
        let t = table(&[run("base", 1_000_000), run("new", 2_000_000)], Phase::E2e);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("e2e (ms)"));
        let p50: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(p50[0], "p50");
        assert_eq!(p50[3], "2.00x");
        let rate: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
        assert_eq!(rate, vec!["msgs/s", "1000.0", "500.0", "0.50x"]);
    }

    #[test]
    fn labels_are_made_unique() {
        let mut runs = vec![run("a", 1), run("a", 1), run("b", 1), run("a", 1)];
        dedupe_labels(&mut runs);
        let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, vec!["a", "a #2", "b", "a #3"]);
    }

    #[test]
    fn missing_and_foreign_files_are_errors() {
        assert!(matches!(
            load_run("/nonexistent/x.json", Phase::E2e),
            Err(CompareError::Read { .. })
        ));
        let p = std::env::temp_dir().join(format!("loadgen-cmp-{}.json", std::process::id()));
        std::fs::write(&p, "{\"hello\": 1}").unwrap();
        let e = load_run(p.to_str().unwrap(), Phase::E2e).unwrap_err();
        assert!(e.to_string().contains("not a loadgen JSON summary"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
