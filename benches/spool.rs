//! The spool's append path (`durability = none`: this measures ringmx's own
//! cost per record — buffering, CRC32C, the writer task, io_uring writes —
//! not the disk's fdatasync latency, which loadgen runs measure):
//!
//! * `spool_append/{tiny,small,huge}`: one session, messages of 256 B, 4 KiB
//!   (one `Message` record each) and 1 MiB (streamed as 256 KiB fragments
//!   plus a commit), committed one after another. `Throughput::Bytes` of body.
//! * `spool_append/naive_std_write/*`: the baseline: a length + CRC32C header,
//!   the envelope and the body in one `Vec`, `write_all` to an `O_APPEND`
//!   `std::fs::File` per message.
//! * `spool_records/{tiny_x1,tiny_x64}`: records per second for 256 B
//!   messages from one session, and from 64 concurrent sessions (group commit
//!   batches their records into one write).
//!
//! Each bench checks its result: the writer's counters must show exactly the
//! messages committed and the bytes on disk must add up; before timing, a
//! sample of every size is read back byte for byte.
//!
//! Files go to `$RINGMX_BENCH_DIR`, else /dev/shm when present (so the page
//! cache writeback of a disk does not add noise), else the temp dir.
//! Run: `cargo bench --bench spool`.

use std::future::Future;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmx::config::{Durability, SpoolConfig};
use ringmx::spool::{EnvelopeRecord, ShardSpool, SpoolReader};

const RCPTS: &[&str] = &["user@example.com"];

fn env() -> EnvelopeRecord<'static> {
    EnvelopeRecord {
        arrival_unix: 1_795_959_882,
        client: Some(([192, 0, 2, 1], 40000).into()),
        helo: "client.example",
        mail_from: "sender@example.org",
        mail_params: "BODY=8BITMIME",
        rcpts: RCPTS,
        tls: None,
        auth: None,
    }
}

const RECEIVED: &[u8] = b"Received: from client.example ([192.0.2.1])\r\n\tby mx.example (ringmx) with ESMTP id 0000000000000000\r\n\tfor <user@example.com>; Sun, 29 Nov 2026 13:44:42 +0000\r\n";

fn body(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            if i % 78 == 77 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

fn cfg() -> SpoolConfig {
    SpoolConfig {
        dir: PathBuf::new(),
        segment_bytes: 64 << 20,
        durability: Durability::None,
        max_buffered_message_bytes: 256 << 10,
        min_free_bytes: 0,
        ..SpoolConfig::default()
    }
}

fn base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RINGMX_BENCH_DIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh, empty spool directory (removed again by `clean`).
fn fresh(tag: &str) -> PathBuf {
    let d = base_dir().join(format!("ringmx-bench-spool-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn clean(d: &Path) {
    let _ = std::fs::remove_dir_all(d);
}

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor (io_uring; raise `ulimit -l` if this fails)")
}

/// Stores one message, streaming it in 64 KiB reads as a connection would.
async fn store(spool: &Rc<ShardSpool>, data: &[u8]) {
    let id = spool.next_queue_id();
    let mut w = spool.begin(id, &env(), RECEIVED).expect("begin");
    for c in data.chunks(64 << 10) {
        w.write(c).await.expect("write");
    }
    w.commit().await.expect("commit");
}

/// Total bytes in the shard's segment files.
fn disk_bytes(spool_root: &Path) -> u64 {
    std::fs::read_dir(spool_root.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Runs `iters` messages of `data` through a fresh spool, `sessions` at a
/// time; returns the time taken and checks the counters and the disk.
fn timed<F, Fut>(ex: &glommio::LocalExecutor, tag: &str, iters: u64, each: F) -> Duration
where
    F: Fn(Rc<ShardSpool>, u64) -> Fut,
    Fut: Future<Output = u64>,
{
    let root = fresh(tag);
    let elapsed = ex.run(async {
        let spool = ShardSpool::open(&root, 0, &cfg()).await.expect("open");
        let start = Instant::now();
        let committed = each(Rc::clone(&spool), iters).await;
        let elapsed = start.elapsed();
        let st = spool.stats();
        assert_eq!(committed, iters);
        assert_eq!(st.commits, iters, "{st:?}");
        assert_eq!(st.io_errors + st.full_errors, 0, "{st:?}");
        spool.close().await.expect("close");
        // Every appended byte is on disk, plus one header per segment.
        assert_eq!(
            disk_bytes(&root),
            st.bytes + st.segments_created * ringmx::spool::format::FILE_HEADER_LEN as u64,
            "{st:?}"
        );
        elapsed
    });
    clean(&root);
    elapsed
}

/// Before timing anything: every size reads back byte for byte.
fn check_round_trip(ex: &glommio::LocalExecutor) {
    let root = fresh("check");
    let sizes = [0usize, 256, 4096, 300 << 10, 1 << 20];
    ex.run(async {
        let spool = ShardSpool::open(&root, 0, &cfg()).await.unwrap();
        for &n in &sizes {
            store(&spool, &body(n)).await;
        }
        spool.close().await.unwrap();
    });
    let got: Vec<Vec<u8>> = SpoolReader::open(&root)
        .unwrap()
        .shard_messages(0)
        .map(|m| m.unwrap().body_bytes().unwrap())
        .collect();
    assert_eq!(got, sizes.iter().map(|&n| body(n)).collect::<Vec<_>>());
    clean(&root);
}

/// The baseline: one `write_all` per message, header + envelope + body.
fn naive_append(file: &mut std::fs::File, data: &[u8], scratch: &mut Vec<u8>) {
    scratch.clear();
    scratch.extend_from_slice(&[0u8; 8]);
    let e = env();
    for s in [e.helo, e.mail_from, e.mail_params, e.rcpts[0]] {
        scratch.extend_from_slice(&(s.len() as u32).to_le_bytes());
        scratch.extend_from_slice(s.as_bytes());
    }
    scratch.extend_from_slice(RECEIVED);
    scratch.extend_from_slice(data);
    let len = (scratch.len() - 8) as u32;
    scratch[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&scratch[8..]);
    scratch[4..8].copy_from_slice(&crc.to_le_bytes());
    file.write_all(scratch).unwrap();
}

fn bench_append(c: &mut Criterion) {
    let ex = executor();
    check_round_trip(&ex);
    let mut g = c.benchmark_group("spool_append");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, n) in [("tiny", 256usize), ("small", 4096), ("huge", 1 << 20)] {
        let data = body(n);
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::new("ringmx", name), |b| {
            b.iter_custom(|iters| {
                timed(&ex, name, iters, |spool, iters| {
                    let data = &data;
                    async move {
                        for _ in 0..iters {
                            store(&spool, black_box(data)).await;
                        }
                        iters
                    }
                })
            })
        });
        g.bench_function(BenchmarkId::new("naive_std_write", name), |b| {
            b.iter_custom(|iters| {
                let root = fresh("naive");
                std::fs::create_dir_all(&root).unwrap();
                let path = root.join("log");
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                let mut scratch = Vec::new();
                let start = Instant::now();
                for _ in 0..iters {
                    naive_append(&mut f, black_box(&data), &mut scratch);
                }
                let elapsed = start.elapsed();
                assert!(std::fs::metadata(&path).unwrap().len() >= iters * n as u64);
                clean(&root);
                elapsed
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("spool_records");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1));
    let data = body(256);
    for sessions in [1u64, 64] {
        g.bench_function(BenchmarkId::new("tiny", format!("x{sessions}")), |b| {
            b.iter_custom(|iters| {
                timed(&ex, "records", iters, |spool, iters| {
                    let data = data.clone();
                    async move {
                        let tasks: Vec<_> = (0..sessions)
                            .map(|s| {
                                let spool = Rc::clone(&spool);
                                let data = data.clone();
                                // Session s stores its share of the messages.
                                let n = iters / sessions + u64::from(s < iters % sessions);
                                glommio::spawn_local(async move {
                                    for _ in 0..n {
                                        store(&spool, &data).await;
                                    }
                                    n
                                })
                            })
                            .collect();
                        let mut done = 0;
                        for t in tasks {
                            done += t.await;
                        }
                        done
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
