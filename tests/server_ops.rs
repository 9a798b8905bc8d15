//! Operability (issue 13): `check-config`, JSON logs, sd_notify under a
//! socket of our own, a clear line where io_uring is forbidden, and SIGHUP
//! reloading the settings that can change at run time.

mod common;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{require_tool, ringmx, Server, TempDir, STEP};

fn check_config(path: &std::path::Path, all: bool) -> (Option<i32>, String, String) {
    let mut cmd = ringmx();
    cmd.arg("check-config").arg("--config").arg(path);
    if all {
        cmd.arg("-a");
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run ringmx");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_prints_what_differs_and_refuses_a_bad_file_with_exit_2() {
    let dir = TempDir::new("check-config");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[smtp]\nhostname = \"mx.example\"\naccepted_domains = [\"a.example\"]\n\
         max_message_bytes = \"10MiB\"\n[server]\nbacklog = 4096\n",
    )
    .unwrap();
    let (code, out, err) = check_config(&good, false);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        // Sorted by key, as postconf -n does.
        "[smtp]\naccepted_domains = [\"a.example\"]\nhostname = \"mx.example\"\n\
         max_message_bytes = 10485760\n"
    );
    // --all: every setting, and the output is a config serve accepts.
    let (code, all, _) = check_config(&good, true);
    assert_eq!(code, Some(0));
    assert!(all.contains("backlog = 4096\n"), "{all}");
    assert!(all.contains("command_timeout = \"300s\"\n"), "{all}");
    let back = dir.path().join("all.toml");
    std::fs::write(&back, &all).unwrap();
    let (code, again, err) = check_config(&back, false);
    assert_eq!((code, again.as_str()), (Some(0), out.as_str()), "{err}");

    for (text, want) in [
        (
            "[smtp]\nhostnme = \"x\"\n",
            "bad.toml:2:1: unknown field `hostnme`",
        ),
        ("[smtp]\nmax_recipients = 5\n", "max_recipients"),
        ("[smtp]\naccepted_domains = []\n", "accepted"),
        ("[smtp\n", "bad.toml:1:"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let (code, out, err) = check_config(&bad, false);
        assert_eq!(code, Some(2), "{text}: {out} {err}");
        assert_eq!(out, "", "{text}");
        assert_eq!(err.lines().count(), 1, "{text}: {err}");
        assert!(err.starts_with("ringmx check-config: "), "{err}");
        assert!(err.contains(want), "{text}: {err}");
    }
    let (code, _, err) = check_config(&dir.path().join("missing.toml"), false);
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.toml"), "{err}");

    // The certificate is read as serve reads it: one serve would refuse
    // (exit 2) fails the check too, before a restart or a SIGHUP meets it.
    let pem = dir.path().join("mx.pem");
    std::fs::write(&pem, "not a certificate\n").unwrap();
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        format!(
            "[smtp]\naccepted_domains = [\"a.example\"]\n[tls]\ncert = {p:?}\nkey = {p:?}\n",
            p = pem.to_str().unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = check_config(&tls, false);
    assert_eq!(code, Some(2), "{out} {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("TLS certificate"), "{err}");
    assert!(err.contains("mx.pem"), "{err}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_text_fields() {
    let Some(python) = require_tool("python3", "python3") else {
        return;
    };
    let mut s = Server::start(&["--log-format", "json", "--domain", "a.example"]);
    let mut c = s.client();
    c.send("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    c.expect("354 ");
    // A quote, a backslash and a control character in what gets logged.
    c.send("Subject: x\r\n\r\nhi\r\n.\r\nHELO \"q\\\x01\r\nQUIT\r\n");
    c.expect("250 ");
    c.reply();
    c.expect("221 ");
    assert!(s.stop().success());
    let logs = s.logs();
    assert!(logs.lines().count() >= 4, "{logs}");
    let mut py = Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             n = 0\n\
             for line in sys.stdin:\n\
             \x20   o = json.loads(line)\n\
             \x20   assert sorted(o) == ['level', 'msg', 'ts'], o\n\
             \x20   assert o['level'] in ('error', 'warn', 'info', 'debug'), o\n\
             \x20   assert o['ts'].endswith('Z') and 'T' in o['ts'], o\n\
             \x20   n += 1\n\
             print(n)\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(logs.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: usize = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(parsed, logs.lines().count());
    assert!(
        logs.lines()
            .any(|l| l.contains("\"level\":\"info\"") && l.contains("listening on ")),
        "{logs}"
    );
    // A failed start is a JSON line too.
    let (code, failed) = match Server::try_start(
        &["--listen", "127.0.0.1:0", "--cores", "0-4095"],
        &["--log-format", "json"],
    ) {
        Ok(mut s) => {
            s.stop();
            panic!("started on 4096 CPUs")
        }
        Err((status, logs)) => (status.code(), logs),
    };
    assert_eq!(code, Some(2), "{failed}");
    let last = failed.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("{\"ts\":\"")
            && last.contains("\"level\":\"error\",\"msg\":\"ringmx: server.cores: "),
        "{failed}"
    );
    assert_eq!(
        logs.lines().filter(|l| l.contains("u@a.example")).count(),
        1,
        "one line for the accepted message:\n{logs}"
    );
}

/// A datagram from the server, or a failure after [`STEP`].
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no sd_notify datagram");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sd_notify_says_ready_once_listening_and_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    let mut s = Server::try_start_tweaked(&["--listen", "127.0.0.1:0", "--cores", "1"], &[], |c| {
        c.env("NOTIFY_SOCKET", &path);
    })
    .unwrap_or_else(|(st, logs)| panic!("{st:?}\n{logs}"));
    assert_eq!(recv(&sock), "READY=1");
    // Ready means accepting.
    let mut c = s.client();
    c.send("QUIT\r\n");
    c.expect("221 ");
    s.signal(libc::SIGTERM);
    assert_eq!(recv(&sock), "STOPPING=1");
    assert!(s.wait_exit(STEP).expect("exit").success(), "{}", s.logs());
    // Nothing else was sent.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err());
}

/// Runs `ringmx serve` with a seccomp filter that answers `errno` to
/// io_uring_setup, as a container runtime's profile does.
fn serve_without_io_uring(errno: u32) -> (Option<i32>, String) {
    // Classic BPF over seccomp_data: load the syscall number (offset 0),
    // compare, return ERRNO or ALLOW. The test runs on the arch it was
    // built for, so libc's number for io_uring_setup is the right one.
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        f(LD_W_ABS, 0, 0, 0),
        f(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        f(RET_K, 0, 0, RET_ERRNO | errno),
        f(RET_K, 0, 0, RET_ALLOW),
    ];
    let spool = TempDir::new("no-uring");
    let mut cmd = ringmx();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--spool",
    ])
    .arg(spool.path())
    .stdin(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe prctl(2) calls,
    // on memory (`prog`) the child inherited and does not free.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run ringmx under seccomp");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn a_forbidden_io_uring_is_one_line_naming_the_cause_and_the_fix() {
    for (errno, cause) in [
        (libc::EPERM as u32, "io_uring_setup was refused (EPERM)"),
        (
            libc::ENOSYS as u32,
            "io_uring_setup does not exist here (ENOSYS)",
        ),
    ] {
        let (code, err) = serve_without_io_uring(errno);
        assert_eq!(code, Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let errs: Vec<&str> = err.lines().filter(|l| l.starts_with("ringmx: ")).collect();
        assert_eq!(errs.len(), 1, "{err}");
        let line = errs[0];
        assert!(
            line.starts_with("ringmx: io_uring is unavailable, and ringmx runs on it: "),
            "{line}"
        );
        assert!(line.contains(cause), "{line}");
        assert!(line.contains("io_uring_enter"), "{line}");
        // Nothing was started before the check: no listening line.
        assert!(!err.contains("listening on"), "{err}");
    }
}

/// EHLO's SIZE and what RCPT TO:<u@DOMAIN> gets, on a new connection.
fn size_and_rcpt(s: &Server, domain: &str) -> (String, String) {
    let mut c = s.client();
    c.send("EHLO c.example\r\n");
    let ehlo = c.reply();
    let size = ehlo
        .iter()
        .find_map(|l| l.get(4..).and_then(|l| l.strip_prefix("SIZE ")))
        .expect("SIZE in EHLO")
        .to_owned();
    c.send(format!(
        "MAIL FROM:<a@c.example>\r\nRCPT TO:<u@{domain}>\r\n"
    ));
    c.expect("250 ");
    let rcpt = c.line();
    c.send("QUIT\r\n");
    c.expect("221 ");
    (size, rcpt[..3].to_owned())
}

#[test]
fn sighup_applies_new_domains_and_limits_and_a_broken_file_keeps_them() {
    let dir = TempDir::new("reload");
    let file = dir.path().join("ringmx.toml");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        "[smtp]\naccepted_domains = [\"a.example\"]\nmax_message_bytes = \"10KiB\"\n",
    )
    .unwrap();
    let mut s = Server::start_with(
        &["--listen", "127.0.0.1:0", "--cores", "1", "--config", path],
        &[],
    );
    assert_eq!(
        size_and_rcpt(&s, "a.example"),
        ("10240".into(), "250".into())
    );
    assert_eq!(size_and_rcpt(&s, "b.example").1, "550");
    // A connection open across the reload keeps what it started with.
    let mut before = s.client();

    std::fs::write(
        &file,
        "[smtp]\naccepted_domains = [\"a.example\", \"b.example\"]\n\
         max_message_bytes = \"20KiB\"\n[server]\nbacklog = 7\n",
    )
    .unwrap();
    s.signal(libc::SIGHUP);
    let line = s
        .wait_log("SIGHUP: settings reloaded", STEP)
        .unwrap_or_else(|| panic!("no reload line:\n{}", s.logs()));
    assert!(
        line.ends_with("smtp.accepted_domains smtp.max_message_bytes changed"),
        "{line}"
    );
    let restart = s
        .wait_log("take effect only after a restart", STEP)
        .unwrap_or_else(|| panic!("{}", s.logs()));
    assert!(
        restart.contains("SIGHUP: server.backlog changed"),
        "{restart}"
    );
    assert_eq!(
        size_and_rcpt(&s, "b.example"),
        ("20480".into(), "250".into())
    );
    before.send("EHLO c.example\r\n");
    assert!(before.reply().iter().any(|l| l.ends_with("SIZE 10240")));

    // Broken: a syntax error, then a value that does not validate.
    for (n, text) in [
        (1, "[smtp\naccepted_domains = [\"c.example\"]\n"),
        (
            2,
            "[smtp]\naccepted_domains = [\"c.example\"]\nmax_recipients = 5\n",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        s.signal(libc::SIGHUP);
        let line = s
            .wait_log_nth("SIGHUP: settings not reloaded", n, STEP)
            .unwrap_or_else(|| panic!("{}", s.logs()));
        assert!(line.contains("the running ones stay"), "{line}");
        assert!(
            line.contains(path) || line.contains("max_recipients"),
            "{line}"
        );
        assert_eq!(
            size_and_rcpt(&s, "b.example"),
            ("20480".into(), "250".into())
        );
        assert_eq!(size_and_rcpt(&s, "c.example").1, "550");
    }
    assert_eq!(
        s.logs().matches("SIGHUP: settings reloaded").count(),
        1,
        "{}",
        s.logs()
    );
    assert!(s.stop().success());
}

/// The packaged unit, config and man page, without building the package
/// (packaging/check-deb.sh does that in CI): the unit verifies against the
/// binary under test, the default config passes check-config, and the man
/// page renders without groff warnings.
#[test]
fn the_packaged_unit_config_and_man_page_check_out() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = env!("CARGO_BIN_EXE_ringmx");
    let (code, out, err) = check_config(&root.join("packaging/ringmx.toml"), false);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("listen = [\"127.0.0.1:25\"]"), "{out}");
    // `curl localhost:9325/metrics` works on a fresh install.
    assert!(out.contains("metrics = [\"127.0.0.1:9325\"]"), "{out}");

    if let Some(analyze) = require_tool("systemd-analyze", "systemd") {
        let unit = std::fs::read_to_string(root.join("packaging/ringmx.service")).unwrap();
        for want in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "LimitMEMLOCK=infinity",
            "SystemCallFilter=@system-service",
        ] {
            assert!(unit.lines().any(|l| l == want), "{want} missing");
        }
        let dir = TempDir::new("unit");
        let path = dir.path().join("ringmx.service");
        std::fs::write(&path, unit.replace("/usr/bin/ringmx", bin)).unwrap();
        let out = Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.trim().is_empty(), "{text}");
    }

    if let Some(man) = require_tool("man", "man-db") {
        let page = Command::new(root.join("packaging/man.sh"))
            .arg(bin)
            .output()
            .unwrap();
        assert!(page.status.success());
        let roff = String::from_utf8(page.stdout).unwrap();
        // Every subcommand's --help is in it.
        for h in [
            ".SH RINGMX SERVE",
            ".SH RINGMX CHECK-CONFIG",
            "--log-format",
        ] {
            assert!(roff.contains(h), "{h} missing from the man page");
        }
        let dir = TempDir::new("man");
        let path = dir.path().join("ringmx.8");
        std::fs::write(&path, &roff).unwrap();
        let out = Command::new(man)
            .args(["--warnings", "-l", "-Tutf8"])
            .arg(&path)
            .env("MANWIDTH", "200")
            .output()
            .unwrap();
        assert!(out.status.success());
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{warnings}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("ringmx check-config"));
    }
}
