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

use std::path::PathBuf;

use super::{Client, Server};

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
        match step {
            Step::Send(b) => {
                transcript.push_str(&format!("C: {}\n", String::from_utf8_lossy(b).trim_end()));
                queued.extend_from_slice(b);
            }
            Step::Expect(p) => match c.try_line() {
                Some(l) => {
                    transcript.push_str(&format!("S: {l}\n"));
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
    if let Some(n) = sc.stored {
        let status = server.stop();
        assert!(
            status.success(),
            "{name}: server exit {status:?}\n{}",
            server.logs()
        );
        let got = server.stored().len();
        assert_eq!(got, n, "{name}: stored messages\n{}", server.logs());
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
