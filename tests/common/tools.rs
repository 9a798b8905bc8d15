//! Tests that need a tool or a privilege: find it, or skip loudly on a
//! developer's machine and fail in CI. Shared by the server's tests and, by
//! `#[path]`, loadgen's, so both follow one rule.

use std::io::Write;
use std::path::PathBuf;

/// Whether this run is CI: `RINGMX_CI` set to anything but empty or `0`
/// (`.ci/run` exports `RINGMX_CI=1`). In CI nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var_os("RINGMX_CI").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A test that lacks a tool or privilege it needs: on a developer's machine
/// it prints `skipped: <why>` and the caller returns (the test passes); in
/// CI this panics, so a missing tool can never pass silently.
pub fn skip(why: &str) {
    assert!(
        !in_ci(),
        "RINGMX_CI is set, so this test may not be skipped: {why}"
    );
    // Straight to stderr: libtest captures eprintln! of passing tests, and
    // a skip must be seen.
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// Finds an executable on PATH, then in /usr/sbin (where Debian puts
/// Postfix's smtp-sink and smtp-source, off a normal user's PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// [`find_tool`], or [`skip`] naming the Debian package that has it (which
/// `.ci/run` installs): `None` means the caller returns.
pub fn require_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        skip(&format!(
            "{name} not found on PATH or in /usr/sbin (Debian package {package})"
        ));
    }
    found
}
