//! Reclaiming spool space behind the consumers, their lag, backpressure:
//! the real `ringmx serve` with small segments, consumers stood in for by
//! checkpoint files written with the outlet's own API, the spool read back.
//!
//! Determinism: the reclaimer runs every 20 ms here and logs
//! `reclaim pass N done` at debug level; a test that needs "a whole pass
//! ran after this" waits for the pass count to go up by two (the first may
//! have started before the change).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ringmx, Server, STEP};
use ringmx::outlet::checkpoint::{Checkpoint, ConsumerDir};
use ringmx::spool::{Location, SpoolReader};

const PASS: &str = "reclaim pass ";

/// A server with 4 KiB segments, 1 KiB fragments and a fast reclaimer.
fn server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--segment-size",
        "4k",
        "--max-buffered-message",
        "1k",
        "--log-level",
        "debug",
    ];
    if !extra.contains(&"--reclaim-interval") {
        args.extend_from_slice(&["--reclaim-interval", "20ms"]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Waits until two more reclaim passes have finished than had when called.
fn two_passes(s: &Server) {
    let done = s.logs().lines().filter(|l| l.contains(PASS)).count();
    assert!(
        s.wait_log_nth(PASS, done + 2, STEP).is_some(),
        "no reclaim pass ran:\n{}",
        s.logs()
    );
}

fn shard_dir(spool: &Path) -> PathBuf {
    spool.join("shard-0")
}

/// Segment sequence numbers of shard 0, ascending.
fn segments(spool: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(shard_dir(spool))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            let hex = n.strip_prefix("ringmx-v2-")?.strip_suffix(".seg")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn seg_len(spool: &Path, seq: u64) -> u64 {
    std::fs::metadata(shard_dir(spool).join(format!("ringmx-v2-{seq:016x}.seg")))
        .unwrap()
        .len()
}

/// Stands in for a consumer: registers it and stores its position.
fn consumer_at(spool: &Path, name: &str, at: Option<Location>) {
    let c = ConsumerDir::new(spool, name).unwrap();
    c.create().unwrap();
    match at {
        Some(position) => c
            .write(
                0,
                &Checkpoint {
                    position,
                    shipped: 0,
                    written_unix: 0,
                },
            )
            .unwrap(),
        None => c.clear(0).unwrap(),
    }
}

/// The end of the newest segment: a consumer that has shipped everything.
/// Where a consumer that shipped everything stands: the end of the newest
/// segment's records (not of its file, which may hold zeros written ahead).
fn caught_up(spool: &Path) -> Location {
    SpoolReader::open(spool)
        .unwrap()
        .shard_end(0)
        .unwrap()
        .unwrap()
}

fn start_of(segment: u64) -> Location {
    Location { segment, offset: 0 }
}

/// A body of `len` bytes of CRLF lines, distinct per `seed`, no leading dots.
fn body(len: usize, seed: u64) -> String {
    let mut s = String::with_capacity(len + 80);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!("line {seed} {i} abcdefghijklmnopqrstuvwxyz\r\n"));
        i += 1;
    }
    s
}

/// Sends `n` messages of about `len` bytes on one connection; their ids.
fn send(s: &Server, n: usize, len: usize, seed: u64) -> Vec<String> {
    let mut c = s.client();
    c.ehlo();
    let ids = (0..n)
        .map(|i| c.transaction("a@example.org", "b@localhost", &body(len, seed + i as u64)))
        .collect();
    c.send("QUIT\r\n");
    c.expect("221 ");
    ids
}

fn body_of(spool: &Path, id: &str) -> Vec<u8> {
    let r = SpoolReader::open(spool).unwrap();
    r.get(id.parse().unwrap()).unwrap().body_bytes().unwrap()
}

fn cli(spool: &Path, args: &[&str]) -> (bool, String, String) {
    let o = ringmx()
        .arg("spool")
        .arg("--spool")
        .arg(spool)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn verify_clean(spool: &Path) {
    let (ok, out, err) = cli(spool, &["verify"]);
    assert!(ok && out.contains("verify: ok"), "{out}{err}");
}

#[test]
fn consumed_sealed_segments_go_the_newest_two_and_unconsumed_never() {
    let mut s = server(&[]);
    let spool = s.spool.path().to_owned();
    let ids = send(&s, 24, 700, 0);
    let before = segments(&spool);
    assert!(before.len() >= 5, "segments rotated: {before:?}");

    // No consumer registered: nothing ships, nothing goes.
    two_passes(&s);
    assert_eq!(segments(&spool), before);
    assert!(s
        .logs()
        .contains("not reclaiming space: shard 0: no consumer is registered"));

    // One consumer halfway, one with no checkpoint (at the very start).
    let mid = before[before.len() / 2];
    consumer_at(&spool, "half", Some(start_of(mid)));
    consumer_at(&spool, "fresh", None);
    two_passes(&s);
    assert_eq!(
        segments(&spool),
        before,
        "a consumer at the start holds all"
    );

    // Both past the first half: exactly the segments before `mid` go.
    consumer_at(&spool, "fresh", Some(caught_up(&spool)));
    two_passes(&s);
    let after: Vec<u64> = before.iter().copied().filter(|&q| q >= mid).collect();
    assert_eq!(segments(&spool), after);
    let line = s.wait_log("reclaimed ", STEP).unwrap();
    assert!(
        line.contains(&format!(
            "reclaimed {} segments",
            before.len() - after.len()
        )),
        "{line}"
    );

    // Everyone caught up: all but the newest and the newest sealed go;
    // those two never (the one being written is not sealed yet).
    consumer_at(&spool, "half", Some(caught_up(&spool)));
    two_passes(&s);
    assert_eq!(segments(&spool), before[before.len() - 2..].to_vec());

    // What is left reads back whole, and nothing dangles.
    s.stop();
    let left = s.stored();
    assert!(!left.is_empty() && left.len() < ids.len());
    for m in &left {
        let i = ids.iter().position(|x| *x == m.id).unwrap();
        assert_eq!(m.body, body(700, i as u64).into_bytes());
    }
    verify_clean(&spool);
}

#[test]
fn fragments_before_their_commit_survive_a_consumer_between_them() {
    let mut s = server(&[]);
    let spool = s.spool.path().to_owned();
    send(&s, 6, 700, 100);
    let initial = segments(&spool)[0];
    // The big body's first fragment lands here or, if it rotates, next.
    let first = *segments(&spool).last().unwrap();
    // 20 KiB streamed in 1 KiB fragments across about five 4 KiB segments.
    let big = send(&s, 1, 20 << 10, 7).remove(0);
    let at = SpoolReader::open(&spool)
        .unwrap()
        .get(big.parse().unwrap())
        .unwrap()
        .location;
    assert!(
        at.segment > first + 2,
        "the commit lies segments after its first fragment"
    );
    send(&s, 6, 700, 200); // seal the commit's segment behind it

    // The consumer is in the commit's segment, before the commit: the
    // segments before it hold the body's start and must stay.
    consumer_at(&spool, "c", Some(start_of(at.segment)));
    two_passes(&s);
    let segs = segments(&spool);
    assert!(segs[0] > initial, "older segments went: {segs:?}");
    assert!(
        segs[0] <= first + 1,
        "the first fragment's segment stays: {segs:?}"
    );
    assert_eq!(body_of(&spool, &big), body(20 << 10, 7).into_bytes());

    // Shipped, but its Commit record stays in a kept segment: its
    // fragments stay too, so the spool never holds a dangling message.
    let past = Location {
        segment: at.segment,
        offset: at.offset + 1,
    };
    consumer_at(&spool, "c", Some(past));
    two_passes(&s);
    assert!(segments(&spool)[0] <= first + 1);
    assert_eq!(body_of(&spool, &big), body(20 << 10, 7).into_bytes());

    // Once the commit's own segment is passed, all of it goes.
    consumer_at(&spool, "c", Some(start_of(at.segment + 1)));
    two_passes(&s);
    assert!(*segments(&spool).first().unwrap() > at.segment);
    s.stop();
    verify_clean(&spool);
}

#[test]
fn a_message_streaming_across_rotations_survives_a_caught_up_consumer() {
    let mut s = server(&[]);
    let spool = s.spool.path().to_owned();
    send(&s, 6, 700, 300);
    let old = segments(&spool);

    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<slow@example.org>\r\n");
    c.expect("250 ");
    c.send("RCPT TO:<b@localhost>\r\n");
    c.expect("250 ");
    c.send("DATA\r\n");
    c.expect("354 ");
    let data = body(24 << 10, 9);
    let mut rotated = 0;
    for chunk in data.as_bytes().chunks(2048) {
        c.send(chunk);
        // Another client keeps rotating segments meanwhile.
        send(&s, 1, 1500, 400);
        // The consumer has shipped everything committed: only the pin of
        // the message in flight holds its fragments.
        consumer_at(&spool, "c", Some(caught_up(&spool)));
        two_passes(&s);
        rotated = rotated.max(segments(&spool).len());
    }
    c.send(".\r\n");
    let id = c
        .expect("250 2.0.0 Ok: queued as ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    // The reclaimer did run: segments from before the message went.
    assert!(old.len() >= 2 && !segments(&spool).contains(&old[0]));
    assert_eq!(body_of(&spool, &id), data.as_bytes());
    assert!(rotated >= 3, "segments rotated under the message");
    c.send("QUIT\r\n");
    c.expect("221 ");
    s.stop();
    assert_eq!(body_of(&spool, &id), data.as_bytes());
    verify_clean(&spool);
}

/// Sets a file's modification time `ago` in the past.
fn age(path: &Path, ago: Duration) {
    let t = std::time::SystemTime::now() - ago;
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn retention_keeps_consumed_segments_until_they_are_old_enough() {
    let mut s = server(&["--retention", "1h"]);
    let spool = s.spool.path().to_owned();
    send(&s, 20, 700, 500);
    let before = segments(&spool);
    consumer_at(&spool, "c", Some(caught_up(&spool)));
    two_passes(&s);
    assert_eq!(segments(&spool), before, "all younger than the retention");
    // The two oldest sealed two hours ago: they, and only they, go.
    for q in &before[..2] {
        age(
            &shard_dir(&spool).join(format!("ringmx-v2-{q:016x}.seg")),
            Duration::from_secs(7200),
        );
    }
    two_passes(&s);
    assert_eq!(segments(&spool), before[2..].to_vec());
    s.stop();
    verify_clean(&spool);
}

#[test]
fn spool_gc_by_hand_dry_run_then_real_and_refused_under_a_server() {
    let mut s = server(&["--reclaim-interval", "1h"]);
    let spool = s.spool.path().to_owned();
    send(&s, 20, 700, 600);
    consumer_at(&spool, "c", Some(caught_up(&spool)));
    let (ok, out, err) = cli(&spool, &["gc"]);
    assert!(
        !ok && err.contains("reclaims space on its own"),
        "{out}{err}"
    );
    s.stop();

    let before = segments(&spool);
    let (ok, out, err) = cli(&spool, &["gc", "--dry-run"]);
    assert!(ok, "{err}");
    let lines = |out: &str, verb: &str| out.lines().filter(|l| l.starts_with(verb)).count();
    // All but the newest and the newest sealed (the one before it).
    assert_eq!(lines(&out, "would remove "), before.len() - 2, "{out}");
    assert_eq!(segments(&spool), before);
    let (ok, out, err) = cli(&spool, &["gc", "--retention", "1h"]);
    assert!(ok && out.contains("gc: removed 0 segments"), "{out}{err}");
    // With no consumer nothing ever goes.
    let c = ConsumerDir::new(&spool, "c").unwrap();
    let cp = c.read(0).unwrap().unwrap();
    c.remove().unwrap();
    let (ok, out, _) = cli(&spool, &["gc"]);
    assert!(ok && out.contains("no consumer is registered"), "{out}");
    assert_eq!(segments(&spool), before);
    c.create().unwrap();
    c.write(0, &cp).unwrap();
    let (ok, out, err) = cli(&spool, &["gc"]);
    assert!(ok, "{err}");
    assert_eq!(lines(&out, "removed "), before.len() - 2, "{out}");
    assert!(out.contains(&format!("gc: removed {} segments", before.len() - 2)));
    assert_eq!(segments(&spool), before[before.len() - 2..].to_vec());
    verify_clean(&spool);
}

#[test]
fn spool_stats_shows_each_consumers_lag() {
    let mut s = server(&[]);
    let spool = s.spool.path().to_owned();
    send(&s, 5, 700, 700);
    let mid = caught_up(&spool);
    send(&s, 3, 900, 800);
    s.stop();
    consumer_at(&spool, "behind", Some(mid));
    consumer_at(&spool, "fresh", None);
    let broken = ConsumerDir::new(&spool, "broken").unwrap();
    broken.create().unwrap();
    std::fs::write(broken.dir().join("shard-0.checkpoint"), "garbage").unwrap();

    let (ok, out, err) = cli(&spool, &["stats", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = v["consumers"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["consumer"] == name).unwrap().clone();
    let total_body: u64 = (0..5).map(|i| body(700, 700 + i).len() as u64).sum::<u64>()
        + (0..3).map(|i| body(900, 800 + i).len() as u64).sum::<u64>();
    assert_eq!(row("fresh")["messages"], 8);
    assert_eq!(row("fresh")["body_bytes"], total_body);
    assert!(row("fresh")["oldest_age_secs"].as_i64().unwrap() >= 0);
    assert_eq!(row("behind")["messages"], 3);
    let behind: u64 = (0..3).map(|i| body(900, 800 + i).len() as u64).sum();
    assert_eq!(row("behind")["body_bytes"], behind);
    assert!(row("broken")["error"]
        .as_str()
        .unwrap()
        .contains("checkpoint"));
    let (ok, out, err) = cli(&spool, &["stats"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("broken") && out.contains("damaged checkpoint"),
        "{out}"
    );
}

#[test]
fn backpressure_refuses_at_mail_past_the_high_mark_and_resumes_below_the_low() {
    let s = server(&["--lag-high", "16k", "--lag-low", "6k"]);
    let spool = s.spool.path().to_owned();
    consumer_at(&spool, "c", None);
    // A consumer that ships nothing: messages pile up until the reclaimer
    // sees the lag past the high mark and MAIL is refused.
    let mut c = s.client();
    c.ehlo();
    let mut sent = 0;
    loop {
        c.send("MAIL FROM:<a@example.org>\r\n");
        let r = c.reply().pop().unwrap();
        if r.starts_with("452 4.3.1 ") {
            break;
        }
        assert!(r.starts_with("250 ") && sent < 200, "{r} after {sent}");
        c.send("RCPT TO:<b@localhost>\r\nDATA\r\n");
        c.expect("250 ");
        c.expect("354 ");
        c.send(body(1000, sent));
        c.send(".\r\n");
        c.expect("250 ");
        sent += 1;
    }
    let lag: u64 = segments(&spool).iter().map(|q| seg_len(&spool, *q)).sum();
    assert!(lag > 16 << 10, "refused only past the high mark: {lag}");
    // A temporary refusal, not a client error: the session goes on.
    c.send("NOOP\r\n");
    c.expect("250 ");
    assert!(s
        .wait_log("NOQUEUE: reject: MAIL from", STEP)
        .is_some_and(|l| l.contains("452 4.3.1")));

    // Shipped down to under the high mark but above the low: still refused.
    let mut segs = segments(&spool);
    let total: u64 = segs.iter().map(|q| seg_len(&spool, *q)).sum();
    let mut at = 0;
    let mut left = total;
    while left > 12 << 10 {
        left -= seg_len(&spool, segs[at]);
        at += 1;
    }
    assert!(left < 16 << 10 && left > 6 << 10, "{left}");
    consumer_at(&spool, "c", Some(start_of(segs[at])));
    two_passes(&s);
    c.send("MAIL FROM:<a@example.org>\r\n");
    c.expect("452 4.3.1 ");

    // Under the low mark: accepted again.
    consumer_at(&spool, "c", Some(caught_up(&spool)));
    two_passes(&s);
    c.send("MAIL FROM:<a@example.org>\r\n");
    c.expect("250 ");
    segs = segments(&spool);
    // All but the one being written and the newest sealed one.
    assert_eq!(segs.len(), 2, "and the shipped segments went");
}

#[test]
fn a_segment_left_unsealed_is_kept_and_later_ones_still_go() {
    let mut s = server(&[]);
    let spool = s.spool.path().to_owned();
    send(&s, 20, 700, 1000);
    s.stop();
    let before = segments(&spool);
    // As a failed seal leaves it: the records intact, no seal at the end
    // (28-byte record header + 16-byte seal payload).
    let unsealed = before[1];
    let path = shard_dir(&spool).join(format!("ringmx-v2-{unsealed:016x}.seg"));
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_len(seg_len(&spool, unsealed) - 44).unwrap();
    consumer_at(&spool, "c", Some(caught_up(&spool)));
    let (ok, out, err) = cli(&spool, &["gc"]);
    assert!(ok, "{out}{err}");
    // Kept: the unsealed one, and the newest sealed one and after it.
    let newest_sealed = before[..before.len() - 1]
        .iter()
        .rev()
        .find(|&&q| q != unsealed)
        .copied()
        .unwrap();
    assert!(unsealed < newest_sealed, "{before:?}");
    let kept: Vec<u64> = before
        .iter()
        .copied()
        .filter(|&q| q == unsealed || q >= newest_sealed)
        .collect();
    assert!(kept.len() < before.len(), "later ones still go: {before:?}");
    assert_eq!(segments(&spool), kept, "{out}");
}
