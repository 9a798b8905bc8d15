//! Connection-level limits: connections per shard, timeouts (RFC 5321
//! §4.5.3.2), connection lifetime, and that a slow client never delays others.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server};

#[test]
fn over_the_connection_limit_gets_421_and_close() {
    let s = Server::start(&["--max-connections", "2"]);
    let mut a = s.client();
    let _b = s.client();
    let mut over = Client::connect(s.addr);
    over.expect("421 4.3.2 Too many connections");
    over.expect_eof();
    // A freed slot is usable again.
    a.send("QUIT\r\n");
    a.expect("221 ");
    a.expect_eof();
    let until = Instant::now() + common::STEP;
    loop {
        let mut c = Client::connect(s.addr);
        let r = c.reply();
        if r[0].starts_with("220 ") {
            break;
        }
        assert!(r[0].starts_with("421 4.3.2"), "{r:?}");
        assert!(Instant::now() < until, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.wait_log("outcome=too-many-connections", common::STEP)
            .is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn a_silent_client_times_out_with_421() {
    let s = Server::start(&["--command-timeout", "1s"]);
    let mut c = s.client();
    c.ehlo();
    // Nothing but the 421, then the close (each read is bounded by STEP).
    c.expect("421 4.4.2");
    c.expect_eof();
    assert!(
        s.wait_log("outcome=timeout", common::STEP).is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn a_silent_client_mid_data_times_out_with_421() {
    let mut s = Server::start(&["--data-timeout", "1s"]);
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n");
    c.expect("250 ");
    c.expect("250 ");
    c.expect("354 ");
    c.send("Subject: partial\r\n\r\nno end");
    c.expect("421 4.4.2");
    c.expect_eof();
    assert!(
        s.wait_log("outcome=timeout", common::STEP).is_some(),
        "{}",
        s.logs()
    );
    assert!(s.stop().success());
    assert_eq!(s.stored().len(), 0, "a timed-out body must not be stored");
}

#[test]
fn connection_lifetime_is_bounded() {
    // Idle timeout 1 s, lifetime 2 s: a command every 200 ms keeps the
    // session busy, so only the lifetime can end it (the log says which).
    let s = Server::start(&["--max-connection-lifetime", "2s", "--command-timeout", "1s"]);
    let mut c = s.client();
    let mut answered = 0;
    loop {
        c.send("NOOP\r\n");
        let l = c.line();
        if l.starts_with("421 4.4.2") {
            break;
        }
        assert!(l.starts_with("250 "), "{l}");
        answered += 1;
        // 100 × 200 ms: far past the 2 s lifetime; guards against a hang.
        assert!(answered < 100, "lifetime not enforced");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.expect_eof();
    assert!(
        s.wait_log("outcome=lifetime", common::STEP).is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn stalled_clients_do_not_delay_others() {
    let s = Server::start(&[]);
    // One client stops mid-line, one mid-DATA, one floods pipelined NOOPs
    // and never reads the replies (its socket buffers fill up and the
    // server's writes to it block).
    let mut mid_line = s.client();
    mid_line.send("MAIL FROM:<stal");
    let mut mid_data = s.client();
    mid_data.ehlo();
    mid_data.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n");
    mid_data.expect("250 ");
    mid_data.expect("250 ");
    mid_data.expect("354 ");
    mid_data.send("Subject: slow\r\n\r\npart");
    let flood = s.client();
    let flood_addr = flood.stream().try_clone().unwrap();
    let flooder = std::thread::spawn(move || {
        let mut w = flood_addr;
        let chunk = "NOOP\r\n".repeat(10_000);
        // Stops once the kernel buffers are full and the write times out.
        w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut sent = 0usize;
        while std::io::Write::write_all(&mut w, chunk.as_bytes()).is_ok() {
            sent += chunk.len();
            if sent > 64 << 20 {
                break;
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));

    // A server that blocked on a stalled client would stall these reads,
    // each bounded by STEP: the test fails as hung, not on a time figure.
    let mut c = s.client();
    c.ehlo();
    for i in 0..20 {
        c.transaction(
            "fast@example.org",
            "u@localhost",
            &format!("Subject: {i}\r\n\r\nx\r\n"),
        );
    }
    c.send("QUIT\r\n");
    c.expect("221 ");
    let sent = flooder.join().unwrap();
    assert!(sent > 0);
    // The stalled ones are still being served (not closed, not answered).
    mid_line.send("x@example.org>\r\n");
    mid_line.expect("503 5.5.1");
    mid_data.send("\r\n.\r\n");
    mid_data.expect("250 2.0.0 Ok: queued as");
    drop(flood);
}

#[test]
fn a_client_slower_than_the_idle_buffer_release_keeps_its_bytes() {
    // The server gives an idle connection's buffers back after a second
    // (logged at debug); bytes that straddle that (a partial line, a partial
    // body) must survive. Each step waits for the next release, so the
    // order is certain whatever the machine's speed.
    const RELEASED: &str = "idle connection released read=";
    let mut s = Server::start(&["--log-level", "debug"]);
    let released = |n: usize| {
        s.wait_log_nth(RELEASED, n, common::STEP)
            .unwrap_or_else(|| panic!("no idle release #{n}:\n{}", s.logs()))
    };
    let mut c = s.client();
    c.send("EHLO slow.example\r\n");
    c.expect("250 ");
    // Nothing unconsumed: the whole first read buffer (one page) goes back,
    // and the reply buffer with it.
    let l = released(1);
    assert!(l.contains("read=4096 reply="), "{l}");
    assert!(!l.contains(" reply=0 "), "{l}");
    c.send("MAIL FROM:<slow@exa");
    // A partial line is unconsumed: the read buffer is kept.
    let l = released(2);
    assert!(l.contains("read=0 reply="), "{l}");
    c.send("mple.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354 ");
    c.send("Subject: slow\r\n\r\nfirst");
    released(3);
    c.send(" line\r\n");
    released(4);
    c.send(".\r\nQUIT\r\n");
    c.expect("250 2.0.0 Ok: queued as");
    c.expect("221 ");
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].mail_from, "slow@example.org");
    assert_eq!(stored[0].body, b"Subject: slow\r\n\r\nfirst line\r\n");
}

#[test]
fn a_silent_client_mid_bdat_chunk_times_out_with_421() {
    // RFC 3030 chunks are data too: the data timeout applies mid-chunk.
    let mut s = Server::start(&["--data-timeout", "1s"]);
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@localhost>\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.send("BDAT 100 LAST\r\nSubject: partial\r\n");
    c.expect("421 4.4.2");
    c.expect_eof();
    assert!(
        s.wait_log("outcome=timeout", common::STEP).is_some(),
        "{}",
        s.logs()
    );
    assert!(s.stop().success());
    assert_eq!(s.stored().len(), 0, "a timed-out chunk must not be stored");
}

#[test]
fn between_bdat_chunks_the_command_timeout_applies_not_the_data_timeout() {
    // Between chunks the session waits for a command, so the short data
    // timeout must not end it. The client pauses until the server logs the
    // idle buffer release, which comes after 1 s, past the 500 ms data
    // timeout, whatever the machine's speed.
    let mut s = Server::start(&["--data-timeout", "500ms", "--log-level", "debug"]);
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@localhost>\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.send("BDAT 20\r\nSubject: chunked\r\n\r\n");
    c.expect("250 ");
    let idle = "idle connection released";
    let n = s.logs().matches(idle).count();
    assert!(
        s.wait_log_nth(idle, n + 1, common::STEP).is_some(),
        "no idle pause between chunks:\n{}",
        s.logs()
    );
    c.send("BDAT 7 LAST\r\nlater\r\n");
    c.expect("250 2.0.0 Ok: queued as");
    c.send("QUIT\r\n");
    c.expect("221 ");
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, b"Subject: chunked\r\n\r\nlater\r\n");
}

#[test]
fn over_the_limit_every_client_reads_its_421_at_accept_speed() {
    // 300 clients over the limit at once, each pipelining its EHLO before
    // the greeting (so closing without reading it would reset the
    // connection). Turned away at accept speed, all are answered well
    // within one STEP for the whole batch; at 10 per second (the old fixed
    // pace) that would take 30 s, and the batch fails as hung.
    const OVER: usize = 300;
    common::raise_nofile(4 * OVER as u64 + 256);
    let s = Server::start(&["--max-connections", "2"]);
    let mut a = s.client();
    let mut b = s.client();
    let over: Vec<Client> = (0..OVER)
        .map(|_| {
            let mut c = Client::connect(s.addr);
            c.send("EHLO early.example\r\n");
            c
        })
        .collect();
    let mut full = 0;
    let until = Instant::now() + common::STEP;
    // Each client closes once answered, which ends the server's lingering
    // close of it and frees its place among those being turned away.
    for mut c in over {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "hung: {full} of {OVER} answered");
        c.stream().set_read_timeout(Some(left)).unwrap();
        // A reset or a cut line shows as something other than the line.
        let l = c.try_line();
        assert_eq!(
            l.as_deref(),
            Some("421 4.3.2 Too many connections, try again later"),
            "after {full} full replies"
        );
        full += 1;
        // Then an orderly close (EOF), not a reset.
        let mut rest = Vec::new();
        let r = std::io::Read::read_to_end(&mut c.stream().try_clone().unwrap(), &mut rest);
        assert!(r.is_ok() && rest.is_empty(), "{r:?} {rest:?}");
    }
    assert_eq!(full, OVER);
    // The held sessions were not disturbed.
    for c in [&mut a, &mut b] {
        c.ehlo();
        c.send("QUIT\r\n");
        c.expect("221 ");
        c.expect_eof();
    }
    // Logged after each lingering close, by the logger thread: wait.
    assert!(
        s.wait_log_nth("outcome=too-many-connections", OVER, common::STEP)
            .is_some(),
        "{}",
        s.logs()
    );
}

/// Sends `first`, then `repeat` over and over from a thread until the
/// server stops taking it; reads lines until EOF and returns them.
fn flood_and_read(s: &Server, first: &str, repeat: &'static str) -> Vec<String> {
    let mut c = s.client();
    let mut w = c.stream().try_clone().unwrap();
    c.send(first);
    let writer = std::thread::spawn(move || {
        let chunk = repeat.repeat(1000);
        // Ends when the server closes (reset or broken pipe).
        while std::io::Write::write_all(&mut w, chunk.as_bytes()).is_ok() {}
    });
    let mut lines = Vec::new();
    while let Some(l) = c.try_line() {
        lines.push(l);
        // Far more replies than 2 s of lifetime allow at any speed here
        // would mean the limit is not enforced.
        assert!(lines.len() < 50_000_000, "lifetime not enforced");
    }
    drop(c);
    writer.join().unwrap();
    lines
}

#[test]
fn the_lifetime_ends_a_client_that_never_stops_sending_commands() {
    // NOOPs are junk: lift that limit so only the lifetime can end it.
    let s = Server::start(&[
        "--max-connection-lifetime",
        "2s",
        "--max-junk-commands",
        "4000000000",
    ]);
    let lines = flood_and_read(&s, "EHLO c.example\r\n", "NOOP\r\n");
    let last = lines.last().unwrap();
    assert_eq!(last, "421 4.4.2 Connection lifetime exceeded, closing");
    assert!(lines.iter().filter(|l| l.starts_with("250 2.0.0")).count() > 0);
    assert!(
        s.wait_log("outcome=lifetime", common::STEP).is_some(),
        "{}",
        s.logs()
    );
}

#[test]
fn the_lifetime_ends_a_body_that_never_ends() {
    let mut s = Server::start(&["--max-connection-lifetime", "2s"]);
    let lines = flood_and_read(
        &s,
        "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n",
        "more body text that never reaches its end\r\n",
    );
    assert!(lines.iter().any(|l| l.starts_with("354 ")), "{lines:?}");
    assert_eq!(
        lines.last().unwrap(),
        "421 4.4.2 Connection lifetime exceeded, closing"
    );
    assert!(
        s.wait_log("outcome=lifetime", common::STEP).is_some(),
        "{}",
        s.logs()
    );
    assert!(s.stop().success());
    assert_eq!(s.stored().len(), 0, "a cut body must not be stored");
}

#[test]
fn the_lifetime_ends_a_client_that_sends_and_never_reads() {
    // The replies fill the socket buffers and the server stops reading
    // (backpressure) while it waits to write; the lifetime (2 s) still
    // ends the session long before the command timeout (60 s) would.
    let s = Server::start(&[
        "--max-connection-lifetime",
        "2s",
        "--command-timeout",
        "60s",
        "--max-junk-commands",
        "4000000000",
    ]);
    let c = s.client();
    let mut w = c.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = "NOOP\r\n".repeat(10_000);
        w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        // Ends once the server stops reading (timeout) or closes.
        while std::io::Write::write_all(&mut w, chunk.as_bytes()).is_ok() {}
    });
    let line = s.wait_log("outcome=", common::STEP);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("outcome=lifetime")),
        "{line:?}\n{}",
        s.logs()
    );
    writer.join().unwrap();
    drop(c);
}
