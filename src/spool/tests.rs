//! Spool tests that need the crate's internals: fault injection
//! (`segment::faults`), test hooks, and the segment scanner for offset sweeps.
//! Black-box tests of the public API live in `tests/spool_*.rs`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::{LocalExecutorBuilder, Placement};

use super::format::{segment_file_name, Kind, FILE_HEADER_LEN};
use super::scan::{list_segments, Payload, SegmentFile, Step};
use super::segment::faults;
use super::*;
use crate::config::{Durability, SpoolConfig};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringmx-spool-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    /// On /dev/shm when there is one: the offset sweeps open a spool
    /// thousands of times, and recovery's fsyncs cost nothing on tmpfs.
    pub(crate) fn in_memory(tag: &str) -> Self {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return Self::new(tag);
        }
        let t = Self::new(tag);
        let p = shm.join(t.0.file_name().unwrap());
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a fresh glommio executor (small io_memory: the default
/// 8 MiB memlock limit is enough for a few at once).
pub(crate) fn run<F: Future>(f: impl FnOnce() -> F) -> F::Output {
    let _slot = ExecutorSlot::take();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor (io_uring, memlock)")
        .run(f())
}

/// Under `cargo test` every test is a thread of one process, as many at
/// once as there are CPUs, and each executor's rings and buffers count
/// against the user's 8 MiB memlock limit: on a machine without
/// CAP_IPC_LOCK, 16 at once fail with ENOMEM. At most this many run.
const EXECUTORS_AT_ONCE: usize = 4;

struct ExecutorSlot;

static SLOTS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

impl ExecutorSlot {
    fn take() -> Self {
        let mut n = SLOTS.0.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= EXECUTORS_AT_ONCE {
            n = SLOTS.1.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        ExecutorSlot
    }
}

impl Drop for ExecutorSlot {
    fn drop(&mut self) {
        *SLOTS.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOTS.1.notify_one();
    }
}

fn cfg(buffered: usize, segment_bytes: u64, durability: Durability) -> SpoolConfig {
    SpoolConfig {
        dir: PathBuf::new(),
        segment_bytes,
        durability,
        max_buffered_message_bytes: buffered,
        min_free_bytes: 0,
        ..SpoolConfig::default()
    }
}

/// Deterministic bytes with CRLF lines, distinct per seed.
fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 61 == 0 {
            v.extend_from_slice(b"\r\n");
        } else {
            v.push(b' ' + (x % 94) as u8);
        }
    }
    v.truncate(len);
    v
}

const RCPTS: &[&str] = &["one@example.com", "two@example.com"];

fn envelope(helo: &str) -> EnvelopeRecord<'_> {
    EnvelopeRecord {
        arrival_unix: 1_795_880_682,
        client: Some("192.0.2.7:40000".parse().unwrap()),
        helo,
        mail_from: "sender@example.org",
        mail_params: "BODY=8BITMIME SIZE=100",
        rcpts: RCPTS,
        tls: None,
        auth: None,
    }
}

fn received(id: QueueId) -> Vec<u8> {
    format!("Received: from client.example by mx.example with ESMTP id {id}\r\n").into_bytes()
}

/// Begins, writes `data` in `chunk`-byte pieces, commits.
async fn store(spool: &Rc<ShardSpool>, data: &[u8], chunk: usize) -> Result<QueueId, SpoolError> {
    let id = spool.next_queue_id();
    let mut w = spool.begin(id, &envelope("client.example"), &received(id))?;
    for c in data.chunks(chunk.max(1)) {
        w.write(c).await?;
    }
    commit(spool, w, data).await
}

/// Commits `w`, whose body is `body`; when that resolves Ok (the moment the
/// server would send `250`), checks that a power cut now would keep it.
async fn commit(spool: &ShardSpool, w: MessageWriter, body: &[u8]) -> Result<QueueId, SpoolError> {
    let id = w.commit().await?;
    assert_survives_power_cut(spool, id, body).await;
    Ok(id)
}

/// The power-loss oracle, applied as a commit resolves: a copy of the shard
/// with every segment cut to the length its last fdatasync covered
/// (`faults::synced_len`; never synced: gone), once recovered as after a
/// restart, must still hold message `id` with exactly `body`. SIGKILL keeps
/// the page cache, so without this check nothing would catch a `250` sent
/// before its fdatasync.
async fn assert_survives_power_cut(spool: &ShardSpool, id: QueueId, body: &[u8]) {
    let core = spool.core();
    if core.cfg.durability != Durability::Fsync {
        return;
    }
    let copy = TempDir::in_memory("powercut");
    let to = copy.path().join(core.dir.file_name().unwrap());
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&core.dir).unwrap() {
        let p = e.unwrap().path();
        let Some(synced) = faults::synced_len(&p) else {
            continue;
        };
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(usize::try_from(synced).unwrap());
        forget_unsynced_overwrites(&p, &mut bytes);
        std::fs::write(to.join(p.file_name().unwrap()), bytes).unwrap();
    }
    // The restart: recovery cuts torn tails and broken segments.
    let restarted = ShardSpool::open(copy.path(), core.shard, &core.cfg)
        .await
        .unwrap_or_else(|e| panic!("recovery after a power cut at {id}'s 250: {e}"));
    restarted.close().await.unwrap();
    let got = SpoolReader::open(copy.path())
        .unwrap()
        .get(id)
        .and_then(|m| m.body_bytes());
    match got {
        Ok(b) => assert!(
            b == body,
            "{id} acknowledged, but a power cut keeps a different body ({} bytes, want {})",
            b.len(),
            body.len()
        ),
        Err(e) => panic!("{id} acknowledged before its fdatasync: a power cut now loses it ({e})"),
    }
}

/// Every committed message: id -> body, checking envelope and trace header.
fn read_all(root: &Path) -> BTreeMap<QueueId, Vec<u8>> {
    let r = SpoolReader::open(root).unwrap();
    let mut out = BTreeMap::new();
    for m in r.messages().unwrap() {
        let m = m.unwrap();
        assert_eq!(m.envelope.rcpts, RCPTS);
        assert_eq!(m.envelope.mail_from, "sender@example.org");
        assert_eq!(m.envelope.mail_params, "BODY=8BITMIME SIZE=100");
        assert_eq!(m.envelope.client, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(m.received, received(m.id));
        let b = m.body_bytes().unwrap();
        assert_eq!(b.len() as u64, m.body_len);
        assert!(out.insert(m.id, b).is_none(), "{} listed twice", m.id);
    }
    out
}

fn assert_verify_clean(root: &Path) {
    for s in SpoolReader::open(root).unwrap().verify().unwrap() {
        assert!(s.problems.is_empty() && s.in_progress.is_empty(), "{s:#?}");
    }
}

#[test]
fn small_and_streamed_messages_round_trip_across_reopen() {
    round_trip_across_reopen(true);
}

/// The same through the page cache (`spool.direct_io = false`).
#[test]
fn small_and_streamed_messages_round_trip_across_reopen_buffered() {
    round_trip_across_reopen(false);
}

fn round_trip_across_reopen(direct_io: bool) {
    let dir = TempDir::new("roundtrip");
    let root = dir.path().to_owned();
    // 4 KiB buffer, 64 KiB segments: many fragments and many rotations.
    let mut c = cfg(4096, 64 << 10, Durability::Fsync);
    c.direct_io = direct_io;
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..150u64 {
            let b = body((i as usize * 37) % 4200, i);
            want.insert(store(&spool, &b, 1 + (i as usize % 700)).await.unwrap(), b);
        }
        // Multi-MiB streamed bodies, in odd chunk sizes.
        for (i, (len, chunk)) in [
            (3 << 20, 65_536),
            (1 << 20, 1_000),
            (70_000, 4096),
            (4097, 4097),
        ]
        .into_iter()
        .enumerate()
        {
            let b = body(len, 1000 + i as u64);
            want.insert(store(&spool, &b, chunk).await.unwrap(), b);
        }
        let st = spool.stats();
        assert!(st.segments_created > 10, "{st:?}");
        assert!(st.fragments >= (3 << 20) / 4096, "{st:?}");
        assert_eq!(st.commits, 154);
        assert_eq!(st.written, st.durable);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
    // Reopen: recovery scans the newest segment only (the rest are sealed),
    // cuts nothing, and appending resumes.
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let rep = spool.recovery().clone();
        assert!(rep.cuts.is_empty() && rep.removed.is_empty(), "{rep:?}");
        assert_eq!(rep.scanned_segments, 1, "{rep:?}");
        let b = body(5000, 99);
        want.insert(store(&spool, &b, 512).await.unwrap(), b);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    let r = SpoolReader::open(&root).unwrap();
    for (id, b) in &want {
        assert_eq!(&r.get(*id).unwrap().body_bytes().unwrap(), b);
    }
    let sum = &r.disk_stats().unwrap()[0];
    assert_eq!(sum.sealed_segments + 1, sum.segments, "{sum:?}");
    assert_eq!(sum.messages, want.len() as u64);
    assert_eq!(sum.orphan_fragments(), 0);
}

#[test]
fn streaming_memory_is_bounded_by_one_fragment() {
    let dir = TempDir::new("bounded");
    let root = dir.path().to_owned();
    let limit = 64 << 10;
    let c = cfg(limit, 64 << 20, Durability::None);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        let chunk = body(48 << 10, 1);
        let mut peak = 0;
        for _ in 0..(50 << 20) / chunk.len() {
            w.write(&chunk).await.unwrap();
            peak = peak.max(w.buffered_capacity());
        }
        // One fragment buffer plus the envelope part, never the 50 MiB.
        assert!(peak < 2 * limit + 4096, "peak buffer {peak} bytes");
        w.commit().await.unwrap();
        spool.close().await.unwrap();
    });
    let r = SpoolReader::open(&root).unwrap();
    let m = r.messages().unwrap().next().unwrap().unwrap();
    assert_eq!(m.body_len, ((50 << 20) / (48 << 10) * (48 << 10)) as u64);
    assert!(m.fragments() > 700);
}

#[test]
fn concurrent_sessions_never_interleave_records() {
    let dir = TempDir::new("concurrent");
    let root = dir.path().to_owned();
    let c = cfg(8192, 256 << 10, Durability::Fsync);
    let want = run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..24u64 {
            let spool = Rc::clone(&spool);
            tasks.push(glommio::spawn_local(async move {
                // Half stream 200 KiB in 1000-byte reads, half send small messages.
                let b = body(
                    if t % 2 == 0 {
                        200_000
                    } else {
                        300 + t as usize
                    },
                    t,
                );
                let id = spool.next_queue_id();
                let mut w = spool
                    .begin(id, &envelope("client.example"), &received(id))
                    .unwrap();
                for c in b.chunks(1000) {
                    w.write(c).await.unwrap();
                    glommio::executor().yield_task_queue_now().await;
                }
                (commit(&spool, w, &b).await.unwrap(), b)
            }));
        }
        let mut want = BTreeMap::new();
        for t in tasks {
            let (id, b) = t.await;
            want.insert(id, b);
        }
        spool.close().await.unwrap();
        want
    });
    assert_eq!(want.len(), 24);
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

#[test]
fn aborted_messages_are_never_visible() {
    let dir = TempDir::new("abort");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let keep = body(100, 1);
        want.insert(store(&spool, &keep, 10).await.unwrap(), keep);
        // Streamed and aborted: its fragments reach the disk.
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        w.write(&body(10_000, 2)).await.unwrap();
        w.abort();
        // Buffered and dropped (client gone mid-DATA).
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        w.write(b"partial").await.unwrap();
        drop(w);
        let keep = body(5000, 3);
        want.insert(store(&spool, &keep, 999).await.unwrap(), keep);
        assert_eq!(spool.stats().aborted, 2);
        assert!(spool.stats().fragments >= 9 + 4);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    let sum = &SpoolReader::open(&root).unwrap().disk_stats().unwrap()[0];
    assert_eq!(sum.orphan_fragments(), 9, "{sum:?}");
    // Still invisible after recovery.
    reopen(&root, &c);
    assert_eq!(read_all(&root), want);
}

#[test]
fn group_commit_shares_one_fdatasync_among_many_commits() {
    let dir = TempDir::new("group");
    let root = dir.path().to_owned();
    let c = cfg(64 << 10, 64 << 20, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let spool = Rc::clone(&spool);
                glommio::spawn_local(
                    async move { store(&spool, &body(500, i), 500).await.unwrap() },
                )
            })
            .collect();
        let mut ids = HashSet::new();
        for t in tasks {
            assert!(ids.insert(t.await));
        }
        let st = spool.stats();
        assert_eq!(st.commits, 64);
        assert!(st.fdatasyncs >= 1);
        assert!(
            st.commits_per_fdatasync() >= 4.0,
            "group commit did not batch: {} commits, {} fdatasyncs",
            st.commits,
            st.fdatasyncs
        );
        assert_eq!(st.written, st.durable, "{st:?}");
        spool.close().await.unwrap();
    });
}

/// spool.group_commit_delay: commits that trickle in within the delay
/// share one fdatasync even though each would have found the writer idle.
/// The delay is far longer than the 14 ms the commits are spread over, so
/// only a stalled machine could split the batch: the assertion is on counts.
#[test]
fn group_commit_delay_gathers_staggered_commits_into_one_fdatasync() {
    let dir = TempDir::new("delay");
    let root = dir.path().to_owned();
    let c = SpoolConfig {
        group_commit_delay: std::time::Duration::from_secs(2),
        ..cfg(64 << 10, 64 << 20, Durability::Fsync)
    };
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let before = spool.stats();
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let spool = Rc::clone(&spool);
                glommio::spawn_local(async move {
                    glommio::timer::sleep(std::time::Duration::from_millis(2 * i)).await;
                    store(&spool, &body(500, i), 500).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let st = spool.stats();
        assert_eq!(st.commits, 8);
        assert_eq!(st.batches - before.batches, 1, "{st:?}");
        assert_eq!(st.fdatasyncs - before.fdatasyncs, 1, "{st:?}");
        spool.close().await.unwrap();
    });
}

#[test]
fn durability_none_never_syncs_but_commits() {
    let dir = TempDir::new("none");
    let root = dir.path().to_owned();
    let c = cfg(1024, 8 << 10, Durability::None);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..50 {
            store(&spool, &body(700, i), 100).await.unwrap();
        }
        let st = spool.stats();
        assert_eq!((st.commits, st.fdatasyncs), (50, 0), "{st:?}");
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root).len(), 50);
}

/// Records of a segment: (offset, end, kind, id seq).
fn records(path: &Path) -> Vec<(u64, u64, Kind, u64)> {
    let seg = SegmentFile::open(path).unwrap();
    let mut pos = FILE_HEADER_LEN as u64;
    let mut v = Vec::new();
    loop {
        match seg.next(pos, Payload::Verify).unwrap() {
            Step::End | Step::EndMark => return v,
            Step::Bad(r) => panic!("{r} at {pos}"),
            Step::Record(m) => {
                v.push((m.offset, m.end(), m.header.kind, m.header.id_seq));
                pos = m.end();
            }
        }
    }
}

/// Committed messages of a sweep fixture: id seq -> (record end, body).
type Committed = BTreeMap<u64, (u64, Vec<u8>)>;

/// A one-segment spool: two messages, then the sweep region: a small
/// message, a streamed one (3 fragments + commit), an aborted streamed one
/// (2 fragments), another small one. Returns (segment bytes, sweep start,
/// committed messages).
fn sweep_fixture(root: &Path) -> (Vec<u8>, u64, Committed) {
    let c = cfg(256, 1 << 20, Durability::Fsync);
    let mut bodies = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(root, 0, &c).await.unwrap();
        for (len, seed) in [(40, 1), (60, 2), (50, 3), (700, 4)] {
            let b = body(len, seed);
            bodies.insert(store(&spool, &b, 100).await.unwrap().seq(), b);
        }
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        w.write(&body(600, 5)).await.unwrap();
        drop(w);
        let b = body(30, 6);
        bodies.insert(store(&spool, &b, 100).await.unwrap().seq(), b);
        spool.close().await.unwrap();
    });
    let path = root.join("shard-0").join(segment_file_name(1));
    let recs = records(&path);
    let kinds: Vec<Kind> = recs.iter().map(|r| r.2).collect();
    use Kind::*;
    assert_eq!(
        kinds,
        [Message, Message, Message, Fragment, Fragment, Commit, Fragment, Fragment, Message]
    );
    let committed = recs
        .iter()
        .filter(|r| matches!(r.2, Message | Commit))
        .map(|r| (r.3, (r.1, bodies[&r.3].clone())))
        .collect();
    (std::fs::read(&path).unwrap(), recs[2].0, committed)
}

/// Writes `bytes` as the only segment of a fresh spool, opens it (recovery),
/// appends one message, and checks what is visible: exactly the committed
/// messages whose record ends at or before `cut`, plus the new one.
async fn check_recovered(
    root: &Path,
    bytes: &[u8],
    cut: u64,
    committed: &Committed,
    boundaries: &[u64],
) {
    let _ = std::fs::remove_dir_all(root);
    let shard = root.join("shard-0");
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(segment_file_name(1)), bytes).unwrap();
    let c = cfg(256, 1 << 20, Durability::None);
    let extra = body(77, 77);
    let spool = ShardSpool::open(root, 0, &c).await.unwrap();
    // The file now ends at the last record boundary at or before `cut`.
    let keep = boundaries
        .iter()
        .copied()
        .filter(|&b| b <= cut)
        .max()
        .unwrap();
    let rep = spool.recovery().clone();
    let want_cut = (keep < bytes.len() as u64).then_some(keep);
    assert_eq!(rep.cuts.first().map(|c| c.offset), want_cut, "cut {cut}");
    let extra_id = store(&spool, &extra, 50).await.unwrap();
    spool.close().await.unwrap();
    drop(spool);
    let mut want: BTreeMap<QueueId, Vec<u8>> = committed
        .iter()
        .filter(|(_, (end, _))| *end <= cut)
        .map(|(seq, (_, b))| (QueueId::new(0, *seq).unwrap(), b.clone()))
        .collect();
    want.insert(extra_id, extra);
    assert_eq!(read_all(root), want, "cut at {cut}");
    assert_verify_clean(root);
}

#[test]
fn torn_tail_cut_at_every_offset_loses_no_committed_message() {
    let dir = TempDir::in_memory("torn");
    let (bytes, start, committed) = sweep_fixture(dir.path());
    let path = dir.path().join("shard-0").join(segment_file_name(1));
    let mut boundaries: Vec<u64> = records(&path).iter().map(|r| r.1).collect();
    boundaries.push(FILE_HEADER_LEN as u64);
    let root = dir.path().join("sweep");
    run(|| async {
        for cut in start..=bytes.len() as u64 {
            check_recovered(&root, &bytes[..cut as usize], cut, &committed, &boundaries).await;
        }
    });
}

/// Records of the sweep fixture: (offset, end, kind, id seq).
type Recs = [(u64, u64, Kind, u64)];

/// Writes `bytes` (the sweep fixture with damage in record `hit`) as the
/// only segment of a fresh spool, opens it (recovery), appends one message,
/// and checks: a damaged last record is cut, any other replaced by a hole
/// record; the damaged bytes are in quarantine; every committed message
/// outside the damaged record is listed byte-identical; one whose fragment
/// was damaged is gone too: its commit, which no reader could read, went
/// to quarantine and became a hole.
async fn check_damaged(root: &Path, bytes: &[u8], recs: &Recs, hit: usize, committed: &Committed) {
    let _ = std::fs::remove_dir_all(root);
    let shard = root.join("shard-0");
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(segment_file_name(1)), bytes).unwrap();
    let c = cfg(256, 1 << 20, Durability::None);
    let extra = body(77, 77);
    let spool = ShardSpool::open(root, 0, &c).await.unwrap();
    let rep = spool.recovery().clone();
    let (start, end) = (recs[hit].0, recs[hit].1);
    let last = hit + 1 == recs.len();
    let range = if last { &rep.cuts } else { &rep.damaged };
    let other = if last { &rep.damaged } else { &rep.cuts };
    assert!(other.is_empty(), "record {hit}: {rep:?}");
    assert_eq!(range.len(), 1, "record {hit}: {rep:?}");
    assert_eq!(
        (range[0].offset, range[0].bytes),
        (start, end - start),
        "record {hit}"
    );
    let q = std::fs::read(range[0].quarantine.as_ref().unwrap()).unwrap();
    assert_eq!(
        q,
        &bytes[start as usize..end as usize],
        "record {hit}: quarantine"
    );
    // The streamed message whose fragment was hit, if any, and its commit.
    let broken_commit = (recs[hit].2 == Kind::Fragment)
        .then(|| recs[hit].3)
        .filter(|seq| committed.contains_key(seq));
    let commit_rec = broken_commit.map(|seq| {
        *recs
            .iter()
            .find(|r| r.3 == seq && r.2 == Kind::Commit)
            .unwrap()
    });
    let lost: Vec<(u64, u64)> = rep
        .lost_bodies
        .iter()
        .map(|c| (c.offset, c.bytes))
        .collect();
    let want_lost: Vec<(u64, u64)> = commit_rec.iter().map(|r| (r.0, r.1 - r.0)).collect();
    assert_eq!(lost, want_lost, "record {hit}: {rep:?}");
    if let Some(r) = commit_rec {
        let q = std::fs::read(rep.lost_bodies[0].quarantine.as_ref().unwrap()).unwrap();
        assert_eq!(
            q,
            &bytes[r.0 as usize..r.1 as usize],
            "record {hit}: commit quarantine"
        );
    }
    let extra_id = store(&spool, &extra, 50).await.unwrap();
    spool.close().await.unwrap();
    drop(spool);
    let mut want: BTreeMap<QueueId, Vec<u8>> = committed
        .iter()
        .filter(|(seq, _)| **seq != recs[hit].3 || recs[hit].2 == Kind::Fragment)
        .filter(|(seq, _)| Some(**seq) != broken_commit)
        .map(|(seq, (_, b))| (QueueId::new(0, *seq).unwrap(), b.clone()))
        .collect();
    want.insert(extra_id, extra);
    let mut got = BTreeMap::new();
    let mut reported = Vec::new();
    for m in SpoolReader::open(root).unwrap().messages().unwrap() {
        match m {
            Ok(m) => assert!(got.insert(m.id, m.body_bytes().unwrap()).is_none()),
            Err(SpoolError::Corrupt { offset, .. }) => reported.push(offset),
            Err(e) => panic!("record {hit}: {e}"),
        }
    }
    assert_eq!(got, want, "record {hit}");
    // A cut tail is gone; damage in the middle became a hole record:
    // readers and verify see a sound segment, verify counts the hole.
    assert!(reported.is_empty(), "record {hit}: {reported:?}");
    let sum = &SpoolReader::open(root).unwrap().verify().unwrap()[0];
    assert!(sum.problems.is_empty(), "record {hit}: {sum:#?}");
    let (holes, hole_bytes) = if last { (0, 0) } else { (1, end - start) };
    let commit_len = commit_rec.map_or(0, |r| r.1 - r.0);
    assert_eq!(
        (sum.holes, sum.hole_bytes),
        (
            holes + u64::from(commit_rec.is_some()),
            hole_bytes + commit_len
        ),
        "record {hit}"
    );
}

#[test]
fn flipped_byte_at_every_offset_is_quarantined_and_never_takes_later_mail() {
    let dir = TempDir::in_memory("flip");
    let (bytes, start, committed) = sweep_fixture(dir.path());
    let path = dir.path().join("shard-0").join(segment_file_name(1));
    let recs = records(&path);
    let root = dir.path().join("sweep");
    run(|| async {
        for at in start..bytes.len() as u64 {
            let mut b = bytes.clone();
            b[at as usize] ^= 0x5a;
            let hit = recs.iter().position(|r| r.0 <= at && at < r.1).unwrap();
            check_damaged(&root, &b, &recs, hit, &committed).await;
        }
    });
}

/// Every record of shard 0: (segment, offset, end, kind, id seq), in order.
fn shard_records(root: &Path) -> Vec<(u64, u64, u64, Kind, u64)> {
    let (segs, _) = super::scan::list_segments(&root.join("shard-0")).unwrap();
    segs.iter()
        .flat_map(|(seq, path)| {
            records(path)
                .into_iter()
                .map(|r| (*seq, r.0, r.1, r.2, r.3))
        })
        .collect()
}

/// A power loss may write back the page holding a streamed message's
/// Commit but not a page of a fragment before it (neither was covered by
/// an fdatasync yet, so the message was never acknowledged: the crash
/// test's in-doubt case). Recovery turns the damaged fragment into a hole;
/// the Commit, intact, must not stay listed: no reader could read its body,
/// and `verify` would fail on the spool for good. It goes to quarantine
/// and becomes a hole too, whether the fragment was in the same segment or
/// in an older one left unsealed; the mail around it stays, and its id is
/// never issued again.
#[test]
fn a_commit_whose_fragment_a_power_cut_tore_is_quarantined_not_listed() {
    for older in [false, true] {
        let dir = TempDir::in_memory("lostfrag");
        let root = dir.path();
        // Fragments of 256 body bytes; with `older`, segments small enough
        // that the streamed message's first fragment lies in an older
        // segment than its commit.
        let c = cfg(256, if older { 2048 } else { 1 << 20 }, Durability::Fsync);
        let (first, streamed, last) = (body(100, 1), body(1500, 2), body(120, 3));
        let (kept, lost) = run(|| async {
            let spool = ShardSpool::open(root, 0, &c).await.unwrap();
            let a = store(&spool, &first, 100).await.unwrap();
            let s = store(&spool, &streamed, 100).await.unwrap();
            let b = store(&spool, &last, 100).await.unwrap();
            spool.close().await.unwrap();
            (BTreeMap::from([(a, first.clone()), (b, last.clone())]), s)
        });
        let recs = shard_records(root);
        let frag = *recs
            .iter()
            .find(|r| r.3 == Kind::Fragment && r.4 == lost.seq())
            .unwrap();
        let commit = *recs
            .iter()
            .find(|r| r.3 == Kind::Commit && r.4 == lost.seq())
            .unwrap();
        let newest = recs.last().unwrap().0;
        // Recovery scans the newest segment (and unsealed older ones) only.
        assert_eq!(commit.0, newest, "older={older}: {recs:?}");
        assert_eq!(frag.0 < commit.0, older, "older={older}: {recs:?}");
        let seg_path = |seq| root.join("shard-0").join(segment_file_name(seq));
        if older {
            // Unsealed, as a segment abandoned after a write error is.
            let (_, seal_at, seal_end, kind, _) = *recs.iter().rfind(|r| r.0 == frag.0).unwrap();
            assert_eq!(kind, Kind::Seal);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(seg_path(frag.0))
                .unwrap();
            assert_eq!(f.metadata().unwrap().len(), seal_end);
            f.set_len(seal_at).unwrap();
        }
        // Zeros inside the fragment's payload: a page never written back.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(seg_path(frag.0))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0; 64], frag.1 + 40).unwrap();
        drop(f);
        let commit_bytes = std::fs::read(seg_path(commit.0)).unwrap()
            [commit.1 as usize..commit.2 as usize]
            .to_vec();

        let extra = body(77, 77);
        let (rep, extra_id) = run(|| async {
            let spool = ShardSpool::open(root, 0, &c).await.unwrap();
            let rep = spool.recovery().clone();
            let id = store(&spool, &extra, 100).await.unwrap();
            spool.close().await.unwrap();
            (rep, id)
        });
        let lost_bodies: Vec<_> = rep
            .lost_bodies
            .iter()
            .map(|c| (c.path.clone(), c.offset, c.bytes))
            .collect();
        assert_eq!(
            lost_bodies,
            [(seg_path(commit.0), commit.1, commit.2 - commit.1)],
            "older={older}: {rep:#?}"
        );
        let q = std::fs::read(rep.lost_bodies[0].quarantine.as_ref().unwrap()).unwrap();
        assert_eq!(
            q, commit_bytes,
            "older={older}: the commit, kept in quarantine"
        );
        assert!(extra_id > lost, "older={older}: {extra_id} issued again");
        let mut want = kept.clone();
        want.insert(extra_id, extra.clone());
        assert_eq!(read_all(root), want, "older={older}");
        assert_verify_clean(root);
        // The next start finds nothing left to do.
        let again = run(|| async {
            let spool = ShardSpool::open(root, 0, &c).await.unwrap();
            let rep = spool.recovery().clone();
            spool.close().await.unwrap();
            rep
        });
        assert!(
            again.lost_bodies.is_empty() && again.damaged.is_empty() && again.cuts.is_empty(),
            "older={older}: {again:#?}"
        );
        assert_eq!(read_all(root), want, "older={older}");
    }
}

#[test]
fn ids_stay_unique_and_increasing_across_reopen_even_if_the_clock_lags() {
    let dir = TempDir::new("ids");
    let root = dir.path().to_owned();
    let c = cfg(1024, 4096, Durability::None);
    let mut seen = HashSet::new();
    let far = run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for _ in 0..20 {
            assert!(seen.insert(store(&spool, b"x", 1).await.unwrap()));
        }
        // As if the clock had been a day ahead in the previous run.
        let far = spool.next_queue_id().seq() + 86_400_000_000;
        spool.set_next_id_seq(far);
        assert_eq!(store(&spool, b"y", 1).await.unwrap().seq(), far);
        spool.close().await.unwrap();
        far
    });
    // Floor from the records of the newest (unsealed) segment.
    let far2 = run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let id = spool.next_queue_id();
        assert!(id.seq() > far, "{} <= {far}", id.seq());
        assert!(seen.insert(id));
        // Fill segments until one is sealed after an id far ahead again.
        let far2 = id.seq() + 86_400_000_000;
        spool.set_next_id_seq(far2);
        for _ in 0..40 {
            assert!(seen.insert(store(&spool, &body(300, 1), 300).await.unwrap()));
        }
        spool.close().await.unwrap();
        far2
    });
    // Floor from the seal of a sealed segment: delete the newest segment
    // (as a consumer might once it is done with it). Its ids' own floor goes
    // with it, but the seal before it still lifts ids past everything left.
    let shard = root.join("shard-0");
    let (segs, _) = super::scan::list_segments(&shard).unwrap();
    assert!(segs.len() > 2);
    std::fs::remove_file(&segs.last().unwrap().1).unwrap();
    let left = read_all(&root);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let id = spool.next_queue_id();
        assert!(id.seq() > far2, "{} <= {far2}", id.seq());
        assert!(left.keys().all(|k| k.seq() < id.seq()));
        spool.close().await.unwrap();
    });
    // Ids of other shards never collide with shard 0's.
    run(|| async {
        let s1 = ShardSpool::open(&root, 1, &c).await.unwrap();
        let id = s1.next_queue_id();
        assert_eq!(id.shard(), 1);
        assert!(!seen.contains(&id));
        s1.close().await.unwrap();
    });
}

#[test]
fn a_shard_opens_once_per_process_and_a_foreign_lock_is_refused() {
    let dir = TempDir::new("lock");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::None);
    run(|| async {
        let s0 = ShardSpool::open(&root, 0, &c).await.unwrap();
        assert!(matches!(
            ShardSpool::open(&root, 0, &c).await.err(),
            Some(SpoolError::ShardBusy { shard: 0, .. })
        ));
        // Another shard of the same process shares the lock.
        let s1 = ShardSpool::open(&root, 1, &c).await.unwrap();
        s0.close().await.unwrap();
        s1.close().await.unwrap();
        drop((s0, s1));
    });
    // A lock held through another open file description, as another
    // process would hold it; the pid comes from the file.
    use std::os::unix::io::AsRawFd;
    std::fs::write(root.join(LOCK_FILE), "4242\n").unwrap();
    let f = std::fs::File::open(root.join(LOCK_FILE)).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let err = run(|| async { ShardSpool::open(&root, 0, &c).await.err() }).unwrap();
    assert!(
        matches!(
            err,
            SpoolError::Locked {
                pid: Some(4242),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("is in use by another ringmx (pid 4242)"),
        "{err}"
    );
    drop(f);
    reopen(&root, &c);
}

#[test]
fn write_error_fails_only_its_message_and_leaves_no_half_record() {
    let dir = TempDir::new("eio");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let b = body(300, 1);
        want.insert(store(&spool, &b, 300).await.unwrap(), b);
        // ENOSPC after a few bytes: "full".
        faults::fail_write(10, libc::ENOSPC);
        let e = store(&spool, &body(300, 3), 300).await.unwrap_err();
        assert!(e.is_full(), "{e}");
        // A streamed message whose second fragment fails.
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        w.write(&body(1500, 4)).await.unwrap();
        faults::fail_write(0, libc::ENOSPC);
        assert!(w.write(&body(1500, 5)).await.unwrap_err().is_full());
        assert!(w.commit().await.unwrap_err().is_full());
        // Most of a record reaches the file, then EIO: not "full".
        faults::fail_write(900, libc::EIO);
        let e = store(&spool, &body(1000, 2), 1000).await.unwrap_err();
        assert!(!e.is_full(), "{e}");
        // The writer goes on in the same segment; this record is shorter
        // than the failed one's leftovers would be, had they not been cut.
        let b = body(10, 6);
        let id = store(&spool, &b, 7).await.unwrap();
        want.insert(id, b);
        let st = spool.stats();
        assert_eq!((st.full_errors, st.io_errors), (2, 1), "{st:?}");
        assert_eq!(st.written.segment, 1);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

/// Three 600 KiB messages committed at once: one batch, three write runs.
async fn store_three(
    spool: &Rc<ShardSpool>,
    seed: u64,
) -> Vec<(Result<QueueId, SpoolError>, Vec<u8>)> {
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let spool = Rc::clone(spool);
            let b = body(600 << 10, seed + i);
            glommio::spawn_local(async move { (store(&spool, &b, 64 << 10).await, b) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await);
    }
    out
}

#[test]
fn records_written_before_a_failed_uncut_write_are_synced_in_their_own_segment() {
    let dir = TempDir::new("uncut");
    let root = dir.path().to_owned();
    let c = cfg(1 << 20, 64 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        // A is written; B is half written, then EIO, and the truncate that
        // would undo it fails too, so the segment is abandoned; C then goes
        // to a new segment. A must be made durable in *its* segment before
        // that: fail that fdatasync, and A must fail (not be acknowledged by
        // C's fdatasync of the new segment).
        faults::pass_write();
        faults::fail_write(1000, libc::EIO);
        faults::fail_truncate(libc::EIO);
        faults::fail_sync(libc::EIO);
        let r = store_three(&spool, 10).await;
        let e = r[0].0.as_ref().unwrap_err();
        let seg1 = segment_file_name(1);
        assert!(
            matches!(e, SpoolError::Io { op: "fdatasync", path, .. } if path.ends_with(&seg1)),
            "{e:?}"
        );
        assert!(r[1].0.is_err());
        want.insert(*r[2].0.as_ref().unwrap(), r[2].1.clone());
        // Again without the sync failure: A is durable in segment 2, C in 3.
        faults::pass_write();
        faults::fail_write(1000, libc::EIO);
        faults::fail_truncate(libc::EIO);
        let r = store_three(&spool, 20).await;
        assert!(r[1].0.is_err());
        for i in [0, 2] {
            want.insert(*r[i].0.as_ref().unwrap(), r[i].1.clone());
        }
        let st = spool.stats();
        assert_eq!((st.durable, st.written), (st.written, st.written));
        assert_eq!(st.written.segment, 3, "{st:?}");
        spool.close().await.unwrap();
    });
    // Segment 1 was cut back to its header by the failed fdatasync; segment
    // 2 ends in an end mark and the junk of B's failed write, which the next
    // start leaves alone and never reads as records.
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let rep = spool.recovery();
        assert!(rep.cuts.is_empty() && rep.damaged.is_empty(), "{rep:?}");
        spool.close().await.unwrap();
    });
    let seg2 = root.join("shard-0").join(segment_file_name(2));
    let kinds: Vec<Kind> = records(&seg2).iter().map(|r| r.2).collect();
    assert_eq!(
        kinds,
        [Kind::Message, Kind::Message],
        "C, A, then the end mark"
    );
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

#[test]
fn failed_fdatasync_abandons_the_segment_and_fails_its_waiters() {
    let dir = TempDir::new("fsyncfail");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let b = body(300, 1);
        want.insert(store(&spool, &b, 300).await.unwrap(), b);
        // A streamed message has fragments written but not yet synced ...
        let id = spool.next_queue_id();
        let mut streamed = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        streamed.write(&body(3000, 2)).await.unwrap();
        // ... when the next group commit's fdatasync fails.
        faults::fail_sync(libc::EIO);
        let e = store(&spool, &body(300, 3), 300).await.unwrap_err();
        assert!(!e.is_full(), "{e}");
        // Its fragments were cut away with the segment's unsynced tail.
        let e = streamed.commit().await.unwrap_err();
        assert!(matches!(e, SpoolError::FragmentsLost(_)), "{e}");
        // New messages go to a new segment.
        let b = body(300, 4);
        let id = store(&spool, &b, 300).await.unwrap();
        want.insert(id, b);
        assert_eq!(spool.stats().written.segment, 2);
        // ENOSPC from fdatasync (delayed allocation) is "full".
        faults::fail_sync(libc::ENOSPC);
        assert!(store(&spool, &body(300, 5), 300)
            .await
            .unwrap_err()
            .is_full());
        let b = body(300, 6);
        want.insert(store(&spool, &b, 300).await.unwrap(), b);
        assert_eq!(spool.stats().written.segment, 3);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
    // The abandoned segments are unsealed: recovery scans them in full.
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        assert_eq!(
            spool.recovery().scanned_segments,
            3,
            "{:?}",
            spool.recovery()
        );
        assert!(spool.recovery().cuts.is_empty());
        spool.close().await.unwrap();
    });
}

#[test]
fn recovery_removes_an_unfinished_segment_and_ignores_foreign_files() {
    let dir = TempDir::new("cruft");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::None);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let b = body(100, 1);
        want.insert(store(&spool, &b, 100).await.unwrap(), b);
        spool.close().await.unwrap();
    });
    let shard = root.join("shard-0");
    // A crash between creating segment 2 and writing its header.
    std::fs::write(shard.join(segment_file_name(2)), [0u8; 20]).unwrap();
    std::fs::write(shard.join("notes.txt"), "operator was here").unwrap();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let rep = spool.recovery();
        let names = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&rep.removed), [segment_file_name(2)]);
        assert_eq!(names(&rep.foreign), ["notes.txt"]);
        let b = body(100, 2);
        want.insert(store(&spool, &b, 100).await.unwrap(), b);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    // A segment of a newer format refuses the start instead of being misread.
    std::fs::write(shard.join("ringmx-v3-0000000000000009.seg"), b"future").unwrap();
    let e = run(|| async { ShardSpool::open(&root, 0, &c).await.err() }).unwrap();
    assert!(
        matches!(e, SpoolError::UnsupportedVersion { found: 3, .. }),
        "{e}"
    );
}

#[test]
fn reader_sees_committed_messages_while_the_server_writes() {
    let dir = TempDir::new("live");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..3 {
            store(&spool, &body(200, i), 200).await.unwrap();
        }
        assert_eq!(read_all(&root).len(), 3);
        let id = spool.next_queue_id();
        let mut w = spool
            .begin(id, &envelope("client.example"), &received(id))
            .unwrap();
        w.write(&body(5000, 9)).await.unwrap();
        // Fragments are on disk, the message is not committed: invisible.
        assert_eq!(read_all(&root).len(), 3);
        assert!(matches!(
            SpoolReader::open(&root).unwrap().get(id),
            Err(SpoolError::NotFound(_))
        ));
        commit(&spool, w, &body(5000, 9)).await.unwrap();
        let all = read_all(&root);
        assert_eq!(all.len(), 4);
        assert_eq!(all[&id], body(5000, 9));
        spool.close().await.unwrap();
    });
}

#[test]
fn free_space_floor_refuses_before_writing() {
    let dir = TempDir::new("floor");
    let root = dir.path().to_owned();
    let mut c = cfg(1024, 1 << 20, Durability::None);
    c.min_free_bytes = u64::MAX;
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let id = spool.next_queue_id();
        let e = spool.begin(id, &envelope("h"), &received(id)).unwrap_err();
        assert!(
            e.is_full() && matches!(e, SpoolError::BelowFreeFloor { .. }),
            "{e}"
        );
        assert_eq!(spool.stats().full_errors, 1);
        spool.close().await.unwrap();
    });
}

/// A test that lacks a privilege it needs: on a developer's machine it says
/// `skipped: <why>` and passes; in CI (`RINGMX_CI` set, as `.ci/run` does)
/// nothing may be skipped, so it fails. `tests/common` has the same rule for
/// the black-box tests.
fn skip_or_fail(why: &str) {
    let ci = std::env::var_os("RINGMX_CI").is_some_and(|v| !v.is_empty() && v != "0");
    assert!(
        !ci,
        "RINGMX_CI is set, so this test may not be skipped: {why}"
    );
    // Straight to stderr: libtest captures eprintln! of passing tests, and
    // a skip must be seen.
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("{test}: skipped: {why}\n").as_bytes(),
    );
}

/// Mounts a tmpfs of `size` at `at`; unmounts on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> std::io::Result<Self> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size}")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(t) = std::ffi::CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Fills the filesystem holding `path` with one file until ENOSPC.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xAAu8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
}

#[test]
fn disk_full_for_real_fails_with_full_and_recovers_when_space_returns() {
    let dir = TempDir::new("full");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // Injected ENOSPC is covered above; this one needs the kernel's.
    let tmpfs = match Tmpfs::mount(&mnt, "1m") {
        Ok(t) => t,
        Err(e) => {
            return skip_or_fail(&format!(
                "cannot mount a tmpfs ({e}); needs root with CAP_SYS_ADMIN"
            ))
        }
    };
    let root = mnt.join("spool");
    let filler = mnt.join("filler");
    let mut c = cfg(16 << 10, 256 << 10, Durability::Fsync);
    // Appending, so the write that meets the full disk is a message's: with
    // `spool.direct_io` the zeros written ahead hold space for the next MiB.
    c.direct_io = false;
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..5 {
            let b = body(2000, i);
            want.insert(store(&spool, &b, 700).await.unwrap(), b);
        }
        fill(&filler);
        let e = store(&spool, &body(64 << 10, 10), 4096).await.unwrap_err();
        assert!(e.is_full(), "{e}");
        // The kernel's ENOSPC, not the free-space floor (which is 0 here).
        assert!(matches!(e, SpoolError::NoSpace { .. }), "{e:?}");
        let e = store(&spool, &body(8 << 10, 11), 4096).await.unwrap_err();
        assert!(e.is_full(), "{e}");
        // Everything acknowledged before is intact, even with the disk full.
        assert_eq!(read_all(&root), want);
        assert_verify_clean(&root);
        std::fs::remove_file(&filler).unwrap();
        let b = body(8 << 10, 12);
        want.insert(store(&spool, &b, 4096).await.unwrap(), b);
        let st = spool.stats();
        assert!(st.full_errors >= 2, "{st:?}");
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
    // The free-space floor on the same filesystem: 2 MiB wanted, 1 MiB exists.
    let mut floor = c.clone();
    floor.min_free_bytes = 2 << 20;
    let want_floor = floor.min_free_bytes;
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &floor).await.unwrap();
        let id = spool.next_queue_id();
        let e = spool.begin(id, &envelope("h"), &received(id)).unwrap_err();
        assert!(
            matches!(e, SpoolError::BelowFreeFloor { min_free, .. } if min_free == want_floor),
            "{e}"
        );
        spool.close().await.unwrap();
    });
    drop(tmpfs);
}

/// Opens shard 0 (running recovery) and closes it again: a restart.
fn reopen(root: &Path, c: &SpoolConfig) {
    run(|| async {
        ShardSpool::open(root, 0, c)
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });
}

/// Simulates a power loss: cuts every segment of shard 0 back to the length
/// its last fdatasync covered (`faults::synced_len`).
fn lose_unsynced(root: &Path) {
    let shard = root.join(super::format::shard_dir_name(0));
    for e in std::fs::read_dir(&shard).unwrap() {
        let p = e.unwrap().path();
        let synced =
            faults::synced_len(&p).unwrap_or_else(|| panic!("{} was never synced", p.display()));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(usize::try_from(synced).unwrap());
        forget_unsynced_overwrites(&p, &mut bytes);
        std::fs::write(&p, bytes).unwrap();
    }
}

/// A power cut also loses what was written over zeros the file already
/// held (`spool.prewrite_bytes`) after its last fdatasync: those bytes
/// read as the zeros they were.
fn forget_unsynced_overwrites(p: &Path, bytes: &mut [u8]) {
    if let Some(z) = faults::synced_zeros_from(p) {
        let z = usize::try_from(z).unwrap().min(bytes.len());
        bytes[z..].fill(0);
    }
}

#[test]
fn fragments_in_a_broken_segment_are_synced_before_their_commit_is_acknowledged() {
    let dir = TempDir::new("brokenfrag");
    let root = dir.path().to_owned();
    let c = cfg(1024, 64 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        // A streamed message has two fragments written, not yet synced ...
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        let b = body(3000, 2);
        w.write(&b).await.unwrap();
        assert!(spool.stats().durable < spool.stats().written);
        // ... when another message's write fails and so does the truncate
        // that would undo it: segment 1 is abandoned with no job waiting.
        faults::fail_write(10, libc::EIO);
        faults::fail_truncate(libc::EIO);
        assert!(store(&spool, &body(300, 3), 300).await.is_err());
        // The commit goes to segment 2; its 250 must wait until the
        // fragments in segment 1 are durable too.
        want.insert(commit(&spool, w, &b).await.unwrap(), b);
        assert_eq!(spool.stats().written.segment, 2);
        // Same again, but the fdatasync of the abandoned segment fails:
        // the fragments are lost, so the commit must fail.
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        w.write(&body(3000, 4)).await.unwrap();
        // (That fdatasync is the one after the end mark that stands in
        // for the failed truncate.)
        faults::fail_write(10, libc::EIO);
        faults::fail_truncate(libc::EIO);
        faults::fail_sync(libc::EIO);
        assert!(store(&spool, &body(300, 5), 300).await.is_err());
        let e = w.commit().await.unwrap_err();
        assert!(matches!(e, SpoolError::FragmentsLost(_)), "{e:?}");
        let b = body(300, 6);
        want.insert(store(&spool, &b, 300).await.unwrap(), b);
        spool.close().await.unwrap();
    });
    lose_unsynced(&root);
    reopen(&root, &c);
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

#[test]
fn fragments_before_a_failed_uncut_seal_are_synced_before_their_commit_is_acknowledged() {
    let dir = TempDir::new("brokenseal");
    let root = dir.path().to_owned();
    // Two 1 KiB fragments fill most of a segment: the commit rotates.
    let c = cfg(1024, 2500, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        let b = body(3000, 2);
        w.write(&b).await.unwrap();
        // The seal fails, and so does the truncate that would undo it.
        faults::fail_write(0, libc::EIO);
        faults::fail_truncate(libc::EIO);
        want.insert(commit(&spool, w, &b).await.unwrap(), b);
        assert_eq!(spool.stats().written.segment, 2);
        spool.close().await.unwrap();
    });
    lose_unsynced(&root);
    reopen(&root, &c);
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

#[test]
fn a_message_failed_by_fdatasync_stays_gone_when_the_truncate_fails_too() {
    let dir = TempDir::new("syncnocut");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let b = body(300, 1);
        want.insert(store(&spool, &b, 300).await.unwrap(), b);
        // The fdatasync fails and the truncate back to the durable offset
        // fails too: the client hears 451, so the record must not come back.
        faults::fail_sync(libc::EIO);
        faults::fail_truncate(libc::EIO);
        assert!(store(&spool, &body(300, 3), 300).await.is_err());
        let b = body(300, 4);
        want.insert(store(&spool, &b, 300).await.unwrap(), b);
        assert_eq!(spool.stats().written.segment, 2);
        spool.close().await.unwrap();
    });
    // A restart without a crash: the page cache still holds what was written.
    reopen(&root, &c);
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

#[test]
fn node_id_is_the_setting_or_the_host_name_and_bad_ones_refuse_the_start() {
    use super::format::check_node_id;
    let mut c = cfg(1024, 1 << 20, Durability::None);
    c.node_id = String::new();
    let derived = super::segment::node_id(&c).unwrap();
    assert!(check_node_id(&derived).is_ok(), "{derived:?}");
    c.node_id = "mx-7.example".into();
    assert_eq!(super::segment::node_id(&c).unwrap(), "mx-7.example");
    let dir = TempDir::new("nodeid");
    let root = dir.path().to_owned();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        store(&spool, b"x", 1).await.unwrap();
        spool.close().await.unwrap();
    });
    let seg = SegmentFile::open(&root.join("shard-0").join(segment_file_name(1))).unwrap();
    assert_eq!(seg.header.node_id(), "mx-7.example");
    c.node_id = "two words".into();
    let e = run(|| async { ShardSpool::open(&root, 0, &c).await.err() }).unwrap();
    assert!(matches!(e, SpoolError::BadNodeId { .. }), "{e}");
}

/// A message refused after a failed write must not come back after a
/// crash: the truncate that undoes the write is made durable before the
/// refusal (or an end mark takes its place), so the file's size on disk
/// never again covers the failed record.
#[test]
fn the_cut_after_a_failed_write_is_synced_before_the_refusal() {
    let dir = TempDir::new("cutsync");
    let root = dir.path().to_owned();
    let mut c = cfg(1 << 20, 64 << 20, Durability::Fsync);
    // File lengths are the point: no zeros ahead (`spool.direct_io` writes
    // them; its cut-back is checked by the power-cut oracle elsewhere).
    c.direct_io = false;
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let a = body(500, 1);
        let a_id = store(&spool, &a, 500).await.unwrap();
        let seg = root.join("shard-0").join(segment_file_name(1));
        let len_a = std::fs::metadata(&seg).unwrap().len();
        let syncs = faults::syncs_done(&seg);
        // B's record reaches the file but for its last bytes, then EIO.
        faults::fail_write(500, libc::EIO);
        assert!(store(&spool, &body(600, 2), 600).await.is_err());
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len_a);
        assert_eq!(faults::syncs_done(&seg), syncs + 1, "the cut was synced");
        assert_eq!(faults::synced_len(&seg), Some(len_a));
        // And when the truncate fails too, a synced end mark stands in.
        faults::fail_write(500, libc::EIO);
        faults::fail_truncate(libc::EIO);
        assert!(store(&spool, &body(600, 3), 600).await.is_err());
        assert_eq!(
            faults::syncs_done(&seg),
            syncs + 2,
            "the end mark was synced"
        );
        let kinds: Vec<Kind> = records(&seg).iter().map(|r| r.2).collect();
        assert_eq!(kinds, [Kind::Message], "A, then the end mark");
        spool.close().await.unwrap();
        a_id
    });
    assert_eq!(read_all(&root).len(), 1);
    assert_verify_clean(&root);
}

/// A CRC-valid record of kind Seal whose payload is not a seal's 16 bytes
/// (a writer bug, or crafted bytes with this segment's nonce) at the end of
/// the open segment: recovery must neither read past it (which failed the
/// start) nor lose the mail before it.
#[test]
fn a_seal_of_the_wrong_length_is_cut_and_the_mail_before_it_stays() {
    use super::format::{finish_record, set_kind, stamp_record, FileHeader, RECORD_HEADER_LEN};
    let dir = TempDir::new("short-seal");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for seed in 0..3 {
            let b = body(200, seed);
            want.insert(store(&spool, &b, 200).await.unwrap(), b);
        }
        spool.close().await.unwrap();
    });
    let seg = std::fs::read_dir(root.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let nonce = FileHeader::decode(&bytes).unwrap().nonce;
    let mut rec = vec![0u8; RECORD_HEADER_LEN + 8];
    set_kind(&mut rec, Kind::Seal);
    finish_record(&mut rec).unwrap();
    stamp_record(&mut rec, nonce);
    let mut damaged = bytes.clone();
    damaged.extend_from_slice(&rec);
    std::fs::write(&seg, &damaged).unwrap();
    reopen(&root, &c);
    assert_eq!(read_all(&root), want);
    assert_verify_clean(&root);
}

#[test]
fn in_flight_messages_pin_the_segment_of_their_first_fragment() {
    let dir = TempDir::new("pins");
    let root = dir.path().to_owned();
    // 1 KiB fragments, 4 KiB segments: a few fragments per segment.
    let c = cfg(1024, 4096, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let slot = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        spool.publish_pins_to(std::sync::Arc::clone(&slot));
        let pin = || slot.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(pin(), crate::spool::NO_PIN);
        // A small message never writes a fragment, so it never pins.
        let id = spool.next_queue_id();
        let mut small = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        small.write(b"short\r\n").await.unwrap();
        assert_eq!(pin(), crate::spool::NO_PIN);

        let first = spool.stats().written.segment;
        let id = spool.next_queue_id();
        let mut old = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        let data = body(20 << 10, 7);
        old.write(&data[..3000]).await.unwrap();
        assert_eq!(pin(), first);
        // Another message streams across several rotations meanwhile.
        store(&spool, &body(16 << 10, 8), 1000).await.unwrap();
        let id = spool.next_queue_id();
        let mut young = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        young.write(&body(3000, 9)).await.unwrap();
        let later = spool.oldest_pin().unwrap();
        assert_eq!(later, first, "the oldest pin wins");
        assert!(spool.stats().written.segment > first, "segments rotated");
        // The old message finishes: the pin moves to the young one's segment.
        old.write(&data[3000..]).await.unwrap();
        commit(&spool, old, &data).await.unwrap();
        let young_seg = pin();
        assert!(young_seg > first && young_seg != crate::spool::NO_PIN);
        // Aborting releases it too.
        young.abort();
        assert_eq!(pin(), crate::spool::NO_PIN);
        small.write(b"more\r\n").await.unwrap();
        small.commit().await.unwrap();
        assert_eq!(pin(), crate::spool::NO_PIN);
        spool.close().await.unwrap();
    });
}

/// Drains what `it` holds now: (id, position after it) per message.
fn drain_now(it: &mut ShardMessages) -> Vec<(QueueId, Location)> {
    let mut v = Vec::new();
    while let Some(m) = it.next() {
        v.push((m.unwrap().id, it.resume_point()));
    }
    v
}

#[test]
fn a_reader_resumes_at_any_position_it_reported() {
    let dir = TempDir::new("resume");
    let root = dir.path().to_owned();
    // 16 KiB segments: the messages spread over several sealed segments.
    let c = cfg(4096, 16 << 10, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..40u64 {
            store(&spool, &body(1500 + i as usize * 13, i), 700)
                .await
                .unwrap();
        }
        spool.close().await.unwrap();
    });
    let r = SpoolReader::open(&root).unwrap();
    let mut it = r.shard_messages(0);
    let all = drain_now(&mut it);
    assert_eq!(all.len(), 40);
    let segments: HashSet<u64> = all.iter().map(|(_, p)| p.segment).collect();
    assert!(segments.len() > 3, "{segments:?}");
    let end = r.shard_end(0).unwrap().unwrap();
    assert_eq!(it.resume_point(), end, "a drained reader stands at the end");
    // From every reported position, exactly the messages after it follow.
    for (k, (_, pos)) in all.iter().enumerate() {
        let rest: Vec<QueueId> = drain_now(&mut r.shard_messages_from(0, *pos))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let want: Vec<QueueId> = all[k + 1..].iter().map(|(id, _)| *id).collect();
        assert_eq!(rest, want, "resumed at {pos:?}");
    }
    // Offset 0 is the start of that segment's records.
    let second = *segments.iter().filter(|s| **s > 1).min().unwrap();
    let from_second = drain_now(&mut r.shard_messages_from(
        0,
        Location {
            segment: second,
            offset: 0,
        },
    ));
    let first_in_second = all.iter().position(|(_, p)| p.segment >= second).unwrap();
    assert_eq!(from_second.len(), 40 - first_in_second);
    // A segment older than the oldest present: start at the oldest. Delete
    // the first segment, as space reclamation would.
    let (segs, _) = scan::list_segments(&root.join("shard-0")).unwrap();
    std::fs::remove_file(&segs[0].1).unwrap();
    let after_gc = drain_now(&mut r.shard_messages_from(
        0,
        Location {
            segment: 0,
            offset: 0,
        },
    ));
    assert!(
        !after_gc.is_empty() && after_gc.len() < 40,
        "{}",
        after_gc.len()
    );
    assert_eq!(after_gc.last().unwrap().0, all.last().unwrap().0);
}

/// `shard_end` (and the lag figures) count the live segment's records,
/// not the zeros written ahead of them (`spool.direct_io` keeps 1 MiB):
/// a consumer that drains "what was committed when it started" stops
/// there, and a caught-up consumer shows no lag. The bisection for the
/// zeros is misled by a body holding 8 KiB of zeros, and a last record
/// longer than its look-back is found by a walk from the start.
#[test]
fn the_shard_ends_where_its_records_end_not_where_the_zeros_do() {
    let dir = TempDir::new("records-end");
    let root = dir.path().to_owned();
    let mut c = cfg(1 << 20, 64 << 20, Durability::Fsync);
    c.direct_io = true;
    let mut zeroed = body(40 << 10, 3);
    zeroed[16 << 10..24 << 10].fill(0);
    let bodies = [body(700, 1), zeroed, body(600 << 10, 4), body(300, 5)];
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let r = SpoolReader::open(&root).unwrap();
        for b in &bodies {
            store(&spool, b, 64 << 10).await.unwrap();
            let written = spool.stats().written;
            let seg = root
                .join("shard-0")
                .join(segment_file_name(written.segment));
            let file_len = std::fs::metadata(&seg).unwrap().len();
            assert!(file_len > written.offset, "zeros ahead: {file_len}");
            assert_eq!(r.shard_end(0).unwrap(), Some(written));
            let lag = crate::outlet::consumer::lag_bytes(&r, 0, written).unwrap();
            assert_eq!(lag, 0, "a caught-up consumer lags by nothing");
        }
        spool.close().await.unwrap();
    });
}

/// A torn record in the newest segment of a running server, with an intact
/// one after it, is a write under way (`spool.direct_io` writes a run as
/// device requests that finish in any order), not damage: a tailing reader
/// waits there and reads every record once the write is whole. Once the
/// server has stopped, the same bytes are damage, reported and stepped over.
#[test]
fn a_torn_record_before_a_whole_one_in_a_running_servers_segment_is_waited_for() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("torn-live");
    let root = dir.path().to_owned();
    let c = cfg(1 << 20, 64 << 20, Durability::Fsync);
    let seg = root.join("shard-0").join(segment_file_name(1));
    let mut ids = Vec::new();
    let mut torn_at = 0;
    let flip = |at: u64| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
    };
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..3 {
            let before = spool.stats().written.offset;
            ids.push(store(&spool, &body(2000, i), 2000).await.unwrap());
            if i == 1 {
                torn_at = (before + spool.stats().written.offset) / 2;
            }
        }
        flip(torn_at);
        let r = SpoolReader::open(&root).unwrap();
        let mut it = r.shard_messages(0);
        let got: Vec<QueueId> = drain_now(&mut it).into_iter().map(|x| x.0).collect();
        assert_eq!(got, ids[..1], "waits at the torn record, skips nothing");
        flip(torn_at);
        let got: Vec<QueueId> = drain_now(&mut it).into_iter().map(|x| x.0).collect();
        assert_eq!(got, ids[1..], "the write done, every record is read");
        spool.close().await.unwrap();
    });
    // Stopped: damage now. Cut, it is reported once; the mail after it stays.
    flip(torn_at);
    let r = SpoolReader::open(&root).unwrap();
    let all: Vec<_> = r.shard_messages(0).collect();
    assert_eq!(all.iter().filter(|m| m.is_err()).count(), 1, "{all:?}");
    let ok: Vec<QueueId> = all
        .into_iter()
        .filter_map(|m| m.ok().map(|m| m.id))
        .collect();
    assert_eq!(ok, vec![ids[0], ids[2]]);
}

#[test]
fn a_reader_that_returned_none_sees_what_is_appended_later() {
    let dir = TempDir::new("tail");
    let root = dir.path().to_owned();
    let c = cfg(1024, 16 << 10, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let r = SpoolReader::open(&root).unwrap();
        let mut it = r.shard_messages(0);
        assert!(it.next().is_none(), "an empty spool");
        let mut want = Vec::new();
        for i in 0..3 {
            want.push(store(&spool, &body(300, i), 300).await.unwrap());
        }
        let mut got: Vec<QueueId> = drain_now(&mut it).into_iter().map(|x| x.0).collect();
        assert_eq!(got, want);
        let before = it.resume_point();
        assert!(it.next().is_none(), "nothing new yet");
        assert_eq!(it.resume_point(), before);
        // A message streamed in fragments: invisible until its commit.
        let id = spool.next_queue_id();
        let mut w = spool
            .begin(id, &envelope("client.example"), &received(id))
            .unwrap();
        w.write(&body(5000, 9)).await.unwrap();
        assert!(it.next().is_none(), "fragments alone are no message");
        commit(&spool, w, &body(5000, 9)).await.unwrap();
        want.push(id);
        // Enough more to rotate into new segments while tailing.
        for i in 10..40 {
            want.push(store(&spool, &body(1200, i), 400).await.unwrap());
            if i % 7 == 0 {
                got.extend(drain_now(&mut it).into_iter().map(|x| x.0));
            }
        }
        got.extend(drain_now(&mut it).into_iter().map(|x| x.0));
        assert_eq!(got, want);
        assert!(
            it.resume_point().segment > before.segment,
            "{:?}",
            it.resume_point()
        );
        assert_eq!(Some(it.resume_point()), r.shard_end(0).unwrap());
        spool.close().await.unwrap();
    });
}

/// For other modules' tests (the outlet's consumer): a spool at `root`
/// with `n` messages in shard 0, in segments of `segment_bytes`; their ids
/// and bodies, in order.
pub(crate) fn write_test_spool(root: &Path, n: u64, segment_bytes: u64) -> Vec<(QueueId, Vec<u8>)> {
    let c = cfg(4096, segment_bytes, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(root, 0, &c).await.unwrap();
        let mut v = Vec::new();
        for i in 0..n {
            let b = body(200 + (i as usize * 97) % 3000, i);
            v.push((store(&spool, &b, 1000).await.unwrap(), b));
        }
        spool.close().await.unwrap();
        v
    })
}

/// For other modules' tests: appends to shard 0 at `root` a streamed
/// message of `len` bytes that is aborted (fragments, no commit), in
/// segments of `segment_bytes`: segments with nothing to ship.
pub(crate) fn append_aborted(root: &Path, len: usize, segment_bytes: u64) {
    let c = cfg(1024, segment_bytes, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(root, 0, &c).await.unwrap();
        let id = spool.next_queue_id();
        let mut w = spool.begin(id, &envelope("h"), &received(id)).unwrap();
        for chunk in body(len, 7).chunks(1000) {
            w.write(chunk).await.unwrap();
        }
        w.abort();
        spool.close().await.unwrap();
    });
}

#[test]
fn a_tailing_reader_goes_on_from_where_the_server_cut_its_segment() {
    let dir = TempDir::new("tailcut");
    let root = dir.path().to_owned();
    let c = cfg(1024, 1 << 20, Durability::Fsync);
    let mut want = Vec::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..3 {
            want.push(store(&spool, &body(400, i), 400).await.unwrap());
        }
        spool.close().await.unwrap();
    });
    let r = SpoolReader::open(&root).unwrap();
    let mut it = r.shard_messages(0);
    let seen: Vec<(QueueId, Location)> = drain_now(&mut it);
    assert_eq!(seen.len(), 3);
    // The server cuts the last record away (as after a failed fdatasync a
    // reader raced): the file ends where that record began.
    let cut = seen[1].1;
    let (segs, _) = scan::list_segments(&root.join("shard-0")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs.last().unwrap().1)
        .unwrap();
    f.set_len(cut.offset).unwrap();
    drop(f);
    assert!(it.next().is_none());
    assert_eq!(it.resume_point(), cut, "back at the cut");
    // The server writes on from there: the reader sees the new message.
    let mut new = Vec::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        new.push(store(&spool, &body(900, 9), 300).await.unwrap());
        spool.close().await.unwrap();
    });
    let got: Vec<QueueId> = drain_now(&mut it).into_iter().map(|x| x.0).collect();
    assert_eq!(got, new);
}

/// Found in review: a tailing reader that reaches the end of the live
/// segment reads its length, finds no more records, then lists the
/// directory. If the server appends its last records to that segment, seals
/// it and creates the next one in between, the reader used to move to the
/// new segment without looking at the old one again: the commits written in
/// that window were never returned, and a consumer's checkpoint moved past
/// them (a few per 4,000 messages here). A race, so this test runs many
/// rotations with several readers on a busy machine.
#[test]
fn a_tailing_reader_misses_no_commit_when_the_server_rotates_under_it() {
    // Tiny segments: a rotation every few messages.
    tailing_readers_miss_no_commit(&cfg(4096, 4096, Durability::None));
}

/// The same race with zeros written ahead of the records
/// (`spool.prewrite_bytes`, here the whole 4 KiB segment): a reader sees
/// zeros where the next record will be, the server then writes it inside
/// the file, seals and cuts the zeros away, so the file ends up no longer
/// than the reader last saw it. A reader that judged "did it change" by
/// the file's length alone moved on to the next segment and skipped those
/// records.
#[test]
fn a_tailing_reader_misses_no_commit_written_over_zeros_ahead() {
    let mut c = cfg(4096, 4096, Durability::Fsync);
    c.prewrite_bytes = 4096;
    c.direct_io = false;
    tailing_readers_miss_no_commit(&c);
}

/// The same with `spool.direct_io`, which rewrites the block holding the
/// end of the records with every commit, writes whole blocks past the
/// segment's limit when it seals, and cuts them: a reader that saw the
/// longer file met "file shrank" and stopped for good.
#[test]
fn a_tailing_reader_misses_no_commit_written_with_direct_io() {
    let mut c = cfg(4096, 4096, Durability::Fsync);
    c.direct_io = true;
    tailing_readers_miss_no_commit(&c);
}

fn tailing_readers_miss_no_commit(c: &SpoolConfig) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = TempDir::in_memory("tailrace");
    let root = dir.path().to_owned();
    let c = c.clone();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (root, done) = (root.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let r = SpoolReader::open(&root).unwrap();
                let mut it = r.shard_messages(0);
                let mut got = Vec::new();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    got.extend(it.by_ref().flatten().map(|m| m.id));
                    if finished {
                        return got;
                    }
                }
            })
        })
        .collect();
    let want: Vec<QueueId> = run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let mut v = Vec::new();
        for i in 0..4000u64 {
            // Not `store`: its power-cut check per commit would make the
            // fsync variant take minutes, and the race is the point here.
            let id = spool.next_queue_id();
            let mut w = spool
                .begin(id, &envelope("client.example"), &received(id))
                .unwrap();
            w.write(&body(300, i)).await.unwrap();
            v.push(w.commit().await.unwrap());
        }
        spool.close().await.unwrap();
        v
    });
    done.store(true, Ordering::SeqCst);
    let all: HashSet<QueueId> = want.iter().copied().collect();
    for (k, h) in readers.into_iter().enumerate() {
        let got: HashSet<QueueId> = h.join().unwrap().into_iter().collect();
        let missed = all.difference(&got).count();
        assert_eq!(
            missed,
            0,
            "reader {k} missed {missed} of {} committed messages",
            all.len()
        );
    }
}

/// `spool.prewrite_bytes`: the live segment is longer than its records
/// (zeros ahead of them); a copy taken then (as a crash leaves it) reads
/// back exactly the committed messages, no zero byte is ever taken for a
/// record, recovery cuts the zeros and appending goes on; sealed segments
/// and a closed one end with their last record.
#[test]
fn zeros_written_ahead_are_the_end_of_data_and_sealing_cuts_them() {
    let dir = TempDir::new("prewrite");
    let root = dir.path().to_owned();
    let crash = TempDir::new("prewrite-crash");
    let mut c = cfg(1024, 64 * 1024, Durability::Fsync);
    c.prewrite_bytes = 16 * 1024;
    let shard = root.join(super::format::shard_dir_name(0));
    let mut want = BTreeMap::new();
    run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        for i in 0..150u64 {
            // Small messages and streamed ones (fragments, then a commit).
            let b = body(if i % 10 == 0 { 3000 } else { 700 }, i);
            want.insert(store(&spool, &b, 700).await.unwrap(), b);
        }
        let (segs, _) = list_segments(&shard).unwrap();
        assert!(segs.len() >= 3, "want rotations: {segs:?}");
        let (_, live) = segs.last().unwrap();
        let len = std::fs::metadata(live).unwrap().len();
        let data_end = spool.stats().written.offset;
        assert!(
            len > data_end,
            "no zeros ahead: file {len}, records end {data_end}"
        );
        for (_, p) in &segs[..segs.len() - 1] {
            let (_, end, kind, _) = *records(p).last().unwrap();
            assert_eq!(kind, Kind::Seal, "{}", p.display());
            assert_eq!(
                end,
                std::fs::metadata(p).unwrap().len(),
                "zeros after the seal"
            );
        }
        // A crash now: the page cache survives (SIGKILL), zeros and all.
        let to = crash.path().join(super::format::shard_dir_name(0));
        std::fs::create_dir_all(&to).unwrap();
        for (_, p) in &segs {
            std::fs::copy(p, to.join(p.file_name().unwrap())).unwrap();
        }
        assert_eq!(read_all(&root), want);
        spool.close().await.unwrap();
        let (segs, _) = list_segments(&shard).unwrap();
        let (_, last) = segs.last().unwrap();
        let (_, end, _, _) = *records(last).last().unwrap();
        assert_eq!(
            end,
            std::fs::metadata(last).unwrap().len(),
            "zeros left at close"
        );
    });
    assert_eq!(read_all(crash.path()), want);
    assert_verify_clean(crash.path());
    // Recovery cuts the zeros (nothing to quarantine) and appending goes on.
    run(|| async {
        let spool = ShardSpool::open(crash.path(), 0, &c).await.unwrap();
        let rec = spool.recovery();
        assert!(
            rec.damaged.is_empty() && rec.lost_bodies.is_empty(),
            "{rec:?}"
        );
        assert_eq!(rec.cuts.len(), 1, "{rec:?}");
        assert_eq!(
            rec.cuts[0].quarantine, None,
            "the cut tail was all zero: {rec:?}"
        );
        let b = body(500, 999);
        want.insert(store(&spool, &b, 500).await.unwrap(), b);
        spool.close().await.unwrap();
    });
    assert_eq!(read_all(crash.path()), want);
    assert_verify_clean(crash.path());
}

/// For other modules' tests: a spool at `root` with `n` messages of `len`
/// bytes in shard 0, each streamed in fragments (1 KiB buffered), in
/// segments of `segment_bytes`; their ids, in order.
pub(crate) fn write_streamed_spool(
    root: &Path,
    n: u64,
    len: usize,
    segment_bytes: u64,
) -> Vec<QueueId> {
    let c = cfg(1024, segment_bytes, Durability::Fsync);
    run(|| async {
        let spool = ShardSpool::open(root, 0, &c).await.unwrap();
        let mut v = Vec::new();
        for i in 0..n {
            v.push(store(&spool, &body(len, i), 1000).await.unwrap());
        }
        spool.close().await.unwrap();
        v
    })
}

/// Found in review: the reclaimer's incremental scan for Commit records
/// (`reclaim::walk`) stepped over a segment it could not open for any
/// reason, not only one deleted meanwhile, and never looked at it again. A segment that is unreadable for a moment (EMFILE, EIO;
/// here its name briefly is a directory) hides its Commit records: the
/// fragments they list in older segments are deleted once every consumer
/// has passed those, and the message, still ahead of the consumers, can no
/// longer be read.
#[test]
fn a_segment_unreadable_for_a_moment_does_not_free_the_fragments_its_commits_need() {
    use crate::outlet::checkpoint::{Checkpoint, ConsumerDir};
    use crate::spool::reclaim::{Reclaimer, Shared};
    let dir = TempDir::new("reclaim-blip");
    let root = dir.path().to_owned();
    // 1 KiB fragments, 8 KiB segments: a 30 KiB message streams across
    // several segments and commits in a later one.
    let c = cfg(1024, 8 << 10, Durability::Fsync);
    let data = body(30 << 10, 5);
    let id = run(|| async {
        let spool = ShardSpool::open(&root, 0, &c).await.unwrap();
        let id = store(&spool, &data, 1000).await.unwrap();
        // More mail after it, so its segment is sealed.
        store(&spool, &body(6000, 6), 1000).await.unwrap();
        store(&spool, &body(6000, 7), 1000).await.unwrap();
        spool.close().await.unwrap();
        id
    });
    let r = SpoolReader::open(&root).unwrap();
    let msg = r
        .shard_messages(0)
        .map(Result::unwrap)
        .find(|m| m.id == id)
        .unwrap();
    let commit_seg = msg.location.segment;
    let (segs, _) = scan::list_segments(&root.join("shard-0")).unwrap();
    assert!(
        segs[0].0 < commit_seg,
        "the fragments start in an older segment"
    );
    // A consumer has read every segment before the commit's, not the commit.
    let cd = ConsumerDir::new(&root, "slow").unwrap();
    cd.create().unwrap();
    cd.write(
        0,
        &Checkpoint {
            position: Location {
                segment: commit_seg,
                offset: 0,
            },
            shipped: 0,
            written_unix: 0,
        },
    )
    .unwrap();
    // The commit's segment cannot be opened during the reclaimer's pass.
    let path = segs
        .iter()
        .find(|(s, _)| *s == commit_seg)
        .unwrap()
        .1
        .clone();
    let aside = path.with_extension("aside");
    std::fs::rename(&path, &aside).unwrap();
    std::fs::create_dir(&path).unwrap();
    let mut rec = Reclaimer::new(&root, &c, Shared::new(1));
    let pass = rec.pass(false);
    std::fs::remove_dir(&path).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    assert!(pass.is_err(), "an unreadable segment stops the pass");
    rec.pass(false).unwrap();
    let again = r
        .shard_messages(0)
        .map(Result::unwrap)
        .find(|m| m.id == id)
        .expect("the message is still listed");
    match again.body_bytes() {
        Ok(b) => assert!(b == data, "the body changed"),
        Err(e) => panic!("the consumer has not shipped it yet, but its body is gone: {e}"),
    }
}

/// A reader reads a sealed segment (a newer one exists) through 128 KiB
/// windows: a damaged message record there is still reported once and
/// stepped over, and every other message, of that segment and the next,
/// is read byte-identical, whichever record is hit.
#[test]
fn a_reader_reading_ahead_steps_over_damage_in_a_sealed_segment() {
    let dir = TempDir::in_memory("readahead-damage");
    let msgs = write_test_spool(dir.path(), 40, 32 << 10);
    let (segs, _) = super::scan::list_segments(&dir.path().join("shard-0")).unwrap();
    assert!(segs.len() >= 2, "{segs:?}");
    let first = &segs[0].1;
    let clean = std::fs::read(first).unwrap();
    let recs = records(first);
    let hits: Vec<_> = recs.iter().filter(|r| r.2 == Kind::Message).collect();
    assert!(hits.len() >= 3, "{recs:?}");
    for r in hits {
        let mut b = clean.clone();
        // A byte of its payload: only the CRC can tell.
        b[((r.0 + r.1) / 2) as usize] ^= 0x5a;
        std::fs::write(first, &b).unwrap();
        let (mut got, mut errors) = (Vec::new(), 0);
        for m in SpoolReader::open(dir.path()).unwrap().shard_messages(0) {
            match m {
                Ok(m) => got.push((m.id, m.body_bytes().unwrap())),
                Err(SpoolError::Corrupt { .. }) => errors += 1,
                Err(e) => panic!("record at {}: {e}", r.0),
            }
        }
        let want: Vec<(QueueId, Vec<u8>)> = msgs
            .iter()
            .filter(|(id, _)| id.seq() != r.3)
            .cloned()
            .collect();
        assert_eq!(errors, 1, "record at {}", r.0);
        assert_eq!(got.len(), want.len(), "record at {}", r.0);
        assert!(got == want, "record at {}: other messages differ", r.0);
    }
}
