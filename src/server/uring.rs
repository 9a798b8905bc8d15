//! Is io_uring usable here? One raw `io_uring_setup` before any executor
//! starts, so that a host or container that forbids it gets one line naming
//! the cause and the fix instead of a glommio panic or internal error.
//!
//! The causes, by what the probe sees:
//!
//! | errno | cause | fix |
//! |---|---|---|
//! | `EPERM` + `kernel.io_uring_disabled` = 2 | sysctl switched it off | set it to 0 |
//! | `EPERM` + `kernel.io_uring_disabled` = 1 | only `kernel.io_uring_group` may | add the user to it, or 0 |
//! | `EPERM` otherwise | a seccomp filter (Docker's default) or an LSM | allow the three io_uring syscalls |
//! | `ENOSYS` | kernel without io_uring, or a filter answering ENOSYS | Linux 5.8+, or allow the syscalls |
//! | `ENOMEM` | locked memory (kernels before 5.12 charge rings to RLIMIT_MEMLOCK) | raise it |

/// `/proc/sys/kernel/io_uring_disabled` (Linux 6.6+): 0 on, 1 only root and
/// `kernel.io_uring_group`, 2 off. `None` where the kernel has no such knob.
fn sysctl(name: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The fix for a blocked syscall, shared by the EPERM and ENOSYS lines.
const ALLOW: &str = "allow the syscalls io_uring_setup, io_uring_enter and io_uring_register \
    (Docker/Podman: --security-opt seccomp=PROFILE with them allowed; systemd: \
    SystemCallFilter=@system-service includes them; see README \"Containers\")";

/// Creates and closes a one-entry ring.
///
/// # Errors
/// One line: why io_uring is unavailable and what to change.
pub fn probe() -> Result<(), String> {
    // io_uring_params: 120 bytes on every kernel since 5.1; zeroed means
    // "no flags", the plainest ring there is.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes only `params`, which is
    // large enough; the returned fd, if any, is ours and closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            params.as_mut_ptr(),
        )
    };
    if fd >= 0 {
        // SAFETY: a fd we just got and nothing else holds.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(explain(
        err.raw_os_error().unwrap_or(0),
        sysctl("io_uring_disabled"),
        sysctl("io_uring_group"),
    ))
}

/// The line for a failed `io_uring_setup` (`errno`) given the sysctls.
fn explain(errno: i32, disabled: Option<i64>, group: Option<i64>) -> String {
    let head = "io_uring is unavailable, and ringmx runs on it";
    match (errno, disabled) {
        (libc::EPERM, Some(2)) => format!(
            "{head}: the sysctl kernel.io_uring_disabled is 2 (off for everyone); set it to 0 \
             (sysctl -w kernel.io_uring_disabled=0, and in /etc/sysctl.d/ to keep it)"
        ),
        (libc::EPERM, Some(1)) => format!(
            "{head}: the sysctl kernel.io_uring_disabled is 1 (only root and the group \
             kernel.io_uring_group = {}); add this user to that group, or set \
             kernel.io_uring_disabled to 0",
            group.map_or_else(|| "?".to_owned(), |g| g.to_string())
        ),
        (libc::EPERM | libc::EACCES, _) => format!(
            "{head}: io_uring_setup was refused (EPERM): a seccomp filter (a container \
             runtime's default profile) or a security module blocks it; {ALLOW}"
        ),
        (libc::ENOSYS, _) => format!(
            "{head}: io_uring_setup does not exist here (ENOSYS): the kernel is older than \
             5.1 or built without CONFIG_IO_URING (ringmx needs Linux 5.8 or later), or a \
             seccomp filter answers ENOSYS for it; {ALLOW}"
        ),
        (libc::ENOMEM, _) => format!(
            "{head}: io_uring_setup found no memory to lock (ENOMEM): raise the locked-memory \
             limit (ulimit -l, LimitMEMLOCK=infinity in systemd) or run with CAP_IPC_LOCK"
        ),
        (e, _) => format!(
            "{head}: io_uring_setup failed: {}; check the kernel (Linux 5.8 or later) and any \
             seccomp filter: {ALLOW}",
            std::io::Error::from_raw_os_error(e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_names_its_fix_in_one_line() {
        for (errno, disabled, want) in [
            (libc::EPERM, Some(2), "kernel.io_uring_disabled is 2"),
            (libc::EPERM, Some(1), "kernel.io_uring_group = 7"),
            (libc::EPERM, Some(0), "seccomp"),
            (libc::EPERM, None, "seccomp"),
            (libc::ENOSYS, None, "Linux 5.8 or later"),
            (libc::ENOMEM, Some(0), "LimitMEMLOCK=infinity"),
            (libc::EINVAL, Some(0), "Invalid argument"),
        ] {
            let line = explain(errno, disabled, Some(7));
            assert!(line.contains(want), "{errno} {disabled:?}: {line}");
            assert!(line.starts_with("io_uring is unavailable"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
