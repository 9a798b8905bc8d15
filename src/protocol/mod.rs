//! The sans-IO SMTP engine: bytes in, reply bytes and events out.
//!
//! Nothing here touches a socket, a file, a clock or an executor (time is
//! the caller's argument; only the in-memory runtime in [`replay`] takes a
//! base instant from the clock), so every SMTP rule and every deadline is
//! testable (and fuzzable) without I/O. The server drives a
//! [`Session`] per connection; see its docs for the call order.
//!
//! | concern | file |
//! |---|---|
//! | finding line ends across reads | [`scanner`] |
//! | one command line -> [`command::Command`] | [`command`] |
//! | reply texts and their encoding | [`reply`] |
//! | per-transaction envelope storage | [`envelope`] |
//! | the state machine, its call order, the one reply writer | [`session`] |
//! | one handler per command | `session/handlers.rs` |
//! | DATA and BDAT bodies, their shared text rules | `session/body.rs` |
//! | refused commands as records, for the log | `session/refusal.rs` |
//! | who exists at RCPT time: per-domain policy, the static map | [`recipients`] |
//! | the `Received:` trace header | [`trace`] |
//! | per-client rates the runtime keeps across sessions | [`rates`] |
//! | an in-memory driver for benches and fuzzing | [`replay`] |
//!
//! No `unsafe` here: the engine has no reason for it, and the attribute
//! below makes that a compile error rather than a convention.

#![forbid(unsafe_code)]

pub mod command;
pub mod envelope;
pub mod rates;
pub mod recipients;
pub mod replay;
pub mod reply;
pub mod scanner;
pub mod session;
pub mod trace;

pub use envelope::Envelope;
pub use session::{
    AuthVerdict, ClientInfo, CloseReason, CommitError, Event, RcptCounts, Refusal, Session,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_auth;
