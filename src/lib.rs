//! ringmx: a thread-per-core SMTP server for bulk inbound mail on Linux.
//!
//! | concern | where |
//! |---|---|
//! | every limit and tunable, with defaults | [`config`] |
//! | SMTP protocol, sans-IO (no sockets, files, clocks) | [`protocol`] |
//! | durable per-core spool: segments, group commit, recovery, reader, `ringmx spool` | [`spool`] |
//! | executors, listeners, connection tasks (glommio) | [`server`] |
//! | leveled stderr logging | [`log`] |
//! | CPU affinity mask, resource limits (shared with loadgen) | [`sys`] |

pub mod config;
pub mod log;
pub mod protocol;
pub mod server;
pub mod spool;
pub mod sys;
