//! ringmx: a thread-per-core SMTP server for bulk inbound mail on Linux.
//!
//! | concern | where |
//! |---|---|
//! | every limit and tunable, with defaults | [`config`] |
//! | SMTP protocol, sans-IO (no sockets, files, clocks) | [`protocol`] |
//! | durable per-core spool: segments, group commit, recovery, reader | [`spool`] |
//! | executors, listeners, connection tasks (glommio) | [`server`] |
//! | leveled stderr logging | [`log`] |
//! | shipping the spool onward: consumers, checkpoints, sinks | [`outlet`] |
//! | sizes and durations as written in flags and TOML | [`units`] |
//! | calendar dates from Unix time, RFC 5322 dates | [`civil`] |
//! | CPU affinity mask, resource limits (shared with loadgen) | [`sys`] |
//! | metric instruments (single-writer counters, histograms) | [`metrics`] |
//! | Prometheus `GET /metrics`: names, labels, the HTTP task | `server/metrics/` |

pub mod civil;
pub mod config;
pub mod log;
pub mod metrics;
pub mod outlet;
pub mod protocol;
pub mod server;
pub mod spool;
pub mod sys;
pub mod units;
