//! The writer task: the only code that touches a shard's files. It appends
//! each batch of jobs with as few positioned writes as fit, syncs the batch
//! once, answers the jobs, seals and rotates segments, and cuts back after a
//! failed write or sync (see the [module docs](super)).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use glommio::io::Directory;

use super::channel::{Job, Written};
use super::file_io::{sync_file, truncate, write_all, SegFile};
use super::shared::Core;
use crate::config::Durability;
use crate::spool::error::SpoolError;
use crate::spool::format::{
    encode_end_mark, encode_seal, segment_file_name, stamp_record, FileHeader, Location, Seal,
    FILE_HEADER_LEN, SEAL_RECORD_LEN,
};

/// Records are concatenated into one write up to this many bytes; a larger
/// record is written from its own buffer, uncopied. Bounds the copy and the
/// extra memory of a batch full of fragments.
const MAX_RUN_BYTES: u64 = 1 << 20;

/// Zeros written ahead of the records with `spool.direct_io` when
/// `spool.prewrite_bytes` is 0.
const DIRECT_PREWRITE_BYTES: u64 = 1 << 20;

/// The segment being appended to.
struct Segment {
    file: SegFile,
    path: PathBuf,
    seq: u64,
    /// Bytes written (the file's length).
    size: u64,
    /// Bytes covered by an fdatasync.
    durable: u64,
    /// A write or sync failed and could not be undone: append elsewhere.
    broken: bool,
    /// The nonce from its header, stamped into every record appended.
    nonce: u64,
    /// The file's length: `size` plus the zeros written ahead of the
    /// records (see [`Writer::prewrite`]).
    file_len: u64,
    /// Writing zeros ahead failed here: append as before.
    prewrite_failed: bool,
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
pub(super) struct Writer {
    core: Rc<Core>,
    seg: Option<Segment>,
    next_segment_seq: u64,
    /// The recovered segment is already full: seal it before the first append.
    rotate_first: bool,
    /// The current batch's first write submitted and last write complete,
    /// for the commit stages (reset by each group commit's sync).
    first_write: Option<Instant>,
    last_write_done: Option<Instant>,
    /// `spool.direct_io` under fsync (under none nothing waits for the
    /// device: the page cache is the fast path), where the filesystem
    /// takes O_DIRECT.
    direct: bool,
}

impl Writer {
    /// The writer of a freshly recovered shard: appends to `append_to`
    /// (segment sequence and intact length, from recovery) or, without one,
    /// to a new segment numbered `next_segment_seq`.
    ///
    /// # Errors
    /// Opening, syncing or creating the segment failing.
    pub(super) async fn open(
        core: Rc<Core>,
        append_to: Option<(u64, u64, u64)>,
        next_segment_seq: u64,
    ) -> Result<Self, SpoolError> {
        let direct = core.cfg.direct_io
            && core.cfg.durability == Durability::Fsync
            && direct_io_works(&core.dir, core.shard);
        let mut w = Writer {
            core,
            seg: None,
            next_segment_seq,
            rotate_first: false,
            first_write: None,
            last_write_done: None,
            direct,
        };
        let seg = match append_to {
            Some((seq, len, nonce)) => w.reopen(seq, len, nonce).await?,
            None => w.create_segment().await?,
        };
        let at = seg.at(seg.size);
        let mut st = w.core.stats.borrow_mut();
        st.written = at;
        st.durable = at;
        drop(st);
        w.seg = Some(seg);
        Ok(w)
    }

    /// Opens recovery's newest segment, `len` bytes long, whose header
    /// holds `nonce`, for appending.
    async fn reopen(&mut self, seq: u64, len: u64, nonce: u64) -> Result<Segment, SpoolError> {
        let cfg = &self.core.cfg;
        let path = self.core.dir.join(segment_file_name(seq));
        let mut file = SegFile::open(&path, false, len, self.direct_opts()).await?;
        if cfg.durability == Durability::Fsync {
            // A previous run under `durability = none` may have left
            // bytes only in the page cache; from now on they count as durable.
            sync_file(&mut file, &path).await?;
        }
        // Never append to a segment a previous run wrote: a consumer may have
        // read records there that were written but not yet fdatasync'd when
        // the power went, and recovery cut them away. New records at the cut
        // would start where that consumer's checkpoint points into the middle
        // of what it shipped, and it would skip them. Sealed at its recovered
        // length instead, the old segment ends before any such checkpoint.
        self.rotate_first = true;
        let file_len = file.len_after(len);
        Ok(Segment {
            file,
            path,
            seq,
            size: len,
            durable: len,
            broken: false,
            nonce,
            file_len,
            prewrite_failed: false,
        })
    }

    /// The task: batch after batch until the shard closes and the queue is empty.
    pub(super) async fn run(mut self) -> Result<(), SpoolError> {
        while let Some(mut batch) = self.core.next_batch().await {
            let delay = self.core.cfg.group_commit_delay;
            if !delay.is_zero() && self.core.cfg.durability == Durability::Fsync {
                // spool.group_commit_delay: let more commits join this batch.
                glommio::timer::sleep(delay).await;
                batch.extend(self.core.queue.borrow_mut().drain(..));
            }
            self.core.stats.borrow_mut().batches += 1;
            // Commit stage "queue": the oldest commit's wait for this batch.
            if let Some(oldest) = batch.iter().filter_map(|j| j.queued).min() {
                let m = self.core.sync_metrics.borrow();
                m.stages.queue.record_duration(oldest.elapsed());
            }
            self.process(batch).await;
        }
        self.log_stages();
        // Closing: anything written but not yet synced (fragments of
        // messages that were never committed) gets synced too.
        if let Some(mut seg) = self.seg.take() {
            let prewritten = seg.file_len > seg.size;
            self.cut_prewritten(&mut seg).await;
            if self.core.cfg.durability == Durability::Fsync
                && (seg.durable < seg.size || prewritten)
            {
                self.sync(&mut seg, &mut Vec::new(), true).await;
            }
            seg.file.close(&seg.path).await?;
        }
        Ok(())
    }

    /// How [`SegFile::open`] opens a segment: with O_DIRECT, the zeros'
    /// step and limit.
    fn direct_opts(&self) -> Option<(u64, u64)> {
        self.direct
            .then(|| (self.prewrite_bytes(), self.core.cfg.segment_bytes))
    }

    /// `spool.prewrite_bytes` under fsync (0: off); nothing is synced under
    /// none. With O_DIRECT, 1 MiB when unset: a direct write that grows the
    /// file waits for a worker thread and a journal commit, which is what
    /// direct writes are there to avoid.
    fn prewrite_bytes(&self) -> u64 {
        if self.core.cfg.durability != Durability::Fsync {
            return 0;
        }
        match self.core.cfg.prewrite_bytes {
            0 if self.direct => DIRECT_PREWRITE_BYTES,
            n => n,
        }
    }

    /// Makes sure the file already holds blocks (zeros) up to `end` before
    /// records are written there: an fdatasync after an overwrite of
    /// written blocks flushes data alone, while one after an append that
    /// grows the file also commits the journal (size, extents). Zeros after
    /// the last record are the end of data (SPOOL-FORMAT.md, "End of
    /// data"), so a crash leaves nothing to misread; the next group commit's
    /// fdatasync covers them like the records. A failed zero write only
    /// costs the speed-up: records go on being appended.
    async fn prewrite(&mut self, end: u64) {
        let step = self.prewrite_bytes();
        let limit = self.core.cfg.segment_bytes;
        let Some(seg) = self.seg.as_mut() else {
            return;
        };
        // An O_DIRECT segment writes its zeros ahead itself, in the background.
        if matches!(seg.file, SegFile::Direct(_)) {
            return;
        }
        if step == 0 || seg.broken || seg.prewrite_failed || end <= seg.file_len {
            return;
        }
        let from = seg.file_len.max(seg.size);
        // Not past the segment's limit (it is sealed there), unless this
        // run alone goes past it.
        let to = (end + step).min(limit.max(end));
        if to <= from {
            return;
        }
        let zeros = vec![0u8; (to - from) as usize];
        match write_all(&mut seg.file, &seg.path, zeros, from, false).await {
            Ok(()) => seg.file_len = to,
            Err(e) => {
                seg.prewrite_failed = true;
                crate::warn!(
                    "spool shard={}: writing zeros ahead of the records: {e}; appending instead",
                    self.core.shard
                );
            }
        }
    }

    /// Cuts the zeros written ahead away (sealing, closing), so a finished
    /// segment ends with its last record.
    async fn cut_prewritten(&self, seg: &mut Segment) {
        if seg.broken || (seg.file_len <= seg.size && !seg.prewrite_failed) {
            return;
        }
        match truncate(&mut seg.file, &seg.path, seg.size).await {
            Ok(()) => seg.file_len = seg.size,
            // Zeros after the last record (or the seal) are still the end
            // of data; recovery cuts them at the next start.
            Err(e) => crate::warn!("spool shard={}: {e}", self.core.shard),
        }
    }

    /// One line, whatever the log level, with each commit stage's count,
    /// mean, p50 and p99 (from the histograms, so approximate within a
    /// bucket): where a durable commit's time went over this run.
    fn log_stages(&self) {
        let m = self.core.sync_metrics.borrow();
        let st = &m.stages;
        let mut line = format!("spool shard={} commit stages (us):", self.core.shard);
        for (name, h) in [
            ("queue", &st.queue),
            ("write", &st.write),
            ("gap", &st.gap),
            ("fdatasync", &m.fdatasync_seconds),
            ("wake", &st.wake),
        ] {
            let s = h.snapshot();
            let us = |v: f64| v * 1e6;
            line.push_str(&format!(
                " {name}=n:{},mean:{:.1},p50:{:.1},p99:{:.1}",
                s.count,
                us(s.mean()),
                us(s.quantile(0.5)),
                us(s.quantile(0.99)),
            ));
        }
        crate::log::write(crate::log::Level::Info, format_args!("{line}"));
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
                if let Some(seg) = self.seg.as_ref() {
                    let end = seg.size + run_len;
                    self.prewrite(end).await;
                }
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
        for j in &mut run {
            // Only here is the segment, and so the nonce, known.
            stamp_record(&mut j.bytes, seg.nonce);
        }
        let lens: Vec<u64> = run.iter().map(|j| j.bytes.len() as u64).collect();
        let submitted = Instant::now();
        self.first_write.get_or_insert(submitted);
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
        let commit = run.iter().any(|j| j.durable);
        let wrote = write_all(&mut seg.file, &seg.path, buf, start, commit).await;
        self.last_write_done = Some(Instant::now());
        match wrote {
            Ok(()) => {
                seg.size = start + run_len;
                seg.file_len = seg.file.len_after(seg.size).max(seg.file_len);
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
                        job.finish(Ok(Written {
                            at,
                            epoch,
                            answered_at: Instant::now(),
                        }));
                    }
                }
            }
            Err(e) => {
                if let Err(lost) = rollback_write(seg, start).await {
                    // The cut's fdatasync failed: what waited for a sync is lost.
                    self.core.frag_epoch.set(self.core.frag_epoch.get() + 1);
                    self.core.stats.borrow_mut().written = seg.at(seg.size);
                    for (_, job) in unsynced.drain(..) {
                        self.fail(job, lost.clone());
                    }
                }
                for job in run {
                    self.fail(job, e.clone());
                }
            }
        }
    }

    /// Makes `unsynced` durable with one fdatasync (or, under
    /// `durability = none`, completes them as written). `force`: sync even
    /// with no job waiting (sealing, closing).
    async fn sync(&mut self, seg: &mut Segment, unsynced: &mut Vec<(Location, Job)>, force: bool) {
        let fsync = self.core.cfg.durability == Durability::Fsync;
        // Commit stages "write" and "gap", for a sync that answers commits.
        let (first, last) = (self.first_write.take(), self.last_write_done.take());
        if !unsynced.is_empty() {
            let m = self.core.sync_metrics.borrow();
            if let (Some(f), Some(l)) = (first, last) {
                m.stages
                    .write
                    .record_duration(l.saturating_duration_since(f));
                if fsync {
                    m.stages.gap.record_duration(l.elapsed());
                }
            }
        }
        if fsync && seg.durable < seg.size && (force || !unsynced.is_empty()) {
            let started = Instant::now();
            match sync_file(&mut seg.file, &seg.path).await {
                Ok(synced) => {
                    let m = self.core.sync_metrics.borrow();
                    // Commits written O_DSYNC (`spool.direct_io`) synced
                    // as they were written: one durable write, no fdatasync.
                    if synced {
                        m.fdatasync_seconds.record_duration(started.elapsed());
                    }
                    m.commits_per_fdatasync.record(unsynced.len() as u64);
                    drop(m);
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
                    // fails too, an end mark at `durable` makes recovery and
                    // readers stop there. Left in place, the intact records
                    // after it would be listed again after a restart, though
                    // their clients were told they failed.
                    let durable = seg.durable;
                    // Its own error adds nothing: every waiter fails anyway.
                    let _ = rollback_write(seg, durable).await;
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
        let answered_at = Instant::now();
        let mut st = self.core.stats.borrow_mut();
        for (at, job) in unsynced.drain(..) {
            // Under fsync the durable position now covers the record's last byte.
            debug_assert!(!fsync || at < durable_end);
            st.commits += 1;
            job.finish(Ok(Written {
                at,
                epoch,
                answered_at,
            }));
        }
    }

    /// Seals the current segment (if it is sound), makes it durable, and
    /// starts the next one.
    async fn rotate(&mut self, unsynced: &mut Vec<(Location, Job)>) -> Result<(), SpoolError> {
        self.rotate_first = false;
        if let Some(mut seg) = self.seg.take() {
            if !seg.broken {
                let seal = encode_seal(
                    &Seal {
                        segment_len: seg.size + SEAL_RECORD_LEN as u64,
                        next_id_seq: self.core.next_id.get(),
                    },
                    seg.nonce,
                );
                match write_all(&mut seg.file, &seg.path, seal, seg.size, false).await {
                    Ok(()) => {
                        seg.size += SEAL_RECORD_LEN as u64;
                        seg.file_len = seg.file.len_after(seg.size).max(seg.file_len);
                        {
                            let mut st = self.core.stats.borrow_mut();
                            st.records += 1;
                            st.bytes += SEAL_RECORD_LEN as u64;
                            st.written = seg.at(seg.size);
                        }
                        // The seal's fdatasync below makes the cut durable too.
                        self.cut_prewritten(&mut seg).await;
                    }
                    Err(e) => {
                        // Unsealed is fine: recovery then scans this segment in full.
                        crate::warn!("spool shard={}: sealing: {e}", self.core.shard);
                        let at = seg.size;
                        if let Err(lost) = rollback_write(&mut seg, at).await {
                            self.core.frag_epoch.set(self.core.frag_epoch.get() + 1);
                            for (_, job) in unsynced.drain(..) {
                                self.fail(job, lost.clone());
                            }
                        }
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
            if let Err(e) = seg.file.close(&seg.path).await {
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
        let mut file = SegFile::open(&path, true, 0, self.direct_opts()).await?;
        let nonce = segment_nonce(&path);
        let header = FileHeader::new(
            self.core.shard,
            seq,
            self.core.next_id.get(),
            super::now_unix().as_secs() as i64,
            nonce,
            &self.core.node_id,
        );
        let made = async {
            write_all(&mut file, &path, header.encode().to_vec(), 0, false).await?;
            sync_file(&mut file, &path).await?;
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
            let _ = file.close(&path).await;
            return Err(e);
        }
        self.core.stats.borrow_mut().segments_created += 1;
        let size = FILE_HEADER_LEN as u64;
        let file_len = file.len_after(size);
        Ok(Segment {
            file,
            path,
            seq,
            size,
            durable: size,
            broken: false,
            nonce,
            file_len,
            prewrite_failed: false,
        })
    }
}

/// Whether the filesystem holding `dir` opens files with O_DIRECT (some
/// FUSE and network filesystems refuse it at open with EINVAL); if not, a
/// warning says segments are written through the page cache. The probe is
/// a nameless O_TMPFILE where the filesystem has those (nothing is left
/// behind by a crash), else a file created and removed at once.
fn direct_io_works(dir: &std::path::Path, shard: u32) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |extra: i32, path: &std::path::Path, create: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .custom_flags(libc::O_DIRECT | extra)
            .open(path)
    };
    let mut opened = open(libc::O_TMPFILE, dir, false);
    if let Err(e) = &opened {
        if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) {
            let probe = dir.join(".direct-io-probe");
            opened = open(0, &probe, true);
            let _ = std::fs::remove_file(&probe);
        }
    }
    match opened {
        Ok(_) => true,
        Err(e) => {
            crate::warn!(
                "spool shard={shard}: {} does not take O_DIRECT ({e}); \
                 writing segments through the page cache (spool.direct_io)",
                dir.display()
            );
            false
        }
    }
}

/// A fresh random nonce for a new segment, never 0: 8 bytes of
/// /dev/urandom. Should that fail (no /dev in a sandbox), the time, the
/// pid and the file name are mixed instead and a warning says so; such a
/// nonce is unique but guessable, which only matters to a sender who could
/// also read the spool.
fn segment_nonce(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let mut n = u64::from_le_bytes(b);
    if let Err(e) = random {
        crate::warn!("spool: reading /dev/urandom: {e}; deriving the segment nonce from the time");
        let mut h = super::now_unix().as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
        for byte in path.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        // splitmix64's finaliser spreads the bits.
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        n = h ^ (h >> 31);
    }
    n.max(1)
}

/// Undoes a failed write from `start` on: truncate back so the next
/// record does not follow half a record and nothing after `start` is ever
/// read, then fdatasync so the cut survives a crash (a message answered
/// 451/452 must never reappear). If the truncate fails, an end mark at
/// `start` does the same job (readers and recovery stop there, whatever
/// intact records follow) and the segment is abandoned.
///
/// # Errors
/// The fdatasync (or the mark's write) failed: nothing written since the
/// last good fdatasync can be trusted or acknowledged. The segment has
/// then been cut back (or marked, best effort) at its durable offset and
/// abandoned; the caller fails every job still waiting for a sync.
async fn rollback_write(seg: &mut Segment, start: u64) -> Result<(), SpoolError> {
    seg.size = start;
    let failed = match truncate(&mut seg.file, &seg.path, start).await {
        Ok(()) => {
            seg.file_len = start;
            match sync_file(&mut seg.file, &seg.path).await {
                Ok(_) => {
                    seg.durable = start;
                    return Ok(());
                }
                Err(e) => e,
            }
        }
        Err(t) => {
            crate::error!("spool: {t}; marking offset {start} as the end instead");
            seg.broken = true;
            let mark = encode_end_mark(seg.nonce);
            let marked = match write_all(&mut seg.file, &seg.path, mark, start, false).await {
                Ok(()) => sync_file(&mut seg.file, &seg.path).await,
                Err(e) => Err(e),
            };
            match marked {
                Ok(_) => {
                    seg.durable = start;
                    return Ok(());
                }
                Err(e) => e,
            }
        }
    };
    // No fdatasync can be trusted after a failed one: cut back to what is
    // known durable, without another sync, and abandon the segment.
    seg.broken = true;
    let durable = seg.durable;
    seg.size = durable;
    crate::error!(
        "spool {}: {failed}; cutting back to the durable offset {durable}",
        seg.path.display()
    );
    if truncate(&mut seg.file, &seg.path, durable).await.is_ok() {
        seg.file_len = durable;
    } else {
        let mark = encode_end_mark(seg.nonce);
        if let Err(e) = write_all(&mut seg.file, &seg.path, mark, durable, false).await {
            crate::error!(
                "spool {}: cannot cut or mark the end at offset {durable}: {e}; \
                 records written after it were answered as failed but may be read again",
                seg.path.display()
            );
        }
    }
    Err(failed)
}
