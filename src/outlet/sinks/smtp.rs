//! The SMTP and LMTP next hop: relays each parcel, envelope and data as
//! stored, to `smtp://host[:port]`, `lmtp://host[:port]` or
//! `lmtp:unix:/path`, over one connection kept open across parcels.
//!
//! A blocking `std::net` client: sinks run in the `ringmx ship` process,
//! never on a shard thread, so no executor is needed. Owns the dialogue
//! (greeting, EHLO/LHLO with HELO fallback, PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, dot-stuffing, BDAT for a BINARYMIME body, RSET between transactions, reconnecting after a
//! lost connection or a `421`) and the mapping of replies to [`Verdict`]s;
//! leaves batching, backoff and dead letters to the consumer.
//!
//! Every wait is bounded by the URL's `timeout` (connect, each reply, each
//! write), and a reply line longer than [`MAX_REPLY_LINE`] ends the
//! connection, so a peer can neither hang nor flood the sink.
//!
//! Results: nothing counts as delivered before the reply to the final dot.
//! SMTP has one reply there for every recipient RCPT accepted; LMTP
//! (RFC 2033 §4.2) has one per accepted recipient, in RCPT order. Per parcel
//! key the sink remembers, in memory, which recipients already took the
//! message or refused it for good, so a retry after a `4xx` goes only to the
//! rest.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use memchr::memchr;

use crate::outlet::sink::{Parcel, Sink, SinkError, Verdict};
use crate::protocol::command::{address_literal, valid_domain};

/// The URL schemes this sink serves.
pub const SCHEMES: &[&str] = &["smtp", "lmtp"];

/// The `timeout` URL option's default: connect, each reply, each write.
/// RFC 5321 §4.5.3.2 asks minutes of a client facing the open Internet; a
/// next hop in one's own processing tier that is silent for a minute is
/// better retried later (the consumer backs off).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest reply line accepted, CRLF included. RFC 5321 §4.5.3.1.5 allows
/// 512; servers with long texts exist, so four times that. Longer ends the
/// connection (and defers the parcel): it is not a server we understand.
pub const MAX_REPLY_LINE: usize = 2048;

/// Most lines in one multi-line reply (a long EHLO list has about 20).
const MAX_REPLY_LINES: usize = 128;

/// Commands written per pipelined write (RFC 2920 §3.1: the client must not
/// block writing while the server blocks writing its replies; 100 short
/// replies fit any socket buffer).
const PIPELINE_WINDOW: usize = 100;

/// Parcel keys whose partial progress is remembered (recipients that took
/// the message or refused it for good). Past this many the memory is
/// cleared: forgetting costs at most a duplicate delivery, never a loss.
const MAX_REMEMBERED: usize = 100_000;

/// How long a reply text may be in a verdict (it goes into logs and dead
/// letters; the peer chooses it).
const MAX_REASON_CHARS: usize = 400;

/// Which protocol the next hop speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// RFC 5321.
    Smtp,
    /// RFC 2033: LHLO, and one reply per recipient after the data.
    Lmtp,
}

/// Where the next hop listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A host name or address literal and a port.
    Tcp { host: String, port: u16 },
    /// A Unix-domain socket (LMTP, usually).
    Unix(PathBuf),
}

/// Everything a URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    proto: Proto,
    target: Target,
    /// Bound on connecting, on each reply and on each write.
    timeout: Duration,
    /// The EHLO/LHLO/HELO argument.
    helo: String,
}

/// Parses `smtp://host[:port][?opts]`, `lmtp://host[:port][?opts]` or
/// `lmtp:unix:/path[?opts]`; opts are `timeout=DURATION` and `helo=NAME`.
fn parse_url(url: &str) -> Result<Options, SinkError> {
    let bad = |why: &str| {
        SinkError(format!(
            "{url:?}: {why} (use smtp://host[:port], lmtp://host[:port] or lmtp:unix:/path, \
             with optional ?timeout=30s&helo=NAME)"
        ))
    };
    let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("no scheme"))?;
    let proto = match scheme.to_ascii_lowercase().as_str() {
        "smtp" => Proto::Smtp,
        "lmtp" => Proto::Lmtp,
        _ => return Err(bad("not an smtp or lmtp URL")),
    };
    let (addr, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let target = if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad("no socket path after unix:"));
        }
        Target::Unix(PathBuf::from(path))
    } else if let Some(hp) = addr.strip_prefix("//") {
        let hp = hp.strip_suffix('/').unwrap_or(hp);
        let (host, port) = if let Some(v6) = hp.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("no ']' after '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hp.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hp, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(bad("no host name"));
        }
        let port = match port {
            None => match proto {
                Proto::Smtp => 25,
                Proto::Lmtp => 24,
            },
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad("the port is not a number from 1 to 65535")),
            },
        };
        Target::Tcp {
            host: host.to_owned(),
            port,
        }
    } else {
        return Err(bad("expected // or unix: after the scheme"));
    };
    let mut timeout = DEFAULT_TIMEOUT;
    let mut helo = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(&format!("option {pair:?} has no '='")))?;
        match k {
            "timeout" => {
                timeout = crate::units::parse_duration(v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| bad(&format!("timeout {v:?} is not a duration above 0")))?;
            }
            "helo" => {
                if !(v.is_ascii() && (valid_domain(v) || address_literal(v))) {
                    return Err(bad(&format!(
                        "helo {v:?} is not a domain or address literal"
                    )));
                }
                helo = Some(v.to_owned());
            }
            _ => return Err(bad(&format!("unknown option {k:?}; known: timeout, helo"))),
        }
    }
    Ok(Options {
        proto,
        target,
        timeout,
        helo: helo.unwrap_or_else(local_name),
    })
}

/// This host's name for EHLO, or `localhost` when it is not a domain.
fn local_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| s.is_ascii() && valid_domain(s))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A byte stream to the next hop.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(target: &Target, timeout: Duration) -> io::Result<Stream> {
        let s = match target {
            Target::Tcp { host, port } => {
                // Name resolution has no timeout of its own; it runs on the
                // ship process's thread, never on a shard.
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                // Commands are small and each write is a whole window.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => {
                // socket2: std has no connect timeout for Unix sockets, and a
                // full backlog would block connect(2).
                let sock =
                    socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                sock.connect_timeout(&socket2::SockAddr::unix(path)?, timeout)?;
                Stream::Unix(UnixStream::from(sock))
            }
        };
        s.set_write_timeout(timeout)?;
        Ok(s)
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }

    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One reply: its code and its lines' texts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    fn ok(&self) -> bool {
        self.class() == 2
    }

    /// `code text`, one line, bounded: for verdicts and logs.
    fn summary(&self) -> String {
        let mut s = format!("{} {}", self.code, self.lines.join(" / "));
        if s.len() > MAX_REASON_CHARS {
            let mut cut = MAX_REASON_CHARS;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }
}

/// Parses one reply line (line end removed): its code, whether more lines
/// follow, its text. RFC 5321 §4.2: three digits, then `-` (more) or a
/// space or nothing (last).
fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), String> {
    let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
    let Some(d) = digits else {
        return Err(format!(
            "a reply line without a 3-digit code: {:?}",
            printable(&line[..line.len().min(80)])
        ));
    };
    let code = d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'));
    let more = match line.get(3) {
        None | Some(b' ') => false,
        Some(b'-') => true,
        Some(_) => {
            return Err(format!(
                "a reply line with {:?} after its code",
                printable(&line[..line.len().min(80)])
            ))
        }
    };
    Ok((code, more, printable(line.get(4..).unwrap_or_default())))
}

/// Peer text made safe for one log line: control bytes become `?`.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The connection is unusable: why (it goes into a `Deferred` verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lost(String);

/// What EHLO/LHLO advertised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Caps {
    pipelining: bool,
    /// RFC 1870: the announced limit (0: none announced with SIZE).
    size: Option<u64>,
    eightbit: bool,
    smtputf8: bool,
    chunking: bool,
    binarymime: bool,
}

impl Caps {
    /// Reads the extension lines of a 250 reply to EHLO/LHLO (the first
    /// line is the greeting).
    fn parse(reply: &Reply) -> Caps {
        let mut c = Caps::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let kw = words.next().unwrap_or_default().to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eightbit = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "CHUNKING" => c.chunking = true,
                "BINARYMIME" => c.binarymime = true,
                _ => {}
            }
        }
        c
    }
}

/// An open, greeted connection.
struct Conn {
    stream: Stream,
    /// Bytes read and not yet parsed: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    caps: Caps,
    /// No transaction is open on the server (none started, or the last one
    /// ended with the reply to its data); otherwise the next starts with RSET.
    clean: bool,
    timeout: Duration,
    /// A transaction whose commands went out ahead, behind the previous
    /// parcel's data: its replies wait in the stream.
    ahead: Option<Ahead>,
    /// The socket's read timeout as last set (None: never set). Setting it
    /// costs a syscall, so it is changed only when the deadline left is
    /// well below it, or after a read woke early (see `read_line`).
    read_timeout: Option<Duration>,
}

impl Conn {
    /// Connects, reads the greeting and says EHLO/LHLO (HELO when an SMTP
    /// server refuses EHLO).
    fn open(o: &Options) -> Result<Conn, String> {
        let where_ = match &o.target {
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(p) => p.display().to_string(),
        };
        let stream = Stream::connect(&o.target, o.timeout)
            .map_err(|e| format!("connecting to {where_}: {e}"))?;
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            caps: Caps::default(),
            clean: true,
            timeout: o.timeout,
            ahead: None,
            read_timeout: None,
        };
        let ctx = |what: &str, e: Lost| format!("{where_}: {what}: {}", e.0);
        let greeting = c.read_reply().map_err(|e| ctx("greeting", e))?;
        if greeting.code != 220 {
            return Err(format!("{where_}: greeting: {}", greeting.summary()));
        }
        let (verb, fallback) = match o.proto {
            Proto::Smtp => ("EHLO", true),
            Proto::Lmtp => ("LHLO", false),
        };
        let r = c
            .command(format!("{verb} {}\r\n", o.helo).as_bytes())
            .map_err(|e| ctx(verb, e))?;
        if r.ok() {
            c.caps = Caps::parse(&r);
            return Ok(c);
        }
        // RFC 5321 §3.2: a server that does not know EHLO answers 5xx; say HELO.
        if fallback && r.class() == 5 {
            let h = c
                .command(format!("HELO {}\r\n", o.helo).as_bytes())
                .map_err(|e| ctx("HELO", e))?;
            if h.ok() {
                return Ok(c);
            }
            return Err(format!("{where_}: HELO: {}", h.summary()));
        }
        Err(format!("{where_}: {verb}: {}", r.summary()))
    }

    fn command(&mut self, line: &[u8]) -> Result<Reply, Lost> {
        self.send(line)?;
        self.read_reply()
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Lost> {
        self.stream.write_all(bytes).map_err(|e| {
            Lost(format!(
                "writing to the next hop: {}",
                io_why(&e, self.timeout)
            ))
        })
    }

    /// Reads one whole reply, within the timeout. A `421` is returned like
    /// any reply; the caller treats the connection as closing.
    fn read_reply(&mut self) -> Result<Reply, Lost> {
        let deadline = Instant::now() + self.timeout;
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            let (c, more, text) = parse_reply_line(&line).map_err(Lost)?;
            if code.is_some_and(|k| k != c) {
                return Err(Lost(format!(
                    "a multi-line reply changed its code from {} to {c}",
                    code.unwrap_or(c)
                )));
            }
            code = Some(c);
            lines.push(text);
            if !more {
                return Ok(Reply { code: c, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(Lost(format!(
                    "a reply of more than {MAX_REPLY_LINES} lines"
                )));
            }
        }
    }

    /// One line, without its line end (CRLF, or a lone LF from a lax peer).
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, Lost> {
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[self.pos..]) {
                let mut line = &self.buf[self.pos..self.pos + i];
                if let Some(l) = line.strip_suffix(b"\r") {
                    line = l;
                }
                if line.len() + 2 > MAX_REPLY_LINE {
                    return Err(Lost(format!("a reply line over {MAX_REPLY_LINE} bytes")));
                }
                let line = line.to_vec();
                self.pos += i + 1;
                return Ok(line);
            }
            if self.buf.len() - self.pos >= MAX_REPLY_LINE {
                return Err(Lost(format!("a reply line over {MAX_REPLY_LINE} bytes")));
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Lost(format!(
                    "no reply within {}",
                    crate::units::format_duration(self.timeout)
                )));
            }
            // A read waits at most the time left, give or take a tenth of
            // the timeout: re-arming the socket's timeout before every read
            // was a third of the syscalls per shipped message. A zero read
            // timeout would mean "block forever".
            let slack = self.timeout / 10;
            if self.read_timeout.is_none_or(|t| t > left + slack) {
                let t = left.max(Duration::from_millis(1));
                self.stream
                    .set_read_timeout(t)
                    .map_err(|e| Lost(format!("setting a read timeout: {e}")))?;
                self.read_timeout = Some(t);
            }
            let old = self.buf.len();
            self.buf.resize(old + 4096, 0);
            let got = self.stream.read(&mut self.buf[old..]);
            self.buf.truncate(old + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => return Err(Lost("the next hop closed the connection".into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Woke on a shorter timeout left from an earlier reply:
                // wait again, this time for all that is left.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && Instant::now() < deadline =>
                {
                    self.read_timeout = None;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Lost(format!(
                        "no reply within {}",
                        crate::units::format_duration(self.timeout)
                    )))
                }
                Err(e) => {
                    return Err(Lost(format!(
                        "reading from the next hop: {}",
                        io_why(&e, self.timeout)
                    )))
                }
            }
        }
    }
}

/// An I/O error in words; a timed-out read or write says how long it waited.
fn io_why(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "no progress within {}",
            crate::units::format_duration(timeout)
        ),
        _ => e.to_string(),
    }
}

/// Writes `data` as DATA's wire form (RFC 5321 §4.5.2): a `.` doubled at
/// the start of every line, a CRLF added when the data does not end with
/// one, then the `.` line. A line starts after any LF, bare ones included:
/// a lax next hop that ends lines at a bare LF must not see a lone `.` there
/// (SMTP smuggling), and CRLF-only data (what the server stores by default)
/// is unaffected.
fn stuff(data: &[u8], out: &mut Vec<u8>) {
    let mut rest = data;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.push(b'.');
        }
        let end = memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        out.extend_from_slice(&rest[..end]);
        rest = &rest[end..];
    }
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// The next hop took the message for it (2xx after the data).
    Took,
    /// Refused for good (5xx), with the reason.
    Refused(String),
    /// Not now (4xx), with the reason.
    Later(String),
}

/// One transaction's result.
#[derive(Debug, Default)]
struct Attempt {
    /// Per recipient sent; `None` where the connection was lost first.
    fates: Vec<Option<Fate>>,
    /// The connection failed (or said `421`); why.
    lost: Option<String>,
    /// The final `.` went out: the next hop may hold the message even if
    /// its reply never came.
    data_sent: bool,
    /// The connection is in a state we cannot reuse (a `354` we did not
    /// follow with data): close it, though nothing was lost.
    close: bool,
}

/// Which command a pipelined reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
}

/// The envelope parameters a parcel needs.
struct Envelope<'a> {
    from: &'a str,
    rcpts: Vec<&'a str>,
    smtputf8: bool,
    eightbit: bool,
    /// Stored as `BODY=BINARYMIME` (RFC 3030): may hold bare CR/LF that
    /// only BDAT carries unchanged.
    binary: bool,
}

/// The envelope of a parcel that goes out behind the previous parcel's
/// data, in the same write (RFC 2920 §3.1 lets the data be followed by the
/// next transaction's commands): one round trip a message instead of two.
struct Next<'a> {
    key: &'a str,
    env: &'a Envelope<'a>,
    len: usize,
}

/// What went out ahead: which parcel's envelope, to whom.
#[derive(Debug)]
struct Ahead {
    key: String,
    rcpts: Vec<String>,
}

impl Ahead {
    fn is_for(&self, key: &str, env: &Envelope<'_>) -> bool {
        self.key == key
            && self
                .rcpts
                .iter()
                .map(String::as_str)
                .eq(env.rcpts.iter().copied())
    }
}

/// RFC 3030: a binary body goes by BDAT where the next hop takes it;
/// otherwise by DATA, which may turn its bare line ends into lines.
fn by_bdat(caps: &Caps, env: &Envelope<'_>) -> bool {
    env.binary && caps.chunking && caps.binarymime
}

/// The MAIL command for `env` and `len` bytes of data, with its CRLF.
fn mail_command(caps: &Caps, env: &Envelope<'_>, len: usize) -> String {
    let mut mail = format!("MAIL FROM:<{}>", env.from);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={len}"));
    }
    if by_bdat(caps, env) {
        mail.push_str(" BODY=BINARYMIME");
    } else if env.eightbit && caps.eightbit {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    mail
}

fn write_command(out: &mut Vec<u8>, cmd: Cmd, mail: &str, env: &Envelope<'_>) {
    match cmd {
        Cmd::Rset => out.extend_from_slice(b"RSET\r\n"),
        Cmd::Mail => out.extend_from_slice(mail.as_bytes()),
        Cmd::Rcpt(k) => out.extend_from_slice(format!("RCPT TO:<{}>\r\n", env.rcpts[k]).as_bytes()),
        Cmd::Data => out.extend_from_slice(b"DATA\r\n"),
    }
}

/// Runs one transaction for `rcpts` of `p`. Never fails: a lost
/// connection is part of the [`Attempt`]. When `c.ahead` is set (the caller
/// checked it is this parcel's), its commands are already on the wire and
/// only their replies are read. With `next`, that parcel's commands follow
/// this one's data in the same write, and `c.ahead` says so afterwards.
fn transact(
    c: &mut Conn,
    proto: Proto,
    env: &Envelope<'_>,
    data: &[u8],
    next: Option<Next<'_>>,
) -> Attempt {
    let n = env.rcpts.len();
    let mut att = Attempt {
        fates: vec![None; n],
        ..Attempt::default()
    };
    let bdat = by_bdat(&c.caps, env);
    let mail = mail_command(&c.caps, env, data.len());
    // Sent ahead only when they all fit one window, with no RSET: they
    // went out behind the data that ended the previous transaction.
    let mut sent_ahead = c.ahead.take().is_some();
    let mut cmds = Vec::with_capacity(n + 3);
    if !c.clean && !sent_ahead {
        cmds.push(Cmd::Rset);
    }
    cmds.push(Cmd::Mail);
    cmds.extend((0..n).map(Cmd::Rcpt));
    if !bdat {
        cmds.push(Cmd::Data);
    }
    c.clean = false;

    let window = if c.caps.pipelining {
        PIPELINE_WINDOW
    } else {
        1
    };
    let mut mail_reply: Option<Reply> = None;
    let mut rcpt_replies: Vec<Option<Reply>> = vec![None; n];
    let mut data_reply: Option<Reply> = None;
    let mut i = 0;
    let mut out = Vec::new();
    while i < cmds.len() {
        if mail_reply.as_ref().is_some_and(|r| !r.ok()) {
            break;
        }
        let end = (i + window).min(cmds.len());
        // Without a reply to every RCPT yet, DATA goes blind (pipelined);
        // with them all and none accepted, it is not sent at all.
        if cmds[i] == Cmd::Data
            && rcpt_replies
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| !r.ok()))
        {
            break;
        }
        if !std::mem::take(&mut sent_ahead) {
            out.clear();
            for &cmd in &cmds[i..end] {
                write_command(&mut out, cmd, &mail, env);
            }
            if let Err(e) = c.send(&out) {
                att.lost = Some(e.0);
                return att;
            }
        }
        for cmd in &cmds[i..end] {
            let r = match c.read_reply() {
                Ok(r) => r,
                Err(e) => {
                    att.lost = Some(e.0);
                    return att;
                }
            };
            if r.code == 421 {
                att.lost = Some(format!("{}: {}", cmd_name(*cmd), r.summary()));
                return att;
            }
            match cmd {
                // A refused RSET leaves nothing open that MAIL minds.
                Cmd::Rset => {}
                Cmd::Mail => mail_reply = Some(r),
                Cmd::Rcpt(k) => rcpt_replies[*k] = Some(r),
                Cmd::Data => data_reply = Some(r),
            }
        }
        i = end;
    }

    // MAIL refused: every recipient shares its fate.
    if let Some(r) = mail_reply.as_ref().filter(|r| !r.ok()) {
        let why = format!("MAIL FROM:<{}>: {}", env.from, r.summary());
        let fate = if r.class() == 5 {
            Fate::Refused(why)
        } else {
            Fate::Later(why)
        };
        att.fates = vec![Some(fate); n];
        att.close = data_reply.is_some_and(|d| d.code == 354);
        return att;
    }
    let mut takers = Vec::with_capacity(n);
    for (k, r) in rcpt_replies.iter().enumerate() {
        let Some(r) = r else { continue };
        if r.ok() {
            takers.push(k);
        } else {
            let why = format!("RCPT TO:<{}>: {}", env.rcpts[k], r.summary());
            att.fates[k] = Some(if r.class() == 5 {
                Fate::Refused(why)
            } else {
                Fate::Later(why)
            });
        }
    }
    out.clear();
    if bdat {
        if takers.is_empty() {
            return att;
        }
        out.extend_from_slice(format!("BDAT {} LAST\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
    } else {
        let Some(d) = data_reply else {
            return att;
        };
        if takers.is_empty() {
            // RFC 2920 §3.1 has the client send the data after an
            // unexpected 354; simpler and as safe: drop this connection.
            att.close = d.code == 354;
            return att;
        }
        if d.code != 354 {
            let why = format!("DATA: {}", d.summary());
            for &k in &takers {
                att.fates[k] = Some(if d.class() == 5 {
                    Fate::Refused(why.clone())
                } else {
                    Fate::Later(why.clone())
                });
            }
            return att;
        }
        stuff(data, &mut out);
    }
    let ahead = next.and_then(|nx| send_ahead(&c.caps, !bdat, nx, &mut out));
    if let Err(e) = c.send(&out) {
        att.lost = Some(e.0);
        return att;
    }
    att.data_sent = true;
    c.ahead = ahead;
    // SMTP answers once for all; LMTP once per accepted recipient, in
    // order (RFC 2033 §4.2; RFC 3030 §4.2 for BDAT LAST).
    let replies = match proto {
        Proto::Smtp => 1,
        Proto::Lmtp => takers.len(),
    };
    for j in 0..replies {
        let r = match c.read_reply() {
            Ok(r) => r,
            Err(e) => {
                att.lost = Some(format!("after the data: {}", e.0));
                return att;
            }
        };
        let who: &[usize] = match proto {
            Proto::Smtp => &takers,
            Proto::Lmtp => &takers[j..=j],
        };
        for &k in who {
            let why = || format!("data for <{}>: {}", env.rcpts[k], r.summary());
            att.fates[k] = Some(match r.class() {
                2 => Fate::Took,
                5 => Fate::Refused(why()),
                _ => Fate::Later(why()),
            });
        }
        if r.code == 421 {
            att.lost = Some(format!("after the data: {}", r.summary()));
            return att;
        }
    }
    c.clean = true;
    att
}

/// Appends `next`'s commands to `out` (this transaction's data) when they
/// can go ahead: the next hop pipelines, this data went by DATA (whose
/// reply ends the transaction), that parcel goes by DATA too and all its
/// commands fit one window.
fn send_ahead(caps: &Caps, by_data: bool, next: Next<'_>, out: &mut Vec<u8>) -> Option<Ahead> {
    let env = next.env;
    if !caps.pipelining || !by_data || by_bdat(caps, env) || env.rcpts.len() + 2 > PIPELINE_WINDOW {
        return None;
    }
    let mail = mail_command(caps, env, next.len);
    write_command(out, Cmd::Mail, &mail, env);
    for k in 0..env.rcpts.len() {
        write_command(out, Cmd::Rcpt(k), &mail, env);
    }
    write_command(out, Cmd::Data, &mail, env);
    Some(Ahead {
        key: next.key.to_owned(),
        rcpts: env.rcpts.iter().map(|r| (*r).to_owned()).collect(),
    })
}

fn cmd_name(c: Cmd) -> &'static str {
    match c {
        Cmd::Rset => "RSET",
        Cmd::Mail => "MAIL",
        Cmd::Rcpt(_) => "RCPT",
        Cmd::Data => "DATA",
    }
}

/// A parcel's recipients settled in earlier attempts.
#[derive(Debug, Default)]
struct Progress {
    took: Vec<String>,
    refused: Vec<(String, String)>,
}

impl Progress {
    fn settled(&self, rcpt: &str) -> bool {
        self.took.iter().any(|r| r == rcpt) || self.refused.iter().any(|(r, _)| r == rcpt)
    }
}

/// The SMTP/LMTP sink. One instance per (consumer, shard), one connection.
pub struct SmtpSink {
    opts: Options,
    conn: Option<Conn>,
    /// Per parcel key: recipients settled by earlier attempts that ended
    /// `Deferred`. Removed once the parcel gets a final verdict.
    progress: HashMap<String, Progress>,
}

impl SmtpSink {
    /// Opens a sink for `url` (see the module docs); connects lazily, on
    /// the first batch.
    ///
    /// # Errors
    /// A URL this sink cannot use, with what to write instead.
    ///
    /// # Example
    /// ```
    /// use ringmx::outlet::sinks::smtp::SmtpSink;
    /// // Nothing is connected yet: a URL is only checked.
    /// assert!(SmtpSink::new("lmtp:unix:/run/dovecot/lmtp?timeout=30s").is_ok());
    /// assert!(SmtpSink::new("smtp://mx.example:25?helo=ship.example").is_ok());
    /// let e = SmtpSink::new("smtp://mx.example:0").err().unwrap();
    /// assert!(e.0.contains("port"));
    /// ```
    pub fn new(url: &str) -> Result<SmtpSink, SinkError> {
        Ok(SmtpSink {
            opts: parse_url(url)?,
            conn: None,
            progress: HashMap::new(),
        })
    }

    /// Delivers one parcel; `next` is the one after it in the batch, whose
    /// commands may go out behind this one's data. `Err` only when no
    /// connection could be opened.
    fn one(&mut self, p: &Parcel<'_>, next: Option<&Parcel<'_>>) -> Result<Verdict, String> {
        let stored = &p.msg.envelope;
        let done = self.progress.remove(p.key).unwrap_or_default();
        let env = envelope_of(p, &done);
        if env.rcpts.is_empty() {
            return Ok(final_verdict(done, stored.rcpts.len()));
        }
        let mut done = done;
        let mut fresh = false;
        let att = loop {
            let mut c = match self.conn.take() {
                Some(c) => c,
                None => {
                    fresh = true;
                    match Conn::open(&self.opts) {
                        Ok(c) => c,
                        Err(e) => {
                            // Keep what earlier attempts settled.
                            self.remember(p.key, done);
                            return Err(e);
                        }
                    }
                }
            };
            // Another parcel's commands went ahead on this connection (not
            // expected: they are sent only for the parcel that comes next).
            // The next hop holds a transaction we will not finish; closing
            // ends it with nothing delivered.
            if c.ahead.as_ref().is_some_and(|a| !a.is_for(p.key, &env)) {
                continue;
            }
            if let Some(why) = refusal(c.caps, p, &env) {
                self.conn = Some(c);
                // Recipients an earlier attempt settled keep their fate.
                done.refused
                    .extend(env.rcpts.iter().map(|r| ((*r).to_owned(), why.clone())));
                return Ok(final_verdict(done, stored.rcpts.len()));
            }
            if env.binary && !(c.caps.chunking && c.caps.binarymime) {
                crate::warn!(
                    "{}: sending a BINARYMIME body by DATA to a next hop without CHUNKING and \
                     BINARYMIME; a bare CR or LF in it may not arrive as stored",
                    p.key
                );
            } else if env.eightbit && !c.caps.eightbit {
                crate::warn!(
                    "{}: sending 8-bit data to a next hop that does not offer 8BITMIME",
                    p.key
                );
            }
            // The next parcel goes ahead only when nothing is remembered
            // for it (its recipients are then all of its envelope's, as
            // its own turn will compute) and this next hop can take it.
            let next_env = next
                .filter(|q| !self.progress.contains_key(q.key))
                .map(|q| (q, envelope_of(q, &Progress::default())))
                .filter(|(q, e)| refusal(c.caps, q, e).is_none());
            let ahead = next_env.as_ref().map(|(q, e)| Next {
                key: q.key,
                env: e,
                len: q.data.len(),
            });
            let att = transact(&mut c, self.opts.proto, &env, p.data, ahead);
            if att.lost.is_none() && !att.close {
                self.conn = Some(c);
            }
            // A reused connection the peer had given up on (idle timeout,
            // 421): nothing of this parcel was handed over, so try once more
            // on a fresh one.
            if att.lost.is_some() && !att.data_sent && !fresh {
                continue;
            }
            break att;
        };
        let mut later = None;
        for (rcpt, fate) in env.rcpts.iter().zip(att.fates) {
            match fate {
                Some(Fate::Took) => done.took.push((*rcpt).to_owned()),
                Some(Fate::Refused(why)) => done.refused.push(((*rcpt).to_owned(), why)),
                Some(Fate::Later(why)) => {
                    later.get_or_insert(why);
                }
                None => {}
            }
        }
        if let Some(why) = att.lost.or(later) {
            self.remember(p.key, done);
            return Ok(Verdict::Deferred(why));
        }
        Ok(final_verdict(done, stored.rcpts.len()))
    }

    /// Keeps what attempts so far settled for `key`, for its retry.
    fn remember(&mut self, key: &str, done: Progress) {
        if done.took.is_empty() && done.refused.is_empty() {
            return;
        }
        if self.progress.len() >= MAX_REMEMBERED {
            crate::warn!(
                "forgetting the partial progress of {} parcels (at most {MAX_REMEMBERED} are kept); \
                 their retries may deliver twice",
                self.progress.len()
            );
            self.progress.clear();
        }
        self.progress.insert(key.to_owned(), done);
    }
}

/// The envelope `p` goes out with: its recipients not yet settled by
/// earlier attempts (`done`), and the parameters its addresses and data
/// need.
fn envelope_of<'a>(p: &Parcel<'a>, done: &Progress) -> Envelope<'a> {
    let stored = &p.msg.envelope;
    let pending: Vec<&str> = stored
        .rcpts
        .iter()
        .map(String::as_str)
        .filter(|r| !done.settled(r))
        .collect();
    Envelope {
        from: &stored.mail_from,
        smtputf8: !stored.mail_from.is_ascii()
            || pending.iter().any(|r| !r.is_ascii())
            || stored
                .mail_params
                .split_ascii_whitespace()
                .any(|w| w.eq_ignore_ascii_case("SMTPUTF8")),
        eightbit: p.data.iter().any(|&b| b >= 0x80),
        binary: stored
            .mail_params
            .split_ascii_whitespace()
            .any(|w| w.eq_ignore_ascii_case("BODY=BINARYMIME")),
        rcpts: pending,
    }
}

/// Why a next hop with these capabilities can never take this parcel, if
/// it cannot: refused before any command is sent.
fn refusal(caps: Caps, p: &Parcel<'_>, env: &Envelope<'_>) -> Option<String> {
    // The server's parser never stores one; a damaged or foreign spool
    // must not smuggle a command into the next hop's dialogue.
    let bad = |a: &str| a.contains(['\r', '\n', '\0']);
    if bad(env.from) || env.rcpts.iter().any(|r| bad(r)) {
        return Some("an envelope address holds a CR, LF or NUL; not relayed".into());
    }
    if env.smtputf8 && !caps.smtputf8 {
        return Some(
            "the envelope needs SMTPUTF8 (RFC 6531), which the next hop does not offer".into(),
        );
    }
    // RFC 1870 §4: SIZE 0 announces no limit.
    if let Some(limit) = caps.size.filter(|&l| l > 0 && (p.data.len() as u64) > l) {
        return Some(format!(
            "{} bytes is over the next hop's SIZE limit of {limit} (RFC 1870)",
            p.data.len()
        ));
    }
    None
}

/// The verdict once every recipient is settled.
fn final_verdict(done: Progress, all: usize) -> Verdict {
    let Some((_, reason)) = done.refused.first() else {
        return Verdict::Accepted;
    };
    let reason = reason.clone();
    let rcpts =
        (done.refused.len() < all).then(|| done.refused.into_iter().map(|(r, _)| r).collect());
    Verdict::Rejected { reason, rcpts }
}

impl Sink for SmtpSink {
    fn deliver(&mut self, batch: &[Parcel<'_>]) -> Result<Vec<Verdict>, SinkError> {
        let mut out = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            // The consumer retries from the first deferred parcel on;
            // delivering later ones now would deliver them twice.
            if let Some(Verdict::Deferred(_)) = out.last() {
                out.push(Verdict::Deferred(
                    "not tried: an earlier parcel in the batch was deferred".into(),
                ));
                continue;
            }
            match self.one(p, batch.get(i + 1)) {
                Ok(v) => out.push(v),
                Err(e) if out.is_empty() => return Err(SinkError(e)),
                Err(e) => out.push(Verdict::Deferred(e)),
            }
        }
        // Commands sent ahead for a parcel not tried after all (one before
        // it was deferred): closing ends that transaction undelivered.
        if self.conn.as_ref().is_some_and(|c| c.ahead.is_some()) {
            self.conn = None;
        }
        Ok(out)
    }

    /// Each wait is bounded by the URL's `timeout`; a parcel makes several
    /// (connect, greeting, EHLO, the envelope's replies, the data, its
    /// reply, and all of it once more after a stale connection), so this
    /// is a rough upper bound for a parcel of up to 100 recipients.
    fn timeout(&self) -> Duration {
        self.opts.timeout.saturating_mul(12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// A connection whose peer is `script`, run on a thread over a socket
    /// pair: it reads our commands and writes whatever it likes.
    fn scripted(
        caps: Caps,
        script: impl FnOnce(&mut BufReader<UnixStream>, &mut UnixStream) + Send + 'static,
    ) -> (Conn, std::thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            script(&mut BufReader::new(theirs), &mut w);
        });
        let stream = Stream::Unix(ours);
        stream.set_write_timeout(Duration::from_secs(5)).unwrap();
        let conn = Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            caps,
            clean: true,
            timeout: Duration::from_secs(5),
            ahead: None,
            read_timeout: None,
        };
        (conn, t)
    }

    fn line(r: &mut BufReader<UnixStream>) -> String {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    }

    fn env<'a>(rcpts: &[&'a str]) -> Envelope<'a> {
        Envelope {
            from: "s@x",
            rcpts: rcpts.to_vec(),
            smtputf8: false,
            eightbit: false,
            binary: false,
        }
    }

    const PIPELINED: Caps = Caps {
        pipelining: true,
        size: None,
        eightbit: true,
        smtputf8: false,
        chunking: false,
        binarymime: false,
    };

    /// With PIPELINING, MAIL, the RCPTs and DATA arrive before any reply
    /// is sent (the peer answers only once it has read DATA).
    #[test]
    fn pipelined_envelope_is_one_write_and_lmtp_answers_per_recipient() {
        let (mut c, t) = scripted(PIPELINED, |r, w| {
            let got: Vec<String> = (0..4).map(|_| line(r)).collect();
            assert_eq!(
                got,
                [
                    "MAIL FROM:<s@x>\r\n",
                    "RCPT TO:<a@x>\r\n",
                    "RCPT TO:<b@x>\r\n",
                    "DATA\r\n"
                ]
            );
            w.write_all(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .unwrap();
            assert_eq!(line(r), "..x\r\n");
            assert_eq!(line(r), ".\r\n");
            w.write_all(b"250 a ok\r\n452 b later\r\n").unwrap();
        });
        let att = transact(&mut c, Proto::Lmtp, &env(&["a@x", "b@x"]), b".x\r\n", None);
        t.join().unwrap();
        assert_eq!(att.lost, None);
        assert_eq!(
            att.fates,
            [
                Some(Fate::Took),
                Some(Fate::Later("data for <b@x>: 452 b later".into()))
            ]
        );
        assert!(c.clean);
    }

    /// The next parcel's MAIL, RCPT and DATA go out in the same write as
    /// this one's data (the peer reads them before it answers the data),
    /// and its transaction then only reads their replies.
    #[test]
    fn the_next_envelope_goes_out_behind_the_data() {
        let (mut c, t) = scripted(PIPELINED, |r, w| {
            let got: Vec<String> = (0..3).map(|_| line(r)).collect();
            assert_eq!(
                got,
                ["MAIL FROM:<s@x>\r\n", "RCPT TO:<a@x>\r\n", "DATA\r\n"]
            );
            w.write_all(b"250 ok\r\n250 ok\r\n354 go\r\n").unwrap();
            let got: Vec<String> = (0..5).map(|_| line(r)).collect();
            assert_eq!(
                got,
                [
                    "one\r\n",
                    ".\r\n",
                    "MAIL FROM:<s@x>\r\n",
                    "RCPT TO:<b@x>\r\n",
                    "DATA\r\n"
                ],
                "the next envelope before any reply to the data"
            );
            w.write_all(b"250 a ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .unwrap();
            assert_eq!(line(r), "two\r\n");
            assert_eq!(line(r), ".\r\n");
            w.write_all(b"250 b ok\r\n").unwrap();
        });
        let second = env(&["b@x"]);
        let next = Next {
            key: "k2",
            env: &second,
            len: 5,
        };
        let att = transact(&mut c, Proto::Lmtp, &env(&["a@x"]), b"one\r\n", Some(next));
        assert_eq!((att.lost, att.fates), (None, vec![Some(Fate::Took)]));
        assert!(c.ahead.as_ref().is_some_and(|a| a.is_for("k2", &second)));
        let att = transact(&mut c, Proto::Lmtp, &second, b"two\r\n", None);
        t.join().unwrap();
        assert_eq!((att.lost, att.fates), (None, vec![Some(Fate::Took)]));
        assert!(c.ahead.is_none() && c.clean);
    }

    /// A parcel deferred at its data while the next one's commands went
    /// ahead: the next one is not tried, and the connection is closed
    /// after its `354` without a byte of its data, so the next hop holds
    /// nothing of it.
    #[test]
    fn commands_sent_ahead_for_a_parcel_not_tried_deliver_nothing() {
        use crate::spool::{QueueId, StoredEnvelope, StoredMessage};
        use std::io::Read;
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("ringmx-ahead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lmtp");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"220 hi\r\n").unwrap();
            assert!(line(&mut r).starts_with("LHLO "));
            w.write_all(b"250-hi\r\n250 PIPELINING\r\n").unwrap();
            for _ in 0..3 {
                line(&mut r);
            }
            w.write_all(b"250 ok\r\n250 ok\r\n354 go\r\n").unwrap();
            while line(&mut r) != ".\r\n" {}
            let ahead: Vec<String> = (0..3).map(|_| line(&mut r)).collect();
            assert!(ahead[0].starts_with("MAIL FROM:"), "{ahead:?}");
            w.write_all(b"451 not now\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .unwrap();
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            rest
        });
        let msgs: Vec<StoredMessage> = (0..2u64)
            .map(|i| {
                let env = StoredEnvelope {
                    arrival_unix: 0,
                    client: None,
                    helo: "c".into(),
                    mail_from: "s@x".into(),
                    mail_params: String::new(),
                    rcpts: vec![format!("r{i}@x")],
                    tls_version: None,
                    tls_cipher: None,
                    auth_id: None,
                };
                StoredMessage::from_parts(
                    QueueId::new(0, i + 1).unwrap(),
                    crate::spool::Location::default(),
                    "n".into(),
                    env,
                    Vec::new(),
                    format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes(),
                )
            })
            .collect();
        let datas: Vec<Vec<u8>> = msgs.iter().map(|m| m.body_bytes().unwrap()).collect();
        let bump = bumpalo::Bump::new();
        let headers: Vec<_> = datas
            .iter()
            .map(|d| crate::outlet::headers::HeaderFields::parse(&bump, d))
            .collect();
        let keys = ["n.1", "n.2"];
        let parcels: Vec<Parcel<'_>> = (0..2)
            .map(|i| Parcel {
                key: keys[i],
                msg: &msgs[i],
                data: &datas[i],
                headers: &headers[i],
            })
            .collect();
        let mut sink = SmtpSink::new(&format!("lmtp:unix:{}", path.display())).unwrap();
        let v = sink.deliver(&parcels).unwrap();
        assert!(
            matches!(&v[0], Verdict::Deferred(why) if why.contains("451")),
            "{v:?}"
        );
        assert!(
            matches!(&v[1], Verdict::Deferred(why) if why.contains("not tried")),
            "{v:?}"
        );
        assert!(sink.conn.is_none(), "the connection was closed");
        let rest = t.join().unwrap();
        assert!(
            rest.is_empty(),
            "sent after the 354: {:?}",
            String::from_utf8_lossy(&rest)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without PIPELINING nothing goes ahead.
    #[test]
    fn nothing_goes_ahead_without_pipelining() {
        let (mut c, t) = scripted(Caps::default(), |r, w| {
            for reply in ["250 ok", "250 ok", "354 go"] {
                line(r);
                w.write_all(format!("{reply}\r\n").as_bytes()).unwrap();
            }
            assert_eq!(line(r), "one\r\n");
            assert_eq!(line(r), ".\r\n");
            w.write_all(b"250 ok\r\n").unwrap();
        });
        let second = env(&["b@x"]);
        let next = Next {
            key: "k2",
            env: &second,
            len: 5,
        };
        let att = transact(&mut c, Proto::Smtp, &env(&["a@x"]), b"one\r\n", Some(next));
        t.join().unwrap();
        assert_eq!((att.lost, att.fates), (None, vec![Some(Fate::Took)]));
        assert!(c.ahead.is_none());
    }

    #[test]
    fn a_read_woken_early_by_an_old_short_timeout_waits_on() {
        let (mut c, t) = scripted(Caps::default(), |_r, w| {
            std::thread::sleep(Duration::from_millis(60));
            w.write_all(b"250 late but within the timeout\r\n").unwrap();
        });
        // As left by an earlier reply that arrived just before its deadline.
        c.stream.set_read_timeout(Duration::from_millis(1)).unwrap();
        c.read_timeout = Some(Duration::from_millis(1));
        let r = c
            .read_reply()
            .expect("the reply came within the 5 s timeout");
        assert_eq!(r.code, 250);
        t.join().unwrap();
    }

    #[test]
    fn a_silent_next_hop_times_out() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut c = Conn {
            stream: Stream::Unix(ours),
            buf: Vec::new(),
            pos: 0,
            caps: Caps::default(),
            clean: true,
            timeout: Duration::from_millis(50),
            ahead: None,
            read_timeout: None,
        };
        let Err(Lost(why)) = c.read_reply() else {
            panic!("nothing was said, yet a reply was read");
        };
        assert!(why.contains("no reply within"), "{why}");
        drop(theirs);
    }

    /// LMTP: the connection drops after the first recipient's answer. That
    /// one is settled; the other is unknown and the data was sent.
    #[test]
    fn lmtp_connection_lost_between_recipient_answers() {
        let (mut c, t) = scripted(PIPELINED, |r, w| {
            for _ in 0..4 {
                line(r);
            }
            w.write_all(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .unwrap();
            while line(r) != ".\r\n" {}
            w.write_all(b"250 a ok\r\n").unwrap();
        });
        let att = transact(&mut c, Proto::Lmtp, &env(&["a@x", "b@x"]), b"x\r\n", None);
        t.join().unwrap();
        assert_eq!(att.fates, [Some(Fate::Took), None]);
        assert!(att.data_sent);
        assert!(att.lost.unwrap().contains("closed the connection"));
    }

    /// Every RCPT refused but a 354 anyway (pipelined DATA went blind):
    /// no data is sent and the connection is not reused.
    #[test]
    fn unexpected_354_after_all_rcpts_refused_closes() {
        let (mut c, t) = scripted(PIPELINED, |r, w| {
            for _ in 0..3 {
                line(r);
            }
            w.write_all(b"250 ok\r\n550 no such user\r\n354 go\r\n")
                .unwrap();
        });
        let att = transact(&mut c, Proto::Smtp, &env(&["a@x"]), b"x\r\n", None);
        t.join().unwrap();
        assert!(att.close && !att.data_sent && att.lost.is_none());
        assert_eq!(
            att.fates,
            [Some(Fate::Refused(
                "RCPT TO:<a@x>: 550 no such user".into()
            ))]
        );
    }

    /// A reply line past the cap, and a multi-line reply that changes its
    /// code, end the connection instead of being believed.
    #[test]
    fn hostile_replies_end_the_connection() {
        let (mut c, t) = scripted(PIPELINED, |_, w| {
            let _ = w.write_all(&vec![b'2'; MAX_REPLY_LINE * 2]);
        });
        let e = c.read_reply().unwrap_err();
        assert!(e.0.contains("over 2048 bytes"), "{e:?}");
        drop(c);
        t.join().unwrap();
        let (mut c, t) = scripted(PIPELINED, |_, w| {
            w.write_all(b"250-one\r\n550 two\r\n").unwrap();
        });
        let e = c.read_reply().unwrap_err();
        assert!(e.0.contains("changed its code"), "{e:?}");
        t.join().unwrap();
    }

    /// Without PIPELINING: one command per write, and nothing after a
    /// refused MAIL.
    #[test]
    fn unpipelined_stops_at_a_refused_mail() {
        let caps = Caps {
            pipelining: false,
            ..PIPELINED
        };
        let (mut c, t) = scripted(caps, |r, w| {
            assert_eq!(line(r), "MAIL FROM:<s@x>\r\n");
            w.write_all(b"451 try later\r\n").unwrap();
            // Nothing more comes: EOF once the client is dropped.
            assert_eq!(line(r), "");
        });
        let att = transact(&mut c, Proto::Smtp, &env(&["a@x", "b@x"]), b"x\r\n", None);
        assert!(!c.clean, "the next transaction starts with RSET");
        drop(c);
        t.join().unwrap();
        let why = "MAIL FROM:<s@x>: 451 try later".to_string();
        assert_eq!(
            att.fates,
            [Some(Fate::Later(why.clone())), Some(Fate::Later(why))]
        );
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn urls() {
        let ok = |u: &str| parse_url(u).unwrap();
        assert_eq!(ok("smtp://mx.example").target, tcp("mx.example", 25));
        assert_eq!(ok("lmtp://10.0.0.1").target, tcp("10.0.0.1", 24));
        assert_eq!(ok("smtp://127.0.0.1:2525/").target, tcp("127.0.0.1", 2525));
        assert_eq!(ok("lmtp://[::1]:24").target, tcp("::1", 24));
        assert_eq!(ok("lmtp://[::1]").target, tcp("::1", 24));
        let u = ok("lmtp:unix:/run/dovecot/lmtp?timeout=2.5s&helo=ship.example");
        assert_eq!(u.proto, Proto::Lmtp);
        assert_eq!(u.target, Target::Unix("/run/dovecot/lmtp".into()));
        assert_eq!(u.timeout, Duration::from_millis(2500));
        assert_eq!(u.helo, "ship.example");
        assert_eq!(ok("SMTP://h").proto, Proto::Smtp);
        assert_eq!(ok("smtp://h").timeout, DEFAULT_TIMEOUT);
        for bad in [
            "smtp",
            "http://h",
            "smtp:h",
            "smtp://",
            "smtp://h:0",
            "smtp://h:99999",
            "smtp://h:x",
            "smtp://[::1",
            "lmtp:unix:",
            "smtp://h?timeout=0",
            "smtp://h?timeout=soon",
            "smtp://h?helo=a%20b",
            "smtp://h?helo=",
            "smtp://h?retries=3",
            "smtp://h?timeout",
        ] {
            let e = parse_url(bad).expect_err(bad);
            assert!(e.0.contains("smtp://host[:port]"), "{bad}: {e}");
        }
    }

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line(b"250 ok"), Ok((250, false, "ok".into())));
        assert_eq!(
            parse_reply_line(b"250-PIPELINING"),
            Ok((250, true, "PIPELINING".into()))
        );
        assert_eq!(parse_reply_line(b"354"), Ok((354, false, String::new())));
        assert_eq!(
            parse_reply_line(b"550 a\x01b"),
            Ok((550, false, "a?b".into()))
        );
        for bad in [&b""[..], b"25", b"2x0 ok", b"250_ok", b"hello"] {
            assert!(parse_reply_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn caps() {
        let r = Reply {
            code: 250,
            lines: [
                "mx hello",
                "PIPELINING",
                "SIZE 1000",
                "8BITMIME",
                "smtputf8",
                "DSN",
                "CHUNKING",
            ]
            .map(String::from)
            .to_vec(),
        };
        let c = Caps::parse(&r);
        assert_eq!(
            c,
            Caps {
                pipelining: true,
                size: Some(1000),
                eightbit: true,
                smtputf8: true,
                chunking: true,
                binarymime: false,
            }
        );
        let r = Reply {
            code: 250,
            lines: vec!["mx".into(), "SIZE".into()],
        };
        assert_eq!(Caps::parse(&r).size, Some(0));
        assert!(!Caps::parse(&r).pipelining);
    }

    #[test]
    fn stuffing() {
        let s = |d: &[u8]| {
            let mut v = Vec::new();
            stuff(d, &mut v);
            v
        };
        assert_eq!(s(b""), b".\r\n");
        assert_eq!(s(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(
            s(b".a\r\n..b\r\n.\r\nc"),
            b"..a\r\n...b\r\n..\r\nc\r\n.\r\n"
        );
        assert_eq!(s(b"x\r\n."), b"x\r\n..\r\n.\r\n");
        // A dot after a bare LF is doubled too (smuggling), not after a bare CR.
        assert_eq!(s(b"a\n.\r\nb\r.\r\n"), b"a\n..\r\nb\r.\r\n.\r\n");
    }

    #[test]
    fn final_verdicts() {
        let p = |took: &[&str], refused: &[&str]| Progress {
            took: took.iter().map(|s| s.to_string()).collect(),
            refused: refused
                .iter()
                .map(|s| (s.to_string(), format!("550 no {s}")))
                .collect(),
        };
        assert_eq!(final_verdict(p(&["a", "b"], &[]), 2), Verdict::Accepted);
        assert_eq!(
            final_verdict(p(&["a"], &["b"]), 2),
            Verdict::Rejected {
                reason: "550 no b".into(),
                rcpts: Some(vec!["b".into()])
            }
        );
        assert_eq!(
            final_verdict(p(&[], &["a", "b"]), 2),
            Verdict::Rejected {
                reason: "550 no a".into(),
                rcpts: None
            }
        );
    }
}
