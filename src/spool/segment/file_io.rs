//! The writer's three file operations (positioned write, truncate,
//! fdatasync), each with the test build's fault injection
//! ([`faults`](super::faults)) in front of the real call.

use std::path::Path;

use glommio::io::BufferedFile;

use crate::spool::error::SpoolError;

/// Truncates `file` to `len` bytes.
pub(super) async fn truncate(file: &BufferedFile, path: &Path, len: u64) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(errno) = super::faults::take_truncate() {
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
pub(super) async fn write_all(
    file: &BufferedFile,
    path: &Path,
    buf: Vec<u8>,
    pos: u64,
) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(Some((keep, errno))) = super::faults::take_write() {
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

/// fdatasync of `file`.
pub(super) async fn sync_file(file: &BufferedFile, path: &Path) -> Result<(), SpoolError> {
    #[cfg(test)]
    if let Some(errno) = super::faults::take_sync() {
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
    super::faults::note_sync(path);
    Ok(())
}
