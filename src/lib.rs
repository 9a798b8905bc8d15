//! ringmx: a thread-per-core SMTP server for bulk inbound mail on Linux.

pub mod config;
pub mod protocol;
