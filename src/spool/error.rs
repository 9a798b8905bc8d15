//! [`SpoolError`]: every way the spool can fail, and which SMTP reply each
//! failure maps to ([`SpoolError::is_full`]: `452 4.3.1`, else `451 4.3.0`).
//!
//! I/O sources sit behind an `Arc` so that one failed write or fdatasync can
//! be handed to every session whose record it covered (group commit), and so
//! the error stays `Send + Sync` for the binary's error reporting.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::queue_id::QueueId;

/// A spool operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The filesystem has less free space than `spool.min_free_bytes`; the
    /// message is refused before anything is written.
    #[error(
        "spool {} has {available} bytes free, under spool.min_free_bytes = {min_free}",
        dir.display()
    )]
    BelowFreeFloor {
        /// The shard directory that was checked.
        dir: PathBuf,
        /// Bytes available to this process (statvfs `f_bavail * f_frsize`).
        available: u64,
        /// The configured floor.
        min_free: u64,
    },
    /// The filesystem ran out of space (ENOSPC or EDQUOT) during a write or a sync.
    #[error("{op} {}: no space left on the spool's filesystem: {source}", path.display())]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A filesystem call failed for a reason other than space.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// `spool.node_id` is not a valid node id.
    #[error("spool.node_id {id:?}: {why}")]
    BadNodeId {
        /// The configured id.
        id: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Another process holds the spool's `LOCK`: one spool directory, one writer.
    #[error("spool {} is in use by another ringmx ({})", dir.display(), match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_owned(),
    })]
    Locked {
        /// The spool root.
        dir: PathBuf,
        /// The holder's pid, as it wrote it into `LOCK`.
        pid: Option<u32>,
    },
    /// This process already has this shard open: two writers would interleave
    /// their appends.
    #[error("spool {}: shard {shard} is already open in this process", dir.display())]
    ShardBusy {
        /// The spool root.
        dir: PathBuf,
        /// The shard number.
        shard: u32,
    },
    /// A queue id issued by another shard: its message would be filed where
    /// lookups by that id never look.
    #[error("queue id {id} belongs to shard {}, not shard {shard}", id.shard())]
    WrongShard {
        /// The id.
        id: QueueId,
        /// The shard it was handed to.
        shard: u32,
    },
    /// A shard number that queue ids cannot carry.
    #[error("shard {0} is out of range: queue ids carry shards 0..={max}", max = QueueId::MAX_SHARD)]
    ShardOutOfRange(u32),
    /// Bytes on disk that do not follow SPOOL-FORMAT.md (torn, corrupt or foreign).
    #[error("{}: offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record or field in that file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A segment written in a format version this build does not read.
    #[error(
        "{}: spool format version {found}; this ringmx reads version {}",
        path.display(),
        super::format::FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version its name or header carries.
        found: u16,
    },
    /// An envelope field longer than a record can hold.
    #[error("{what} is {len} bytes, over the spool record limit of {max}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Text that is not a ringmx queue id.
    #[error("{0:?} is not a queue id (16 characters of Crockford base32)")]
    BadQueueId(String),
    /// No committed message carries this queue id.
    #[error("no committed message {0} in the spool")]
    NotFound(QueueId),
    /// The shard's spool was closed; it takes no more records.
    #[error("spool shard {0} is closed")]
    Closed(u32),
    /// A streamed message whose fragments were cut away after an fdatasync
    /// failure; committing it would point at bytes that are gone.
    #[error("message {0}: its fragments were lost to an earlier fdatasync failure")]
    FragmentsLost(QueueId),
}

impl SpoolError {
    /// True when the failure is lack of space: the server replies
    /// `452 4.3.1` (RFC 3463: mail system full). Every other error is
    /// `451 4.3.0`. Both are temporary: the client will retry.
    ///
    /// # Example
    /// ```
    /// use ringmx::spool::SpoolError;
    /// let e = SpoolError::BelowFreeFloor { dir: "spool".into(), available: 1, min_free: 2 };
    /// assert!(e.is_full());
    /// assert!(!SpoolError::Closed(0).is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            SpoolError::BelowFreeFloor { .. } | SpoolError::NoSpace { .. }
        )
    }

    /// Wraps an I/O error, classing ENOSPC and EDQUOT as [`SpoolError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        let full = matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) || source.kind() == io::ErrorKind::StorageFull;
        let source = Arc::new(source);
        if full {
            SpoolError::NoSpace { op, path, source }
        } else {
            SpoolError::Io { op, path, source }
        }
    }

    /// Wraps a glommio error, keeping the OS error code that glommio's own
    /// conversion to `io::Error` would drop (it is what tells ENOSPC apart).
    pub(crate) fn glommio(
        op: &'static str,
        path: impl Into<PathBuf>,
        err: glommio::GlommioError<()>,
    ) -> Self {
        let source = match err {
            glommio::GlommioError::IoError(e) => e,
            glommio::GlommioError::EnhancedIoError { source, .. } => source,
            other => io::Error::from(other),
        };
        Self::io(op, path, source)
    }

    /// A corrupt-data error.
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        SpoolError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_full_eio_is_not() {
        for (errno, full) in [
            (libc::ENOSPC, true),
            (libc::EDQUOT, true),
            (libc::EIO, false),
        ] {
            let e = SpoolError::io("writing", "x", io::Error::from_raw_os_error(errno));
            assert_eq!(e.is_full(), full, "{e}");
        }
    }

    #[test]
    fn locked_message_names_dir_and_pid() {
        let e = SpoolError::Locked {
            dir: "/var/spool/ringmx".into(),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "spool /var/spool/ringmx is in use by another ringmx (pid 42)"
        );
    }
}
