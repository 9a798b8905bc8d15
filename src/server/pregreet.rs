//! The early-talker test (Postfix postscreen's pregreet): with
//! `server.greet_wait` set, a new client gets `220-` and, only after the
//! wait, the greeting's last line; an SMTP client must wait for that line
//! (RFC 5321 §3.1, §4.2), so one that talks first is spamware and gets
//! `521 5.5.1`. A client that waited is remembered in the shared pass cache
//! ([`super::anvil`]) for `server.greet_pass_ttl`, so it pays the wait once.
//!
//! Owns: whether a connection waits ([`must_wait`]) and what kind of talker
//! a client that did not wait is ([`classify`]), for the counters and log.
//! Leaves to [`super::conn`] the socket: the `220-`, the wait and the reply.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::anvil::Anvil;
use super::shard::Shard;
use crate::protocol::command::{self, Command};

/// What a client sent before the greeting's last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Talker {
    /// An HTTP request line (a proxy scan, a misdirected browser).
    Http,
    /// A line ended by a bare LF: not an RFC 5321 client.
    BareLf,
    /// Anything else: an SMTP command sent without waiting.
    Other,
}

impl Talker {
    /// For the connection's log line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Talker::Http => "pregreet-http",
            Talker::BareLf => "pregreet-bare-lf",
            Talker::Other => "pregreet",
        }
    }

    /// Counts one in the shared stats.
    pub(crate) fn count(self, anvil: &Anvil) {
        let s = &anvil.stats;
        let c: &AtomicU64 = match self {
            Talker::Http => &s.pregreet_http,
            Talker::BareLf => &s.pregreet_bare_lf,
            Talker::Other => &s.pregreet_other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the first bytes of an early talker are.
pub(crate) fn classify(input: &[u8]) -> Talker {
    let line_end = memchr::memchr(b'\n', input);
    let line = &input[..line_end.unwrap_or(input.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if command::parse(line) == Ok(Command::Http) {
        return Talker::Http;
    }
    match line_end {
        Some(i) if i == 0 || input[i - 1] != b'\r' => Talker::BareLf,
        _ => Talker::Other,
    }
}

/// Whether a connection from `ip` must wait for its greeting now: the wait
/// is on, the client is not trusted and has not passed it lately (then
/// counted as cached).
pub(crate) fn must_wait(shard: &Shard, ip: IpAddr, now: Instant) -> bool {
    let anvil = &shard.anvil;
    if shard.server.greet_wait.is_zero() || anvil.is_trusted(ip) {
        return false;
    }
    if anvil.greet_passed(ip, now) {
        anvil.stats.greet_cached.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talkers_are_told_apart() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n"), Talker::Http);
        assert_eq!(classify(b"CONNECT a:25 HTTP/1.0\n"), Talker::Http);
        assert_eq!(classify(b"EHLO x\n"), Talker::BareLf);
        assert_eq!(classify(b"\n"), Talker::BareLf);
        assert_eq!(classify(b"EHLO x\r\n"), Talker::Other);
        assert_eq!(classify(b"EHL"), Talker::Other);
        assert_eq!(classify(b""), Talker::Other);
    }
}
