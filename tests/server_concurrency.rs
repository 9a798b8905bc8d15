//! 2,000 concurrent connections, each a full transaction; all succeed.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Client, Server};

const CONNECTIONS: usize = 2000;

#[test]
fn two_thousand_concurrent_transactions() {
    // Client and server sockets both live in this test's process tree.
    common::raise_nofile(4 * CONNECTIONS as u64 + 256);
    let mut s = Server::start_with(&["--listen", "127.0.0.1:0", "--cores", "2"], &[]);
    let addr = s.addr;
    // Every client connects and reads its greeting, then all go on together,
    // so all 2,000 sessions are open at the same time.
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut c = Client::connect(addr);
                    c.expect("220 ");
                    barrier.wait();
                    c.send(format!("EHLO c{i}.example\r\n"));
                    c.expect("250 ");
                    c.transaction(
                        &format!("s{i}@example.org"),
                        "u@localhost",
                        &format!("Subject: {i}\r\n\r\nconcurrent {i}\r\n"),
                    );
                    c.send("QUIT\r\n");
                    c.expect("221 ");
                    assert!(c.closed_within(Duration::from_secs(20)));
                })
                .unwrap()
        })
        .collect();
    let failed = threads
        .into_iter()
        .map(|t| t.join())
        .filter(Result::is_err)
        .count();
    assert_eq!(
        failed,
        0,
        "{failed} of {CONNECTIONS} clients failed\n{}",
        s.logs()
    );
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), CONNECTIONS);
    let mut froms: Vec<_> = stored.iter().map(|m| m.mail_from.clone()).collect();
    froms.sort();
    froms.dedup();
    assert_eq!(froms.len(), CONNECTIONS);
    // Each body is its sender's, byte for byte.
    for m in &stored {
        let i = m
            .mail_from
            .trim_start_matches('s')
            .trim_end_matches("@example.org");
        assert_eq!(
            m.body,
            format!("Subject: {i}\r\n\r\nconcurrent {i}\r\n").as_bytes()
        );
    }
    let logs = s.logs();
    assert_eq!(logs.matches("outcome=quit").count(), CONNECTIONS);
    // Both shards took a share (SO_REUSEPORT spreads connections by hash).
    for shard in 0..2 {
        assert!(
            logs.contains(&format!("shard={shard} duration_ms")),
            "shard {shard} idle"
        );
    }
}
