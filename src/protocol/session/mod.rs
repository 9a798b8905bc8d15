//! The SMTP state machine: bytes in, reply bytes and events out.
//!
//! # Call order
//!
//! 1. [`Session::new`] writes the greeting into the caller's output buffer;
//!    its `now` starts the connection's lifetime and the first read timeout.
//! 2. Read bytes; call [`Session::handle_input`] with the current time and
//!    *all unconsumed bytes* (the unconsumed tail of the previous call first,
//!    then what was read). It returns how many bytes it consumed and one
//!    [`Event`]:
//!    * [`Event::NeedInput`]: every complete line was handled. Write the
//!      output buffer to the socket (one write per batch: PIPELINING), keep
//!      the unconsumed tail, read more, call again.
//!    * [`Event::MessageStart`]: a body begins; open a spool record for
//!      [`Session::envelope`], then call [`Session::shed_envelope`] so the
//!      envelope is not held twice while the body arrives. Call again with
//!      the rest of the input.
//!    * [`Event::Body`]: body bytes, dot-unstuffed, borrowed from the input;
//!      append them to the record. Call again with the rest.
//!    * [`Event::MessageAbort`]: the message will be rejected (size, bare
//!      newline, long line, RSET mid-BDAT): drop the record. Call again.
//!    * [`Event::MessageEnd`]: the body is complete and acceptable. Make the
//!      record durable, then call [`Session::handle_commit`] with the queue id
//!      (or the error) — that writes the `250` (or `451`/`452`) reply. Until
//!      then do not call `handle_input`: the reply must wait for the disk.
//!    * [`Event::Lookup`]: a RCPT needs a lookup off the shard (LDAP or
//!      verify at the next hop); [`Session::pending_lookup`] says which and
//!      for whom. Ask, then call [`Session::handle_lookup`] with the answer
//!      (or a failure), which writes the RCPT's reply. Until then do not
//!      call `handle_input`: commands pipelined behind the RCPT wait, so
//!      replies stay in command order. A lookup that does not answer by
//!      [`Session::poll_timeout`] is answered `451 4.3.0` by
//!      [`Session::handle_timeout`]; a later answer is ignored.
//!    * [`Event::Starttls`]: the client asked for TLS (only when
//!      [`Session::set_tls`] offered it). Drop any input left after the
//!      STARTTLS line (RFC 3207 §5: a client must not pipeline past it),
//!      then call [`Session::handle_starttls`] saying whether TLS can start:
//!      it writes `220` or `454`. After `220` write the output, run the
//!      handshake, then call [`Session::tls_started`]: the session is back
//!      to just connected (EHLO again). A failed handshake ends the
//!      connection (the stream is no longer SMTP).
//!    * [`Event::Auth`]: AUTH gave a user name and password (submission
//!      listeners only, see [`Session::set_submission`]);
//!      [`Session::pending_auth`] says which. Check them off the shard,
//!      then call [`Session::handle_auth`] with the verdict, which writes
//!      `235`, `535`, `454` or the `421` that closes. Until then do not call
//!      `handle_input`.
//!    * [`Event::Close`]: write the output buffer, then close; the
//!      [`CloseReason`] says why. Any record still open is abandoned.
//! 3. While waiting for input, arm a timer for [`Session::poll_timeout`]
//!    (ask again after every call: input and mode changes move it). When it
//!    passes — also when input keeps arriving — call
//!    [`Session::handle_timeout`], which closes the session (idle read
//!    timeout or connection lifetime, `421 4.4.2`) or, if nothing has
//!    expired yet, does nothing.
//! 4. At server shutdown call [`Session::handle_shutdown`]; when the grace
//!    period is over, [`Session::handle_hard_stop`].
//! 5. Before writing the output buffer, take [`Session::drain_refusals`]:
//!    the commands refused since the last drain, to log (at most
//!    16 are kept between drains, the rest only counted).
//!
//! The engine never reads the clock (time is the caller's `now`) and never
//! allocates per command once its buffers have grown to the connection's
//! working size.
//!
//! # Layout
//!
//! Each command has its handler in `handlers.rs`; each returns the reply and
//! an effect, and `Session::respond` is the one place that writes replies
//! and counts failed commands. Message bodies (DATA and BDAT, with their
//! shared text rules) are in `body.rs`; the records of refused commands in
//! `refusal.rs`; SMTP AUTH and its SASL exchange in `auth.rs`.

mod auth;
mod body;
mod handlers;
mod refusal;
mod tally;

use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::is_bdat;
use super::envelope::{Envelope, TxArena};
use super::rates::ClientRates;
use super::recipients::{Lookup, LookupFailed, RecipientMap, Remote};
use super::reply::{self, Reply};
use super::scanner::LineScanner;
use crate::config::SmtpConfig;
use body::{BdatText, TextRules};
use refusal::Refusals;
use CloseReason::BdatUnknownSize;

pub use auth::{AuthVerdict, SASL_LINE_BYTES};
pub use refusal::Refusal;
pub use tally::{CommandTally, CLASSES as REPLY_CLASSES, VERBS as COUNTED_VERBS};

/// What the runtime knows about the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo {
    /// Peer address of the connection.
    pub peer: Option<SocketAddr>,
}

/// RCPT commands by outcome, for the shard's counters. A RCPT refused
/// before these checks (no MAIL, bad syntax) is in none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RcptCounts {
    /// Answered `250`.
    pub accepted: u64,
    /// Outside smtp.accepted_domains: `550 5.7.1`.
    pub relay_denied: u64,
    /// Not in the recipient map: `550 5.1.1`.
    pub unknown: u64,
    /// Past smtp.max_recipients: `452 4.5.3`.
    pub over_limit: u64,
    /// An LDAP or verify lookup failed or timed out: `451 4.3.0`.
    pub lookup_failed: u64,
}

impl RcptCounts {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &RcptCounts) {
        self.accepted += other.accepted;
        self.relay_denied += other.relay_denied;
        self.unknown += other.unknown;
        self.over_limit += other.over_limit;
        self.lookup_failed += other.lookup_failed;
    }
}

/// Why the runtime could not make a message durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// Out of space (or under the free-space floor): `452 4.3.1`.
    SpoolFull,
    /// A write or fsync failed: `451 4.3.0`.
    Io,
}

/// Why a session ended; each has its own last reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// QUIT: `221`.
    Quit,
    /// An HTTP request on the SMTP port: `500 5.5.1`.
    Http,
    /// smtp.max_errors failed commands: `421 4.7.0`.
    TooManyErrors,
    /// A BDAT whose size cannot be read (malformed, too long, not UTF-8):
    /// the chunk's end is unknown; its one reply is `421 4.5.4`.
    BdatUnknownSize,
    /// No input within the read timeout (RFC 5321 §4.5.3.2): `421 4.4.2`.
    Timeout,
    /// server.max_connection_lifetime passed: `421 4.4.2`.
    Lifetime,
    /// Server shutdown: `421 4.3.2`, at once if idle, after the transaction
    /// in progress otherwise.
    Shutdown,
    /// The shutdown grace period ran out mid-transaction: `421 4.3.2`, the
    /// message in progress dropped.
    CutOff,
    /// A refused DATA with bytes behind it in the same read (RFC 2920 §3.1:
    /// DATA ends a group), which would otherwise be read as commands:
    /// `554 5.5.0` instead of DATA's own reply (Postfix's
    /// `smtpd_forbid_unauth_pipelining`).
    ImproperPipelining,
    /// More than smtp.max_junk_commands junk commands (NOOP, RSET, VRFY,
    /// HELP, unknown verbs, RCPTs past the limit) since the last accepted
    /// message: `421 4.7.0` (Postfix's `smtpd_junk_command_limit`).
    TooManyJunk,
    /// A command with more input behind it before PIPELINING was offered
    /// (before the EHLO reply, or after HELO), with
    /// smtp.reject_unoffered_pipelining: `554 5.5.0` (postscreen's
    /// pipelining test).
    UnofferedPipelining,
    /// A command line ended by a bare LF, with smtp.reject_bare_lf_commands:
    /// `554 5.5.1` (postscreen's bare newline test).
    BareLfCommand,
    /// Failed AUTH attempts from the client's address reached
    /// submission.auth_max_failures: `421 4.7.0`.
    AuthFailures,
}

impl CloseReason {
    /// The last reply the session sends.
    pub fn reply(self) -> Reply {
        match self {
            CloseReason::Quit => reply::BYE,
            CloseReason::Http => reply::HTTP_REQUEST,
            CloseReason::TooManyErrors => reply::TOO_MANY_ERRORS,
            CloseReason::BdatUnknownSize => reply::BDAT_UNKNOWN_SIZE,
            CloseReason::Timeout => reply::TIMEOUT,
            CloseReason::Lifetime => reply::LIFETIME_EXCEEDED,
            CloseReason::Shutdown | CloseReason::CutOff => reply::SHUTTING_DOWN,
            CloseReason::ImproperPipelining => reply::IMPROPER_PIPELINING,
            CloseReason::TooManyJunk => reply::TOO_MANY_JUNK,
            CloseReason::UnofferedPipelining => reply::UNOFFERED_PIPELINING,
            CloseReason::BareLfCommand => reply::BARE_LF_COMMAND,
            CloseReason::AuthFailures => reply::TOO_MANY_AUTH_FAILURES,
        }
    }

    /// A short name for logs (`outcome=` of the connection line).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::Http => "http",
            CloseReason::TooManyErrors => "too-many-errors",
            CloseReason::BdatUnknownSize => "bdat-unknown-size",
            CloseReason::Timeout => "timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Shutdown => "shutdown",
            CloseReason::CutOff => "cut-off",
            CloseReason::ImproperPipelining => "improper-pipelining",
            CloseReason::TooManyJunk => "too-many-junk",
            CloseReason::UnofferedPipelining => "unoffered-pipelining",
            CloseReason::BareLfCommand => "bare-lf-command",
            CloseReason::AuthFailures => "too-many-auth-failures",
        }
    }
}

impl CloseReason {
    /// The close answers a command that is refused (not QUIT, not a
    /// deadline or shutdown): it is recorded as a refusal.
    fn refuses_a_command(self) -> bool {
        matches!(
            self,
            CloseReason::Http
                | CloseReason::TooManyErrors
                | CloseReason::BdatUnknownSize
                | CloseReason::ImproperPipelining
                | CloseReason::TooManyJunk
                | CloseReason::UnofferedPipelining
                | CloseReason::BareLfCommand
                | CloseReason::AuthFailures
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// A RCPT awaits a remote lookup ([`Session::pending_lookup`]); answer
    /// it with `handle_lookup`.
    Lookup,
    /// STARTTLS was accepted: drop the input behind it, answer with
    /// `handle_starttls`, then hand over the TLS handshake.
    Starttls,
    /// AUTH gave credentials ([`Session::pending_auth`]): verify them off
    /// the shard, answer with `handle_auth`.
    Auth,
    /// Flush replies, then close the connection.
    Close(CloseReason),
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
    /// `Lookup` was returned; waiting for `handle_lookup` or, past
    /// `deadline`, `handle_timeout`.
    AwaitLookup {
        remote: Remote,
        /// `None`: too far away to represent.
        deadline: Option<Instant>,
    },
    /// `Starttls` was returned; waiting for `handle_starttls`.
    AwaitTls,
    /// A SASL exchange: the next line answers a `334` challenge.
    Sasl(auth::Sasl),
    /// `Auth` was returned; waiting for `handle_auth`.
    AwaitAuth,
    /// The session is over.
    Closed(CloseReason),
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

/// TLS on this connection, as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// No certificate (or not offered here): STARTTLS gets `502`.
    Unavailable,
    /// STARTTLS is advertised and accepted.
    Offered,
    /// The connection is encrypted (STARTTLS done, or implicit TLS).
    Active,
}

/// SMTP AUTH on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Not a submission listener: AUTH gets `502`, as any verb not offered.
    Off,
    /// A submission listener, not logged in yet: AUTH is offered after TLS,
    /// MAIL gets `530 5.7.0`.
    Offered,
    /// Logged in as `Session::auth_user`: mail to any domain.
    Done,
}

/// Whether and how the client introduced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// A reply a handler asks [`Session::respond`] to write.
#[derive(Debug, Clone, Copy)]
enum Answer<'a> {
    /// A fixed reply line.
    Line(Reply),
    /// A fixed reply line to a failed command: counts against smtp.max_errors.
    Error(Reply),
    /// `220 <hostname> ESMTP ringmx`.
    Greeting,
    /// The multi-line EHLO reply.
    Ehlo,
    /// The HELO reply.
    Helo,
    /// `250 ... queued as <id>`.
    Queued(&'a str),
    /// The reply to a non-final BDAT chunk, with the octets so far.
    BdatOk(u64),
}

/// What happens after a handler's reply; each maps to an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Go on with the input (in whatever mode the handler set).
    Continue,
    /// A message body begins: [`Event::MessageStart`].
    MessageStart,
    /// The message in progress is dropped: [`Event::MessageAbort`].
    MessageAbort,
    /// The body is complete: [`Event::MessageEnd`]; the reply waits for
    /// `handle_commit`.
    MessageEnd,
    /// A RCPT awaits a remote lookup: [`Event::Lookup`].
    Lookup,
    /// STARTTLS accepted: [`Event::Starttls`]; the reply waits for
    /// `handle_starttls`.
    Starttls,
    /// AUTH credentials to check: [`Event::Auth`]; the reply waits for
    /// `handle_auth`.
    Auth,
    /// Write the reason's reply after the answer and end the session.
    Close(CloseReason),
}

/// A handler's result: its reply (if any is due now) and its effect.
#[derive(Debug, Clone, Copy)]
struct Handled<'a> {
    answer: Option<Answer<'a>>,
    effect: Effect,
}

impl<'a> Handled<'a> {
    /// A reply, then carry on.
    fn reply(r: Reply) -> Self {
        Self::with(Answer::Line(r), Effect::Continue)
    }

    /// A failed command's reply, then carry on (unless errors are too many).
    fn error(r: Reply) -> Self {
        Self::with(Answer::Error(r), Effect::Continue)
    }

    /// No reply now, only an effect.
    fn effect(effect: Effect) -> Self {
        Self {
            answer: None,
            effect,
        }
    }

    /// The reason's reply, and the end of the session.
    fn close(reason: CloseReason) -> Self {
        Self::effect(Effect::Close(reason))
    }

    /// The reply refuses the command (4xx/5xx).
    fn is_refusal(&self) -> bool {
        match self.answer {
            Some(Answer::Line(r) | Answer::Error(r)) => matches!(r.first(), Some(b'4' | b'5')),
            _ => false,
        }
    }

    fn with(answer: Answer<'a>, effect: Effect) -> Self {
        Self {
            answer: Some(answer),
            effect,
        }
    }
}

/// One SMTP session: the protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    cfg: Rc<SmtpConfig>,
    client: ClientInfo,
    /// Who exists at RCPT time; `None`: every accepted domain is catch-all.
    recipients: Option<Arc<RecipientMap>>,
    /// RCPTs by outcome.
    rcpt_counts: RcptCounts,
    /// A RCPT of this transaction was refused as unknown (see
    /// `no_recipients`).
    unknown_in_tx: bool,
    /// The address of the RCPT awaiting a lookup, and its command line (to
    /// name a refusal); buffers kept for the session's life.
    pending_to: String,
    pending_line: Vec<u8>,
    mode: Mode,
    tx: Tx,
    greeted: Greeted,
    helo: String,
    arena: TxArena,
    scanner: LineScanner,
    /// The body text rules from `cfg`, shared by DATA and BDAT.
    text: TextRules,
    /// Body bytes of the message in progress (after unstuffing).
    body_bytes: u64,
    /// Bytes of the pending partial DATA line already searched for CR/LF.
    data_searched: usize,
    /// Text checks over BDAT chunks (bare newlines, line length).
    bdat_text: BdatText,
    errors: u32,
    /// Junk commands since the last accepted message.
    junk: u32,
    /// Refused commands not yet drained by the runtime.
    refusals: Refusals,
    /// Where commands are counted by verb and reply class (the shard's
    /// metrics); `None`: not counted.
    tally: Option<Arc<CommandTally>>,
    /// `DATA` or `BDAT`: names refusals at the end of a body.
    msg_verb: &'static str,
    shutdown_requested: bool,
    tls: Tls,
    /// MAIL before STARTTLS is refused (`tls.only`).
    tls_required: bool,
    auth: Auth,
    /// The user name given to AUTH; once [`Auth::Done`], the identity.
    auth_user: String,
    /// The password awaiting a verdict; wiped as soon as it comes.
    auth_secret: Vec<u8>,
    /// submission.sender_login_match.
    sender_login_match: bool,
    /// The runtime says the spool is over a backpressure mark: MAIL gets
    /// `452 4.3.1` (see [`Session::set_spool_full`]).
    spool_full: bool,
    /// The client's message and recipient rates, if the runtime limits
    /// them (see [`Session::set_client_rates`]).
    rates: Option<Rc<dyn ClientRates>>,
    messages_accepted: u64,
    /// When input was last handed in: the read timeout counts from here.
    last_input: Instant,
    /// End of the connection's lifetime (`None`: too far to represent).
    lifetime_end: Option<Instant>,
}

impl Session {
    /// Starts a session at `now` and writes the `220` greeting into `out`.
    /// The session closes `max_lifetime` after `now` (see
    /// [`Session::poll_timeout`]).
    pub fn new(
        cfg: Rc<SmtpConfig>,
        client: ClientInfo,
        now: Instant,
        max_lifetime: Duration,
        out: &mut Vec<u8>,
    ) -> Self {
        let mut s = Self {
            text: TextRules::new(&cfg),
            cfg,
            client,
            recipients: None,
            rcpt_counts: RcptCounts::default(),
            unknown_in_tx: false,
            pending_to: String::new(),
            pending_line: Vec::new(),
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
            junk: 0,
            refusals: Refusals::default(),
            tally: None,
            msg_verb: "DATA",
            shutdown_requested: false,
            tls: Tls::Unavailable,
            tls_required: false,
            auth: Auth::Off,
            auth_user: String::new(),
            auth_secret: Vec::new(),
            sender_login_match: false,
            spool_full: false,
            rates: None,
            messages_accepted: 0,
            last_input: now,
            lifetime_end: now.checked_add(max_lifetime),
        };
        s.respond(out, Handled::with(Answer::Greeting, Effect::Continue));
        s
    }

    /// Whether the spool is over a backpressure mark (consumer lag or free
    /// space) now; the runtime sets it before handing input in. While set,
    /// MAIL is answered `452 4.3.1` — early, before any body is sent; a
    /// transaction already under way finishes normally.
    pub fn set_spool_full(&mut self, full: bool) {
        self.spool_full = full;
    }

    /// The client's per-minute message and recipient rates, kept by the
    /// runtime across sessions: MAIL and RCPT past them get `452 4.7.1`.
    /// `None` (the default): no such limits.
    pub fn set_client_rates(&mut self, rates: Option<Rc<dyn ClientRates>>) {
        self.rates = rates;
    }

    /// The envelope of the transaction in progress (valid from
    /// [`Event::MessageStart`] until the commit reply). Complete until
    /// [`Session::shed_envelope`]; after it, [`Envelope::rcpts`] lists only
    /// the first five recipients ([`Envelope::rcpt_count`] still counts all).
    pub fn envelope(&self) -> Envelope<'_> {
        // RFC 3848: an S for TLS (SMTPS after HELO, as Postfix writes it),
        // an A for AUTH (RFC 6531 §3.7.3 for the UTF8 forms).
        let protocol = match (self.greeted, self.arena.params.smtputf8, self.tls_active()) {
            (_, true, false) => "UTF8SMTP",
            (_, true, true) => "UTF8SMTPS",
            (Greeted::Ehlo, false, false) => "ESMTP",
            (Greeted::Ehlo, false, true) => "ESMTPS",
            (_, _, false) => "SMTP",
            (_, _, true) => "SMTPS",
        };
        let identity = self.auth_identity();
        let protocol = match (identity.is_some(), protocol) {
            (false, p) => p,
            (true, "UTF8SMTP") => "UTF8SMTPA",
            (true, "UTF8SMTPS") => "UTF8SMTPSA",
            (true, "ESMTP") => "ESMTPA",
            (true, "ESMTPS") => "ESMTPSA",
            // AUTH needs EHLO: HELO sessions never get here.
            (true, p) => p,
        };
        let mut env = Envelope::new(&self.arena, self.client.peer, &self.helo, protocol);
        env.auth = identity;
        env
    }

    /// Drops the envelope down to what the rest of the transaction needs:
    /// the sender, its parameters (the body rules read them), the first
    /// five recipients and the count, for the per-message log line. Call it
    /// after [`Event::MessageStart`] once the spool's record holds the
    /// envelope; the memory of the other recipients goes back to the
    /// allocator (README "Memory per connection"). The session itself
    /// needs no recipient after `MessageStart`: none can be added until
    /// the transaction ends.
    pub fn shed_envelope(&mut self) {
        debug_assert!(
            self.tx == Tx::Chunking || matches!(self.mode, Mode::Data { .. }),
            "shed_envelope outside a message"
        );
        self.arena.shed();
    }

    /// What the runtime can do about TLS on this connection: `offer`
    /// STARTTLS (a certificate is configured and the connection is not
    /// encrypted yet; else STARTTLS gets `502`), and `require` it before
    /// MAIL (`530 5.7.0`; `tls.only`). Call before the first input.
    pub fn set_tls(&mut self, offer: bool, require: bool) {
        if self.tls != Tls::Active {
            self.tls = if offer {
                Tls::Offered
            } else {
                Tls::Unavailable
            };
        }
        self.tls_required = require;
    }

    /// Makes this a submission session (RFC 6409): AUTH is offered after
    /// TLS, MAIL needs it (`530 5.7.0`), and a logged-in user may send to
    /// any domain; with `sender_login_match`, only from its own address
    /// (`553 5.7.1`). Call before the first input, with
    /// [`Session::set_tls`] requiring TLS.
    pub fn set_submission(&mut self, sender_login_match: bool) {
        self.auth = Auth::Offered;
        self.sender_login_match = sender_login_match;
    }

    /// Whether the connection is encrypted (as the runtime told
    /// [`Session::tls_started`]).
    pub fn tls_active(&self) -> bool {
        self.tls == Tls::Active
    }

    /// The answer to [`Event::Starttls`]: `ok`, TLS can start (`220`, then
    /// the handshake); else `454 4.7.0` and the session goes on in plain
    /// text. Ignored unless STARTTLS was just accepted.
    pub fn handle_starttls(&mut self, ok: bool, out: &mut Vec<u8>) {
        if self.mode != Mode::AwaitTls {
            return;
        }
        self.mode = Mode::Commands;
        let r = if ok {
            reply::READY_FOR_TLS
        } else {
            reply::TLS_UNAVAILABLE
        };
        self.respond(out, Handled::reply(r));
    }

    /// The TLS handshake completed at `now` (after STARTTLS, or at once on
    /// an implicit-TLS listener): RFC 3207 §4.2, the session forgets what
    /// the client said before (it must EHLO again) and STARTTLS is no
    /// longer offered.
    pub fn tls_started(&mut self, now: Instant) {
        self.tls = Tls::Active;
        self.greeted = Greeted::No;
        // RFC 4954 §4: what AUTH said before TLS counts for nothing (it is
        // refused then anyway).
        if self.auth == Auth::Done {
            self.auth = Auth::Offered;
        }
        self.auth_user.clear();
        self.helo.clear();
        self.end_transaction();
        self.scanner.reset();
        self.mode = Mode::Commands;
        self.last_input = now;
    }

    /// Sets the recipient map the following RCPTs are checked against
    /// (`None`: catch-all, the default). The runtime may call it between
    /// any two calls, e.g. after a reload; recipients already accepted
    /// stay accepted.
    pub fn set_recipients(&mut self, map: Option<Arc<RecipientMap>>) {
        self.recipients = map;
    }

    /// Counts every command from now on into `tally`, by verb and reply
    /// class (see `tally.rs` for what counts).
    pub fn count_commands_into(&mut self, tally: Arc<CommandTally>) {
        self.tally = Some(tally);
    }

    /// Counts the command of verb index `verb` if a reply to it was
    /// written into `out` after offset `before`.
    #[inline]
    fn count_command(&self, verb: impl FnOnce() -> usize, out: &[u8], before: usize) {
        if let (Some(t), Some(&first)) = (&self.tally, out.get(before)) {
            t.note(verb(), first);
        }
    }

    /// RCPT commands so far, by outcome.
    pub fn rcpt_counts(&self) -> RcptCounts {
        self.rcpt_counts
    }

    /// What the runtime told the session about its client.
    pub fn client(&self) -> ClientInfo {
        self.client
    }

    /// Body bytes received so far for the message in progress.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// The commands refused (4xx/5xx) since the last drain, oldest first,
    /// for the runtime to log; drain after every call that takes `out`.
    pub fn drain_refusals(&mut self) -> impl Iterator<Item = Refusal> + '_ {
        self.refusals.drain()
    }

    /// Refusals not recorded because too many waited to be drained.
    pub fn refusals_dropped(&self) -> u64 {
        self.refusals.dropped
    }

    /// Messages acknowledged with `250` on this session.
    pub fn messages_accepted(&self) -> u64 {
        self.messages_accepted
    }

    /// The session has ended; nothing more will be read.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed(_))
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.mode {
            Mode::Closed(r) => Some(r),
            _ => None,
        }
    }

    /// `MessageEnd` was returned and `handle_commit` is owed.
    pub fn awaiting_commit(&self) -> bool {
        self.mode == Mode::AwaitCommit
    }

    /// `Event::Lookup` was returned and `handle_lookup` is owed (until it
    /// is called or the lookup times out).
    pub fn awaiting_lookup(&self) -> bool {
        matches!(self.mode, Mode::AwaitLookup { .. })
    }

    /// The lookup a RCPT awaits: which kind, and the address as the client
    /// gave it (`user+ext@domain`; the lookup folds extensions).
    pub fn pending_lookup(&self) -> Option<(Remote, &str)> {
        match self.mode {
            Mode::AwaitLookup { remote, .. } => Some((remote, &self.pending_to)),
            _ => None,
        }
    }

    /// The answer to [`Event::Lookup`]: writes the RCPT's reply (`250`,
    /// `550 5.1.1`, or `451 4.3.0` for a failure). Ignored unless a lookup
    /// is pending (e.g. one that already timed out). Then hand in input
    /// again: the commands pipelined behind the RCPT come next.
    pub fn handle_lookup(&mut self, answer: Result<Lookup, LookupFailed>, out: &mut Vec<u8>) {
        if !self.awaiting_lookup() {
            return;
        }
        self.mode = Mode::Commands;
        let to = std::mem::take(&mut self.pending_to);
        let h = match answer {
            Ok(known) => self.rcpt_verdict(known, &to),
            Err(LookupFailed) => {
                self.rcpt_counts.lookup_failed += 1;
                // Temporary and not the client's fault: no error, no junk.
                Handled::reply(reply::LOOKUP_FAILED)
            }
        };
        self.pending_to = to;
        let first = self.refusals.len();
        let before = out.len();
        // A close (the junk limit) shows as Event::Close on the next
        // handle_input.
        let _ = self.respond(out, h);
        self.count_command(|| tally::RCPT, out, before);
        let line = std::mem::take(&mut self.pending_line);
        self.refusals.name_since(first, &line);
        self.pending_line = line;
    }

    /// A DATA body is being received: no reply comes until its end, which
    /// the session reports as an event (the runtime hands over body input
    /// whole only then; see server/conn.rs).
    pub fn in_data_body(&self) -> bool {
        matches!(self.mode, Mode::Data { .. })
    }

    /// A mail transaction is under way (MAIL given, or a body in progress).
    pub fn in_transaction(&self) -> bool {
        self.tx != Tx::Idle || !matches!(self.mode, Mode::Commands | Mode::DiscardLine)
    }

    /// How long the client may be silent in the current mode (command or
    /// data timeout); the runtime also bounds its writes by it.
    pub fn read_timeout(&self) -> Duration {
        match self.mode {
            Mode::Data { .. } | Mode::BdatChunk { .. } => self.cfg.data_timeout,
            _ => self.cfg.command_timeout,
        }
    }

    /// When [`Session::handle_timeout`] is next due: the read deadline (the
    /// last input plus [`Session::read_timeout`]) or the end of the
    /// connection's lifetime, whichever is first. `None` once closed, or if
    /// both are too far away to represent.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let read = match self.mode {
            // The client waits for us, not we for it.
            Mode::AwaitLookup { deadline, .. } => deadline,
            _ => self.last_input.checked_add(self.read_timeout()),
        };
        match (read, self.lifetime_end) {
            (Some(r), Some(l)) => Some(r.min(l)),
            (r, l) => r.or(l),
        }
    }

    /// A deadline may have passed at `now`. If the lifetime ended, closes
    /// with `421 4.4.2` (lifetime); else if the read deadline passed, with
    /// `421 4.4.2` (timeout). Returns the reason it closed, or `None` if
    /// nothing had expired (or the session was already closed).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<CloseReason> {
        if self.is_closed() {
            return None;
        }
        let expired = |d: Option<Instant>| d.is_some_and(|d| now >= d);
        if let Mode::AwaitLookup { deadline, .. } = self.mode {
            if !expired(self.lifetime_end) {
                if expired(deadline) {
                    self.handle_lookup(Err(LookupFailed), out);
                }
                return None;
            }
        }
        let reason = if expired(self.lifetime_end) {
            CloseReason::Lifetime
        } else if expired(self.last_input.checked_add(self.read_timeout())) {
            CloseReason::Timeout
        } else {
            return None;
        };
        self.respond(out, Handled::close(reason));
        Some(reason)
    }

    /// The server is shutting down. An idle session gets `421 4.3.2` now and
    /// `true` (close it); one inside a transaction is let finish and closes
    /// with `421` right after the transaction's last reply, before any
    /// command pipelined behind it (returns `false`).
    pub fn handle_shutdown(&mut self, out: &mut Vec<u8>) -> bool {
        self.shutdown_requested = true;
        if self.is_closed() {
            return true;
        }
        if !self.in_transaction() {
            self.respond(out, Handled::close(CloseReason::Shutdown));
            return true;
        }
        false
    }

    /// The shutdown grace period is over: `421 4.3.2` now, whatever is in
    /// flight. Returns why the session ended: [`CloseReason::CutOff`] if a
    /// transaction was cut, [`CloseReason::Shutdown`] if it was idle (or
    /// the earlier reason, if already closed).
    pub fn handle_hard_stop(&mut self, out: &mut Vec<u8>) -> CloseReason {
        if let Mode::Closed(r) = self.mode {
            return r;
        }
        let reason = if self.in_transaction() {
            CloseReason::CutOff
        } else {
            CloseReason::Shutdown
        };
        self.respond(out, Handled::close(reason));
        reason
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
        let answer = match result {
            Ok(id) => {
                self.messages_accepted += 1;
                // As Postfix: a client that gets mail through is not junk.
                self.junk = 0;
                Answer::Queued(id)
            }
            Err(CommitError::SpoolFull) => Answer::Line(reply::SPOOL_FULL),
            Err(CommitError::Io) => Answer::Line(reply::SPOOL_ERROR),
        };
        self.end_transaction();
        self.mode = Mode::Commands;
        let before = out.len();
        self.respond(out, Handled::with(answer, Effect::Continue));
        // BDAT LAST's reply is its chunk's; DATA's end is the message's.
        if self.msg_verb == "BDAT" {
            self.count_command(|| tally::BDAT, out, before);
        }
    }

    /// Consumes input handed in at `now`; see the module docs. Returns the
    /// bytes consumed and what the caller must do next.
    pub fn handle_input<'a>(
        &mut self,
        now: Instant,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> (usize, Event<'a>) {
        self.last_input = now;
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let (used, ev) = match self.mode {
                Mode::Commands => self.commands(rest, out),
                Mode::DiscardLine => self.discard_line(rest, out),
                Mode::Data { .. } => self.data(rest, out),
                Mode::BdatChunk { .. } => self.bdat(rest, out),
                Mode::AwaitCommit => {
                    debug_assert!(false, "handle_input while awaiting commit");
                    return (pos, Event::NeedInput);
                }
                Mode::AwaitLookup { .. } => {
                    debug_assert!(false, "handle_input while awaiting a lookup");
                    return (pos, Event::NeedInput);
                }
                Mode::AwaitTls => {
                    debug_assert!(false, "handle_input while awaiting handle_starttls");
                    return (pos, Event::NeedInput);
                }
                Mode::Sasl(_) => self.sasl_line(rest, out),
                Mode::AwaitAuth => {
                    debug_assert!(false, "handle_input while awaiting handle_auth");
                    return (pos, Event::NeedInput);
                }
                Mode::Closed(r) => return (input.len(), Event::Close(r)),
            };
            pos += used;
            if let Some(ev) = ev {
                return (pos, ev);
            }
        }
    }

    /// The edge's protocol tests (postscreen's), if one fails for a command
    /// line with more input `behind` it: RFC 2920 §3.1, only a client that
    /// saw PIPELINING in the EHLO reply may send a command before the
    /// previous one's reply; RFC 5321 §2.3.8, lines end in CRLF.
    fn edge_refusal(&self, behind: bool, crlf: bool) -> Option<CloseReason> {
        if self.cfg.reject_unoffered_pipelining && behind && self.greeted != Greeted::Ehlo {
            Some(CloseReason::UnofferedPipelining)
        } else if self.cfg.reject_bare_lf_commands && !crlf {
            Some(CloseReason::BareLfCommand)
        } else {
            None
        }
    }

    /// Command mode: handles the next complete line, if any.
    fn commands<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Option<Event<'a>>) {
        // Shutting down, an idle session closes before its next command:
        // at once if it was idle, else as soon as its transaction ends. The
        // point is fixed in the byte stream, so it does not depend on how
        // much pipelined input one read happened to bring.
        if self.shutdown_requested && !self.in_transaction() {
            return (0, self.respond(out, Handled::close(CloseReason::Shutdown)));
        }
        let cap = self.command_line_cap(input);
        let Some(line) = self.scanner.next_line(input) else {
            if input.len() >= cap {
                if is_bdat(input) {
                    return (0, self.respond(out, Handled::close(BdatUnknownSize)));
                }
                // RFC 5321 §4.5.3.1.4: drop the rest of this line without
                // buffering it; reply once it ends.
                self.scanner.reset();
                self.mode = Mode::DiscardLine;
                return (input.len(), None);
            }
            return (0, Some(Event::NeedInput));
        };
        if line.content_len() + 2 > cap {
            // An overlong BDAT: its size is unreadable, like a malformed one.
            let h = match is_bdat(input) {
                true => Handled::close(BdatUnknownSize),
                false => Handled::error(reply::LINE_TOO_LONG),
            };
            let content = &input[..line.content_len()];
            let h = self.guard_pipelined_data(content, h, line.end < input.len());
            let first = self.refusals.len();
            let before = out.len();
            let ev = self.respond(out, h);
            self.count_command(|| tally::verb_index(content), out, before);
            self.refusals.name_since(first, auth::redact(content));
            return (line.end, ev);
        }
        let content = &input[..line.content_len()];
        if let Some(reason) = self.edge_refusal(line.end < input.len(), line.crlf) {
            let first = self.refusals.len();
            let ev = self.respond(out, Handled::close(reason));
            self.refusals.name_since(first, auth::redact(content));
            return (line.end, ev);
        }
        let handled = self.command(content);
        if handled.effect == Effect::Lookup {
            // Its reply comes with the answer; keep the line to name it.
            self.pending_line.clear();
            self.pending_line.extend_from_slice(content);
        }
        let handled = self.guard_pipelined_data(content, handled, line.end < input.len());
        let first = self.refusals.len();
        let before = out.len();
        let ev = self.respond(out, handled);
        self.count_command(|| tally::verb_index(content), out, before);
        self.refusals.name_since(first, auth::redact(content));
        (line.end, ev)
    }

    /// RFC 2920 §3.1: DATA ends a group. Bytes behind a refused one are
    /// likely its body; never read them as commands. The verb decides, not
    /// the whole line: `DATA ` (trailing blanks), `DATA x` and an overlong
    /// DATA line are all refused DATAs whose body may follow.
    fn guard_pipelined_data<'h>(
        &self,
        content: &[u8],
        handled: Handled<'h>,
        more: bool,
    ) -> Handled<'h> {
        let verb = content.split(|&b| b == b' ').next().unwrap_or_default();
        if more
            && self.cfg.forbid_pipelined_data
            && handled.is_refusal()
            && verb.eq_ignore_ascii_case(b"DATA")
        {
            return Handled::close(CloseReason::ImproperPipelining);
        }
        handled
    }

    /// The rest of an overlong command line: dropped up to its LF.
    fn discard_line<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> (usize, Option<Event<'a>>) {
        match memchr::memchr(b'\n', input) {
            Some(i) => {
                self.mode = Mode::Commands;
                let first = self.refusals.len();
                let before = out.len();
                let ev = self.respond(out, Handled::error(reply::LINE_TOO_LONG));
                // Its start is gone: `other`, and the record names no verb.
                self.count_command(|| tally::verb_index(b""), out, before);
                self.refusals.name_since(first, b"");
                (i + 1, ev)
            }
            None => (input.len(), Some(Event::NeedInput)),
        }
    }

    /// The one place that writes replies: writes the handler's answer,
    /// counts a failed command (closing with `421` at smtp.max_errors) and
    /// turns the effect into what the caller sees (`None`: go on).
    // Inlined into its dozen callers: as a call it cost the pipelined
    // transaction bench ~3% in instructions (callgrind, engine_profile).
    #[inline(always)]
    fn respond(&mut self, out: &mut Vec<u8>, h: Handled<'_>) -> Option<Event<'static>> {
        let mut failed = false;
        match h.answer {
            None => {}
            Some(Answer::Line(r)) => {
                out.extend_from_slice(r);
                self.refusals.note(r, self.msg_verb);
            }
            Some(Answer::Error(r)) => {
                out.extend_from_slice(r);
                self.refusals.note(r, self.msg_verb);
                failed = true;
            }
            Some(Answer::Greeting) => reply::write_greeting(out, &self.cfg.hostname),
            Some(Answer::Ehlo) => reply::write_ehlo_auth(
                out,
                &self.cfg.hostname,
                self.cfg.max_message_bytes,
                self.tls == Tls::Offered,
                // RFC 4954 §4 with RFC 6409: only over TLS.
                self.auth == Auth::Offered && self.tls == Tls::Active,
            ),
            Some(Answer::Helo) => reply::write_helo(out, &self.cfg.hostname),
            Some(Answer::Queued(id)) => reply::write_queued(out, id),
            Some(Answer::BdatOk(n)) => reply::write_bdat_ok(out, n),
        }
        if failed {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                self.close(out, CloseReason::TooManyErrors);
            }
        }
        match h.effect {
            Effect::Continue => self.close_reason().filter(|_| failed).map(Event::Close),
            Effect::MessageStart => Some(Event::MessageStart),
            // If the error limit closed the session, the abort is reported
            // first and the close on the next call.
            Effect::MessageAbort => Some(Event::MessageAbort),
            Effect::MessageEnd => Some(Event::MessageEnd),
            Effect::Lookup => Some(Event::Lookup),
            Effect::Starttls => {
                self.mode = Mode::AwaitTls;
                Some(Event::Starttls)
            }
            Effect::Auth => Some(Event::Auth),
            Effect::Close(r) => Some(Event::Close(self.close(out, r))),
        }
    }

    /// Ends the session with the reason's reply; returns the reason it
    /// ended with (the first one, if it had already).
    fn close(&mut self, out: &mut Vec<u8>, reason: CloseReason) -> CloseReason {
        if let Mode::Closed(r) = self.mode {
            return r;
        }
        out.extend_from_slice(reason.reply());
        if reason.refuses_a_command() {
            self.refusals.note(reason.reply(), self.msg_verb);
        }
        self.mode = Mode::Closed(reason);
        reason
    }

    fn end_transaction(&mut self) {
        self.tx = Tx::Idle;
        self.unknown_in_tx = false;
        self.arena.clear();
        self.body_bytes = 0;
    }

    /// Ends the transaction (HELO, EHLO, RSET); a BDAT message in progress
    /// is abandoned and the caller must drop its record.
    fn reset_transaction(&mut self) -> Effect {
        let was_chunking = self.tx == Tx::Chunking;
        self.end_transaction();
        if was_chunking {
            Effect::MessageAbort
        } else {
            Effect::Continue
        }
    }
}
