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

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::CString;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::future::poll_fn;
use glommio::io::{BufferedFile, Directory, OpenOptions};
use glommio::task::JoinHandle;
use glommio::TaskQueueHandle;

use super::error::SpoolError;
use super::format::{
    encode_seal, segment_file_name, shard_dir_name, FileHeader, Seal, FILE_HEADER_LEN,
    SEAL_RECORD_LEN,
};
use super::lock::{DirLock, ShardClaim};
use super::message::MessageWriter;
use super::queue_id::QueueId;
use super::recovery::{recover_shard, RecoveryReport};
use super::EnvelopeRecord;
use crate::config::{Durability, SpoolConfig};

/// A position in a shard's spool: a segment and a byte offset in it.
/// Positions order by segment, then offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The segment's sequence number.
    pub segment: u64,
    /// Byte offset in the segment file.
    pub offset: u64,
}

/// Counters of one shard's spool, for the server's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended: messages, fragments, commits and seals.
    pub records: u64,
    /// Messages acknowledged to their session: durable under
    /// `durability = fsync`, written under `none`.
    pub commits: u64,
    /// Fragment records appended (streamed message bodies).
    pub fragments: u64,
    /// fdatasync calls that made records durable (group commits and segment
    /// seals; not the one-off sync of a new segment's header).
    pub fdatasyncs: u64,
    /// Bytes appended to segments, record headers and seals included.
    pub bytes: u64,
    /// Writer wake-ups that found work: one per group of records.
    pub batches: u64,
    /// Segments this process created.
    pub segments_created: u64,
    /// Records that failed for lack of space (the server's `452 4.3.1`),
    /// plus messages refused at `begin` under `min_free_bytes`.
    pub full_errors: u64,
    /// Records that failed for any other I/O reason (`451 4.3.0`).
    pub io_errors: u64,
    /// Messages begun and dropped without a commit.
    pub aborted: u64,
    /// Every byte before this position has been written.
    pub written: Location,
    /// Every byte before this position has been fdatasync'd.
    pub durable: Location,
}

impl SpoolStats {
    /// Mean messages acknowledged per fdatasync: how well group commit batches.
    /// 0 before the first fdatasync.
    pub fn commits_per_fdatasync(&self) -> f64 {
        if self.fdatasyncs == 0 {
            0.0
        } else {
            self.commits as f64 / self.fdatasyncs as f64
        }
    }
}

/// Records are concatenated into one write up to this many bytes; a larger
/// record is written from its own buffer, uncopied. Bounds the copy and the
/// extra memory of a batch full of fragments.
const MAX_RUN_BYTES: u64 = 1 << 20;
/// How long a free-space reading is trusted.
const FREE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Appended bytes after which free space is read again regardless of time.
const FREE_CHECK_BYTES: u64 = 1 << 20;

/// The outcome the writer hands a job back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// Where the record starts.
    pub(crate) at: Location,
    /// [`Core::frag_epoch`] when it was written.
    pub(crate) epoch: u64,
}

/// One record for the writer task.
pub(crate) struct Job {
    /// The whole record, header included.
    pub(crate) bytes: Vec<u8>,
    /// Complete after the fdatasync (message, commit) or after the write (fragment).
    pub(crate) durable: bool,
    /// A commit of a streamed message: the epoch its fragments were written in.
    pub(crate) needs_epoch: Option<u64>,
    /// The message the record belongs to.
    pub(crate) id: QueueId,
    pub(crate) done: Rc<Completion>,
}

impl Job {
    /// Answers the session that queued the record.
    fn finish(self, r: Result<Written, SpoolError>) {
        self.done.complete(r);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Every path through the writer answers each job; should one ever
        // not (a bug, or the writer task torn down with jobs queued), the
        // session gets an error instead of waiting forever.
        if !self.done.answered.get() {
            self.done.complete(Err(SpoolError::Closed(self.id.shard())));
        }
    }
}

/// A one-shot slot the writer fills and a session awaits.
#[derive(Default)]
pub(crate) struct Completion {
    result: RefCell<Option<Result<Written, SpoolError>>>,
    waker: RefCell<Option<Waker>>,
    answered: Cell<bool>,
}

impl Completion {
    fn complete(&self, r: Result<Written, SpoolError>) {
        self.answered.set(true);
        *self.result.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits for the writer's verdict.
    pub(crate) async fn wait(&self) -> Result<Written, SpoolError> {
        poll_fn(|cx| {
            if let Some(r) = self.result.borrow_mut().take() {
                return Poll::Ready(r);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Free-space bookkeeping for `min_free_bytes`.
#[derive(Debug, Default)]
struct FreeCheck {
    at: Option<Instant>,
    bytes_at: u64,
    available: u64,
}

/// State shared by the shard's sessions and its writer task.
pub(crate) struct Core {
    pub(crate) shard: u32,
    pub(crate) dir: PathBuf,
    pub(crate) cfg: SpoolConfig,
    queue: RefCell<VecDeque<Job>>,
    writer_waker: RefCell<Option<Waker>>,
    closing: Cell<bool>,
    next_id: Cell<u64>,
    pub(crate) stats: RefCell<SpoolStats>,
    /// Bumped whenever bytes already reported as written are cut away (after
    /// a failed fdatasync); a commit whose fragments predate the bump fails.
    pub(crate) frag_epoch: Cell<u64>,
    free: RefCell<FreeCheck>,
    recovery: RecoveryReport,
    /// Keeps this process's spool lock and this shard's claim on it.
    claim: RefCell<Option<ShardClaim>>,
}

impl Core {
    /// Queues a record for the writer.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SpoolError> {
        if self.closing.get() {
            return Err(SpoolError::Closed(self.shard));
        }
        self.queue.borrow_mut().push_back(job);
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
        Ok(())
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Everything queued, or `None` once closing with nothing left.
    fn next_batch(&self) -> impl Future<Output = Option<Vec<Job>>> + '_ {
        poll_fn(move |cx| {
            let mut q = self.queue.borrow_mut();
            if !q.is_empty() {
                return Poll::Ready(Some(q.drain(..).collect()));
            }
            if self.closing.get() {
                return Poll::Ready(None);
            }
            *self.writer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn check_free(&self) -> Result<(), SpoolError> {
        let min_free = self.cfg.min_free_bytes;
        if min_free == 0 {
            return Ok(());
        }
        let bytes = self.stats.borrow().bytes;
        let mut f = self.free.borrow_mut();
        let stale = match f.at {
            None => true,
            Some(at) => {
                // Under the floor, look every time: space may have been freed.
                f.available < min_free
                    || at.elapsed() >= FREE_CHECK_INTERVAL
                    || bytes.saturating_sub(f.bytes_at) >= FREE_CHECK_BYTES
            }
        };
        if stale {
            f.available = available_bytes(&self.dir)
                .map_err(|e| SpoolError::io("checking free space of", &self.dir, e))?;
            f.at = Some(Instant::now());
            f.bytes_at = bytes;
        }
        if f.available < min_free {
            self.stats.borrow_mut().full_errors += 1;
            return Err(SpoolError::BelowFreeFloor {
                dir: self.dir.clone(),
                available: f.available,
                min_free,
            });
        }
        Ok(())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.claim.borrow_mut().take();
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is a valid
    // out-pointer that statvfs fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t and c_ulong are u64 on 64-bit Linux, u32 on 32-bit.
    #[allow(clippy::unnecessary_cast)]
    let avail = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(avail)
}

fn now_unix() -> Duration {
    // A clock before 1970 is a broken clock; ids then rest on the disk floor alone.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
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

    /// [`ShardSpool::open`], with the writer task in `queue` (DESIGN.md: keep
    /// fsyncs apart from connection tasks).
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
        });
        let mut writer = Writer {
            core: Rc::clone(&core),
            seg: None,
            next_segment_seq: rec.next_segment_seq,
            rotate_first: false,
        };
        match rec.append_to {
            Some((seq, len)) => {
                let path = core.dir.join(segment_file_name(seq));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .buffered_open(&path)
                    .await
                    .map_err(|e| SpoolError::glommio("opening segment", &path, e))?;
                if cfg.durability == Durability::Fsync {
                    // A previous run under `durability = none` may have left
                    // bytes only in the page cache; from now on they count as durable.
                    sync_file(&file, &path).await?;
                }
                writer.rotate_first = len >= cfg.segment_bytes;
                writer.seg = Some(Segment {
                    file,
                    path,
                    seq,
                    size: len,
                    durable: len,
                    broken: false,
                });
            }
            None => {
                writer.seg = Some(writer.create_segment().await?);
            }
        }
        if let Some(s) = &writer.seg {
            let at = Location {
                segment: s.seq,
                offset: s.size,
            };
            let mut st = core.stats.borrow_mut();
            st.written = at;
            st.durable = at;
        }
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

/// The segment being appended to.
struct Segment {
    file: BufferedFile,
    path: PathBuf,
    seq: u64,
    /// Bytes written (the file's length).
    size: u64,
    /// Bytes covered by an fdatasync.
    durable: u64,
    /// A write or sync failed and could not be undone: append elsewhere.
    broken: bool,
}

impl Segment {
    fn at(&self, offset: u64) -> Location {
        Location {
            segment: self.seq,
            offset,
        }
    }
}

/// The writer task's state: only it touches the shard's files.
struct Writer {
    core: Rc<Core>,
    seg: Option<Segment>,
    next_segment_seq: u64,
    /// The recovered segment is already full: seal it before the first append.
    rotate_first: bool,
}

impl Writer {
    async fn run(mut self) -> Result<(), SpoolError> {
        while let Some(mut batch) = self.core.next_batch().await {
            let delay = self.core.cfg.group_commit_delay;
            if !delay.is_zero() && self.core.cfg.durability == Durability::Fsync {
                // spool.group_commit_delay: let more commits join this batch.
                glommio::timer::sleep(delay).await;
                batch.extend(self.core.queue.borrow_mut().drain(..));
            }
            self.core.stats.borrow_mut().batches += 1;
            self.process(batch).await;
        }
        // Closing: anything written but not yet synced (fragments of
        // messages that were never committed) gets synced too.
        if let Some(mut seg) = self.seg.take() {
            if self.core.cfg.durability == Durability::Fsync && seg.durable < seg.size {
                self.sync(&mut seg, &mut Vec::new(), true).await;
            }
            seg.file
                .close()
                .await
                .map_err(|e| SpoolError::glommio("closing", &seg.path, e))?;
        }
        Ok(())
    }

    fn needs_rotation(&self, len: u64) -> bool {
        match &self.seg {
            None => true,
            Some(s) => {
                s.broken
                    || self.rotate_first
                    || (s.size > FILE_HEADER_LEN as u64
                        && s.size + len > self.core.cfg.segment_bytes)
            }
        }
    }

    /// Appends a batch, then syncs it once.
    async fn process(&mut self, batch: Vec<Job>) {
        let mut pending: VecDeque<Job> = batch.into();
        // Durable jobs written and waiting for the batch's fdatasync.
        let mut unsynced: Vec<(Location, Job)> = Vec::new();
        while let Some(first) = pending.front() {
            if self.needs_rotation(first.bytes.len() as u64) {
                if let Err(e) = self.rotate(&mut unsynced).await {
                    for job in pending.drain(..) {
                        self.fail(job, e.clone());
                    }
                    break;
                }
            }
            let Some(seg) = self.seg.as_ref() else {
                // `rotate` succeeded, so there is a segment; keep the loop total anyway.
                continue;
            };
            let limit = self.core.cfg.segment_bytes;
            let epoch = self.core.frag_epoch.get();
            let mut run: Vec<Job> = Vec::new();
            let mut run_len = 0u64;
            while let Some(job) = pending.pop_front() {
                if job.needs_epoch.is_some_and(|e| e != epoch) {
                    let id = job.id;
                    self.fail(job, SpoolError::FragmentsLost(id));
                    continue;
                }
                let len = job.bytes.len() as u64;
                let full = seg.size + run_len + len > limit || run_len + len > MAX_RUN_BYTES;
                if !run.is_empty() && full {
                    pending.push_front(job);
                    break;
                }
                run_len += len;
                run.push(job);
            }
            if !run.is_empty() {
                self.write_run(run, run_len, &mut unsynced).await;
            }
        }
        // Fragments alone need no fdatasync now: their commit's will cover them.
        if !unsynced.is_empty() {
            if let Some(mut seg) = self.seg.take() {
                self.sync(&mut seg, &mut unsynced, false).await;
                self.seg = Some(seg);
            }
        }
        debug_assert!(unsynced.is_empty());
    }

    fn fail(&self, job: Job, e: SpoolError) {
        let mut st = self.core.stats.borrow_mut();
        if e.is_full() {
            st.full_errors += 1;
        } else {
            st.io_errors += 1;
        }
        drop(st);
        job.finish(Err(e));
    }

    /// Writes jobs that fit the current segment with one positioned write:
    /// a single record straight from its buffer, several concatenated (a
    /// memcpy of at most [`MAX_RUN_BYTES`] beats a write per record).
    async fn write_run(
        &mut self,
        mut run: Vec<Job>,
        run_len: u64,
        unsynced: &mut Vec<(Location, Job)>,
    ) {
        let Some(seg) = self.seg.as_mut() else {
            // `process` rotates before every run, so there is a segment.
            for job in run {
                self.fail(job, SpoolError::Closed(self.core.shard));
            }
            return;
        };
        let start = seg.size;
        let lens: Vec<u64> = run.iter().map(|j| j.bytes.len() as u64).collect();
        let buf = if run.len() == 1 {
            // One record: hand its buffer to the kernel as is, no copy.
            std::mem::take(&mut run[0].bytes)
        } else {
            let mut b = Vec::with_capacity(run_len as usize);
            for j in &run {
                b.extend_from_slice(&j.bytes);
            }
            b
        };
        match write_all(&seg.file, &seg.path, buf, start).await {
            Ok(()) => {
                seg.size = start + run_len;
                let epoch = self.core.frag_epoch.get();
                let mut st = self.core.stats.borrow_mut();
                st.written = seg.at(seg.size);
                st.records += run.len() as u64;
                st.bytes += run_len;
                let mut off = start;
                for (mut job, len) in run.into_iter().zip(lens) {
                    let at = seg.at(off);
                    off += len;
                    // Free the record's memory now, not after the fdatasync.
                    job.bytes = Vec::new();
                    if job.durable {
                        unsynced.push((at, job));
                    } else {
                        st.fragments += 1;
                        job.finish(Ok(Written { at, epoch }));
                    }
                }
            }
            Err(e) => {
                rollback_write(seg, start).await;
                for job in run {
                    self.fail(job, e.clone());
                }
            }
        }
    }

    /// Makes `unsynced` durable with one fdatasync (or, under
    /// `durability = none`, completes them as written). `force`: sync even
    /// with no job waiting (sealing, closing).
    async fn sync(&self, seg: &mut Segment, unsynced: &mut Vec<(Location, Job)>, force: bool) {
        let fsync = self.core.cfg.durability == Durability::Fsync;
        if fsync && seg.durable < seg.size && (force || !unsynced.is_empty()) {
            match sync_file(&seg.file, &seg.path).await {
                Ok(()) => {
                    seg.durable = seg.size;
                    let mut st = self.core.stats.borrow_mut();
                    st.fdatasyncs += 1;
                    st.durable = seg.at(seg.durable);
                }
                Err(e) => {
                    // The kernel may already have dropped the pages it could
                    // not write and would report the next fdatasync clean:
                    // never retry. Cut back to what is known durable and
                    // abandon the segment; everything written since fails.
                    crate::error!(
                        "spool shard={}: {e}; abandoning the segment after offset {}",
                        self.core.shard,
                        seg.durable
                    );
                    // Cut back as after a failed write: if the truncate
                    // fails too, the header slot at `durable` is zeroed so
                    // recovery and readers stop there. Left in place, the
                    // intact records after it would be listed again after a
                    // restart, though their clients were told they failed.
                    let durable = seg.durable;
                    rollback_write(seg, durable).await;
                    seg.broken = true;
                    self.core.frag_epoch.set(self.core.frag_epoch.get() + 1);
                    self.core.stats.borrow_mut().written = seg.at(seg.size);
                    for (_, job) in unsynced.drain(..) {
                        self.fail(job, e.clone());
                    }
                    return;
                }
            }
        }
        let epoch = self.core.frag_epoch.get();
        let durable_end = seg.at(seg.durable);
        let mut st = self.core.stats.borrow_mut();
        for (at, job) in unsynced.drain(..) {
            // Under fsync the durable position now covers the record's last byte.
            debug_assert!(!fsync || at < durable_end);
            st.commits += 1;
            job.finish(Ok(Written { at, epoch }));
        }
    }

    /// Seals the current segment (if it is sound), makes it durable, and
    /// starts the next one.
    async fn rotate(&mut self, unsynced: &mut Vec<(Location, Job)>) -> Result<(), SpoolError> {
        self.rotate_first = false;
        if let Some(mut seg) = self.seg.take() {
            if !seg.broken {
                let seal = encode_seal(&Seal {
                    segment_len: seg.size + SEAL_RECORD_LEN as u64,
                    next_id_seq: self.core.next_id.get(),
                });
                match write_all(&seg.file, &seg.path, seal, seg.size).await {
                    Ok(()) => {
                        seg.size += SEAL_RECORD_LEN as u64;
                        let mut st = self.core.stats.borrow_mut();
                        st.records += 1;
                        st.bytes += SEAL_RECORD_LEN as u64;
                        st.written = seg.at(seg.size);
                    }
                    Err(e) => {
                        // Unsealed is fine: recovery then scans this segment in full.
                        crate::warn!("spool shard={}: sealing: {e}", self.core.shard);
                        let at = seg.size;
                        rollback_write(&mut seg, at).await;
                    }
                }
            }
            // Always sync what no fdatasync covered yet, sound segment or
            // broken (a write or the seal failed and its truncate too): the
            // intact records before `seg.size` include fragments, which
            // completed when written with no job waiting for a sync. Their
            // commit goes to the next segment and is acknowledged after
            // *that* file's sync, so they must be durable here first. If
            // this sync fails, `sync` bumps `frag_epoch` and those commits
            // fail instead. (Not `force = !seg.broken`: a failed seal sets
            // `broken` just above, and nothing would be synced.)
            self.sync(&mut seg, unsynced, true).await;
            // Never drop a segment with unsynced bytes under fsync: they
            // were either synced or cut away (and the epoch bumped).
            debug_assert!(self.core.cfg.durability != Durability::Fsync || seg.durable == seg.size);
            if let Err(e) = seg.file.close().await {
                crate::warn!(
                    "spool shard={}: closing {}: {e}",
                    self.core.shard,
                    seg.path.display()
                );
            }
        }
        // `sync` either made every waiting job durable or failed it; none may
        // be left to be acknowledged by a later sync of another file (a
        // dropped job answers its session with an error).
        debug_assert!(unsynced.is_empty());
        unsynced.clear();
        let seg = self.create_segment().await?;
        let mut st = self.core.stats.borrow_mut();
        st.written = seg.at(seg.size);
        st.durable = seg.at(seg.durable);
        drop(st);
        self.seg = Some(seg);
        Ok(())
    }

    /// Creates the next segment: header written and synced, directory synced
    /// (so the new name survives a crash). A failed creation removes the file
    /// and still uses up the sequence number, so a retry never trips over it.
    async fn create_segment(&mut self) -> Result<Segment, SpoolError> {
        let seq = self.next_segment_seq;
        self.next_segment_seq += 1;
        let path = self.core.dir.join(segment_file_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .buffered_open(&path)
            .await
            .map_err(|e| SpoolError::glommio("creating segment", &path, e))?;
        let header = FileHeader {
            shard: self.core.shard,
            segment: seq,
            id_floor: self.core.next_id.get(),
            created_unix: now_unix().as_secs() as i64,
        };
        let made = async {
            write_all(&file, &path, header.encode().to_vec(), 0).await?;
            sync_file(&file, &path).await?;
            let dir = Directory::open(&self.core.dir)
                .await
                .map_err(|e| SpoolError::glommio("opening directory", &self.core.dir, e))?;
            let synced = dir.sync().await;
            // Closing a directory we only synced cannot lose anything.
            let _ = dir.close().await;
            synced.map_err(|e| SpoolError::glommio("syncing directory", &self.core.dir, e))
        }
        .await;
        if let Err(e) = made {
            if let Err(r) = std::fs::remove_file(&path) {
                crate::warn!(
                    "spool shard={}: removing {}: {r}",
                    self.core.shard,
                    path.display()
                );
            }
            let _ = file.close().await;
            return Err(e);
        }
        self.core.stats.borrow_mut().segments_created += 1;
        let size = FILE_HEADER_LEN as u64;
        Ok(Segment {
            file,
            path,
            seq,
            size,
            durable: size,
            broken: false,
        })
    }
}

/// Undoes a failed write (or a failed fdatasync) from `start` on: truncate
/// back so the next record does not follow half a record, and nothing after
/// `start` is ever read. If truncating fails, zero the header slot at
/// `start` (so a scan stops there) and abandon the segment.
async fn rollback_write(seg: &mut Segment, start: u64) {
    seg.size = start;
    let Err(t) = truncate(&seg.file, &seg.path, start).await else {
        return;
    };
    crate::error!("spool: {t}; marking offset {start} as the end instead");
    seg.broken = true;
    let zeros = vec![0u8; super::format::RECORD_HEADER_LEN];
    if let Err(e) = write_all(&seg.file, &seg.path, zeros, start).await {
        crate::error!(
            "spool {}: cannot cut or mark the end at offset {start}: {e}; \
             the next start cuts only records after it that are not intact",
            seg.path.display()
        );
    }
}

async fn truncate(file: &BufferedFile, path: &Path, len: u64) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(errno) = faults::take_truncate() {
        return Err(SpoolError::io(
            "truncating",
            path,
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    file.truncate(len)
        .await
        .map_err(|e| SpoolError::glommio("truncating", path, e))
}

/// Writes all of `buf` at `pos`.
///
/// glommio's `write_at` takes the buffer, so the unwritten rest of a short
/// write is gone. A short write only happens when the filesystem cannot take
/// more (space, file size limit), and the caller cuts the run back anyway;
/// so the rest is probed with zeros to learn the real errno, and the write
/// fails either way.
async fn write_all(
    file: &BufferedFile,
    path: &Path,
    buf: Vec<u8>,
    pos: u64,
) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(Some((keep, errno))) = faults::take_write() {
        let keep = keep.min(buf.len());
        if keep > 0 {
            let part = buf[..keep].to_vec();
            file.write_at(part, pos)
                .await
                .map_err(|e| SpoolError::glommio("writing", path, e))?;
        }
        return Err(SpoolError::io(
            "writing",
            path,
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    let len = buf.len();
    let n = file
        .write_at(buf, pos)
        .await
        .map_err(|e| SpoolError::glommio("writing", path, e))?;
    if n >= len {
        return Ok(());
    }
    let rest = vec![0u8; len - n];
    file.write_at(rest, pos + n as u64)
        .await
        .map_err(|e| SpoolError::glommio("writing", path, e))?;
    let e = std::io::Error::new(
        std::io::ErrorKind::WriteZero,
        format!("short write: {n} of {len} bytes at offset {pos}"),
    );
    Err(SpoolError::io("writing", path, e))
}

async fn sync_file(file: &BufferedFile, path: &Path) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(errno) = faults::take_sync() {
        return Err(SpoolError::io(
            "fdatasync",
            path,
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    file.fdatasync()
        .await
        .map_err(|e| SpoolError::glommio("fdatasync", path, e))?;
    #[cfg(test)]
    faults::note_sync(path);
    Ok(())
}

/// Test-only fault injection: the next writes or syncs on this thread fail.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::RefCell;
    use std::collections::{HashMap, VecDeque};
    use std::path::{Path, PathBuf};

    thread_local! {
        /// Per file, its length when its last fdatasync returned: what a
        /// power loss would leave of it.
        static SYNCED: RefCell<HashMap<PathBuf, u64>> = RefCell::new(HashMap::new());
        static WRITES: RefCell<VecDeque<Option<(usize, i32)>>> =
            const { RefCell::new(VecDeque::new()) };
        static SYNCS: RefCell<VecDeque<i32>> = const { RefCell::new(VecDeque::new()) };
        static TRUNCATES: RefCell<VecDeque<i32>> = const { RefCell::new(VecDeque::new()) };
    }

    /// The next write (after those queued before) puts `keep` bytes on
    /// disk, then fails with `errno`.
    pub(crate) fn fail_write(keep: usize, errno: i32) {
        WRITES.with(|w| w.borrow_mut().push_back(Some((keep, errno))));
    }

    /// The next write (after those queued before) succeeds as usual.
    pub(crate) fn pass_write() {
        WRITES.with(|w| w.borrow_mut().push_back(None));
    }

    /// The next truncate fails with `errno`.
    pub(crate) fn fail_truncate(errno: i32) {
        TRUNCATES.with(|t| t.borrow_mut().push_back(errno));
    }

    pub(super) fn take_truncate() -> Option<i32> {
        TRUNCATES.with(|t| t.borrow_mut().pop_front())
    }

    /// The next fdatasync fails with `errno`.
    pub(crate) fn fail_sync(errno: i32) {
        SYNCS.with(|s| s.borrow_mut().push_back(errno));
    }

    pub(super) fn take_write() -> Option<Option<(usize, i32)>> {
        WRITES.with(|w| w.borrow_mut().pop_front())
    }

    pub(super) fn take_sync() -> Option<i32> {
        SYNCS.with(|s| s.borrow_mut().pop_front())
    }

    pub(super) fn note_sync(path: &Path) {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        SYNCED.with(|s| s.borrow_mut().insert(path, len));
    }

    /// The length of `path` when an fdatasync of it last returned on this
    /// thread; `None` if none did.
    pub(crate) fn synced_len(path: &Path) -> Option<u64> {
        let path = std::fs::canonicalize(path).ok()?;
        SYNCED.with(|s| s.borrow().get(&path).copied())
    }
}
