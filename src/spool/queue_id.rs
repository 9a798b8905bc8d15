//! [`QueueId`]: the short printable id that `250 2.0.0 Ok: queued as <id>`
//! hands the client, and that `ringmx spool cat` looks messages up by.
//!
//! An id is a per-shard sequence number plus the shard number, written as 16
//! characters of Crockford base32: 13 for the 64-bit sequence, then 3 for the
//! shard. Both parts are fixed-width and most-significant first, so ids sort
//! as text in the order they were issued on a shard, and roughly by time
//! across shards. How the sequence survives restarts is in `segment/mod.rs`
//! (and SPOOL-FORMAT.md, "Queue ids"); this file only encodes and parses.

use std::fmt;
use std::str::FromStr;

use super::error::SpoolError;

/// Crockford's base32 alphabet: no I, L, O or U, so ids read aloud or copied
/// by hand survive.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const SEQ_CHARS: usize = 13;
const SHARD_CHARS: usize = 3;

/// A message's queue id: unique across the shards of one spool and across
/// restarts. `Copy`, 32 bytes, no allocation to print.
///
/// # Example
/// ```
/// use ringmx::spool::QueueId;
/// let id: QueueId = "0001KQ3M5Z8X0001".parse().unwrap();
/// assert_eq!(id.shard(), 1);
/// assert_eq!(id.as_str(), "0001KQ3M5Z8X0001");
/// assert_eq!(id.to_string().parse::<QueueId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    seq: u64,
    shard: u16,
    /// The printed form, kept so `as_str` borrows instead of formatting.
    text: [u8; SEQ_CHARS + SHARD_CHARS],
}

impl QueueId {
    /// The largest shard number an id can carry (15 bits).
    pub const MAX_SHARD: u32 = (1 << (5 * SHARD_CHARS)) - 1;

    /// The id for sequence number `seq` on `shard`.
    ///
    /// # Errors
    /// [`SpoolError::ShardOutOfRange`] past [`QueueId::MAX_SHARD`].
    pub fn new(shard: u32, seq: u64) -> Result<Self, SpoolError> {
        let shard16 = u16::try_from(shard)
            .ok()
            .filter(|&s| u32::from(s) <= Self::MAX_SHARD)
            .ok_or(SpoolError::ShardOutOfRange(shard))?;
        let mut text = [0u8; SEQ_CHARS + SHARD_CHARS];
        for (i, c) in text[..SEQ_CHARS].iter_mut().enumerate() {
            let shift = 5 * (SEQ_CHARS - 1 - i);
            // 13 * 5 = 65 bits: the top character holds only the top 4 bits.
            *c = ALPHABET[((u128::from(seq) >> shift) & 31) as usize];
        }
        for (i, c) in text[SEQ_CHARS..].iter_mut().enumerate() {
            let shift = 5 * (SHARD_CHARS - 1 - i);
            *c = ALPHABET[((shard16 >> shift) & 31) as usize];
        }
        Ok(Self {
            seq,
            shard: shard16,
            text,
        })
    }

    /// The shard that issued the id (and whose directory holds the message).
    pub fn shard(&self) -> u32 {
        u32::from(self.shard)
    }

    /// The per-shard sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The 16-character printed form.
    pub fn as_str(&self) -> &str {
        // Every byte comes from ALPHABET, which is ASCII.
        std::str::from_utf8(&self.text).unwrap_or("")
    }
}

fn decode_char(c: u8) -> Option<u8> {
    // Crockford: lower case reads as upper case.
    let c = c.to_ascii_uppercase();
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

impl FromStr for QueueId {
    type Err = SpoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SpoolError::BadQueueId(s.chars().take(64).collect());
        let b = s.as_bytes();
        if b.len() != SEQ_CHARS + SHARD_CHARS {
            return Err(bad());
        }
        let mut seq: u128 = 0;
        for &c in &b[..SEQ_CHARS] {
            seq = (seq << 5) | u128::from(decode_char(c).ok_or_else(bad)?);
        }
        let mut shard: u32 = 0;
        for &c in &b[SEQ_CHARS..] {
            shard = (shard << 5) | u32::from(decode_char(c).ok_or_else(bad)?);
        }
        let seq = u64::try_from(seq).map_err(|_| bad())?;
        Self::new(shard, seq)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for shard in [0, 1, 31, 32, QueueId::MAX_SHARD] {
            for seq in [0, 1, 31, 32, 1_795_880_682_000_000, u64::MAX - 1, u64::MAX] {
                let id = QueueId::new(shard, seq).unwrap();
                assert_eq!(id.as_str().len(), 16);
                let back: QueueId = id.as_str().parse().unwrap();
                assert_eq!((back.shard(), back.seq()), (shard, seq));
                let lower: QueueId = id.as_str().to_ascii_lowercase().parse().unwrap();
                assert_eq!(lower, id);
            }
        }
    }

    #[test]
    fn text_order_is_issue_order() {
        let a = QueueId::new(3, 999).unwrap();
        let b = QueueId::new(3, 1000).unwrap();
        let c = QueueId::new(0, 1001).unwrap();
        assert!(a.as_str() < b.as_str() && b.as_str() < c.as_str());
    }

    #[test]
    fn rejects_bad_text_without_panicking() {
        for s in [
            "",
            "0",
            "00000000000000000",
            "0000000000000I00",
            "G000000000000000",
            "é000000000000000",
        ] {
            assert!(
                matches!(s.parse::<QueueId>(), Err(SpoolError::BadQueueId(_))),
                "{s}"
            );
        }
        assert!(matches!(
            QueueId::new(QueueId::MAX_SHARD + 1, 0),
            Err(SpoolError::ShardOutOfRange(_))
        ));
    }
}
