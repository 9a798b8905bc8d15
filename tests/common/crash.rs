//! Helpers of the crash tests (`tests/spool_crash.rs`): SMTP load whose
//! clients keep a ledger of what the server acknowledged, and a check of a
//! spool against that ledger.
//!
//! Every message a client tries gets a unique sender (`MAIL FROM`) and a body
//! generated from a seed, so whatever the spool holds can be traced back to
//! the attempt that sent it and compared byte for byte without keeping the
//! bodies in memory. Each attempt ends with a [`Fate`]:
//!
//! * [`Fate::Acked`]: `250 ... queued as ID` was read. It must be in the
//!   spool under that id, byte-identical.
//! * [`Fate::InDoubt`]: the whole message, end of data included, was handed
//!   to the socket but no reply came (the server died). It may or may not
//!   be in the spool; if it is, it is byte-identical.
//! * [`Fate::NotSent`], [`Fate::Abandoned`]: the last byte of the message
//!   never left the client (a write failed, or the client hung up mid-body on
//!   purpose). It must not be in the spool.
//! * [`Fate::Refused`]: the server answered the end of data with an error.
//!   It must not be in the spool.
//!
//! A write that fails means the bytes of that write never reached the
//! socket (std's `write_all` stops at the first failing `write(2)`, which
//! queued nothing), so the end of data of a `NotSent` message cannot have
//! reached the server.
//!
//! [`check`] reads a spool back and holds it against the ledger;
//! [`power_cut`] tears what a power loss could have torn, so recovery has
//! something to cut (a SIGKILL keeps the page cache and rarely tears a record).
//!
//! Included with `#[path]` by the test that uses it (it needs
//! `crate::common`), so it adds nothing to the other test binaries and
//! tests/common/mod.rs stays as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringmx::spool::SpoolReader;

use crate::common::{ringmx, Server, STEP};

/// xorshift64*: small, seedable, good enough to pick sizes and split points.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds give unrelated streams and
        // the state is never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// The test seed: `RINGMX_CRASH_SEED` (decimal or 0x-hex) if set, so a
/// failing run can be repeated, else `default`.
pub fn seed(default: u64) -> u64 {
    match std::env::var("RINGMX_CRASH_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .expect("RINGMX_CRASH_SEED: a number")
        }
        Err(_) => default,
    }
}

/// One message a client tries to send.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Unique per attempt: how the spool's copy is traced back.
    pub from: String,
    /// `MAIL FROM` parameters, as sent (the spool keeps them verbatim).
    pub params: String,
    pub rcpts: Vec<String>,
    /// Seeds the body.
    pub body_seed: u64,
    /// Body bytes (at least; the body ends at a line end).
    pub size: usize,
    /// Lines starting with '.' (DATA dot-stuffs them, BDAT sends them as they are).
    pub dots: bool,
    /// Sent with BDAT instead of DATA.
    pub bdat: bool,
    /// Hang up in the middle of the body on purpose.
    pub abandon: bool,
}

/// Body sizes and features of the messages a client sends.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Percent of messages of 64-96 KiB.
    pub medium_pct: u64,
    /// Percent of messages of 260-400 KiB.
    pub large_pct: u64,
    /// Percent sent with BDAT.
    pub bdat_pct: u64,
    /// Percent with lines starting with '.'.
    pub dots_pct: u64,
    /// Percent the client hangs up on mid-body.
    pub abandon_pct: u64,
}

impl Mix {
    /// Small messages only, all sent to the end.
    pub const SMALL: Mix = Mix {
        medium_pct: 0,
        large_pct: 0,
        bdat_pct: 25,
        dots_pct: 40,
        abandon_pct: 0,
    };

    pub fn spec(&self, r: &mut Rng, from: String) -> Spec {
        let roll = r.below(100);
        let size = if roll < self.large_pct {
            r.range(260 << 10, 400 << 10)
        } else if roll < self.large_pct + self.medium_pct {
            r.range(64 << 10, 96 << 10)
        } else {
            r.range(200, 2000)
        } as usize;
        let bdat = r.pct(self.bdat_pct);
        let mut params = String::new();
        if r.pct(30) {
            write!(params, "SIZE={size}").unwrap();
        }
        let body = if bdat && r.pct(50) {
            "BODY=BINARYMIME"
        } else if r.pct(30) {
            "BODY=8BITMIME"
        } else {
            ""
        };
        if !body.is_empty() {
            if !params.is_empty() {
                params.push(' ');
            }
            params.push_str(body);
        }
        let rcpts = (0..r.range(1, 3))
            .map(|k| format!("u{k}.{}@example.com", r.below(1000)))
            .collect();
        Spec {
            from,
            params,
            rcpts,
            body_seed: r.next(),
            size,
            dots: r.pct(self.dots_pct),
            bdat,
            abandon: r.pct(self.abandon_pct),
        }
    }
}

/// 64 KiB of printable ASCII without '.', CR or LF; lines are slices of it.
fn pool() -> &'static [u8] {
    static POOL: OnceLock<Vec<u8>> = OnceLock::new();
    POOL.get_or_init(|| {
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789    \
              !#$%&'()*+,-/:;<=>?@[]^_`{|}~\"";
        let mut r = Rng::new(0x5EED);
        (0..64 << 10)
            .map(|_| ALPHABET[r.below(ALPHABET.len() as u64) as usize])
            .collect()
    })
}

/// The message body exactly as the spool must store it: header lines naming
/// the attempt, then random lines (up to 78 octets with CRLF) until `size`.
pub fn body(spec: &Spec) -> Vec<u8> {
    let mut r = Rng::new(spec.body_seed);
    let mut b = Vec::with_capacity(spec.size + 256);
    write!(
        &mut b,
        "From: <{}>\r\nSubject: crash test {}\r\nX-Body-Seed: {:016x}\r\n\r\n",
        spec.from, spec.from, spec.body_seed
    )
    .unwrap();
    let pool = pool();
    while b.len() < spec.size {
        if spec.dots && r.below(6) == 0 {
            // ".", ".." and ". x": a DATA client doubles the dot; a line of a
            // single "." is the end-of-data sequence if it is not doubled.
            match r.below(3) {
                0 => b.push(b'.'),
                1 => b.extend_from_slice(b".."),
                _ => b.extend_from_slice(b". "),
            }
        }
        let len = r.below(77) as usize;
        let at = r.below((pool.len() - 80) as u64) as usize;
        b.extend_from_slice(&pool[at..at + len]);
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// DATA's wire form of `body` (which ends with CRLF): every line starting
/// with '.' gets another, then `.CRLF` (RFC 5321 §4.5.2).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 3);
    let mut from = 0;
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    for at in memchr::memmem::find_iter(body, b"\r\n.") {
        out.extend_from_slice(&body[from..at + 2]);
        out.push(b'.');
        from = at + 2;
    }
    out.extend_from_slice(&body[from..]);
    out.extend_from_slice(b".\r\n");
    out
}

/// How an attempt ended; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Acked(String),
    InDoubt,
    NotSent,
    Abandoned,
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub spec: Spec,
    pub fate: Fate,
}

/// A blocking SMTP connection whose I/O errors are values, not panics.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// One reply: its code and last line.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub line: String,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, STEP)?;
        s.set_read_timeout(Some(STEP))?;
        s.set_write_timeout(Some(STEP))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Connects, reads the greeting and says EHLO.
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let mut c = Conn::connect(addr)?;
        c.expect(220, "greeting")?;
        c.send(b"EHLO crash.example\r\n")?;
        c.expect(250, "EHLO")?;
        Ok(c)
    }

    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)
    }

    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut l = String::new();
        loop {
            l.clear();
            if self.r.read_line(&mut l)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = l.trim_end_matches(['\r', '\n']);
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok(Reply {
                code,
                line: line.to_owned(),
            });
        }
    }

    /// Reads a reply; a different code is an error naming `what`.
    pub fn expect(&mut self, code: u16, what: &str) -> io::Result<Reply> {
        let r = self.reply()?;
        if r.code != code {
            return Err(io::Error::other(format!(
                "{what}: expected {code}, got {:?}",
                r.line
            )));
        }
        Ok(r)
    }

    pub fn hang_up(self) {
        let _ = self.w.shutdown(Shutdown::Both);
    }
}

/// What the connection can do after a transaction.
pub enum Next {
    /// Another transaction.
    Go,
    /// The client hung up on purpose; connect again.
    Reconnect,
    /// An I/O error or an unexpected reply: the connection is useless.
    Dead(String),
}

/// Sends `data` in 1 to 4 writes split at random points, so the end of data
/// sometimes straddles writes (and segments).
fn send_split(c: &mut Conn, data: &[u8], r: &mut Rng) -> io::Result<()> {
    let mut cuts: Vec<usize> = (0..r.below(4))
        .map(|_| r.below(data.len() as u64 + 1) as usize)
        .collect();
    cuts.sort_unstable();
    let mut from = 0;
    for at in cuts {
        c.send(&data[from..at])?;
        from = at;
    }
    c.send(&data[from..])
}

/// One transaction on a connection that said EHLO. `pace`: send the body
/// in pieces of this many bytes with this pause after each, adding each
/// piece to the counter (the large-message test). Returns the attempt's
/// fate and what the connection can do next.
pub fn transaction(
    c: &mut Conn,
    spec: &Spec,
    r: &mut Rng,
    pace: Option<(usize, Duration, &AtomicU64)>,
) -> (Fate, Next) {
    let dead = |fate: Fate, what: &str, e: io::Error| (fate, Next::Dead(format!("{what}: {e}")));
    let mail = if spec.params.is_empty() {
        format!("MAIL FROM:<{}>\r\n", spec.from)
    } else {
        format!("MAIL FROM:<{}> {}\r\n", spec.from, spec.params)
    };
    if let Err(e) = c.send(mail.as_bytes()).and_then(|()| c.expect(250, "MAIL")) {
        return dead(Fate::NotSent, "MAIL", e);
    }
    for rcpt in &spec.rcpts {
        let cmd = format!("RCPT TO:<{rcpt}>\r\n");
        if let Err(e) = c.send(cmd.as_bytes()).and_then(|()| c.expect(250, "RCPT")) {
            return dead(Fate::NotSent, "RCPT", e);
        }
    }
    let body = body(spec);
    // The pieces to send, each with the reply it waits for (BDAT chunks but
    // the last); the last piece ends the message.
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    if spec.bdat {
        let n = r.range(1, 3) as usize;
        let mut cuts: Vec<usize> = (1..n)
            .map(|_| r.below(body.len() as u64) as usize)
            .collect();
        cuts.sort_unstable();
        cuts.push(body.len());
        let mut from = 0;
        for (i, &at) in cuts.iter().enumerate() {
            let last = if i + 1 == cuts.len() { " LAST" } else { "" };
            let mut p = format!("BDAT {}{last}\r\n", at - from).into_bytes();
            p.extend_from_slice(&body[from..at]);
            pieces.push(p);
            from = at;
        }
    } else {
        if let Err(e) = c.send(b"DATA\r\n").and_then(|()| c.expect(354, "DATA")) {
            return dead(Fate::NotSent, "DATA", e);
        }
        pieces.push(dot_stuff(&body));
    }
    drop(body);
    let n = pieces.len();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == n;
        if last && spec.abandon {
            let cut = r.below(piece.len() as u64) as usize;
            if c.send(&piece[..cut]).is_err() {
                return (Fate::NotSent, Next::Dead("abandoning".into()));
            }
            return (Fate::Abandoned, Next::Reconnect);
        }
        let sent = match pace {
            None => send_split(c, piece, r),
            Some((chunk, pause, count)) => piece.chunks(chunk).try_for_each(|ch| {
                c.send(ch)?;
                count.fetch_add(ch.len() as u64, Ordering::Relaxed);
                std::thread::sleep(pause);
                Ok(())
            }),
        };
        if let Err(e) = sent {
            return dead(Fate::NotSent, "sending the body", e);
        }
        if !last {
            if let Err(e) = c.expect(250, "BDAT chunk") {
                return dead(Fate::NotSent, "BDAT chunk", e);
            }
        }
    }
    // Every byte of the message is out: from here on it may be committed.
    match c.reply() {
        Err(e) => dead(Fate::InDoubt, "end of data", e),
        Ok(rep) if rep.code == 250 => match rep.line.strip_prefix("250 2.0.0 Ok: queued as ") {
            Some(id) => (Fate::Acked(id.to_owned()), Next::Go),
            None => {
                let why = format!("end of data: {:?}", rep.line);
                (Fate::Refused(rep.line), Next::Dead(why))
            }
        },
        Ok(rep) => {
            let why = format!("end of data: {:?}", rep.line);
            (Fate::Refused(rep.line), Next::Dead(why))
        }
    }
}

/// What one load client did.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub attempts: Vec<Attempt>,
    /// Failures before the test killed the server: each one fails the test.
    pub early_errors: Vec<String>,
}

/// Clients sending transactions in a loop until the server dies.
pub struct Load {
    /// Set just before the server is killed: errors after it are expected.
    pub killing: Arc<AtomicBool>,
    /// Messages acknowledged so far, all clients.
    pub acked: Arc<AtomicU64>,
    threads: Vec<JoinHandle<ClientLog>>,
}

impl Load {
    /// `clients` threads on `addr`; senders are `{tag}.c{client}.m{n}@crash.example`.
    pub fn start(addr: SocketAddr, clients: usize, tag: &str, seed: u64, mix: Mix) -> Load {
        let killing = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|client| {
                let killing = Arc::clone(&killing);
                let acked = Arc::clone(&acked);
                let tag = tag.to_owned();
                let mut r = Rng::new(seed ^ ((client as u64 + 1) << 40));
                std::thread::Builder::new()
                    .name(format!("load-{client}"))
                    .spawn(move || {
                        let mut log = ClientLog::default();
                        let mut n = 0u64;
                        'conn: while !killing.load(Ordering::SeqCst) {
                            let mut c = match Conn::open(addr) {
                                Ok(c) => c,
                                Err(e) => {
                                    if !killing.load(Ordering::SeqCst) {
                                        log.early_errors.push(format!("client {client}: {e}"));
                                    }
                                    break;
                                }
                            };
                            for _ in 0..r.range(1, 16) {
                                let spec =
                                    mix.spec(&mut r, format!("{tag}.c{client}.m{n}@crash.example"));
                                n += 1;
                                let (fate, next) = transaction(&mut c, &spec, &mut r, None);
                                if matches!(fate, Fate::Acked(_)) {
                                    acked.fetch_add(1, Ordering::Relaxed);
                                }
                                log.attempts.push(Attempt { spec, fate });
                                match next {
                                    Next::Go => {}
                                    Next::Reconnect => {
                                        c.hang_up();
                                        continue 'conn;
                                    }
                                    Next::Dead(why) => {
                                        if !killing.load(Ordering::SeqCst) {
                                            log.early_errors
                                                .push(format!("client {client}: {why}"));
                                        }
                                        break 'conn;
                                    }
                                }
                            }
                            let bye = c.send(b"QUIT\r\n").and_then(|()| c.expect(221, "QUIT"));
                            if let Err(e) = bye {
                                if !killing.load(Ordering::SeqCst) {
                                    log.early_errors.push(format!("client {client}: {e}"));
                                }
                                break;
                            }
                        }
                        log
                    })
                    .expect("spawn a load client")
            })
            .collect();
        Load {
            killing,
            acked,
            threads,
        }
    }

    /// Waits for every client (they end once the server is gone).
    pub fn join(self) -> ClientLog {
        let mut all = ClientLog::default();
        for t in self.threads {
            let log = t.join().expect("a load client panicked");
            all.attempts.extend(log.attempts);
            all.early_errors.extend(log.early_errors);
        }
        all
    }
}

/// SIGKILL, and wait until the process is gone.
pub fn kill(server: &mut Server, killing: &AtomicBool) {
    use std::os::unix::process::ExitStatusExt;
    killing.store(true, Ordering::SeqCst);
    server.signal(libc::SIGKILL);
    let status = server
        .wait_exit(STEP)
        .expect("server still running after SIGKILL");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the server exited before the kill ({status:?}):\n{}",
        server.logs()
    );
}

/// `ringmx serve` on `spool` (an existing spool: recovery runs). The lock of
/// a killed server dies with it; retries briefly should the kernel still be
/// tearing the old process down.
pub fn start_on(spool: &Path, extra: &[&str]) -> Server {
    let dir = spool.to_str().unwrap();
    let mut args = vec![
        "--spool",
        dir,
        "--domain",
        "example.com",
        "--log-level",
        "warn",
    ];
    args.extend_from_slice(extra);
    let base = ["--listen", "127.0.0.1:0", "--cores", "2"];
    let until = Instant::now() + STEP;
    loop {
        match Server::try_start(&base, &args) {
            Ok(s) => return s,
            Err((_, logs)) if logs.contains("in use") && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((status, logs)) => panic!("server did not start ({status:?}):\n{logs}"),
        }
    }
}

/// Sends one message to a running server and returns the attempt (acked,
/// or the test fails).
pub fn probe(addr: SocketAddr, from: &str, seed: u64) -> Attempt {
    let mut r = Rng::new(seed);
    let mut spec = Mix::SMALL.spec(&mut r, from.to_owned());
    spec.abandon = false;
    let mut c = Conn::open(addr).expect("probe: connect");
    let (fate, next) = transaction(&mut c, &spec, &mut r, None);
    if let Next::Dead(why) = next {
        panic!("probe: {why}");
    }
    assert!(matches!(fate, Fate::Acked(_)), "probe: {fate:?}");
    Attempt { spec, fate }
}

/// `ringmx spool verify` on a spool no server holds: must exit 0.
pub fn verify_cli(spool: &Path) {
    let out = ringmx()
        .arg("spool")
        .arg("--spool")
        .arg(spool)
        .arg("verify")
        .output()
        .expect("run ringmx spool verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("verify: ok"),
        "ringmx spool verify ({:?}):\n{text}",
        out.status
    );
}

/// Every attempt so far, by sender.
#[derive(Default)]
pub struct Ledger {
    pub attempts: Vec<Attempt>,
    by_from: HashMap<String, usize>,
}

impl Ledger {
    pub fn add(&mut self, a: Attempt) {
        let prev = self
            .by_from
            .insert(a.spec.from.clone(), self.attempts.len());
        assert!(prev.is_none(), "sender {} used twice", a.spec.from);
        self.attempts.push(a);
    }

    pub fn count(&self, pred: impl Fn(&Fate) -> bool) -> usize {
        self.attempts.iter().filter(|a| pred(&a.fate)).count()
    }
}

/// What a spool held, measured against a ledger.
#[derive(Debug, Default)]
pub struct Found {
    /// Committed messages, by id, with their sender.
    pub ids: BTreeMap<String, String>,
    /// In-doubt attempts that were committed.
    pub in_doubt: usize,
    /// Fragments on disk that no commit refers to (aborted streamed bodies).
    pub orphan_fragments: u64,
}

/// Reads every committed message of `spool` and checks it against `ledger`
/// (see the module docs); panics listing every violation. `when` names the
/// moment in the failure message.
pub fn check(spool: &Path, ledger: &Ledger, when: &str) -> Found {
    let reader = SpoolReader::open(spool).expect("open spool");
    let mut found = Found::default();
    let mut errors: Vec<String> = Vec::new();
    let mut by_sender: HashMap<&str, String> = HashMap::new();
    for m in reader.messages().expect("list spool") {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("reading the spool: {e}"));
                break;
            }
        };
        let id = m.id.to_string();
        let from = m.envelope.mail_from.clone();
        if found.ids.insert(id.clone(), from.clone()).is_some() {
            errors.push(format!("{id}: id listed twice"));
        }
        let Some(&ix) = ledger.by_from.get(&from) else {
            errors.push(format!("{id}: committed message from <{from}> nobody sent"));
            continue;
        };
        let a = &ledger.attempts[ix];
        if let Some(other) = by_sender.insert(&a.spec.from, id.clone()) {
            errors.push(format!("<{from}> committed twice: {other} and {id}"));
        }
        match &a.fate {
            Fate::Acked(acked) if *acked == id => {}
            Fate::Acked(acked) => errors.push(format!(
                "<{from}> acknowledged as {acked} but stored as {id}"
            )),
            Fate::InDoubt => found.in_doubt += 1,
            f => errors.push(format!("{id}: <{from}> is committed, but it was {f:?}")),
        }
        if m.envelope.mail_params != a.spec.params {
            errors.push(format!(
                "{id}: MAIL parameters {:?}, sent {:?}",
                m.envelope.mail_params, a.spec.params
            ));
        }
        if m.envelope.rcpts != a.spec.rcpts {
            errors.push(format!(
                "{id}: recipients {:?}, sent {:?}",
                m.envelope.rcpts, a.spec.rcpts
            ));
        }
        if !String::from_utf8_lossy(&m.received).contains(&format!(" id {id}")) {
            errors.push(format!(
                "{id}: Received header does not carry the id: {:?}",
                String::from_utf8_lossy(&m.received)
            ));
        }
        match m.body_bytes() {
            Ok(got) => {
                let want = body(&a.spec);
                if got != want {
                    let at = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                    errors.push(format!(
                        "{id}: body of <{from}> differs at byte {at} (stored {} bytes, \
                         sent {}, {} fragments)",
                        got.len(),
                        want.len(),
                        m.fragments()
                    ));
                }
            }
            // The fate says whether a `250` was sent for it.
            Err(e) => errors.push(format!(
                "{id}: reading the body of <{from}> ({:?}): {e}",
                a.fate
            )),
        }
    }
    for a in &ledger.attempts {
        if let Fate::Acked(id) = &a.fate {
            if !found.ids.contains_key(id) {
                errors.push(format!(
                    "{id}: acknowledged to <{}> ({} bytes, {}) but not in the spool",
                    a.spec.from,
                    a.spec.size,
                    if a.spec.bdat { "BDAT" } else { "DATA" }
                ));
            }
        }
    }
    let acked: Vec<&String> = ledger
        .attempts
        .iter()
        .filter_map(|a| match &a.fate {
            Fate::Acked(id) => Some(id),
            _ => None,
        })
        .collect();
    if acked.iter().collect::<HashSet<_>>().len() != acked.len() {
        errors.push("the server acknowledged two messages with the same id".into());
    }
    match reader.disk_stats() {
        Ok(shards) => {
            found.orphan_fragments = shards.iter().map(|s| s.orphan_fragments()).sum();
        }
        Err(e) => errors.push(format!("disk stats: {e}")),
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(30);
        panic!(
            "{when}: {n} violation(s) in {}:\n{}",
            spool.display(),
            errors.join("\n")
        );
    }
    found
}

/// Simulates a power loss after the kill: in each shard's newest segment,
/// the bytes that no fdatasync had to cover yet (after the last record of
/// an acknowledged message, which an fdatasync did cover) are torn. Either
/// the file is cut at a random point in that range and random bytes or
/// zeros follow, or a page-sized run inside it reads back as zeros (a page
/// never written back). Sealed segments are durable as a whole and left
/// alone. Returns one line per shard saying what was done, and whether any
/// bytes were torn.
pub fn power_cut(spool: &Path, ledger: &Ledger, r: &mut Rng) -> (Vec<String>, bool) {
    use ringmx::spool::format::{
        segment_file_name, shard_dir_name, FILE_HEADER_LEN, RECORD_HEADER_LEN, SEAL_RECORD_LEN,
    };
    use std::os::unix::fs::FileExt;

    let reader = SpoolReader::open(spool).expect("open spool");
    // Per shard: the end of the last acknowledged record, (segment, offset).
    let mut durable: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for m in reader.messages().expect("list spool") {
        let m = m.expect("read the spool");
        let id = m.id.to_string();
        let acked = ledger
            .by_from
            .get(&m.envelope.mail_from)
            .is_some_and(|&ix| ledger.attempts[ix].fate == Fate::Acked(id.clone()));
        if !acked {
            continue;
        }
        let shard = m.id.shard();
        let path = spool
            .join(shard_dir_name(shard))
            .join(segment_file_name(m.location.segment));
        let f = std::fs::File::open(&path).unwrap();
        let mut len = [0u8; 4];
        f.read_exact_at(&mut len, m.location.offset + 4).unwrap();
        let end = m.location.offset + RECORD_HEADER_LEN as u64 + u64::from(u32::from_le_bytes(len));
        let e = durable.entry(shard).or_default();
        *e = (*e).max((m.location.segment, end));
    }
    let mut done = Vec::new();
    let mut torn = false;
    for shard in reader.shards().unwrap() {
        let dir = spool.join(shard_dir_name(shard));
        let mut segs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        let Some(newest) = segs.last() else { continue };
        let name = newest.file_name().unwrap().to_string_lossy().into_owned();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(newest)
            .unwrap();
        let len = f.metadata().unwrap().len();
        if len <= FILE_HEADER_LEN as u64 {
            done.push(format!(
                "shard {shard}: {name} has no records ({len} bytes)"
            ));
            continue;
        }
        // A seal (kind 4) as the last record: the segment was synced whole.
        let mut tail = [0u8; SEAL_RECORD_LEN];
        f.read_exact_at(&mut tail, len - SEAL_RECORD_LEN as u64)
            .unwrap();
        let seal_len = u64::from_le_bytes(
            tail[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 8]
                .try_into()
                .unwrap(),
        );
        if tail[8] == 4 && seal_len == len {
            done.push(format!("shard {shard}: {name} is sealed"));
            continue;
        }
        let low = match durable.get(&shard) {
            Some(&(seg, end)) if segment_file_name(seg) == name => end,
            _ => FILE_HEADER_LEN as u64,
        };
        if low >= len || r.pct(50) {
            let cut = r.range(low.min(len), len);
            f.set_len(cut).unwrap();
            let junk: Vec<u8> = match r.below(3) {
                0 => Vec::new(),
                1 => vec![0; r.range(1, 4096) as usize],
                _ => (0..r.range(1, 4096)).map(|_| r.next() as u8).collect(),
            };
            f.write_all_at(&junk, cut).unwrap();
            done.push(format!(
                "shard {shard}: {name} cut at {cut} of {len} (durable up to {low}), {} junk bytes",
                junk.len()
            ));
        } else {
            let at = r.range(low, len - 1);
            let to = ((at / 4096 + 1) * 4096).min(len);
            f.write_all_at(&vec![0; (to - at) as usize], at).unwrap();
            done.push(format!(
                "shard {shard}: {name} zeroed {at}..{to} of {len} (durable up to {low})"
            ));
        }
        f.sync_all().unwrap();
        torn = true;
    }
    (done, torn)
}
