//! Process-wide system settings that the server and loadgen both need: the
//! CPUs this process may run on, and its resource limits (open files, locked
//! memory). Both pin one glommio executor per CPU and both need room for
//! many sockets and io_uring's locked buffers, so the calls live once, here.
//!
//! The system calls go through `rustix`, whose safe wrappers leave no
//! `unsafe` here; what to do when a limit is short (fail, warn, note) is the
//! caller's decision.

use std::io;

use rustix::process::{Resource, Rlimit};
use rustix::thread::CpuSet;

/// A resource limit the server or loadgen raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// RLIMIT_NOFILE: open file descriptors (every socket is one).
    OpenFiles,
    /// RLIMIT_MEMLOCK: bytes of locked memory (io_uring's registered buffers).
    LockedMemory,
}

impl Limit {
    fn resource(self) -> Resource {
        match self {
            Limit::OpenFiles => Resource::Nofile,
            Limit::LockedMemory => Resource::Memlock,
        }
    }
}

/// "Unlimited" (RLIM_INFINITY) as a number, so that comparisons just work.
pub const UNLIMITED: u64 = u64::MAX;

/// The CPUs this thread may run on (its affinity mask, e.g. from `taskset`),
/// ascending. Called before any thread is started, this is the process's mask.
///
/// # Errors
/// The error of `sched_getaffinity`.
///
/// # Example
/// ```
/// let cpus = ringmx::sys::allowed_cpus().unwrap();
/// assert!(!cpus.is_empty());
/// assert!(cpus.windows(2).all(|w| w[0] < w[1]));
/// ```
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// The soft and hard values of `limit`; [`UNLIMITED`] stands for no limit.
///
/// # Example
/// ```
/// use ringmx::sys::{limit, Limit};
/// let (soft, hard) = limit(Limit::OpenFiles);
/// assert!(soft <= hard);
/// ```
pub fn limit(limit: Limit) -> (u64, u64) {
    let r = rustix::process::getrlimit(limit.resource());
    (
        r.current.unwrap_or(UNLIMITED),
        r.maximum.unwrap_or(UNLIMITED),
    )
}

fn set_limit(limit: Limit, soft: u64, hard: u64) -> bool {
    let value = |v: u64| (v != UNLIMITED).then_some(v);
    rustix::process::setrlimit(
        limit.resource(),
        Rlimit {
            current: value(soft),
            maximum: value(hard),
        },
    )
    .is_ok()
}

/// Raises the soft value of `limit` towards `want`: first by raising the hard
/// value too (which needs CAP_SYS_RESOURCE), else as far as the hard value
/// allows. Never lowers anything. Returns the soft value in force afterwards,
/// for the caller to judge.
///
/// # Example
/// ```
/// use ringmx::sys::{limit, raise_limit, Limit};
/// let (soft, hard) = limit(Limit::OpenFiles);
/// // Asking for what is already there changes nothing.
/// assert_eq!(raise_limit(Limit::OpenFiles, soft), soft);
/// // Up to the hard value needs no privilege.
/// assert_eq!(raise_limit(Limit::OpenFiles, hard), hard);
/// ```
pub fn raise_limit(limit: Limit, want: u64) -> u64 {
    let (soft, hard) = self::limit(limit);
    if soft >= want {
        return soft;
    }
    if hard < want && set_limit(limit, want, want) {
        return want;
    }
    let to = want.min(hard);
    if to > soft && set_limit(limit, to, hard) {
        return to;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_affinity_mask_holds_the_cpu_we_run_on() {
        let cpus = allowed_cpus().unwrap();
        let now = rustix::thread::sched_getcpu();
        assert!(cpus.contains(&now), "{now} not in {cpus:?}");
    }

    #[test]
    fn raising_never_lowers_and_stays_within_the_hard_limit() {
        // The test binary's own NOFILE: raising to the current soft value, or
        // below it, is a no-op; raising to the hard value always works.
        let (soft, hard) = limit(Limit::OpenFiles);
        assert_eq!(raise_limit(Limit::OpenFiles, soft / 2), soft);
        assert_eq!(raise_limit(Limit::OpenFiles, hard), hard);
        assert_eq!(limit(Limit::OpenFiles), (hard, hard));
    }
}
