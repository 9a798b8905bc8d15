//! Per-client rates that outlive one session: the runtime keeps them (across
//! connections and shards, `server::anvil`) and the session asks before it
//! accepts a MAIL or a RCPT. The engine only asks; the time is its `now`.

use std::fmt::Debug;
use std::time::Instant;

/// The runtime's per-client counters, as the session sees them
/// ([`crate::protocol::Session::set_client_rates`]). Each call that answers
/// `true` counts one event; `false` counts nothing and the session answers
/// `452 4.7.1`.
pub trait ClientRates: Debug {
    /// One more MAIL from this client at `now`, if under its rate.
    fn admit_message(&self, now: Instant) -> bool;
    /// One more accepted RCPT from this client at `now`, if under its rate.
    fn admit_recipient(&self, now: Instant) -> bool;
}
