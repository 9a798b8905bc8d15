//! The sans-IO SMTP engine: bytes in, reply bytes and events out.
//!
//! Nothing here touches a socket, a file, a clock or an executor, so every
//! SMTP rule is testable (and fuzzable) without I/O. The server drives a
//! [`Session`] per connection; see its docs for the call order.
//!
//! | concern | file |
//! |---|---|
//! | finding line ends across reads | [`scanner`] |
//! | one command line -> [`command::Command`] | [`command`] |
//! | reply texts and their encoding | [`reply`] |
//! | per-transaction envelope storage | [`envelope`] |
//! | the state machine, DATA/BDAT decoding | [`session`] |
//! | the `Received:` trace header | [`trace`] |
//! | an in-memory driver for benches and fuzzing | [`replay`] |

pub mod command;
pub mod envelope;
pub mod replay;
pub mod reply;
pub mod scanner;
pub mod session;
pub mod trace;

pub use envelope::Envelope;
pub use session::{ClientInfo, CommitError, Event, Session};

#[cfg(test)]
mod tests;
