//! SMTP reply parsing, sans-IO: bytes in, one complete reply (or "need more") out.
//!
//! Owns the rules for what a well-formed reply is (RFC 5321 §4.2), what the EHLO
//! keywords mean to us, and how a queue id is pulled out of an end-of-data reply.
//! Reading from the socket is `client.rs`'s job.

use std::ops::Range;

/// Longest reply accepted, all lines together. RFC 5321 §4.5.3.1.5 caps a reply
/// line at 512 octets; a long EHLO reply is a few dozen lines, so 64 KiB leaves
/// room for any honest server and stops a flood of garbage.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 200..=599.
    pub code: u16,
    /// The text of the last line (after the code and separator), as a range of
    /// the parsed slice. End-of-data replies carry the queue id there.
    pub last_text: Range<usize>,
    /// Number of lines.
    pub lines: usize,
}

impl Reply {
    /// The reply class: 2, 3, 4 or 5.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// Moves `last_text` by `offset`, for callers that parsed a sub-slice.
    pub fn shifted(mut self, offset: usize) -> Reply {
        self.last_text = self.last_text.start + offset..self.last_text.end + offset;
        self
    }
}

/// Why bytes are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line does not start with a code 200..=599 followed by space, `-` or the end.
    #[error("garbage reply line {0:?}")]
    Garbage(String),
    /// A continuation line's code differs from the first line's (RFC 5321 §4.2.1).
    #[error("multi-line reply changes code from {first} to {later}")]
    CodeChanged {
        /// Code of the first line.
        first: u16,
        /// The differing code.
        later: u16,
    },
    /// More than [`MAX_REPLY_BYTES`] without a final line.
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
}

/// Parses one reply from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a reply, or
/// `Ok(Some((reply, consumed)))` with the bytes the reply used. Lines end with
/// CRLF; a bare LF is accepted too, as most clients do, since being strict
/// here would only hide what the server said.
///
/// # Errors
/// [`ReplyError`] when the bytes cannot be a reply; the connection is then
/// beyond repair.
///
/// # Example
/// ```
/// use loadgen::reply::parse_reply;
/// let buf = b"250-first\r\n250 2.0.0 Ok: queued as 4Q\r\n354 next";
/// let (reply, used) = parse_reply(buf).unwrap().unwrap();
/// assert_eq!((reply.code, reply.lines, used), (250, 2, 39));
/// assert_eq!(&buf[reply.last_text], b"2.0.0 Ok: queued as 4Q");
/// assert_eq!(parse_reply(&buf[used..]).unwrap(), None);
/// ```
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut first_code = None;
    let mut lines = 0;
    loop {
        let Some(nl) = memchr(b'\n', &buf[pos..]) else {
            return if buf.len() > MAX_REPLY_BYTES {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let line_end = pos + nl;
        let next = line_end + 1;
        if next > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let mut line = &buf[pos..line_end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let code = line_code(line).ok_or_else(|| garbage(line))?;
        let more = match line.get(3) {
            None | Some(b' ') => false,
            Some(b'-') => true,
            Some(_) => return Err(garbage(line)),
        };
        match first_code {
            None => first_code = Some(code),
            Some(first) if first != code => {
                return Err(ReplyError::CodeChanged { first, later: code })
            }
            Some(_) => {}
        }
        lines += 1;
        if !more {
            let text_start = (pos + 4).min(pos + line.len());
            let reply = Reply {
                code,
                last_text: text_start..pos + line.len(),
                lines,
            };
            return Ok(Some((reply, next)));
        }
        pos = next;
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn line_code(line: &[u8]) -> Option<u16> {
    let d = line.get(..3)?;
    if !(b'2'..=b'5').contains(&d[0]) || !d[1].is_ascii_digit() || !d[2].is_ascii_digit() {
        return None;
    }
    Some(u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0'))
}

fn garbage(line: &[u8]) -> ReplyError {
    // Keep reports short and printable: a binary flood should not fill the terminal.
    let shown: String = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
    ReplyError::Garbage(shown)
}

/// What the server's EHLO reply advertised, as far as loadgen cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// CHUNKING, i.e. BDAT (RFC 3030).
    pub chunking: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
}

/// Reads the keywords from a complete multi-line EHLO reply (RFC 5321 §4.1.1.1:
/// the first line is the greeting, each later line one keyword with parameters).
///
/// # Example
/// ```
/// let caps = loadgen::reply::parse_ehlo(b"250-mx\r\n250-pipelining\r\n250 CHUNKING\r\n");
/// assert!(caps.pipelining && caps.chunking);
/// ```
pub fn parse_ehlo(reply_bytes: &[u8]) -> Capabilities {
    let mut caps = Capabilities::default();
    for line in reply_bytes.split(|&b| b == b'\n').skip(1) {
        let text = line.get(4..).unwrap_or_default();
        let keyword = text
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or_default();
        if keyword.eq_ignore_ascii_case(b"PIPELINING") {
            caps.pipelining = true;
        } else if keyword.eq_ignore_ascii_case(b"CHUNKING") {
            caps.chunking = true;
        } else if keyword.eq_ignore_ascii_case(b"STARTTLS") {
            caps.starttls = true;
        }
    }
    caps
}

/// The queue id in an end-of-data reply's text: the word after `queued as`
/// (ringmx, Postfix: `2.0.0 Ok: queued as 4ABC`), else the whole text, trimmed.
///
/// # Example
/// ```
/// use loadgen::reply::queue_id;
/// assert_eq!(queue_id(b"2.0.0 Ok: queued as 4Xy7"), "4Xy7");
/// assert_eq!(queue_id(b"Message Queued (ABC-1)"), "Message Queued (ABC-1)");
/// ```
pub fn queue_id(text: &[u8]) -> String {
    const MARK: &[u8] = b"queued as ";
    let found = text
        .windows(MARK.len())
        .position(|w| w.eq_ignore_ascii_case(MARK));
    let id = match found {
        Some(at) => {
            let rest = &text[at + MARK.len()..];
            let end = rest
                .iter()
                .position(|b| b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            &rest[..end]
        }
        None => text,
    };
    let id = if id.is_empty() { text } else { id };
    String::from_utf8_lossy(id).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        parse_reply(buf)
    }

    #[test]
    fn complete_and_partial() {
        let full = b"250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
        let (r, used) = one(full).unwrap().unwrap();
        assert_eq!((r.code, r.lines, used), (250, 3, full.len()));
        assert_eq!(&full[r.last_text], b"CHUNKING");
        // Any cut before the last byte is "need more", never an error.
        for cut in 0..full.len() {
            assert_eq!(one(&full[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn line_endings_and_bare_code() {
        let (r, used) = one(b"221\r\n").unwrap().unwrap();
        assert_eq!((r.code, used, r.last_text.len()), (221, 5, 0));
        let (r, used) = one(b"250 ok\n").unwrap().unwrap();
        assert_eq!((r.code, used), (250, 7));
        let (r, _) = one(b"250 \r\n").unwrap().unwrap();
        assert_eq!(r.last_text.len(), 0);
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"2500 x\r\n",
            b"199 too low\r\n",
            b"600 too high\r\n",
            b"25a x\r\n",
            b"\r\n",
            b"250-ok\r\nxyz\r\n",
        ] {
            assert!(matches!(one(bad), Err(ReplyError::Garbage(_))), "{bad:?}");
        }
        assert_eq!(
            one(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged {
                first: 250,
                later: 251
            })
        );
    }

    #[test]
    fn too_long() {
        let flood = vec![b'2'; MAX_REPLY_BYTES + 1];
        assert_eq!(one(&flood), Err(ReplyError::TooLong));
        let mut lines = Vec::new();
        while lines.len() <= MAX_REPLY_BYTES {
            lines.extend_from_slice(b"250-xxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        assert_eq!(one(&lines), Err(ReplyError::TooLong));
    }

    #[test]
    fn ehlo_keywords() {
        let caps = parse_ehlo(b"250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 \r\n");
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                chunking: false,
                starttls: false
            }
        );
        let caps = parse_ehlo(b"250-x\r\n250-SIZE 1000\r\n250-starttls\r\n250 chunking\r\n");
        assert_eq!(
            caps,
            Capabilities {
                pipelining: false,
                chunking: true,
                starttls: true
            }
        );
        // The greeting line's text is never a keyword.
        assert_eq!(parse_ehlo(b"250 PIPELINING\r\n"), Capabilities::default());
    }

    #[test]
    fn queue_ids() {
        assert_eq!(queue_id(b"2.0.0 Ok: queued as 4ABC123"), "4ABC123");
        assert_eq!(queue_id(b"Ok: Queued As XYZ extra words"), "XYZ");
        assert_eq!(queue_id(b"2.0.0 Ok"), "2.0.0 Ok");
        assert_eq!(queue_id(b"ok queued as "), "ok queued as");
        assert_eq!(queue_id(b""), "");
    }
}
