//! Recipient checks at RCPT time (issue 17) against the real binary: a
//! recipient map given with `--recipient-map`, real clients (Python's
//! smtplib, and raw bytes where the exact dialogue matters), the spool read
//! back, start-up errors and SIGHUP reloads.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Client, Server, TempDir, STEP};

const MAP: &str = "\
# users of example.com
alice@example.com
Bob@Example.com: bob@store.internal
carol+lists@example.com
@catch.example
";

/// Starts a server that accepts example.com, catch.example and open.example
/// (the last one not named by the map: catch-all) with `map` as its map.
fn start(dir: &TempDir, map: &str, extra: &[&str]) -> Server {
    let path = dir.path().join("recipients");
    std::fs::write(&path, map).unwrap();
    let mut args = vec![
        "--recipient-map",
        path.to_str().unwrap(),
        "--domain",
        "example.com",
        "--domain",
        "catch.example",
        "--domain",
        "open.example",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// RCPT's reply line for `to`, within a transaction on `c`.
fn rcpt(c: &mut Client, to: &str) -> String {
    c.send(format!("RCPT TO:<{to}>\r\n"));
    c.reply().pop().unwrap()
}

fn session(s: &Server) -> Client {
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<sender@example.org>\r\n");
    c.expect("250 ");
    c
}

#[test]
fn smtplib_sees_known_alias_extension_case_and_catch_all_accepted_and_unknown_refused() {
    let Some(python) = common::require_tool("python3", "python3") else {
        return;
    };
    let dir = TempDir::new("rcpt");
    let mut s = start(&dir, MAP, &[]);
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    c.ehlo("smtplib.example")
    c.mail("sender@example.org")
    for to in sys.argv[2:]:
        code, text = c.rcpt(to)
        print(to, code, text.decode())
    c.rset()
    # One known and one unknown recipient: delivered to the known one only.
    refused = c.sendmail("sender@example.org", ["alice@example.com", "mallory@example.com"],
                         "Subject: rcpt\r\n\r\nhello\r\n")
    print("refused", sorted(refused.items()))
"#;
    let cases = [
        ("alice@example.com", "250 2.1.5 Recipient ok"),
        ("ALICE@example.COM", "250 2.1.5 Recipient ok"),
        ("alice+news@example.com", "250 2.1.5 Recipient ok"),
        ("bob@example.com", "250 2.1.5 Recipient ok"),
        ("carol+lists@example.com", "250 2.1.5 Recipient ok"),
        (
            "carol@example.com",
            "550 5.1.1 Recipient address rejected: User unknown",
        ),
        (
            "mallory@example.com",
            "550 5.1.1 Recipient address rejected: User unknown",
        ),
        ("postmaster@example.com", "250 2.1.5 Recipient ok"),
        ("anyone@catch.example", "250 2.1.5 Recipient ok"),
        ("anyone@open.example", "250 2.1.5 Recipient ok"),
        ("anyone@elsewhere.example", "550 5.7.1 Relay access denied"),
    ];
    let out = Command::new(python)
        .args(["-c", script, &s.addr.port().to_string()])
        .args(cases.iter().map(|c| c.0))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "smtplib failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    let mut lines = stdout.lines();
    for (to, want) in cases {
        assert_eq!(
            lines.next(),
            Some(format!("{to} {want}").as_str()),
            "{stdout}"
        );
    }
    assert_eq!(
        lines.next(),
        Some(
            "refused [('mallory@example.com', (550, b'5.1.1 Recipient address rejected: \
             User unknown'))]"
        )
    );
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 1, "{}", s.logs());
    assert_eq!(stored[0].rcpts, ["alice@example.com"]);
    let logs = s.logs();
    // Logged as refusals, with the address; counted per reason.
    assert!(
        logs.contains(
            "NOQUEUE: reject: RCPT from 127.0.0.1:"
        ) && logs.contains(
            ": 550 5.1.1 Recipient address rejected: User unknown; shard=0 arg=\"TO:<mallory@example.com>\""
        ),
        "{logs}"
    );
    assert!(
        logs.contains("rcpt_accepted=9 rcpt_unknown=3 rcpt_relay_denied=1 rcpt_over_limit=0"),
        "{logs}"
    );
    assert!(
        logs.contains("recipient map")
            && logs.contains("loaded in")
            && logs.contains("3 addresses")
            && logs.contains(
                "map domains: example.com; catch-all domains: catch.example open.example (unnamed)"
            ),
        "{logs}"
    );
}

#[test]
fn case_and_extensions_follow_the_settings() {
    let dir = TempDir::new("rcpt");
    let mut s = start(
        &dir,
        "Alice@example.com\n",
        &[
            "--recipient-ignore-case",
            "false",
            "--recipient-delimiter",
            "-",
        ],
    );
    let mut c = session(&s);
    assert!(rcpt(&mut c, "Alice@EXAMPLE.COM").starts_with("250 "));
    assert!(rcpt(&mut c, "alice@example.com").starts_with("550 5.1.1 "));
    assert!(rcpt(&mut c, "Alice-news@example.com").starts_with("250 "));
    assert!(rcpt(&mut c, "Alice+news@example.com").starts_with("550 5.1.1 "));
    drop(c);
    assert!(s.stop().success());
}

#[test]
fn without_a_map_every_accepted_domain_is_catch_all() {
    let mut s = Server::start(&["--domain", "example.com"]);
    let mut c = session(&s);
    assert!(rcpt(&mut c, "anyone@example.com").starts_with("250 "));
    // SIGHUP without a map: logged, and nothing else changes.
    s.signal(libc::SIGHUP);
    assert!(s.wait_log("SIGHUP: nothing to reload", STEP).is_some());
    assert!(rcpt(&mut c, "someone@example.com").starts_with("250 "));
    drop(c);
    assert!(s.stop().success());
}

/// Runs `ringmx serve` with `map` expecting a failed start; returns the
/// exit code and output.
fn fails_with_map(dir: &Path, map: Option<&str>) -> (Option<i32>, String) {
    let path = dir.join("recipients");
    if let Some(m) = map {
        std::fs::write(&path, m).unwrap();
    }
    match Server::try_start(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--recipient-map", path.to_str().unwrap()],
    ) {
        Ok(mut s) => {
            s.stop();
            panic!("started with a bad map:\n{}", s.logs())
        }
        Err((status, logs)) => {
            assert!(!logs.contains("panicked"), "{logs}");
            (status.code(), logs)
        }
    }
}

#[test]
fn a_bad_map_stops_start_up_naming_file_and_line() {
    let dir = TempDir::new("rcpt");
    let path = dir.path().join("recipients");
    let (code, logs) = fails_with_map(
        dir.path(),
        Some("# ok\nalice@example.com\nalice example.com\n"),
    );
    assert_eq!(code, Some(2), "{logs}");
    assert!(
        logs.contains(&format!(
            "ringmx: recipient map {}:3: \"alice example.com\" is not an address: write \
             user@example.com",
            path.display()
        )),
        "{logs}"
    );
    let (code, logs) = fails_with_map(dir.path(), Some("alias@example.com:\n"));
    assert_eq!(code, Some(2), "{logs}");
    assert!(
        logs.contains(":1: alias \"alias@example.com\" has no target"),
        "{logs}"
    );
    std::fs::remove_file(&path).unwrap();
    let (code, logs) = fails_with_map(dir.path(), None);
    assert_eq!(code, Some(2), "{logs}");
    assert!(
        logs.contains(&format!(
            "ringmx: cannot read recipient map {}: ",
            path.display()
        )),
        "{logs}"
    );
}

#[test]
fn sighup_reloads_the_map_and_a_broken_one_keeps_the_old() {
    let dir = TempDir::new("rcpt");
    let path = dir.path().join("recipients");
    let mut s = start(&dir, "alice@example.com\n", &[]);
    // A connection open across the reloads picks each one up.
    let mut open = session(&s);
    assert!(rcpt(&mut open, "bob@example.com").starts_with("550 5.1.1 "));

    // Written to a new file and renamed, as an operator's tooling should.
    let tmp = dir.path().join("recipients.new");
    std::fs::write(&tmp, "alice@example.com\nbob@example.com\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    s.signal(libc::SIGHUP);
    let line = s
        .wait_log("SIGHUP: recipient map", STEP)
        .expect("reload logged");
    assert!(
        line.contains("reloaded") && line.contains("2 addresses"),
        "{line}"
    );
    assert!(rcpt(&mut open, "bob@example.com").starts_with("250 "));
    let mut fresh = session(&s);
    assert!(rcpt(&mut fresh, "bob@example.com").starts_with("250 "));
    assert!(rcpt(&mut fresh, "carol@example.com").starts_with("550 5.1.1 "));

    std::fs::write(
        &path,
        "alice@example.com\ncarol@example.com\nnot an address\n",
    )
    .unwrap();
    s.signal(libc::SIGHUP);
    let line = s
        .wait_log_nth("SIGHUP: ", 2, STEP)
        .expect("failed reload logged");
    assert!(
        line.contains(" ERROR ")
            && line.contains(&format!("recipient map {}:3: ", path.display()))
            && line.ends_with("keeping the previous map (2 addresses)"),
        "{line}"
    );
    // The old map answers: bob still exists, carol (only in the bad file) not.
    let mut after = session(&s);
    assert!(rcpt(&mut after, "bob@example.com").starts_with("250 "));
    assert!(rcpt(&mut after, "carol@example.com").starts_with("550 5.1.1 "));
    assert!(rcpt(&mut open, "carol@example.com").starts_with("550 5.1.1 "));

    // Fixed: the next SIGHUP takes it.
    std::fs::write(&path, "carol@example.com\n").unwrap();
    s.signal(libc::SIGHUP);
    let line = s.wait_log_nth("SIGHUP: ", 3, STEP).expect("reload logged");
    assert!(
        line.contains("reloaded") && line.contains("1 addresses"),
        "{line}"
    );
    assert!(rcpt(&mut open, "carol@example.com").starts_with("250 "));
    assert!(rcpt(&mut open, "bob@example.com").starts_with("550 5.1.1 "));
    // The server still shuts down cleanly: SIGHUP did not disturb signals.
    drop((open, fresh, after));
    assert!(s.stop().success());
    assert!(s.wait_exit(Duration::from_secs(1)).is_some());
}
