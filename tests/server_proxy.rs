//! PROXY protocol listeners (`--proxy-protocol`): a real HAProxy in front
//! with `send-proxy` (v1) and `send-proxy-v2`, raw headers for what HAProxy
//! never sends (malformed, two, none, LOCAL, from an untrusted peer), and
//! loadgen's `--proxy-source`. The client's address is checked where it
//! ends up: the spool record, the `Received:` header and the log.
//!
//! Clients that go through HAProxy connect from 127.0.0.2, so their address
//! differs from the proxy's (127.0.0.1, the only trusted one).

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, Client, Server, TempDir, STEP};

const BODY: &str = "Subject: proxied\r\n\r\nhello\r\n";

/// A ringmx whose listener expects PROXY headers from 127.0.0.1, with a
/// header deadline short enough for the no-header case.
fn proxied(extra: &[&str]) -> Server {
    let mut args = vec![
        "--domain",
        "example.com",
        "--proxy-protocol",
        "true",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--proxy-header-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A TCP connection to `to` from the local address `from` (any loopback
/// address works on Linux without configuration).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect_timeout(&to.into(), STEP).expect("connect");
    s.into()
}

/// Everything the server sends until it closes; panics if it does not
/// close within [`STEP`].
fn read_to_close(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Unread input at our close: the kernel resets. Still closed.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("server did not close the connection: {e}; got {got:?}"),
        }
    }
}

/// A v2 header: `cmd` 0 LOCAL / 1 PROXY, IPv4 STREAM from `src` to
/// 127.0.0.1:25.
fn v2(cmd: u8, src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | cmd, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in TCP mode: one frontend with `send-proxy`, one with
/// `send-proxy-v2` (plus a CRC32C TLV, which ringmx must skip), both to
/// `backend`. Killed on drop.
struct Haproxy {
    child: Child,
    v1: SocketAddr,
    v2: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    fn start(bin: &Path, backend: SocketAddr) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let v1: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let v2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = format!(
            "global\n  maxconn 64\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend v1\n  bind {v1}\n  default_backend ringmx_v1\n\
             frontend v2\n  bind {v2}\n  default_backend ringmx_v2\n\
             backend ringmx_v1\n  server r {backend} send-proxy\n\
             backend ringmx_v2\n  server r {backend} send-proxy-v2 proxy-v2-options crc32c\n"
        );
        let path: PathBuf = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        // Ready once both frontends accept.
        let until = Instant::now() + STEP;
        for a in [v1, v2] {
            while TcpStream::connect(a).is_err() {
                if let Some(st) = child.try_wait().unwrap() {
                    panic!(
                        "haproxy exited ({st}); check with: haproxy -c -f {}",
                        path.display()
                    );
                }
                assert!(Instant::now() < until, "haproxy did not listen on {a}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Haproxy {
            child,
            v1,
            v2,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn haproxy_send_proxy_v1_and_v2_give_the_real_client_address() {
    let Some(bin) = require_tool("haproxy", "haproxy") else {
        return;
    };
    let mut s = proxied(&[]);
    let hp = Haproxy::start(&bin, s.addr);
    for (front, tag) in [(hp.v1, "v1"), (hp.v2, "v2")] {
        let mut c = Client::from_stream(connect_from("127.0.0.2", front));
        c.expect("220 ");
        c.ehlo();
        c.transaction(&format!("{tag}@client.example"), "rcpt@example.com", BODY);
        c.send("QUIT\r\n");
        c.expect("221 ");
    }
    drop(hp);
    s.stop();
    let stored = s.stored();
    let froms: BTreeSet<&str> = stored.iter().map(|m| m.mail_from.as_str()).collect();
    assert_eq!(
        froms,
        BTreeSet::from(["v1@client.example", "v2@client.example"])
    );
    for m in &stored {
        assert!(
            m.client.starts_with("127.0.0.2:"),
            "spool client {}",
            m.client
        );
        assert!(
            m.text()
                .starts_with("Received: from client.example ([127.0.0.2])"),
            "{}",
            m.text()
        );
    }
    let logs = s.logs();
    let proxied = logs
        .lines()
        .filter(|l| l.contains("conn peer=127.0.0.2:") && l.contains(" via=127.0.0.1:"))
        .count();
    assert_eq!(proxied, 2, "{logs}");
}

#[test]
fn bad_headers_untrusted_peers_and_silence_are_closed_without_a_greeting() {
    let s = proxied(&[]);
    let good = b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 25\r\n".to_vec();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "v1 without a port",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 4000\r\nEHLO x\r\n".to_vec(),
            "proxy-malformed",
        ),
        (
            "SMTP instead of a header",
            b"EHLO client.example\r\n".to_vec(),
            "proxy-malformed",
        ),
        (
            "v2 with version 1",
            {
                let mut h = v2(1, [192, 0, 2, 1], 4000);
                h[12] = 0x11;
                h
            },
            "proxy-malformed",
        ),
        (
            "two headers",
            [good.as_slice(), &v2(1, [192, 0, 2, 2], 4000), b"EHLO x\r\n"].concat(),
            "proxy-second-header",
        ),
        ("no header within the timeout", Vec::new(), "proxy-timeout"),
    ];
    let mut seen = std::collections::HashMap::new();
    for (what, bytes, outcome) in cases {
        let mut c = TcpStream::connect(s.addr).unwrap();
        std::io::Write::write_all(&mut c, &bytes).unwrap();
        let got = read_to_close(c);
        assert!(
            got.is_empty(),
            "{what}: got {:?}",
            String::from_utf8_lossy(&got)
        );
        let n = seen.entry(outcome).or_insert(0);
        *n += 1;
        assert!(
            s.wait_log_nth(&format!("outcome={outcome}"), *n, STEP)
                .is_some(),
            "{what}: no {outcome} line:\n{}",
            s.logs()
        );
    }
    // A valid header, but from a peer not in --trusted-proxy.
    let mut c = connect_from("127.0.0.3", s.addr);
    std::io::Write::write_all(&mut c, &good).unwrap();
    assert!(read_to_close(c).is_empty());
    let line = s.wait_log("outcome=proxy-untrusted", STEP);
    assert!(
        line.is_some_and(|l| l.contains("peer=127.0.0.3:")),
        "{}",
        s.logs()
    );
    assert!(s.logs().contains("127.0.0.3 is not a trusted proxy"));
}

#[test]
fn local_keeps_the_socket_address_and_mapped_ipv6_is_ipv4() {
    let mut s = proxied(&[]);
    // LOCAL (a health check): the addresses in it are ignored.
    let mut c = Client::connect(s.addr);
    c.send(v2(0, [192, 0, 2, 1], 4000));
    c.expect("220 ");
    c.ehlo();
    c.transaction("local@client.example", "rcpt@example.com", BODY);
    c.send("QUIT\r\n");
    c.expect("221 ");
    let mut c = Client::connect(s.addr);
    c.send("PROXY TCP6 ::ffff:192.0.2.9 ::ffff:127.0.0.1 4000 25\r\n");
    c.expect("220 ");
    c.ehlo();
    c.transaction("mapped@client.example", "rcpt@example.com", BODY);
    c.send("QUIT\r\n");
    c.expect("221 ");
    s.stop();
    let stored = s.stored();
    assert_eq!(stored.len(), 2);
    let by_from = |f: &str| stored.iter().find(|m| m.mail_from == f).unwrap();
    assert!(by_from("local@client.example")
        .client
        .starts_with("127.0.0.1:"));
    let mapped = by_from("mapped@client.example");
    assert_eq!(mapped.client, "192.0.2.9:4000");
    assert!(mapped
        .text()
        .starts_with("Received: from client.example ([192.0.2.9])"));
}

#[test]
fn smtp_right_behind_the_header_is_answered_exactly_once() {
    let s = proxied(&[]);
    // Header and commands in one write.
    let mut c = Client::connect(s.addr);
    c.send(
        [
            v2(1, [192, 0, 2, 1], 4000).as_slice(),
            b"EHLO client.example\r\nNOOP\r\nQUIT\r\n",
        ]
        .concat(),
    );
    c.expect("220 ");
    c.expect("250 ");
    c.expect("250 ");
    c.expect("221 ");
    c.expect_eof();
    // A header split across reads, the commands with its tail.
    let mut c = Client::connect(s.addr);
    let h = b"PROXY TCP4 192.0.2.5 127.0.0.1 4000 25\r\n";
    c.send(&h[..10]);
    // Lets the first piece arrive alone (not a timing assertion).
    std::thread::sleep(Duration::from_millis(100));
    c.send([&h[10..], b"NOOP\r\nQUIT\r\n".as_slice()].concat());
    c.expect("220 ");
    c.expect("250 ");
    c.expect("221 ");
    c.expect_eof();
    for peer in ["192.0.2.1:4000", "192.0.2.5:4000"] {
        assert!(
            s.wait_log(&format!("conn peer={peer} via=127.0.0.1:"), STEP)
                .is_some_and(|l| l.contains("outcome=quit")),
            "{}",
            s.logs()
        );
    }
}

#[test]
fn loadgen_proxy_source_looks_like_many_clients() {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_ringmx")).with_file_name("loadgen");
    assert!(
        loadgen.exists(),
        "{} is missing: build it with `cargo build -p loadgen` (the workspace test run does)",
        loadgen.display()
    );
    let mut s = proxied(&[]);
    let out = Command::new(&loadgen)
        .args([
            "run",
            "--target",
            &s.addr.to_string(),
            "--to-domain",
            "example.com",
        ])
        .args([
            "-c",
            "4",
            "--messages",
            "32",
            "--msgs-per-conn",
            "1",
            "--quiet",
        ])
        .args(["--proxy-source", "10.9.0.0/29"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
    let stored = s.stored();
    assert_eq!(stored.len(), 32);
    let net: ipnet::IpNet = "10.9.0.0/29".parse().unwrap();
    let mut ips = BTreeSet::new();
    for m in &stored {
        let a: SocketAddr = m.client.parse().unwrap();
        assert!(net.contains(&a.ip()), "client {a} outside {net}");
        ips.insert(a.ip());
    }
    // 32 connections take the range's 8 addresses in turn.
    assert!(ips.len() >= 4, "{ips:?}");
}

/// `--listen-proxy`: one process takes direct clients on `--listen` and
/// balanced ones on its PROXY listener; only the latter needs the header.
#[test]
fn a_proxy_listener_beside_a_plain_one() {
    let s = Server::start(&[
        "--domain",
        "example.com",
        "--listen-proxy",
        "127.0.0.1:0",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--proxy-header-timeout",
        "1s",
    ]);
    let line = s
        .wait_log("listening for PROXY on ", STEP)
        .unwrap_or_else(|| panic!("no PROXY listener line:\n{}", s.logs()));
    let proxy_addr: SocketAddr = line
        .split("listening for PROXY on ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(proxy_addr, s.addr);
    // Direct: greeted at once, no header.
    let mut c = Client::connect(s.addr);
    c.expect("220 ");
    c.send("QUIT\r\n");
    c.expect("221 ");
    // Balanced: the header's client is the one logged.
    let mut c = Client::connect(proxy_addr);
    c.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 25\r\nQUIT\r\n");
    c.expect("220 ");
    c.expect("221 ");
    assert!(
        s.wait_log("conn peer=192.0.2.9:4000 via=127.0.0.1:", STEP)
            .is_some(),
        "{}",
        s.logs()
    );
    // SMTP without a header on the PROXY listener: closed unanswered.
    let mut c = TcpStream::connect(proxy_addr).unwrap();
    std::io::Write::write_all(&mut c, b"EHLO direct.example\r\n").unwrap();
    assert!(read_to_close(c).is_empty());
    assert!(s.wait_log("outcome=proxy-malformed", STEP).is_some());
}

/// `--listen-proxy` without anyone trusted to send the header: a clear
/// error at start.
#[test]
fn a_proxy_listener_needs_a_trusted_proxy() {
    let (status, logs) = Server::try_start(&["--listen-proxy", "127.0.0.1:0"], &[])
        .err()
        .expect("refused at start");
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("trusted_proxy"), "{logs}");
}
