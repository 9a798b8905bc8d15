//! A minimal in-memory runtime for the engine: feeds a byte stream through a
//! [`Session`] in fixed-size reads, commits every message at once, and
//! checks the event contract on the way. Used by the benches, the fuzz
//! target and the callgrind driver; the server's real runtime is
//! `server::conn`.

use std::rc::Rc;

use super::session::{ClientInfo, Event, Session};
use crate::config::SmtpConfig;

/// What a replay produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Messages committed (`MessageEnd`).
    pub messages: u64,
    /// Messages abandoned (`MessageAbort`).
    pub aborts: u64,
    /// Body bytes of committed messages.
    pub body_bytes: u64,
    /// The session asked to close.
    pub closed: bool,
}

/// Feeds `input` in reads of `read` bytes (the unconsumed tail kept in
/// front, as a connection does), committing each message with queue id
/// `"Q"`. Replies go to `out`, which is cleared after each read.
///
/// # Panics
/// If the engine breaks its event contract: a body outside a message, a
/// second `MessageStart`, a consumed count past the input, or a partial line
/// carried that is longer than the longest allowed line. These are engine
/// bugs, which is what the fuzz target looks for.
pub fn replay(cfg: &Rc<SmtpConfig>, input: &[u8], read: usize, out: &mut Vec<u8>) -> Replay {
    let mut s = Session::new(cfg.clone(), ClientInfo::default(), out);
    let mut buf: Vec<u8> = Vec::with_capacity(read.max(1) * 2);
    let mut r = Replay::default();
    let mut open: Option<u64> = None;
    let carry_limit = cfg.max_command_line_bytes.max(cfg.max_text_line_bytes);
    for chunk in input.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        while !r.closed {
            let (used, ev) = s.handle_input(&buf[pos..], out);
            assert!(pos + used <= buf.len(), "consumed past the input");
            pos += used;
            match ev {
                Event::NeedInput => break,
                Event::MessageStart => {
                    assert!(open.is_none(), "MessageStart inside a message");
                    open = Some(0);
                }
                Event::Body(b) => {
                    let n = open.as_mut().expect("Body outside a message");
                    assert!(!b.is_empty(), "empty Body event");
                    *n += b.len() as u64;
                    assert!(*n <= cfg.max_message_bytes, "body past max_message_bytes");
                }
                Event::MessageAbort => {
                    open.take().expect("MessageAbort outside a message");
                    r.aborts += 1;
                }
                Event::MessageEnd => {
                    r.body_bytes += open.take().expect("MessageEnd outside a message");
                    s.handle_commit(Ok("Q"), out);
                    r.messages += 1;
                }
                Event::Close => r.closed = true,
            }
        }
        buf.drain(..pos);
        assert!(
            r.closed || buf.len() <= carry_limit,
            "carried {} bytes of a partial line",
            buf.len()
        );
        out.clear();
        if r.closed {
            break;
        }
    }
    r
}

/// The fuzz targets' bodies. They live here, not in `fuzz/`, so that the
/// ordinary test run replays committed crash inputs through the same code
/// (`fuzz/regressions/`, see `protocol::tests`).
pub mod fuzz {
    use super::*;
    use crate::config::BareNewline;

    fn config(knobs: u8, max_message_bytes: u64) -> Rc<SmtpConfig> {
        Rc::new(SmtpConfig {
            accepted_domains: vec!["test".into()],
            max_message_bytes,
            max_errors: 1000,
            bare_newline: if knobs & 1 == 0 {
                BareNewline::Reject
            } else {
                BareNewline::Accept
            },
            ..SmtpConfig::default()
        })
    }

    /// Replays `input` whole and in reads of `read` bytes; both must agree.
    fn split_invariant(cfg: &Rc<SmtpConfig>, input: &[u8], read: usize) {
        let mut out = Vec::new();
        let whole = replay(cfg, input, input.len().max(1), &mut out);
        let split = replay(cfg, input, read, &mut out);
        assert_eq!(whole, split, "reads of {read} bytes changed the outcome");
    }

    /// Target `session`: the first byte picks policy and read size, the
    /// rest is raw input.
    pub fn raw(data: &[u8]) {
        let Some((&knobs, input)) = data.split_first() else {
            return;
        };
        split_invariant(
            &config(knobs, 2000),
            input,
            1 + usize::from(knobs >> 1) * 37,
        );
    }

    /// Pieces of SMTP that `smtp_alphabet` strings together.
    const ALPHABET: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
        b"MAIL FROM:<a@b> BODY=BINARYMIME SMTPUTF8\r\n",
        b"RCPT TO:<u@test>\r\n",
        b"RCPT TO:<u@other>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"DATA\r\n",
        b"BDAT 7\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT 3 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b".\r\n",
        b"..\r\n",
        b".",
        b"\r\n",
        b"\r",
        b"\n",
        b"x",
        b"text line\r\n",
        &[b'L'; 300],
        b"\xc3\xa9",
        b"\0",
    ];

    /// Target `session_smtp`: the first byte picks policy and read size,
    /// each further byte picks a piece of SMTP, so the fuzzer reaches DATA,
    /// BDAT and the limits quickly.
    pub fn smtp_alphabet(data: &[u8]) {
        let Some((&knobs, picks)) = data.split_first() else {
            return;
        };
        let input: Vec<u8> = picks
            .iter()
            .flat_map(|&p| ALPHABET[usize::from(p) % ALPHABET.len()])
            .copied()
            .collect();
        split_invariant(
            &config(knobs, 1500),
            &input,
            1 + usize::from(knobs >> 1) * 13,
        );
    }
}
