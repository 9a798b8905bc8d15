//! A message's header fields, parsed once per message into a `bumpalo`
//! arena that the caller resets per message: sinks read From, Subject,
//! Message-ID... without a second pass and without an allocation per field.
//!
//! RFC 5322 §2.2: a field is `name: value CRLF`, the name printable ASCII
//! but `:`; a line starting with space or tab continues the field above
//! (folding). Values are unfolded (each CRLF that precedes whitespace is
//! removed, §2.2.3), leading whitespace is trimmed, RFC 2047 encoded words
//! are left encoded. Parsing stops at the first empty line (the body starts
//! after it) or at a line that is not a field, as a mail reader would; only
//! the header block is ever held.

use bumpalo::collections::Vec as BumpVec;
use bumpalo::Bump;
use memchr::memchr;

/// One header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name as written (compare with `eq_ignore_ascii_case`).
    pub name: &'a str,
    /// The unfolded value, without the leading whitespace and the line end.
    pub value: &'a [u8],
}

/// The header fields of one message, in order.
#[derive(Debug)]
pub struct HeaderFields<'a> {
    fields: BumpVec<'a, Field<'a>>,
    header_len: usize,
}

impl<'a> HeaderFields<'a> {
    /// Parses the header block at the start of `message`. Values without
    /// folding borrow from `message`; unfolded ones are copied into `bump`.
    pub fn parse(bump: &'a Bump, message: &'a [u8]) -> Self {
        let mut fields = BumpVec::new_in(bump);
        let mut pos = 0;
        // The field being read: name, and where its value starts and ends
        // (line end excluded), plus whether a continuation line followed.
        let mut open: Option<(&'a str, usize, usize, bool)> = None;
        let header_len = loop {
            let Some((line, next)) = line_at(message, pos) else {
                break message.len();
            };
            if line.is_empty() {
                break next;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                match open.as_mut() {
                    Some((_, _, end, folded)) => {
                        *end = pos + line.len();
                        *folded = true;
                        pos = next;
                        continue;
                    }
                    // Whitespace before any field: not a header block.
                    None => break pos,
                }
            }
            let Some(colon) = memchr(b':', line) else {
                break pos;
            };
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                break pos;
            }
            if let Some(f) = open.take() {
                fields.push(finish(bump, message, f));
            }
            // Printable ASCII, so this never fails.
            let name = std::str::from_utf8(name).unwrap_or_default();
            open = Some((name, pos + colon + 1, pos + line.len(), false));
            pos = next;
        };
        if let Some(f) = open.take() {
            fields.push(finish(bump, message, f));
        }
        Self { fields, header_len }
    }

    /// Bytes of the header block, the empty line after it included.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter()
    }

    /// The value of the first field with this name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// The values of every field with this name (case-insensitive), in order.
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// The line starting at `pos`, without its line end (CRLF or a bare LF), and
/// where the next one starts; `None` at the end of `message`.
fn line_at(message: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = message.get(pos..).filter(|r| !r.is_empty())?;
    Some(match memchr(b'\n', rest) {
        Some(nl) => {
            let end = if nl > 0 && rest[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            (&rest[..end], pos + nl + 1)
        }
        None => (rest, message.len()),
    })
}

fn finish<'a>(
    bump: &'a Bump,
    message: &'a [u8],
    (name, start, end, folded): (&'a str, usize, usize, bool),
) -> Field<'a> {
    let raw = &message[start..end];
    let value: &'a [u8] = if folded {
        // Remove every line end that precedes whitespace; keep the whitespace.
        let mut v = BumpVec::with_capacity_in(raw.len(), bump);
        let mut rest = raw;
        while let Some(nl) = memchr(b'\n', rest) {
            let keep = if nl > 0 && rest[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            v.extend_from_slice(&rest[..keep]);
            rest = &rest[nl + 1..];
        }
        v.extend_from_slice(rest);
        v.into_bump_slice()
    } else {
        raw
    };
    let lead = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    Field {
        name,
        value: &value[lead..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed<'a>(bump: &'a Bump, m: &'a [u8]) -> Vec<(&'a str, &'a [u8])> {
        HeaderFields::parse(bump, m)
            .iter()
            .map(|f| (f.name, f.value))
            .collect()
    }

    #[test]
    fn fields_in_order_and_body_excluded() {
        let bump = Bump::new();
        let m = b"Received: from x\r\nFrom: a@b\r\nSubject: hi\r\n\r\nNot: a header\r\n";
        let h = HeaderFields::parse(&bump, m);
        assert_eq!(
            h.iter().map(|f| (f.name, f.value)).collect::<Vec<_>>(),
            [
                ("Received", &b"from x"[..]),
                ("From", b"a@b"),
                ("Subject", b"hi")
            ]
        );
        assert_eq!(h.header_len(), m.len() - b"Not: a header\r\n".len());
        assert_eq!(h.get("subject"), Some(&b"hi"[..]));
        assert_eq!(h.get("not"), None);
    }

    #[test]
    fn folded_values_are_unfolded_keeping_the_whitespace() {
        let bump = Bump::new();
        let m = b"Subject: a\r\n  b\r\n\tc\r\nTo: x\r\n\r\n";
        assert_eq!(
            parsed(&bump, m),
            [("Subject", &b"a  b\tc"[..]), ("To", b"x")]
        );
    }

    #[test]
    fn encoded_words_stay_encoded_and_repeats_are_all_kept() {
        let bump = Bump::new();
        let m = b"Subject: =?UTF-8?B?w6k=?=\r\nReceived: 1\r\nReceived: 2\r\n\r\n";
        let h = HeaderFields::parse(&bump, m);
        assert_eq!(h.get("Subject"), Some(&b"=?UTF-8?B?w6k=?="[..]));
        assert_eq!(h.get_all("received").collect::<Vec<_>>(), [b"1", b"2"]);
    }

    #[test]
    fn stops_at_a_line_that_is_not_a_field() {
        let bump = Bump::new();
        // No empty line: the first non-field line starts the body.
        let m = b"From: a\r\nthis is body text\r\nTo: b\r\n";
        let h = HeaderFields::parse(&bump, m);
        assert_eq!(h.len(), 1);
        assert_eq!(h.header_len(), 9);
        // A name with a space in it is not a field name.
        let bump = Bump::new();
        assert!(HeaderFields::parse(&bump, b"Bad Name: x\r\n\r\n").is_empty());
        // Continuation before any field: nothing.
        assert!(HeaderFields::parse(&bump, b" x\r\nFrom: a\r\n\r\n").is_empty());
    }

    #[test]
    fn bare_lf_empty_values_and_no_final_line_end() {
        let bump = Bump::new();
        assert_eq!(
            parsed(&bump, b"A:\nB: x\n y\nC: z"),
            [("A", &b""[..]), ("B", b"x y"), ("C", b"z")]
        );
        assert!(HeaderFields::parse(&bump, b"").is_empty());
    }

    #[test]
    fn never_panics_and_stays_inside_the_header_block() {
        // Every prefix of a tricky message parses, and no value reaches past
        // the header block.
        let m = b"X: a\r\n\r\n b\r\nY:\r\n\t\r\n:\r\nZ: \xff\xfe\r\n\r\nbody";
        for n in 0..=m.len() {
            let bump = Bump::new();
            let h = HeaderFields::parse(&bump, &m[..n]);
            assert!(h.header_len() <= n);
            for f in h.iter() {
                assert!(f.value.len() <= h.header_len());
            }
        }
    }
}
