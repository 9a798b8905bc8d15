//! The outlet: ship what the spool holds onward, to a next hop that takes it
//! (an SMTP or LMTP server, NATS JetStream, an HTTP webhook, a Maildir).
//!
//! The spool is a log. A *consumer* has a name and, per shard, a position
//! (segment, offset): every committed message before it has been handed to
//! the consumer's sink and acknowledged. Positions live in checkpoint files
//! under `<spool>/consumers/<name>/`, written atomically and fsync'd only
//! after the sink acknowledged durably, so delivery is at-least-once; the
//! idempotency key `<node_id>.<queue_id>` (unique across a fleet) lets a sink
//! that deduplicates make it effectively exactly-once.
//!
//! Sinks run in the `ringmx ship` process, never on a shard thread: a sink
//! may block, may own a tokio runtime, and its panics abort only that
//! process (the server supervises and restarts it).
//!
//! | concern | file |
//! |---|---|
//! | positions per consumer and shard, on disk | [`checkpoint`] |
//! | the loop per (consumer, shard): read, batch, deliver, checkpoint | [`consumer`] |
//! | copies of refused messages, listed and sent again | [`dead`] |
//! | a message's header fields, parsed once into an arena | [`headers`] |
//! | what a sink is given and what it answers | [`sink`] |
//! | the sinks, one file each, chosen by URL | [`sinks`] |
//! | `ringmx serve --ship`: child processes, restarted | [`supervise`] |

pub mod checkpoint;
pub mod consumer;
pub mod dead;
pub mod headers;
pub mod sink;
pub mod sinks;
pub mod supervise;

pub use checkpoint::{Checkpoint, ConsumerDir};
pub use headers::HeaderFields;
pub use sink::{Parcel, Sink, SinkError, Verdict};

use std::path::PathBuf;

/// What the outlet's bookkeeping can fail with (sinks answer with
/// [`Verdict`]s and [`SinkError`] instead).
#[derive(Debug, thiserror::Error)]
pub enum OutletError {
    /// A file or directory operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("writing", "syncing directory", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint file that cannot be read as one. Never treated as "start
    /// over": that would ship everything again.
    #[error("{}: {reason} (fix the file, or rewind with `ringmx ship --name NAME --reset`)", path.display())]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A dead letter's JSON file that cannot be read as one.
    #[error("{}: {reason} (fix or remove the dead letter)", path.display())]
    BadDeadLetter {
        /// The JSON file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A consumer name that cannot be a directory name.
    #[error("consumer name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ . - (not starting with '.')")]
    BadName(String),
    /// The spool could not be read.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

impl OutletError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
