//! One client connection: the only code that reads or writes a client
//! socket. It drives the sans-IO [`Session`] (see its call order) and moves
//! message bodies into the shard's store.
//!
//! Owns: the read buffer (compacted, released when idle), the reply buffer
//! (one write per batch of input: RFC 2920 pipelining), the timer for the
//! session's deadlines (read timeouts and the connection lifetime, from
//! [`Session::poll_timeout`]) and the write timeout, reacting to shutdown,
//! the lingering close, turning away a connection over the shard's limit,
//! and the per-connection and per-message log lines.
//! Leaves to the session: every SMTP decision, reply text and deadline, and
//! why it closed; to the store: durability; to [`super::shard`]: accepting
//! and counting connections against the limit.
//!
//! A connection never blocks its shard: every wait (read, write, commit, a
//! recipient lookup on the lookup threads) is an await on the shard's
//! executor, so a slow or silent client or directory only holds its own
//! task.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;
use glommio::timer::sleep;

use super::anvil::{Refused, Ticket};
use super::auth;
use super::lookup::{self, Answer};
use super::metrics::{ConnRejected, TlsVersion};
use super::pregreet;
use super::proxy::{self, ProxyError};
use super::shard::{ActiveGuard, Listener, Shard, Stats};
use super::store::{self, EnvelopeRecord, MessageWriter, ShardSpool, SpoolError};
use super::tls::{self, TlsConn};
use crate::protocol::envelope::SHED_KEEP_RCPTS;
use crate::protocol::rates::ClientRates;
use crate::protocol::recipients::LookupFailed;
use crate::protocol::{reply, trace, ClientInfo, CloseReason, CommitError, Event, Session};

/// A connection that has waited this long for input gives its read and reply
/// buffers back to the allocator and waits with a 1-byte read instead, so an
/// idle connection costs its session state, not its buffers (see
/// tuning/mem-per-conn.md). Far above any round-trip time, so a busy client
/// never pays the extra read it costs.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// While a recipient lookup is pending, the connection also looks at its
/// answer this often, not only when the lookup thread's wake-up arrives.
/// A safety net: in one of four loadgen runs (16 connections, answers from
/// the cache and slapd) some answers were taken only at the 5 s lookup
/// deadline, as if a wake-up from the lookup thread had been missed; not
/// reproduced since. A timer per pending lookup every 50 ms costs nothing
/// next to the lookup.
const LOOKUP_REPOLL: Duration = Duration::from_millis(50);

/// After the last reply, how long to read and discard what the client still
/// sends before closing. Closing with unread input makes the kernel send a
/// RST, which can destroy the last reply before the client reads it.
const LINGER: Duration = Duration::from_secs(2);

/// Serves one accepted connection to the end, then logs one line about it.
/// `kind`: what its listener's connections start with (TLS, a PROXY header).
pub(crate) async fn serve(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    permit: StaticPermit,
    guard: ActiveGuard,
    kind: Listener,
) {
    let implicit_tls = kind.implicit_tls;
    let started = Instant::now();
    // Who the client is, decided once (a PROXY header is read here, before
    // the greeting; what follows it stays in `rbuf` for the session).
    let mut rbuf = ReadBuf::default();
    let from = match proxy::client_address(&shard, &mut stream, &mut rbuf, kind.proxy).await {
        Ok(p) => p,
        Err(r) => {
            // No greeting: the connection never reaches SMTP.
            let _ = stream.close().await;
            let log = ConnLog {
                peer: r.peer,
                via: None,
                shard: shard.id,
                started,
                messages: 0,
                bytes_in: r.bytes_in,
                bytes_out: 0,
            };
            log.write(Outcome::Proxy(r.error));
            shard.metrics.connections_rejected.inc(ConnRejected::Proxy);
            return;
        }
    };
    let peer = from.client;
    // A submission client over the failed-AUTH limit: turned away until
    // its window ends (an implicit-TLS one without a plaintext reply).
    if kind.submission && auth_blocked(&shard, peer) {
        let sent = match implicit_tls {
            true => 0,
            false => turn_away(&shard, &mut stream, reply::TOO_MANY_AUTH_FAILURES).await,
        };
        let _ = stream.close().await;
        let log = ConnLog {
            peer,
            via: from.via,
            shard: shard.id,
            started,
            messages: 0,
            bytes_in: from.bytes_in,
            bytes_out: sent,
        };
        log.write(Outcome::AuthBlocked);
        return;
    }
    // Per-client limits first, then the greeting wait: a client over its
    // limit is told so at once.
    let early = rbuf.data();
    let (ticket, greeted_bytes) =
        match edge(&shard, &mut stream, peer, started, implicit_tls, early).await {
            Ok(admitted) => admitted,
            Err((outcome, bytes_out)) => {
                let why = match outcome {
                    Outcome::ClientLimit(_) => Some(ConnRejected::ClientLimit),
                    Outcome::Pregreet(_) => Some(ConnRejected::Pregreet),
                    _ => None,
                };
                if let Some(why) = why {
                    shard.metrics.connections_rejected.inc(why);
                }
                ConnLog {
                    peer,
                    via: from.via,
                    shard: shard.id,
                    started,
                    messages: 0,
                    bytes_in: from.bytes_in,
                    bytes_out,
                }
                .write(outcome);
                drop(permit);
                drop(guard);
                return;
            }
        };
    let mut out = Vec::with_capacity(shard.server.write_buffer_bytes);
    // The settings as of the last reload, kept for this connection's life.
    let (smtp, lifetime) = shard.live.get();
    let mut session = Session::new(smtp, ClientInfo { peer }, started, lifetime, &mut out);
    if let Some(t) = ticket.as_ref().filter(|t| t.limits_rates()) {
        session.set_client_rates(Some(Rc::clone(t) as Rc<dyn ClientRates>));
    }
    // The generation first: a swap in between is then picked up at once.
    let recipients_gen = shard.recipients.generation();
    session.set_recipients(shard.recipients.load());
    session.set_tls(
        shard.tls.is_some() && !implicit_tls,
        (shard.tls_only || kind.submission) && !implicit_tls,
    );
    if let (true, Some(a)) = (kind.submission, &shard.auth) {
        session.set_submission(a.sender_login_match);
    }
    // Counting commands costs the engine a few percent of its instructions
    // per transaction (README "Metrics"): only when someone can scrape them.
    if !shard.server.metrics.is_empty() {
        session.count_commands_into(Arc::clone(&shard.metrics.commands));
    }
    shard.metrics.connections_open.add(1);
    let mut c = Conn {
        shard,
        stream,
        session,
        recipients_gen,
        rbuf,
        out,
        msg: Msg::None,
        shutdown_seen: false,
        bytes_in: from.bytes_in,
        bytes_out: greeted_bytes,
        tls: None,
        tls_trace: None,
    };
    let outcome = match implicit_tls {
        // The greeting waits in `out` until the handshake is done.
        true => match c.start_tls(true).await {
            Ok(()) => c.run().await,
            Err(o) => o,
        },
        false => c.run().await,
    };
    let log = ConnLog {
        peer,
        via: from.via,
        shard: c.shard.id,
        started,
        messages: c.session.messages_accepted(),
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
    };
    if matches!(outcome, Outcome::TlsHandshake) {
        c.shard
            .metrics
            .connections_rejected
            .inc(ConnRejected::TlsHandshake);
    }
    log.write(outcome);
    let mut rcpt = c.shard.stats.rcpt.get();
    rcpt.add(&c.session.rcpt_counts());
    c.shard.stats.rcpt.set(rcpt);
    c.shard.metrics.add_rcpt_counts(&c.session.rcpt_counts());
    c.shard.metrics.connections_open.add(-1);
    drop(c);
    // The client's place in its per-IP count goes with the connection.
    drop(ticket);
    drop(permit);
    drop(guard);
}

/// The checks before a session: the client's per-IP limits
/// ([`super::anvil`]), then the greeting wait ([`super::pregreet`]).
/// `Ok`: serve it, with its place in the per-IP count and the bytes of the
/// `220-` already sent. `Err`: it was answered and closed; how, and the
/// bytes sent.
async fn edge(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    peer: Option<SocketAddr>,
    now: Instant,
    implicit_tls: bool,
    early: &[u8],
) -> Result<(Option<Rc<Ticket>>, u64), (Outcome, u64)> {
    let Some(ip) = peer.map(|p| p.ip()) else {
        return Ok((None, 0));
    };
    let ticket = match shard.anvil.connect(ip, now) {
        Ok(t) => Rc::new(t),
        Err(r) => {
            let reply = match r {
                Refused::TooManyConnections => reply::TOO_MANY_CONNECTIONS_FROM_CLIENT,
                Refused::ConnectionRate => reply::CONNECTION_RATE,
            };
            // An implicit-TLS client cannot read a plaintext reply: it is
            // closed without one.
            let sent = if implicit_tls {
                let _ = stream.close().await;
                0
            } else {
                turn_away(shard, stream, reply).await
            };
            return Err((Outcome::ClientLimit(r), sent));
        }
    };
    // The greeting wait is for plaintext listeners: on an implicit-TLS one
    // the client speaks first (its ClientHello), by design.
    if implicit_tls || !pregreet::must_wait(shard, ip, now) {
        return Ok((Some(ticket), 0));
    }
    // Behind a PROXY header, a client may have talked in the same read.
    if !early.is_empty() {
        let talker = pregreet::classify(early);
        talker.count(&shard.anvil);
        let sent = turn_away(shard, stream, reply::PREGREET).await;
        return Err((Outcome::Pregreet(talker), sent));
    }
    let mut first = Vec::with_capacity(64);
    reply::write_greeting_start(&mut first, &shard.live.smtp().hostname);
    if let Err(e) = write_bounded(stream, &first, LINGER, shard, true).await {
        return Err((e.map_or(Outcome::WriteTimeout, Outcome::WriteError), 0));
    }
    let sent = first.len() as u64;
    let mut buf = [0u8; 256];
    let wait = shard.server.greet_wait;
    match wait_readable(stream, &mut buf, wait, shard, true).await {
        Wake::Timer => {
            shard.anvil.greet_pass(ip, Instant::now());
            Ok((Some(ticket), sent))
        }
        Wake::Data(n) => {
            let talker = pregreet::classify(&buf[..n]);
            talker.count(&shard.anvil);
            let more = turn_away(shard, stream, reply::PREGREET).await;
            Err((Outcome::Pregreet(talker), sent + more))
        }
        Wake::Shutdown | Wake::HardStop => {
            let more = turn_away(shard, stream, reply::SHUTTING_DOWN).await;
            Err((Outcome::Session(CloseReason::Shutdown), sent + more))
        }
        Wake::Eof => Err((Outcome::PeerClosed, sent)),
        Wake::Error(e) => Err((Outcome::ReadError(e.kind()), sent)),
        Wake::Stuck => Err((Outcome::Stuck, sent)),
    }
}

/// Whether `peer` is over submission.auth_max_failures now.
fn auth_blocked(shard: &Shard, peer: Option<SocketAddr>) -> bool {
    shard
        .auth
        .as_ref()
        .is_some_and(|a| a.blocked(peer.map(|p| p.ip()), Instant::now()))
}

/// One reply, then a lingering close (see [`reject`]); the bytes written.
async fn turn_away(shard: &Shard, stream: &mut TcpStream, reply: reply::Reply) -> u64 {
    let ok = write_bounded(stream, reply, LINGER, shard, false)
        .await
        .is_ok();
    linger(stream, shard).await;
    let _ = stream.close().await;
    if ok {
        reply.len() as u64
    } else {
        0
    }
}

/// Over the shard's connection limit: `421 4.3.2` and a lingering close
/// (RFC 5321 §3.8), with the same log line as a served connection. The
/// lingering close matters here most: a client that sent its EHLO before
/// reading the greeting would otherwise get a reset that can destroy the
/// 421 before it is read. On an implicit-TLS listener (`implicit_tls`) the
/// client cannot read a plaintext reply: it is closed without one.
pub(crate) async fn reject(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    permit: StaticPermit,
    guard: ActiveGuard,
    implicit_tls: bool,
) {
    let started = Instant::now();
    let peer = stream.peer_addr().ok();
    // A fresh socket's send buffer is empty: this write does not block;
    // the bound only keeps a broken socket from holding the task.
    let ok = !implicit_tls
        && write_bounded(
            &mut stream,
            reply::TOO_MANY_CONNECTIONS,
            LINGER,
            &shard,
            false,
        )
        .await
        .is_ok();
    if !implicit_tls {
        linger(&mut stream, &shard).await;
    }
    let _ = stream.close().await;
    let log = ConnLog {
        peer,
        via: None,
        shard: shard.id,
        started,
        messages: 0,
        bytes_in: 0,
        bytes_out: if ok {
            reply::TOO_MANY_CONNECTIONS.len() as u64
        } else {
            0
        },
    };
    log.write(Outcome::TooManyConnections);
    drop(permit);
    drop(guard);
}

/// The lingering close: shut down our side, then read and drop what the
/// client still sends until it closes, for at most [`LINGER`] (or until the
/// server shuts down: nothing is left to deliver).
async fn linger(stream: &mut TcpStream, shard: &Shard) {
    let _ = stream.shutdown(Shutdown::Write).await;
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 64];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || shard.shutdown.is_fired() {
            break;
        }
        let r = future::or(async { Some(stream.read(&mut sink).await) }, async {
            future::or(sleep(left), shard.shutdown.wait()).await;
            None
        })
        .await;
        match r {
            Some(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
}

/// The facts of the one line logged per connection.
struct ConnLog {
    peer: Option<SocketAddr>,
    /// The load balancer, when a PROXY header named `peer`.
    via: Option<SocketAddr>,
    shard: u32,
    started: Instant,
    messages: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl ConnLog {
    /// Never rate-limited: one line per connection is the record.
    fn write(&self, outcome: Outcome) {
        if !crate::log::enabled(crate::log::Level::Info) {
            return;
        }
        crate::log::write(
            crate::log::Level::Info,
            format_args!(
                "conn peer={}{} shard={} duration_ms={} messages={} bytes_in={} bytes_out={} \
                 outcome={}",
                PeerDisplay(self.peer),
                ViaDisplay(self.via),
                self.shard,
                self.started.elapsed().as_millis(),
                self.messages,
                self.bytes_in,
                self.bytes_out,
                outcome,
            ),
        );
    }
}

/// How a connection ended, for its log line.
#[derive(Debug)]
enum Outcome {
    /// The session closed, and says why (QUIT, timeout, lifetime, too many
    /// errors, shutdown, cut off by the hard stop, ...).
    Session(CloseReason),
    /// The client closed without QUIT.
    PeerClosed,
    /// Over the shard's connection limit: 421 4.3.2 before any session.
    TooManyConnections,
    /// Over a per-client limit (server.max_connection*_per_ip): 421 4.7.0
    /// before any session.
    ClientLimit(Refused),
    /// Talked before the greeting's last line (server.greet_wait): 521.
    Pregreet(pregreet::Talker),
    /// Reading failed.
    ReadError(io::ErrorKind),
    /// Writing failed.
    WriteError(io::ErrorKind),
    /// The client did not read our replies within the timeout.
    WriteTimeout,
    /// The read buffer filled without the session consuming it: a bug.
    Stuck,
    /// The TLS handshake failed (logged with its reason).
    TlsHandshake,
    /// Closed before the greeting on a PROXY listener (`server::proxy`).
    Proxy(ProxyError),
    /// A submission client over submission.auth_max_failures: `421 4.7.0`
    /// before any session.
    AuthBlocked,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Session(reason) => f.write_str(reason.as_str()),
            Outcome::PeerClosed => f.write_str("peer-closed"),
            Outcome::TooManyConnections => f.write_str("too-many-connections"),
            Outcome::ClientLimit(r) => f.write_str(r.as_str()),
            Outcome::Pregreet(t) => f.write_str(t.as_str()),
            Outcome::ReadError(k) => write!(f, "read-error:{k:?}"),
            Outcome::WriteError(k) => write!(f, "write-error:{k:?}"),
            Outcome::WriteTimeout => f.write_str("write-timeout"),
            Outcome::Stuck => f.write_str("stuck"),
            Outcome::TlsHandshake => f.write_str("tls-handshake-failed"),
            Outcome::Proxy(e) => write!(f, "proxy-{}", e.as_str()),
            Outcome::AuthBlocked => f.write_str("auth-blocked"),
        }
    }
}

/// `-` for an unknown peer.
struct PeerDisplay(Option<SocketAddr>);

impl fmt::Display for PeerDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("-"),
        }
    }
}

/// ` via=ADDR` after the peer when a proxy stood between; nothing otherwise.
struct ViaDisplay(Option<SocketAddr>);

impl fmt::Display for ViaDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, " via={a}"),
            None => Ok(()),
        }
    }
}

/// The message being received.
enum Msg {
    None,
    /// Body bytes go here.
    Open(Box<MessageWriter>),
    /// The store refused it; the body is read and dropped, and the end of
    /// data gets this error.
    Failed(CommitError),
}

/// What woke a wait for input.
pub(super) enum Wake {
    Data(usize),
    Eof,
    Error(io::Error),
    Timer,
    Shutdown,
    HardStop,
    /// No room to read: the session left a full buffer unconsumed.
    Stuck,
}

/// Unsent replies at which the connection stops handing input to the session
/// and writes first (backpressure): a client that pipelines commands and
/// never reads its replies stops being read, instead of making the server
/// hold the replies to a whole read buffer of commands (README "Memory per
/// connection"). A client that reads is never held up by it: the write that
/// follows goes to the kernel's socket buffer.
pub(crate) const REPLY_HIGH_WATER: usize = 8 * 1024;

/// Command input is handed to the session at most this many bytes at a time
/// (more only to complete a line longer than that), so one call's replies
/// overshoot [`REPLY_HIGH_WATER`] by at most the replies to this much input:
/// at most `INPUT_CHUNK / 2` of them (the shortest line is 2 bytes), each at
/// most an EHLO reply. A DATA body, or a BDAT chunk continuing past the
/// piece, is handed over whole (a body has no replies).
pub(crate) const INPUT_CHUNK: usize = 128;

/// A connection's own state besides its buffers: the session, the
/// connection and its task, glommio's socket. Measured (VmRSS growth per
/// idle connection after its buffers were released, tests/server_memory.rs)
/// and rounded up.
const CONN_STATE_BYTES: u64 = 8 * 1024;

/// The worst-case memory of one connection, bytes, from the settings; the
/// formulas are in README "Memory per connection".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnMemoryBound {
    /// Idle (silent for a second) outside a transaction: its state only.
    pub idle: u64,
    /// The same over TLS: its state and rustls's.
    pub idle_tls: u64,
    /// Outside a mail transaction, whatever the client sends or fails to
    /// read: state, read buffer, reply buffer.
    pub active: u64,
    /// Inside a mail transaction: `active` plus the envelope (up to
    /// `smtp.max_recipients` recipients of `smtp.max_command_line_bytes`),
    /// counted once: held in the session's arena until the body begins,
    /// then in the spool's record with up to
    /// `spool.max_buffered_message_bytes` of body, while the arena keeps
    /// only the sender and the first recipients (`Session::shed_envelope`).
    /// Given back when the transaction ends. (A shard holds both copies of
    /// one envelope for the moment it opens its record: once per shard,
    /// not per connection.)
    pub transaction: u64,
}

/// [`ConnMemoryBound`] for `cfg`.
pub fn conn_memory_bound(cfg: &crate::config::Config) -> ConnMemoryBound {
    let (server, smtp) = (&cfg.server, &cfg.smtp);
    let mut ehlo = Vec::new();
    reply::write_ehlo_auth(
        &mut ehlo,
        &smtp.hostname,
        smtp.max_message_bytes,
        true,
        true,
    );
    // The greeting and every other reply are shorter than EHLO's, or fixed
    // and under 128 bytes.
    let longest = ehlo.len().max(128) as u64;
    // A growing Vec may double: twice the most it holds.
    let reply = (2 * (REPLY_HIGH_WATER as u64 + (INPUT_CHUNK / 2) as u64 * longest))
        .max(server.write_buffer_bytes as u64);
    let active = CONN_STATE_BYTES + server.read_buffer_bytes as u64 + reply;
    // Per recipient: its bytes and its slot in the arena, its length and
    // bytes in the record; the record also holds the buffered body.
    let line = smtp.max_command_line_bytes as u64 + 16;
    let envelope = smtp.max_recipients as u64 * line;
    let record = envelope + 1024 + cfg.spool.max_buffered_message_bytes as u64;
    // What the arena keeps once shed: the MAIL line's sender and
    // parameters, and the first recipients.
    let shed = (SHED_KEEP_RCPTS as u64 + 1) * line;
    ConnMemoryBound {
        idle: CONN_STATE_BYTES,
        idle_tls: CONN_STATE_BYTES + super::tls::IDLE_TLS_STATE_BYTES,
        active,
        // Before the body the arena, after it the record (larger) and the
        // shed arena; each may have doubled as it grew.
        transaction: active + (2 * envelope).max(2 * record + shed),
    }
}

/// The first read buffer of an active connection, before it proves to need
/// server.read_buffer_bytes: one page covers any command batch of a
/// non-pipelining client, and a connection that only said EHLO keeps no
/// more (tuning/mem-per-conn.md).
const FIRST_READ_BYTES: usize = 4096;

/// The connection's read buffer: `buf[start..end]` is input not yet
/// consumed by the session. Allocated on the first read with
/// [`FIRST_READ_BYTES`], grown to the configured size once a read fills it
/// (bulk data, deep pipelining), given back when the connection idles with
/// nothing unconsumed.
#[derive(Default)]
pub(super) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled the buffer: more is probably waiting.
    filled_up: bool,
}

impl ReadBuf {
    pub(super) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into, after moving the unconsumed tail to the front.
    /// Empty only if `size` bytes are unconsumed.
    pub(super) fn spare(&mut self, size: usize) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; FIRST_READ_BYTES.min(size)];
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Grow to the full size for bulk input, and whenever the tail takes
        // more than half: the session relies on room for a whole line.
        if self.buf.len() < size && (self.filled_up || self.end * 2 > self.buf.len()) {
            self.buf.resize(size, 0);
        }
        &mut self.buf[self.end..]
    }

    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
        self.filled_up = self.end == self.buf.len();
    }

    /// Frees the buffer if nothing is unconsumed.
    fn release(&mut self) {
        if self.start == self.end {
            *self = ReadBuf::default();
        }
    }
}

struct Conn {
    shard: Rc<Shard>,
    stream: TcpStream,
    session: Session,
    /// The generation of the recipient map the session holds.
    recipients_gen: u64,
    rbuf: ReadBuf,
    /// Replies not yet written.
    out: Vec<u8>,
    msg: Msg,
    /// `handle_shutdown` was called.
    shutdown_seen: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// Set once TLS is on (STARTTLS or an implicit-TLS listener): reads
    /// and writes go through it.
    tls: Option<Box<TlsConn>>,
    /// Version and cipher, once the handshake is done.
    tls_trace: Option<trace::TlsTrace>,
}

/// What `process` left to do.
enum Step {
    NeedInput,
    /// STARTTLS was accepted: answer it, then the handshake.
    Starttls,
    /// Unsent replies reached [`REPLY_HIGH_WATER`]: write them, then process
    /// the input that is left before reading more.
    Flush,
    Close(CloseReason),
}

impl Conn {
    async fn run(&mut self) -> Outcome {
        loop {
            let step = self.process().await;
            if let Step::Close(reason) = step {
                self.finish().await;
                return Outcome::Session(reason);
            }
            if matches!(step, Step::Starttls) {
                if let Err(o) = self.start_tls(false).await {
                    return o;
                }
                continue;
            }
            // RFC 2920: everything the batch produced leaves in one write.
            if let Err(o) = self.flush().await {
                return o;
            }
            // A shutdown that happened while this connection was busy (or
            // while its client kept the socket readable) is noticed here.
            if self.shard.hard_stop.is_fired() {
                return self.cut_off().await;
            }
            if self.shard.shutdown.is_fired() && !self.shutdown_seen {
                if let Some(o) = self.on_shutdown().await {
                    return o;
                }
                continue;
            }
            if matches!(step, Step::Flush) {
                continue;
            }
            match self.wait_input().await {
                Wake::Data(n) => self.bytes_in += n as u64,
                Wake::Eof => return Outcome::PeerClosed,
                Wake::Error(e) => return Outcome::ReadError(e.kind()),
                Wake::Timer => {
                    // `None`: not due yet (a timer that fired early); wait
                    // again, as after any other wake-up.
                    if let Some(r) = self.session.handle_timeout(Instant::now(), &mut self.out) {
                        self.finish().await;
                        return Outcome::Session(r);
                    }
                }
                Wake::Shutdown => {
                    if let Some(o) = self.on_shutdown().await {
                        return o;
                    }
                }
                Wake::HardStop => return self.cut_off().await,
                Wake::Stuck => return Outcome::Stuck,
            }
        }
    }

    /// STARTTLS (`implicit` false: drop what was pipelined behind it,
    /// answer `220` or `454` in plain text) or an implicit-TLS listener,
    /// then the handshake. Err: the connection is over (the handshake
    /// failed, logged with its reason, or the 220 could not be written).
    async fn start_tls(&mut self, implicit: bool) -> Result<(), Outcome> {
        let Some(acceptor) = self.shard.tls.clone() else {
            self.session.handle_starttls(false, &mut self.out);
            return Ok(());
        };
        let peer = PeerDisplay(self.session.client().peer);
        if !implicit {
            // CVE-2011-0411 class: commands pipelined behind STARTTLS
            // would otherwise be answered inside TLS as if sent there.
            let dropped = self.rbuf.data().len();
            if dropped > 0 {
                self.rbuf.consume(dropped);
                acceptor.counters().note_pipelined_dropped();
                crate::info!(
                    "starttls peer={peer} shard={}: dropped {dropped} bytes pipelined after \
                     STARTTLS (RFC 3207 §5, CVE-2011-0411)",
                    self.shard.id
                );
            }
        }
        let started = acceptor.start(implicit);
        if !implicit {
            if let Err(e) = &started {
                crate::warn!(
                    "starttls peer={peer} shard={}: cannot start TLS: {e}",
                    self.shard.id
                );
            }
            self.session.handle_starttls(started.is_ok(), &mut self.out);
            self.flush().await?;
        }
        let mut t = match started {
            Ok(t) => Box::new(t),
            Err(e) => {
                crate::warn!(
                    "tls peer={peer} shard={}: cannot start TLS: {e}",
                    self.shard.id
                );
                return if implicit {
                    Err(Outcome::TlsHandshake)
                } else {
                    Ok(())
                };
            }
        };
        if implicit {
            // Behind a PROXY header, the ClientHello may have come in the
            // same read as the header: it is TLS input, not SMTP.
            let early = self.rbuf.data().len();
            if early > 0 {
                t.preload(self.rbuf.data());
                self.rbuf.consume(early);
            }
        }
        if let Err(reason) = tls::handshake(&mut self.stream, &mut t, &self.shard, &acceptor).await
        {
            // What an operator needs to act on a TLS-RPT report.
            crate::info!(
                "tls handshake failed peer={peer} shard={} sni={}: {reason}",
                self.shard.id,
                t.server_name().unwrap_or("-"),
            );
            let _ = self.stream.close().await;
            return Err(Outcome::TlsHandshake);
        }
        self.tls_trace = t.trace();
        let m = &self.shard.metrics;
        if let Some(tt) = &self.tls_trace {
            m.tls_handshakes.inc(match tt.version {
                "TLSv1.2" => TlsVersion::V12,
                _ => TlsVersion::V13,
            });
        }
        if t.resumed() {
            m.tls_resumed.inc();
        }
        if let Some(tt) = &self.tls_trace {
            crate::debug!(
                "tls peer={peer} shard={} {} {} sni={}",
                self.shard.id,
                tt.version,
                tt.cipher,
                t.server_name().unwrap_or("-"),
            );
        }
        self.tls = Some(t);
        self.session.tls_started(Instant::now());
        Ok(())
    }

    /// Writes `out` (encrypted once TLS is on), bounded as
    /// [`write_bounded`].
    async fn send(
        &mut self,
        limit: Duration,
        watch_hard_stop: bool,
    ) -> Result<(), Option<io::ErrorKind>> {
        match &mut self.tls {
            None => {
                write_bounded(
                    &mut self.stream,
                    &self.out,
                    limit,
                    &self.shard,
                    watch_hard_stop,
                )
                .await
            }
            Some(t) => {
                // A write cut off by its deadline may have left part of a
                // record on the wire: nothing after it would decrypt.
                if t.cut {
                    return Err(Some(io::ErrorKind::BrokenPipe));
                }
                let bytes = t.seal(&self.out).map_err(|e| Some(e.kind()))?;
                let r = write_bounded(&mut self.stream, bytes, limit, &self.shard, watch_hard_stop)
                    .await;
                t.cut = r.is_err();
                r
            }
        }
    }

    /// Tells the session about the shutdown; an idle one closes now.
    async fn on_shutdown(&mut self) -> Option<Outcome> {
        self.shutdown_seen = true;
        if self.session.handle_shutdown(&mut self.out) {
            self.finish().await;
            return Some(Outcome::Session(CloseReason::Shutdown));
        }
        None
    }

    /// The grace period is over: `421` now, whatever is in flight.
    async fn cut_off(&mut self) -> Outcome {
        let reason = self.session.handle_hard_stop(&mut self.out);
        if let Msg::Open(w) = std::mem::replace(&mut self.msg, Msg::None) {
            w.abort();
        }
        self.finish().await;
        Outcome::Session(reason)
    }

    /// Feeds unconsumed input to the session and acts on its events until
    /// it needs more input, closes, or has [`REPLY_HIGH_WATER`] bytes of
    /// replies to write. Input goes in [`INPUT_CHUNK`] pieces, so the
    /// replies to one piece are all that can pass the high-water mark; only
    /// a body that continues past the piece gets the rest at once.
    async fn process(&mut self) -> Step {
        // A map reloaded on SIGHUP applies from the next command on: one
        // atomic load per read, the lock only after a swap.
        let g = self.shard.recipients.generation();
        if g != self.recipients_gen {
            self.recipients_gen = g;
            self.session.set_recipients(self.shard.recipients.load());
        }
        let mut chunk = INPUT_CHUNK;
        let mut whole = false;
        loop {
            if self.out.len() >= REPLY_HIGH_WATER {
                return Step::Flush;
            }
            let now = Instant::now();
            let data = self.rbuf.data();
            let fed = if whole {
                data.len()
            } else {
                data.len().min(chunk)
            };
            let more = fed < data.len();
            // The reclaimer thread's backpressure flag: one relaxed load.
            let full = self
                .shard
                .pressure
                .load(std::sync::atomic::Ordering::Relaxed);
            self.session.set_spool_full(full);
            let (used, ev) = self.session.handle_input(now, &data[..fed], &mut self.out);
            // A DATA body goes on: no reply comes before its end, which the
            // session reports as an event. (A BDAT chunk is followed by
            // commands within the same call, so it goes in pieces, unless
            // it continues past the piece.)
            whole = matches!(ev, Event::Body(_)) && (used == fed || self.session.in_data_body());
            match ev {
                Event::NeedInput => {
                    self.rbuf.consume(used);
                    if !more {
                        return Step::NeedInput;
                    }
                    // A line longer than the piece: hand over the rest of
                    // it and no more (so still at most one more reply).
                    chunk = if used == 0 {
                        let data = self.rbuf.data();
                        memchr::memchr(b'\n', &data[fed..]).map_or(data.len(), |i| fed + i + 1)
                    } else {
                        INPUT_CHUNK
                    };
                }
                Event::Body(bytes) => {
                    if let Msg::Open(w) = &mut self.msg {
                        if let Err(e) = w.write(bytes).await {
                            self.msg = Msg::Failed(self.store_failed("write", &e));
                        }
                    }
                    self.rbuf.consume(used);
                }
                Event::MessageStart => {
                    self.rbuf.consume(used);
                    self.begin_message();
                }
                Event::MessageAbort => {
                    self.rbuf.consume(used);
                    if let Msg::Open(w) = std::mem::replace(&mut self.msg, Msg::None) {
                        w.abort();
                    }
                }
                Event::MessageEnd => {
                    self.rbuf.consume(used);
                    self.commit_message().await;
                }
                Event::Lookup => {
                    self.rbuf.consume(used);
                    if let Some(reason) = self.lookup().await {
                        return Step::Close(reason);
                    }
                }
                Event::Starttls => {
                    self.rbuf.consume(used);
                    return Step::Starttls;
                }
                Event::Auth => {
                    self.rbuf.consume(used);
                    let shard = Rc::clone(&self.shard);
                    auth::answer(&shard, &mut self.session, &mut self.out).await;
                }
                Event::Close(reason) => {
                    self.rbuf.consume(used);
                    if let Msg::Open(w) = std::mem::replace(&mut self.msg, Msg::None) {
                        w.abort();
                    }
                    return Step::Close(reason);
                }
            }
        }
    }

    /// A RCPT awaits a remote lookup: answer it from the shard's cache, or
    /// ask the lookup threads and wait for them, at most until the
    /// session's lookup deadline (then it answers `451` itself). `Some`:
    /// the hard stop (or the lifetime) ended the session meanwhile.
    async fn lookup(&mut self) -> Option<CloseReason> {
        let (remote, to) = self.session.pending_lookup()?;
        let smtp = &self.shard.live.smtp();
        let key = lookup::cache_key(remote, to, smtp.recipient_ignore_case);
        let hit = self
            .shard
            .lookup_cache
            .borrow_mut()
            .get(&key, Instant::now());
        if let Some(k) = hit {
            self.session.handle_lookup(Ok(k), &mut self.out);
            return None;
        }
        let asked = match &self.shard.lookups {
            Some(pool) => pool.ask(remote, to),
            // Config::validate requires the threads for these policies.
            None => Err(LookupFailed),
        };
        let mut pending = match asked {
            Ok(p) => p,
            Err(e) => {
                crate::warn!(
                    "shard {}: recipient lookup queue full; answering 451",
                    self.shard.id
                );
                self.session.handle_lookup(Err(e), &mut self.out);
                return None;
            }
        };
        enum Woke {
            Answer(Answer),
            Timer,
            HardStop,
        }
        while self.session.awaiting_lookup() {
            let now = Instant::now();
            let limit = self
                .session
                .poll_timeout()
                .map_or(smtp.recipient_lookup_timeout, |d| {
                    d.saturating_duration_since(now)
                })
                .min(LOOKUP_REPOLL);
            let woke = future::or(
                async { Woke::Answer((&mut pending).await) },
                future::or(
                    async {
                        sleep(limit).await;
                        Woke::Timer
                    },
                    async {
                        self.shard.hard_stop.wait().await;
                        Woke::HardStop
                    },
                ),
            )
            .await;
            match woke {
                Woke::Answer(a) => {
                    if let Ok(k) = a {
                        let ttl = lookup::ttl(
                            smtp.recipient_cache_positive_ttl,
                            smtp.recipient_cache_negative_ttl,
                            k,
                        );
                        self.shard
                            .lookup_cache
                            .borrow_mut()
                            .insert(key, k, Instant::now() + ttl);
                    }
                    self.session.handle_lookup(a, &mut self.out);
                    return None;
                }
                // `None` and still awaiting: not due yet (a re-poll, or
                // a timer that fired early); look at the answer again.
                Woke::Timer => {
                    if let Some(r) = self.session.handle_timeout(Instant::now(), &mut self.out) {
                        return Some(r);
                    }
                }
                Woke::HardStop => return Some(self.session.handle_hard_stop(&mut self.out)),
            }
        }
        None
    }

    /// A body begins: open a record with the envelope and trace header,
    /// then let the session shed its copy of the envelope (the record holds
    /// it now; the commit's log line needs only its head and counts).
    fn begin_message(&mut self) {
        let spool = &self.shard.spool;
        let id = spool.next_queue_id();
        let now = unix_now();
        let env = self.session.envelope();
        let mut received = Vec::with_capacity(256);
        trace::write_received(
            &mut received,
            &env,
            self.tls_trace.as_ref(),
            &self.shard.live.smtp().hostname,
            id.as_str(),
            now,
        );
        let rcpts: Vec<&str> = env.rcpts().collect();
        let rec = EnvelopeRecord {
            arrival_unix: now,
            client: env.client,
            helo: env.helo,
            mail_from: env.mail_from(),
            mail_params: env.raw_params(),
            rcpts: &rcpts,
            tls: self.tls_trace.map(|t| (t.version, t.cipher)),
            auth: env.auth,
        };
        self.msg = match ShardSpool::begin(spool, id, &rec, &received) {
            Ok(w) => Msg::Open(Box::new(w)),
            Err(e) => Msg::Failed(self.store_failed("begin", &e)),
        };
        self.session.shed_envelope();
    }

    /// End of data: make the message durable, then let the session reply.
    async fn commit_message(&mut self) {
        let end_of_data = Instant::now();
        let result = match std::mem::replace(&mut self.msg, Msg::None) {
            Msg::Open(w) => match w.commit().await {
                Ok(id) => Ok(id),
                Err(e) => Err(self.store_failed("commit", &e)),
            },
            Msg::Failed(e) => Err(e),
            Msg::None => {
                crate::error!(
                    "shard {}: MessageEnd without MessageStart (engine bug); answering 451",
                    self.shard.id
                );
                Err(CommitError::Io)
            }
        };
        if let Ok(id) = &result {
            let size = self.session.body_bytes();
            let st = &self.shard.stats;
            Stats::add(&st.messages, 1);
            Stats::add(&st.message_bytes, size);
            self.shard.metrics.messages_accepted.inc();
            self.shard.metrics.message_bytes.add(size);
            if crate::log::enabled(crate::log::Level::Info) {
                let env = self.session.envelope();
                // Never rate-limited: one line per accepted message.
                crate::log::write(
                    crate::log::Level::Info,
                    format_args!(
                        "msg id={id} shard={} from=<{}> rcpts={} to={} size={size}",
                        self.shard.id,
                        env.mail_from(),
                        env.rcpt_count(),
                        RcptList(&env),
                    ),
                );
            }
        }
        let result = result.as_ref().map(store::QueueId::as_str).map_err(|e| *e);
        self.session.handle_commit(result, &mut self.out);
        let m = &self.shard.metrics;
        m.end_of_data_seconds.record_duration(end_of_data.elapsed());
    }

    fn store_failed(&self, what: &str, e: &SpoolError) -> CommitError {
        crate::warn!("shard {}: store {what} failed: {e}", self.shard.id);
        if e.is_full() {
            CommitError::SpoolFull
        } else {
            CommitError::Io
        }
    }

    /// Writes the reply buffer, bounded by the session's timeout (a client
    /// that does not read its replies is as stalled as one that does not
    /// send), by the end of its lifetime (then it closes as any session at
    /// that point does) and by the hard stop.
    async fn flush(&mut self) -> Result<(), Outcome> {
        self.log_refusals();
        if self.out.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let limit = match self.session.poll_timeout() {
            Some(d) => d.saturating_duration_since(now),
            None => self.session.read_timeout(),
        }
        .min(self.session.read_timeout());
        let res = self.send(limit, true).await;
        self.bytes_out += self.out.len() as u64;
        self.out.clear();
        // A huge pipelined batch grew it; do not keep that for the session's life.
        let keep = self.shard.server.write_buffer_bytes;
        if self.out.capacity() > 4 * keep {
            self.out = Vec::with_capacity(keep);
        }
        match res {
            Ok(()) => Ok(()),
            Err(None) => {
                // The lifetime ended while the client was not reading: close
                // as at any other point past it. A plain write timeout
                // drops the connection, as before.
                let r = self.session.handle_timeout(Instant::now(), &mut self.out);
                if r == Some(CloseReason::Lifetime) {
                    self.finish().await;
                    return Err(Outcome::Session(CloseReason::Lifetime));
                }
                Err(Outcome::WriteTimeout)
            }
            Err(Some(k)) => Err(Outcome::WriteError(k)),
        }
    }

    /// Logs each command the session refused, as Postfix's `NOQUEUE:
    /// reject:` lines; every reply leaves through `flush` or `finish`, which
    /// call this first.
    fn log_refusals(&mut self) {
        let peer = PeerDisplay(self.session.client().peer);
        let on = crate::log::enabled(crate::log::Level::Info);
        let metrics = &self.shard.metrics;
        for r in self.session.drain_refusals() {
            metrics.note_refusal(&r);
            if !on {
                continue;
            }
            crate::info!(
                "NOQUEUE: reject: {} from {peer}: {} {} {}; shard={} arg={:?}",
                r.verb,
                r.code(),
                r.enhanced(),
                r.reason(),
                self.shard.id,
                r.arg(),
            );
        }
    }

    /// Last reply, then a lingering close.
    async fn finish(&mut self) {
        self.log_refusals();
        if let Some(t) = &mut self.tls {
            t.close();
        }
        if !self.out.is_empty() || self.tls.is_some() {
            let res = self.send(LINGER, false).await;
            if res.is_ok() {
                self.bytes_out += self.out.len() as u64;
            }
            self.out.clear();
        }
        linger(&mut self.stream, &self.shard).await;
    }

    /// Waits for input, the session's next deadline, shutdown or hard stop.
    /// A deadline already passed wins over input that is waiting, so a
    /// client that keeps sending still meets the lifetime limit.
    async fn wait_input(&mut self) -> Wake {
        let now = Instant::now();
        let limit = match self.session.poll_timeout() {
            Some(d) => d.saturating_duration_since(now),
            // Too far to represent: the read timeout is the bound.
            None => self.session.read_timeout(),
        };
        if limit.is_zero() {
            return Wake::Timer;
        }
        let size = self.shard.server.read_buffer_bytes;
        let watch_shutdown = !self.shutdown_seen;
        let first = limit.min(IDLE_RELEASE);
        let spare = self.rbuf.spare(size);
        if spare.is_empty() {
            // The session always consumes enough to leave room (the buffer is
            // larger than any line); if it did not, reading would spin.
            crate::error!(
                "shard {}: read buffer full and unconsumed (engine bug); closing",
                self.shard.id
            );
            return Wake::Stuck;
        }
        if self.tls.is_some() {
            return self.wait_input_tls(limit, watch_shutdown).await;
        }
        let wake = wait_readable(&mut self.stream, spare, first, &self.shard, watch_shutdown).await;
        if let Wake::Data(n) = wake {
            self.rbuf.filled(n);
            return wake;
        }
        if !matches!(wake, Wake::Timer) || limit <= IDLE_RELEASE {
            return wake;
        }
        let (wake, one) = self.idle_wait(limit - first, 0, watch_shutdown).await;
        if let Wake::Data(n) = wake {
            let spare = self.rbuf.spare(size);
            spare[..n].copy_from_slice(&one[..n]);
            self.rbuf.filled(n);
        }
        wake
    }

    /// Idle: gives the read and reply buffers back (`tls` bytes of TLS
    /// buffer already went, for the log line) and waits up to `rest` with
    /// a 1-byte read, whose byte the caller puts where it belongs.
    async fn idle_wait(
        &mut self,
        rest: Duration,
        tls: usize,
        watch_shutdown: bool,
    ) -> (Wake, [u8; 1]) {
        let held = (self.rbuf.buf.capacity(), self.out.capacity());
        self.rbuf.release();
        self.out = Vec::new();
        // Tests check this line: the release is otherwise invisible.
        crate::debug!(
            "shard {}: idle connection released read={} reply={} tls={tls} buffer bytes",
            self.shard.id,
            held.0 - self.rbuf.buf.capacity(),
            held.1 - self.out.capacity(),
        );
        let mut one = [0u8; 1];
        let wake = wait_readable(
            &mut self.stream,
            &mut one,
            rest,
            &self.shard,
            watch_shutdown,
        )
        .await;
        self.out.reserve(self.shard.server.write_buffer_bytes);
        (wake, one)
    }
}

impl Conn {
    /// [`Conn::wait_input`] over TLS: plaintext into the read buffer; after
    /// [`IDLE_RELEASE`] without input, the read, reply and ciphertext
    /// buffers go back and a 1-byte read of ciphertext waits, as without
    /// TLS, so an idle TLS connection keeps only rustls's own state.
    async fn wait_input_tls(&mut self, limit: Duration, watch_shutdown: bool) -> Wake {
        let size = self.shard.server.read_buffer_bytes;
        let Some(t) = self.tls.as_deref_mut() else {
            return Wake::Stuck;
        };
        let first = limit.min(IDLE_RELEASE);
        let spare = self.rbuf.spare(size);
        let wake = tls::read_plain(
            &mut self.stream,
            t,
            spare,
            first,
            &self.shard,
            watch_shutdown,
        )
        .await;
        if !matches!(wake, Wake::Timer) || limit <= IDLE_RELEASE || !self.rbuf.data().is_empty() {
            if let Wake::Data(n) = wake {
                self.rbuf.filled(n);
            }
            return wake;
        }
        let cin = t.release();
        // `first` has passed (its timer fired).
        let started = Instant::now();
        let rest = limit.saturating_sub(first);
        let (wake, one) = self.idle_wait(rest, cin, watch_shutdown).await;
        let Wake::Data(n) = wake else {
            return wake;
        };
        let Some(t) = self.tls.as_deref_mut() else {
            return Wake::Stuck;
        };
        t.preload(&one[..n]);
        // The rest of the record (and of the batch) as a busy connection
        // reads it.
        let rest = rest.saturating_sub(started.elapsed());
        let spare = self.rbuf.spare(size);
        let wake = tls::read_plain(
            &mut self.stream,
            t,
            spare,
            rest,
            &self.shard,
            watch_shutdown,
        )
        .await;
        if let Wake::Data(n) = wake {
            self.rbuf.filled(n);
        }
        wake
    }
}

/// Races a read against a timer, shutdown (if `watch_shutdown`) and the hard
/// stop. The read is polled first, so input already there always wins.
/// Dropping a pending glommio read consumes nothing, so the losers of the
/// race lose no bytes.
pub(super) async fn wait_readable(
    stream: &mut TcpStream,
    buf: &mut [u8],
    limit: Duration,
    shard: &Shard,
    watch_shutdown: bool,
) -> Wake {
    let read = async {
        match stream.read(buf).await {
            Ok(0) => Wake::Eof,
            Ok(n) => Wake::Data(n),
            Err(e) => Wake::Error(e),
        }
    };
    let timer = async {
        sleep(limit).await;
        Wake::Timer
    };
    let stop = async {
        if watch_shutdown {
            future::or(
                async {
                    shard.shutdown.wait().await;
                    Wake::Shutdown
                },
                async {
                    shard.hard_stop.wait().await;
                    Wake::HardStop
                },
            )
            .await
        } else {
            shard.hard_stop.wait().await;
            Wake::HardStop
        }
    };
    future::or(read, future::or(timer, stop)).await
}

/// `write_all` bounded by `limit` and, if `watch_hard_stop`, by the hard stop.
/// `Err(None)`: timed out or stopped.
pub(super) async fn write_bounded(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
    shard: &Shard,
    watch_hard_stop: bool,
) -> Result<(), Option<io::ErrorKind>> {
    future::or(
        async { stream.write_all(bytes).await.map_err(|e| Some(e.kind())) },
        async {
            if watch_hard_stop {
                future::or(sleep(limit), shard.hard_stop.wait()).await;
            } else {
                sleep(limit).await;
            }
            Err(None)
        },
    )
    .await
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Up to five recipients, then a count of the rest: what a shed envelope
/// still holds (`Session::shed_envelope`).
struct RcptList<'a, 'e>(&'a crate::protocol::Envelope<'e>);

impl fmt::Display for RcptList<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = SHED_KEEP_RCPTS;
        let n = self.0.rcpt_count();
        for (i, r) in self.0.rcpts().take(SHOWN).enumerate() {
            write!(f, "{}<{r}>", if i > 0 { "," } else { "" })?;
        }
        if n > SHOWN {
            write!(f, ",(+{} more)", n - SHOWN)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_starts_small_grows_for_bulk_and_keeps_the_tail() {
        let mut b = ReadBuf::default();
        assert_eq!(b.spare(16384).len(), FIRST_READ_BYTES);
        b.spare(16384)[..10].copy_from_slice(b"MAIL FROM:");
        b.filled(10);
        b.consume(5);
        assert_eq!(b.data(), b"FROM:");
        // Compaction moves the tail to the front; still the small buffer.
        assert_eq!(b.spare(16384).len(), FIRST_READ_BYTES - 5);
        assert_eq!(b.data(), b"FROM:");
        // A read that fills it means bulk input: the next one gets it all.
        let n = b.spare(16384).len();
        b.filled(n);
        assert_eq!(b.spare(16384).len(), 16384 - FIRST_READ_BYTES);
        assert_eq!(&b.data()[..5], b"FROM:");
    }

    #[test]
    fn a_tail_over_half_the_small_buffer_gets_the_full_size() {
        let mut b = ReadBuf::default();
        let half = FIRST_READ_BYTES / 2 + 1;
        b.spare(16384);
        b.filled(half);
        assert_eq!(b.spare(16384).len(), 16384 - half);
    }

    #[test]
    fn release_frees_only_an_empty_buffer() {
        let mut b = ReadBuf::default();
        b.spare(16384);
        b.filled(3);
        b.release();
        assert_eq!(b.data().len(), 3, "unconsumed bytes must survive");
        b.consume(3);
        b.release();
        assert_eq!(b.buf.capacity(), 0);
        assert_eq!(b.spare(16384).len(), FIRST_READ_BYTES);
    }

    #[test]
    fn a_small_configured_buffer_is_never_exceeded() {
        let mut b = ReadBuf::default();
        assert_eq!(b.spare(1500).len(), 1500);
    }
}
