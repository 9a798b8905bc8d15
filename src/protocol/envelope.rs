//! Per-transaction envelope storage: one byte arena reset per transaction.
//!
//! Why not a bump allocator such as bumpalo: a `bumpalo::Bump` can only be
//! reset through `&mut`, while the strings it hands out borrow it, so keeping
//! both in the session needs a self-referential type (unsafe or another
//! crate).
//! This arena gives the same property — after the first few transactions a
//! command allocates nothing, and the end of a transaction is one `clear()` —
//! with offsets instead of references and no unsafe.

use std::net::SocketAddr;
use std::ops::Range;

use super::command::{BodyType, MailParams};

/// What the arena keeps between transactions: room for a typical envelope
/// (a sender, its parameters and a few recipients). A transaction that grew
/// it past this (up to `smtp.max_recipients` long recipients, a few hundred
/// KiB) gives the rest back when it ends, so a connection holds that memory
/// only while the transaction lasts (README "Memory per connection").
pub(crate) const ARENA_KEEP_BYTES: usize = 512;

/// Recipient slots kept between transactions; see [`ARENA_KEEP_BYTES`].
pub(crate) const ARENA_KEEP_RCPTS: usize = 16;

/// Recipients an envelope keeps once shed
/// ([`Session::shed_envelope`](crate::protocol::Session::shed_envelope)):
/// those the per-message log line names (the rest it only counts).
pub const SHED_KEEP_RCPTS: usize = 5;

/// Envelope bytes of the transaction in progress.
#[derive(Debug, Default)]
pub(crate) struct TxArena {
    bytes: String,
    mail_from: Range<usize>,
    raw_params: Range<usize>,
    rcpts: Vec<Range<usize>>,
    /// Recipients accepted but dropped by [`TxArena::shed`]: counted, not
    /// kept.
    shed_rcpts: usize,
    pub(crate) params: MailParams,
}

impl TxArena {
    /// Drops the transaction, keeping the capacity up to
    /// [`ARENA_KEEP_BYTES`] and [`ARENA_KEEP_RCPTS`].
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.rcpts.clear();
        // Shrinking only past the keep sizes: a typical transaction still
        // allocates nothing after the first.
        if self.bytes.capacity() > ARENA_KEEP_BYTES {
            self.bytes.shrink_to(ARENA_KEEP_BYTES);
        }
        if self.rcpts.capacity() > ARENA_KEEP_RCPTS {
            self.rcpts.shrink_to(ARENA_KEEP_RCPTS);
        }
        self.mail_from = 0..0;
        self.raw_params = 0..0;
        self.shed_rcpts = 0;
        self.params = MailParams::default();
    }

    /// Once the spool's record holds the envelope: keeps the sender, its
    /// parameters, the first [`SHED_KEEP_RCPTS`] recipients and the count
    /// of the rest, and gives the memory of the rest back, so a long
    /// envelope is not held twice while the body arrives.
    pub(crate) fn shed(&mut self) {
        if self.rcpts.len() <= SHED_KEEP_RCPTS {
            return;
        }
        // Everything kept lies before the first dropped recipient: the
        // arena is appended to in order (sender, parameters, recipients).
        let keep_end = self.rcpts[SHED_KEEP_RCPTS].start;
        self.shed_rcpts += self.rcpts.len() - SHED_KEEP_RCPTS;
        self.rcpts.truncate(SHED_KEEP_RCPTS);
        self.bytes.truncate(keep_end);
        self.bytes.shrink_to(ARENA_KEEP_BYTES);
        self.rcpts.shrink_to(ARENA_KEEP_RCPTS);
    }

    fn push(&mut self, s: &str) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.push_str(s);
        start..self.bytes.len()
    }

    pub(crate) fn set_mail(&mut self, from: &str, params: MailParams, raw_params: &str) {
        self.clear();
        self.mail_from = self.push(from);
        self.raw_params = self.push(raw_params);
        self.params = params;
    }

    pub(crate) fn add_rcpt(&mut self, to: &str) {
        let r = self.push(to);
        self.rcpts.push(r);
    }

    /// Recipients accepted, shed or not.
    pub(crate) fn rcpt_count(&self) -> usize {
        self.rcpts.len() + self.shed_rcpts
    }
}

/// A read-only view of the current transaction's envelope, for the spool
/// and the trace header.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    arena: &'a TxArena,
    /// The client's address, if the runtime knows it.
    pub client: Option<SocketAddr>,
    /// Name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// `SMTP`, `ESMTP` or `UTF8SMTP` (RFC 3848, RFC 6531 §3.7.3).
    pub protocol: &'static str,
    /// The SMTP AUTH identity, if the client logged in.
    pub auth: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    pub(crate) fn new(
        arena: &'a TxArena,
        client: Option<SocketAddr>,
        helo: &'a str,
        protocol: &'static str,
    ) -> Self {
        Self {
            arena,
            client,
            helo,
            protocol,
            auth: None,
        }
    }

    /// The reverse path; empty for the null sender `<>`.
    pub fn mail_from(&self) -> &'a str {
        &self.arena.bytes[self.arena.mail_from.clone()]
    }

    /// MAIL FROM parameters as the client wrote them.
    pub fn raw_params(&self) -> &'a str {
        &self.arena.bytes[self.arena.raw_params.clone()]
    }

    /// Parsed MAIL FROM parameters.
    pub fn params(&self) -> MailParams {
        self.arena.params
    }

    /// BODY= type.
    pub fn body_type(&self) -> BodyType {
        self.arena.params.body
    }

    /// Accepted recipients, in order: all of them until the session sheds
    /// the envelope (`Session::shed_envelope`), then the first
    /// [`SHED_KEEP_RCPTS`];
    /// [`Envelope::rcpt_count`] counts them all.
    pub fn rcpts(&self) -> impl ExactSizeIterator<Item = &'a str> + 'a {
        let arena = self.arena;
        arena.rcpts.iter().map(move |r| &arena.bytes[r.clone()])
    }

    /// How many recipients were accepted, including any shed.
    pub fn rcpt_count(&self) -> usize {
        self.arena.rcpt_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_reuses_capacity_across_transactions() {
        let mut a = TxArena::default();
        a.set_mail("a@b", MailParams::default(), "SIZE=1");
        a.add_rcpt("c@d");
        a.add_rcpt("e@f");
        let env = Envelope::new(&a, None, "h", "ESMTP");
        assert_eq!(env.mail_from(), "a@b");
        assert_eq!(env.raw_params(), "SIZE=1");
        assert_eq!(env.rcpts().collect::<Vec<_>>(), ["c@d", "e@f"]);
        let cap = (a.bytes.capacity(), a.rcpts.capacity());
        a.set_mail("x@y", MailParams::default(), "");
        a.add_rcpt("z@w");
        assert_eq!(cap, (a.bytes.capacity(), a.rcpts.capacity()));
        let env = Envelope::new(&a, None, "h", "ESMTP");
        assert_eq!(env.rcpts().collect::<Vec<_>>(), ["z@w"]);
    }

    #[test]
    fn a_large_transaction_gives_its_memory_back_when_it_ends() {
        let mut a = TxArena::default();
        a.set_mail("a@b", MailParams::default(), "");
        let long = format!("{}@example.org", "x".repeat(240));
        for _ in 0..1000 {
            a.add_rcpt(&long);
        }
        assert!(a.bytes.capacity() >= 1000 * long.len());
        a.clear();
        assert!(
            a.bytes.capacity() <= ARENA_KEEP_BYTES,
            "{}",
            a.bytes.capacity()
        );
        assert!(
            a.rcpts.capacity() <= ARENA_KEEP_RCPTS,
            "{}",
            a.rcpts.capacity()
        );
        // And it is usable again.
        a.set_mail("c@d", MailParams::default(), "");
        a.add_rcpt("e@f");
        let env = Envelope::new(&a, None, "h", "ESMTP");
        assert_eq!(env.rcpts().collect::<Vec<_>>(), ["e@f"]);
    }

    #[test]
    fn shedding_keeps_the_sender_the_first_recipients_and_the_count() {
        let mut a = TxArena::default();
        a.set_mail("a@b", MailParams::default(), "BODY=8BITMIME");
        let long = |i: usize| format!("{}{i:04}@example.org", "x".repeat(236));
        for i in 0..1000 {
            a.add_rcpt(&long(i));
        }
        a.shed();
        let env = Envelope::new(&a, None, "h", "ESMTP");
        assert_eq!(env.mail_from(), "a@b");
        assert_eq!(env.raw_params(), "BODY=8BITMIME");
        assert_eq!(env.rcpt_count(), 1000);
        let kept: Vec<String> = (0..SHED_KEEP_RCPTS).map(long).collect();
        assert_eq!(env.rcpts().collect::<Vec<_>>(), kept);
        // The dropped recipients' memory is given back.
        assert!(
            a.bytes.capacity() <= ARENA_KEEP_BYTES.max(a.bytes.len()),
            "{}",
            a.bytes.capacity()
        );
        assert!(
            a.rcpts.capacity() <= ARENA_KEEP_RCPTS,
            "{}",
            a.rcpts.capacity()
        );
        // Shedding twice changes nothing; the next transaction starts at 0.
        a.shed();
        assert_eq!(a.rcpt_count(), 1000);
        a.set_mail("c@d", MailParams::default(), "");
        assert_eq!(a.rcpt_count(), 0);
        a.add_rcpt("e@f");
        let env = Envelope::new(&a, None, "h", "ESMTP");
        assert_eq!(env.rcpt_count(), 1);
        assert_eq!(env.rcpts().collect::<Vec<_>>(), ["e@f"]);
    }

    #[test]
    fn shedding_a_short_envelope_keeps_it_whole() {
        let mut a = TxArena::default();
        a.set_mail("a@b", MailParams::default(), "");
        for r in ["1@x", "2@x", "3@x"] {
            a.add_rcpt(r);
        }
        a.shed();
        let env = Envelope::new(&a, None, "h", "ESMTP");
        assert_eq!(env.rcpt_count(), 3);
        assert_eq!(env.rcpts().collect::<Vec<_>>(), ["1@x", "2@x", "3@x"]);
    }
}
