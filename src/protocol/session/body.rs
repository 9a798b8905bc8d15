//! Message bodies: the DATA decoder (dot-stuffing, RFC 5321 §4.5.2), BDAT
//! chunks (RFC 3030), and the text rules both apply ([`TextRules`]: bare CR
//! or LF, line length) unless the body is BINARYMIME.

use super::super::command::BodyType;
use super::super::reply::{self, Reply};
use super::{Answer, Effect, Event, Fault, Handled, Mode, Session, Tx};
use crate::config::{BareNewline, SmtpConfig};

/// The text rules of a 7BIT/8BITMIME body, the one checker DATA and BDAT
/// share: only CRLF ends a line, and a lone CR or LF gets the message
/// rejected under `bare_newline = reject` (RFC 5321 §2.3.8; SMTP
/// smuggling); no line may exceed smtp.max_text_line_bytes (RFC 5321
/// §4.5.3.1.6).
#[derive(Debug, Clone, Copy)]
pub(super) struct TextRules {
    reject_bare: bool,
    max_line: usize,
}

/// Where the line that a search continues ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum LineEnd {
    /// It ends before `end`, with CRLF (`crlf`) or a bare LF.
    Complete { end: usize, crlf: bool },
    /// Not in these bytes; resume the search at `search` with more input (a
    /// trailing CR stays unsearched: its LF may come next).
    Partial { search: usize },
}

impl TextRules {
    pub(super) fn new(cfg: &SmtpConfig) -> Self {
        Self {
            reject_bare: cfg.bare_newline == BareNewline::Reject,
            max_line: cfg.max_text_line_bytes,
        }
    }

    /// Finds the end of the line that continues at `buf[search..]`; the
    /// line started at `buf[line_start]`, after `prior` bytes of it seen
    /// in earlier input. A bare CR never ends a line; under the reject
    /// policy it sets `fault` (if none is set yet).
    ///
    /// Which fault a message gets must not depend on how its bytes were
    /// split into reads: a line that has reached the length limit by its
    /// bare CR (the CR included) is too long, since a read ending at that
    /// CR would have found it so ([`TextRules::partial`]) before seeing the
    /// byte that makes the CR bare.
    #[inline]
    pub(super) fn find_end(
        &self,
        buf: &[u8],
        mut search: usize,
        (line_start, prior): (usize, usize),
        fault: &mut Option<Fault>,
    ) -> LineEnd {
        loop {
            let Some(i) = memchr::memchr2(b'\r', b'\n', &buf[search..]) else {
                return LineEnd::Partial { search: buf.len() };
            };
            let at = search + i;
            if buf[at] == b'\n' {
                return LineEnd::Complete {
                    end: at + 1,
                    crlf: false,
                };
            }
            match buf.get(at + 1) {
                Some(b'\n') => {
                    return LineEnd::Complete {
                        end: at + 2,
                        crlf: true,
                    }
                }
                Some(_) => {
                    if self.reject_bare && fault.is_none() {
                        let len = prior + at + 1 - line_start;
                        *fault = Some(match self.partial(len) {
                            Some(long) => long,
                            None => Fault::BareNewline,
                        });
                    }
                    search = at + 1;
                }
                None => return LineEnd::Partial { search: at },
            }
        }
    }

    /// The verdict on a complete line of `len` bytes, terminator included.
    #[inline]
    pub(super) fn line(&self, len: usize, crlf: bool) -> Option<Fault> {
        if len > self.max_line {
            Some(Fault::LongLine)
        } else if !crlf && self.reject_bare {
            Some(Fault::BareNewline)
        } else {
            None
        }
    }

    /// The verdict on a line not finished after `len` bytes: at the limit
    /// it can only end too long.
    #[inline]
    pub(super) fn partial(&self, len: usize) -> Option<Fault> {
        (len >= self.max_line).then_some(Fault::LongLine)
    }
}

/// [`TextRules`] over BDAT chunks: BDAT has no dot-stuffing, but a bare LF
/// or CR, or an overlong line, stored here would reach downstream MTAs just
/// the same (only BODY=BINARYMIME lifts them, RFC 3030 §3). Chunk bytes are
/// handed out as they arrive, so the state of the unfinished line carries
/// across chunks and reads.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct BdatText {
    /// Bytes of the current line so far (no LF seen yet).
    line_len: usize,
    /// The previous chunk ended in CR: this one must start with LF.
    pub(super) cr_pending: bool,
}

impl BdatText {
    /// Checks the next bytes of the body; the first fault, if any.
    fn check(&mut self, chunk: &[u8], rules: TextRules) -> Option<Fault> {
        let &first = chunk.first()?;
        let mut start = 0;
        if std::mem::take(&mut self.cr_pending) {
            if first == b'\n' {
                if let Some(f) = rules.line(self.line_len + 1, true) {
                    return Some(f);
                }
                self.line_len = 0;
                start = 1;
            } else if rules.reject_bare {
                return Some(Fault::BareNewline);
            }
        }
        let mut fault = None;
        loop {
            match rules.find_end(chunk, start, (start, self.line_len), &mut fault) {
                LineEnd::Complete { end, crlf } => {
                    if fault.is_none() {
                        fault = rules.line(self.line_len + end - start, crlf);
                    }
                    if fault.is_some() {
                        return fault;
                    }
                    self.line_len = 0;
                    start = end;
                }
                LineEnd::Partial { search } => {
                    if fault.is_some() {
                        return fault;
                    }
                    self.cr_pending = search < chunk.len();
                    self.line_len += chunk.len() - start;
                    return rules.partial(self.line_len);
                }
            }
        }
    }
}

/// The DATA decoder's position in one call's input.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Start of the body bytes not yet handed out.
    run: usize,
    /// Start of the line being examined.
    pos: usize,
    /// The line at `pos` starts a line of the body (the previous one ended
    /// in CRLF).
    at_line_start: bool,
    fault: Option<Fault>,
}

impl Session {
    /// DATA body decoding. Returns bytes consumed and, if the caller must
    /// act, the event; `None` means the body ended with a rejection reply and
    /// command handling goes on. Body slices are runs of whole lines between
    /// dot-stuffed lines, borrowed from `input`; a partial last line stays
    /// unconsumed (the read buffer is larger than the longest line).
    pub(super) fn data<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> (usize, Option<Event<'a>>) {
        let Mode::Data {
            at_line_start,
            fault,
        } = self.mode
        else {
            unreachable!("data() outside Mode::Data");
        };
        let faulted_before = fault.is_some();
        let mut c = Cursor {
            run: 0,
            pos: 0,
            at_line_start,
            fault,
        };
        let mut search = self.data_searched.min(input.len());
        // Copies the loop can keep in registers.
        let (text, max_bytes) = (self.text, self.cfg.max_message_bytes);
        loop {
            let (end, crlf) = match text.find_end(input, search, (c.pos, 0), &mut c.fault) {
                LineEnd::Complete { end, crlf } => (end, crlf),
                LineEnd::Partial { search } => {
                    return self.data_partial(input, c, search, faulted_before)
                }
            };
            let line = &input[c.pos..end];
            if c.at_line_start && line[0] == b'.' {
                // A dot line: first hand out the run before it, so that the
                // run stays one contiguous slice of the input.
                if c.run < c.pos && c.fault.is_none() {
                    return self.data_pause(c, Event::Body(&input[c.run..c.pos]));
                }
                if line == b".\r\n" {
                    // RFC 5321 §4.1.1.4: <CRLF>.<CRLF> ends the data.
                    self.data_searched = 0;
                    return (end, self.data_end(c.fault, out));
                }
                // RFC 5321 §4.5.2: drop the stuffed dot.
                c.run = c.pos + 1;
            }
            if c.fault.is_none() {
                c.fault = text.line(line.len(), crlf);
            }
            if c.fault.is_none() {
                self.body_bytes += (end - c.run.max(c.pos)) as u64;
                if self.body_bytes > max_bytes {
                    c.fault = Some(Fault::TooBig);
                }
            }
            c.at_line_start = crlf;
            c.pos = end;
            search = end;
            if c.fault.is_some() {
                c.run = c.pos;
                if !faulted_before {
                    return self.data_pause(c, Event::MessageAbort);
                }
            }
        }
    }

    /// Stops decoding at a line boundary to return `ev`.
    fn data_pause<'a>(&mut self, c: Cursor, ev: Event<'a>) -> (usize, Option<Event<'a>>) {
        self.data_searched = 0;
        self.mode = Mode::Data {
            at_line_start: c.at_line_start,
            fault: c.fault,
        };
        (c.pos, Some(ev))
    }

    /// No line end in the input after `c.pos` (searched up to `search`):
    /// hand out what is complete, keep the partial line unconsumed.
    fn data_partial<'a>(
        &mut self,
        input: &'a [u8],
        mut c: Cursor,
        search: usize,
        faulted_before: bool,
    ) -> (usize, Option<Event<'a>>) {
        let partial = input.len() - c.pos;
        if c.fault.is_none() {
            c.fault = self.text.partial(partial);
        }
        // A doomed message need not carry its partial line, unless it could
        // still be the start of the terminator ".\r\n". A trailing CR stays
        // (`search` points at it): its LF may come next, and that CRLF
        // starts the line the terminator is on.
        if c.fault.is_some() && (partial >= 3 || !c.at_line_start) && search > c.pos {
            c.at_line_start = false;
            c.pos = search;
            c.run = c.pos;
        }
        self.data_searched = search - c.pos;
        self.mode = Mode::Data {
            at_line_start: c.at_line_start,
            fault: c.fault,
        };
        if c.fault.is_some() && !faulted_before {
            return (c.pos, Some(Event::MessageAbort));
        }
        if c.run < c.pos && c.fault.is_none() {
            return (c.pos, Some(Event::Body(&input[c.run..c.pos])));
        }
        (c.pos, Some(Event::NeedInput))
    }

    /// The terminator arrived: commit the message, or reject it now that its
    /// end is reached (its `MessageAbort` went out when the fault appeared).
    fn data_end(&mut self, fault: Option<Fault>, out: &mut Vec<u8>) -> Option<Event<'static>> {
        match fault {
            None => {
                self.mode = Mode::AwaitCommit;
                self.respond(out, Handled::effect(Effect::MessageEnd))
            }
            Some(f) => {
                self.mode = Mode::Commands;
                self.end_transaction();
                self.respond(out, Handled::error(f.reply()))
            }
        }
    }

    /// The octets of a BDAT chunk: handed out as body bytes (checked
    /// against the size limit and, unless BINARYMIME, the text rules), or
    /// dropped if the chunk or message is rejected; at the chunk's end, its
    /// reply.
    pub(super) fn bdat<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> (usize, Option<Event<'a>>) {
        let Mode::BdatChunk {
            remaining,
            last,
            reject,
        } = self.mode
        else {
            unreachable!("bdat() outside Mode::BdatChunk");
        };
        let take = remaining.min(input.len() as u64) as usize;
        let chunk = &input[..take];
        let remaining = remaining - take as u64;
        self.mode = Mode::BdatChunk {
            remaining,
            last,
            reject,
        };
        if reject.is_none() && take > 0 {
            self.body_bytes += take as u64;
            let fault = if self.body_bytes > self.cfg.max_message_bytes {
                Some(Fault::TooBig)
            } else if self.arena.params.body != BodyType::BinaryMime {
                self.bdat_text.check(chunk, self.text)
            } else {
                None
            };
            let Some(f) = fault else {
                return (take, Some(Event::Body(chunk)));
            };
            self.mode = Mode::BdatChunk {
                remaining,
                last,
                reject: Some(f.reply()),
            };
            return (take, Some(Event::MessageAbort));
        }
        if remaining > 0 {
            return (take, Some(Event::NeedInput));
        }
        (take, self.bdat_chunk_end(last, reject, out))
    }

    /// A BDAT chunk is complete: its reply, or the end of the message.
    fn bdat_chunk_end(
        &mut self,
        last: bool,
        reject: Option<Reply>,
        out: &mut Vec<u8>,
    ) -> Option<Event<'static>> {
        self.mode = Mode::Commands;
        let binary = self.arena.params.body == BodyType::BinaryMime;
        let handled = match reject {
            Some(r) if r == reply::NEED_RCPT => self.no_recipients(),
            Some(r) => {
                if self.tx == Tx::Chunking {
                    self.end_transaction();
                }
                Handled::error(r)
            }
            // A CR that ends the message is a bare CR.
            None if last && self.bdat_text.cr_pending && self.text.reject_bare && !binary => {
                self.end_transaction();
                Handled::with(Answer::Error(reply::BARE_NEWLINE), Effect::MessageAbort)
            }
            None if last => {
                self.mode = Mode::AwaitCommit;
                Handled::effect(Effect::MessageEnd)
            }
            None => Handled::with(Answer::BdatOk(self.body_bytes), Effect::Continue),
        };
        let before = out.len();
        let ev = self.respond(out, handled);
        self.count_command(|| super::tally::BDAT, out, before);
        ev
    }
}
