//! The `spool.min_free_bytes` floor: `begin` refuses a message (the server's
//! `452 4.3.1`) while the spool's filesystem has less free space, read with
//! statvfs at most every [`FREE_CHECK_INTERVAL`] or [`FREE_CHECK_BYTES`].

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::spool::error::SpoolError;

/// How long a free-space reading is trusted.
const FREE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Appended bytes after which free space is read again regardless of time.
const FREE_CHECK_BYTES: u64 = 1 << 20;

/// Free-space bookkeeping for `min_free_bytes`.
#[derive(Debug, Default)]
pub(super) struct FreeCheck {
    /// When free space was last read; `None` before the first reading.
    at: Option<Instant>,
    /// Bytes the shard had appended at that reading.
    bytes_at: u64,
    /// Free bytes at that reading.
    available: u64,
}

impl FreeCheck {
    /// Ok while `dir`'s filesystem had at least `min_free` bytes free at the
    /// last reading; reads again when that reading is older than
    /// [`FREE_CHECK_INTERVAL`], `appended` (the shard's bytes written so
    /// far) has grown by [`FREE_CHECK_BYTES`] since, or it was under the floor.
    ///
    /// # Errors
    /// [`SpoolError::BelowFreeFloor`] under the floor; a statvfs failure.
    pub(super) fn check(
        &mut self,
        dir: &Path,
        min_free: u64,
        appended: u64,
    ) -> Result<(), SpoolError> {
        if min_free == 0 {
            return Ok(());
        }
        let stale = match self.at {
            None => true,
            Some(at) => {
                // Under the floor, look every time: space may have been freed.
                self.available < min_free
                    || at.elapsed() >= FREE_CHECK_INTERVAL
                    || appended.saturating_sub(self.bytes_at) >= FREE_CHECK_BYTES
            }
        };
        if stale {
            self.available = available_bytes(dir)
                .map_err(|e| SpoolError::io("checking free space of", dir, e))?;
            self.at = Some(Instant::now());
            self.bytes_at = appended;
        }
        if self.available < min_free {
            return Err(SpoolError::BelowFreeFloor {
                dir: dir.to_owned(),
                available: self.available,
                min_free,
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
pub(crate) fn available_bytes(dir: &Path) -> std::io::Result<u64> {
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
