//! The early-talker test (issue 12, postscreen's pregreet): with
//! --greet-wait the server sends `220-` and waits; a client that talks
//! before the final `220 ` gets `521 5.5.1` and is closed, a patient one is
//! served and then remembered (its next connection, on any shard, gets the
//! `220 ` at once). And --reject-unoffered-pipelining.

mod common;

use std::net::IpAddr;

use common::{Client, Server};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A wait far longer than a test client takes to send its first line, so a
/// talker always talks within it.
const LONG_WAIT: &str = "30s";

fn early_talker(first_bytes: &str, from: &str, outcome: &str) {
    let s = Server::start(&["--greet-wait", LONG_WAIT]);
    let mut c = Client::connect_from(s.addr, ip(from));
    assert_eq!(c.line(), "220-localhost ESMTP ringmx");
    c.send(first_bytes);
    c.expect("521 5.5.1 Protocol error: talking before the greeting");
    c.expect_eof();
    let want = format!("outcome={outcome}");
    let l = s
        .wait_log(&want, common::STEP)
        .unwrap_or_else(|| panic!("no {want}:\n{}", s.logs()));
    assert!(l.ends_with(&want), "{l}");
}

#[test]
fn a_client_that_talks_first_gets_521() {
    early_talker("EHLO spam.example\r\n", "127.0.1.1", "pregreet");
}

#[test]
fn an_http_request_before_the_greeting_gets_521() {
    early_talker(
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "127.0.1.2",
        "pregreet-http",
    );
}

#[test]
fn a_bare_lf_before_the_greeting_gets_521() {
    early_talker("EHLO spam.example\n", "127.0.1.3", "pregreet-bare-lf");
}

#[test]
fn a_patient_client_is_served_then_greeted_at_once() {
    let mut s = Server::start_with(
        &["--listen", "127.0.0.1:0", "--cores", "2"],
        &["--greet-wait", "1s"],
    );
    let mut c = Client::connect_from(s.addr, ip("127.0.1.4"));
    assert_eq!(
        c.reply(),
        ["220-localhost ESMTP ringmx", "220 localhost ESMTP ringmx"]
    );
    c.ehlo();
    c.transaction("a@example.org", "b@localhost", "Subject: p\r\n\r\nhi\r\n");
    c.send("QUIT\r\n");
    c.expect("221 ");
    // Remembered over both shards: every later connection is greeted at
    // once, whichever shard the kernel gives it to.
    for _ in 0..4 {
        let mut again = Client::connect_from(s.addr, ip("127.0.1.4"));
        assert_eq!(again.reply(), ["220 localhost ESMTP ringmx"]);
        again.send("QUIT\r\n");
        again.expect("221 ");
    }
    // Another address still waits.
    let mut other = Client::connect_from(s.addr, ip("127.0.1.5"));
    assert_eq!(other.line(), "220-localhost ESMTP ringmx");
    drop(other);
    s.stop();
    let logs = s.logs();
    assert!(logs.contains("greet_passed=1 greet_cached=4"), "{logs}");
    assert_eq!(s.stored().len(), 1);
}

#[test]
fn a_trusted_client_skips_the_wait() {
    let s = Server::start(&[
        "--greet-wait",
        LONG_WAIT,
        "--trusted-network",
        "127.0.1.6/32",
    ]);
    let mut c = Client::connect_from(s.addr, ip("127.0.1.6"));
    assert_eq!(c.reply(), ["220 localhost ESMTP ringmx"]);
}

#[test]
fn pipelining_before_it_was_offered_is_refused_when_asked() {
    let s = Server::start(&["--reject-unoffered-pipelining", "true"]);
    // After EHLO's reply (which offers PIPELINING) a batch is fine.
    let mut ok = s.client();
    ok.ehlo();
    ok.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\n");
    ok.expect("250 2.1.0");
    ok.expect("250 2.1.5");
    // EHLO with MAIL behind it in one write: it did not wait for the offer.
    let mut bad = s.client();
    bad.send("EHLO spam.example\r\nMAIL FROM:<a@example.org>\r\n");
    bad.expect("554 5.5.0 Improper pipelining: PIPELINING was not offered");
    bad.expect_eof();
    // After HELO nothing was offered.
    let mut helo = s.client();
    helo.send("HELO old.example\r\n");
    helo.expect("250 ");
    helo.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\n");
    helo.expect("554 5.5.0");
    helo.expect_eof();
    assert!(
        s.wait_log("outcome=unoffered-pipelining", common::STEP)
            .is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn pipelining_before_the_offer_is_served_by_default() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.send("EHLO x.example\r\nMAIL FROM:<a@example.org>\r\n");
    c.expect("250 ");
    c.expect("250 2.1.0");
}

#[test]
fn a_bare_lf_command_line_is_refused_when_asked() {
    let s = Server::start(&["--reject-bare-lf-commands", "true"]);
    let mut c = s.client();
    c.send("EHLO old.example\n");
    c.expect("554 5.5.1 Protocol error: command line ended by a bare <LF>");
    c.expect_eof();
    // CRLF clients are served as ever.
    let mut ok = s.client();
    ok.ehlo();
    assert!(
        s.wait_log("outcome=bare-lf-command", common::STEP)
            .is_some(),
        "{}",
        s.logs()
    );
}
