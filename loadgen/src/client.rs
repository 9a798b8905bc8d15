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

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::Pipelining;
use crate::config::RcptPattern;
use crate::message::{Messages, Payload};
use crate::reply::{self, Reply};
use crate::stats::{Command, ErrorKind, IntervalStats, Phase};

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
    /// `--proxy-source`: open with a PROXY v2 header from the next address
    /// of this range ([`crate::proxy`]).
    pub proxy_source: Option<ipnet::IpNet>,
}

/// An open SMTP session, past greeting and EHLO.
pub struct Conn {
    /// Every wait for a reply, or for room to write, is bounded by
    /// `--timeout` (glommio's per-stream timeouts, set at connect). SIGPIPE
    /// is ignored (Rust's runtime does that), so a reset peer is an error.
    stream: TcpStream,
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
        let stream = TcpStream::connect_timeout(s.target, s.connect_timeout)
            .await
            .map_err(|e| Failure::connect(&e.into()))?;
        let connected = Instant::now();
        // Both fail only for a zero timeout (config validation rejects it) or
        // a socket that is already broken.
        let setup = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(s.reply_timeout)))
            .and_then(|()| stream.set_write_timeout(Some(s.reply_timeout)));
        setup.map_err(|e| Failure::connect(&e.into()))?;
        let mut stream = stream;
        if let Some(net) = s.proxy_source {
            let port = stream.local_addr().map_or(0, |a| a.port());
            let header = crate::proxy::next_header(net, port, s.target);
            stream
                .write_all(&header)
                .await
                .map_err(|e| Failure::connect(&e))?;
        }
        {
            let mut r = rec.borrow_mut();
            r.hists.record(Phase::Connect, nanos(connected - t0));
            r.counters.conns_opened += 1;
        }
        let mut conn = Conn {
            stream,
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

        conn.write(&msgs.ehlo, Command::Ehlo).await?;
        let ehlo = conn.read_reply(Command::Ehlo, rec).await?;
        let caps = match ehlo.class() {
            2 => reply::parse_ehlo(conn.last_reply_bytes()),
            // RFC 5321 §4.1.4: a server that does not know EHLO says 5xx; fall back to HELO.
            5 => {
                conn.write(&msgs.helo, Command::Helo).await?;
                let helo = conn.read_reply(Command::Helo, rec).await?;
                match helo.class() {
                    2 => reply::Capabilities::default(),
                    4 | 5 => return Ok(Err(helo.code)),
                    _ => return Err(unexpected(Command::Helo, helo.code)),
                }
            }
            4 => return Ok(Err(ehlo.code)),
            _ => return Err(unexpected(Command::Ehlo, ehlo.code)),
        };
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

    /// Resets the transaction after a refusal (RFC 5321 §4.1.1.5).
    ///
    /// # Errors
    /// A [`Failure`] when the connection broke, or RSET itself was refused
    /// (the session is then in a state we cannot reason about).
    pub async fn rset(&mut self, rec: &Recorder) -> Result<(), Failure> {
        self.write(b"RSET\r\n", Command::Rset).await?;
        let r = self.read_reply(Command::Rset, rec).await?;
        if r.class() == 2 {
            Ok(())
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
        // Bounded: a server that keeps the socket open after 221 costs
        // QUIT_LINGER. Setting it fails only for a zero duration.
        if self.stream.set_read_timeout(Some(QUIT_LINGER)).is_ok() {
            let mut scratch = [0u8; 64];
            while let Ok(n) = self.stream.read(&mut scratch).await {
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
        self.stream
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
                .stream
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
