//! Refusals as records: every 4xx/5xx reply to a command is kept, with the
//! command's verb and a sanitised, truncated copy of its argument, for the
//! runtime to log (Postfix's `NOQUEUE: reject:` lines). Bounded and
//! allocation-free once warm: at most [`MAX_PENDING`] records wait for the
//! runtime to drain them; past that they are counted, not kept.

use super::super::reply::Reply;

/// Records kept between two drains; a pipelined batch of refusals past
/// this is counted in [`Refusals::dropped`] (the log path rate-limits such
/// floods anyway).
pub const MAX_PENDING: usize = 16;

/// Argument bytes kept per record: enough for an address, not a flood.
pub const MAX_ARG: usize = 64;

/// One refused command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The verb, upper case; `UNKNOWN` for one ringmx does not know.
    pub verb: &'static str,
    /// The reply line sent, CRLF included.
    pub reply: Reply,
    arg: [u8; MAX_ARG],
    arg_len: u8,
}

impl Refusal {
    /// The three-digit reply code.
    pub fn code(&self) -> &'static str {
        self.word(0)
    }

    /// The enhanced status code (RFC 3463), e.g. `5.7.1`.
    pub fn enhanced(&self) -> &'static str {
        self.word(1)
    }

    /// The reply's text after the codes: the reason.
    pub fn reason(&self) -> &'static str {
        let s = std::str::from_utf8(self.reply).unwrap_or("");
        let s = s.trim_end_matches("\r\n");
        s.splitn(3, ' ').nth(2).unwrap_or("")
    }

    /// The command's argument, printable ASCII only (anything else is `?`),
    /// at most `MAX_ARG` (64) bytes.
    pub fn arg(&self) -> &str {
        // Only printable ASCII is ever stored, so this cannot fail.
        std::str::from_utf8(&self.arg[..usize::from(self.arg_len)]).unwrap_or("")
    }

    fn word(&self, n: usize) -> &'static str {
        let s = std::str::from_utf8(self.reply).unwrap_or("");
        s.trim_end_matches("\r\n").split(' ').nth(n).unwrap_or("")
    }
}

/// The pending refusals of one session.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    pending: Vec<Refusal>,
    /// Refusals not kept because [`MAX_PENDING`] were waiting.
    pub(super) dropped: u64,
}

impl Refusals {
    /// Records a reply if it is a refusal (4xx/5xx); `verb` is the best
    /// guess until [`Refusals::name_since`] names the command line.
    #[inline]
    pub(super) fn note(&mut self, reply: Reply, verb: &'static str) {
        if !matches!(reply.first(), Some(b'4' | b'5')) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(MAX_PENDING);
        }
        self.pending.push(Refusal {
            verb,
            reply,
            arg: [0; MAX_ARG],
            arg_len: 0,
        });
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Names the records from index `from` on after the command `line`
    /// that earned them: its verb, and its argument sanitised.
    pub(super) fn name_since(&mut self, from: usize, line: &[u8]) {
        if from >= self.pending.len() {
            return;
        }
        let (verb, arg) = split_verb(line);
        let mut buf = [0u8; MAX_ARG];
        let n = arg.len().min(MAX_ARG);
        for (d, &s) in buf.iter_mut().zip(&arg[..n]) {
            *d = if (0x20..0x7f).contains(&s) { s } else { b'?' };
        }
        for r in &mut self.pending[from..] {
            r.verb = verb;
            r.arg = buf;
            r.arg_len = n as u8;
        }
    }

    pub(super) fn drain(&mut self) -> std::vec::Drain<'_, Refusal> {
        self.pending.drain(..)
    }
}

/// The verbs a refusal can name; anything else is `UNKNOWN`.
const VERBS: &[&str] = &[
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "EXPN",
    "TURN", "ETRN", "ATRN", "STARTTLS", "AUTH", "SEND", "SOML", "SAML", "GET", "POST", "HEAD",
    "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE",
];

/// A command line's verb (upper case, from [`VERBS`]) and the bytes after it.
fn split_verb(line: &[u8]) -> (&'static str, &[u8]) {
    let end = memchr::memchr(b' ', line).unwrap_or(line.len());
    let verb = VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(&line[..end]))
        .copied()
        .unwrap_or("UNKNOWN");
    let arg = line.get(end + 1..).unwrap_or(&[]);
    (verb, arg)
}

#[cfg(test)]
mod tests {
    use super::super::super::reply;
    use super::*;

    #[test]
    fn only_4xx_5xx_are_kept_named_sanitised_and_bounded() {
        let mut r = Refusals::default();
        r.note(reply::OK, "");
        assert_eq!(r.len(), 0);
        r.note(reply::RELAY_DENIED, "");
        r.name_since(0, b"rcpt TO:<u@x.example>\x1b[31m\r\xff");
        let got: Vec<Refusal> = r.drain().collect();
        assert_eq!(got.len(), 1);
        let g = got[0];
        assert_eq!(
            (g.verb, g.code(), g.enhanced(), g.reason()),
            ("RCPT", "550", "5.7.1", "Relay access denied")
        );
        assert_eq!(g.arg(), "TO:<u@x.example>?[31m??");
        r.note(reply::UNRECOGNIZED, "");
        r.name_since(0, &[b'X'; 300]);
        let g = r.drain().next().unwrap();
        assert_eq!((g.verb, g.arg().len()), ("UNKNOWN", 0));
        r.note(reply::UNRECOGNIZED, "");
        r.name_since(
            0,
            &[b'A'; 300]
                .iter()
                .chain(b" ")
                .chain(&[b'b'; 300])
                .copied()
                .collect::<Vec<_>>(),
        );
        assert_eq!(r.drain().next().unwrap().arg().len(), MAX_ARG);
        for _ in 0..MAX_PENDING + 5 {
            r.note(reply::NEED_MAIL, "DATA");
        }
        assert_eq!((r.len(), r.dropped), (MAX_PENDING, 5));
    }
}
