//! [`ShardSpool`]: one shard's append-only segments and its writer task,
//! which does the group commit.
//!
//! Sessions never touch a file. A [`MessageWriter`] builds whole records in
//! its own buffer and hands each one to the shard's writer task as a job;
//! the task is the only code that writes the shard's files, so records from
//! concurrent sessions never interleave. Each time it wakes, the task takes
//! every queued job (the batch), appends them with one positioned write per
//! run of records (up to 1 MiB, within the current segment), issues **one**
//! fdatasync for the batch, and only then completes the jobs that wait for
//! durability. Jobs queued
//! while that fdatasync runs form the next batch: the more sessions commit at
//! once, the more records share an fdatasync. `spool.group_commit_delay`
//! (default 0) makes the task wait that long after waking for more jobs to
//! join the batch.
//!
//! Two positions are kept apart ([`SpoolStats::written`],
//! [`SpoolStats::durable`]): a commit completes only once the durable
//! position covers its record's last byte (`durability = fsync`), or once it
//! is written (`durability = none`, benchmarks only). Fragments of streamed
//! messages complete when written: that is the back-pressure that bounds a
//! session's memory; the fdatasync of their commit record covers them.
//!
//! Failures: a failed write is cut back (truncate to where the run began) so
//! no later record is appended after half a record; if even that fails, the
//! segment is abandoned and a new one started. A failed fdatasync cannot be
//! retried safely (the kernel may have dropped the dirty pages), so the
//! segment is cut back to its last durable offset and abandoned, and every
//! job the sync covered fails. Either way only the jobs involved fail; the
//! writer goes on with the next batch.
//!
//! Queue ids: a per-shard sequence number that starts, at open, at the larger
//! of the current time in microseconds and one past the largest sequence
//! found on disk (record headers, seals, segment headers); it then counts up
//! by one per message. On-disk sequences keep it monotonic across restarts
//! even when the clock steps back; the clock keeps it fresh when every
//! segment has been deleted. See SPOOL-FORMAT.md, "Queue ids".
//!
//! | concern | file |
//! |---|---|
//! | open, begin, close: the shard's handle | `mod.rs` ([`ShardSpool`]) |
//! | state shared by sessions and the writer | `shared.rs` |
//! | a record to the writer, its verdict back | `channel.rs` |
//! | the writer task: batches, group commit, rotation, cut-back | `writer.rs` |
//! | write, truncate, fdatasync (with test faults) | `file_io.rs`, `faults.rs` |
//! | the `min_free_bytes` floor | `free_space.rs` |
//! | `sync_cores`: where io_uring workers run | `iowq.rs` |
//! | counters | `stats.rs` ([`SpoolStats`]) |

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::task::JoinHandle;
use glommio::TaskQueueHandle;

use super::error::SpoolError;
use super::format::{check_node_id, node_id_from_hostname, shard_dir_name};
use super::lock::DirLock;
use super::message::MessageWriter;
use super::queue_id::QueueId;
use super::recovery::{recover_shard, RecoveryReport};
use super::EnvelopeRecord;
use crate::config::SpoolConfig;

mod channel;
mod direct;
#[cfg(test)]
pub(crate) mod faults;
mod file_io;
mod free_space;
mod iowq;
mod shared;
mod stats;
mod writer;

pub(crate) use channel::{Completion, Job, Written};
pub(crate) use free_space::available_bytes;
use free_space::FreeCheck;
pub(crate) use shared::Core;
pub use shared::NO_PIN;
pub use stats::SpoolStats;
use writer::Writer;

/// Wall-clock time since 1970, for queue ids and segment headers.
fn now_unix() -> Duration {
    // A clock before 1970 is a broken clock; ids then rest on the disk floor alone.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The node id segment headers carry: `spool.node_id`, or when that is
/// empty one derived from the host name (`/proc/sys/kernel/hostname`), so
/// that node id plus queue id is unique across a fleet of hosts.
///
/// # Errors
/// A configured node id that is not 1 to 32 of `A-Z a-z 0-9 . _ -`.
pub(crate) fn node_id(cfg: &SpoolConfig) -> Result<String, SpoolError> {
    if cfg.node_id.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        return Ok(node_id_from_hostname(&host));
    }
    check_node_id(&cfg.node_id).map_err(|why| SpoolError::BadNodeId {
        id: cfg.node_id.clone(),
        why,
    })?;
    Ok(cfg.node_id.clone())
}

/// Applies `spool.sync_cores` to this thread's io_uring workers. Only
/// where they run changes, never whether mail is safe: a failure is one
/// warning and the shard goes on.
fn bind_sync_workers(cfg: &SpoolConfig, shard: u32) {
    let cpus = match &cfg.sync_cores {
        crate::config::Cores::All => return,
        crate::config::Cores::List(l) => l.clone(),
        crate::config::Cores::Count(n) => {
            crate::warn!(
                "spool shard={shard}: spool.sync_cores = {n} is a count; it takes a list of CPUs \
                 (2-3, or 3, for one); io_uring workers stay where the kernel puts them"
            );
            return;
        }
    };
    match iowq::bind_io_workers(&cpus) {
        Ok(()) => crate::debug!("spool shard={shard}: io_uring workers on CPUs {cpus:?}"),
        Err(e) => crate::warn!("spool shard={shard}: {e}; io_uring workers stay where they are"),
    }
}

/// One shard's spool. Single-threaded: create, use and drop it on the
/// shard's glommio executor.
///
/// # Example
/// ```no_run
/// # use std::path::Path;
/// # use ringmx::config::SpoolConfig;
/// # use ringmx::spool::{EnvelopeRecord, ShardSpool};
/// glommio::LocalExecutor::default().run(async {
///     let spool = ShardSpool::open(Path::new("spool"), 0, &SpoolConfig::default()).await?;
///     let id = spool.next_queue_id();
///     let env = EnvelopeRecord {
///         arrival_unix: 1_795_880_682,
///         client: None,
///         helo: "client.example",
///         mail_from: "a@example.org",
///         mail_params: "",
///         rcpts: &["b@example.com"],
///         tls: None,
///         auth: None,
///     };
///     let mut msg = spool.begin(id, &env, b"Received: from client.example\r\n")?;
///     msg.write(b"Subject: hi\r\n\r\nhello\r\n").await?;
///     let id = msg.commit().await?; // durable now: reply 250 with `id`
///     spool.close().await
/// # ; Ok::<(), ringmx::spool::SpoolError>(())
/// }).unwrap();
/// ```
pub struct ShardSpool {
    core: Rc<Core>,
    writer: RefCell<Option<JoinHandle<Result<(), SpoolError>>>>,
}

impl ShardSpool {
    /// Runs recovery for this shard, then opens the newest segment for
    /// appending (or creates one) and starts the shard's writer task in the
    /// current task queue. Takes the spool lock for this process if no other
    /// shard of it holds it yet.
    ///
    /// # Errors
    /// [`SpoolError::Locked`] when another process owns the spool;
    /// [`SpoolError::ShardBusy`] when this process has the shard open;
    /// [`SpoolError::ShardOutOfRange`]; recovery and I/O errors.
    ///
    /// # Panics
    /// Outside a glommio executor (it spawns the writer task).
    pub async fn open(root: &Path, shard: u32, cfg: &SpoolConfig) -> Result<Rc<Self>, SpoolError> {
        Self::open_in(root, shard, cfg, None).await
    }

    /// [`ShardSpool::open`], with the writer task in `queue`: a task queue of
    /// its own keeps a crowd of connection tasks from delaying the group
    /// commit that they all wait for.
    ///
    /// # Errors
    /// As [`ShardSpool::open`], plus the executor refusing the task queue.
    ///
    /// # Panics
    /// Outside a glommio executor.
    pub async fn open_in(
        root: &Path,
        shard: u32,
        cfg: &SpoolConfig,
        queue: Option<TaskQueueHandle>,
    ) -> Result<Rc<Self>, SpoolError> {
        QueueId::new(shard, 0)?;
        // Before recovery's I/O, so no worker exists yet with the old affinity.
        bind_sync_workers(cfg, shard);
        let lock = DirLock::acquire(root)?;
        let claim = lock.claim_shard(shard)?;
        let dir = lock.root().join(shard_dir_name(shard));
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io("creating", &dir, e))?;
            std::fs::File::open(lock.root())
                .and_then(|d| d.sync_all())
                .map_err(|e| SpoolError::io("syncing directory", lock.root(), e))?;
        }
        let rec = recover_shard(&dir, shard).await?;
        let now_micros = u64::try_from(now_unix().as_micros()).unwrap_or(u64::MAX);
        let core = Rc::new(Core {
            shard,
            dir,
            node_id: node_id(cfg)?,
            cfg: cfg.clone(),
            queue: RefCell::new(VecDeque::new()),
            writer_waker: RefCell::new(None),
            closing: Cell::new(false),
            next_id: Cell::new(rec.id_floor.max(now_micros)),
            stats: RefCell::new(SpoolStats::default()),
            frag_epoch: Cell::new(0),
            free: RefCell::new(FreeCheck::default()),
            recovery: rec.report,
            claim: RefCell::new(Some(claim)),
            pins: RefCell::new(std::collections::BTreeMap::new()),
            pin_out: RefCell::new(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                NO_PIN,
            ))),
            sync_metrics: RefCell::default(),
        });
        let writer = Writer::open(Rc::clone(&core), rec.append_to, rec.next_segment_seq).await?;
        let task = match queue {
            None => glommio::spawn_local(writer.run()),
            Some(q) => glommio::spawn_local_into(writer.run(), q).map_err(|e| {
                SpoolError::glommio("starting the spool writer for", core.dir.clone(), e)
            })?,
        };
        Ok(Rc::new(ShardSpool {
            core,
            writer: RefCell::new(Some(task.detach())),
        }))
    }

    /// The shard number.
    pub fn shard(&self) -> u32 {
        self.core.shard
    }

    /// The shard's directory.
    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    /// What recovery found and did when this shard was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.core.recovery
    }

    /// A fresh queue id: never issued before on this shard (also not before
    /// a restart; see the module docs), and carrying the shard number so it
    /// is unique across shards. The server calls this before `begin`, since
    /// the id goes into the `Received:` header.
    pub fn next_queue_id(&self) -> QueueId {
        let seq = self.core.next_id.get();
        self.core.next_id.set(seq.saturating_add(1));
        // The shard number was range-checked by `open`.
        QueueId::new(self.core.shard, seq).unwrap_or_else(|_| unreachable!("shard checked at open"))
    }

    /// Starts a message. Nothing is written until the body outgrows
    /// `max_buffered_message_bytes` or the message is committed; dropping the
    /// writer (or [`MessageWriter::abort`]) discards it.
    ///
    /// # Errors
    /// [`SpoolError::BelowFreeFloor`] (`is_full`) when the filesystem has less
    /// than `min_free_bytes` free; [`SpoolError::Closed`]; [`SpoolError::TooLarge`]
    /// for an envelope field a record cannot hold; a statvfs failure.
    pub fn begin(
        self: &Rc<Self>,
        id: QueueId,
        env: &EnvelopeRecord<'_>,
        received_header: &[u8],
    ) -> Result<MessageWriter, SpoolError> {
        if self.core.closing.get() {
            return Err(SpoolError::Closed(self.core.shard));
        }
        if id.shard() != self.core.shard {
            return Err(SpoolError::WrongShard {
                id,
                shard: self.core.shard,
            });
        }
        self.core.check_free()?;
        MessageWriter::new(Rc::clone(self), id, env, received_header)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SpoolStats {
        *self.core.stats.borrow()
    }

    /// Stops taking new messages, lets the writer finish every record already
    /// queued (commits in flight complete normally), syncs, and releases the
    /// shard (and the process's spool lock with the last shard).
    ///
    /// # Errors
    /// The final fdatasync or close failing.
    pub async fn close(&self) -> Result<(), SpoolError> {
        self.core.closing.set(true);
        self.core.wake_writer();
        let task = self.writer.borrow_mut().take();
        let r = match task {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.core.claim.borrow_mut().take();
        r
    }

    /// Records each group commit's fdatasync time and batch size into
    /// `metrics` from now on (the writer task is its only writer).
    pub fn publish_sync_metrics_to(&self, metrics: std::sync::Arc<crate::metrics::SyncMetrics>) {
        *self.core.sync_metrics.borrow_mut() = metrics;
    }

    /// Publishes this shard's in-flight pin into `slot` from now on: the
    /// oldest segment holding a fragment of a message still in flight
    /// (written, not yet committed or aborted), or [`NO_PIN`]. The space
    /// reclaimer (another thread) never deletes that segment or a later one.
    pub fn publish_pins_to(&self, slot: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        *self.core.pin_out.borrow_mut() = slot;
        self.core.publish_pin();
    }

    /// The oldest pinned segment now (see [`ShardSpool::publish_pins_to`]).
    pub fn oldest_pin(&self) -> Option<u64> {
        self.core.pins.borrow().keys().next().copied()
    }

    pub(crate) fn core(&self) -> &Rc<Core> {
        &self.core
    }

    /// Test hook: makes the next queue id `seq`.
    #[cfg(test)]
    pub(crate) fn set_next_id_seq(&self, seq: u64) {
        self.core.next_id.set(seq);
    }
}

impl Drop for ShardSpool {
    fn drop(&mut self) {
        // Not closed explicitly: let the (detached) writer drain the queue and
        // exit; the shard claim goes when it drops the core.
        self.core.closing.set(true);
        self.core.wake_writer();
    }
}
