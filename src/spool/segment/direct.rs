//! [`DirectFile`]: a segment written with O_DIRECT (`spool.direct_io`).
//!
//! A buffered write goes through the page cache, which io_uring cannot do
//! without blocking, so each one is punted to an io_uring worker thread on
//! the shard's own CPU, and so is the fdatasync after it. An O_DIRECT write
//! of whole filesystem blocks the file already has is sent to the device
//! from the submitting thread and completes by interrupt. A group commit's
//! run of records goes out that way through a second descriptor opened
//! O_DSYNC: when it completes the records are on stable storage (the kernel
//! flushes the device cache, or writes with FUA), so no fdatasync follows.
//!
//! * **Zeros ahead.** A write that grows the file waits for a worker thread
//!   and makes the next sync commit the journal. So a background task keeps
//!   zeros written (and fdatasync'd) up to `step` bytes ahead of the
//!   records; a write past them waits for it.
//! * **When O_DSYNC is not enough.** A FUA write makes only itself durable,
//!   not earlier plain writes (fragments of a streamed message, a
//!   truncate). After any of those the commit is written plain and
//!   [`DirectFile::fdatasync`] flushes; otherwise it has nothing to do.
//! * **Whole blocks.** Every write covers whole blocks, so the block holding
//!   the end of the records is written again, with the same bytes in front,
//!   by the next write: a torn write of it can only mix old and new copies
//!   of equal bytes, or zeros past the end. Those bytes are kept here
//!   (`tail`) so no write has to read the file first.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};
use glommio::Task;

use crate::spool::error::SpoolError;

/// A segment file opened with O_DIRECT and what a write needs to know to
/// cover whole blocks.
pub(super) struct DirectFile {
    /// Fragments, the seal, zeros; and commits after a plain write.
    plain: Rc<DmaFile>,
    /// The same file opened O_DSYNC: commits.
    dsync: DmaFile,
    /// Every write starts and ends on a multiple of this: the device's
    /// O_DIRECT alignment or the filesystem's block, whichever is larger
    /// (ext4 and XFS only take an overwrite without a worker thread when it
    /// covers whole filesystem blocks).
    block: u64,
    /// The end of the data: the file holds zeros (or nothing) after it.
    end: u64,
    /// The bytes from the start of the block holding `end` up to `end`.
    tail: Vec<u8>,
    /// The file's length on disk: blocks written, zeros included.
    len: u64,
    /// Zeros this far ahead of `end`; 0: none (writes grow the file).
    step: u64,
    /// Zeros never go past this (the segment's size limit, rounded up).
    limit: u64,
    /// Zeros being written (and synced) up to `.0` by a background task.
    zeroing: Option<(u64, Task<Result<(), ZeroFailed>>)>,
    /// The file may be this long on disk: `len`, or more where a zeros
    /// task failed after its write (the seal's cut must still happen).
    len_on_disk: u64,
    /// Everything written is on stable storage: no plain write or truncate
    /// since the last fdatasync.
    clean: bool,
    /// Set by a zeros task whose fdatasync failed. The kernel may have
    /// dropped pages a plain write left and report the next fdatasync
    /// clean, so none may succeed on this file again (the writer then
    /// abandons the segment).
    sync_failed: Rc<std::cell::RefCell<Option<String>>>,
}

/// How a zeros task failed.
enum ZeroFailed {
    /// The write: no zeros, nothing else lost.
    Write(String),
    /// The fdatasync after it (recorded in `sync_failed`).
    Sync,
}

impl DirectFile {
    /// Opens (or with `create`, creates) the segment at `path` whose data
    /// ends at `end` (0 for a new file); zeros are kept `step` bytes ahead
    /// of the data, up to `limit`.
    pub(super) async fn open(
        path: &Path,
        create: bool,
        end: u64,
        step: u64,
        limit: u64,
    ) -> Result<Self, SpoolError> {
        let what = if create {
            "creating segment"
        } else {
            "opening segment"
        };
        let open = |create: bool, dsync: bool| {
            let mut opts = OpenOptions::new();
            opts.read(true).write(true);
            if create {
                opts.create_new(true);
            }
            if dsync {
                opts.custom_flags(libc::O_DSYNC);
            }
            async move {
                opts.dma_open(path)
                    .await
                    .map_err(|e| SpoolError::glommio(what, path, e))
            }
        };
        let plain = open(create, false).await?;
        let dsync = open(false, true).await?;
        let meta = std::fs::metadata(path).map_err(|e| SpoolError::io(what, path, e))?;
        // The filesystem's block, up to 4 KiB: larger ones (ZFS records,
        // NFS) would make every commit rewrite that much.
        let block = plain.alignment().max(meta.blksize().min(4096)).max(512);
        let mut f = DirectFile {
            plain: Rc::new(plain),
            dsync,
            block,
            end,
            tail: Vec::new(),
            len: meta.len(),
            step,
            limit: 0,
            zeroing: None,
            len_on_disk: meta.len(),
            clean: false,
            sync_failed: Rc::default(),
        };
        f.limit = f.up(limit);
        f.tail = f.read_tail(path, end).await?;
        Ok(f)
    }

    fn down(&self, v: u64) -> u64 {
        v - v % self.block
    }

    fn up(&self, v: u64) -> u64 {
        self.down(v + self.block - 1)
    }

    /// The file's length on disk, counting zeros being written.
    pub(super) fn len(&self) -> u64 {
        self.len_on_disk
            .max(self.zeroing.as_ref().map_or(0, |z| z.0))
    }

    /// Reads the bytes from the block start before `end` up to `end`.
    async fn read_tail(&self, path: &Path, end: u64) -> Result<Vec<u8>, SpoolError> {
        let from = self.down(end);
        if from == end {
            return Ok(Vec::new());
        }
        self.read(path, from, (end - from) as usize).await
    }

    async fn read(&self, path: &Path, pos: u64, n: usize) -> Result<Vec<u8>, SpoolError> {
        let got = self
            .plain
            .read_at(pos, n)
            .await
            .map_err(|e| SpoolError::glommio("reading", path, e))?;
        let mut v = got.to_vec();
        // Past the file's end reads as nothing; it is zeros to us.
        v.resize(n, 0);
        Ok(v)
    }

    /// Waits for the zeros being written, if any. A failure only costs the
    /// speed-up: writes past `len` grow the file, and no more zeros are
    /// written ahead.
    async fn settle_zeros(&mut self, path: &Path) {
        let Some((to, task)) = self.zeroing.take() else {
            return;
        };
        self.len_on_disk = self.len_on_disk.max(to);
        match task.await {
            Ok(()) => self.len = self.len.max(to),
            Err(ZeroFailed::Write(e)) => {
                self.step = 0;
                crate::warn!(
                    "spool {}: writing zeros ahead of the records: {e}; appending instead",
                    path.display()
                );
            }
            // Recorded by the task itself, as it failed.
            Err(ZeroFailed::Sync) => self.step = 0,
        }
    }

    /// Starts writing the next `step` bytes of zeros (and syncing them)
    /// once the data comes within half a step of the zeros' end.
    fn zero_ahead(&mut self) {
        if self.step == 0 || self.zeroing.is_some() || self.len >= self.limit {
            return;
        }
        if self.len >= self.end + self.step / 2 {
            return;
        }
        let from = self.up(self.len.max(self.end));
        let to = self.up(from + self.step).min(self.limit);
        if to <= from {
            return;
        }
        let file = self.plain.clone();
        let failed = Rc::clone(&self.sync_failed);
        let task = glommio::spawn_local(async move {
            let mut buf = file.alloc_dma_buffer((to - from) as usize);
            buf.as_bytes_mut().fill(0);
            let want = buf.len();
            let n = file
                .write_at(buf, from)
                .await
                .map_err(|e| ZeroFailed::Write(e.to_string()))?;
            if n < want {
                let e = format!("short write: {n} of {want} bytes at offset {from}");
                return Err(ZeroFailed::Write(e));
            }
            // The new size and extents reach the journal here, not in a
            // commit's sync.
            file.fdatasync().await.map_err(|e| {
                *failed.borrow_mut() = Some(e.to_string());
                ZeroFailed::Sync
            })
        });
        self.zeroing = Some((to, task));
    }

    /// Writes `data` at `pos` (where the data ends, or before it after a
    /// cut-back), as whole blocks: the bytes around it come from `tail`, or
    /// are zeros past the end, or (only for a write that starts before the
    /// last block, or ends before `end`) are read from the file first.
    /// `commit`: the write is a group commit's, to be durable when done.
    pub(super) async fn write_all(
        &mut self,
        path: &Path,
        data: &[u8],
        pos: u64,
        commit: bool,
    ) -> Result<(), SpoolError> {
        let stop = pos + data.len() as u64;
        let (from, to) = (self.down(pos), self.up(stop));
        if to > self.len {
            self.settle_zeros(path).await;
        }
        let tail_at = self.down(self.end);
        let mut buf = self.plain.alloc_dma_buffer((to - from) as usize);
        let bytes = buf.as_bytes_mut();
        if from < tail_at || stop < self.end {
            let old = self.read(path, from, (to - from) as usize).await?;
            bytes.copy_from_slice(&old);
        } else {
            bytes.fill(0);
            if from == tail_at {
                let n = self.tail.len().min((pos - from) as usize);
                bytes[..n].copy_from_slice(&self.tail[..n]);
            }
        }
        let at = (pos - from) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
        let new_end = self.end.max(stop);
        let new_tail_at = self.down(new_end);
        // The last block's bytes, where this write covers it (a write
        // before the end, e.g. an end mark after a failed cut, may not).
        let new_tail = if new_tail_at == new_end {
            Some(Vec::new())
        } else if new_tail_at >= from && new_tail_at < to {
            let s = (new_tail_at - from) as usize;
            Some(bytes[s..(new_end - from) as usize].to_vec())
        } else {
            None
        };
        // O_DSYNC only where it makes this write durable and nothing else
        // waits: within blocks the file has, after nothing written plain.
        let durable = commit && self.clean && to <= self.len && self.sync_failed.borrow().is_none();
        self.clean = durable;
        let file: &DmaFile = if durable { &self.dsync } else { &self.plain };
        write_whole(file, path, buf, from).await?;
        #[cfg(test)]
        if durable {
            super::faults::note_dsync_write(path);
        } else {
            super::faults::note_plain_write(path);
        }
        if let Some(t) = new_tail {
            self.tail = t;
        }
        self.end = new_end;
        self.len = self.len.max(to);
        self.len_on_disk = self.len_on_disk.max(to);
        self.zero_ahead();
        Ok(())
    }

    /// Cuts the file at `len`: the data ends there.
    pub(super) async fn truncate(&mut self, path: &Path, len: u64) -> Result<(), SpoolError> {
        // Zeros landing after the cut would lengthen the file again.
        self.settle_zeros(path).await;
        self.clean = false;
        self.plain
            .truncate(len)
            .await
            .map_err(|e| SpoolError::glommio("truncating", path, e))?;
        #[cfg(test)]
        super::faults::note_plain_write(path);
        let tail_at = self.down(self.end);
        self.tail = if len >= tail_at && len <= self.end {
            let mut t = std::mem::take(&mut self.tail);
            t.truncate((len - tail_at) as usize);
            t
        } else {
            self.read_tail(path, len).await?
        };
        self.end = len;
        self.len = len;
        self.len_on_disk = len;
        // No more zeros ahead: a cut is a failure's or the seal's.
        self.step = 0;
        Ok(())
    }

    /// fdatasync, unless every write since the last one was a commit
    /// written O_DSYNC (already on stable storage). True if it ran.
    pub(super) async fn fdatasync(&mut self, path: &Path) -> Result<bool, SpoolError> {
        self.check_zero_syncs(path)?;
        if self.clean {
            return Ok(false);
        }
        self.plain
            .fdatasync()
            .await
            .map_err(|e| SpoolError::glommio("fdatasync", path, e))?;
        // One that failed while this one ran counts too.
        self.check_zero_syncs(path)?;
        self.clean = true;
        Ok(true)
    }

    fn check_zero_syncs(&mut self, path: &Path) -> Result<(), SpoolError> {
        let Some(e) = self.sync_failed.borrow().clone() else {
            return Ok(());
        };
        self.clean = false;
        let e = std::io::Error::other(format!("an fdatasync after writing zeros failed: {e}"));
        Err(SpoolError::io("fdatasync", path, e))
    }

    pub(super) async fn close(mut self, path: &Path) -> Result<(), SpoolError> {
        self.settle_zeros(path).await;
        let closed = self.dsync.close().await;
        let plain = Rc::try_unwrap(self.plain).ok();
        if let Some(p) = plain {
            p.close()
                .await
                .map_err(|e| SpoolError::glommio("closing", path, e))?;
        }
        closed.map_err(|e| SpoolError::glommio("closing", path, e))
    }
}

/// Writes all of `buf` at `pos`. A short write (a filling disk) is
/// followed by a write of the rest, which either completes the job or
/// fails with the kernel's errno (ENOSPC: a `452`, not a `451` for a
/// short write).
async fn write_whole(
    file: &DmaFile,
    path: &Path,
    buf: glommio::io::DmaBuffer,
    pos: u64,
) -> Result<(), SpoolError> {
    let buf = Rc::new(buf);
    let want = buf.len();
    let mut done = file
        .write_rc_at(Rc::clone(&buf), pos)
        .await
        .map_err(|e| SpoolError::glommio("writing", path, e))?;
    while done < want {
        let mut rest = file.alloc_dma_buffer(want - done);
        rest.as_bytes_mut().copy_from_slice(&buf.as_bytes()[done..]);
        let n = file
            .write_at(rest, pos + done as u64)
            .await
            .map_err(|e| SpoolError::glommio("writing", path, e))?;
        if n == 0 {
            let e = std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {done} of {want} bytes at offset {pos}"),
            );
            return Err(SpoolError::io("writing", path, e));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::{run, TempDir};

    /// Against a plain byte vector: appends of odd sizes (some group
    /// commits), writes before the end (an end mark after a failed cut,
    /// its block away from the last one), and cuts, on a real disk, with
    /// zeros kept 8 KiB ahead. After each step the file holds exactly the
    /// model's bytes, then only zeros.
    #[test]
    fn whole_block_writes_keep_every_byte_where_it_was_written() {
        let dir = TempDir::new("direct-model");
        let path = dir.path().join("seg");
        run(|| async {
            let mut f = DirectFile::open(&path, true, 0, 8192, 1 << 20)
                .await
                .unwrap();
            let mut model: Vec<u8> = Vec::new();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut next = |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            for step in 0..400u64 {
                let op = next(10);
                if op < 7 || model.len() < 100 {
                    let len = 1 + next(9000) as usize;
                    let data: Vec<u8> = (0..len).map(|i| (i as u64 + step) as u8 | 1).collect();
                    let pos = model.len() as u64;
                    f.write_all(&path, &data, pos, op < 4).await.unwrap();
                    model.extend_from_slice(&data);
                } else if op < 9 {
                    let pos = next(model.len() as u64 - 28);
                    let data = vec![0xEE; 28];
                    f.write_all(&path, &data, pos, false).await.unwrap();
                    model[pos as usize..pos as usize + 28].copy_from_slice(&data);
                } else {
                    let len = model.len() as u64 - next(model.len() as u64 / 2);
                    f.truncate(&path, len).await.unwrap();
                    model.truncate(len as usize);
                }
                f.fdatasync(&path).await.unwrap();
                let got = std::fs::read(&path).unwrap();
                assert!(got.len() >= model.len(), "step {step}: file too short");
                assert!(got[..model.len()] == model[..], "step {step}: bytes differ");
                assert!(
                    got[model.len()..].iter().all(|&b| b == 0),
                    "step {step}: not zeros after the end"
                );
            }
            f.close(&path).await.unwrap();
        });
    }
}
