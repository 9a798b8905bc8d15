//! One spool directory, one writer: the advisory lock on `<spool>/LOCK`.
//!
//! The lock is per process, shards are per thread: the first shard to open
//! takes `flock(LOCK_EX)` and writes the pid into the file, later shards of the
//! same process share it through a process-wide registry, and the lock is
//! released when the last of them closes. The registry also refuses a second
//! open of the same shard in one process, which would interleave appends.
//! A second process gets [`SpoolError::Locked`] naming the holder's pid.
//!
//! flock(2) locks belong to the open file description and vanish when the
//! holder dies, so a crashed server never leaves a stale lock behind; the
//! pid in the file is for the error message only.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::error::SpoolError;

/// The name of the lock file in the spool root.
pub const LOCK_FILE: &str = "LOCK";

/// Locks held by this process, by canonical spool root.
fn registry() -> MutexGuard<'static, HashMap<PathBuf, Weak<DirLock>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<DirLock>>>> = OnceLock::new();
    let m = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
    // A panic while holding the guard leaves the map consistent (every
    // mutation is one insert or remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's hold on a spool directory. Shards hold it through an `Arc`.
#[derive(Debug)]
pub struct DirLock {
    /// The canonical spool root.
    root: PathBuf,
    /// The open `LOCK` file: closing it drops the flock.
    file: File,
    /// Shards open in this process.
    shards: Mutex<BTreeSet<u32>>,
}

impl DirLock {
    /// Takes (or shares, within this process) the lock on `root`, creating
    /// the directory if needed.
    ///
    /// # Errors
    /// [`SpoolError::Locked`] when another process holds it;
    /// [`SpoolError::Io`] when the directory or lock file cannot be made.
    pub fn acquire(root: &Path) -> Result<Arc<DirLock>, SpoolError> {
        std::fs::create_dir_all(root).map_err(|e| SpoolError::io("creating spool", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| SpoolError::io("resolving", root, e))?;
        let mut reg = registry();
        loop {
            match reg.get(&root).map(Weak::upgrade) {
                Some(Some(held)) => return Ok(held),
                // Our own last holder is in `Drop`, waiting for the registry to
                // unlock and deregister: let it finish instead of mistaking our
                // own lock for another process's.
                Some(None) => {
                    drop(reg);
                    std::thread::yield_now();
                    reg = registry();
                }
                None => break,
            }
        }
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SpoolError::io("opening", &path, e))?;
        // SAFETY: flock on a file descriptor we own and keep open; no memory involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(SpoolError::Locked { dir: root, pid });
            }
            return Err(SpoolError::io("locking", &path, err));
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .map_err(|e| SpoolError::io("writing pid to", &path, e))?;
        let lock = Arc::new(DirLock {
            root: root.clone(),
            file,
            shards: Mutex::new(BTreeSet::new()),
        });
        reg.insert(root, Arc::downgrade(&lock));
        Ok(lock)
    }

    /// The canonical spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Marks `shard` open in this process.
    pub(crate) fn claim_shard(self: &Arc<Self>, shard: u32) -> Result<ShardClaim, SpoolError> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if !shards.insert(shard) {
            return Err(SpoolError::ShardBusy {
                dir: self.root.clone(),
                shard,
            });
        }
        Ok(ShardClaim {
            lock: Arc::clone(self),
            shard,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut reg = registry();
        // Unlock while holding the registry, so a concurrent `acquire` either
        // found us alive or finds the flock already free — never a false
        // "in use" from our own closing file.
        // SAFETY: flock on the descriptor we still own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        if reg.get(&self.root).is_some_and(|w| w.strong_count() == 0) {
            reg.remove(&self.root);
        }
    }
}

/// A shard's claim on its number within this process; released on drop.
#[derive(Debug)]
pub(crate) struct ShardClaim {
    lock: Arc<DirLock>,
    shard: u32,
}

impl Drop for ShardClaim {
    fn drop(&mut self) {
        let mut shards = self.lock.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards.remove(&self.shard);
    }
}

/// Whether some process (this one included) holds the lock on `root` now.
/// Used by `verify` to tell a torn tail from a write in progress. Probing
/// takes a shared lock for an instant; a server starting in that instant
/// would be refused once and report it.
///
/// # Errors
/// The lock file exists but cannot be opened.
pub fn lock_holder(root: &Path) -> Result<Option<Option<u32>>, SpoolError> {
    let path = root.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io("opening", &path, e)),
    };
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; unlock what we just took.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return Ok(None);
    }
    let mut text = String::new();
    let pid = file
        .read_to_string(&mut text)
        .ok()
        .and_then(|_| text.trim().parse().ok());
    Ok(Some(pid))
}
