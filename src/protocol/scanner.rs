//! Finding line ends with memchr, over a whole buffer, across reads.
//!
//! The caller keeps the unconsumed tail of its read buffer (a partial line)
//! at the front of the next input. [`LineScanner`] remembers how much of that
//! tail it already searched, so a line that arrives in many small reads is
//! scanned once, not once per read.
//!
//! Only LF is searched for: every line end contains one. Whether the LF was
//! part of CRLF is the caller's question ([`Line::crlf`]), because DATA and
//! command lines answer it differently.

/// One complete line found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Offset one past the LF: the line is `buf[..end]`.
    pub end: usize,
    /// The LF was preceded by CR.
    pub crlf: bool,
}

impl Line {
    /// Length of the line's content without its terminator.
    pub fn content_len(&self) -> usize {
        self.end - 1 - usize::from(self.crlf)
    }
}

/// Resumable LF search over a buffer whose front is the same partial line
/// between calls.
#[derive(Debug, Default, Clone)]
pub struct LineScanner {
    /// Bytes at the front of the next input already known to hold no LF.
    searched: usize,
}

impl LineScanner {
    /// A scanner with nothing searched yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Finds the first line in `buf`. `None` means "need more bytes"; the
    /// scanner then remembers that `buf` holds no LF, so the next call (with
    /// `buf` extended) searches only the new bytes.
    ///
    /// The caller must either consume the returned line (and call again with
    /// the rest) or pass a buffer that begins with the same bytes.
    #[inline]
    pub fn next_line(&mut self, buf: &[u8]) -> Option<Line> {
        let from = self.searched.min(buf.len());
        match memchr::memchr(b'\n', &buf[from..]) {
            Some(i) => {
                let lf = from + i;
                self.searched = 0;
                Some(Line {
                    end: lf + 1,
                    crlf: lf > 0 && buf[lf - 1] == b'\r',
                })
            }
            None => {
                self.searched = buf.len();
                None
            }
        }
    }

    /// How many bytes of the pending partial line have been searched.
    pub fn pending(&self) -> usize {
        self.searched
    }

    /// Forget the pending partial line (the caller consumed or dropped it).
    pub fn reset(&mut self) {
        self.searched = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_lines(buf: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for (i, &b) in buf.iter().enumerate() {
            if b == b'\n' {
                out.push(Line {
                    end: i + 1,
                    crlf: i > 0 && buf[i - 1] == b'\r',
                });
            }
        }
        out
    }

    /// Feeds `buf` in reads of the given sizes the way a connection does:
    /// the unconsumed tail stays at the front of the next input.
    fn chunked_lines(buf: &[u8], cuts: &[usize]) -> Vec<Line> {
        let mut sc = LineScanner::new();
        let mut out = Vec::new();
        let mut start = 0; // first unconsumed byte
        let mut avail = 0; // bytes "read" so far
        let mut cuts = cuts.iter().copied().chain(std::iter::once(buf.len()));
        loop {
            match sc.next_line(&buf[start..avail]) {
                Some(l) => {
                    out.push(Line {
                        end: start + l.end,
                        crlf: l.crlf,
                    });
                    start += l.end;
                }
                None => match cuts.next() {
                    Some(c) if avail < buf.len() => avail = c.clamp(avail, buf.len()),
                    _ => return out,
                },
            }
        }
    }

    #[test]
    fn finds_crlf_and_bare_lf() {
        let mut sc = LineScanner::new();
        assert_eq!(
            sc.next_line(b"HELO x\r\nrest"),
            Some(Line { end: 8, crlf: true })
        );
        assert_eq!(
            sc.next_line(b"bare\nrest"),
            Some(Line {
                end: 5,
                crlf: false
            })
        );
        assert_eq!(
            sc.next_line(b"\n"),
            Some(Line {
                end: 1,
                crlf: false
            })
        );
        assert_eq!(sc.next_line(b"no end"), None);
        assert_eq!(sc.pending(), 6);
        assert_eq!(
            sc.next_line(b"no end\r\n"),
            Some(Line { end: 8, crlf: true })
        );
    }

    #[test]
    fn split_crlf_across_reads() {
        let mut sc = LineScanner::new();
        assert_eq!(sc.next_line(b"abc\r"), None);
        assert_eq!(sc.next_line(b"abc\r\n"), Some(Line { end: 5, crlf: true }));
    }

    proptest! {
        #[test]
        fn any_split_matches_naive(
            buf in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..300),
            mut cuts in proptest::collection::vec(0usize..300, 0..20),
        ) {
            cuts.sort_unstable();
            prop_assert_eq!(chunked_lines(&buf, &cuts), naive_lines(&buf));
        }
    }
}
