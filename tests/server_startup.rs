//! Start-up: `--help`, config file and flag precedence, and start-up errors,
//! each one clear line and a non-zero exit, never a panic trace.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use common::{ringmx, Server, TempDir};

/// Runs `ringmx serve ARGS` expecting it to fail at start; returns stderr.
fn fails(args: &[&str]) -> (Option<i32>, String) {
    match Server::try_start(&[], args) {
        Ok(mut s) => {
            s.stop();
            panic!("ringmx serve {args:?} started:\n{}", s.logs())
        }
        Err((status, logs)) => {
            assert!(
                !logs.contains("panicked"),
                "panic trace at start-up:\n{logs}"
            );
            (status.code(), logs)
        }
    }
}

/// The one error line of a failed start (other lines are allowed only as
/// warnings logged before the error).
fn error_line(logs: &str) -> &str {
    let errs: Vec<_> = logs.lines().filter(|l| l.starts_with("ringmx: ")).collect();
    assert_eq!(errs.len(), 1, "expected one error line:\n{logs}");
    errs[0]
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run ringmx")
}

#[test]
fn help_documents_every_option_with_its_default() {
    let out = output(ringmx().args(["serve", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = 0;
    let lines: Vec<&str> = help.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim_start();
        if !l.starts_with("--") {
            continue;
        }
        let flag = l.split_whitespace().next().unwrap();
        if ["--config", "--help", "--version"].contains(&flag) {
            continue;
        }
        flags += 1;
        let text = lines[i + 1];
        assert!(
            text.contains("[default: "),
            "{flag} has no default in --help:\n{text}"
        );
        assert!(
            text.contains('(') && text.contains("."),
            "{flag} names no config key:\n{text}"
        );
    }
    assert!(flags >= 25, "only {flags} flags documented:\n{help}");
    for must in [
        "--listen <ADDR>",
        "[default: 127.0.0.1:2525]",
        "--cores <CORES>",
        "--spool <DIR>",
        "--domain <DOMAIN>",
        "--hostname <NAME>",
        "--max-message-size <SIZE>",
        "[default: 50MiB]",
        "--max-connections <N>",
        "--read-buffer <SIZE>",
        "--write-buffer <SIZE>",
        "--command-timeout <DURATION>",
        "--data-timeout <DURATION>",
        "--config <FILE>",
    ] {
        assert!(help.contains(must), "--help lacks {must:?}:\n{help}");
    }
}

#[test]
fn a_port_held_by_another_process_is_refused() {
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap().to_string();
    let (code, logs) = fails(&["--listen", &addr, "--cores", "1"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        error_line(&logs),
        format!("ringmx: {addr} is already in use by another process")
    );
}

#[test]
fn a_second_ringmx_does_not_share_the_port() {
    // SO_REUSEPORT would let it in silently; the probe must refuse it.
    let first = Server::start(&[]);
    let addr = first.addr.to_string();
    let (code, logs) = fails(&["--listen", &addr, "--cores", "1"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        error_line(&logs),
        format!("ringmx: {addr} is already in use by another process")
    );
    // The first one is unharmed.
    let mut c = first.client();
    c.send("QUIT\r\n");
    c.expect("221 ");
}

#[test]
fn a_bad_core_list_is_refused() {
    let (code, logs) = fails(&["--listen", "127.0.0.1:0", "--cores", "0,999"]);
    assert_eq!(code, Some(2));
    let l = error_line(&logs);
    assert!(
        l.starts_with("ringmx: server.cores: CPU 999 is not available"),
        "{l}"
    );
    let (code, logs) = fails(&["--listen", "127.0.0.1:0", "--cores", "4096"]);
    assert_eq!(code, Some(2));
    assert!(
        error_line(&logs).contains("4096 shards asked for, but only"),
        "{logs}"
    );
    let (code, logs) = fails(&["--listen", "127.0.0.1:0", "--cores", "0"]);
    assert_eq!(code, Some(2));
    assert_eq!(error_line(&logs), "ringmx: server.cores must be at least 1");
    // Not a core selection at all: clap's usage error.
    let out = output(ringmx().args(["serve", "--cores", "banana"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a core selection"), "{err}");
}

#[test]
fn an_unwritable_spool_is_refused() {
    let dir = TempDir::new("notdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let spool = file.join("spool");
    let spool = spool.to_str().unwrap();
    let (code, logs) = fails(&["--listen", "127.0.0.1:0", "--cores", "1", "--spool", spool]);
    assert_eq!(code, Some(1));
    let l = error_line(&logs);
    assert!(
        l.starts_with(&format!("ringmx: shard 0: creating spool {spool}:"))
            && l.contains("Not a directory"),
        "{l}"
    );
}

#[test]
fn a_locked_memory_limit_too_low_for_io_uring_is_refused() {
    let mut cmd = ringmx();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // As root the server could raise the limit again; take away
            // CAP_SYS_RESOURCE (24) for good (a non-root run cannot raise a
            // hard limit anyway, and this prctl then fails harmlessly).
            libc::prctl(libc::PR_CAPBSET_DROP, 24, 0, 0, 0);
            let r = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = output(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        error_line(&err),
        "ringmx: locked-memory limit (RLIMIT_MEMLOCK) is 64 KiB; io_uring needs at least 512 KiB: \
         raise it (ulimit -l, LimitMEMLOCK= in systemd) or run with CAP_IPC_LOCK"
    );
}

#[test]
fn config_file_settings_with_flags_on_top() {
    let dir = TempDir::new("config");
    let file = dir.path().join("ringmx.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncores = 1\n\
         [smtp]\nhostname = \"from-file.example\"\nmax_message_bytes = \"2000\"\n\
         accepted_domains = [\"file.example\"]\n",
    )
    .unwrap();
    let s = Server::start_with(
        &[],
        &[
            "--config",
            file.to_str().unwrap(),
            "--hostname",
            "from-flag.example",
        ],
    );
    let mut c = Client::connect(s.addr);
    // The flag wins over the file; the file wins over the defaults.
    c.expect("220 from-flag.example ESMTP");
    c.send("EHLO x\r\n");
    let r = c.reply();
    assert!(r.contains(&"250-SIZE 2000".to_string()), "{r:?}");
    c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<u@file.example>\r\nRCPT TO:<u@localhost>\r\n");
    c.expect("250 ");
    c.expect("250 ");
    c.expect("550 5.7.1");
}

use common::Client;

#[test]
fn config_file_errors_are_one_line() {
    let dir = TempDir::new("badconfig");
    let file = dir.path().join("bad.toml");
    let f = file.to_str().unwrap();
    for (text, want) in [
        (
            "[smtp]\nhostname = \"x\"\nhostnme = \"typo\"\n",
            format!("ringmx: config file {f}:3:1: unknown field `hostnme`"),
        ),
        (
            "[smtp]\nmax_message_bytes = \"lots\"\n",
            format!("ringmx: config file {f}:2:21: \"lots\" is not a size"),
        ),
        (
            "[server]\ncores = \"some\"\n",
            format!("ringmx: config file {f}:2:9: \"some\" is not"),
        ),
        (
            "[smtp]\nmax_recipients = 10\n",
            "ringmx: smtp.max_recipients = 10: RFC 5321 §4.5.3.1.8 requires at least 100".into(),
        ),
        ("[server\n", format!("ringmx: config file {f}:1:")),
    ] {
        std::fs::write(&file, text).unwrap();
        let (code, logs) = fails(&["--config", f]);
        assert_eq!(code, Some(2), "{text:?}: {logs}");
        let l = error_line(&logs);
        assert!(l.starts_with(&want), "{text:?}:\n got  {l}\n want {want}");
    }
    let (code, logs) = fails(&["--config", "/nonexistent/ringmx.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        error_line(&logs).starts_with("ringmx: cannot read config file /nonexistent/ringmx.toml:"),
        "{logs}"
    );
}

#[test]
fn bad_flag_values_are_clear_errors() {
    for (args, want) in [
        (
            &["--max-message-size", "lots"][..],
            "\"lots\" is not a size",
        ),
        (&["--command-timeout", "5 parsecs"][..], "unknown unit"),
        (&["--listen", "localhost:25"][..], "invalid socket address"),
        (&["--durability", "maybe"][..], "use fsync or none"),
    ] {
        let out = output(ringmx().arg("serve").args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
