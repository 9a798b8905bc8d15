//! [`SpoolStats`]: one shard's counters, kept by its writer task and
//! sessions, read by the server's metrics.

use crate::spool::format::Location;

/// Counters of one shard's spool, for the server's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended: messages, fragments, commits and seals.
    pub records: u64,
    /// Messages acknowledged to their session: durable under
    /// `durability = fsync`, written under `none`.
    pub commits: u64,
    /// Fragment records appended (streamed message bodies).
    pub fragments: u64,
    /// fdatasync calls that made records durable (group commits and segment
    /// seals; not the one-off sync of a new segment's header).
    pub fdatasyncs: u64,
    /// Bytes appended to segments, record headers and seals included.
    pub bytes: u64,
    /// Writer wake-ups that found work: one per group of records.
    pub batches: u64,
    /// Segments this process created.
    pub segments_created: u64,
    /// Records that failed for lack of space (the server's `452 4.3.1`),
    /// plus messages refused at `begin` under `min_free_bytes`.
    pub full_errors: u64,
    /// Records that failed for any other I/O reason (`451 4.3.0`).
    pub io_errors: u64,
    /// Messages begun and dropped without a commit.
    pub aborted: u64,
    /// Every byte before this position has been written.
    pub written: Location,
    /// Every byte before this position has been fdatasync'd.
    pub durable: Location,
}

impl SpoolStats {
    /// Mean messages acknowledged per fdatasync: how well group commit batches.
    /// 0 before the first fdatasync.
    pub fn commits_per_fdatasync(&self) -> f64 {
        if self.fdatasyncs == 0 {
            0.0
        } else {
            self.commits as f64 / self.fdatasyncs as f64
        }
    }
}
