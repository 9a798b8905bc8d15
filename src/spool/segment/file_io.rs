//! The writer's file operations (positioned write, zeros ahead, truncate,
//! fdatasync, close) on a segment opened buffered or with O_DIRECT
//! ([`SegFile`]), each with the test build's fault injection
//! ([`faults`](super::faults)) in front of the real call.

use std::path::Path;

use glommio::io::{BufferedFile, OpenOptions};

use super::direct::DirectFile;
use crate::spool::error::SpoolError;

/// A segment file as the writer holds it.
pub(super) enum SegFile {
    /// Through the page cache: `durability = none`, or `spool.direct_io` off.
    Buffered(BufferedFile),
    /// O_DIRECT (`spool.direct_io` under fsync), see [`DirectFile`].
    Direct(DirectFile),
}

impl SegFile {
    /// Opens the segment at `path` (with `create`, a new one) whose data
    /// ends at `end`; `direct`: with O_DIRECT, zeros kept `.0` bytes ahead
    /// of the data up to `.1` (see [`DirectFile`]).
    pub(super) async fn open(
        path: &Path,
        create: bool,
        end: u64,
        direct: Option<(u64, u64)>,
    ) -> Result<Self, SpoolError> {
        if let Some((step, limit)) = direct {
            let f = DirectFile::open(path, create, end, step, limit).await?;
            return Ok(SegFile::Direct(f));
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        let what = if create {
            opts.create_new(true);
            "creating segment"
        } else {
            "opening segment"
        };
        let file = opts
            .buffered_open(path)
            .await
            .map_err(|e| SpoolError::glommio(what, path, e))?;
        Ok(SegFile::Buffered(file))
    }

    /// The file's length on disk after a write that ended the data at
    /// `end`: O_DIRECT writes whole blocks, and zeros ahead of its own.
    pub(super) fn len_after(&self, end: u64) -> u64 {
        match self {
            SegFile::Buffered(_) => end,
            SegFile::Direct(d) => d.len().max(end),
        }
    }

    pub(super) async fn close(self, path: &Path) -> Result<(), SpoolError> {
        match self {
            SegFile::Buffered(f) => f
                .close()
                .await
                .map_err(|e| SpoolError::glommio("closing", path, e)),
            SegFile::Direct(d) => d.close(path).await,
        }
    }
}

/// Truncates `file` to `len` bytes.
pub(super) async fn truncate(file: &mut SegFile, path: &Path, len: u64) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(errno) = super::faults::take_truncate() {
        return Err(SpoolError::io(
            "truncating",
            path,
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    match file {
        SegFile::Buffered(f) => f
            .truncate(len)
            .await
            .map_err(|e| SpoolError::glommio("truncating", path, e)),
        SegFile::Direct(d) => d.truncate(path, len).await,
    }
}

/// Writes all of `buf` at `pos`; `commit`: a group commit's run of
/// records, which an O_DIRECT segment may make durable as it writes.
///
/// glommio's `write_at` takes the buffer, so the unwritten rest of a short
/// write is gone. A short write only happens when the filesystem cannot take
/// more (space, file size limit), and the caller cuts the run back anyway;
/// so the rest is probed with zeros to learn the real errno, and the write
/// fails either way.
pub(super) async fn write_all(
    file: &mut SegFile,
    path: &Path,
    buf: Vec<u8>,
    pos: u64,
    commit: bool,
) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(Some((keep, errno))) = super::faults::take_write() {
        let keep = keep.min(buf.len());
        if keep > 0 {
            let part = buf[..keep].to_vec();
            write_unfaulted(file, path, part, pos, false).await?;
        }
        return Err(SpoolError::io(
            "writing",
            path,
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    write_unfaulted(file, path, buf, pos, commit).await
}

async fn write_unfaulted(
    file: &mut SegFile,
    path: &Path,
    buf: Vec<u8>,
    pos: u64,
    commit: bool,
) -> Result<(), SpoolError> {
    let file = match file {
        SegFile::Buffered(f) => f,
        SegFile::Direct(d) => return d.write_all(path, &buf, pos, commit).await,
    };
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

/// fdatasync of `file`; false where an O_DIRECT segment had nothing to
/// sync (every write since the last sync was a commit written O_DSYNC).
pub(super) async fn sync_file(file: &mut SegFile, path: &Path) -> Result<bool, SpoolError> {
    #[cfg(test)]
    if let Some(errno) = super::faults::take_sync() {
        return Err(SpoolError::io(
            "fdatasync",
            path,
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    let synced = match file {
        SegFile::Buffered(f) => {
            f.fdatasync()
                .await
                .map_err(|e| SpoolError::glommio("fdatasync", path, e))?;
            true
        }
        SegFile::Direct(d) => d.fdatasync(path).await?,
    };
    #[cfg(test)]
    if synced {
        super::faults::note_sync(path);
    }
    Ok(synced)
}
