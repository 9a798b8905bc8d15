//! Settings a user relies on, through the real binary: several `--listen`
//! addresses (IPv4 and IPv6), `--durability none`, `--group-commit-delay`,
//! and a reader (`ringmx spool ls`, `SpoolReader`) while small segments
//! rotate under load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use common::{Client, Server};

/// The shard-stop line's `key=value` counter, as a number.
fn counter(logs: &str, key: &str) -> f64 {
    let line = logs
        .lines()
        .find(|l| l.contains(" stopped: connections="))
        .unwrap_or_else(|| panic!("no shard-stop line:\n{logs}"));
    let v = line
        .split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    v.parse().unwrap_or_else(|_| panic!("{key}={v} in {line}"))
}

/// One message on a fresh connection; returns its id.
fn send_one(addr: SocketAddr, from: &str, body: &str) -> String {
    let mut c = Client::connect(addr);
    c.expect("220 ");
    c.ehlo();
    let id = c.transaction(from, "u@localhost", body);
    c.send("QUIT\r\n");
    c.expect("221 ");
    id
}

#[test]
fn every_listen_address_accepts_mail_including_ipv6() {
    let v6 = TcpListener::bind("[::1]:0").is_ok();
    // Two IPv4 addresses (the same one twice is refused as a duplicate).
    let mut base = vec!["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0"];
    if v6 {
        base.extend(["--listen", "[::1]:0"]);
    }
    base.extend(["--cores", "1"]);
    let mut s = Server::start_with(&base, &[]);
    assert_eq!(s.addrs.len(), base.len() / 2 - 1, "{}", s.logs());
    let mut want = BTreeMap::new();
    for (i, a) in s.addrs.clone().into_iter().enumerate() {
        let body = format!("Subject: via {a}\r\n\r\nlistener {i}\r\n");
        want.insert(send_one(a, &format!("l{i}@example.org"), &body), (a, body));
    }
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), want.len());
    for m in &stored {
        let (a, body) = &want[&m.id];
        assert_eq!(m.body, body.as_bytes());
        let client: SocketAddr = m.client.parse().unwrap();
        assert!(client.ip().is_loopback(), "{}", m.client);
        assert_eq!(client.is_ipv6(), a.is_ipv6(), "{} via {a}", m.client);
    }
    if !v6 {
        common::skip("no IPv6 loopback ([::1] cannot be bound): the IPv6 part did not run");
    }
}

#[test]
fn durability_none_accepts_and_stores_without_fdatasync() {
    let mut s = Server::start(&["--durability", "none"]);
    let mut c = s.client();
    c.ehlo();
    let bodies: Vec<String> = (0..5)
        .map(|i| format!("Subject: none {i}\r\n\r\nno fsync {i}\r\n"))
        .collect();
    for b in &bodies {
        c.transaction("none@example.org", "u@localhost", b);
    }
    c.send("QUIT\r\n");
    c.expect("221 ");
    assert!(s.stop().success());
    let logs = s.logs();
    assert_eq!(counter(&logs, "messages"), 5.0, "{logs}");
    assert!(counter(&logs, "spool_records") >= 5.0, "{logs}");
    // The mode that ran: nothing was synced.
    assert_eq!(counter(&logs, "fdatasyncs"), 0.0, "{logs}");
    let stored = s.stored();
    let got: Vec<&[u8]> = stored.iter().map(|m| m.body.as_slice()).collect();
    let want: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    assert_eq!(got, want);
}

#[test]
fn group_commit_delay_batches_concurrent_commits_through_the_binary() {
    // Ten clients stop just before the final dot, then send it together.
    // With a 2 s delay the first commit waits for the others (which come
    // within milliseconds), so they share fdatasyncs: fewer than commits.
    const N: usize = 10;
    let mut s = Server::start(&["--group-commit-delay", "2s"]);
    let addr = s.addr;
    let go = Arc::new(Barrier::new(N));
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let go = Arc::clone(&go);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.expect("220 ");
                c.ehlo();
                c.send(format!("MAIL FROM:<g{i}@example.org>\r\n"));
                c.expect("250 ");
                c.send("RCPT TO:<u@localhost>\r\nDATA\r\n");
                c.expect("250 ");
                c.expect("354 ");
                c.send(format!("Subject: {i}\r\n\r\ngroup {i}\r\n"));
                go.wait();
                c.send(".\r\n");
                c.expect("250 2.0.0 Ok: queued as");
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    assert!(s.stop().success());
    let logs = s.logs();
    assert_eq!(counter(&logs, "messages"), N as f64, "{logs}");
    let syncs = counter(&logs, "fdatasyncs");
    assert!(syncs >= 1.0 && syncs < N as f64, "{logs}");
    assert!(counter(&logs, "commits_per_fdatasync") > 1.0, "{logs}");
    let stored = s.stored();
    assert_eq!(stored.len(), N);
    for m in &stored {
        let i = m
            .mail_from
            .trim_start_matches('g')
            .trim_end_matches("@example.org");
        assert_eq!(
            m.body,
            format!("Subject: {i}\r\n\r\ngroup {i}\r\n").as_bytes()
        );
    }
}

#[test]
fn readers_see_a_consistent_spool_while_segments_rotate() {
    // 64 KiB segments and bodies up to 100 KiB: the writer seals and starts
    // segments all the time, and large bodies stream as fragments, while
    // `ringmx spool ls` and SpoolReader list the live spool over and over.
    let mut s = Server::start(&["--segment-size", "64KiB", "--max-buffered-message", "16KiB"]);
    let addr = s.addr;
    let spool = s.spool.path().to_owned();
    // id -> body, inserted once the 250 is read.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.expect("220 ");
                c.ehlo();
                for i in 0..40u64 {
                    let size = ((t * 40 + i) * 7919 % 100_000) as usize;
                    let line = format!("{t}-{i} {}\r\n", "r".repeat(70));
                    let body =
                        format!("Subject: {t}-{i}\r\n\r\n{}", line.repeat(size / line.len()));
                    let id = c.transaction("rot@example.org", "u@localhost", &body);
                    acked.lock().unwrap().insert(id, body);
                }
                c.send("QUIT\r\n");
                c.expect("221 ");
            })
        })
        .collect();
    let reader = {
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut rounds = 0;
            loop {
                let last = done.load(Ordering::SeqCst);
                let before: BTreeSet<String> = acked.lock().unwrap().keys().cloned().collect();
                // The library reader: every listed message reads back whole.
                let r = ringmx::spool::SpoolReader::open(&spool).unwrap();
                let mut listed = BTreeSet::new();
                for m in r.messages().expect("list the live spool") {
                    let m = m.unwrap_or_else(|e| panic!("round {rounds}: reading: {e}"));
                    let body = m.body_bytes().unwrap_or_else(|e| panic!("{}: {e}", m.id));
                    let id = m.id.to_string();
                    if let Some(want) = acked.lock().unwrap().get(&id) {
                        assert!(body == want.as_bytes(), "{id}: body differs mid-rotation");
                    }
                    assert!(listed.insert(id), "listed twice");
                }
                let missing: Vec<_> = before.difference(&listed).collect();
                assert!(
                    missing.is_empty(),
                    "acknowledged but not listed: {missing:?}"
                );
                // The CLI on the same live spool.
                let out = common::ringmx()
                    .arg("spool")
                    .arg("--spool")
                    .arg(&spool)
                    .arg("ls")
                    .output()
                    .expect("run ringmx spool ls");
                assert!(
                    out.status.success(),
                    "spool ls ({:?}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let ls: BTreeSet<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
                for id in &before {
                    assert!(
                        ls.contains(id.as_str()),
                        "spool ls misses acknowledged {id}"
                    );
                }
                rounds += 1;
                if last {
                    return rounds;
                }
            }
        })
    };
    for c in clients {
        c.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let rounds = reader.join().unwrap();
    assert!(rounds >= 2, "{rounds}");
    assert!(s.stop().success());
    let stored = s.stored();
    let acked = acked.lock().unwrap();
    assert_eq!(stored.len(), acked.len());
    for m in &stored {
        assert!(m.body == acked[&m.id].as_bytes(), "{}", m.id);
    }
    let stats = ringmx::spool::SpoolReader::open(s.spool.path())
        .unwrap()
        .disk_stats()
        .unwrap();
    let segments: u64 = stats.iter().map(|s| s.segments).sum();
    assert!(segments > 20, "too few rotations to test: {stats:?}");
}
