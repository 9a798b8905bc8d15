//! The dialog runner: one send/expect script per file in `tests/dialogs/`.
//!
//! Script lines (leading spaces ignored; blank lines and `#` comments skipped):
//!
//! | line | meaning |
//! |---|---|
//! | `args: FLAGS` | extra `ringmx serve` flags (first lines only) |
//! | `-> TEXT` | queue `TEXT` + CRLF (`->` alone: an empty line) |
//! | `->*N TEXT` | queue `TEXT` + CRLF N times |
//! | `=> TEXT` | queue `TEXT` with escapes `\r \n \t \\ \xHH`, no CRLF added |
//! | `<- PREFIX` | read one reply line; it must start with PREFIX |
//! | `<.. PREFIX` | read lines until one starts with PREFIX |
//! | `<eof` | the server must close the connection now |
//! | `stored: N` | after the dialog the server is stopped and must have stored N messages |
//!
//! Everything queued is sent in one write just before the next read, so
//! consecutive `->` lines form one pipelined batch (RFC 2920); alternate
//! `->` and `<-` for a lock-step client.
//!
//! Bodies: the runner follows what it sent. After a `354` reply the bytes
//! sent up to the first CRLF `.` CRLF are a body; a send step that starts
//! with `BDAT` is parsed into its chunks. Each message the server answers
//! with `queued as` must then be stored byte for byte as sent (after
//! dot-unstuffing), in order; the server is stopped to check that whenever
//! a message was acknowledged or `stored:` is given.

use std::path::PathBuf;

use super::{unstuff, Client, Server};

/// What the runner knows of the message being sent.
#[derive(Default)]
struct Bodies {
    /// Bytes sent since a `354` reply: a DATA body and what follows it.
    data: Option<Vec<u8>>,
    /// BDAT chunks of the message being sent, and whether one said LAST
    /// (the next BDAT then starts a new message).
    bdat: Vec<u8>,
    bdat_last: bool,
    /// Bodies the server acknowledged with `queued as`, in order.
    acked: Vec<Vec<u8>>,
}

impl Bodies {
    fn sent(&mut self, bytes: &[u8]) {
        if let Some(d) = &mut self.data {
            d.extend_from_slice(bytes);
        } else if bytes.starts_with(b"BDAT ") {
            self.bdat_chunks(bytes);
        }
    }

    /// `BDAT n [LAST]` CRLF, then n octets; several in one send step.
    fn bdat_chunks(&mut self, mut b: &[u8]) {
        while b.starts_with(b"BDAT ") {
            let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let cmd = String::from_utf8_lossy(&b[5..eol]).into_owned();
            let mut words = cmd.split_whitespace();
            let Some(n) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
                return;
            };
            let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
            if self.bdat_last {
                // The previous BDAT message ended (acknowledged or not).
                self.bdat.clear();
                self.bdat_last = false;
            }
            let chunk = &b[eol + 2..];
            let n = n.min(chunk.len());
            self.bdat.extend_from_slice(&chunk[..n]);
            self.bdat_last |= last;
            b = &chunk[n..];
        }
    }

    /// A reply line was read.
    fn reply(&mut self, line: &str) {
        let acked = line.starts_with("250 ") && line.contains("queued as");
        if let Some(d) = self.data.take() {
            // With a leading CRLF an empty body's lone "." matches too.
            let mut w = b"\r\n".to_vec();
            w.extend_from_slice(&d);
            if let Some(end) = w.windows(5).position(|x| x == b"\r\n.\r\n") {
                if acked {
                    self.acked.push(unstuff(&w[2..end + 2]));
                }
            }
        } else if acked && self.bdat_last {
            self.acked.push(std::mem::take(&mut self.bdat));
            self.bdat_last = false;
        }
        if line.starts_with("354") {
            self.data = Some(Vec::new());
        }
    }
}

#[derive(Debug)]
enum Step {
    Send(Vec<u8>),
    Expect(String),
    Skip(String),
    Eof,
}

struct Script {
    args: Vec<String>,
    steps: Vec<(usize, Step)>,
    stored: Option<usize>,
}

/// The directory holding the dialog scripts.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dialogs")
}

fn unescape(s: &str, line: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = s
                        .get(i + 1..i + 3)
                        .unwrap_or_else(|| panic!("line {line}: \\x"));
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                c => panic!("line {line}: unknown escape \\{}", c as char),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    out
}

fn parse(text: &str) -> Script {
    let mut sc = Script {
        args: Vec::new(),
        steps: Vec::new(),
        stored: None,
    };
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let l = raw.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (op, rest) = l.split_once(' ').unwrap_or((l, ""));
        let step = match op {
            "args:" => {
                sc.args.extend(rest.split_whitespace().map(str::to_owned));
                continue;
            }
            "stored:" => {
                sc.stored = Some(rest.trim().parse().expect("stored: N"));
                continue;
            }
            "->" => Step::Send(format!("{rest}\r\n").into_bytes()),
            "=>" => Step::Send(unescape(rest, n)),
            "<-" => Step::Expect(rest.to_owned()),
            "<.." => Step::Skip(rest.to_owned()),
            "<eof" => Step::Eof,
            _ if op.starts_with("->*") => {
                let times: usize = op[3..].parse().unwrap_or_else(|_| panic!("line {n}: ->*N"));
                Step::Send(format!("{rest}\r\n").repeat(times).into_bytes())
            }
            _ => panic!("line {n}: unknown op {op:?}"),
        };
        sc.steps.push((n, step));
    }
    sc
}

/// Runs `tests/dialogs/<name>.txt` against a fresh server.
pub fn run(name: &str) {
    let path = dir().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let sc = parse(&text);
    let args: Vec<&str> = sc.args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    let mut c = Client::connect(server.addr);
    let mut queued = Vec::new();
    let mut transcript = String::new();
    let mut bodies = Bodies::default();
    for (n, step) in &sc.steps {
        let fail = |what: String, transcript: &str, server: &Server| -> ! {
            panic!(
                "{name}.txt line {n}: {what}\n--- transcript\n{transcript}--- server log\n{}",
                server.logs()
            )
        };
        if !matches!(step, Step::Send(_)) && !queued.is_empty() {
            c.send(&queued);
            queued.clear();
        }
        if let Step::Send(b) = step {
            bodies.sent(b);
        }
        match step {
            Step::Send(b) => {
                transcript.push_str(&format!("C: {}\n", String::from_utf8_lossy(b).trim_end()));
                queued.extend_from_slice(b);
            }
            Step::Expect(p) => match c.try_line() {
                Some(l) => {
                    transcript.push_str(&format!("S: {l}\n"));
                    bodies.reply(&l);
                    if !l.starts_with(p.as_str()) {
                        fail(format!("expected {p:?}, got {l:?}"), &transcript, &server);
                    }
                }
                None => fail(format!("expected {p:?}, got EOF"), &transcript, &server),
            },
            Step::Skip(p) => loop {
                match c.try_line() {
                    Some(l) => {
                        transcript.push_str(&format!("S: {l}\n"));
                        bodies.reply(&l);
                        if l.starts_with(p.as_str()) {
                            break;
                        }
                    }
                    None => fail(format!("expected {p:?}, got EOF"), &transcript, &server),
                }
            },
            Step::Eof => {
                if let Some(l) = c.try_line() {
                    fail(format!("expected EOF, got {l:?}"), &transcript, &server);
                }
                transcript.push_str("S: <eof>\n");
            }
        }
    }
    if !queued.is_empty() {
        c.send(&queued);
    }
    drop(c);
    if sc.stored.is_none() && bodies.acked.is_empty() {
        return;
    }
    let status = server.stop();
    assert!(
        status.success(),
        "{name}: server exit {status:?}\n{}",
        server.logs()
    );
    let stored = server.stored();
    if let Some(n) = sc.stored {
        assert_eq!(
            stored.len(),
            n,
            "{name}: stored messages\n{}",
            server.logs()
        );
    }
    assert_eq!(
        stored.len(),
        bodies.acked.len(),
        "{name}: stored messages against acknowledged ones\n--- transcript\n{transcript}"
    );
    for (i, (m, want)) in stored.iter().zip(&bodies.acked).enumerate() {
        assert!(
            m.body == *want,
            "{name}: message {i} stored as\n{:?}\nbut sent as\n{:?}",
            String::from_utf8_lossy(&m.body),
            String::from_utf8_lossy(want)
        );
    }
}

/// Every `*.txt` in the dialog directory, by name.
pub fn all() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "txt").then(|| p.file_stem().unwrap().to_string_lossy().into())
        })
        .collect();
    v.sort();
    v
}
