//! loadgen against a scripted fake SMTP server: queue ids and the ack log,
//! BDAT, pipelining policy, refusals by class, and server misbehaviour
//! (garbage, early close, slowness, silence, refused connections, 421) — each
//! must be counted and reported, never a panic or a hang. Also Ctrl-C and
//! coordinated-omission correction.
//!
//! No assertion here depends on how fast the machine is: runs are bounded by
//! message counts where a count is asserted, and times are asserted only as
//! lower bounds that the fake server's (or loadgen's own) sleeps guarantee.
//! A hang fails through `run_loadgen`'s deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{
    count, dead_port, loadgen, run_loadgen, summary, wait_bounded, FakeServer, Script, TempDir,
};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs loadgen against `target` with `extra` flags and returns the JSON summary.
fn run_json(target: &str, extra: &[&str]) -> (serde_json::Value, common::Finished) {
    let dir = TempDir::new("fake");
    let json = dir.path("run.json");
    let mut args = vec![
        "run",
        "--target",
        target,
        "-q",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run_loadgen(&args, LIMIT);
    out.assert_ok();
    (summary(&json), out)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn ack_log_holds_exactly_the_acknowledged_queue_ids() {
    let server = FakeServer::start(Script::default());
    let dir = TempDir::new("acks");
    let acks = dir.path("acks.txt");
    let (s, out) = run_json(
        &server.target(),
        &[
            "-c",
            "4",
            "--messages",
            "500",
            "--ack-log",
            acks.to_str().unwrap(),
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 500, "{}", out.stdout);
    let logged: Vec<String> = std::fs::read_to_string(&acks)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let issued = server.seen.lock().unwrap().queue_ids.clone();
    assert_eq!(logged.len(), 500);
    assert_eq!(sorted(logged), sorted(issued));
    // DATA bodies arrive whole: 1 KiB each after unstuffing.
    assert!(server
        .seen
        .lock()
        .unwrap()
        .data_bodies
        .iter()
        .all(|&b| b == 1024));
}

#[test]
fn two_cores_merge_counts_and_acks() {
    let server = FakeServer::start(Script::default());
    let dir = TempDir::new("cores");
    let acks = dir.path("acks.txt");
    let (s, out) = run_json(
        &server.target(),
        &[
            "--cores",
            "2",
            "-c",
            "5",
            "--messages",
            "301",
            "--ack-log",
            acks.to_str().unwrap(),
        ],
    );
    assert_eq!(s["config"]["cores"], 2);
    assert_eq!(count(&s, &["messages", "ok"]), 301, "{}", out.stdout);
    assert_eq!(count(&s, &["connections", "opened"]), 5);
    assert_eq!(count(&s, &["latency_ms", "e2e", "count"]), 301);
    let logged: Vec<String> = std::fs::read_to_string(&acks)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        sorted(logged),
        sorted(server.seen.lock().unwrap().queue_ids.clone())
    );
}

#[test]
fn ack_log_falls_back_to_the_reply_text() {
    let server = FakeServer::start(Script {
        eod_reply: "250 Message Queued ({id})".into(),
        ..Script::default()
    });
    let dir = TempDir::new("acks-text");
    let acks = dir.path("acks.txt");
    run_json(
        &server.target(),
        &[
            "-c",
            "1",
            "--messages",
            "3",
            "--ack-log",
            acks.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&acks).unwrap();
    assert_eq!(
        text,
        "Message Queued (Q000001)\nMessage Queued (Q000002)\nMessage Queued (Q000003)\n"
    );
}

#[test]
fn bdat_pipelined_and_not() {
    for pipelining in ["auto", "off"] {
        let server = FakeServer::start(Script::default());
        let dir = TempDir::new("bdat");
        let acks = dir.path("acks.txt");
        let (s, out) = run_json(
            &server.target(),
            &[
                "-c",
                "2",
                "--messages",
                "100",
                "--bdat",
                "--size",
                "4k:50,64k:50",
                "--pipelining",
                pipelining,
                "--ack-log",
                acks.to_str().unwrap(),
            ],
        );
        assert_eq!(count(&s, &["messages", "ok"]), 100, "{}", out.stdout);
        assert_eq!(count(&s, &["replies", "bdat", "2xx"]), 100);
        assert_eq!(count(&s, &["replies", "data", "3xx"]), 0);
        let opened = count(&s, &["connections", "opened"]);
        assert_eq!(count(&s, &["connections", "chunking"]), opened);
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.bdat_bodies.len(), 100);
        assert!(
            seen.bdat_bodies.iter().all(|&b| b == 4096 || b == 65536),
            "{:?}",
            seen.bdat_bodies
        );
        assert!(seen.data_bodies.is_empty());
        assert_eq!(seen.pipelined_input, pipelining == "auto");
        let logged: Vec<String> = std::fs::read_to_string(&acks)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(sorted(logged), sorted(seen.queue_ids.clone()));
        // Mean size is reported as bytes of accepted messages.
        let mb = s["mb_per_s"].as_f64().unwrap();
        assert!(mb > 0.0);
    }
}

/// The ack log and the ids the fake server issued, sorted.
fn acks_and_issued(acks: &std::path::Path, server: &FakeServer) -> (Vec<String>, Vec<String>) {
    let logged = std::fs::read_to_string(acks)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let issued = server.seen.lock().unwrap().queue_ids.clone();
    (sorted(logged), sorted(issued))
}

#[test]
fn chaining_one_write_per_message_unless_off() {
    // Closed loop, pipelined DATA: every message but each connection's last
    // goes out with the next message's envelope behind its dot. Both
    // connections claim their first message before either finishes one.
    for (flags, chained) in [
        (&["-c", "2", "--messages", "200", "--chain"][..], 198),
        // Off by default.
        (&["-c", "2", "--messages", "200"][..], 0),
        (
            &[
                "-c",
                "2",
                "--messages",
                "200",
                "--pipelining",
                "off",
                "--chain",
            ][..],
            0,
        ),
        // Three messages per connection: two chained on each of ten.
        (
            &[
                "-c",
                "1",
                "--messages",
                "30",
                "--msgs-per-conn",
                "3",
                "--chain",
            ][..],
            20,
        ),
        // Open loop keeps each message's own start: never chained.
        (
            &["-c", "2", "--rate", "200", "--messages", "40", "--chain"][..],
            0,
        ),
    ] {
        let server = FakeServer::start(Script::default());
        let dir = TempDir::new("chain");
        let acks = dir.path("acks.txt");
        let mut args = flags.to_vec();
        args.extend(["--ack-log", acks.to_str().unwrap()]);
        let (s, out) = run_json(&server.target(), &args);
        let n = if flags.contains(&"30") {
            30
        } else if flags.contains(&"40") {
            40
        } else {
            200
        };
        assert_eq!(
            count(&s, &["messages", "ok"]),
            n,
            "{flags:?}\n{}",
            out.stdout
        );
        assert_eq!(count(&s, &["replies", "mail", "2xx"]), n);
        assert_eq!(count(&s, &["replies", "data", "3xx"]), n);
        assert_eq!(count(&s, &["replies", "data-end", "2xx"]), n);
        assert_eq!(count(&s, &["latency_ms", "eod", "count"]), n);
        assert_eq!(count(&s, &["latency_ms", "transaction", "count"]), n);
        assert_eq!(s["errors"], serde_json::json!({}));
        assert_eq!(s["config"]["chain"], flags.contains(&"--chain"));
        let (logged, issued) = acks_and_issued(&acks, &server);
        assert_eq!(logged.len() as u64, n);
        assert_eq!(logged, issued);
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.chained_eod, chained, "{flags:?}");
        assert!(seen.data_bodies.iter().all(|&b| b == 1024));
    }
}

#[test]
fn chained_next_mail_refused_is_that_message_refused() {
    // The second MAIL on each connection travels behind the first message's
    // dot and is refused: the first message is accepted, the second refused
    // (its RCPT and DATA get 503), and the rest go on after an RSET.
    let server = FakeServer::start(Script {
        nth: vec![("MAIL".into(), 2, "550 5.7.1 Sender rejected".into())],
        ..Script::default()
    });
    let dir = TempDir::new("chain-mail");
    let acks = dir.path("acks.txt");
    let (s, out) = run_json(
        &server.target(),
        &[
            "-c",
            "1",
            "--messages",
            "5",
            "--chain",
            "--ack-log",
            acks.to_str().unwrap(),
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 4, "{}", out.stdout);
    assert_eq!(count(&s, &["messages", "perm_fail"]), 1);
    assert_eq!(count(&s, &["replies", "mail", "5xx"]), 1);
    assert_eq!(count(&s, &["replies", "mail", "2xx"]), 4);
    assert_eq!(count(&s, &["replies", "rcpt", "5xx"]), 1);
    assert_eq!(count(&s, &["replies", "data", "5xx"]), 1);
    assert_eq!(count(&s, &["replies", "data-end", "2xx"]), 4);
    assert_eq!(count(&s, &["replies", "rset", "2xx"]), 1);
    assert_eq!(count(&s, &["connections", "opened"]), 1);
    assert_eq!(count(&s, &["latency_ms", "e2e", "count"]), 4);
    assert_eq!(s["errors"], serde_json::json!({}));
    let (logged, issued) = acks_and_issued(&acks, &server);
    assert_eq!(logged.len(), 4);
    assert_eq!(logged, issued);
    // Messages 1, 3 and 4 carried the next envelope; 2 was refused before
    // its data and 5 was the last.
    assert_eq!(server.seen.lock().unwrap().chained_eod, 3);
}

#[test]
fn chained_refusal_at_end_of_data_needs_no_rset() {
    // The second message's end of data is refused; the third message's
    // envelope is already behind it. The refusal is the second message's,
    // the third goes on without an RSET (which would have landed in its
    // data) — unless chaining is off, where each refusal is reset as before.
    // A 421 there ends the connection: the chained message is not lost but
    // sent on the next connection.
    for (reply, chain, temp_fail, rsets, opened) in [
        ("451 4.3.0 Try later", true, 1, 0, 1),
        ("451 4.3.0 Try later", false, 1, 1, 1),
        ("421 4.3.0 Closing", true, 2, 0, 3),
        ("421 4.3.0 Closing", false, 2, 0, 3),
    ] {
        let server = FakeServer::start(Script {
            nth: vec![("DATA".into(), 2, reply.into())],
            ..Script::default()
        });
        let dir = TempDir::new("chain-eod");
        let acks = dir.path("acks.txt");
        let mut args = vec![
            "-c",
            "1",
            "--messages",
            "5",
            "--ack-log",
            acks.to_str().unwrap(),
        ];
        if chain {
            args.push("--chain");
        }
        let (s, out) = run_json(&server.target(), &args);
        let ctx = format!("{reply} chain {chain}\n{}", out.stdout);
        assert_eq!(count(&s, &["messages", "ok"]), 5 - temp_fail, "{ctx}");
        assert_eq!(count(&s, &["messages", "temp_fail"]), temp_fail, "{ctx}");
        assert_eq!(
            count(&s, &["replies", "data-end", "4xx"]),
            temp_fail,
            "{ctx}"
        );
        assert_eq!(count(&s, &["replies", "mail", "2xx"]), 5, "{ctx}");
        assert_eq!(count(&s, &["replies", "rset", "2xx"]), rsets, "{ctx}");
        assert_eq!(count(&s, &["connections", "opened"]), opened, "{ctx}");
        assert_eq!(count(&s, &["latency_ms", "eod", "count"]), 5 - temp_fail);
        assert_eq!(s["errors"], serde_json::json!({}), "{ctx}");
        let (logged, issued) = acks_and_issued(&acks, &server);
        assert_eq!(logged.len() as u64, 5 - temp_fail, "{ctx}");
        assert_eq!(logged, issued, "{ctx}");
    }
}

#[test]
fn chained_message_survives_an_early_close() {
    // The server reads the second message's data on each connection, then
    // closes without a reply. With chaining, the third message's envelope
    // went out behind that dot: the second message is lost to the close,
    // the third is sent again on a new connection — the same counts as
    // without chaining.
    for chain in [true, false] {
        let server = FakeServer::start(Script {
            nth: vec![("DATA".into(), 2, "CLOSE".into())],
            ..Script::default()
        });
        let dir = TempDir::new("chain-close");
        let acks = dir.path("acks.txt");
        let mut args = vec![
            "-c",
            "1",
            "--messages",
            "5",
            "--ack-log",
            acks.to_str().unwrap(),
        ];
        if chain {
            args.push("--chain");
        }
        let (s, out) = run_json(&server.target(), &args);
        let ctx = format!("chain {chain}\n{}", out.stdout);
        // 1 ok, 2 lost; 3 ok, 4 lost (new connection); 5 ok (another).
        assert_eq!(count(&s, &["messages", "ok"]), 3, "{ctx}");
        assert_eq!(count(&s, &["messages", "error"]), 2, "{ctx}");
        let closes = count(&s, &["errors", "early-close"]) + count(&s, &["errors", "reset"]);
        assert_eq!(closes, 2, "{ctx}");
        assert_eq!(count(&s, &["connections", "opened"]), 3, "{ctx}");
        assert_eq!(count(&s, &["replies", "data-end", "2xx"]), 3, "{ctx}");
        let (logged, issued) = acks_and_issued(&acks, &server);
        assert_eq!(logged.len(), 3, "{ctx}");
        assert_eq!(logged, issued, "{ctx}");
        assert_eq!(server.seen.lock().unwrap().data_bodies.len(), 5, "{ctx}");
    }
}

#[test]
fn pipelining_follows_ehlo_unless_forced() {
    let no_pipelining = Script {
        ehlo_keywords: vec!["8BITMIME".into()],
        ..Script::default()
    };
    for (mode, expect) in [("auto", false), ("on", true), ("off", false)] {
        let server = FakeServer::start(no_pipelining.clone());
        let (s, _) = run_json(
            &server.target(),
            &["-c", "1", "--messages", "20", "--pipelining", mode],
        );
        assert_eq!(count(&s, &["messages", "ok"]), 20);
        assert_eq!(
            server.seen.lock().unwrap().pipelined_input,
            expect,
            "--pipelining {mode}"
        );
        assert_eq!(count(&s, &["connections", "pipelined"]), u64::from(expect));
    }
}

#[test]
fn refusals_are_counted_by_class_and_command() {
    // Every RCPT refused temporarily: the message fails 4xx, DATA is refused
    // (the fake server says 354 anyway, so loadgen ends the empty data).
    let server = FakeServer::start(Script {
        rcpt_reply: "450 4.2.1 Mailbox busy".into(),
        ..Script::default()
    });
    let (s, out) = run_json(&server.target(), &["-c", "2", "--messages", "50"]);
    assert_eq!(count(&s, &["messages", "temp_fail"]), 50, "{}", out.stdout);
    assert_eq!(count(&s, &["messages", "ok"]), 0);
    assert_eq!(count(&s, &["replies", "rcpt", "4xx"]), 50);
    assert_eq!(
        count(&s, &["replies", "rset", "2xx"]),
        50,
        "RSET after each refusal"
    );
    assert_eq!(s["errors"], serde_json::json!({}));
    assert!(
        server
            .seen
            .lock()
            .unwrap()
            .data_bodies
            .iter()
            .all(|&b| b == 0),
        "empty data only"
    );

    let server = FakeServer::start(Script {
        mail_reply: "550 5.7.1 Sender rejected".into(),
        ..Script::default()
    });
    let (s, _) = run_json(
        &server.target(),
        &["-c", "2", "--messages", "50", "--pipelining", "off"],
    );
    assert_eq!(count(&s, &["messages", "perm_fail"]), 50);
    assert_eq!(count(&s, &["replies", "mail", "5xx"]), 50);
    assert_eq!(
        count(&s, &["replies", "rcpt", "2xx"]),
        0,
        "no RCPT after MAIL was refused"
    );
    assert!(
        s["latency_ms"]["e2e"]["count"] == 0,
        "refused messages have no latency sample"
    );
}

#[test]
fn final_reply_refusal() {
    let server = FakeServer::start(Script {
        eod_reply: "554 5.7.1 Spam".into(),
        ..Script::default()
    });
    let (s, _) = run_json(&server.target(), &["-c", "1", "--messages", "10"]);
    assert_eq!(count(&s, &["messages", "perm_fail"]), 10);
    assert_eq!(count(&s, &["replies", "data-end", "5xx"]), 10);
}

#[test]
fn garbage_reply_is_a_protocol_error() {
    let server = FakeServer::start(Script {
        garbage_on: Some(("MAIL".into(), "HTTP/1.1 400 Bad Request\r\n\r\n".into())),
        ..Script::default()
    });
    let (s, out) = run_json(&server.target(), &["-c", "2", "--duration", "1s"]);
    assert!(count(&s, &["errors", "protocol"]) > 0, "{}", out.stdout);
    assert_eq!(count(&s, &["messages", "ok"]), 0);
    assert!(
        s["first_errors"]["protocol"]
            .as_str()
            .unwrap()
            .contains("garbage"),
        "{s}"
    );
    assert!(out.stdout.contains("protocol"), "{}", out.stdout);
}

#[test]
fn early_close_is_counted_and_the_run_goes_on() {
    let server = FakeServer::start(Script {
        close_on: Some("DATA".into()),
        ..Script::default()
    });
    let (s, out) = run_json(&server.target(), &["-c", "2", "--messages", "20"]);
    let closes = count(&s, &["errors", "early-close"]) + count(&s, &["errors", "reset"]);
    assert_eq!(closes, 20, "{}", out.stdout);
    assert_eq!(count(&s, &["messages", "error"]), closes);
    assert_eq!(count(&s, &["messages", "ok"]), 0);
    // Each broken connection is replaced, without backoff (it was set up fine).
    assert_eq!(count(&s, &["connections", "opened"]), 20);
}

#[test]
fn slow_replies_time_out() {
    let server = FakeServer::start(Script {
        eod_delay: Duration::from_secs(3),
        ..Script::default()
    });
    let (s, out) = run_json(
        &server.target(),
        &["-c", "2", "--messages", "4", "--timeout", "300ms"],
    );
    assert_eq!(count(&s, &["errors", "timeout"]), 4, "{}", out.stdout);
    assert_eq!(count(&s, &["messages", "error"]), 4);
    // Given up before the server answered (it waits 3 s): no reply counted.
    assert_eq!(count(&s, &["replies", "data-end", "2xx"]), 0);
    assert_eq!(count(&s, &["messages", "ok"]), 0);
}

#[test]
fn silent_server_times_out_on_the_greeting() {
    let server = FakeServer::start(Script {
        greeting: None,
        ..Script::default()
    });
    let (s, out) = run_json(
        &server.target(),
        &["-c", "2", "--messages", "2", "--timeout", "200ms"],
    );
    assert_eq!(count(&s, &["errors", "timeout"]), 2, "{}", out.stdout);
    assert_eq!(count(&s, &["messages", "error"]), 2);
    assert!(
        s["first_errors"]["timeout"]
            .as_str()
            .unwrap()
            .starts_with("greeting"),
        "{s}"
    );
}

#[test]
fn refused_connections_are_counted_with_backoff() {
    let addr = dead_port().to_string();
    let (s, out) = run_json(&addr, &["-c", "2", "--duration", "1s"]);
    let refused = count(&s, &["errors", "connect-refused"]);
    assert!(refused >= 2, "{refused} refused\n{}", out.stdout);
    assert_eq!(count(&s, &["messages", "error"]), refused);

    // Backoff, not a busy loop: one connection's six attempts are separated
    // by 20, 40, 80, 160 and 320 ms of backoff, so the run (which ends with
    // the last attempt) cannot be shorter than their sum.
    let (s, out) = run_json(&addr, &["-c", "1", "--messages", "6"]);
    assert_eq!(
        count(&s, &["errors", "connect-refused"]),
        6,
        "{}",
        out.stdout
    );
    assert_eq!(count(&s, &["messages", "error"]), 6);
    let measured = s["measured_s"].as_f64().unwrap();
    assert!(measured >= 0.620, "six attempts in {measured} s");
}

#[test]
fn greeting_421_and_ehlo_refusal() {
    let server = FakeServer::start(Script {
        greeting: Some("421 4.3.2 Busy".into()),
        ..Script::default()
    });
    let (s, _) = run_json(&server.target(), &["-c", "1", "--messages", "3"]);
    assert_eq!(count(&s, &["messages", "temp_fail"]), 3);
    assert_eq!(count(&s, &["replies", "greeting", "4xx"]), 3);
    assert_eq!(count(&s, &["replies", "ehlo", "2xx"]), 0);

    // A server that does not know EHLO gets HELO, and no pipelining.
    let server = FakeServer::start(Script {
        ehlo_reply: Some("502 5.5.2 Error: command not recognized".into()),
        ..Script::default()
    });
    let (s, _) = run_json(&server.target(), &["-c", "1", "--messages", "5"]);
    assert_eq!(count(&s, &["messages", "ok"]), 5);
    assert_eq!(count(&s, &["replies", "helo", "2xx"]), 1);
    assert_eq!(count(&s, &["connections", "pipelined"]), 0);
}

#[test]
fn code_421_mid_transaction_drops_the_connection() {
    let server = FakeServer::start(Script {
        mail_reply: "421 4.7.0 Closing".into(),
        ..Script::default()
    });
    let (s, _) = run_json(
        &server.target(),
        &["-c", "1", "--messages", "5", "--pipelining", "off"],
    );
    assert_eq!(count(&s, &["messages", "temp_fail"]), 5);
    assert_eq!(
        count(&s, &["connections", "opened"]),
        5,
        "a new connection after each 421"
    );
    assert_eq!(count(&s, &["replies", "rset", "2xx"]), 0);
}

#[test]
fn code_421_to_rset_after_a_refusal_is_the_server_closing_not_an_error() {
    // ringmx under backpressure: MAIL gets 452, and a server that counts
    // the pipelined RCPT and DATA as errors ends with 421 to the RSET.
    let server = FakeServer::start(Script {
        mail_reply: "452 4.3.1 Insufficient system storage".into(),
        nth: vec![("RSET".into(), 1, "421 4.7.0 Too many errors".into())],
        ..Script::default()
    });
    let (s, _) = run_json(&server.target(), &["-c", "1", "--messages", "4"]);
    assert_eq!(count(&s, &["messages", "temp_fail"]), 4);
    assert_eq!(s["errors"], serde_json::json!({}), "no protocol error");
    assert_eq!(
        count(&s, &["connections", "opened"]),
        4,
        "a new connection after each 421"
    );
}

#[test]
fn noop_scenario() {
    let server = FakeServer::start(Script::default());
    let (s, _) = run_json(
        &server.target(),
        &[
            "-c",
            "2",
            "--messages",
            "40",
            "--scenario",
            "noop",
            "--msgs-per-conn",
            "1",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 40);
    assert_eq!(count(&s, &["replies", "noop", "2xx"]), 40);
    assert_eq!(count(&s, &["connections", "opened"]), 40);
    assert_eq!(count(&s, &["replies", "mail", "2xx"]), 0);
}

#[test]
fn open_loop_latency_counts_the_queueing() {
    // The server takes 100 ms per message; one connection can do 10/s, but 40/s
    // are due. Measured from the intended start, latency grows with the queue
    // (coordinated omission corrected): message i (from 0) is due at 25 i ms
    // and, one at a time at 100 ms or more each, done no sooner than
    // 100 (i + 1) ms, so its latency is at least 100 + 75 i ms. The
    // transaction itself is at least the server's 100 ms.
    let server = FakeServer::start(Script {
        eod_delay: Duration::from_millis(100),
        ..Script::default()
    });
    let (s, out) = run_json(
        &server.target(),
        &["-c", "1", "--rate", "40", "--duration", "2s"],
    );
    let e2e_p99 = s["latency_ms"]["e2e"]["p99"].as_f64().unwrap();
    let e2e_max = s["latency_ms"]["e2e"]["max"].as_f64().unwrap();
    let txn_p99 = s["latency_ms"]["transaction"]["p99"].as_f64().unwrap();
    let ok = count(&s, &["messages", "ok"]);
    assert!(ok >= 2, "{}", out.stdout);
    assert!(txn_p99 > 90.0, "transaction p99 {txn_p99}\n{}", out.stdout);
    let floor = 100.0 + 75.0 * (ok - 1) as f64;
    assert!(
        e2e_max >= floor && e2e_p99 >= txn_p99,
        "e2e max {e2e_max} (>= {floor}), p99 {e2e_p99} should include the queueing\n{}",
        out.stdout
    );
    // 80 due in 2 s; at most 21 could be started (20 done in 2 s, one in
    // flight), so most stay behind.
    let backlog = count(&s, &["messages", "backlog"]);
    assert!(backlog >= 59, "{}", out.stdout);
    assert_eq!(ok + count(&s, &["messages", "error"]) + backlog, 80);
    assert!(out.stdout.contains("target not met"), "{}", out.stdout);
}

#[test]
fn ctrl_c_prints_the_summary_so_far() {
    let server = FakeServer::start(Script::default());
    let dir = TempDir::new("sigint");
    let json = dir.path("run.json");
    let mut child = loadgen()
        .args([
            "run",
            "--target",
            &server.target(),
            "-c",
            "2",
            "--duration",
            "60s",
            "--json",
        ])
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first one-second interval has been reported live,
    // so that the summary has something in it.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with('[') {
                // The receiver is gone only once the test has failed.
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(LIMIT).expect("no live line from loadgen");
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let out = wait_bounded(child, LIMIT);
    let stderr = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}\n{stderr}", out.stdout);
    assert!(out.stdout.contains("INTERRUPTED"), "{}", out.stdout);
    let s = summary(&json);
    assert_eq!(s["aborted"], true);
    assert!(count(&s, &["messages", "ok"]) > 0);
    // Stopped after the first interval, well before --duration.
    let measured = s["measured_s"].as_f64().unwrap();
    assert!((1.0..60.0).contains(&measured), "measured {measured}");
}

#[test]
fn help_and_bad_flags() {
    let out = run_loadgen(&["run", "--help"], LIMIT);
    out.assert_ok();
    assert!(
        out.stdout.contains("coordinated omission"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("[default: 16]"),
        "defaults shown: {}",
        out.stdout
    );
    for bad in [
        vec!["run", "--target", "127.0.0.1:1", "--size", "1x"],
        vec!["run", "--target", "127.0.0.1:1", "--rate", "0"],
        vec!["run", "--target", "127.0.0.1:1", "-c", "0"],
        vec!["run", "--target", "127.0.0.1"],
        vec!["compare", "/nonexistent.json"],
    ] {
        let out = run_loadgen(&bad, LIMIT);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty());
    }
}
