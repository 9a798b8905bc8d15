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

/// Envelope bytes of the transaction in progress.
#[derive(Debug, Default)]
pub(crate) struct TxArena {
    bytes: String,
    mail_from: Range<usize>,
    raw_params: Range<usize>,
    rcpts: Vec<Range<usize>>,
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
        self.params = MailParams::default();
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

    pub(crate) fn rcpt_count(&self) -> usize {
        self.rcpts.len()
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

    /// Accepted recipients, in order.
    pub fn rcpts(&self) -> impl ExactSizeIterator<Item = &'a str> + 'a {
        let arena = self.arena;
        arena.rcpts.iter().map(move |r| &arena.bytes[r.clone()])
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
}
