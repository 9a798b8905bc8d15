//! Test-only fault injection: the next writes, truncates or syncs on this
//! thread fail; and an oracle of what each fdatasync made durable.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

thread_local! {
    /// Per file, its length when its last fdatasync returned: what a
    /// power loss would leave of it.
    static SYNCED: RefCell<HashMap<PathBuf, u64>> = RefCell::new(HashMap::new());
    /// Per file, where the zeros at its end began when its last fdatasync
    /// returned: records written there later (over zeros written ahead,
    /// `spool.prewrite_bytes`) were not covered by it.
    static ZEROS: RefCell<HashMap<PathBuf, u64>> = RefCell::new(HashMap::new());
    /// Per file, how many fdatasyncs returned.
    static SYNCS_DONE: RefCell<HashMap<PathBuf, u64>> = RefCell::new(HashMap::new());
    /// Files written (or cut) without O_DSYNC since their last fdatasync
    /// (`spool.direct_io`): an O_DSYNC write may make only itself durable
    /// (FUA), so it proves nothing about them.
    static DIRTY: RefCell<HashSet<PathBuf>> = RefCell::new(HashSet::new());
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

fn key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// A write or truncate of `path` without O_DSYNC returned.
pub(super) fn note_plain_write(path: &Path) {
    DIRTY.with(|d| d.borrow_mut().insert(key(path)));
}

/// A write of `path` with O_DSYNC returned: the file as it is now is
/// durable only if nothing was written plain since the last fdatasync.
pub(super) fn note_dsync_write(path: &Path) {
    if !DIRTY.with(|d| d.borrow().contains(&key(path))) {
        note_sync(path);
    }
}

/// An fdatasync of `path` returned: the file as it is now is durable.
pub(super) fn note_sync(path: &Path) {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let zeros = zeros_from(path, len);
    let path = key(path);
    DIRTY.with(|d| d.borrow_mut().remove(&path));
    SYNCED.with(|s| s.borrow_mut().insert(path.clone(), len));
    ZEROS.with(|s| s.borrow_mut().insert(path.clone(), zeros));
    SYNCS_DONE.with(|s| *s.borrow_mut().entry(path).or_default() += 1);
}

/// How many fdatasyncs of `path` returned on this thread.
pub(crate) fn syncs_done(path: &Path) -> u64 {
    let Ok(path) = std::fs::canonicalize(path) else {
        return 0;
    };
    SYNCS_DONE.with(|s| s.borrow().get(&path).copied().unwrap_or(0))
}

/// The length of `path` when an fdatasync of it last returned on this
/// thread; `None` if none did.
pub(crate) fn synced_len(path: &Path) -> Option<u64> {
    let path = std::fs::canonicalize(path).ok()?;
    SYNCED.with(|s| s.borrow().get(&path).copied())
}

/// Where the run of zero bytes that ends `path` (of `len` bytes) begins.
fn zeros_from(path: &Path, len: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return len;
    };
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let n = buf.len().min(end as usize);
        if f.read_exact_at(&mut buf[..n], end - n as u64).is_err() {
            return end;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            return end - n as u64 + i as u64 + 1;
        }
        end -= n as u64;
    }
    0
}

/// Where the zeros that ended `path` began when an fdatasync of it last
/// returned on this thread: bytes there now were not made durable by it,
/// though the file was already that long. `None` if none returned.
pub(crate) fn synced_zeros_from(path: &Path) -> Option<u64> {
    let path = std::fs::canonicalize(path).ok()?;
    ZEROS.with(|s| s.borrow().get(&path).copied())
}
