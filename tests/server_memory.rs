//! Memory per connection has a hard bound whatever the client does (README
//! "Memory per connection"): measured on the real binary from its VmRSS.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};

use common::{Client, Server};
use ringmx::config::Config;
use ringmx::server::conn_memory_bound;

/// Connections that do one large transaction, then stay idle.
const IDLE: usize = 500;
/// Connections that pipeline EHLO floods and never read a reply.
const FLOOD: usize = 500;
/// Recipients in each large transaction: the default smtp.max_recipients.
const RCPTS: usize = 1000;
/// EHLO commands each flooder sends (~64 KiB: four read buffers).
const EHLOS: usize = 3200;

/// The process's resident set, bytes.
fn vm_rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A long recipient: 200 characters of local part.
fn rcpt(i: usize) -> String {
    format!("{}{i:04}@localhost", "r".repeat(196))
}

/// EHLO, MAIL and [`RCPTS`] recipients made by `rcpt`, then DATA, all
/// pipelined; returns once the `354` is read.
fn envelope_to_354(addr: SocketAddr, helo: &str, rcpt: fn(usize) -> String) -> Client {
    let mut c = Client::connect(addr);
    c.expect("220 ");
    let mut cmds = format!("EHLO {helo}.example\r\nMAIL FROM:<{helo}@example.org>\r\n");
    for i in 0..RCPTS {
        cmds.push_str(&format!("RCPT TO:<{}>\r\n", rcpt(i)));
    }
    cmds.push_str("DATA\r\n");
    c.send(&cmds);
    c.expect("250 ");
    c.expect("250 2.1.0");
    for _ in 0..RCPTS {
        c.expect("250 2.1.5");
    }
    c.expect("354 ");
    c
}

/// A transaction to [`RCPTS`] long recipients, pipelined; the connection
/// stays open, idle, afterwards.
fn large_transaction(addr: SocketAddr, n: usize) -> Client {
    let mut c = envelope_to_354(addr, "big", rcpt);
    c.send(format!("Subject: {n}\r\n\r\nbody\r\n.\r\n"));
    c.expect("250 2.0.0 Ok: queued as");
    c
}

/// `n` clients made by `open(addr, k)` (k = 1..), four threads at a time.
fn open_in_four(addr: SocketAddr, n: usize, open: fn(SocketAddr, usize) -> Client) -> Vec<Client> {
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                sc.spawn(move || {
                    (0..n / 4)
                        .map(|i| open(addr, w * n + i + 1))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// A client that sends [`EHLOS`] EHLOs and never reads. Its receive
/// buffer is small (16 KiB, no autotuning) and its segments too (TCP_MAXSEG
/// 536, which keeps the server's kernel send buffer, sized from the segment
/// size, to a few tens of KB): the kernel takes the replies to the server's
/// first 4 KiB read (~30 KB) but not those to a full read buffer (~300 KB),
/// so what the server holds of them is in its RSS. (With less room the
/// first replies wait on TCP's zero-window probes and the test takes
/// minutes; with autotuned buffers the kernel takes every reply.)
/// Returns the stream and the bytes sent.
fn flood(addr: SocketAddr) -> (TcpStream, usize) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.set_mss(536).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_nonblocking(true).unwrap();
    let all = "EHLO flood.example\r\n".repeat(EHLOS).into_bytes();
    let mut sent = 0;
    while sent < all.len() {
        match s.write(&all[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flood: {e}"),
        }
    }
    (s, sent)
}

/// Bytes the server has not read yet on each of its connections, by the
/// client's port (from /proc/net/tcp: the server's sockets are in this
/// network namespace, local port = the server's).
fn server_unread(server_port: u16) -> std::collections::HashMap<u16, usize> {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if port(f.get(1)?)? != server_port {
                return None;
            }
            let rx = usize::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            Some((port(f[2])?, rx))
        })
        .collect()
}

/// What the server reads of a flood before it must stop: its first read
/// (4 KiB), then most of a full read buffer (16 KiB less the partial line
/// it keeps); the replies to the first fit in the kernel, those to the
/// second (~90 KB and more) do not.
const SERVER_READS: usize = 17 * 1024;

/// A NOOP round trip on its own connection: the shard's one thread has run
/// the connection tasks that were ready before it.
fn round_trip(c: &mut Client) {
    c.send("NOOP\r\n");
    c.expect("250 ");
}

#[test]
fn memory_per_connection_stays_within_the_documented_bound() {
    common::raise_nofile(4 * (IDLE + FLOOD) as u64 + 256);
    let s = Server::start(&["--max-connections", "2000"]);
    let bound = conn_memory_bound(&Config::default());
    // Warm up: one of each kind, closed again, so the shard's one-time
    // allocations (spool buffers, allocator pages) are in the baseline.
    drop(large_transaction(s.addr, 0));
    drop(flood(s.addr));
    let mut control = s.client();
    round_trip(&mut control);
    let before = vm_rss(s.pid());

    // Four at a time: each large transaction holds its envelope only while
    // it lasts, and the test is about what stays held afterwards.
    let idle: Vec<Client> = open_in_four(s.addr, IDLE, large_transaction);
    let floods: Vec<(TcpStream, usize)> = (0..FLOOD).map(|_| flood(s.addr)).collect();
    // Wait (bounded: fails as hung) until the server has read that much of
    // every flood, so what it holds for them is at its most. ~10 s on a
    // loaded 2-core machine; the bound is far past that.
    let until = std::time::Instant::now() + 3 * common::STEP;
    for (i, (f, sent)) in floods.iter().enumerate() {
        assert!(*sent > SERVER_READS, "flood {i} sent only {sent}");
        let me = f.local_addr().unwrap().port();
        loop {
            let rx = server_unread(s.addr.port()).get(&me).copied();
            if rx.is_some_and(|rx| sent - rx >= SERVER_READS) {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "hung: the server read {:?} of flood {i}",
                rx.map(|rx| sent - rx)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // Let every connection task run on what it was sent, then measure the
    // highest of a few readings.
    let mut after = 0;
    for _ in 0..5 {
        round_trip(&mut control);
        after = after.max(vm_rss(s.pid()));
    }
    let growth = after.saturating_sub(before);
    // Idle connections are within the active bound too (their buffers are
    // released only after a second of silence).
    let allowed = bound.active * (IDLE + FLOOD) as u64;
    eprintln!(
        "RSS before {before} after {after}: growth {growth} = {} per connection; \
         bound {} per connection, {allowed} in all",
        growth / (IDLE + FLOOD) as u64,
        bound.active
    );
    assert!(
        growth <= allowed,
        "RSS grew {growth} bytes for {} connections; the bound allows {allowed}",
        IDLE + FLOOD
    );
    drop(floods);
    drop(idle);
    let mut s = s;
    assert!(s.stop().success());
    assert_eq!(s.stored().len(), IDLE + 1);
}

/// Connections held mid-body by [`memory_mid_body_counts_the_envelope_once`].
const MID_BODY: usize = 300;

/// A long recipient: 318 bytes (a 308-byte local part; the server bounds
/// the command line, 512 bytes, not the local part).
fn longest_rcpt(i: usize) -> String {
    format!("{}{i:04}@localhost", "m".repeat(304))
}

/// A transaction to [`RCPTS`] of the longest recipients, pipelined, up to
/// the `354` and part of the body: the body never ends.
fn mid_body(addr: SocketAddr, n: usize) -> Client {
    let mut c = envelope_to_354(addr, "mid", longest_rcpt);
    let part = format!("{}\r\n", "b".repeat(76)).repeat(13);
    c.send(format!("Subject: {n}\r\n\r\n{part}"));
    c
}

#[test]
fn memory_mid_body_counts_the_envelope_once() {
    common::raise_nofile(2 * MID_BODY as u64 + 256);
    let s = Server::start(&["--max-connections", "2000"]);
    let bound = conn_memory_bound(&Config::default());
    // Warm up as the other test does: one message of this kind, done.
    let mut warm = mid_body(s.addr, 0);
    warm.send(".\r\n");
    warm.expect("250 2.0.0 Ok: queued as");
    drop(warm);
    let mut control = s.client();
    round_trip(&mut control);
    let before = vm_rss(s.pid());

    let held: Vec<Client> = open_in_four(s.addr, MID_BODY, mid_body);
    // Each got its 354 after its record was opened and its envelope shed;
    // the round trips let the shard handle the partial bodies.
    let mut after = 0;
    for _ in 0..5 {
        round_trip(&mut control);
        after = after.max(vm_rss(s.pid()));
    }
    let growth = after.saturating_sub(before);
    let per_conn = growth / MID_BODY as u64;
    // The envelope as the client sent it: what the record holds.
    let envelope = (RCPTS * longest_rcpt(0).len()) as u64;
    eprintln!(
        "RSS before {before} after {after}: growth {growth} = {per_conn} per connection \
         mid-body; envelope {envelope} bytes; bound {} per connection",
        bound.transaction
    );
    assert!(
        per_conn <= bound.transaction,
        "{per_conn} bytes per connection mid-body; the bound is {}",
        bound.transaction
    );
    // Held once: the record's copy, the buffered body, the connection's
    // buffers and allocator slack come to about 1.5 envelopes (measured:
    // 479 KB); with the arena's copy too it was 2.8 (899 KB).
    assert!(
        per_conn < 2 * envelope,
        "{per_conn} bytes per connection mid-body for a {envelope}-byte envelope: \
         it is held twice"
    );

    // The messages still commit whole, and the log line names the first
    // recipients and counts them all.
    for mut c in held {
        c.send(".\r\n");
        c.expect("250 2.0.0 Ok: queued as");
    }
    let line = s
        .wait_log_nth("msg id=", MID_BODY + 1, common::STEP)
        .unwrap_or_else(|| panic!("no message lines:\n{}", s.logs()));
    let named: Vec<String> = (0..5).map(|i| format!("<{}>", longest_rcpt(i))).collect();
    let want = format!("rcpts={RCPTS} to={},(+{} more)", named.join(","), RCPTS - 5);
    assert!(line.contains(&want), "{line}");
    let mut s = s;
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), MID_BODY + 1);
    let all: Vec<String> = (0..RCPTS).map(longest_rcpt).collect();
    for m in &stored {
        assert_eq!(m.rcpts, all, "message {}", m.id);
    }
}

/// Connections held idle by [`idle_connections_stay_within_8_kib`].
const IDLE_SMALL: usize = 1000;
/// Opened at a time; each wave's release lines (one per connection) stay
/// under the log's per-call-site burst (100 a second), so all are logged.
const WAVE: usize = 50;
/// The log line a connection writes when it gives its buffers back.
const RELEASED: &str = "idle connection released";
/// Allowance over the 8 KiB per idle connection. The kernel's side of a
/// socket is not in the process's RSS; what is, besides the connections'
/// state, is the allocator's granularity: RSS grows by whole pages of
/// mimalloc's size-class pages, so at a given count the growth per
/// connection is off from its true cost by about a kilobyte. Measured
/// (this test, debug build): 3,162 bytes per connection with 500
/// connections, 4,128 with 1,000 (so 5.1 KB each for the second 500),
/// the same in three runs. 2 KiB is twice that spread.
const IDLE_ALLOWANCE: u64 = 2 * 1024;

/// EHLO and one small transaction, then the connection stays open and
/// silent.
fn small_transaction(addr: SocketAddr, n: usize) -> Client {
    let mut c = Client::connect(addr);
    c.expect("220 ");
    c.send(
        "EHLO idle.example\r\nMAIL FROM:<idle@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n",
    );
    c.expect("250 ");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354 ");
    c.send(format!("Subject: {n}\r\n\r\nhello\r\n.\r\n"));
    c.expect("250 2.0.0 Ok: queued as");
    c
}

#[test]
fn idle_connections_stay_within_8_kib() {
    common::raise_nofile(2 * IDLE_SMALL as u64 + 256);
    let s = Server::start(&["--max-connections", "2000", "--log-level", "debug"]);
    let bound = conn_memory_bound(&Config::default());
    assert_eq!(bound.idle, 8 * 1024);
    let released = |n: usize| {
        s.wait_log_nth(RELEASED, n, common::STEP)
            .unwrap_or_else(|| panic!("hung: no idle release #{n}:\n{}", s.logs()));
    };
    // Warm up: one connection through the same steps, then closed, so the
    // shard's one-time allocations are in the baseline.
    let mut warm = small_transaction(s.addr, 0);
    released(1);
    warm.send("QUIT\r\n");
    warm.expect("221 ");
    drop(warm);
    s.wait_log_nth("outcome=quit", 1, common::STEP)
        .unwrap_or_else(|| panic!("hung: the warm-up connection did not end:\n{}", s.logs()));
    let before = vm_rss(s.pid());

    // In waves, each waited for until every connection in it has given its
    // buffers back: the condition for idle, and at most a wave's buffers
    // are ever live at once. (A connection stalled for a second mid-way
    // would release twice and end its wave's wait one release early: a
    // few KB of buffers measured too, not a hang.)
    let mut idle = Vec::with_capacity(IDLE_SMALL);
    for w in 0..IDLE_SMALL / WAVE {
        for i in 0..WAVE {
            idle.push(small_transaction(s.addr, 1 + w * WAVE + i));
        }
        released(1 + (w + 1) * WAVE);
    }
    let after = vm_rss(s.pid());
    let growth = after.saturating_sub(before);
    let per_conn = growth / IDLE_SMALL as u64;
    eprintln!(
        "RSS before {before} after {after}: growth {growth} = {per_conn} per idle connection"
    );
    assert!(
        per_conn <= bound.idle + IDLE_ALLOWANCE,
        "{per_conn} bytes per idle connection; allowed {} + {IDLE_ALLOWANCE}",
        bound.idle
    );
    drop(idle);
    let mut s = s;
    assert!(s.stop().success());
    assert_eq!(s.stored().len(), IDLE_SMALL + 1);
}
