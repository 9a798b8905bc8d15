//! The SMTP state machine: bytes in, reply bytes and events out.
//!
//! # Call order
//!
//! 1. [`Session::new`] writes the greeting into the caller's output buffer.
//! 2. Read bytes; call [`Session::handle_input`] with *all unconsumed bytes*
//!    (the unconsumed tail of the previous call first, then what was read).
//!    It returns how many bytes it consumed and one [`Event`]:
//!    * [`Event::NeedInput`]: every complete line was handled. Write the
//!      output buffer to the socket (one write per batch: PIPELINING), keep
//!      the unconsumed tail, read more, call again.
//!    * [`Event::MessageStart`]: a body begins; open a spool record for
//!      [`Session::envelope`]. Call again with the rest of the input.
//!    * [`Event::Body`]: body bytes, dot-unstuffed, borrowed from the input;
//!      append them to the record. Call again with the rest.
//!    * [`Event::MessageAbort`]: the message will be rejected (size, bare
//!      newline, long line, RSET mid-BDAT): drop the record. Call again.
//!    * [`Event::MessageEnd`]: the body is complete and acceptable. Make the
//!      record durable, then call [`Session::handle_commit`] with the queue id
//!      (or the error) — that writes the `250` (or `451`/`452`) reply. Until
//!      then do not call `handle_input`: the reply must wait for the disk.
//!    * [`Event::Close`]: write the output buffer, then close. Any record
//!      still open is abandoned.
//! 3. When the read deadline ([`Session::read_timeout`]) passes, call
//!    [`Session::handle_timeout`]; at server shutdown, [`Session::handle_shutdown`].
//!
//! The engine never reads the clock and never allocates per command once its
//! buffers have grown to the connection's working size.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::command::{self, BodyType, Command};
use super::envelope::{Envelope, TxArena};
use super::reply::{self, Reply};
use super::scanner::LineScanner;
use crate::config::{BareNewline, SmtpConfig};

/// What the runtime knows about the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo {
    /// Peer address of the connection.
    pub peer: Option<SocketAddr>,
}

/// Why the runtime could not make a message durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// Out of space (or under the free-space floor): `452 4.3.1`.
    SpoolFull,
    /// A write or fsync failed: `451 4.3.0`.
    Io,
}

/// What the caller must do next; see the module docs for the call order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// All complete input is handled: flush replies, read more.
    NeedInput,
    /// A message body begins.
    MessageStart,
    /// Body bytes after dot-unstuffing, borrowed from the input.
    Body(&'a [u8]),
    /// The message in progress will not be accepted: discard it.
    MessageAbort,
    /// The body is complete: commit it, then call `handle_commit`.
    MessageEnd,
    /// Flush replies, then close the connection.
    Close,
}

/// Why a message that was being received will be rejected at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    TooBig,
    LongLine,
    BareNewline,
}

impl Fault {
    fn reply(self) -> Reply {
        match self {
            Fault::TooBig => reply::MESSAGE_TOO_BIG,
            Fault::LongLine => reply::TEXT_LINE_TOO_LONG,
            Fault::BareNewline => reply::BARE_NEWLINE,
        }
    }
}

/// What the input bytes currently mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Command lines.
    Commands,
    /// Inside a command line longer than the limit: drop bytes to its LF.
    DiscardLine,
    /// DATA body until `<CRLF>.<CRLF>`.
    Data {
        /// The next byte starts a line (the previous one ended in CRLF):
        /// only there may a dot be stuffing or the terminator.
        at_line_start: bool,
        /// Set once the message is doomed; bytes are then dropped.
        fault: Option<Fault>,
    },
    /// The octets of one BDAT chunk.
    BdatChunk {
        remaining: u64,
        last: bool,
        /// `None`: the bytes belong to the message; `Some(r)`: drop them,
        /// then reply `r` (RFC 3030 §2: the reply follows the chunk).
        reject: Option<Reply>,
    },
    /// `MessageEnd` was returned; waiting for `handle_commit`.
    AwaitCommit,
    /// The session is over.
    Closed,
}

/// Where the mail transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    /// No MAIL yet.
    Idle,
    /// MAIL (and maybe RCPTs) given.
    Envelope,
    /// BDAT chunks are being received; DATA is now forbidden.
    Chunking,
}

/// Whether and how the client introduced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// One SMTP session: the protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    cfg: Rc<SmtpConfig>,
    client: ClientInfo,
    mode: Mode,
    tx: Tx,
    greeted: Greeted,
    helo: String,
    arena: TxArena,
    scanner: LineScanner,
    /// Body bytes of the message in progress (after unstuffing).
    body_bytes: u64,
    /// Bytes of the pending partial DATA line already searched for CR/LF.
    data_searched: usize,
    /// Text checks over BDAT chunks (bare newlines, line length).
    bdat_text: BdatText,
    errors: u32,
    shutdown_requested: bool,
    messages_accepted: u64,
}

impl Session {
    /// Starts a session and writes the `220` greeting into `out`.
    pub fn new(cfg: Rc<SmtpConfig>, client: ClientInfo, out: &mut Vec<u8>) -> Self {
        reply::write_greeting(out, &cfg.hostname);
        Self {
            cfg,
            client,
            mode: Mode::Commands,
            tx: Tx::Idle,
            greeted: Greeted::No,
            helo: String::new(),
            arena: TxArena::default(),
            scanner: LineScanner::new(),
            body_bytes: 0,
            data_searched: 0,
            bdat_text: BdatText::default(),
            errors: 0,
            shutdown_requested: false,
            messages_accepted: 0,
        }
    }

    /// The envelope of the transaction in progress (valid from
    /// [`Event::MessageStart`] until the commit reply).
    pub fn envelope(&self) -> Envelope<'_> {
        let protocol = match (self.greeted, self.arena.params.smtputf8) {
            (_, true) => "UTF8SMTP",
            (Greeted::Ehlo, false) => "ESMTP",
            _ => "SMTP",
        };
        Envelope::new(&self.arena, self.client.peer, &self.helo, protocol)
    }

    /// Body bytes received so far for the message in progress.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Messages acknowledged with `250` on this session.
    pub fn messages_accepted(&self) -> u64 {
        self.messages_accepted
    }

    /// The session has ended; nothing more will be read.
    pub fn is_closed(&self) -> bool {
        self.mode == Mode::Closed
    }

    /// `MessageEnd` was returned and `handle_commit` is owed.
    pub fn awaiting_commit(&self) -> bool {
        self.mode == Mode::AwaitCommit
    }

    /// A mail transaction is under way (MAIL given, or a body in progress).
    pub fn in_transaction(&self) -> bool {
        self.tx != Tx::Idle || !matches!(self.mode, Mode::Commands | Mode::DiscardLine)
    }

    /// How long to wait for the next read before [`Session::handle_timeout`].
    pub fn read_timeout(&self) -> Duration {
        match self.mode {
            Mode::Data { .. } | Mode::BdatChunk { .. } => self.cfg.data_timeout,
            _ => self.cfg.command_timeout,
        }
    }

    /// The read deadline passed: `421 4.4.2` and close.
    pub fn handle_timeout(&mut self, out: &mut Vec<u8>) {
        if self.mode != Mode::Closed {
            out.extend_from_slice(reply::TIMEOUT);
            self.mode = Mode::Closed;
        }
    }

    /// Ends the session with `reply` (a `421`), e.g. lifetime exceeded.
    pub fn close_with(&mut self, out: &mut Vec<u8>, reply: Reply) {
        if self.mode != Mode::Closed {
            out.extend_from_slice(reply);
            self.mode = Mode::Closed;
        }
    }

    /// The server is shutting down. An idle session gets `421 4.3.2` now and
    /// `true` (close it); one inside a transaction is let finish and closes
    /// with `421` afterwards (returns `false`).
    pub fn handle_shutdown(&mut self, out: &mut Vec<u8>) -> bool {
        self.shutdown_requested = true;
        if self.mode == Mode::Closed {
            return true;
        }
        if !self.in_transaction() {
            self.close_with(out, reply::SHUTTING_DOWN);
            return true;
        }
        false
    }

    /// The runtime finished committing the message announced by
    /// [`Event::MessageEnd`]; writes the end-of-data reply.
    pub fn handle_commit(&mut self, result: Result<&str, CommitError>, out: &mut Vec<u8>) {
        debug_assert_eq!(
            self.mode,
            Mode::AwaitCommit,
            "handle_commit without MessageEnd"
        );
        if self.mode != Mode::AwaitCommit {
            return;
        }
        match result {
            Ok(id) => {
                reply::write_queued(out, id);
                self.messages_accepted += 1;
            }
            Err(CommitError::SpoolFull) => out.extend_from_slice(reply::SPOOL_FULL),
            Err(CommitError::Io) => out.extend_from_slice(reply::SPOOL_ERROR),
        }
        self.end_transaction();
        self.mode = Mode::Commands;
    }

    fn end_transaction(&mut self) {
        self.tx = Tx::Idle;
        self.arena.clear();
        self.body_bytes = 0;
    }

    /// Consumes input; see the module docs. Returns the bytes consumed and
    /// what the caller must do next.
    pub fn handle_input<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Event<'a>) {
        let mut pos = 0;
        loop {
            match self.mode {
                Mode::Commands => {
                    let Some(line) = self.scanner.next_line(&input[pos..]) else {
                        if input.len() - pos >= self.cfg.max_command_line_bytes {
                            // RFC 5321 §4.5.3.1.4: drop the rest of this line
                            // without buffering it; reply once it ends.
                            self.scanner.reset();
                            self.mode = Mode::DiscardLine;
                            pos = input.len();
                            continue;
                        }
                        if self.shutdown_requested && !self.in_transaction() {
                            self.close_with(out, reply::SHUTTING_DOWN);
                            return (pos, Event::Close);
                        }
                        return (pos, Event::NeedInput);
                    };
                    let start = pos;
                    pos += line.end;
                    if line.content_len() + 2 > self.cfg.max_command_line_bytes {
                        self.fail(out, reply::LINE_TOO_LONG);
                        continue;
                    }
                    let text = &input[start..start + line.content_len()];
                    if let Some(ev) = self.handle_command(text, out) {
                        return (pos, ev);
                    }
                }
                Mode::DiscardLine => match memchr::memchr(b'\n', &input[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.mode = Mode::Commands;
                        self.fail(out, reply::LINE_TOO_LONG);
                    }
                    None => return (input.len(), Event::NeedInput),
                },
                Mode::Data { .. } => {
                    let (used, ev) = self.data(&input[pos..], out);
                    pos += used;
                    if let Some(ev) = ev {
                        return (pos, ev);
                    }
                }
                Mode::BdatChunk {
                    remaining,
                    last,
                    reject,
                } => {
                    let avail = (input.len() - pos) as u64;
                    let take = remaining.min(avail) as usize;
                    let chunk = &input[pos..pos + take];
                    pos += take;
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
                            self.bdat_text.scan(chunk, &self.cfg)
                        } else {
                            None
                        };
                        if let Some(f) = fault {
                            self.mode = Mode::BdatChunk {
                                remaining,
                                last,
                                reject: Some(f.reply()),
                            };
                            return (pos, Event::MessageAbort);
                        }
                        return (pos, Event::Body(chunk));
                    }
                    if remaining > 0 {
                        return (pos, Event::NeedInput);
                    }
                    // The chunk is complete.
                    self.mode = Mode::Commands;
                    match reject {
                        Some(r) => {
                            if self.tx == Tx::Chunking {
                                self.end_transaction();
                            }
                            self.fail(out, r);
                        }
                        // A CR that ends the message is a bare CR.
                        None if last
                            && self.bdat_text.cr_pending
                            && self.cfg.bare_newline == BareNewline::Reject
                            && self.arena.params.body != BodyType::BinaryMime =>
                        {
                            self.end_transaction();
                            self.fail(out, reply::BARE_NEWLINE);
                            return (pos, Event::MessageAbort);
                        }
                        None if last => {
                            self.mode = Mode::AwaitCommit;
                            return (pos, Event::MessageEnd);
                        }
                        None => reply::write_bdat_ok(out, self.body_bytes),
                    }
                }
                Mode::AwaitCommit => {
                    debug_assert!(false, "handle_input while awaiting commit");
                    return (pos, Event::NeedInput);
                }
                Mode::Closed => return (input.len(), Event::Close),
            }
        }
    }

    /// Writes an error reply and counts it; past the limit, closes.
    fn fail(&mut self, out: &mut Vec<u8>, r: Reply) {
        out.extend_from_slice(r);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.close_with(out, reply::TOO_MANY_ERRORS);
        }
    }

    /// Like `fail`, but reports `Close` when the error limit was reached.
    fn fail_event(&mut self, out: &mut Vec<u8>, r: Reply) -> Option<Event<'static>> {
        self.fail(out, r);
        (self.mode == Mode::Closed).then_some(Event::Close)
    }

    /// Abandons a BDAT message in progress; the caller must drop its record.
    fn reset_transaction(&mut self) -> Option<Event<'static>> {
        let was_chunking = self.tx == Tx::Chunking;
        self.end_transaction();
        was_chunking.then_some(Event::MessageAbort)
    }

    fn handle_command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Event<'static>> {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            // Without a valid size we cannot tell where the chunk that
            // follows ends; reading it as commands would let its bytes
            // smuggle commands in. Close instead.
            Err(command::ParseError::BdatSyntax) => {
                out.extend_from_slice(reply::BDAT_SYNTAX);
                self.close_with(out, reply::BDAT_UNKNOWN_SIZE);
                return Some(Event::Close);
            }
            Err(e) => return self.fail_event(out, e.reply()),
        };
        match cmd {
            Command::Helo(name) | Command::Ehlo(name) => {
                let ehlo = matches!(cmd, Command::Ehlo(_));
                self.helo.clear();
                self.helo.push_str(name);
                self.greeted = if ehlo { Greeted::Ehlo } else { Greeted::Helo };
                if ehlo {
                    reply::write_ehlo(out, &self.cfg.hostname, self.cfg.max_message_bytes);
                } else {
                    reply::write_helo(out, &self.cfg.hostname);
                }
                // RFC 5321 §4.1.4: HELO/EHLO resets any transaction.
                self.reset_transaction()
            }
            Command::Mail {
                from,
                params,
                raw_params,
            } => {
                // Shutting down: no new transaction (one pipelined right
                // after the last message would otherwise hold the session
                // open until the grace period cuts it off).
                if self.shutdown_requested {
                    self.close_with(out, reply::SHUTTING_DOWN);
                    return Some(Event::Close);
                }
                if self.greeted == Greeted::No {
                    return self.fail_event(out, reply::NEED_HELO);
                }
                if self.tx != Tx::Idle {
                    return self.fail_event(out, reply::NESTED_MAIL);
                }
                // Parameters belong to extensions, which HELO did not negotiate.
                if self.greeted == Greeted::Helo && !raw_params.is_empty() {
                    return self.fail_event(out, reply::BAD_PARAM);
                }
                if !from.is_ascii() && !params.smtputf8 {
                    return self.fail_event(out, reply::UTF8_NOT_ALLOWED);
                }
                // RFC 1870 §6.1: refuse a declared size over the limit up front.
                if params.size.is_some_and(|s| s > self.cfg.max_message_bytes) {
                    return self.fail_event(out, reply::MESSAGE_TOO_BIG);
                }
                self.arena.set_mail(from, params, raw_params);
                self.tx = Tx::Envelope;
                out.extend_from_slice(reply::SENDER_OK);
                None
            }
            Command::Rcpt { to } => {
                if self.tx != Tx::Envelope {
                    return self.fail_event(out, reply::NEED_MAIL);
                }
                if !to.is_ascii() && !self.arena.params.smtputf8 {
                    return self.fail_event(out, reply::UTF8_NOT_ALLOWED);
                }
                if !self.accepts_domain(to) {
                    return self.fail_event(out, reply::RELAY_DENIED);
                }
                if self.arena.rcpt_count() >= self.cfg.max_recipients {
                    // RFC 5321 §4.5.3.1.10: 452, and not a protocol error.
                    out.extend_from_slice(reply::TOO_MANY_RECIPIENTS);
                    return None;
                }
                self.arena.add_rcpt(to);
                out.extend_from_slice(reply::RECIPIENT_OK);
                None
            }
            Command::Data => {
                match self.tx {
                    Tx::Idle => return self.fail_event(out, reply::NEED_MAIL),
                    Tx::Chunking => return self.fail_event(out, reply::DATA_AFTER_BDAT),
                    Tx::Envelope => {}
                }
                if self.arena.rcpt_count() == 0 {
                    return self.fail_event(out, reply::NEED_RCPT);
                }
                if self.arena.params.body == BodyType::BinaryMime {
                    return self.fail_event(out, reply::BINARYMIME_NEEDS_BDAT);
                }
                out.extend_from_slice(reply::START_DATA);
                self.body_bytes = 0;
                self.data_searched = 0;
                self.mode = Mode::Data {
                    at_line_start: true,
                    fault: None,
                };
                Some(Event::MessageStart)
            }
            Command::Bdat { size, last } => {
                // RFC 3030 §2: the chunk's octets follow whatever the reply,
                // so they are always consumed, never read as commands.
                let reject = match self.tx {
                    // CHUNKING is advertised only in the EHLO reply.
                    _ if self.greeted != Greeted::Ehlo => Some(reply::BDAT_NEEDS_EHLO),
                    Tx::Idle => Some(reply::NEED_MAIL),
                    Tx::Envelope if self.arena.rcpt_count() == 0 => Some(reply::NEED_RCPT),
                    _ => None,
                };
                self.mode = Mode::BdatChunk {
                    remaining: size,
                    last,
                    reject,
                };
                if reject.is_none() && self.tx == Tx::Envelope {
                    self.tx = Tx::Chunking;
                    self.body_bytes = 0;
                    self.bdat_text = BdatText::default();
                    return Some(Event::MessageStart);
                }
                None
            }
            Command::Rset => {
                out.extend_from_slice(reply::OK);
                self.reset_transaction()
            }
            Command::Noop => {
                out.extend_from_slice(reply::OK);
                None
            }
            Command::Quit => {
                self.close_with(out, reply::BYE);
                Some(Event::Close)
            }
            Command::Vrfy => {
                out.extend_from_slice(reply::VRFY);
                None
            }
            Command::Help => {
                out.extend_from_slice(reply::HELP);
                None
            }
            Command::NotImplemented => self.fail_event(out, reply::NOT_IMPLEMENTED),
            Command::Http => {
                self.close_with(out, reply::HTTP_REQUEST);
                Some(Event::Close)
            }
        }
    }

    /// Recipient domain policy: no open relay (RFC 5321 §3.6.2).
    fn accepts_domain(&self, to: &str) -> bool {
        match to.rsplit_once('@') {
            // Only `postmaster` parses without a domain (§4.5.1).
            None => true,
            Some((_, domain)) => self
                .cfg
                .accepted_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain)),
        }
    }

    /// DATA body decoding. Returns bytes consumed and, if the caller must
    /// act, the event; `None` means the body ended with a rejection reply and
    /// command handling goes on. Body slices are runs of whole lines between
    /// dot-stuffed lines, borrowed from `input`; a partial last line stays
    /// unconsumed (the read buffer is larger than the longest line).
    fn data<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Option<Event<'a>>) {
        let Mode::Data {
            mut at_line_start,
            mut fault,
        } = self.mode
        else {
            unreachable!("data() outside Mode::Data");
        };
        let faulted_before = fault.is_some();
        let reject_bare = self.cfg.bare_newline == BareNewline::Reject;
        let max_line = self.cfg.max_text_line_bytes;
        // `run` starts the body bytes not yet handed out; `pos` the line
        // being examined; `search` the first byte not yet searched for CR/LF.
        let mut run = 0;
        let mut pos = 0;
        let mut search = self.data_searched.min(input.len());
        loop {
            // The end of the line at `pos`: CRLF, or a bare LF. A bare CR
            // never ends a line (RFC 5321 §2.3.8; SMTP smuggling).
            let mut end = None;
            let mut crlf = false;
            loop {
                let Some(i) = memchr::memchr2(b'\r', b'\n', &input[search..]) else {
                    search = input.len();
                    break;
                };
                let at = search + i;
                if input[at] == b'\n' {
                    end = Some(at + 1);
                    break;
                }
                match input.get(at + 1) {
                    Some(b'\n') => {
                        end = Some(at + 2);
                        crlf = true;
                        break;
                    }
                    Some(_) => {
                        if reject_bare && fault.is_none() {
                            fault = Some(Fault::BareNewline);
                        }
                        search = at + 1;
                    }
                    // A CR at the very end: look at it again with more input.
                    None => {
                        search = at;
                        break;
                    }
                }
            }
            let Some(end) = end else {
                let partial = input.len() - pos;
                if fault.is_none() && partial >= max_line {
                    fault = Some(Fault::LongLine);
                }
                // A doomed message need not carry its partial line, unless
                // it could still be the start of the terminator ".\r\n".
                // A trailing CR stays (`search` points at it): its LF may
                // come next, and that CRLF starts the line the terminator is on.
                if fault.is_some() && (partial >= 3 || !at_line_start) && search > pos {
                    at_line_start = false;
                    pos = search;
                    run = pos;
                }
                self.data_searched = search - pos;
                self.mode = Mode::Data {
                    at_line_start,
                    fault,
                };
                if fault.is_some() && !faulted_before {
                    return (pos, Some(Event::MessageAbort));
                }
                if run < pos && fault.is_none() {
                    return (pos, Some(Event::Body(&input[run..pos])));
                }
                return (pos, Some(Event::NeedInput));
            };
            let line = &input[pos..end];
            if at_line_start && line[0] == b'.' {
                // A dot line: first hand out the run before it, so that the
                // run stays one contiguous slice of the input.
                if run < pos && fault.is_none() {
                    self.data_searched = 0;
                    self.mode = Mode::Data {
                        at_line_start,
                        fault,
                    };
                    return (pos, Some(Event::Body(&input[run..pos])));
                }
                if line == b".\r\n" {
                    // RFC 5321 §4.1.1.4: <CRLF>.<CRLF> ends the data.
                    self.data_searched = 0;
                    return match fault {
                        None => {
                            self.mode = Mode::AwaitCommit;
                            (end, Some(Event::MessageEnd))
                        }
                        Some(f) => {
                            // MessageAbort went out when the fault appeared.
                            self.mode = Mode::Commands;
                            self.end_transaction();
                            self.fail(out, f.reply());
                            (end, (self.mode == Mode::Closed).then_some(Event::Close))
                        }
                    };
                }
                // RFC 5321 §4.5.2: drop the stuffed dot.
                run = pos + 1;
            }
            if fault.is_none() {
                if line.len() > max_line {
                    fault = Some(Fault::LongLine);
                } else if !crlf && reject_bare {
                    fault = Some(Fault::BareNewline);
                } else {
                    self.body_bytes += (end - run.max(pos)) as u64;
                    if self.body_bytes > self.cfg.max_message_bytes {
                        fault = Some(Fault::TooBig);
                    }
                }
            }
            at_line_start = crlf;
            pos = end;
            search = end;
            if fault.is_some() {
                run = pos;
                if !faulted_before {
                    self.data_searched = 0;
                    self.mode = Mode::Data {
                        at_line_start,
                        fault,
                    };
                    return (pos, Some(Event::MessageAbort));
                }
            }
        }
    }
}

/// The text rules of DATA applied to BDAT chunks of a 7BIT/8BITMIME body:
/// BDAT has no dot-stuffing, but a bare LF or CR, or an overlong line,
/// stored here would reach downstream MTAs just the same (only
/// BODY=BINARYMIME lifts them, RFC 3030 §3). State carries across chunks.
#[derive(Debug, Default, Clone, Copy)]
struct BdatText {
    /// Bytes of the current line so far (no LF seen yet).
    line_len: usize,
    /// The previous chunk ended in CR: this one must start with LF.
    cr_pending: bool,
}

impl BdatText {
    fn scan(&mut self, chunk: &[u8], cfg: &SmtpConfig) -> Option<Fault> {
        let reject_bare = cfg.bare_newline == BareNewline::Reject;
        if chunk.is_empty() {
            return None;
        }
        if self.cr_pending && chunk[0] != b'\n' && reject_bare {
            return Some(Fault::BareNewline);
        }
        let mut line_start = 0;
        for p in memchr::memchr2_iter(b'\r', b'\n', chunk) {
            if chunk[p] == b'\n' {
                let crlf = if p == 0 {
                    self.cr_pending
                } else {
                    chunk[p - 1] == b'\r'
                };
                if !crlf && reject_bare {
                    return Some(Fault::BareNewline);
                }
                if self.line_len + (p + 1 - line_start) > cfg.max_text_line_bytes {
                    return Some(Fault::LongLine);
                }
                self.line_len = 0;
                line_start = p + 1;
            } else if reject_bare && chunk.get(p + 1).is_some_and(|&b| b != b'\n') {
                return Some(Fault::BareNewline);
            }
        }
        self.cr_pending = chunk[chunk.len() - 1] == b'\r';
        self.line_len += chunk.len() - line_start;
        (self.line_len >= cfg.max_text_line_bytes).then_some(Fault::LongLine)
    }
}
