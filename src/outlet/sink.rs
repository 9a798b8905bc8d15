//! What a sink is handed and what it answers: the one trait every next hop
//! implements. A new sink is one file in `sinks/` and one arm in
//! [`super::sinks::open`].

use std::fmt;
use std::time::Duration;

use super::headers::HeaderFields;
use crate::spool::StoredMessage;

/// One committed message, ready to ship.
pub struct Parcel<'a> {
    /// Idempotency key, unique across a fleet: `<node_id>.<queue_id>`
    /// (just the queue id for a version 1 segment, which has no node id). A
    /// sink that publishes one message to several destinations (per-domain
    /// subjects) derives one key per destination from it, so deduplication
    /// never drops a legitimate second publish.
    pub key: &'a str,
    /// Queue id, envelope, node id and where the record sits.
    pub msg: &'a StoredMessage,
    /// The message as it goes onward: the server's `Received:` line followed
    /// by the body exactly as stored (CRLF line ends, dot-unstuffed).
    pub data: &'a [u8],
    /// Header fields of `data` (the `Received:` line included), parsed once.
    pub headers: &'a HeaderFields<'a>,
}

/// A sink's answer for one parcel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Durably taken by the next hop (a JetStream publish ack, a `250` after
    /// the data, a `2xx` HTTP status): the consumer may move past it.
    Accepted,
    /// Refused for good (`5xx`, a configured HTTP `4xx`): the consumer
    /// copies it to its dead letters and moves past it. `rcpts` names the
    /// recipients refused when others were accepted (LMTP); `None` means the
    /// whole message.
    Rejected {
        /// The next hop's answer, for the dead-letter record and the log.
        reason: String,
        /// The refused recipients, when only some were.
        rcpts: Option<Vec<String>>,
    },
    /// Not taken now (`4xx`, a timeout, a lost connection after the data was
    /// sent): the consumer retries this parcel and everything after it, after
    /// a backoff. A sink that delivers per recipient keeps, in memory, which
    /// recipients already took it, so a retry does not deliver twice.
    Deferred(String),
}

/// A failure of the sink as a whole (cannot connect, protocol error before
/// any parcel was handed over): the consumer backs off and retries the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError(pub String);

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SinkError {}

/// A next hop. Runs on a thread of the `ringmx ship` process (never on a
/// shard thread), so it may block; one instance per (consumer, shard).
pub trait Sink: Send {
    /// Hands over a batch, in order. Returns exactly one verdict per parcel,
    /// in the same order; a verdict may be `Accepted` only once the next hop
    /// holds the parcel durably. The consumer moves its checkpoint past the
    /// longest prefix of `Accepted`/`Rejected` verdicts and retries from the
    /// first `Deferred` one.
    ///
    /// # Errors
    /// The whole batch failed (nothing was taken that the sink knows of).
    fn deliver(&mut self, batch: &[Parcel<'_>]) -> Result<Vec<Verdict>, SinkError>;

    /// The largest batch this sink wants, in parcels.
    fn max_batch(&self) -> usize {
        64
    }

    /// How long a parcel may take before the sink gives up on it (the
    /// consumer uses it to size its own waits and progress reports).
    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}
