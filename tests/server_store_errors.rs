//! Store failures in the middle of a message, through the real binary: the
//! session drains the rest of the body, answers the final dot with `452
//! 4.3.1` (disk full) or `451 4.3.0` (any other store error), and goes on;
//! what was acknowledged before stays stored.

mod common;

use std::os::unix::process::CommandExt;

use common::{Client, Server, Tmpfs};

/// A body of `bytes` in 1000-byte lines, none starting with a dot.
fn big_body(bytes: usize) -> String {
    let line = format!("{}\r\n", "z".repeat(998));
    line.repeat(bytes / line.len())
}

/// A small message, then one that fails mid-body with `code`, then the
/// session goes on. Returns the small message's body.
fn small_then_failing(c: &mut Client, big: usize, code: &str) -> &'static str {
    const SMALL: &str = "Subject: kept\r\n\r\nacknowledged before the failure\r\n";
    c.ehlo();
    c.transaction("first@example.org", "u@localhost", SMALL);
    c.send("MAIL FROM:<big@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354 ");
    // The whole body goes out before any reply: the server drains what
    // follows the failure instead of reading it as commands, and answers
    // once, at the dot.
    c.send(big_body(big));
    c.send(".\r\nRSET\r\n");
    c.expect(code);
    c.expect("250 2.0.0");
    c.send("QUIT\r\n");
    c.expect("221 ");
    c.expect_eof();
    SMALL
}

#[test]
fn disk_full_mid_message_is_452_and_the_session_goes_on() {
    let fs = match Tmpfs::mount("3m") {
        Ok(fs) => fs,
        Err(why) => return common::skip(&why),
    };
    let spool = fs.path().join("spool");
    let spool = spool.to_str().unwrap();
    // No free-space floor: the kernel's ENOSPC, mid-body, is what fails.
    let mut s = Server::start(&[
        "--spool",
        spool,
        "--min-free",
        "0",
        "--segment-size",
        "1MiB",
        "--max-buffered-message",
        "64KiB",
    ]);
    let mut c = s.client();
    let small = small_then_failing(&mut c, 6 << 20, "452 4.3.1");
    assert!(s.stop().success(), "{}", s.logs());
    assert!(s.logs().contains("store write failed"), "{}", s.logs());
    let stored = common::read_spool(fs.path().join("spool").as_path());
    assert_eq!(stored.len(), 1, "{}", s.logs());
    assert_eq!(stored[0].mail_from, "first@example.org");
    assert_eq!(stored[0].body, small.as_bytes());
    drop(s);
}

#[test]
fn a_store_error_mid_message_is_451_and_the_session_goes_on() {
    // A real I/O error that is not "full": the server runs with a 2 MiB file
    // size limit (RLIMIT_FSIZE), so writing the segment past it fails with
    // EFBIG; SIGXFSZ is ignored so the write returns the error instead.
    let limit: libc::rlim_t = 2 << 20;
    let tweak = move |cmd: &mut std::process::Command| {
        // SAFETY: between fork and exec, only async-signal-safe calls
        // (signal, setrlimit) on plain values.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    let mut s = match Server::try_start_tweaked(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--max-buffered-message", "64KiB"],
        tweak,
    ) {
        Ok(s) => s,
        Err((status, logs)) => panic!("server did not start ({status:?}):\n{logs}"),
    };
    let mut c = s.client();
    let small = small_then_failing(&mut c, 4 << 20, "451 4.3.0");
    assert!(s.stop().success(), "{}", s.logs());
    let logs = s.logs();
    assert!(logs.contains("store write failed"), "{logs}");
    assert!(!logs.contains("No space"), "not a full disk: {logs}");
    let stored = s.stored();
    assert_eq!(stored.len(), 1, "{logs}");
    assert_eq!(stored[0].mail_from, "first@example.org");
    assert_eq!(stored[0].body, small.as_bytes());
}
