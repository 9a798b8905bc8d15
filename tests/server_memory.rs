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

/// EHLO, then a transaction to [`RCPTS`] long recipients, pipelined; the
/// connection stays open, idle, afterwards.
fn large_transaction(addr: SocketAddr, n: usize) -> Client {
    let mut c = Client::connect(addr);
    c.expect("220 ");
    let mut cmds = String::from("EHLO big.example\r\nMAIL FROM:<big@example.org>\r\n");
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
    c.send(format!("Subject: {n}\r\n\r\nbody\r\n.\r\n"));
    c.expect("250 2.0.0 Ok: queued as");
    c
}

/// A client with a small receive buffer (so the kernel holds few of the
/// replies) that sends [`EHLOS`] EHLOs, as many as the socket takes without
/// blocking, and never reads.
fn flood(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_nonblocking(true).unwrap();
    let mut all = "EHLO flood.example\r\n".repeat(EHLOS).into_bytes();
    while !all.is_empty() {
        match s.write(&all) {
            Ok(n) => {
                all.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flood: {e}"),
        }
    }
    s
}

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
    let idle: Vec<Client> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let addr = s.addr;
                sc.spawn(move || {
                    (0..IDLE / 4)
                        .map(|i| large_transaction(addr, w * IDLE + i + 1))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let floods: Vec<TcpStream> = (0..FLOOD).map(|_| flood(s.addr)).collect();
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
