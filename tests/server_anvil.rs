//! Per-client limits (issue 12, anvil): connections, new connections,
//! messages and recipients per client IP, counted over all shards; trusted
//! networks exempt. Each client is its own address in 127.0.0.0/8 (Linux
//! routes all of it to lo), so no proxy is needed to look like many.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Client, Server};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two shards: the kernel spreads one client's connections over both, and
/// the limit must hold wherever each lands.
fn two_shards(extra: &[&str]) -> Server {
    Server::start_with(&["--listen", "127.0.0.1:0", "--cores", "2"], extra)
}

/// A connection from `from` that got its `220` and said EHLO.
fn greeted(s: &Server, from: &str) -> Client {
    let mut c = Client::connect_from(s.addr, ip(from));
    c.expect("220 ");
    c.ehlo();
    c
}

#[test]
fn connections_per_ip_are_limited_over_all_shards() {
    const LIMIT: usize = 4;
    let s = two_shards(&["--max-connections-per-ip", &LIMIT.to_string()]);
    let mut held: Vec<Client> = (0..LIMIT).map(|_| greeted(&s, "127.0.0.2")).collect();
    // One more from the same address gets 421 4.7.0 whichever shard took
    // it; try a few times, so both shards are very likely asked.
    for _ in 0..4 {
        let mut over = Client::connect_from(s.addr, ip("127.0.0.2"));
        over.expect("421 4.7.0 Too many connections from your address");
        over.expect_eof();
    }
    // Another client is not affected.
    let mut other = greeted(&s, "127.0.0.3");
    other.transaction("a@example.org", "b@localhost", "Subject: x\r\n\r\nhi\r\n");
    // A closed connection frees its place (once the server has seen it go).
    let mut first = held.remove(0);
    first.send("QUIT\r\n");
    first.expect("221 ");
    first.expect_eof();
    let until = Instant::now() + common::STEP;
    loop {
        let mut c = Client::connect_from(s.addr, ip("127.0.0.2"));
        let r = c.reply();
        if r[0].starts_with("220 ") {
            break;
        }
        assert!(r[0].starts_with("421 4.7.0"), "{r:?}");
        assert!(Instant::now() < until, "the place was never given back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.wait_log("outcome=too-many-connections-per-ip", common::STEP)
            .is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn new_connections_per_ip_per_minute_are_limited() {
    let s = two_shards(&[
        "--max-connections-per-ip",
        "0",
        "--max-connection-rate-per-ip",
        "3",
    ]);
    for _ in 0..3 {
        let mut c = greeted(&s, "127.0.0.4");
        c.send("QUIT\r\n");
        c.expect("221 ");
    }
    let mut over = Client::connect_from(s.addr, ip("127.0.0.4"));
    over.expect("421 4.7.0 Too many new connections from your address");
    over.expect_eof();
    greeted(&s, "127.0.0.5");
    assert!(
        s.wait_log("outcome=connection-rate-per-ip", common::STEP)
            .is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn messages_per_ip_per_minute_are_limited_across_connections() {
    let mut s = two_shards(&["--max-message-rate-per-ip", "2"]);
    let body = "Subject: rate\r\n\r\nhi\r\n";
    let mut a = greeted(&s, "127.0.0.6");
    a.transaction("a@example.org", "b@localhost", body);
    a.transaction("a@example.org", "b@localhost", body);
    a.send("MAIL FROM:<a@example.org>\r\n");
    a.expect("452 4.7.1 Too many messages from your address");
    // The count is the client's, not the connection's.
    let mut b = greeted(&s, "127.0.0.6");
    b.send("MAIL FROM:<a@example.org>\r\n");
    b.expect("452 4.7.1");
    // A refused MAIL is temporary: the session goes on.
    b.send("NOOP\r\n");
    b.expect("250 ");
    let mut c = greeted(&s, "127.0.0.7");
    c.transaction("c@example.org", "b@localhost", body);
    for mut x in [a, b, c] {
        x.send("QUIT\r\n");
        x.expect("221 ");
    }
    s.stop();
    let stored = s.stored();
    let from = |who: &str| stored.iter().filter(|m| m.mail_from == who).count();
    assert_eq!((from("a@example.org"), from("c@example.org")), (2, 1));
    assert!(s.logs().contains("over_msg_rate=2"), "{}", s.logs());
}

#[test]
fn recipients_per_ip_per_minute_are_limited() {
    let mut s = Server::start(&["--max-recipient-rate-per-ip", "3"]);
    let mut c = greeted(&s, "127.0.0.8");
    c.send("MAIL FROM:<a@example.org>\r\n");
    c.expect("250 ");
    for i in 0..3 {
        c.send(format!("RCPT TO:<r{i}@localhost>\r\n"));
        c.expect("250 ");
    }
    c.send("RCPT TO:<r3@localhost>\r\n");
    c.expect("452 4.7.1 Too many recipients from your address");
    // The message still goes to the three accepted.
    c.send("DATA\r\n");
    c.expect("354 ");
    c.send("Subject: r\r\n\r\nhi\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued as ");
    c.send("QUIT\r\n");
    c.expect("221 ");
    s.stop();
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].rcpts,
        ["r0@localhost", "r1@localhost", "r2@localhost"]
    );
}

#[test]
fn a_trusted_network_is_exempt_and_loopback_is_not_by_default() {
    let s = two_shards(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-network",
        "127.0.0.9/32",
    ]);
    let _t1 = greeted(&s, "127.0.0.9");
    let _t2 = greeted(&s, "127.0.0.9");
    let _u1 = greeted(&s, "127.0.0.10");
    let mut u2 = Client::connect_from(s.addr, ip("127.0.0.10"));
    u2.expect("421 4.7.0");
    u2.expect_eof();
}

#[test]
fn a_bad_trusted_network_is_refused_at_start() {
    let r = Server::try_start(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--trusted-network", "10.0.0.0/33"],
    );
    let Err((status, logs)) = r else {
        panic!("started with a bad --trusted-network")
    };
    assert!(!status.success());
    assert!(logs.contains("trusted-network"), "{logs}");
}
