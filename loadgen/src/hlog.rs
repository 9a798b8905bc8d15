//! HdrHistogram file formats: interval logs (`.hlog`, version 1.3, as written by
//! the Java `HistogramLogWriter` and read by `HistogramLogProcessor`, jHiccup's
//! tools and the online plotter), percentile distributions (`.hgrm`, as printed
//! by `outputPercentileDistribution`), and the base64 histogram encoding used in
//! both `.hlog` lines and loadgen's JSON summaries.
//!
//! `.hlog` files are written and read with hdrhistogram's own interval-log
//! code; only the column legend line is written here (see [`HlogFile`]). The
//! `.hgrm` text is written here: the crate has no such printer.
//!
//! Values are nanoseconds in the histograms; `.hlog` max columns and `.hgrm`
//! values are milliseconds (a unit ratio of 1e6), the Java tools' defaults.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriter, IntervalLogWriterBuilder, IntervalLogWriterError,
    LogEntry,
};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::stats::{new_histogram, NANOS_PER_MS};

/// A histogram file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HlogError {
    /// Reading the file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A line or field is not in the interval-log format.
    #[error("not an HdrHistogram interval log: {0}")]
    Format(String),
    /// The base64 or compressed histogram inside did not decode.
    #[error("bad encoded histogram: {0}")]
    Histogram(String),
}

/// Encodes `h` as HdrHistogram's compressed V2 format in base64 (the
/// `Interval_Compressed_Histogram` column; also what Java's
/// `Histogram.decodeFromCompressedByteBuffer` reads).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut raw = Vec::new();
    // Serialising into a Vec cannot fail for I/O, and a histogram built by
    // this crate always fits the format.
    V2DeflateSerializer::new()
        .serialize(h, &mut raw)
        .expect("serialising a histogram into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Decodes what [`encode_histogram`] (or any HdrHistogram writer) produced.
///
/// # Errors
/// [`HlogError::Histogram`] when the text is not base64 or not a histogram.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, HlogError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| HlogError::Histogram(e.to_string()))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| HlogError::Histogram(format!("{e:?}")))?;
    // Decoded histograms have fixed bounds; make them grow when merged.
    let mut grown = new_histogram();
    grown
        .add(&h)
        .map_err(|e| HlogError::Histogram(format!("{e:?}")))?;
    Ok(grown)
}

/// An `.hlog` file: the file and the histogram encoder that its
/// [`HlogWriter`] borrows while the run writes intervals into it.
pub struct HlogFile {
    /// Flushed at each line, so the log can be read while the run goes on.
    out: LineWriter<File>,
    serializer: V2DeflateSerializer,
}

/// The column legend that Java's `HistogramLogWriter` writes after the
/// header. Its readers (and this crate's) skip it, but some tools look for
/// it; the crate's writer has no call for a line that is neither a comment
/// nor an interval, so it is the one line written by hand.
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

impl HlogFile {
    /// Creates (or truncates) `path`.
    ///
    /// # Errors
    /// Any I/O error creating the file.
    pub fn create(path: &Path) -> io::Result<HlogFile> {
        Ok(HlogFile {
            out: LineWriter::new(File::create(path)?),
            serializer: V2DeflateSerializer::new(),
        })
    }

    /// Writes the header with hdrhistogram's interval-log writer: `comment`,
    /// the format version, StartTime and BaseTime (both `start`: interval
    /// timestamps are seconds since then), then the legend and the max
    /// column's unit (milliseconds: a divisor of 1e6, the Java tools'
    /// default). Returns the writer for the intervals.
    ///
    /// # Errors
    /// Any I/O error writing the file.
    pub fn begin(&mut self, start: SystemTime, comment: &str) -> io::Result<HlogWriter<'_>> {
        IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(&mut self.out, &mut self.serializer)?;
        self.out.write_all(LEGEND.as_bytes())?;
        // The divisor is set only now, so the crate's "#[MaxValueDivisor]"
        // comment comes after the legend (readers skip comments anywhere).
        let log = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(NANOS_PER_MS)
            .begin_log_with(&mut self.out, &mut self.serializer)?;
        Ok(HlogWriter { log })
    }
}

/// Writes a `.hlog` file's intervals; see [`HlogFile::begin`].
pub struct HlogWriter<'a> {
    log: IntervalLogWriter<'a, 'a, LineWriter<File>, V2DeflateSerializer>,
}

impl HlogWriter<'_> {
    /// Appends one interval: its start (seconds since StartTime), length, max
    /// in milliseconds, and the histogram.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn interval(
        &mut self,
        start: Duration,
        length: Duration,
        h: &Histogram<u64>,
    ) -> io::Result<()> {
        self.log
            .write_histogram(h, start, length, None)
            .map_err(|e| match e {
                IntervalLogWriterError::IoError(e) => e,
                IntervalLogWriterError::SerializeError(e) => io::Error::other(e.to_string()),
            })
    }
}

/// Reads an `.hlog` and merges every interval (the tagged ones too). Returns
/// the merged histogram and the summed interval lengths.
///
/// # Errors
/// [`HlogError`] on a malformed line or histogram.
pub fn read_hlog(bytes: &[u8]) -> Result<(Histogram<u64>, Duration), HlogError> {
    let mut total = new_histogram();
    let mut length = Duration::ZERO;
    let mut intervals = 0usize;
    for entry in IntervalLogIterator::new(bytes) {
        match entry.map_err(|e| HlogError::Format(format!("{e:?}")))? {
            LogEntry::Interval(ih) => {
                let h = decode_histogram(ih.encoded_histogram())?;
                total
                    .add(&h)
                    .map_err(|e| HlogError::Histogram(format!("{e:?}")))?;
                length += ih.duration();
                intervals += 1;
            }
            LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
        }
    }
    if intervals == 0 {
        return Err(HlogError::Format("no interval lines".into()));
    }
    Ok((total, length))
}

/// The `.hgrm` percentile distribution of `h`, exactly as Java's
/// `outputPercentileDistribution(out, 5, 1e6)` prints it: value (ms),
/// percentile, total count, 1/(1-percentile); then mean, deviation, max, count
/// and the bucket layout.
///
/// # Errors
/// Any I/O error.
pub fn write_hgrm(out: &mut impl Write, h: &Histogram<u64>) -> io::Result<()> {
    let ratio = NANOS_PER_MS;
    let digits = usize::from(h.sigfig());
    // Java's `%12.3f`, `%2.12f`, `%14.2f`: width, then digits rounded half-up.
    let f = |v: f64, width: usize, digits: usize| format!("{:>width$}", java_fixed(v, digits));
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for (value, percent, total) in percentile_rows(h, 5) {
        let value = f(value as f64 / ratio, 12, digits);
        let q = percent / 100.0;
        if percent < 100.0 {
            let inverse = f(1.0 / (1.0 - q), 14, 2);
            writeln!(out, "{value} {} {total:10} {inverse}", f(q, 2, 12))?;
        } else {
            writeln!(out, "{value} {} {total:10}", f(q, 2, 12))?;
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / ratio, h.stdev() / ratio, h.max() as f64 / ratio)
    };
    let (mean, stdev, max) = (
        f(mean, 12, digits),
        f(stdev, 12, digits),
        f(max, 12, digits),
    );
    writeln!(out, "#[Mean    = {mean}, StdDeviation   = {stdev}]")?;
    writeln!(out, "#[Max     = {max}, Total count    = {:12}]", h.len())?;
    // Java's subBucketCount: the power of two at or above 2 * 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    )?;
    Ok(())
}

/// Formats a non-negative `v` with `digits` decimals the way Java's
/// `String.format("%.Nf")` does: from the shortest decimal that round-trips,
/// rounded half-up (Rust rounds the exact binary value half-to-even, which
/// differs in the last digit now and then).
pub fn java_fixed(v: f64, digits: usize) -> String {
    let shortest = format!("{v}");
    let (int, frac) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut ds: Vec<u8> = int
        .bytes()
        .chain(frac.bytes().chain(std::iter::repeat(b'0')).take(digits))
        .collect();
    if frac.as_bytes().get(digits).is_some_and(|&d| d >= b'5') {
        // Carry from the last kept digit leftwards.
        let mut i = ds.len();
        loop {
            if i == 0 {
                ds.insert(0, b'1');
                break;
            }
            i -= 1;
            if ds[i] == b'9' {
                ds[i] = b'0';
            } else {
                ds[i] += 1;
                break;
            }
        }
    }
    let split = ds.len() - digits;
    // Only ASCII digits went in.
    let text = String::from_utf8(ds).expect("ASCII digits");
    if digits == 0 {
        text
    } else {
        format!("{}.{}", &text[..split], &text[split..])
    }
}

/// The rows of a percentile distribution: (value in ns, percentile 0..=100,
/// count up to that value), stepping as Java's `PercentileIterator` does —
/// `ticks_per_half` steps to 50%, as many again to 75%, and so on, ending
/// with a 100% row at the max. Done here rather than with the crate's
/// `iter_quantiles`, whose float steps (0.1 + 0.1 + 0.1 != 0.3) land one
/// bucket off the Java tools' output now and then.
pub fn percentile_rows(h: &Histogram<u64>, ticks_per_half: u32) -> Vec<(u64, f64, u64)> {
    let total = h.len();
    let mut rows = Vec::new();
    let mut level = 0.0f64;
    let mut count = 0u64;
    for v in h.iter_recorded() {
        count += v.count_at_value();
        let reached = 100.0 * count as f64 / total as f64;
        while reached >= level {
            rows.push((v.value_iterated_to(), level, count));
            // Java: the reporting ticks double each time the remaining
            // distance to 100% halves.
            let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as u32;
            let ticks = u64::from(ticks_per_half) << (halvings + 1).min(62);
            level += 100.0 / ticks as f64;
            if count == total {
                // Java yields one row at the last value, then the 100% row.
                break;
            }
        }
    }
    if let Some(&(value, _, _)) = rows.last() {
        rows.push((value, 100.0, total));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1_000).unwrap(); // 1 us .. 10 ms
        }
        h
    }

    #[test]
    fn java_rounding() {
        assert_eq!(java_fixed(0.9997802734375, 12), "0.999780273438");
        assert_eq!(java_fixed(0.5, 0), "1");
        assert_eq!(java_fixed(9.9996, 3), "10.000");
        assert_eq!(java_fixed(1.0, 2), "1.00");
        assert_eq!(java_fixed(0.0, 3), "0.000");
        assert_eq!(java_fixed(4551.111111111111, 2), "4551.11");
        assert_eq!(java_fixed(0.0005, 3), "0.001");
        assert_eq!(java_fixed(123.4564, 3), "123.456");
    }

    #[test]
    fn encode_decode_roundtrip() {
        let h = sample();
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("aGVsbG8=").is_err());
    }

    #[test]
    fn hlog_write_then_read_merges_intervals() {
        let dir = std::env::temp_dir().join(format!("loadgen-hlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.hlog");
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut file = HlogFile::create(&path).unwrap();
        let mut w = file.begin(start, "test log\nsecond line").unwrap();
        let a = sample();
        let mut b = new_histogram();
        b.record(50_000_000).unwrap();
        w.interval(Duration::ZERO, Duration::from_secs(1), &a)
            .unwrap();
        w.interval(Duration::from_secs(1), Duration::from_millis(500), &b)
            .unwrap();
        drop(w);
        drop(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#test log");
        assert_eq!(lines[2], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[3],
            "#[StartTime: 1700000000.000 (seconds since epoch)]"
        );
        assert_eq!(
            lines[4],
            "#[BaseTime: 1700000000.000 (seconds since epoch)]"
        );
        assert!(lines[5].starts_with("\"StartTimestamp\""));
        assert_eq!(lines[6], "#[MaxValueDivisor: 1000000.000]");
        assert!(
            lines[7].starts_with("0.000,1.000,10.002,HISTF"),
            "{}",
            lines[7]
        );
        assert!(
            lines[8].starts_with("1.000,0.500,50.004,HISTF"),
            "{}",
            lines[8]
        );
        // Each interval's histogram is the crate's V2 deflate encoding, as
        // encode_histogram (and so the JSON summaries) write it.
        assert_eq!(lines[7].split(',').nth(3).unwrap(), encode_histogram(&a));
        assert_eq!(lines.len(), 9);
        let (merged, length) = read_hlog(text.as_bytes()).unwrap();
        assert_eq!(merged.len(), 10_001);
        assert_eq!(length, Duration::from_millis(1500));
        assert!(merged.max() >= 50_000_000);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_hlog(b"#[Histogram log format version 1.3]\n").is_err());
    }

    #[test]
    fn hgrm_is_byte_identical_to_hdrhistogram_java() {
        // The fixture pair was made by HdrHistogram's own Java tools from the
        // .hlog: reading the log back and printing it must give the same text.
        let hlog = include_bytes!("../tests/data/heavy-tail.hlog");
        let java = include_str!("../tests/data/heavy-tail.java.hgrm");
        let (h, length) = read_hlog(hlog).unwrap();
        assert_eq!(h.len(), 123_457);
        assert_eq!(length, Duration::from_secs(1));
        let mut out = Vec::new();
        write_hgrm(&mut out, &h).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), java);
    }

    #[test]
    fn hgrm_of_an_empty_histogram() {
        let mut out = Vec::new();
        write_hgrm(&mut out, &new_histogram()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("#[Max     =        0.000, Total count    =            0]"),
            "{text}"
        );
    }
}
