//! Spool format v2 and damage (issue 9 §0, §1), through the public API and
//! the built binary: version 1 spools still read; damage in the middle of a
//! segment costs only the records it hits; its bytes go to quarantine;
//! `ringmx spool verify` names every damaged range, `ls` lists every intact
//! message; a message body holding a well-formed record is never taken for
//! one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringmx::config::{Durability, SpoolConfig};
use ringmx::spool::format::{
    encode_message_prefix, finish_record, segment_file_name, set_body_len, stamp_record,
    start_record, EnvelopeRecord as Env, Kind, RECORD_HEADER_LEN,
};
use ringmx::spool::{EnvelopeRecord, QueueId, ShardSpool, SpoolError, SpoolReader};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("ringmx-spool-damage-{tag}-{}", std::process::id()));
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
        segment_bytes: 64 << 20,
        durability: Durability::None,
        min_free_bytes: 0,
        node_id: "test-node".into(),
        ..SpoolConfig::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `ringmx spool --spool ROOT ARGS`: (exit code, stdout, stderr).
fn cli(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .arg("spool")
        .arg("--spool")
        .arg(root)
        .args(args)
        .output()
        .expect("running ringmx");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

// ---------------------------------------------------------------- version 1

/// The body of message `i` of the committed version 1 fixture
/// (tests/fixtures/spool-v1, written by the version 1 writer: 3 segments of
/// shard 0, two sealed, streamed and whole messages).
fn v1_body(i: usize) -> Vec<u8> {
    let mut b = format!("Subject: v1 message {i}\r\n\r\nhello {i}\r\n").into_bytes();
    for n in 0..(i % 3) * 60 {
        b.extend_from_slice(format!("line {n} of message {i}\r\n").as_bytes());
    }
    b
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1")
}

fn v1_ids() -> Vec<QueueId> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1.ids");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn check_v1_message(m: &ringmx::spool::StoredMessage, i: usize) {
    assert_eq!(m.envelope.arrival_unix, 1_795_959_882 + i as i64);
    let client = if i % 2 == 0 {
        "192.0.2.1:4000"
    } else {
        "[2001:db8::7]:25"
    };
    assert_eq!(m.envelope.client, Some(client.parse().unwrap()));
    assert_eq!(m.envelope.helo, "client.example");
    assert_eq!(m.envelope.mail_from, format!("v1-{i}@example.org"));
    assert_eq!(m.envelope.mail_params, "BODY=8BITMIME");
    assert_eq!(m.envelope.rcpts, ["a@example.com", "b@example.com"]);
    let rec = format!(
        "Received: from client.example\r\n\tby mx.example id {}\r\n",
        m.id
    );
    assert_eq!(m.received, rec.as_bytes());
    assert_eq!(m.body_bytes().unwrap(), v1_body(i));
}

#[test]
fn a_version_1_spool_still_reads() {
    let ids = v1_ids();
    assert_eq!(ids.len(), 8);
    let reader = SpoolReader::open(fixture()).unwrap();
    let msgs: Vec<_> = reader.messages().unwrap().map(Result::unwrap).collect();
    assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    for (i, m) in msgs.iter().enumerate() {
        check_v1_message(m, i);
        check_v1_message(&reader.get(m.id).unwrap(), i);
    }
    assert!(msgs.iter().any(|m| m.fragments() > 0), "streamed ones too");
    let (code, out, err) = cli(&fixture(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("verify: ok\n"), "{out}");
    let (code, out, _) = cli(&fixture(), &["cat", ids[2].as_str()]);
    assert_eq!(code, 0);
    assert!(out.ends_with(std::str::from_utf8(&v1_body(2)).unwrap()));
}

#[test]
fn a_server_on_a_version_1_spool_appends_version_2_segments() {
    let d = TempDir::new("v1up");
    copy_dir(&fixture(), &d.0);
    let new_id = executor().run(async {
        let spool = ShardSpool::open(&d.0, 0, &cfg()).await.unwrap();
        let rep = spool.recovery();
        assert!(rep.cuts.is_empty() && rep.damaged.is_empty(), "{rep:?}");
        let id = spool.next_queue_id();
        let env = EnvelopeRecord {
            arrival_unix: 1_795_999_999,
            client: None,
            helo: "v2.example",
            mail_from: "v2@example.org",
            mail_params: "",
            rcpts: &["c@example.com"],
            tls: None,
            auth: None,
        };
        let mut w = spool.begin(id, &env, b"Received: v2\r\n").unwrap();
        w.write(b"v2 body\r\n").await.unwrap();
        w.commit().await.unwrap();
        spool.close().await.unwrap();
        id
    });
    // The version 1 segments are left as they are; the new one is version 2.
    assert!(d.0.join("shard-0/ringmx-v2-0000000000000004.seg").is_file());
    let reader = SpoolReader::open(&d.0).unwrap();
    let msgs: Vec<_> = reader.messages().unwrap().map(Result::unwrap).collect();
    assert_eq!(msgs.len(), 9);
    for (i, m) in msgs[..8].iter().enumerate() {
        check_v1_message(m, i);
    }
    assert_eq!(msgs[8].id, new_id);
    assert_eq!(msgs[8].node_id, "test-node");
    assert!(
        msgs[..8].iter().all(|m| m.node_id.is_empty()),
        "v1 has none"
    );
    let (code, out, _) = cli(&d.0, &["ls", "--json"]);
    assert_eq!(code, 0);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["id"].as_str(), last["node"].as_str()),
        (Some(new_id.as_str()), Some("test-node"))
    );
    assert_eq!(msgs[8].body_bytes().unwrap(), b"v2 body\r\n");
    let (code, out, err) = cli(&d.0, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A version 1 writer that could not cut a failed write back zeroed the
/// record header there and went on in a new segment. `SpoolReader::get`
/// used to fail on such a segment with "not a record header" for every id
/// after it; it must stop there as recovery does.
#[test]
fn get_reads_past_a_version_1_segment_abandoned_after_a_failed_write() {
    let d = TempDir::new("v1abandoned");
    copy_dir(&fixture(), &d.0);
    let ids = v1_ids();
    let reader = SpoolReader::open(&d.0).unwrap();
    let msgs: Vec<_> = reader.messages().unwrap().map(Result::unwrap).collect();
    // Segment 2 becomes the abandoned one: its seal goes, the header of its
    // last message is zeroed, junk stays after it.
    let in_seg2: Vec<_> = msgs.iter().filter(|m| m.location.segment == 2).collect();
    let victim = in_seg2.last().unwrap();
    let path = d.0.join("shard-0/ringmx-v1-0000000000000002.seg");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 36);
    let at = victim.location.offset as usize;
    bytes[at..at + 20].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let later = msgs.iter().find(|m| m.location.segment == 3).unwrap();
    let i = ids.iter().position(|id| *id == later.id).unwrap();
    check_v1_message(&reader.get(later.id).unwrap(), i);
    // Listing stops at the mark, quietly, and goes on in segment 3.
    let listed: Vec<QueueId> = reader.messages().unwrap().map(|m| m.unwrap().id).collect();
    let want: Vec<QueueId> = ids.iter().copied().filter(|id| *id != victim.id).collect();
    assert_eq!(listed, want);
}

// ---------------------------------------------------------------- damage

/// A deterministic body of about 200..2200 bytes for message `i`.
fn body(i: usize) -> Vec<u8> {
    let mut b = format!("Subject: message {i}\r\n\r\n").into_bytes();
    for n in 0..(i * 7919 % 40) + 4 {
        b.extend_from_slice(
            format!("line {n} of message {i}: {}\r\n", "x".repeat(i % 13)).as_bytes(),
        );
    }
    b
}

fn envelope<'a>(from: &'a str, rcpts: &'a [&'a str]) -> EnvelopeRecord<'a> {
    EnvelopeRecord {
        arrival_unix: 1_796_000_000,
        client: Some("198.51.100.9:2525".parse().unwrap()),
        helo: "client.example",
        mail_from: from,
        mail_params: "BODY=8BITMIME",
        rcpts,
        tls: None,
        auth: None,
    }
}

/// Writes `n` whole (unfragmented) messages into shard 0, one segment;
/// `special` may replace the body of some. Returns id -> (from, body).
fn write_spool(
    root: &Path,
    n: usize,
    special: &dyn Fn(usize) -> Option<Vec<u8>>,
) -> BTreeMap<QueueId, (String, Vec<u8>)> {
    executor().run(async {
        let spool = ShardSpool::open(root, 0, &cfg()).await.unwrap();
        let mut out = BTreeMap::new();
        for i in 0..n {
            let from = format!("m{i}@example.org");
            let rcpts = ["r@example.com"];
            let id = spool.next_queue_id();
            let mut w = spool
                .begin(
                    id,
                    &envelope(&from, &rcpts),
                    format!("Received: {id}\r\n").as_bytes(),
                )
                .unwrap();
            let b = special(i).unwrap_or_else(|| body(i));
            w.write(&b).await.unwrap();
            assert_eq!(w.commit().await.unwrap(), id);
            out.insert(id, (from, b));
        }
        spool.close().await.unwrap();
        out
    })
}

/// Every message's record: (start, end) in the segment file, by id.
fn record_spans(root: &Path) -> BTreeMap<QueueId, (u64, u64)> {
    let reader = SpoolReader::open(root).unwrap();
    let seg = std::fs::read(root.join("shard-0").join(segment_file_name(1))).unwrap();
    reader
        .messages()
        .unwrap()
        .map(|m| {
            let m = m.unwrap();
            assert_eq!(m.location.segment, 1, "one segment");
            let at = m.location.offset as usize;
            let len = u32::from_le_bytes(seg[at + 4..at + 8].try_into().unwrap());
            (
                m.id,
                (
                    at as u64,
                    at as u64 + RECORD_HEADER_LEN as u64 + u64::from(len),
                ),
            )
        })
        .collect()
}

#[test]
fn damage_in_the_middle_of_1000_messages_costs_only_what_it_hits() {
    let d = TempDir::new("thousand");
    let want = write_spool(&d.0, 1000, &|_| None);
    let spans = record_spans(&d.0);
    let by_index: Vec<(QueueId, (u64, u64))> = spans.iter().map(|(k, v)| (*k, *v)).collect();
    let path = d.0.join("shard-0").join(segment_file_name(1));
    let mut bytes = std::fs::read(&path).unwrap();

    // Three kinds of damage, from the end backwards so earlier offsets hold.
    // 3. Cut a record header: 14 bytes of message 700's header are gone,
    //    so everything after it moves (resync finds records by content).
    let (v700, (s700, e700)) = by_index[700];
    bytes.drain(s700 as usize..s700 as usize + 14);
    let cut_range = (s700, e700 - 14);
    // 2. A 4 KiB block reads back as zeros (a bad sector).
    let block = (by_index[500].1 .0 / 4096 + 1) * 4096;
    bytes[block as usize..block as usize + 4096].fill(0);
    let first_hit = by_index.iter().position(|(_, (_, e))| *e > block).unwrap();
    let first_after = by_index
        .iter()
        .position(|(_, (s, _))| *s >= block + 4096)
        .unwrap();
    let zero_range = (by_index[first_hit].1 .0, by_index[first_after].1 .0);
    let zeroed: Vec<QueueId> = by_index[first_hit..first_after]
        .iter()
        .map(|r| r.0)
        .collect();
    // 1. Bytes flipped in the middle of message 300's record.
    let (v300, (s300, e300)) = by_index[300];
    for k in [40, 41, 300] {
        bytes[(s300 + k) as usize] ^= 0x20;
    }
    let flip_range = (s300, e300);
    std::fs::write(&path, &bytes).unwrap();
    let ranges = [flip_range, zero_range, cut_range];
    let mut lost: Vec<QueueId> = vec![v300, v700];
    lost.extend(&zeroed);
    assert!(zeroed.len() >= 2, "the block spans records: {zeroed:?}");
    let intact: BTreeMap<QueueId, (String, Vec<u8>)> = want
        .iter()
        .filter(|(id, _)| !lost.contains(id))
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(intact.len(), 1000 - lost.len());

    // Black box, before any recovery: verify names every damaged range
    // (offset and length) and fails; ls lists every intact message.
    let (code, out, err) = cli(&d.0, &["verify"]);
    assert_eq!(code, 1, "{out}{err}");
    for (s, e) in ranges {
        let needle = format!("CORRUPT {} offset {s} length {}:", path.display(), e - s);
        assert!(out.contains(&needle), "{out}\nwanted: {needle}");
    }
    assert!(out.contains("verify: 3 damaged spot(s)"), "{out}");
    let (code, out, err) = cli(&d.0, &["ls"]);
    assert_eq!(code, 1, "{err}");
    let listed: Vec<&str> = out.lines().map(|l| &l[..16]).collect();
    let intact_ids: Vec<String> = intact.keys().map(|id| id.to_string()).collect();
    assert_eq!(listed, intact_ids);
    assert_eq!(err.lines().count(), 3, "one line per damaged range: {err}");

    // Recovery keeps every intact message and quarantines exactly the
    // damaged bytes.
    let rep = executor().run(async {
        let spool = ShardSpool::open(&d.0, 0, &cfg()).await.unwrap();
        let rep = spool.recovery().clone();
        spool.close().await.unwrap();
        rep
    });
    assert!(rep.cuts.is_empty(), "{rep:?}");
    let got: Vec<(u64, u64)> = rep
        .damaged
        .iter()
        .map(|c| (c.offset, c.offset + c.bytes))
        .collect();
    assert_eq!(got, ranges);
    for c in &rep.damaged {
        let q = std::fs::read(c.quarantine.as_ref().unwrap()).unwrap();
        assert_eq!(q, &bytes[c.offset as usize..(c.offset + c.bytes) as usize]);
    }
    let reader = SpoolReader::open(&d.0).unwrap();
    let mut read = BTreeMap::new();
    for m in reader.messages().unwrap() {
        let m = m.unwrap();
        assert_eq!(m.envelope.rcpts, ["r@example.com"]);
        assert_eq!(m.received, format!("Received: {}\r\n", m.id).as_bytes());
        read.insert(
            m.id,
            (m.envelope.mail_from.clone(), m.body_bytes().unwrap()),
        );
    }
    assert_eq!(read, intact);
    for id in intact.keys().step_by(37) {
        assert_eq!(reader.get(*id).unwrap().id, *id);
    }
    let (code, out, err) = cli(&d.0, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("shard 0: 3 damaged range(s)"), "{out}");
}

/// A complete record with a valid CRC for a segment with `nonce`: what a
/// message body may carry.
fn foreign_record(nonce: u64) -> Vec<u8> {
    let mut rec = Vec::new();
    start_record(&mut rec, Kind::Message, 42);
    let env = Env {
        arrival_unix: 1,
        client: None,
        helo: "ghost",
        mail_from: "ghost@example.org",
        mail_params: "",
        rcpts: &["victim@example.com"],
        tls: None,
        auth: None,
    };
    let at = encode_message_prefix(&mut rec, &env, b"Received: ghost\r\n").unwrap();
    rec.extend_from_slice(b"boo\r\n");
    set_body_len(&mut rec, at, 5);
    finish_record(&mut rec).unwrap();
    stamp_record(&mut rec, nonce);
    rec
}

#[test]
fn a_record_inside_a_message_body_is_never_taken_for_one() {
    let d = TempDir::new("ghost");
    // Any fixed nonce: a fresh segment's is random, so they differ.
    let ghost = foreign_record(0x5eed_5eed_5eed_5eed);
    // Message 1's body is binary and holds two whole records back to back.
    let want = write_spool(&d.0, 4, &|i| {
        (i == 1).then(|| [&b"binary\x00\xff"[..], &ghost, &ghost, b"end\r\n"].concat())
    });
    let spans = record_spans(&d.0);
    let ids: Vec<QueueId> = spans.keys().copied().collect();
    let path = d.0.join("shard-0").join(segment_file_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage message 1's header: a resync must scan its body.
    let (s1, e1) = spans[&ids[1]];
    bytes[s1 as usize + 8] = 0x99;
    std::fs::write(&path, &bytes).unwrap();
    let check = |stage: &str| {
        let reader = SpoolReader::open(&d.0).unwrap();
        let mut listed = Vec::new();
        for m in reader.messages().unwrap() {
            match m {
                Ok(m) => {
                    assert_ne!(m.envelope.mail_from, "ghost@example.org", "{stage}");
                    assert_eq!(m.body_bytes().unwrap(), want[&m.id].1, "{stage}");
                    listed.push(m.id);
                }
                Err(SpoolError::Corrupt { offset, .. }) => assert_eq!(offset, s1, "{stage}"),
                Err(e) => panic!("{stage}: {e}"),
            }
        }
        assert_eq!(listed, [ids[0], ids[2], ids[3]], "{stage}");
    };
    check("before recovery");
    let rep = executor().run(async {
        let spool = ShardSpool::open(&d.0, 0, &cfg()).await.unwrap();
        let rep = spool.recovery().clone();
        spool.close().await.unwrap();
        rep
    });
    let got: Vec<(u64, u64)> = rep.damaged.iter().map(|c| (c.offset, c.bytes)).collect();
    assert_eq!(got, [(s1, e1 - s1)], "the whole of message 1, nothing less");
    check("after recovery");
}

/// Segments may later be preallocated: zeros after the last record (or
/// after a seal) are the end of data, never damage and never records.
#[test]
fn zeros_after_the_last_record_are_the_end_of_data() {
    let d = TempDir::new("zeros");
    let small = SpoolConfig {
        segment_bytes: 4096,
        ..cfg()
    };
    let want = executor().run(async {
        let spool = ShardSpool::open(&d.0, 0, &small).await.unwrap();
        let mut want = BTreeMap::new();
        for i in 0..12 {
            let from = format!("m{i}@example.org");
            let id = spool.next_queue_id();
            let mut w = spool
                .begin(id, &envelope(&from, &["r@example.com"]), b"R: x\r\n")
                .unwrap();
            w.write(&body(i)).await.unwrap();
            w.commit().await.unwrap();
            want.insert(id, body(i));
        }
        spool.close().await.unwrap();
        want
    });
    let shard = d.0.join("shard-0");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "sealed segments and an open one: {segs:?}");
    for s in &segs {
        let mut f = std::fs::OpenOptions::new().append(true).open(s).unwrap();
        std::io::Write::write_all(&mut f, &vec![0u8; 8192]).unwrap();
    }
    let read = |stage: &str| {
        let reader = SpoolReader::open(&d.0).unwrap();
        let got: BTreeMap<QueueId, Vec<u8>> = reader
            .messages()
            .unwrap()
            .map(|m| {
                let m = m.unwrap_or_else(|e| panic!("{stage}: {e}"));
                (m.id, m.body_bytes().unwrap())
            })
            .collect();
        assert_eq!(got, want, "{stage}");
        let last = *want.keys().last().unwrap();
        assert_eq!(reader.get(last).unwrap().id, last, "{stage}");
        let (code, out, err) = cli(&d.0, &["verify"]);
        assert_eq!(code, 0, "{stage}: {out}{err}");
    };
    read("zeros appended");
    // Recovery cuts the zeros of the open segment (nothing to quarantine)
    // and appends after the last record.
    let (rep, id) = executor().run(async {
        let spool = ShardSpool::open(&d.0, 0, &small).await.unwrap();
        let rep = spool.recovery().clone();
        let id = spool.next_queue_id();
        let mut w = spool
            .begin(
                id,
                &envelope("late@example.org", &["r@example.com"]),
                b"R: x\r\n",
            )
            .unwrap();
        w.write(b"late\r\n").await.unwrap();
        w.commit().await.unwrap();
        spool.close().await.unwrap();
        (rep, id)
    });
    assert!(rep.damaged.is_empty(), "{rep:?}");
    assert!(
        rep.cuts
            .iter()
            .all(|c| c.quarantine.is_none() && c.bytes == 8192),
        "{rep:?}"
    );
    let mut want = want;
    want.insert(id, b"late\r\n".to_vec());
    let reader = SpoolReader::open(&d.0).unwrap();
    let got: BTreeMap<QueueId, Vec<u8>> = reader
        .messages()
        .unwrap()
        .map(|m| {
            let m = m.unwrap();
            (m.id, m.body_bytes().unwrap())
        })
        .collect();
    assert_eq!(got, want);
}
