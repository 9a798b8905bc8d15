//! Test helpers: run the built `loadgen` binary with a deadline, start Postfix's
//! `smtp-sink`, and a small scriptable SMTP server for misbehaviour tests.
//!
//! Every server binds 127.0.0.1 port 0 (smtp-sink: a port just freed by
//! binding 0), so tests run in parallel without fixed ports.

#![allow(dead_code)] // Each test file uses a different part of this module.

// The server's tests and these share one rule for missing tools.
#[path = "../../../tests/common/tools.rs"]
mod tools;

#[allow(unused_imports)] // each test binary uses a different part
pub use tools::{find_tool, in_ci, require_tool, skip};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A fresh temporary directory for one test's output files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loadgen-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `loadgen` binary.
pub fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
}

/// What a finished loadgen run left behind.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn assert_ok(&self) -> &Finished {
        assert!(
            self.status.success(),
            "loadgen failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Waits for `child` at most `limit`, killing it (and failing the test) past that.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Finished {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "loadgen did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Finished {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `loadgen` with `args`, bounded by `limit`.
pub fn run_loadgen(args: &[&str], limit: Duration) -> Finished {
    let child = loadgen()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    wait_bounded(child, limit)
}

/// Reads a `--json` summary.
pub fn summary(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `v[a][b]...` as u64, 0 when absent (reply classes and errors leave zeros out).
pub fn count(v: &serde_json::Value, keys: &[&str]) -> u64 {
    let mut cur = v;
    for k in keys {
        match cur.get(k) {
            Some(next) => cur = next,
            None => return 0,
        }
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{keys:?} is not a count: {cur}"))
}

/// Postfix's smtp-sink on a free loopback port, killed on drop.
pub struct SmtpSink {
    child: Child,
    pub addr: SocketAddr,
}

impl SmtpSink {
    /// Starts smtp-sink, or returns `None` after [`skip`] (which fails the
    /// test in CI) when it is not installed: `apt-get install postfix`.
    pub fn start() -> Option<SmtpSink> {
        let Some(bin) = find_tool("smtp-sink") else {
            skip("smtp-sink is missing (Debian package postfix)");
            return None;
        };
        for _ in 0..5 {
            // smtp-sink takes a port, not a socket: borrow a free one from the kernel.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut cmd = Command::new(&bin);
            // smtp-sink refuses to run as root without a user to drop to.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "nobody"]);
            }
            let mut child = cmd
                .arg(format!("127.0.0.1:{port}"))
                .arg("1000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start smtp-sink");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return Some(SmtpSink { child, addr });
                }
                if child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: try another
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("smtp-sink did not start");
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the fake server behaves. Replies are whole lines without CRLF.
#[derive(Clone)]
pub struct Script {
    /// Greeting line; `None` = never greet (a silent server).
    pub greeting: Option<String>,
    /// EHLO keywords after the first line.
    pub ehlo_keywords: Vec<String>,
    /// Reply to EHLO; `None` = the usual multi-line 250.
    pub ehlo_reply: Option<String>,
    /// Reply to MAIL.
    pub mail_reply: String,
    /// Reply to RCPT.
    pub rcpt_reply: String,
    /// Reply at end of data / BDAT LAST; `{id}` is replaced by a fresh queue id.
    pub eod_reply: String,
    /// Wait this long before each reply after the greeting.
    pub reply_delay: Duration,
    /// Wait this long before the end-of-data reply only.
    pub eod_delay: Duration,
    /// On this command (upper case, e.g. "MAIL"), close without replying.
    pub close_on: Option<String>,
    /// On this command, answer with this garbage instead of a reply.
    pub garbage_on: Option<(String, String)>,
    /// `(verb, n, reply)`: the n-th (from 1) such command on each connection
    /// gets `reply` instead of the usual one; for DATA it replaces the
    /// end-of-data reply (the 354 stays). `CLOSE` closes without replying
    /// (for DATA: once the data has been read). Sent as is: no queue id.
    pub nth: Vec<(String, usize, String)>,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            greeting: Some("220 fake.test ESMTP".into()),
            ehlo_keywords: vec!["PIPELINING".into(), "CHUNKING".into(), "8BITMIME".into()],
            ehlo_reply: None,
            mail_reply: "250 2.1.0 Ok".into(),
            rcpt_reply: "250 2.1.5 Ok".into(),
            eod_reply: "250 2.0.0 Ok: queued as {id}".into(),
            reply_delay: Duration::ZERO,
            eod_delay: Duration::ZERO,
            close_on: None,
            garbage_on: None,
            nth: Vec::new(),
        }
    }
}

/// What the fake server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: u64,
    /// Queue ids in the end-of-data replies it sent.
    pub queue_ids: Vec<String>,
    /// Body sizes received: after dot-unstuffing for DATA, chunk sizes for BDAT.
    pub data_bodies: Vec<usize>,
    pub bdat_bodies: Vec<usize>,
    /// A command arrived while an earlier one was still unanswered.
    pub pipelined_input: bool,
    /// Ends of data after which the next command had already arrived in the
    /// same read: the client chained the next message's envelope (RFC 2920 §3.1).
    pub chained_eod: u64,
    pub commands: Vec<String>,
    /// Errors of the server itself (not the client hanging up); any one
    /// fails the test when the server is dropped.
    pub errors: Vec<String>,
}

/// A scripted SMTP server on 127.0.0.1:0, one thread per connection.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    pub fn start(script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(AtomicU64::new(1));
        {
            let seen = seen.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            seen.lock().unwrap().errors.push(format!("accept: {e}"));
                            continue;
                        }
                    };
                    seen.lock().unwrap().connections += 1;
                    let (script, seen, ids) = (script.clone(), seen.clone(), ids.clone());
                    thread::spawn(move || {
                        if let Err(e) = serve(stream, &script, &seen, &ids) {
                            if !client_hung_up(&e) {
                                seen.lock().unwrap().errors.push(format!("serve: {e}"));
                            }
                        }
                    });
                }
            });
        }
        FakeServer { addr, seen, stop }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop; if this fails the loop already ended.
        let _ = TcpStream::connect(self.addr);
        // A server that broke is a failed test, not a quiet one (unless the
        // test is failing already: a second panic would abort).
        if !thread::panicking() {
            let errors = &self.seen.lock().unwrap().errors;
            assert!(errors.is_empty(), "the fake server failed: {errors:?}");
        }
    }
}

/// The client closed or reset the connection: expected whenever loadgen
/// gives up on a misbehaving server (timeouts, garbage) or is interrupted.
fn client_hung_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

fn serve(
    stream: TcpStream,
    s: &Script,
    seen: &Mutex<Seen>,
    ids: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut rd = BufReader::new(stream);
    let Some(greeting) = &s.greeting else {
        // Silent: hold the connection until the client gives up.
        let mut sink = Vec::new();
        rd.read_to_end(&mut sink)?;
        return Ok(());
    };
    writeln_crlf(&mut out, greeting)?;
    let mut line = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Like a real server, a refused MAIL leaves no transaction: RCPT and DATA
    // then get 503 (RFC 5321 §4.1.4's sequencing errors).
    let mut in_transaction = false;
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        {
            let mut g = seen.lock().unwrap();
            g.commands.push(text.clone());
            // More command bytes already waiting: the client did not wait for
            // this command's reply (BDAT's chunk bytes do not count).
            if !rd.buffer().is_empty() && verb != "BDAT" && verb != "DATA" {
                g.pipelined_input = true;
            }
        }
        if s.close_on.as_deref() == Some(verb.as_str()) {
            return Ok(());
        }
        let n = counts.entry(verb.clone()).or_insert(0);
        *n += 1;
        let nth = s
            .nth
            .iter()
            .find(|(v, k, _)| *v == verb && k == n)
            .map(|(_, _, r)| r.as_str());
        if nth == Some("CLOSE") && verb != "DATA" {
            return Ok(());
        }
        if let Some((on, garbage)) = &s.garbage_on {
            if *on == verb {
                out.write_all(garbage.as_bytes())?;
                continue;
            }
        }
        thread::sleep(s.reply_delay);
        match verb.as_str() {
            "EHLO" => match &s.ehlo_reply {
                Some(r) => writeln_crlf(&mut out, r)?,
                None => {
                    let mut r = String::from("250-fake.test");
                    for k in &s.ehlo_keywords {
                        r.push_str("\r\n250-");
                        r.push_str(k);
                    }
                    r.push_str("\r\n250 SIZE 100000000");
                    writeln_crlf(&mut out, &r)?;
                }
            },
            "HELO" => writeln_crlf(&mut out, "250 fake.test")?,
            "MAIL" => {
                let r = nth.unwrap_or(&s.mail_reply);
                in_transaction = r.starts_with('2');
                writeln_crlf(&mut out, r)?;
            }
            "RCPT" if !in_transaction => {
                writeln_crlf(&mut out, "503 5.5.1 Error: need MAIL command")?
            }
            "RCPT" => writeln_crlf(&mut out, nth.unwrap_or(&s.rcpt_reply))?,
            "DATA" if !in_transaction => {
                writeln_crlf(&mut out, "503 5.5.1 Error: need RCPT command")?
            }
            "DATA" => {
                in_transaction = false;
                writeln_crlf(&mut out, "354 End data with <CR><LF>.<CR><LF>")?;
                let mut body = 0usize;
                loop {
                    line.clear();
                    if rd.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    body += line.len() - usize::from(line.starts_with(b".."));
                }
                {
                    let mut g = seen.lock().unwrap();
                    g.data_bodies.push(body);
                    g.chained_eod += u64::from(!rd.buffer().is_empty());
                }
                match nth {
                    Some("CLOSE") => return Ok(()),
                    Some(r) => writeln_crlf(&mut out, r)?,
                    None => end_of_data(&mut out, s, seen, ids)?,
                }
            }
            "BDAT" => {
                // BDAT <size> [LAST] (RFC 3030 §2): exactly <size> bytes follow.
                let mut parts = text.split_whitespace().skip(1);
                let size: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
                let mut chunk = vec![0u8; size];
                rd.read_exact(&mut chunk)?;
                seen.lock().unwrap().bdat_bodies.push(size);
                if last {
                    end_of_data(&mut out, s, seen, ids)?;
                } else {
                    writeln_crlf(&mut out, "250 2.0.0 chunk ok")?;
                }
            }
            "RSET" => {
                in_transaction = false;
                writeln_crlf(&mut out, nth.unwrap_or("250 2.0.0 Ok"))?;
                if nth.is_some_and(|r| r.starts_with("421")) {
                    return Ok(());
                }
            }
            "NOOP" => writeln_crlf(&mut out, "250 2.0.0 Ok")?,
            "QUIT" => {
                writeln_crlf(&mut out, "221 2.0.0 Bye")?;
                return Ok(());
            }
            _ => writeln_crlf(&mut out, "502 5.5.2 Error: command not recognized")?,
        }
    }
}

fn end_of_data(
    out: &mut TcpStream,
    s: &Script,
    seen: &Mutex<Seen>,
    ids: &AtomicU64,
) -> std::io::Result<()> {
    thread::sleep(s.eod_delay);
    let id = format!("Q{:06}", ids.fetch_add(1, Ordering::Relaxed));
    let reply = s.eod_reply.replace("{id}", &id);
    if reply.starts_with('2') {
        seen.lock().unwrap().queue_ids.push(id);
    }
    writeln_crlf(out, &reply)
}

fn writeln_crlf(out: &mut TcpStream, text: &str) -> std::io::Result<()> {
    let mut b = text.as_bytes().to_vec();
    b.extend_from_slice(b"\r\n");
    out.write_all(&b)
}

/// A loopback port with nothing listening (bound, then closed).
pub fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
