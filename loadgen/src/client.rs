//! One SMTP client connection on a generator core: connect, greeting, EHLO,
//! transactions (DATA or BDAT, pipelined or not), RSET, QUIT.
//!
//! This is the only code that speaks SMTP on a socket (glommio's `TcpStream`
//! does the syscalls and the waiting). It records what it sees (reply
//! classes, per-phase latencies, acknowledged queue ids) into the core's
//! [`IntervalStats`] and reports each message's outcome to its caller; it never
//! retries, sleeps or decides what to send next — `engine.rs` does.
//!
//! Every read and write is bounded by `--timeout`, every connect by
//! `--connect-timeout`; anything the server does that is not SMTP becomes a
//! [`Failure`], never a panic.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use crate::config::Pipelining;
use crate::config::RcptPattern;
use crate::message::{Messages, Payload};
use crate::reply::{self, Reply};
use crate::stats::{Command, ErrorKind, IntervalStats, Phase};
use crate::tls::{TlsMode, TlsSetup, Transport};

/// The core's current interval, shared by its connections. The engine swaps
/// the inner value out at each interval boundary.
pub type Recorder = Rc<RefCell<IntervalStats>>;

/// A connection that cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure, for the error counters.
    pub kind: ErrorKind,
    /// What happened, for the first-error-of-each-kind report.
    pub detail: String,
}

impl Failure {
    fn protocol(detail: String) -> Failure {
        Failure {
            kind: ErrorKind::Protocol,
            detail,
        }
    }

    fn io(e: &io::Error, during: Command) -> Failure {
        let kind = match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => ErrorKind::Reset,
            io::ErrorKind::UnexpectedEof => ErrorKind::EarlyClose,
            _ => ErrorKind::Io,
        };
        Failure {
            kind,
            detail: format!("{}: {e}", during.name()),
        }
    }

    /// TLS could not be started; `detail` says why and what to do.
    fn tls(detail: String) -> Failure {
        Failure {
            kind: ErrorKind::Tls,
            detail,
        }
    }

    /// A failed TLS handshake: a TLS error (rustls's reason, `InvalidData`)
    /// or the socket's.
    fn handshake(e: &io::Error) -> Failure {
        if e.kind() == io::ErrorKind::InvalidData {
            Failure::tls(e.to_string())
        } else {
            let mut f = Failure::io(e, Command::Starttls);
            f.detail = format!("TLS handshake: {e}");
            f
        }
    }

    fn connect(e: &io::Error) -> Failure {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
            io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
            _ => ErrorKind::ConnectOther,
        };
        Failure {
            kind,
            detail: format!("connect: {e}"),
        }
    }
}

/// How one message (or one connection set-up) ended, short of a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server accepted it (final 2xx).
    Accepted,
    /// The server refused it; `code` is the first 4xx/5xx of the transaction.
    Refused {
        /// The refusing reply code.
        code: u16,
    },
}

/// Per-connection settings that stay fixed for the run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server address.
    pub target: SocketAddr,
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on each read or write.
    pub reply_timeout: Duration,
    /// Pipelining policy.
    pub pipelining: Pipelining,
    /// Send bodies with BDAT.
    pub bdat: bool,
    /// Record acknowledged queue ids.
    pub ack_log: bool,
    /// Chain messages on pipelined DATA connections (see [`Conn::send_mail`]).
    pub chain: bool,
    /// `--starttls` or `--tls`.
    pub tls: Option<TlsSetup>,
    /// Bind each connection to the next address of this network.
    pub source_ips: Option<ipnet::IpNet>,
    /// Share of connections that are early talkers ([`pregreet`]).
    pub pregreet_fraction: f64,
    /// `--proxy-source`: open with a PROXY v2 header from the next address
    /// of this range ([`crate::proxy`]).
    pub proxy_source: Option<ipnet::IpNet>,
    /// `--auth`: the `AUTH PLAIN ...` line sent after TLS and EHLO.
    pub auth: Option<std::sync::Arc<[u8]>>,
}

/// `AUTH PLAIN <base64 of NUL user NUL pass>` (RFC 4616) for `USER:PASS`,
/// CRLF included: built once per run.
pub fn auth_plain_line(user_pass: &str) -> std::sync::Arc<[u8]> {
    let (user, pass) = user_pass.split_once(':').unwrap_or((user_pass, ""));
    let msg = [b"\0", user.as_bytes(), b"\0", pass.as_bytes()].concat();
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut line = b"AUTH PLAIN ".to_vec();
    for c in msg.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            line.push(match i <= c.len() {
                true => A[(n >> (18 - 6 * i) & 63) as usize],
                false => b'=',
            });
        }
    }
    line.extend_from_slice(b"\r\n");
    line.into()
}

/// Connections set up by this process (early talkers included), to pick
/// the early talkers evenly: connection n is one when `n * fraction`
/// crosses an integer.
static SETUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Source addresses handed out so far (`--source-ips`), in turn.
static SOURCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Settings {
    /// Whether the next connection to set up is an early talker: exactly
    /// `fraction` of them, spread evenly (no randomness, so a run's counts
    /// are known in advance).
    pub fn next_is_pregreet(&self) -> bool {
        if self.pregreet_fraction <= 0.0 {
            return false;
        }
        let n = SETUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        ((n + 1.0) * self.pregreet_fraction).floor() > (n * self.pregreet_fraction).floor()
    }

    /// The next source address of `--source-ips`, in turn (a network's own
    /// and broadcast addresses skipped where it has more than two).
    fn next_source(&self, net: ipnet::IpNet) -> std::net::IpAddr {
        use std::net::IpAddr;
        let n = SOURCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match net {
            ipnet::IpNet::V4(v4) => {
                let base = u32::from(v4.network());
                let size = 1u64 << (32 - u32::from(v4.prefix_len()));
                let (first, count) = if size > 2 { (1, size - 2) } else { (0, size) };
                IpAddr::from(std::net::Ipv4Addr::from(
                    (u64::from(base) + first + n % count) as u32,
                ))
            }
            ipnet::IpNet::V6(v6) => {
                let base = u128::from(v6.network());
                let bits = 128 - u32::from(v6.prefix_len());
                let count = if bits >= 64 { u64::MAX } else { 1u64 << bits };
                IpAddr::from(std::net::Ipv6Addr::from(base + u128::from(n % count)))
            }
        }
    }

    /// Connects to the target and, with `--proxy-source`, sends the PROXY
    /// v2 header first (early talkers too: a balancer always sends it).
    async fn connect(&self) -> Result<TcpStream, Failure> {
        use futures_lite::AsyncWriteExt;
        let mut stream = self.connect_tcp().await?;
        if let Some(net) = self.proxy_source {
            let port = stream.local_addr().map_or(0, |a| a.port());
            let header = crate::proxy::next_header(net, port, self.target);
            stream
                .write_all(&header)
                .await
                .map_err(|e| Failure::connect(&e))?;
        }
        Ok(stream)
    }

    /// Connects to the target, from the next `--source-ips` address if set.
    /// That connect is a blocking one (glommio cannot bind first), bounded
    /// by `--connect-timeout`; on loopback it takes microseconds.
    async fn connect_tcp(&self) -> Result<TcpStream, Failure> {
        let Some(net) = self.source_ips else {
            return TcpStream::connect_timeout(self.target, self.connect_timeout)
                .await
                .map_err(|e| Failure::connect(&e.into()));
        };
        use socket2::{Domain, Socket, Type};
        use std::os::fd::{FromRawFd, IntoRawFd};
        let src = self.next_source(net);
        let sock = Socket::new(Domain::for_address(self.target), Type::STREAM, None)
            .map_err(|e| Failure::connect(&e))?;
        sock.bind(&SocketAddr::new(src, 0).into())
            .map_err(|e| Failure::connect(&io::Error::new(e.kind(), format!("bind {src}: {e}"))))?;
        sock.connect_timeout(&self.target.into(), self.connect_timeout)
            .map_err(|e| Failure::connect(&e))?;
        sock.set_nonblocking(true)
            .map_err(|e| Failure::connect(&e))?;
        // SAFETY: a connected TCP socket we own, given away here.
        Ok(unsafe { TcpStream::from_raw_fd(sock.into_raw_fd()) })
    }
}

/// An early talker (`--pregreet-fraction`): connects, sends EHLO at once,
/// before any greeting, and reads what comes back until a final reply that
/// decides: a 4xx/5xx (the server refused it, as a greeting wait should)
/// is returned; a `250` to the EHLO (it was served) is a protocol
/// failure for the report. Sends no mail either way.
///
/// # Errors
/// A [`Failure`] when the connection breaks, or the server served it.
pub async fn pregreet(s: &Settings, msgs: &Messages, rec: &Recorder) -> Result<u16, Failure> {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let mut stream = s.connect().await?;
    let setup = stream
        .set_read_timeout(Some(s.reply_timeout))
        .and_then(|()| stream.set_write_timeout(Some(s.reply_timeout)));
    setup.map_err(|e| Failure::connect(&e.into()))?;
    {
        let mut r = rec.borrow_mut();
        r.counters.conns_opened += 1;
        r.counters.pregreet_sent += 1;
    }
    stream
        .write_all(&msgs.ehlo)
        .await
        .map_err(|e| Failure::io(&e, Command::Ehlo))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut seen = 0;
    loop {
        // Each complete line: `NNN ` ends a reply.
        while let Some(i) = buf[seen..].windows(2).position(|w| w == b"\r\n") {
            let line = &buf[seen..seen + i];
            seen += i + 2;
            let code = std::str::from_utf8(line.get(..3).unwrap_or_default())
                .ok()
                .and_then(|c| c.parse::<u16>().ok());
            match (code, line.get(3)) {
                (Some(c), Some(b' ')) if c >= 400 => {
                    let mut r = rec.borrow_mut();
                    r.counters.reply(Command::Greeting, c);
                    r.counters.pregreet_rejected += 1;
                    return Ok(c);
                }
                (Some(250), Some(b' ')) => {
                    let _ = stream.write_all(b"QUIT\r\n").await;
                    return Err(Failure::protocol(
                        "an early talker (EHLO before the greeting) was served".into(),
                    ));
                }
                (Some(_), _) => {}
                (None, _) => return Err(unexpected(Command::Greeting, 0)),
            }
        }
        if buf.len() > reply::MAX_REPLY_BYTES {
            return Err(Failure::protocol("early talker: reply too long".into()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Failure::io(&e, Command::Greeting))?;
        if n == 0 {
            return Err(Failure {
                kind: ErrorKind::EarlyClose,
                detail: "early talker: server closed without refusing".into(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An open SMTP session, past greeting and EHLO.
pub struct Conn {
    /// Every wait for a reply, or for room to write, is bounded by
    /// `--timeout` (glommio's per-stream timeouts, set at connect). SIGPIPE
    /// is ignored (Rust's runtime does that), so a reset peer is an error.
    /// Plain TCP, or TLS over it once a handshake is done.
    io: Transport,
    /// Read buffer; replies are parsed in place. `rstart..rend` is unparsed.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Where the reply read last lies in `rbuf` (valid until the next read).
    last_reply: std::ops::Range<usize>,
    /// Commands are pipelined on this connection.
    pub pipelining: bool,
    /// The server advertised CHUNKING.
    pub chunking: bool,
    /// Transactions attempted on this connection.
    pub transactions: u64,
    /// When chaining: the next message's MAIL, RCPTs and DATA went out with
    /// the previous body, in the write that began at this instant; its
    /// replies follow the previous message's final reply.
    envelope_sent: Option<Instant>,
    /// `--rcpt-pattern`: the index of this connection's next recipient.
    rcpt_seq: u64,
    /// `--rcpt-pattern`: where each message's envelope is formatted.
    scratch: Vec<u8>,
}

/// Connections opened by this process, to start each at its own place in a
/// `--rcpt-pattern`.
static CONNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Initial read buffer: a few pipelined replies fit; grows only for long EHLO replies.
const READ_BUF_BYTES: usize = 4096;

/// How long QUIT waits for the server to close after its 221.
const QUIT_LINGER: Duration = Duration::from_millis(200);

impl Conn {
    /// Connects, reads the greeting and says EHLO (HELO if EHLO is refused with 5xx).
    ///
    /// # Errors
    /// A [`Failure`] when the connection breaks or the server is not speaking
    /// SMTP. `Ok(Err(code))` when the server refuses the session politely
    /// (a 4xx/5xx greeting, EHLO or HELO); the connection is then dropped.
    pub async fn open(
        s: &Settings,
        msgs: &Messages,
        rec: &Recorder,
    ) -> Result<Result<Conn, u16>, Failure> {
        let t0 = Instant::now();
        let stream = s.connect().await?;
        let connected = Instant::now();
        // Both fail only for a zero timeout (config validation rejects it) or
        // a socket that is already broken.
        let setup = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(s.reply_timeout)))
            .and_then(|()| stream.set_write_timeout(Some(s.reply_timeout)));
        setup.map_err(|e| Failure::connect(&e.into()))?;
        {
            let mut r = rec.borrow_mut();
            r.hists.record(Phase::Connect, nanos(connected - t0));
            r.counters.conns_opened += 1;
        }
        let mut conn = Conn {
            io: Transport::Plain(stream),
            rbuf: vec![0; READ_BUF_BYTES],
            rstart: 0,
            rend: 0,
            last_reply: 0..0,
            pipelining: false,
            chunking: false,
            transactions: 0,
            envelope_sent: None,
            // Spread the connections over the pattern (golden-ratio steps).
            rcpt_seq: msgs.rcpt_pattern.as_ref().map_or(0, |p| {
                let n = CONNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % p.count()
            }),
            scratch: Vec::new(),
        };

        if let Some(tls) = s.tls.as_ref().filter(|t| t.mode == TlsMode::Implicit) {
            conn.start_tls(tls, connected, rec).await?;
        }

        // RFC 5321 §4.3.1: 220 to go on; 554 (or a 4xx) to refuse.
        let greeting = conn.read_reply(Command::Greeting, rec).await?;
        rec.borrow_mut()
            .hists
            .record(Phase::Greeting, nanos(connected.elapsed()));
        match greeting.class() {
            2 => {}
            4 | 5 => return Ok(Err(greeting.code)),
            _ => return Err(unexpected(Command::Greeting, greeting.code)),
        }

        let mut caps = match conn.ehlo(msgs, rec).await? {
            Ok(caps) => caps,
            Err(code) => return Ok(Err(code)),
        };
        if let Some(tls) = s.tls.as_ref().filter(|t| t.mode == TlsMode::StartTls) {
            conn.starttls(tls, &caps, connected, rec).await?;
            // RFC 3207 §4.2: the session starts over; what EHLO said before
            // TLS no longer holds.
            caps = match conn.ehlo(msgs, rec).await? {
                Ok(caps) => caps,
                Err(code) => return Ok(Err(code)),
            };
        }
        if let Some(line) = &s.auth {
            // RFC 4954 §4: 235 to go on; a 4xx/5xx refuses the session.
            conn.write(line, Command::Auth).await?;
            let r = conn.read_reply(Command::Auth, rec).await?;
            match r.class() {
                2 => {}
                4 | 5 => return Ok(Err(r.code)),
                _ => return Err(unexpected(Command::Auth, r.code)),
            }
        }
        conn.pipelining = match s.pipelining {
            Pipelining::On => true,
            Pipelining::Off => false,
            Pipelining::Auto => caps.pipelining,
        };
        conn.chunking = caps.chunking;
        let mut r = rec.borrow_mut();
        r.counters.conns_pipelined += u64::from(conn.pipelining);
        r.counters.conns_chunking += u64::from(conn.chunking);
        drop(r);
        Ok(Ok(conn))
    }

    /// Says EHLO (HELO if EHLO is refused with 5xx) and reads what the server
    /// offers. `Ok(Err(code))` when the server refuses the session.
    async fn ehlo(
        &mut self,
        msgs: &Messages,
        rec: &Recorder,
    ) -> Result<Result<reply::Capabilities, u16>, Failure> {
        self.write(&msgs.ehlo, Command::Ehlo).await?;
        let ehlo = self.read_reply(Command::Ehlo, rec).await?;
        Ok(Ok(match ehlo.class() {
            2 => reply::parse_ehlo(self.last_reply_bytes()),
            // RFC 5321 §4.1.4: a server that does not know EHLO says 5xx; fall back to HELO.
            5 => {
                self.write(&msgs.helo, Command::Helo).await?;
                let helo = self.read_reply(Command::Helo, rec).await?;
                match helo.class() {
                    2 => reply::Capabilities::default(),
                    4 | 5 => return Ok(Err(helo.code)),
                    _ => return Err(unexpected(Command::Helo, helo.code)),
                }
            }
            4 => return Ok(Err(ehlo.code)),
            _ => return Err(unexpected(Command::Ehlo, ehlo.code)),
        }))
    }

    /// STARTTLS (RFC 3207) and the handshake. A server that does not offer
    /// it, or refuses it, fails the connection: `--starttls` asks for TLS,
    /// and a run that quietly went on in plaintext would measure the wrong
    /// thing.
    async fn starttls(
        &mut self,
        tls: &TlsSetup,
        caps: &reply::Capabilities,
        connected: Instant,
        rec: &Recorder,
    ) -> Result<(), Failure> {
        if !caps.starttls {
            return Err(Failure::tls(
                "--starttls: the server's EHLO reply does not offer STARTTLS \
                 (configure a certificate on it, or run without --starttls)"
                    .into(),
            ));
        }
        self.write(b"STARTTLS\r\n", Command::Starttls).await?;
        let r = self.read_reply(Command::Starttls, rec).await?;
        if r.class() != 2 {
            return Err(Failure::tls(format!(
                "--starttls: the server refused STARTTLS with {}",
                r.code
            )));
        }
        // RFC 3207 §4.2: nothing may follow the 220 in plaintext; bytes that
        // did would be taken as the first TLS record, or worse, as replies
        // inside TLS (the CVE-2011-0411 class, on the client side).
        if self.rstart != self.rend {
            return Err(Failure::protocol(
                "STARTTLS: the server sent bytes after its 220, before the TLS handshake".into(),
            ));
        }
        self.start_tls(tls, connected, rec).await
    }

    /// The TLS handshake; records the time from `connected` to its end.
    async fn start_tls(
        &mut self,
        tls: &TlsSetup,
        connected: Instant,
        rec: &Recorder,
    ) -> Result<(), Failure> {
        // Swapped out for the handshake, which consumes the plain transport.
        let plain = std::mem::replace(&mut self.io, Transport::Closed);
        let (io, est) = plain
            .start_tls(tls)
            .await
            .map_err(|e| Failure::handshake(&e))?;
        self.io = io;
        let mut r = rec.borrow_mut();
        r.hists.record(Phase::Handshake, nanos(connected.elapsed()));
        r.counters.tls_handshakes += 1;
        r.counters.tls_resumed += u64::from(est.resumed);
        Ok(())
    }

    /// Sends one message of `payload` with DATA or BDAT.
    ///
    /// A refusal leaves the connection usable unless the code was 421 (RFC 5321
    /// §3.8: the server is closing); the caller sends RSET before reusing it,
    /// unless the next message is chained.
    ///
    /// Chaining (pipelined DATA with [`Settings::chain`]): once the 354 is in
    /// and a recipient was accepted, `chain_next` is asked whether another
    /// message follows on this connection; if it says yes, the body goes out
    /// in one write with the next message's MAIL, RCPTs and DATA (RFC 2920
    /// §3.1), and the next call's envelope replies are read after this
    /// message's final reply. The server processes them in order, so each
    /// reply belongs to the command at its position: this message's
    /// end-of-data reply first, then the next one's MAIL, RCPT and DATA. After
    /// a chained write the caller must not send RSET: the end-of-data reply
    /// ends the transaction whatever its code (RFC 5321 §4.1.1.4), and an RSET
    /// would land behind the next DATA, inside the next message's content.
    ///
    /// # Errors
    /// A [`Failure`] when the connection broke or the server broke the protocol.
    pub async fn send_mail(
        &mut self,
        s: &Settings,
        msgs: &Messages,
        payload: &Payload,
        rec: &Recorder,
        chain_next: impl FnOnce() -> bool,
    ) -> Result<Outcome, Failure> {
        self.transactions += 1;
        // A chained envelope was written with the previous body: the
        // transaction began with that write.
        let chained = self.envelope_sent.take();
        let t0 = chained.unwrap_or_else(Instant::now);
        let env = &msgs.envelope;
        // `blocked`: the code that stopped the transaction before any body
        // could be accepted (MAIL refused, or every RCPT refused).
        let (blocked, final_reply, final_cmd, eod_sent) = if s.bdat {
            if self.pipelining {
                // RFC 3030 §4.2 allows BDAT in a pipelined group: the whole
                // transaction is one write.
                match &msgs.rcpt_pattern {
                    None => self.write(&payload.pipelined_bdat, Command::Bdat).await?,
                    Some(p) => {
                        let mut buf = std::mem::take(&mut self.scratch);
                        buf.clear();
                        self.pattern_envelope(msgs, p, &mut buf, false);
                        buf.extend_from_slice(&payload.bdat_chunk);
                        let r = self.write(&buf, Command::Bdat).await;
                        self.scratch = buf;
                        r?;
                    }
                }
                let sent = Instant::now();
                let blocked = self.envelope_replies(env.rcpts.len(), rec).await?;
                (
                    blocked,
                    self.read_reply(Command::Bdat, rec).await?,
                    Command::Bdat,
                    sent,
                )
            } else {
                if let Some(code) = self.envelope_one_by_one(msgs, rec).await? {
                    return Ok(Outcome::Refused { code });
                }
                self.write(&payload.bdat_chunk, Command::Bdat).await?;
                let sent = Instant::now();
                (
                    None,
                    self.read_reply(Command::Bdat, rec).await?,
                    Command::Bdat,
                    sent,
                )
            }
        } else {
            let (blocked, data) = if self.pipelining {
                if chained.is_none() {
                    match &msgs.rcpt_pattern {
                        None => self.write(&env.pipelined_data, Command::Mail).await?,
                        Some(p) => {
                            let mut buf = std::mem::take(&mut self.scratch);
                            buf.clear();
                            self.pattern_envelope(msgs, p, &mut buf, true);
                            let r = self.write(&buf, Command::Mail).await;
                            self.scratch = buf;
                            r?;
                        }
                    }
                }
                let blocked = self.envelope_replies(env.rcpts.len(), rec).await?;
                (blocked, self.read_reply(Command::Data, rec).await?)
            } else {
                if let Some(code) = self.envelope_one_by_one(msgs, rec).await? {
                    return Ok(Outcome::Refused { code });
                }
                self.write(b"DATA\r\n", Command::Data).await?;
                (None, self.read_reply(Command::Data, rec).await?)
            };
            match data.class() {
                3 => {}
                4 | 5 => {
                    return Ok(Outcome::Refused {
                        code: blocked.unwrap_or(data.code),
                    })
                }
                _ => return Err(unexpected(Command::Data, data.code)),
            }
            // RFC 2920 §3.1: a 354 after every recipient failed still needs
            // the data ended; send an empty one. Such a message is not
            // chained: it is refused anyway, and the caller resets.
            let chain = blocked.is_none() && self.pipelining && s.chain && chain_next();
            let mut buf = std::mem::take(&mut self.scratch);
            let body: &[u8] = if blocked.is_some() {
                b".\r\n"
            } else if chain {
                match &msgs.rcpt_pattern {
                    None => &payload.chained,
                    Some(p) => {
                        buf.clear();
                        buf.extend_from_slice(&payload.data_body);
                        self.pattern_envelope(msgs, p, &mut buf, true);
                        &buf
                    }
                }
            } else {
                &payload.data_body
            };
            let write_start = Instant::now();
            let r = self.write(body, Command::DataEnd).await;
            self.scratch = buf;
            r?;
            let sent = Instant::now();
            if chain {
                self.envelope_sent = Some(write_start);
            }
            (
                blocked,
                self.read_reply(Command::DataEnd, rec).await?,
                Command::DataEnd,
                sent,
            )
        };

        if final_reply.class() == 3 {
            return Err(unexpected(final_cmd, final_reply.code));
        }
        if let Some(code) = blocked {
            // A message without a recipient was not delivered, whatever the
            // final reply claims.
            return Ok(Outcome::Refused { code });
        }
        if final_reply.class() != 2 {
            return Ok(Outcome::Refused {
                code: final_reply.code,
            });
        }
        let done = Instant::now();
        let mut r = rec.borrow_mut();
        r.hists.record(Phase::Txn, nanos(done - t0));
        r.hists.record(Phase::Eod, nanos(done - eod_sent));
        r.counters.bytes_ok += payload.bytes as u64;
        if s.ack_log {
            let id = reply::queue_id(&self.rbuf[final_reply.last_text.clone()]);
            r.acks.extend_from_slice(id.as_bytes());
            r.acks.push(b'\n');
        }
        Ok(Outcome::Accepted)
    }

    /// Sends NOOP and reads its reply (the `noop` scenario).
    ///
    /// # Errors
    /// A [`Failure`] when the connection broke or the reply was not SMTP.
    pub async fn noop(&mut self, rec: &Recorder) -> Result<Outcome, Failure> {
        self.transactions += 1;
        let t0 = Instant::now();
        self.write(b"NOOP\r\n", Command::Noop).await?;
        let r = self.read_reply(Command::Noop, rec).await?;
        match r.class() {
            2 => {
                rec.borrow_mut()
                    .hists
                    .record(Phase::Txn, nanos(t0.elapsed()));
                Ok(Outcome::Accepted)
            }
            4 | 5 => Ok(Outcome::Refused { code: r.code }),
            _ => Err(unexpected(Command::Noop, r.code)),
        }
    }

    /// Resets the transaction after a refusal (RFC 5321 §4.1.1.5): `true`
    /// when the connection can go on, `false` when the server answered
    /// `421` (it is closing the channel, RFC 5321 §3.8: e.g. ringmx after
    /// `smtp.max_errors` failed commands, which a pipelined envelope
    /// refused at MAIL reaches quickly under backpressure). That is the
    /// server's policy, not a protocol error.
    ///
    /// # Errors
    /// A [`Failure`] when the connection broke, or RSET itself was refused
    /// (the session is then in a state we cannot reason about).
    pub async fn rset(&mut self, rec: &Recorder) -> Result<bool, Failure> {
        self.write(b"RSET\r\n", Command::Rset).await?;
        let r = self.read_reply(Command::Rset, rec).await?;
        if r.class() == 2 {
            Ok(true)
        } else if r.code == 421 {
            Ok(false)
        } else {
            Err(unexpected(Command::Rset, r.code))
        }
    }

    /// Says QUIT, reads the 221 and waits briefly for the server to close first,
    /// so that TIME_WAIT lands on the server and a run with a new connection
    /// per message does not exhaust the generator's ephemeral ports.
    ///
    /// # Errors
    /// A [`Failure`] when QUIT gets no reply or a broken one.
    pub async fn quit(mut self, rec: &Recorder) -> Result<(), Failure> {
        self.write(b"QUIT\r\n", Command::Quit).await?;
        self.read_reply(Command::Quit, rec).await?;
        // The server may already have closed: nothing to count if this fails.
        let _ = self.io.close_notify().await;
        // Bounded: a server that keeps the socket open after 221 costs
        // QUIT_LINGER. Setting it fails only for a zero duration.
        if self
            .io
            .tcp()
            .is_some_and(|t| t.set_read_timeout(Some(QUIT_LINGER)).is_ok())
        {
            let mut scratch = [0u8; 64];
            while let Ok(n) = self.io.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads the replies to a pipelined MAIL and `rcpts` RCPTs. Returns the
    /// code that blocks the transaction: MAIL's refusal, or the first RCPT
    /// refusal when no recipient was accepted.
    async fn envelope_replies(
        &mut self,
        rcpts: usize,
        rec: &Recorder,
    ) -> Result<Option<u16>, Failure> {
        let mail = self.read_reply(Command::Mail, rec).await?;
        let mut blocked = match mail.class() {
            2 => None,
            4 | 5 => Some(mail.code),
            _ => return Err(unexpected(Command::Mail, mail.code)),
        };
        let mut rcpts_ok = 0;
        let mut first_refusal = None;
        for _ in 0..rcpts {
            let r = self.read_reply(Command::Rcpt, rec).await?;
            rec.borrow_mut().counters.rcpt_reply(r.code);
            match r.class() {
                2 => rcpts_ok += 1,
                4 | 5 => {
                    first_refusal.get_or_insert(r.code);
                }
                _ => return Err(unexpected(Command::Rcpt, r.code)),
            }
        }
        if rcpts_ok == 0 {
            blocked = blocked.or(first_refusal);
        }
        Ok(blocked)
    }

    /// MAIL and RCPTs one round trip each. Returns the refusing code when the
    /// transaction cannot go on (MAIL refused, or no recipient accepted).
    async fn envelope_one_by_one(
        &mut self,
        msgs: &Messages,
        rec: &Recorder,
    ) -> Result<Option<u16>, Failure> {
        let env = &msgs.envelope;
        self.write(&env.mail, Command::Mail).await?;
        let mail = self.read_reply(Command::Mail, rec).await?;
        match mail.class() {
            2 => {}
            4 | 5 => return Ok(Some(mail.code)),
            _ => return Err(unexpected(Command::Mail, mail.code)),
        }
        let mut first_refusal = None;
        let mut rcpts_ok = 0;
        let mut buf = std::mem::take(&mut self.scratch);
        for rcpt in &env.rcpts {
            let r = match &msgs.rcpt_pattern {
                None => self.write(rcpt, Command::Rcpt).await,
                Some(p) => {
                    buf.clear();
                    p.write_rcpt(self.rcpt_seq, &mut buf);
                    self.rcpt_seq += 1;
                    self.write(&buf, Command::Rcpt).await
                }
            };
            if let Err(e) = r {
                self.scratch = buf;
                return Err(e);
            }
            let r = self.read_reply(Command::Rcpt, rec).await?;
            rec.borrow_mut().counters.rcpt_reply(r.code);
            match r.class() {
                2 => rcpts_ok += 1,
                4 | 5 => {
                    first_refusal.get_or_insert(r.code);
                }
                _ => return Err(unexpected(Command::Rcpt, r.code)),
            }
        }
        self.scratch = buf;
        Ok(if rcpts_ok == 0 { first_refusal } else { None })
    }

    /// Appends MAIL, this message's `--rcpt-pattern` RCPTs and, with
    /// `data`, `DATA`: one pipelined envelope.
    fn pattern_envelope(
        &mut self,
        msgs: &Messages,
        p: &RcptPattern,
        out: &mut Vec<u8>,
        data: bool,
    ) {
        out.extend_from_slice(&msgs.envelope.mail);
        for _ in 0..msgs.envelope.rcpts.len() {
            p.write_rcpt(self.rcpt_seq, out);
            self.rcpt_seq += 1;
        }
        if data {
            out.extend_from_slice(b"DATA\r\n");
        }
    }

    async fn write(&mut self, bytes: &[u8], during: Command) -> Result<(), Failure> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| Failure::io(&e, during))
    }

    /// Reads one complete reply and counts its class against `cmd`.
    async fn read_reply(&mut self, cmd: Command, rec: &Recorder) -> Result<Reply, Failure> {
        loop {
            match reply::parse_reply(&self.rbuf[self.rstart..self.rend]) {
                Ok(Some((r, used))) => {
                    let r = r.shifted(self.rstart);
                    self.last_reply = self.rstart..self.rstart + used;
                    self.rstart += used;
                    rec.borrow_mut().counters.reply(cmd, r.code);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::protocol(format!("reply to {}: {e}", cmd.name()))),
            }
            // Need more bytes: make room at the end.
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            } else if self.rend == self.rbuf.len() {
                if self.rstart > 0 {
                    self.rbuf.copy_within(self.rstart..self.rend, 0);
                    self.rend -= self.rstart;
                    self.rstart = 0;
                } else {
                    // parse_reply fails past MAX_REPLY_BYTES, so this stays bounded.
                    let grown = (self.rbuf.len() * 2).min(reply::MAX_REPLY_BYTES + READ_BUF_BYTES);
                    self.rbuf.resize(grown, 0);
                }
            }
            let n = self
                .io
                .read(&mut self.rbuf[self.rend..])
                .await
                .map_err(|e| Failure::io(&e, cmd))?;
            if n == 0 {
                let what = if self.rend > self.rstart {
                    "mid-reply"
                } else {
                    "awaiting a reply"
                };
                return Err(Failure {
                    kind: ErrorKind::EarlyClose,
                    detail: format!("{}: server closed the connection {what}", cmd.name()),
                });
            }
            self.rend += n;
        }
    }

    /// The raw bytes of the reply read last.
    fn last_reply_bytes(&self) -> &[u8] {
        &self.rbuf[self.last_reply.clone()]
    }
}

fn unexpected(cmd: Command, code: u16) -> Failure {
    Failure::protocol(format!("unexpected {code} reply to {}", cmd.name()))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn auth_plain_line_is_rfc4616_base64() {
        // printf '\0user\0pass' | base64
        assert_eq!(
            &*super::auth_plain_line("user:pass"),
            b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
        );
        // A colon in the password stays in it.
        assert_eq!(
            &*super::auth_plain_line("u:p:q"),
            b"AUTH PLAIN AHUAcDpx\r\n"
        );
    }
}
