//! `spool.sync_cores`: the CPUs the shard thread's io_uring workers run on.
//!
//! An fdatasync (and a buffered write that would block) submitted through
//! io_uring is handed to an io-wq worker thread (`iou-wrk-<tid>`), which the
//! kernel creates with the submitting thread's CPU affinity: with the shard
//! pinned to one CPU, every group commit wakes a worker on the shard's own
//! core and preempts the shard twice (issue 15). `IORING_REGISTER_IOWQ_AFF`
//! (Linux 5.14) moves the workers the thread creates from then on to other
//! CPUs. It applies to the thread's io-wq, which every ring of the thread
//! shares, so a throwaway one-entry ring is enough to register it on; glommio
//! needs no change.

/// `IORING_REGISTER_IOWQ_AFF` (include/uapi/linux/io_uring.h).
const IORING_REGISTER_IOWQ_AFF: libc::c_uint = 17;

/// Binds the calling thread's io_uring workers created from now on to `cpus`.
///
/// # Errors
/// One line saying what failed and what to change: a CPU out of range or
/// outside this process's cpuset (`EINVAL`), a kernel older than 5.14.
pub(crate) fn bind_io_workers(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain bits; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    for &c in cpus {
        if c >= max {
            return Err(format!(
                "spool.sync_cores: CPU {c} is out of range (0..{max})"
            ));
        }
        // SAFETY: `c` is below the set's size, checked just above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes only `params` (120 bytes,
    // io_uring_params on every kernel); the fd, if any, is ours and closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return Err(format!(
            "spool.sync_cores: io_uring_setup: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `set` outlives the call, and the size passed is its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd as libc::c_int,
            IORING_REGISTER_IOWQ_AFF,
            std::ptr::addr_of!(set),
            std::mem::size_of::<libc::cpu_set_t>(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: the fd from io_uring_setup above, not shared.
    unsafe { libc::close(fd as libc::c_int) };
    if r < 0 {
        return Err(match err.raw_os_error() {
            Some(libc::EINVAL) => format!(
                "spool.sync_cores: the kernel refused CPUs {cpus:?} for io_uring workers (EINVAL): \
                 list CPUs that exist and that this process's cpuset allows"
            ),
            _ => format!(
                "spool.sync_cores: IORING_REGISTER_IOWQ_AFF failed: {err} (needs Linux 5.14 or \
                 later); leave sync_cores at all"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workers of a thread bound to CPU 0 run there: a real fdatasync
    /// through io_uring, then the worker threads' CPU lists from /proc.
    #[test]
    fn workers_created_after_binding_run_on_the_bound_cpus() {
        let out = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                bind_io_workers(&[0]).unwrap();
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let dir = std::env::temp_dir().join(format!("iowq-{}", std::process::id()));
                let f = glommio::io::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .buffered_open(&dir)
                    .await
                    .unwrap();
                f.write_at(vec![1u8; 4096], 0).await.unwrap();
                f.fdatasync().await.unwrap();
                // The worker that ran the sync is still there (idle for 5 s).
                let cpus = worker_cpu_lists(tid);
                f.close().await.unwrap();
                std::fs::remove_file(&dir).unwrap();
                cpus
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(!out.is_empty(), "no io_uring worker thread seen");
        for l in out {
            assert_eq!(l, "0", "a worker runs on CPUs {l}");
        }
    }

    /// `Cpus_allowed_list` of the io_uring workers of thread `tid`
    /// (`iou-wrk-<tid>`, cut to 15 bytes like every thread name); other
    /// tests' threads have workers of their own.
    fn worker_cpu_lists(tid: libc::pid_t) -> Vec<String> {
        let name: String = format!("iou-wrk-{tid}").chars().take(15).collect();
        let mut v = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                v.push(l.split(':').nth(1).unwrap_or("").trim().to_owned());
            }
        }
        v
    }

    #[test]
    fn a_cpu_out_of_range_is_refused_with_the_setting_named() {
        let e = bind_io_workers(&[1 << 20]).unwrap_err();
        assert!(
            e.contains("spool.sync_cores") && e.contains("out of range"),
            "{e}"
        );
    }
}
