//! Instruments for the Prometheus metrics: counters, gauges and fixed-bucket
//! histograms that one thread writes and another reads.
//!
//! Owns: the values and their update rules. Leaves to
//! `server::metrics` what they are called, their labels and the exposition
//! (`GET /metrics`).
//!
//! Each instrument has **one writer**: the shard (or the shard's spool
//! writer task) that owns it. An update is therefore a relaxed load and a
//! relaxed store, not a read-modify-write: on x86-64 a plain `mov`/`add`/
//! `mov`, no `lock` prefix, no cache line shared with another core's
//! writes. The scrape thread reads with relaxed loads; a scrape may see one
//! counter a moment ahead of another, as with any Prometheus client. Never
//! write one instrument from two threads: updates would be lost.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic count with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        // One writer: load + store cannot lose an update (see module docs).
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds `n` (negative to subtract).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed upper bounds (`le`), a single writer, and a sum.
/// Recording is a short linear scan over at most a dozen bounds and two
/// counter updates: no allocation, no lock, no floating point.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in the recording unit (nanoseconds for durations),
    /// ascending; values above the last go to the `+Inf` bucket.
    bounds: &'static [u64],
    /// One per bound, plus `+Inf`; not cumulative (the exposition sums).
    buckets: Box<[Counter]>,
    /// Sum of the recorded values, in the recording unit.
    sum: Counter,
    /// The factor from the recording unit to the exposed one (1e-9 for
    /// nanoseconds exposed as seconds).
    scale: f64,
}

/// Bounds for latencies, nanoseconds: 50 µs to 10 s, roughly ×2.5 apart.
/// Covers an fdatasync on NVMe (tens of µs) up to a stalled disk.
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// Bounds for commits per fdatasync (group-commit batch sizes).
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 1024];

impl Histogram {
    /// A histogram of durations, recorded in nanoseconds and exposed in
    /// seconds.
    pub fn seconds(bounds_ns: &'static [u64]) -> Self {
        Self::new(bounds_ns, 1e-9)
    }

    /// A histogram of plain counts, exposed as recorded.
    pub fn counts(bounds: &'static [u64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn new(bounds: &'static [u64], scale: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: Counter::default(),
            scale,
        }
    }

    /// Records `v` (in the recording unit).
    #[inline]
    pub fn record(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].inc();
        self.sum.add(v);
    }

    /// Records a duration (for histograms made with [`Histogram::seconds`]).
    #[inline]
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// `(upper bound, count in this bucket)` per bound, in the exposed
    /// unit, without `+Inf`; then the total count and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(self.buckets.iter())
            .map(|(&b, c)| (b as f64 * self.scale, c.get()))
            .collect();
        let count = self.buckets.iter().map(Counter::get).sum();
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.get() as f64 * self.scale,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, count in that bucket alone)`, `+Inf` left out.
    pub buckets: Vec<(f64, u64)>,
    /// Values recorded.
    pub count: u64,
    /// Their sum, in the exposed unit.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// The mean, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// The `q` quantile (0..=1) estimated as Prometheus'
    /// `histogram_quantile` does: linear within the bucket that holds it
    /// (the last bound for values above it); 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let (mut seen, mut lower) = (0u64, 0.0);
        for &(upper, n) in &self.buckets {
            if n > 0 && (seen + n) as f64 >= rank {
                let into = (rank - seen as f64) / n as f64;
                return lower + (upper - lower) * into;
            }
            seen += n;
            lower = upper;
        }
        lower
    }
}

/// What a shard's spool writer records about its group commits; the spool
/// writes it (`ShardSpool::publish_sync_metrics_to`), the server exposes it.
#[derive(Debug)]
pub struct SyncMetrics {
    /// Time each group-commit fdatasync took (none where the batch was
    /// written O_DSYNC, `spool.direct_io`).
    pub fdatasync_seconds: Arc<Histogram>,
    /// Messages acknowledged by each group commit (its batch size), made
    /// durable by one fdatasync or one O_DSYNC write.
    pub commits_per_fdatasync: Arc<Histogram>,
    /// Stages of a group commit, once per batch (see [`CommitStages`]).
    pub stages: CommitStages,
}

/// Where a durable commit's time goes, one histogram per stage, recorded
/// once per batch (the wake stage once per message): queue (the oldest
/// commit's wait for the writer to take its batch), write (the batch's
/// first write submitted to its last write complete), gap (last write
/// complete to the fdatasync submitted), the fdatasync itself
/// ([`SyncMetrics::fdatasync_seconds`]), and wake (the fdatasync complete to
/// the session running again with its verdict, ready to reply).
#[derive(Debug)]
pub struct CommitStages {
    /// Oldest commit submitted to its batch taken by the writer.
    pub queue: Arc<Histogram>,
    /// The batch's writes, first submitted to last complete.
    pub write: Arc<Histogram>,
    /// Last write complete to the fdatasync submitted.
    pub gap: Arc<Histogram>,
    /// fdatasync complete to the session resumed with its verdict.
    pub wake: Arc<Histogram>,
}

impl Default for CommitStages {
    fn default() -> Self {
        let h = || Arc::new(Histogram::seconds(STAGE_BOUNDS_NS));
        Self {
            queue: h(),
            write: h(),
            gap: h(),
            wake: h(),
        }
    }
}

/// Bounds for the stages of a commit, nanoseconds: 1 µs to 1 s, finer than
/// [`LATENCY_BOUNDS_NS`] because most stages take microseconds.
pub const STAGE_BOUNDS_NS: &[u64] = &[
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

impl Default for SyncMetrics {
    fn default() -> Self {
        Self {
            fdatasync_seconds: Arc::new(Histogram::seconds(LATENCY_BOUNDS_NS)),
            commits_per_fdatasync: Arc::new(Histogram::counts(BATCH_BOUNDS)),
            stages: CommitStages::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_each_value_in_the_first_bucket_that_holds_it() {
        let h = Histogram::counts(&[1, 4, 16]);
        for v in [0, 1, 2, 4, 5, 16, 17, 1000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (4.0, 2), (16.0, 2)]);
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, (1 + 2 + 4 + 5 + 16 + 17 + 1000) as f64);
    }

    #[test]
    fn durations_are_exposed_in_seconds() {
        let h = Histogram::seconds(LATENCY_BOUNDS_NS);
        h.record_duration(Duration::from_micros(300));
        let s = h.snapshot();
        assert_eq!(s.buckets[0].0, 50e-6);
        let at = s.buckets.iter().position(|b| b.1 == 1).unwrap();
        assert_eq!(s.buckets[at].0, 500e-6);
        assert!((s.sum - 300e-6).abs() < 1e-12);
    }

    #[test]
    fn counters_and_gauges_add_up() {
        let c = Counter::default();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        let g = Gauge::default();
        g.add(3);
        g.add(-1);
        assert_eq!(g.get(), 2);
        g.set(7);
        assert_eq!(g.get(), 7);
    }
}
