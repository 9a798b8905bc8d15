//! Merging per-core interval reports into run-wide intervals and totals.
//! Sans-IO: reports in, merged intervals out; printing and file writing are
//! `report.rs`'s and `hlog.rs`'s jobs.
//!
//! Every core cuts its intervals at the same instants (whole seconds from the
//! run's start, plus the warm-up end and the run end), numbered by `seq`, so
//! the reports with the same `seq` cover the same time and can be added. A core
//! that finishes early (its share of `--messages` is done, or it was stopped)
//! marks its final report `last`; later intervals merge without it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::stats::{Counters, IntervalStats};

/// Which part of the run an interval belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalKind {
    /// Before `--warmup` ends: shown live, left out of totals and logs.
    Warmup,
    /// The measured window: counts toward rates and latencies.
    Measure,
    /// After `--duration` ended, while in-flight messages finish: their
    /// latencies count (dropping the slowest would flatter the server), their
    /// messages do not count toward msgs/s.
    Drain,
}

/// One core's record of one interval.
#[derive(Debug, Clone)]
pub struct CoreReport {
    /// The reporting core.
    pub core: usize,
    /// Interval number, the same on every core for the same time span.
    pub seq: u32,
    /// Part of the run.
    pub kind: IntervalKind,
    /// Interval start.
    pub start: Instant,
    /// Interval end (the boundary, or when the core stopped).
    pub end: Instant,
    /// This core sends nothing after this report.
    pub last: bool,
    /// The run was interrupted (Ctrl-C) during this interval.
    pub aborted: bool,
    /// What was measured.
    pub stats: IntervalStats,
}

/// One interval, all cores together.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Interval number.
    pub seq: u32,
    /// Part of the run.
    pub kind: IntervalKind,
    /// Earliest start over the cores.
    pub start: Instant,
    /// Latest end over the cores.
    pub end: Instant,
    /// Some core was interrupted in this interval.
    pub aborted: bool,
    /// Sum over the cores.
    pub stats: IntervalStats,
}

impl Merged {
    fn from_report(r: CoreReport) -> Merged {
        Merged {
            seq: r.seq,
            kind: r.kind,
            start: r.start,
            end: r.end,
            aborted: r.aborted,
            stats: r.stats,
        }
    }

    fn absorb(&mut self, r: &CoreReport) {
        self.start = self.start.min(r.start);
        self.end = self.end.max(r.end);
        self.aborted |= r.aborted;
        self.stats.add(&r.stats);
    }

    /// Interval length.
    pub fn length(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
}

/// Collects reports from `cores` cores and releases each interval, in order,
/// once every core that is still running has reported it.
#[derive(Debug)]
pub struct Aggregator {
    /// Per core: the `seq` of its last report, once seen.
    last_seq: Vec<Option<u32>>,
    /// Per seq: which cores reported, and their sum so far.
    pending: BTreeMap<u32, (Vec<bool>, Merged)>,
    /// The next interval to release.
    next_seq: u32,
}

impl Aggregator {
    /// An aggregator expecting reports from `cores` cores.
    pub fn new(cores: usize) -> Aggregator {
        Aggregator {
            last_seq: vec![None; cores],
            pending: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Adds a report; returns the intervals that became complete, in order.
    pub fn push(&mut self, r: CoreReport) -> Vec<Merged> {
        let cores = self.last_seq.len();
        if r.last {
            self.last_seq[r.core] = Some(r.seq);
        }
        let core = r.core;
        match self.pending.get_mut(&r.seq) {
            Some((seen, merged)) => {
                merged.absorb(&r);
                seen[core] = true;
            }
            None => {
                let mut seen = vec![false; cores];
                seen[core] = true;
                self.pending.insert(r.seq, (seen, Merged::from_report(r)));
            }
        }
        let mut out = Vec::new();
        while let Some((seen, _)) = self.pending.get(&self.next_seq) {
            let k = self.next_seq;
            let complete = seen
                .iter()
                .zip(&self.last_seq)
                .all(|(&seen, last)| seen || last.is_some_and(|l| l < k));
            if !complete {
                break;
            }
            // The entry exists: it was just looked up.
            let (_, merged) = self.pending.remove(&k).expect("pending interval present");
            out.push(merged);
            self.next_seq += 1;
        }
        out
    }

    /// Every core has sent its last report and every interval was released.
    pub fn done(&self) -> bool {
        self.last_seq.iter().all(Option::is_some) && self.pending.is_empty()
    }

    /// Releases whatever is pending, for when a core vanished without its
    /// last report (its thread died): better a partial summary than none.
    pub fn flush(&mut self) -> Vec<Merged> {
        let out: Vec<Merged> = std::mem::take(&mut self.pending)
            .into_values()
            .map(|(_, m)| m)
            .collect();
        if let Some(m) = out.last() {
            self.next_seq = m.seq + 1;
        }
        out
    }
}

/// Run totals, built from merged intervals.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Measured and drain intervals together: what the latency percentiles,
    /// reply classes and errors are reported from. `acks` is not kept here.
    pub stats: IntervalStats,
    /// Counts of the warm-up intervals, for information only.
    pub warmup: Counters,
    /// Counts of the drain intervals (messages finished after the end).
    pub drain: Counters,
    /// Length of the measured window (measure intervals only).
    pub measured: Duration,
    /// Messages accepted inside the measured window.
    pub measured_ok: u64,
    /// Bytes of those messages.
    pub measured_bytes: u64,
    /// TLS handshakes completed inside the measured window.
    pub measured_handshakes: u64,
    /// The run was interrupted.
    pub aborted: bool,
}

impl Totals {
    /// Adds one merged interval.
    pub fn add(&mut self, m: &Merged) {
        self.aborted |= m.aborted;
        match m.kind {
            IntervalKind::Warmup => self.warmup.add(&m.stats.counters),
            IntervalKind::Measure | IntervalKind::Drain => {
                let acks = std::mem::take(&mut self.stats.acks);
                self.stats.add(&m.stats);
                self.stats.acks = acks;
                if m.kind == IntervalKind::Measure {
                    self.measured += m.length();
                    self.measured_ok += m.stats.counters.msgs_ok;
                    self.measured_bytes += m.stats.counters.bytes_ok;
                    self.measured_handshakes += m.stats.counters.tls_handshakes;
                } else {
                    self.drain.add(&m.stats.counters);
                }
            }
        }
    }

    /// Accepted messages per second in the measured window.
    pub fn msgs_per_sec(&self) -> f64 {
        per_sec(self.measured_ok as f64, self.measured)
    }

    /// TLS handshakes per second in the measured window.
    pub fn handshakes_per_sec(&self) -> f64 {
        per_sec(self.measured_handshakes as f64, self.measured)
    }

    /// Accepted message megabytes (10^6 bytes) per second in the measured window.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.measured_bytes as f64 / 1e6, self.measured)
    }
}

fn per_sec(x: f64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        x / d.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Percentiles, Phase};

    fn report(core: usize, seq: u32, kind: IntervalKind, last: bool, base: Instant) -> CoreReport {
        let mut stats = IntervalStats::default();
        stats.counters.msgs_ok = 10 * (core as u64 + 1);
        stats.counters.bytes_ok = 1000 * (core as u64 + 1);
        stats.hists.record(Phase::E2e, 1_000_000 * (seq as u64 + 1));
        stats
            .acks
            .extend_from_slice(format!("id-{core}-{seq}\n").as_bytes());
        CoreReport {
            core,
            seq,
            kind,
            start: base + Duration::from_secs(seq.into()),
            end: base + Duration::from_secs(u64::from(seq) + 1),
            last,
            aborted: false,
            stats,
        }
    }

    #[test]
    fn releases_in_order_when_all_cores_reported() {
        let t = Instant::now();
        let mut a = Aggregator::new(2);
        assert!(a
            .push(report(0, 0, IntervalKind::Measure, false, t))
            .is_empty());
        // Core 0 runs ahead: seq 1 waits for core 1's seq 0 and 1.
        assert!(a
            .push(report(0, 1, IntervalKind::Measure, false, t))
            .is_empty());
        let out = a.push(report(1, 0, IntervalKind::Measure, false, t));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq, 0);
        assert_eq!(out[0].stats.counters.msgs_ok, 30);
        assert_eq!(out[0].stats.hists.get(Phase::E2e).len(), 2);
        assert_eq!(out[0].stats.acks, b"id-0-0\nid-1-0\n");
        let out = a.push(report(1, 1, IntervalKind::Measure, false, t));
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1]);
        assert!(!a.done());
    }

    #[test]
    fn a_core_that_finished_early_is_not_waited_for() {
        let t = Instant::now();
        let mut a = Aggregator::new(2);
        // Core 1 finishes its share of --messages in interval 0.
        assert!(a
            .push(report(1, 0, IntervalKind::Measure, true, t))
            .is_empty());
        assert_eq!(
            a.push(report(0, 0, IntervalKind::Measure, false, t)).len(),
            1
        );
        // Interval 1 only needs core 0.
        let out = a.push(report(0, 1, IntervalKind::Measure, false, t));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stats.counters.msgs_ok, 10);
        assert!(!a.done());
        let out = a.push(report(0, 2, IntervalKind::Drain, true, t));
        assert_eq!(out.len(), 1);
        assert!(a.done());
    }

    #[test]
    fn flush_releases_partial_intervals() {
        let t = Instant::now();
        let mut a = Aggregator::new(2);
        a.push(report(0, 0, IntervalKind::Measure, false, t));
        a.push(report(0, 1, IntervalKind::Measure, false, t));
        let out = a.flush();
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert!(a.flush().is_empty());
    }

    #[test]
    fn totals_leave_out_warmup_and_rate_only_the_window() {
        let t = Instant::now();
        let mut a = Aggregator::new(1);
        let mut totals = Totals::default();
        let kinds = [
            IntervalKind::Warmup,
            IntervalKind::Warmup,
            IntervalKind::Measure,
            IntervalKind::Measure,
            IntervalKind::Measure,
            IntervalKind::Drain,
        ];
        for (seq, kind) in kinds.into_iter().enumerate() {
            let last = kind == IntervalKind::Drain;
            for m in a.push(report(0, seq as u32, kind, last, t)) {
                totals.add(&m);
            }
        }
        assert!(a.done());
        assert_eq!(totals.warmup.msgs_ok, 20);
        assert_eq!(totals.measured, Duration::from_secs(3));
        assert_eq!(totals.measured_ok, 30);
        assert_eq!(totals.drain.msgs_ok, 10);
        // Latency covers measure + drain: 4 samples at 3, 4, 5 and 6 ms.
        let p = Percentiles::of(totals.stats.hists.get(Phase::E2e));
        assert_eq!(p.count, 4);
        assert!(p.min > 2.99 && p.min < 3.01 && p.max >= 6.0 && p.max < 6.01);
        assert!((totals.msgs_per_sec() - 10.0).abs() < 1e-9);
        assert!((totals.mb_per_sec() - 0.001).abs() < 1e-12);
        assert!(totals.stats.acks.is_empty());
    }
}
