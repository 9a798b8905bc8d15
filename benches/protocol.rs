//! Hot paths of the sans-IO engine, each beside a naive baseline:
//!
//! * `scanner/64KiB`: finding every line end in a 64 KiB buffer.
//! * `parser/envelope_commands`: one command line -> `Command`, over a
//!   typical envelope's lines.
//! * `session/pipelined_1KiB_tx`: whole pipelined transactions (MAIL, RCPT,
//!   DATA, a 1 KiB body, end of data, commit) through a `Session`, fed in
//!   16 KiB reads as a connection would.
//! * `decoder/64KiB_body`: a 64 KiB body through DATA decoding (dot
//!   unstuffing, bare-newline and line-length checks).
//!
//! Each bench asserts its result so a broken fast path cannot look fast.
//! Run: `cargo bench --bench protocol`.

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmx::config::SmtpConfig;
use ringmx::protocol::command::{self, Command};
use ringmx::protocol::replay::replay;
use ringmx::protocol::scanner::LineScanner;

/// A mail body of `n` bytes: 76-byte lines, some starting with a dot.
fn body(n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n + 80);
    let mut i = 0usize;
    while b.len() < n {
        let line_start = b.len();
        if i % 16 == 0 {
            b.push(b'.');
        }
        while b.len() - line_start < 74 {
            b.push(b'a' + (b.len() % 26) as u8);
        }
        b.extend_from_slice(b"\r\n");
        i += 1;
    }
    b.truncate(n - 2);
    b.extend_from_slice(b"\r\n");
    b
}

/// Dot-stuffs a body for the wire.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 16);
    let mut at_start = true;
    for &c in body {
        if at_start && c == b'.' {
            out.push(b'.');
        }
        out.push(c);
        at_start = c == b'\n';
    }
    out
}

/// Drives a session over `input` in `read`-sized reads, committing every
/// message at once. Returns (messages, body bytes).
fn drive(cfg: &Rc<SmtpConfig>, input: &[u8], read: usize, out: &mut Vec<u8>) -> (u64, u64) {
    let r = replay(cfg, input, read, out);
    (r.messages, r.body_bytes)
}

/// The naive decoder: byte by byte, copying, as a textbook loop would.
fn naive_decode(input: &[u8], out: &mut Vec<u8>) -> bool {
    let mut at_start = true;
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if at_start && c == b'.' {
            if input[i..].starts_with(b".\r\n") {
                return true;
            }
            i += 1;
            at_start = false;
            continue;
        }
        out.push(c);
        at_start = c == b'\n' && i > 0 && input[i - 1] == b'\r';
        i += 1;
    }
    false
}

fn scanner(c: &mut Criterion) {
    let buf = body(64 * 1024);
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut g = c.benchmark_group("scanner");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("64KiB/ringmx", |b| {
        b.iter(|| {
            let mut sc = LineScanner::new();
            let mut pos = 0;
            let mut n = 0;
            while let Some(l) = sc.next_line(&buf[pos..]) {
                pos += l.end;
                n += 1;
            }
            assert_eq!(n, lines);
            black_box(n)
        })
    });
    g.bench_function("64KiB/naive", |b| {
        b.iter(|| {
            let n = black_box(&buf).iter().filter(|&&b| b == b'\n').count();
            assert_eq!(n, lines);
            n
        })
    });
    g.finish();
}

fn parser(c: &mut Criterion) {
    const LINES: &[&[u8]] = &[
        b"EHLO client.example.org",
        b"MAIL FROM:<newsletter-bounces+abc123@lists.example.org> SIZE=24576 BODY=8BITMIME",
        b"RCPT TO:<first.last@example.com>",
        b"RCPT TO:<Second.User@EXAMPLE.COM>",
        b"DATA",
        b"BDAT 65536 LAST",
        b"RSET",
        b"QUIT",
    ];
    let mut g = c.benchmark_group("parser");
    g.throughput(Throughput::Elements(LINES.len() as u64));
    g.bench_function("envelope_commands/ringmx", |b| {
        b.iter(|| {
            let mut rcpts = 0;
            for l in LINES {
                if let Ok(Command::Rcpt { .. }) = command::parse(black_box(l)) {
                    rcpts += 1;
                }
            }
            assert_eq!(rcpts, 2);
        })
    });
    // The textbook way: an owned, upper-cased copy split into owned words.
    g.bench_function("envelope_commands/naive", |b| {
        b.iter(|| {
            let mut rcpts = 0;
            for l in LINES {
                let text = String::from_utf8_lossy(black_box(l)).to_ascii_uppercase();
                let words: Vec<String> = text.split(' ').map(str::to_owned).collect();
                if words[0] == "RCPT" && words.get(1).is_some_and(|w| w.starts_with("TO:<")) {
                    rcpts += 1;
                }
            }
            assert_eq!(rcpts, 2);
        })
    });
    g.finish();
}

fn session(c: &mut Criterion) {
    let cfg = Rc::new(SmtpConfig {
        accepted_domains: vec!["example.com".into()],
        ..Default::default()
    });
    const TX: usize = 1000;
    let wire_body = stuff(&body(1024));
    let mut input = b"EHLO client.example\r\n".to_vec();
    for _ in 0..TX {
        input.extend_from_slice(b"MAIL FROM:<sender@client.example> SIZE=1024\r\nRCPT TO:<user@example.com>\r\nDATA\r\n");
        input.extend_from_slice(&wire_body);
        input.extend_from_slice(b".\r\n");
    }
    input.extend_from_slice(b"QUIT\r\n");
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(TX as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    g.bench_function("pipelined_1KiB_tx", |b| {
        b.iter(|| {
            let (msgs, bytes) = drive(&cfg, black_box(&input), 16 * 1024, &mut out);
            assert_eq!((msgs, bytes), (TX as u64, TX as u64 * 1024));
        })
    });
    g.finish();
}

fn decoder(c: &mut Criterion) {
    let cfg = Rc::new(SmtpConfig {
        accepted_domains: vec!["example.com".into()],
        ..Default::default()
    });
    let plain = body(64 * 1024);
    let wire = stuff(&plain);
    let mut input = b"EHLO c\r\nMAIL FROM:<s@c>\r\nRCPT TO:<u@example.com>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&wire);
    input.extend_from_slice(b".\r\n");
    let mut g = c.benchmark_group("decoder");
    g.throughput(Throughput::Bytes(plain.len() as u64));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("64KiB_body/ringmx", |b| {
        b.iter(|| {
            // One read holds the whole body: the decoder, not the reads, is timed.
            let (msgs, bytes) = drive(&cfg, black_box(&input), input.len(), &mut out);
            assert_eq!((msgs, bytes), (1, plain.len() as u64));
        })
    });
    let mut dec = Vec::with_capacity(wire.len());
    let mut naive_in = wire.clone();
    naive_in.extend_from_slice(b".\r\n");
    g.bench_function("64KiB_body/naive", |b| {
        b.iter(|| {
            dec.clear();
            assert!(naive_decode(black_box(&naive_in), &mut dec));
            assert_eq!(dec.len(), plain.len());
        })
    });
    g.finish();
}

criterion_group!(benches, scanner, parser, session, decoder);
criterion_main!(benches);
