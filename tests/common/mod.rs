//! Shared black-box test harness: start the real `ringmx` binary on a free
//! loopback port, talk to it with raw bytes, stop it with signals, and read
//! back what it stored.
//!
//! Every wait is bounded; a `Server` kills its process when dropped.

#![allow(dead_code)] // each test binary uses a different part

pub mod certs;
pub mod dialog;
pub mod postfix;
mod tools;

#[allow(unused_imports)] // each test binary uses a different part
pub use tools::{find_tool, in_ci, require_tool, skip};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any single expected event may take before a test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// RFC 5321 §4.5.2 undone: DATA's wire form (without the final `.` line)
/// back to the body the server must store.
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut at_line_start = true;
    for (i, &b) in wire.iter().enumerate() {
        if !(at_line_start && b == b'.') {
            out.push(b);
        }
        at_line_start = b == b'\n' && i > 0 && wire[i - 1] == b'\r';
    }
    out
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        Self::under(std::env::temp_dir(), tag)
    }

    /// On /dev/shm when present: spools and Maildirs whose fsyncs would
    /// otherwise cost the disk's ~13 ms each.
    pub fn in_shm(tag: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        Self::under(
            if shm.is_dir() {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            },
            tag,
        )
    }

    fn under(base: PathBuf, tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = base.join(format!(
            "ringmx-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log lines collected from the server's stderr.
#[derive(Default)]
struct Logs {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

/// A running `ringmx serve`.
pub struct Server {
    child: Child,
    /// The first listen address (port resolved).
    pub addr: SocketAddr,
    /// Every listen address.
    pub addrs: Vec<SocketAddr>,
    /// The spool directory (removed on drop).
    pub spool: TempDir,
    logs: Arc<Logs>,
    exit: Option<ExitStatus>,
}

/// The binary under test.
pub fn ringmx() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringmx"))
}

impl Server {
    /// Starts `ringmx serve` on 127.0.0.1:0 with one shard, a fresh spool
    /// and info logs (unless `extra` gives --spool or --log-level), plus
    /// `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(&["--listen", "127.0.0.1:0", "--cores", "1"], extra)
    }

    /// Like [`Server::start`] with `base` instead of the default listen/cores.
    pub fn start_with(base: &[&str], extra: &[&str]) -> Server {
        match Self::try_start(base, extra) {
            Ok(s) => s,
            Err((status, logs)) => panic!("server did not start ({status:?}):\n{logs}"),
        }
    }

    /// Starts the server; on failure returns its exit status and output.
    pub fn try_start(base: &[&str], extra: &[&str]) -> Result<Server, (ExitStatus, String)> {
        Self::try_start_tweaked(base, extra, |_| {})
    }

    /// [`Server::try_start`] with `tweak` applied to the command before it
    /// runs (e.g. a `pre_exec` that sets a resource limit).
    pub fn try_start_tweaked(
        base: &[&str],
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Result<Server, (ExitStatus, String)> {
        let spool = TempDir::new("spool");
        let mut cmd = ringmx();
        cmd.arg("serve").args(base);
        if !base.iter().chain(extra).any(|a| *a == "--spool") {
            cmd.arg("--spool").arg(spool.path());
        }
        if !base.iter().chain(extra).any(|a| *a == "--log-level") {
            cmd.args(["--log-level", "info"]);
        }
        // Every test client is 127.0.0.1: the per-IP connection limit (on
        // by default) is lifted unless a test sets it (tests/server_anvil.rs).
        if !base
            .iter()
            .chain(extra)
            .any(|a| *a == "--max-connections-per-ip")
        {
            cmd.args(["--max-connections-per-ip", "0"]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn ringmx");
        let logs = Arc::new(Logs::default());
        let stderr = child.stderr.take().unwrap();
        let l2 = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut g = l2.lines.lock().unwrap();
                g.0.push(line);
                l2.changed.notify_all();
            }
            l2.lines.lock().unwrap().1 = true;
            l2.changed.notify_all();
        });
        let listening = wait_for(&logs, STEP, |l| l.contains("listening on "));
        let Some(line) = listening else {
            let status = child.wait().unwrap();
            // Let the reader thread take the rest of the output.
            wait_for(&logs, Duration::from_secs(2), |_| false);
            return Err((status, all_logs(&logs)));
        };
        let addrs: Vec<SocketAddr> = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split(" (")
            .next()
            .unwrap()
            .split(' ')
            .map(|a| a.parse().unwrap())
            .collect();
        Ok(Server {
            child,
            addr: addrs[0],
            addrs,
            spool,
            logs,
            exit: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exit = Some(s);
                // Let the reader thread drain stderr.
                wait_for(&self.logs, Duration::from_secs(2), |_| false);
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGTERM, then waits for a clean exit; panics with the logs otherwise.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(STEP) {
            Some(s) => s,
            None => panic!("server did not stop after SIGTERM:\n{}", self.logs()),
        }
    }

    /// Everything logged so far, one string.
    pub fn logs(&self) -> String {
        all_logs(&self.logs)
    }

    /// Waits until a log line contains `needle`; returns it.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Option<String> {
        wait_for(&self.logs, limit, |l| l.contains(needle))
    }

    /// Waits until `n` log lines contain `needle`; returns the `n`th.
    pub fn wait_log_nth(&self, needle: &str, n: usize, limit: Duration) -> Option<String> {
        let until = Instant::now() + limit;
        let mut g = self.logs.lines.lock().unwrap();
        loop {
            if let Some(l) = g.0.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if g.1 || now >= until {
                return None;
            }
            g = self.logs.changed.wait_timeout(g, until - now).unwrap().0;
        }
    }

    /// Connects a client and reads the greeting.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(self.addr);
        c.expect("220 ");
        c
    }

    /// The messages the server committed to its spool, read after it stopped.
    pub fn stored(&self) -> Vec<Stored> {
        assert!(
            self.exit.is_some(),
            "stop the server before reading what it stored"
        );
        read_spool(self.spool.path())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn all_logs(logs: &Logs) -> String {
    logs.lines.lock().unwrap().0.join("\n")
}

/// Waits until a new or existing line matches, or output ends, or time is up.
fn wait_for(logs: &Logs, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let until = Instant::now() + limit;
    let mut g = logs.lines.lock().unwrap();
    loop {
        if let Some(l) = g.0.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        let now = Instant::now();
        if g.1 || now >= until {
            return None;
        }
        g = logs.changed.wait_timeout(g, until - now).unwrap().0;
    }
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub client: String,
    pub helo: String,
    pub mail_from: String,
    pub mail_params: String,
    pub rcpts: Vec<String>,
    /// Received: header plus body, as stored.
    pub data: Vec<u8>,
    /// The body alone: what the client sent, dot-unstuffed.
    pub body: Vec<u8>,
}

impl Stored {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Reads every committed message back from the spool, through the same
/// reader `ringmx spool` uses.
pub fn read_spool(spool: &Path) -> Vec<Stored> {
    let reader = ringmx::spool::SpoolReader::open(spool).expect("open spool");
    let mut out = Vec::new();
    for m in reader.messages().expect("list spool") {
        let m = m.expect("read message");
        let body = m.body_bytes().expect("read body");
        let mut data = m.received.clone();
        data.extend_from_slice(&body);
        out.push(Stored {
            id: m.id.to_string(),
            client: m.envelope.client.map(|c| c.to_string()).unwrap_or_default(),
            helo: m.envelope.helo,
            mail_from: m.envelope.mail_from,
            mail_params: m.envelope.mail_params,
            rcpts: m.envelope.rcpts,
            data,
            body,
        });
    }
    out
}

/// A raw SMTP client over std's blocking TcpStream.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, STEP).expect("connect"))
    }

    /// A client on a socket connected elsewhere (e.g. from another local
    /// address).
    pub fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(STEP)).unwrap();
        s.set_write_timeout(Some(STEP)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Connects from `source` (any of 127.0.0.0/8 on Linux, where all of it
    /// routes to lo): a distinct client address without a proxy.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind to {source}: {e}"));
        s.connect_timeout(&addr.into(), STEP).expect("connect");
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(STEP)).unwrap();
        s.set_write_timeout(Some(STEP)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.w
    }

    /// Sends bytes as they are.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.w.write_all(bytes.as_ref()).expect("send");
    }

    /// Reads one line without its CRLF; `None` at EOF.
    pub fn try_line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => None,
            Ok(_) => Some(l.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Reads one line; panics at EOF.
    pub fn line(&mut self) -> String {
        self.try_line()
            .expect("connection closed while waiting for a reply")
    }

    /// Reads one whole reply (all `NNN-` lines and the `NNN ` line); returns
    /// its lines.
    pub fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let last = l.as_bytes().get(3) != Some(&b'-');
            lines.push(l);
            if last {
                return lines;
            }
        }
    }

    /// Reads one whole reply and asserts its last line starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply();
        let last = r.last().unwrap().clone();
        assert!(last.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        last
    }

    /// Asserts the server closes the connection (after any replies already
    /// read).
    pub fn expect_eof(&mut self) {
        if let Some(l) = self.try_line() {
            panic!("expected the connection to close, got {l:?}");
        }
    }

    /// Whether the connection is closed (EOF within `limit`), consuming any
    /// pending lines.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.w.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 256];
        let r = loop {
            match self.r.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        self.w.set_read_timeout(Some(STEP)).unwrap();
        r
    }

    /// One full transaction with EHLO already done; returns the queue id.
    pub fn transaction(&mut self, from: &str, to: &str, body: &str) -> String {
        self.send(format!("MAIL FROM:<{from}>\r\n"));
        self.expect("250 ");
        self.send(format!("RCPT TO:<{to}>\r\n"));
        self.expect("250 ");
        self.send("DATA\r\n");
        self.expect("354 ");
        self.send(body);
        self.send(".\r\n");
        let l = self.expect("250 2.0.0 Ok: queued as ");
        l.rsplit(' ').next().unwrap().to_owned()
    }

    pub fn ehlo(&mut self) {
        self.send("EHLO client.example\r\n");
        self.expect("250 ");
    }
}

/// A tmpfs of a given size mounted on a fresh directory; unmounted (lazily)
/// on drop. Needs root (CAP_SYS_ADMIN).
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts one; `Err` says why not (for [`skip`]).
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let dir = TempDir::new("tmpfs");
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size}")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!(
                "cannot mount a tmpfs ({e}); needs root with CAP_SYS_ADMIN"
            ));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(t) = std::ffi::CString::new(self.dir.path().as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Raises this process's open-file limit (many client sockets).
pub fn raise_nofile(want: u64) {
    ringmx::sys::raise_limit(ringmx::sys::Limit::OpenFiles, want);
}
