//! Crash tests (issue 4): a real server under load from many connections is
//! killed with SIGKILL; every message a client got `250 ... queued as ID`
//! for is in the spool after a restart, byte-identical (body and envelope),
//! and nothing the server did not acknowledge is committed, except messages
//! whose end of data was sent but whose reply never came (in doubt).
//!
//! Each kill is checked twice: straight after it (the reader must cope with
//! whatever the dead server left) and after a restart has run recovery, a
//! probe message went through and the server stopped cleanly; recovery must
//! neither lose nor surface a message, and `ringmx spool verify` must pass.
//!
//! A kill with SIGKILL keeps the page cache, so these tests cannot tell a
//! message written from one fdatasync'd; what they check is the order of
//! things (no `250` before the record is written, no commit record before
//! the whole body), the reader and recovery on real crash leftovers, and
//! ids that stay unique across restarts. A killed server rarely leaves a
//! torn record, so after the second and third kill the test also tears what
//! a power loss could (`crash::power_cut`: the bytes after the last
//! acknowledged record of each shard's newest segment) and recovery must cut
//! it without losing an acknowledged message.
//!
//! `RINGMX_CRASH_SEED=<n>` repeats a run's choices (sizes, delays, split
//! points); the timing of a crash never repeats exactly.

mod common;
#[path = "common/crash.rs"]
mod crash;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TempDir, STEP};
use crash::{Conn, Fate, Ledger, Load, Mix, Next, Rng, Spec};
use ringmx::spool::SpoolReader;

/// Load clients of the main test.
const CLIENTS: usize = 32;

/// Mostly small messages; some that a fragment size of 16 or 64 KiB streams,
/// a few that even the default 256 KiB does; BDAT, dot-stuffed lines, and
/// clients that hang up mid-body.
const MIX: Mix = Mix {
    medium_pct: 10,
    large_pct: 2,
    bdat_pct: 25,
    dots_pct: 40,
    abandon_pct: 3,
};

/// The shard of a queue id (its last 3 characters), for ordering ids.
fn shard_of(id: &str) -> &str {
    &id[id.len() - 3..]
}

/// The largest id per shard.
fn newest_per_shard(ids: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    let mut m: BTreeMap<&str, &str> = BTreeMap::new();
    for id in ids.keys() {
        let e = m.entry(shard_of(id)).or_insert(id);
        if id.as_str() > *e {
            *e = id;
        }
    }
    m
}

/// After a crash: restart (recovery), one probe message, clean stop, then
/// the spool checked again. `before` is what the spool held straight after
/// the kill; `power_cut` says the spool was torn since (see
/// [`crash::power_cut`]), so messages not acknowledged may have gone.
/// Returns what the spool holds and the recovery log lines.
fn restart_and_check(
    spool: &std::path::Path,
    extra: &[&str],
    ledger: &mut Ledger,
    before: &crash::Found,
    power_cut: bool,
    tag: &str,
    seed: u64,
) -> (crash::Found, Vec<String>) {
    let mut s = crash::start_on(spool, extra);
    let probe = crash::probe(s.addr, &format!("probe.{tag}@crash.example"), seed);
    let Fate::Acked(probe_id) = probe.fate.clone() else {
        unreachable!()
    };
    // Ids keep growing across the crash on each shard (SPOOL-FORMAT.md, "Queue ids").
    if let Some(newest) = newest_per_shard(&before.ids).get(shard_of(&probe_id)) {
        assert!(
            probe_id.as_str() > *newest,
            "{tag}: id {probe_id} issued after the restart is not above {newest}"
        );
    }
    ledger.add(probe);
    let status = s.stop();
    assert!(
        status.success(),
        "{tag}: restarted server: {status:?}\n{}",
        s.logs()
    );
    // "spool shard=N recovery: FILE: what", the file without the spool path.
    let dir = format!("{}/", spool.display());
    let recovery: Vec<String> = s
        .logs()
        .lines()
        .filter_map(|l| l.find("spool shard=").map(|at| l[at..].replace(&dir, "")))
        .filter(|l| l.contains("recovery"))
        .collect();
    let after = crash::check(spool, ledger, &format!("{tag}: after the restart"));
    // Recovery only cuts what is not an intact record: after a kill, the
    // same messages as before, plus the probe. After a power cut, some of
    // them may be gone, and `check` made sure none of those was acknowledged.
    let mut expected = before.ids.clone();
    expected.insert(probe_id, format!("probe.{tag}@crash.example"));
    let unexpected: Vec<_> = after
        .ids
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    let gone: Vec<_> = expected
        .keys()
        .filter(|id| !after.ids.contains_key(*id))
        .collect();
    assert!(
        unexpected.is_empty() && (power_cut || gone.is_empty()),
        "{tag}: recovery changed the set of committed messages: new {unexpected:?}, \
         gone {gone:?}\n{}",
        recovery.join("\n")
    );
    crash::verify_cli(spool);
    (after, recovery)
}

/// A spool directory that outlives a failing test, so what a rare failure
/// left on disk can be read (`ringmx spool verify/ls --spool DIR`); a
/// passing test removes it as usual.
struct KeptOnFailure(Option<TempDir>);

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("spool kept for inspection: {}", dir.path().display());
                std::mem::forget(dir);
            }
        }
    }
}

#[test]
fn acknowledged_mail_survives_sigkill_under_load() {
    common::raise_nofile(4096);
    let seed = crash::seed(0x0052_494E_474D_5831);
    println!("seed {seed:#x} (set RINGMX_CRASH_SEED to repeat its choices)");
    let mut rng = Rng::new(seed);
    // One spool through every iteration: each start after the first
    // recovers the previous crash, and every earlier message must stay.
    let spool = KeptOnFailure(Some(TempDir::new("crash")));
    let spool = spool.0.as_ref().unwrap();
    let mut ledger = Ledger::default();
    // Default segments and fragments; then small segments (rotation under
    // load, commits whose fragments lie in older segments) and small fragments.
    let configs: [&[&str]; 3] = [
        &[],
        &["--segment-size", "2MiB", "--max-buffered-message", "16KiB"],
        &[
            "--segment-size",
            "512KiB",
            "--max-buffered-message",
            "64KiB",
        ],
    ];
    let mut acked_so_far = 0;
    for (iter, extra) in configs.iter().enumerate() {
        let t0 = Instant::now();
        let tag = format!("i{iter}");
        let iter_seed = rng.next();
        let delay = Duration::from_millis(rng.range(300, 1500));
        let mut s = crash::start_on(spool.path(), extra);
        let load = Load::start(s.addr, CLIENTS, &tag, iter_seed, MIX);
        std::thread::sleep(delay);
        crash::kill(&mut s, &load.killing);
        let log = load.join();
        assert!(
            log.early_errors.is_empty(),
            "{tag}: clients failed before the kill:\n{}\n--- server log ---\n{}",
            log.early_errors.join("\n"),
            s.logs()
        );
        let first = ledger.attempts.len();
        for a in log.attempts {
            ledger.add(a);
        }
        let this = &ledger.attempts[first..];
        let count = |f: fn(&Fate) -> bool| this.iter().filter(|a| f(&a.fate)).count();
        let acked = count(|f| matches!(f, Fate::Acked(_)));
        let in_doubt = count(|f| matches!(f, Fate::InDoubt));
        let not_sent = count(|f| matches!(f, Fate::NotSent));
        let abandoned = count(|f| matches!(f, Fate::Abandoned));
        let refused = count(|f| matches!(f, Fate::Refused(_)));
        let doubtful: Vec<String> = this
            .iter()
            .filter(|a| a.fate == Fate::InDoubt)
            .map(|a| a.spec.from.clone())
            .collect();
        let attempts = this.len();
        assert_eq!(refused, 0, "{tag}: the server refused messages");
        assert!(
            acked > 0,
            "{tag}: no message was acknowledged before the kill"
        );

        let before = crash::check(spool.path(), &ledger, &format!("{tag}: after SIGKILL"));
        // After the second and third kill, also lose what a power loss
        // could have: bytes that no fdatasync had to cover yet.
        let (torn, power_cut) = if iter > 0 {
            crash::power_cut(spool.path(), &ledger, &mut Rng::new(!iter_seed))
        } else {
            (Vec::new(), false)
        };
        let (after, recovery) = restart_and_check(
            spool.path(),
            extra,
            &mut ledger,
            &before,
            power_cut,
            &tag,
            iter_seed,
        );
        acked_so_far += acked + 1;
        let senders: HashSet<&String> = after.ids.values().collect();
        let found_now = senders
            .iter()
            .filter(|f| f.starts_with(&format!("{tag}.")))
            .count();
        let doubtful_found = doubtful.iter().filter(|f| senders.contains(f)).count();
        println!(
            "{tag}: load {} ms, {} attempts: acked {acked}, in doubt {in_doubt} \
             (committed {}), not sent {not_sent}, abandoned {abandoned}; \
             found {found_now} of this run, {} in the spool ({acked_so_far} acked in all), \
             orphan fragments {}, power cut: {}, recovery: {}; {} ms",
            delay.as_millis(),
            attempts,
            doubtful_found,
            after.ids.len(),
            after.orphan_fragments,
            if torn.is_empty() {
                "none".to_owned()
            } else {
                torn.join("; ")
            },
            if recovery.is_empty() {
                "nothing to cut".to_owned()
            } else {
                recovery.join(" | ")
            },
            t0.elapsed().as_millis()
        );
    }
}

/// Fragment records on disk (read while the server runs). The small
/// messages of the large-message test never stream, so these are the large
/// message's.
fn fragments_on_disk(spool: &std::path::Path) -> u64 {
    SpoolReader::open(spool)
        .and_then(|r| r.disk_stats())
        .map(|shards| shards.iter().map(|s| s.fragments).sum())
        .unwrap_or_else(|e| panic!("reading the live spool's disk stats: {e}"))
}

#[test]
fn a_large_message_cut_off_mid_stream_never_surfaces() {
    common::raise_nofile(1024);
    let seed = crash::seed(0x0052_494E_474D_5832);
    println!("seed {seed:#x} (set RINGMX_CRASH_SEED to repeat its choices)");
    let mut rng = Rng::new(seed);
    // Once with DATA, once with BDAT.
    for (iter, bdat) in [false, true].into_iter().enumerate() {
        let t0 = Instant::now();
        let tag = format!("big{iter}");
        let iter_seed = rng.next();
        let spool = TempDir::new("crash-big");
        let mut ledger = Ledger::default();
        let mut s = crash::start_on(spool.path(), &[]);
        let addr = s.addr;
        let load = Load::start(addr, 8, &tag, iter_seed, Mix::SMALL);
        // 20 MiB at about 16 MiB/s: streamed as 256 KiB fragments for
        // more than a second, far longer than it takes to reach the kill.
        let big = Spec {
            from: format!("{tag}.large@crash.example"),
            params: if bdat {
                "BODY=BINARYMIME"
            } else {
                "SIZE=20971520"
            }
            .to_owned(),
            rcpts: vec!["big@example.com".to_owned()],
            body_seed: rng.next(),
            size: 20 << 20,
            dots: true,
            bdat,
            abandon: false,
        };
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let (spec, sent, killing) = (big.clone(), Arc::clone(&sent), Arc::clone(&load.killing));
            let mut r = Rng::new(iter_seed);
            std::thread::spawn(move || {
                let mut c = Conn::open(addr).expect("large message: connect");
                let pace = Some((64 << 10, Duration::from_millis(4), &*sent));
                let (fate, next) = crash::transaction(&mut c, &spec, &mut r, pace);
                if let Next::Dead(why) = &next {
                    assert!(
                        killing.load(Ordering::SeqCst),
                        "large message failed before the kill: {why}"
                    );
                }
                fate
            })
        };
        // Kill once some of its fragments are on disk and small mail flows.
        let want_frags = rng.range(4, 16);
        let until = Instant::now() + STEP;
        loop {
            let frags = fragments_on_disk(spool.path());
            if frags >= want_frags && load.acked.load(Ordering::Relaxed) >= 20 {
                break;
            }
            assert!(
                !sender.is_finished(),
                "{tag}: the large message ended before the kill ({} bytes sent, \
                 {frags} fragments on disk)",
                sent.load(Ordering::Relaxed)
            );
            assert!(
                Instant::now() < until,
                "{tag}: {frags} of {want_frags} fragments on disk, {} small messages acked",
                load.acked.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        crash::kill(&mut s, &load.killing);
        let big_fate = sender.join().expect("large message sender panicked");
        assert_eq!(big_fate, Fate::NotSent, "{tag}: the large message's fate");
        let log = load.join();
        assert!(
            log.early_errors.is_empty(),
            "{tag}: clients failed before the kill:\n{}\n--- server log ---\n{}",
            log.early_errors.join("\n"),
            s.logs()
        );
        ledger.add(crash::Attempt {
            spec: big,
            fate: big_fate,
        });
        for a in log.attempts {
            ledger.add(a);
        }
        let acked = ledger.count(|f| matches!(f, Fate::Acked(_)));
        let in_doubt = ledger.count(|f| *f == Fate::InDoubt);

        // `check` fails on a committed message that was not fully sent, so
        // the large one must not be visible, before or after recovery.
        let before = crash::check(spool.path(), &ledger, &format!("{tag}: after SIGKILL"));
        let (after, recovery) = restart_and_check(
            spool.path(),
            &[],
            &mut ledger,
            &before,
            false,
            &tag,
            iter_seed,
        );
        // Its fragments are on disk, dead space that no commit lists.
        assert!(
            after.orphan_fragments >= want_frags,
            "{tag}: {} orphan fragments after the restart, expected at least {want_frags}",
            after.orphan_fragments
        );
        println!(
            "{tag} ({}): large message killed after {} KiB sent, {} orphan fragments; \
             small: acked {acked}, in doubt {in_doubt} (committed {}); found {} in the spool \
             (probe included); recovery: {}; {} ms",
            if bdat { "BDAT" } else { "DATA" },
            sent.load(Ordering::Relaxed) >> 10,
            after.orphan_fragments,
            after.in_doubt,
            after.ids.len(),
            if recovery.is_empty() {
                "nothing to cut".to_owned()
            } else {
                recovery.join(" | ")
            },
            t0.elapsed().as_millis()
        );
    }
}
