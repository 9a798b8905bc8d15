//! The log never stalls a shard, and loses nothing on a clean exit (README
//! "Running the server", src/log.rs).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::Stdio;

use common::{Client, TempDir, STEP};

/// Kills the server if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// More connections than a pipe holds lines of (64 KiB at ~150 bytes each,
/// one line per connection), fewer than the log queue holds.
const CONNECTIONS: usize = 1000;

#[test]
fn a_stderr_nobody_reads_does_not_stall_the_server_and_no_line_is_lost() {
    let spool = TempDir::new("spool");
    let mut child = common::ringmx()
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .arg("--spool")
        .arg(spool.path())
        .args(["--log-level", "info", "--max-connections-per-ip", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmx");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut child = KillOnDrop(child);
    let mut logs = String::new();
    let addr: SocketAddr = loop {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0, "exited: {logs}");
        logs.push_str(&l);
        if let Some(rest) = l.split("listening on ").nth(1) {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    // Nobody reads stderr now: once the pipe is full, a server that wrote
    // its lines itself would block, and these sessions would hang (each
    // read is bounded by STEP).
    for _ in 0..CONNECTIONS {
        let mut c = Client::connect(addr);
        c.expect("220 ");
        c.send("QUIT\r\n");
        c.expect("221 ");
        c.expect_eof();
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    // Read everything; the process exits once its log is written.
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        rest
    });
    let until = std::time::Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < until,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    logs.push_str(&reader.join().unwrap());
    assert!(status.success(), "{status:?}");
    // Every per-connection line made it, in full, before the summary.
    assert_eq!(
        logs.matches(" outcome=quit\n").count(),
        CONNECTIONS,
        "{logs}"
    );
    assert!(!logs.contains("log lines dropped"), "{logs}");
    let shard = logs.find("shard 0 stopped").expect("shard summary");
    let stopped = logs.find("INFO stopped:").expect("exit summary");
    assert!(shard < stopped, "{logs}");
    assert!(logs.rfind(" outcome=quit").unwrap() < shard, "{logs}");
}
