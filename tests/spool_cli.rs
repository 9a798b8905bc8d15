//! `ringmx spool ls | cat | export | verify | stats` against a spool written
//! through the public `ShardSpool` API (two shards, small segments, small
//! and streamed messages), run as the built binary: stdout, stderr and the
//! exit status are what is checked.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringmx::config::{Durability, SpoolConfig};
use ringmx::spool::{EnvelopeRecord, QueueId, ShardSpool, SpoolError, SpoolReader};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ringmx-spool-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor")
}

fn cfg() -> SpoolConfig {
    SpoolConfig {
        dir: PathBuf::new(),
        segment_bytes: 8 << 10,
        durability: Durability::None,
        max_buffered_message_bytes: 1024,
        min_free_bytes: 0,
        ..SpoolConfig::default()
    }
}

/// A body that exercises mbox quoting, bare CR and a long streamed tail.
fn body(i: usize) -> Vec<u8> {
    let mut b =
        format!("Subject: message {i}\r\n\r\nFrom the start.\r\n>From quoted.\r\nbare\rCR\r\n")
            .into_bytes();
    for n in 0..(i % 4) * 120 {
        b.extend_from_slice(format!("line {n} of message {i}\r\n").as_bytes());
    }
    b
}

/// Writes 12 messages over shards 0 and 1; returns id -> (from, body).
fn write_spool(root: &Path) -> BTreeMap<QueueId, (String, Vec<u8>)> {
    executor().run(async {
        let mut out = BTreeMap::new();
        for shard in 0..2 {
            let spool = ShardSpool::open(root, shard, &cfg()).await.unwrap();
            for i in 0..6 {
                let from = if i == 3 {
                    String::new()
                } else {
                    format!("s{i}@example.org")
                };
                let rcpts = ["a@example.com", "b@example.com"];
                let env = EnvelopeRecord {
                    arrival_unix: 1_795_959_882 + i as i64,
                    client: Some("192.0.2.1:4000".parse().unwrap()),
                    helo: "client.example",
                    mail_from: &from,
                    mail_params: "BODY=8BITMIME",
                    rcpts: &rcpts,
                    tls: None,
                    auth: None,
                };
                let id = spool.next_queue_id();
                let rec = format!("Received: from client.example\r\n\tby mx.example id {id}\r\n");
                let mut w = spool.begin(id, &env, rec.as_bytes()).unwrap();
                let b = body(i);
                for c in b.chunks(333) {
                    w.write(c).await.unwrap();
                }
                assert_eq!(w.commit().await.unwrap(), id);
                out.insert(id, (from, b));
            }
            spool.close().await.unwrap();
        }
        out
    })
}

/// How `ringmx spool` ended when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Exit status 0, nothing on stderr.
    Clean,
    /// Exit status 1, nothing on stderr: `verify` found damage.
    Problems,
}

/// Runs `ringmx spool --spool ROOT ARGS...`: the outcome (or, on failure,
/// its stderr) and the raw stdout.
fn run_raw<S: AsRef<OsStr>>(root: &Path, args: &[S]) -> (Result<Outcome, String>, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .arg("spool")
        .arg("--spool")
        .arg(root)
        .args(args)
        .output()
        .expect("running ringmx");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let r = match (out.status.code(), stderr.is_empty()) {
        (Some(0), true) => Ok(Outcome::Clean),
        (Some(1), true) => Ok(Outcome::Problems),
        (Some(1), false) => Err(stderr),
        (code, _) => panic!("ringmx spool {code:?}: {stderr}"),
    };
    (r, out.stdout)
}

fn run<S: AsRef<OsStr>>(root: &Path, args: &[S]) -> (Result<Outcome, String>, String) {
    let (r, out) = run_raw(root, args);
    (r, String::from_utf8(out).unwrap())
}

fn export(root: &Path, format: &str, dir: &Path) -> (Result<Outcome, String>, String) {
    let args: [&OsStr; 4] = [
        "export".as_ref(),
        "--format".as_ref(),
        format.as_ref(),
        dir.as_ref(),
    ];
    run(root, &args)
}

fn cat(root: &Path, id: QueueId) -> Vec<u8> {
    let (r, out) = run_raw(root, &["cat", id.as_str()]);
    assert_eq!(r.unwrap(), Outcome::Clean);
    out
}

#[test]
fn spool_ls_lists_every_committed_message_as_text_and_json() {
    let d = TempDir::new("ls");
    let want = write_spool(&d.0);
    let (r, text) = run(&d.0, &["ls"]);
    assert_eq!(r.unwrap(), Outcome::Clean);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len(), "{text}");
    for (line, (id, (from, b))) in lines.iter().zip(&want) {
        assert!(line.starts_with(id.as_str()), "{line}");
        assert!(line.contains(&format!("<{from}>")), "{line}");
        assert!(line.contains(&format!(" {} ", b.len())), "{line}");
        assert!(line.ends_with("a@example.com,b@example.com"), "{line}");
    }
    let (r, json) = run(&d.0, &["ls", "--json"]);
    assert_eq!(r.unwrap(), Outcome::Clean);
    let mut seen = BTreeMap::new();
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id: QueueId = v["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(v["shard"], id.shard());
        assert_eq!(
            v["rcpts"],
            serde_json::json!(["a@example.com", "b@example.com"])
        );
        assert_eq!(v["client"], "192.0.2.1:4000");
        seen.insert(
            id,
            (
                v["mail_from"].as_str().unwrap().to_owned(),
                v["body_bytes"].as_u64().unwrap(),
            ),
        );
    }
    let want_json: BTreeMap<_, _> = want
        .iter()
        .map(|(k, (f, b))| (*k, (f.clone(), b.len() as u64)))
        .collect();
    assert_eq!(seen, want_json);
}

#[test]
fn spool_cat_prints_return_path_received_then_the_body_as_stored() {
    let d = TempDir::new("cat");
    let want = write_spool(&d.0);
    for (id, (from, b)) in &want {
        let mut expect = format!("Return-Path: <{from}>\r\n").into_bytes();
        expect.extend_from_slice(
            format!("Received: from client.example\r\n\tby mx.example id {id}\r\n").as_bytes(),
        );
        expect.extend_from_slice(b);
        assert_eq!(cat(&d.0, *id), expect, "{id}");
    }
    let (r, _) = run(&d.0, &["cat", "not-an-id"]);
    let bad = "not-an-id".parse::<QueueId>().unwrap_err();
    assert!(matches!(bad, SpoolError::BadQueueId(_)), "{bad:?}");
    assert_eq!(r, Err(format!("ringmx: {bad}\n")));
    let unknown = QueueId::new(1, 7).unwrap();
    let (r, _) = run(&d.0, &["cat", unknown.as_str()]);
    assert_eq!(
        r,
        Err(format!("ringmx: {}\n", SpoolError::NotFound(unknown)))
    );
}

fn to_lf(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        v.push(b[i]);
        i += 1;
    }
    v
}

#[test]
fn spool_export_writes_eml_maildir_and_mbox() {
    let d = TempDir::new("export");
    let want = write_spool(&d.0);
    let out = d.0.join("out");

    let (r, text) = export(&d.0, "eml", &out.join("eml"));
    assert_eq!(r.unwrap(), Outcome::Clean);
    assert!(
        text.starts_with(&format!("exported {} messages", want.len())),
        "{text}"
    );
    for id in want.keys() {
        assert_eq!(
            std::fs::read(out.join("eml").join(format!("{id}.eml"))).unwrap(),
            cat(&d.0, *id)
        );
    }

    let (r, _) = export(&d.0, "maildir", &out.join("md"));
    assert_eq!(r.unwrap(), Outcome::Clean);
    assert_eq!(std::fs::read_dir(out.join("md/tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(out.join("md/cur")).unwrap().count(), 0);
    for id in want.keys() {
        // Maildir names: <arrival>.<id>.ringmx
        let file = std::fs::read_dir(out.join("md/new"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(&format!(".{id}.ringmx")))
            .unwrap();
        assert_eq!(std::fs::read(file).unwrap(), to_lf(&cat(&d.0, *id)));
    }

    let (r, _) = export(&d.0, "mbox", &out.join("mbox"));
    assert_eq!(r.unwrap(), Outcome::Clean);
    let mbox = std::fs::read_to_string(out.join("mbox/ringmx.mbox")).unwrap();
    let seps: Vec<&str> = mbox.lines().filter(|l| l.starts_with("From ")).collect();
    assert_eq!(seps.len(), want.len(), "only separators start with `From `");
    assert!(
        seps[0].starts_with("From s0@example.org Sun Nov 29 13:44:42 2026"),
        "{}",
        seps[0]
    );
    assert!(
        seps.iter().any(|s| s.starts_with("From MAILER-DAEMON ")),
        "null sender"
    );
    assert_eq!(mbox.matches("\n>From the start.\n").count(), want.len());
    assert_eq!(mbox.matches("\n>>From quoted.\n").count(), want.len());
    assert!(!mbox.contains("\r\n"));
    assert_eq!(
        mbox.matches("bare\rCR\n").count(),
        want.len(),
        "a bare CR is kept"
    );
}

#[test]
fn spool_verify_names_segment_and_offset_of_a_flipped_byte() {
    let d = TempDir::new("verify");
    let want = write_spool(&d.0);
    let (r, text) = run(&d.0, &["verify"]);
    assert_eq!(r.unwrap(), Outcome::Clean, "{text}");
    assert!(text.ends_with("verify: ok\n"), "{text}");

    // Damage the second message of shard 0; it sits in an older, sealed segment.
    let reader = SpoolReader::open(&d.0).unwrap();
    let victim = reader.shard_messages(0).nth(1).unwrap().unwrap();
    let seg =
        d.0.join("shard-0")
            .join(ringmx::spool::format::segment_file_name(
                victim.location.segment,
            ));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[victim.location.offset as usize + 60] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let (r, text) = run(&d.0, &["verify"]);
    assert_eq!(r.unwrap(), Outcome::Problems, "{text}");
    // The damaged range is the victim's whole record (header + payload).
    let off = victim.location.offset as usize;
    let rec_len = 28
        + u64::from(u32::from_le_bytes(
            bytes[off + 4..off + 8].try_into().unwrap(),
        ));
    let needle = format!(
        "CORRUPT {} offset {off} length {rec_len}: CRC32C mismatch; intact records resume at offset {}",
        seg.display(),
        off as u64 + rec_len
    );
    assert!(text.contains(&needle), "{text}\nwanted: {needle}");
    assert!(text.contains("verify: 1 damaged spot(s)"), "{text}");
    // Readers report the same range instead of returning bad bytes ...
    let err = reader.shard_messages(0).find_map(Result::err).unwrap();
    assert!(
        matches!(&err, SpoolError::Corrupt { offset, .. } if *offset == victim.location.offset),
        "{err}"
    );
    // ... and go on: every other message of shard 0 reads, byte-identical;
    // shard 1 is untouched.
    let mut ok = 0;
    for m in reader.shard_messages(0).filter_map(Result::ok) {
        assert_ne!(m.id, victim.id);
        assert_eq!(m.body_bytes().unwrap(), want[&m.id].1);
        ok += 1;
    }
    assert_eq!(ok, 5);
    assert_eq!(reader.shard_messages(1).filter(Result::is_ok).count(), 6);
}

#[test]
fn spool_verify_tells_a_torn_tail_from_a_write_in_progress() {
    let d = TempDir::new("tail");
    write_spool(&d.0);
    executor().run(async {
        let spool = ShardSpool::open(&d.0, 0, &cfg()).await.unwrap();
        // Half a record at the end of the newest segment while a server holds
        // the spool: what a reader sees in the middle of a write.
        let newest = std::fs::read_dir(spool.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let len = std::fs::metadata(&newest).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        std::io::Write::write_all(&mut f, &[0xEE; 11]).unwrap();
        let (r, text) = run(&d.0, &["verify"]);
        assert_eq!(r.unwrap(), Outcome::Clean, "{text}");
        assert!(
            text.contains(&format!("in progress {} offset {len}", newest.display())),
            "{text}"
        );
        // Stop the "server" (its writer never wrote past `len`): now it is
        // a torn tail, and verify fails until the next start cuts it.
        spool.close().await.unwrap();
        drop(spool);
        let (r, text) = run(&d.0, &["verify"]);
        assert_eq!(r.unwrap(), Outcome::Problems, "{text}");
        assert!(
            text.contains(&format!("CORRUPT {} offset {len}", newest.display())),
            "{text}"
        );
        let spool = ShardSpool::open(&d.0, 0, &cfg()).await.unwrap();
        assert_eq!(spool.recovery().cuts.len(), 1);
        assert_eq!(spool.recovery().cuts[0].offset, len);
        spool.close().await.unwrap();
    });
    let (r, text) = run(&d.0, &["verify"]);
    assert_eq!(r.unwrap(), Outcome::Clean, "{text}");
}

#[test]
fn spool_stats_counts_segments_messages_and_fragments() {
    let d = TempDir::new("stats");
    let want = write_spool(&d.0);
    let (r, text) = run(&d.0, &["stats", "--json"]);
    assert_eq!(r.unwrap(), Outcome::Clean);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["total"]["messages"], want.len());
    assert_eq!(v["shards"]["0"]["messages"], 6);
    assert_eq!(v["shards"]["1"]["messages"], 6);
    assert!(v["total"]["segments"].as_u64().unwrap() >= 4, "{v}");
    assert!(v["total"]["fragments"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["total"]["orphan_fragments"], 0);
    assert_eq!(v["shards"]["0"]["oldest_arrival_unix"], 1_795_959_882);
    let (r, table) = run(&d.0, &["stats"]);
    assert_eq!(r.unwrap(), Outcome::Clean);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().last().unwrap().starts_with(" total"),
        "{table}"
    );
}
