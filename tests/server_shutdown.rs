//! Graceful shutdown: SIGTERM/SIGINT stop accepting, idle sessions get
//! `421 4.3.2`, transactions in flight finish within the grace period, the
//! process exits 0; a second signal exits at once.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, STEP};

/// Opens a transaction and sends half a body.
fn mid_data(s: &Server) -> common::Client {
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<inflight@example.org>\r\n");
    c.expect("250 ");
    c.send("RCPT TO:<u@localhost>\r\n");
    c.expect("250 ");
    c.send("DATA\r\n");
    c.expect("354 ");
    c.send("Subject: in flight\r\n\r\nfirst half\r\n");
    c
}

fn refused(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn shutdown_drains_transactions_in_flight() {
    let mut s = Server::start(&["--shutdown-grace", "20s"]);
    let mut idle = s.client();
    idle.ehlo();
    let mut busy = mid_data(&s);
    // Make sure both sessions are past their last read before the signal.
    std::thread::sleep(Duration::from_millis(100));

    s.signal(libc::SIGTERM);
    // The idle session is told at once.
    idle.expect("421 4.3.2");
    idle.expect_eof();
    // No new connections.
    wait_refused(&s);
    // The transaction in flight finishes and is acknowledged, then the
    // session is closed with 421 rather than left open.
    busy.send("second half\r\n.\r\n");
    busy.expect("250 2.0.0 Ok: queued as");
    busy.expect("421 4.3.2");
    busy.expect_eof();

    let status = s.wait_exit(STEP).expect("exit after draining");
    assert_eq!(status.code(), Some(0), "{}", s.logs());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].body,
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
    );
    assert!(s.logs().contains("outcome=shutdown"), "{}", s.logs());
}

#[test]
fn sigint_with_nothing_open_exits_zero_at_once() {
    // The default 30 s grace is longer than STEP: exiting within STEP
    // means nothing waited for it.
    let mut s = Server::start_with(&["--listen", "127.0.0.1:0", "--cores", "2"], &[]);
    s.signal(libc::SIGINT);
    let status = s.wait_exit(STEP).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", s.logs());
    assert!(s.logs().contains("cut_off=0"), "{}", s.logs());
    assert!(s.logs().contains("SIGINT: shutting down"), "{}", s.logs());
}

#[test]
fn grace_period_cuts_off_a_stalled_transaction() {
    let mut s = Server::start(&["--shutdown-grace", "1s"]);
    let mut stalled = mid_data(&s);
    s.signal(libc::SIGTERM);
    // Mid-DATA and silent: after the grace period it is cut off with 421.
    stalled.expect("421 4.3.2");
    stalled.expect_eof();
    let status = s.wait_exit(STEP).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", s.logs());
    // Cut off by the grace period's end, not at the signal.
    assert!(
        s.logs()
            .contains("grace period (1s) over; cutting off 1 connections"),
        "{}",
        s.logs()
    );
    assert!(s.logs().contains("cut_off=1"), "{}", s.logs());
    assert_eq!(
        s.stored().len(),
        0,
        "a message cut off mid-DATA must not be stored"
    );
    assert!(s.logs().contains("outcome=cut-off"), "{}", s.logs());
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut s = Server::start(&["--shutdown-grace", "120s"]);
    let _stalled = mid_data(&s);
    s.signal(libc::SIGTERM);
    s.wait_log("SIGTERM: shutting down", STEP)
        .expect("first signal logged");
    // Still draining: the stalled transaction has two minutes.
    assert!(s.wait_exit(Duration::from_millis(300)).is_none());
    // The grace is 120 s, far past STEP: exiting within STEP is "at once".
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(STEP).expect("exit on the second signal");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", s.logs());
}

/// Waits until the listener is closed: the shard has seen the shutdown.
fn wait_refused(s: &Server) {
    let until = Instant::now() + STEP;
    while !refused(s.addr) {
        assert!(Instant::now() < until, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_mid_envelope_lets_the_transaction_finish() {
    let mut s = Server::start(&["--shutdown-grace", "20s"]);
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<envelope@example.org>\r\nRCPT TO:<u@localhost>\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    s.signal(libc::SIGTERM);
    wait_refused(&s);
    // After MAIL and RCPT the session is in a transaction, not idle: DATA
    // is still taken, the message acknowledged, then the session closed.
    c.send("DATA\r\n");
    c.expect("354 ");
    c.send("Subject: envelope\r\n\r\nsent after SIGTERM\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued as");
    c.expect("421 4.3.2");
    c.expect_eof();
    let status = s.wait_exit(STEP).expect("exit after draining");
    assert_eq!(status.code(), Some(0), "{}", s.logs());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].mail_from, "envelope@example.org");
    assert_eq!(
        stored[0].body,
        b"Subject: envelope\r\n\r\nsent after SIGTERM\r\n"
    );
    assert!(s.logs().contains("cut_off=0"), "{}", s.logs());
}

#[test]
fn sigterm_with_bdat_in_flight_lets_the_chunks_finish() {
    let mut s = Server::start(&["--shutdown-grace", "20s"]);
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<bdat@example.org>\r\nRCPT TO:<u@localhost>\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    // One whole chunk, then half of the next.
    c.send("BDAT 20\r\nSubject: chunked\r\n\r\n");
    c.expect("250 ");
    c.send("BDAT 25 LAST\r\nfirst half\r\n");
    s.signal(libc::SIGTERM);
    wait_refused(&s);
    c.send("second half\r\n");
    c.expect("250 2.0.0 Ok: queued as");
    c.expect("421 4.3.2");
    c.expect_eof();
    let status = s.wait_exit(STEP).expect("exit after draining");
    assert_eq!(status.code(), Some(0), "{}", s.logs());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].body,
        b"Subject: chunked\r\n\r\nfirst half\r\nsecond half\r\n"
    );
}
