//! The durable per-core spool: every accepted message is appended to its
//! shard's segment files and made durable (group commit) before `250`.
//!
//! ```text
//! <spool>/LOCK                                   flock: one writer process per spool
//! <spool>/shard-<n>/ringmx-v2-<seq:016x>.seg     append-only segments, rotated at segment_bytes
//! <spool>/shard-<n>/ringmx-v1-<seq:016x>.seg     segments of the first format: read, never written
//! <spool>/shard-<n>/quarantine-*.bin             copies of damaged ranges recovery found
//! ```
//!
//! The server uses [`ShardSpool`] (one per shard, on its glommio executor):
//! [`ShardSpool::next_queue_id`], [`ShardSpool::begin`], then
//! [`MessageWriter::write`] per body chunk and [`MessageWriter::commit`].
//! Everything else reads the spool with [`SpoolReader`] (blocking `std::fs`,
//! safe while a server runs), as the binary's `ringmx spool` commands do.
//! The byte layout is in SPOOL-FORMAT.md at the repository root.
//!
//! | concern | file |
//! |---|---|
//! | errors, and which reply each maps to | [`error`](SpoolError) |
//! | queue ids: format and parsing | [`queue_id`](QueueId) |
//! | byte layout: headers, records, payloads | [`format`](mod@format) |
//! | per-shard segments, writer task, group commit | `segment/` ([`ShardSpool`]) |
//! | one message: buffering, fragments, commit | `message.rs` ([`MessageWriter`]) |
//! | one writer per spool: `LOCK` | `lock.rs` ([`DirLock`]) |
//! | start-up scan: cut a torn tail, quarantine and step over damage | `recovery.rs` ([`RecoveryReport`]) |
//! | walking a segment record by record, resync after damage | `scan.rs` |
//! | iterate, look up, verify committed messages | `reader.rs` ([`SpoolReader`]) |
//! | deleting what every consumer shipped; lag; backpressure | [`reclaim`] |

mod error;
pub mod format;
mod lock;
mod message;
mod queue_id;
mod reader;
pub mod reclaim;
mod recovery;
mod scan;
mod segment;

#[cfg(test)]
pub(crate) mod tests;

pub use error::SpoolError;
pub use format::{EnvelopeRecord, Location};
pub use lock::{lock_holder, DirLock, LOCK_FILE};
pub use message::MessageWriter;
pub use queue_id::QueueId;
pub use reader::{
    BodyReader, Problem, ShardMessages, ShardSummary, SpoolReader, StoredEnvelope, StoredMessage,
};
pub use recovery::{RecoveryReport, TailCut};
pub(crate) use segment::available_bytes;
pub use segment::{ShardSpool, SpoolStats, NO_PIN};
