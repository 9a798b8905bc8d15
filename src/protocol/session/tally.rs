//! Commands by verb and reply class, for the server's metrics: a table of
//! counters the runtime hands the session ([`Session::count_commands_into`]);
//! the session adds one per command line when that command's reply is
//! written. The table is the shard's, shared by its sessions; its counters
//! have one writer, the shard's thread (see [`crate::metrics`]).
//!
//! What counts: the first reply line written for a command line (its class
//! is that line's first digit). A RCPT that waits for a lookup counts when
//! its answer is written; a BDAT when its chunk's reply is (the LAST
//! chunk's `250 queued` too). The reply at the end of a DATA body is the
//! message's verdict, counted with the messages, not here.
//!
//! [`Session::count_commands_into`]: super::Session::count_commands_into

use crate::metrics::Counter;

/// The verbs counted on their own; everything else is `other`.
pub const VERBS: [&str; 14] = [
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP",
    "STARTTLS", "AUTH", "other",
];

/// Index of the RCPT verb in [`VERBS`].
pub(super) const RCPT: usize = 3;
/// Index of the BDAT verb in [`VERBS`].
pub(super) const BDAT: usize = 5;
const OTHER: usize = VERBS.len() - 1;

/// The reply classes counted, by the reply's first digit.
pub const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Commands by verb ([`VERBS`]) and reply class ([`CLASSES`]).
#[derive(Debug)]
pub struct CommandTally {
    counts: [[Counter; CLASSES.len()]; VERBS.len()],
}

impl Default for CommandTally {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| Counter::default())),
        }
    }
}

impl CommandTally {
    /// Commands of verb `VERBS[verb]` answered with class `CLASSES[class]`.
    pub fn get(&self, verb: usize, class: usize) -> u64 {
        self.counts[verb][class].get()
    }

    /// Counts a command of verb index `verb` whose reply begins with `reply_first`.
    #[inline]
    pub(super) fn note(&self, verb: usize, reply_first: u8) {
        let class = match reply_first {
            b'2' => 0,
            b'3' => 1,
            b'4' => 2,
            b'5' => 3,
            _ => return,
        };
        self.counts[verb][class].inc();
    }
}

/// The index in [`VERBS`] of a command line's verb (ASCII case ignored).
#[inline]
pub(super) fn verb_index(line: &[u8]) -> usize {
    // No search for the space: every counted verb but STARTTLS has four
    // letters, so look at the first four bytes and the one after them.
    match line.get(..4).map(<[u8; 4]>::try_from) {
        Some(Ok(w)) if line.len() == 4 || line[4] == b' ' => {
            // Clearing bit 5 upper-cases a letter, and only letters map onto
            // upper-case letters: an exact, case-blind compare.
            match &(u32::from_be_bytes(w) & 0xDFDF_DFDF).to_be_bytes() {
                b"HELO" => 0,
                b"EHLO" => 1,
                b"MAIL" => 2,
                b"RCPT" => RCPT,
                b"DATA" => 4,
                b"BDAT" => BDAT,
                b"RSET" => 6,
                b"NOOP" => 7,
                b"QUIT" => 8,
                b"VRFY" => 9,
                b"HELP" => 10,
                b"AUTH" => 12,
                _ => OTHER,
            }
        }
        _ if line.len() >= 8
            && line[..8].eq_ignore_ascii_case(b"STARTTLS")
            && line.get(8).is_none_or(|&b| b == b' ') =>
        {
            11
        }
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_found_in_any_case_and_the_rest_is_other() {
        for (i, v) in VERBS.iter().enumerate().take(OTHER) {
            assert_eq!(verb_index(v.as_bytes()), i, "{v}");
            assert_eq!(verb_index(v.to_lowercase().as_bytes()), i, "{v}");
            let line = format!("{v} arg");
            assert_eq!(verb_index(line.as_bytes()), i, "{line}");
        }
        for junk in [
            &b""[..],
            b"MAI",
            b"MAILX",
            b"HEL\x4f\x00",
            b"\x08ELO",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(verb_index(junk), OTHER, "{junk:?}");
        }
    }

    #[test]
    fn a_reply_counts_in_its_class() {
        let t = CommandTally::default();
        t.note(2, b'2');
        t.note(2, b'5');
        t.note(2, b'5');
        t.note(4, b'3');
        t.note(4, b'x');
        assert_eq!((t.get(2, 0), t.get(2, 3), t.get(4, 1)), (1, 2, 1));
        let total: u64 = (0..VERBS.len())
            .flat_map(|v| (0..CLASSES.len()).map(move |c| (v, c)))
            .map(|(v, c)| t.get(v, c))
            .sum();
        assert_eq!(total, 4);
    }
}
