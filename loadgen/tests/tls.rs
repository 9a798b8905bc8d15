//! loadgen's `--starttls` and `--tls` against a real TLS SMTP server: a
//! private Postfix (tuning/anchors/postfix.sh, as the benchmarks run it)
//! offering STARTTLS (`smtpd_tls_security_level = may`) or implicit TLS
//! (`smtpd_tls_wrappermode = yes`), with a CA and certificate made here by
//! openssl. Counts must agree: handshakes = connections = handshake-row
//! samples = STARTTLS 220s, and Postfix's hold queue holds what was accepted.
//! A certificate the client does not trust fails each connection with error
//! kind `tls` and a sentence saying what to do, never a panic or a hang.
//!
//! Needs root (Postfix's master), postfix and openssl: skipped with a message
//! without them, failed instead when `RINGMX_CI` is set.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{count, require_tool, run_loadgen, skip, summary, SmtpSink, TempDir};

const LIMIT: Duration = Duration::from_secs(90);

/// A CA, a `localhost`/127.0.0.1 certificate it signed, and an unrelated CA.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
}

/// Makes [`Certs`] in `dir` with the openssl command line (never committed
/// keys). `None`: openssl is missing (skipped).
fn make_certs(dir: &Path) -> Option<Certs> {
    let openssl = require_tool("openssl", "openssl")?;
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (cn, key, pem) in [
        ("/CN=loadgen test CA", "ca.key", "ca.pem"),
        ("/CN=some other CA", "other.key", "other.pem"),
    ] {
        run(&[
            &[
                "req", "-x509", "-days", "2", "-subj", cn, "-keyout", key, "-out", pem,
            ][..],
            &ec,
        ]
        .concat());
    }
    run(&[
        &[
            "req",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ][..],
        &ec,
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    Some(Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
        other_ca: dir.join("other.pem"),
    })
}

/// A private Postfix with TLS on a free loopback port, stopped on drop.
struct Postfix {
    work: PathBuf,
    port: u16,
}

fn anchor() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/anchors/postfix.sh")
}

impl Postfix {
    /// Starts it under `dir` with `certs`: STARTTLS, or implicit TLS with
    /// `wrapper`. `None` after [`skip`] without root or postfix.
    fn start(dir: &Path, certs: &Certs, wrapper: bool) -> Option<Postfix> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip("a private Postfix needs root (its master runs as root)");
            return None;
        }
        require_tool("postfix", "postfix")?;
        let work = dir.join("postfix");
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = Command::new(anchor());
            cmd.args(["start", &port.to_string(), work.to_str().unwrap()])
                .env("POSTFIX_TLS_CERT", &certs.cert)
                .env("POSTFIX_TLS_KEY", &certs.key)
                // Enough for these tests' connections; fewer processes to fork.
                .env("POSTFIX_PROCESS_LIMIT", "20");
            if wrapper {
                cmd.env("POSTFIX_TLS_WRAPPER", "1");
            }
            let out = cmd.output().expect("run postfix.sh");
            if out.status.success() {
                return Some(Postfix { work, port });
            }
            let err = String::from_utf8_lossy(&out.stderr);
            // The free port was taken meanwhile: try another.
            assert!(err.contains("already in use"), "postfix.sh start: {err}");
        }
        panic!("no free port for Postfix after 3 tries");
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Messages in its hold queue: what it accepted (and fsync'ed).
    fn held(&self) -> u64 {
        let out = Command::new(anchor())
            .args(["count", self.work.to_str().unwrap()])
            .output()
            .expect("run postfix.sh count");
        assert!(out.status.success(), "postfix.sh count: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(anchor())
            .args(["stop", self.work.to_str().unwrap()])
            .output();
    }
}

/// Runs loadgen with `args` plus `--json`, expecting exit 0; the summary.
fn run_json(dir: &TempDir, name: &str, args: &[&str]) -> (serde_json::Value, String) {
    let json = dir.path(&format!("{name}.json"));
    let mut all = vec!["run", "-q", "--json", json.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_loadgen(&all, LIMIT);
    out.assert_ok();
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    (summary(&json), out.stdout)
}

/// Every connection did one handshake, each recorded once.
fn assert_handshakes(s: &serde_json::Value, text: &str, conns: u64) {
    assert_eq!(count(s, &["connections", "opened"]), conns, "{text}");
    assert_eq!(
        count(s, &["connections", "tls_handshakes"]),
        conns,
        "{text}"
    );
    assert_eq!(count(s, &["latency_ms", "handshake", "count"]), conns);
    assert!(s["handshakes_per_s"].as_f64().unwrap() > 0.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("handshake ")),
        "no handshake row:\n{text}"
    );
}

#[test]
fn starttls_to_postfix() {
    let dir = TempDir::new("starttls");
    let Some(certs) = make_certs(&dir.0) else {
        return;
    };
    let Some(pf) = Postfix::start(&dir.0, &certs, false) else {
        return;
    };
    let ca = certs.ca.to_str().unwrap();
    let target = pf.target();
    let (s, text) = run_json(
        &dir,
        "mail",
        &[
            "--target",
            &target,
            "--starttls",
            "--tls-ca",
            ca,
            "-c",
            "4",
            "-n",
            "40",
            "--msgs-per-conn",
            "10",
            "--to-domain",
            "example.com",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 40, "{text}");
    assert_eq!(s["errors"], serde_json::json!({}), "{text}");
    let conns = count(&s, &["connections", "opened"]);
    // 40 messages, 10 per connection, claimed by 4 workers as they go.
    assert!((4..=13).contains(&conns), "{conns} connections:\n{text}");
    assert_handshakes(&s, &text, conns);
    // STARTTLS once per connection; EHLO before and after it.
    assert_eq!(count(&s, &["replies", "starttls", "2xx"]), conns);
    assert_eq!(count(&s, &["replies", "ehlo", "2xx"]), 2 * conns);
    assert_eq!(count(&s, &["replies", "greeting", "2xx"]), conns);
    assert_eq!(count(&s, &["connections", "tls_resumed"]), 0, "{text}");
    assert_eq!(s["config"]["tls"], "starttls");
    assert!(text.contains("tls          STARTTLS handshakes"), "{text}");
    assert_eq!(pf.held(), 40, "Postfix holds what it acknowledged");

    // The same server without --starttls: no TLS, no handshake row.
    let (s, text) = run_json(&dir, "plain", &["--target", &target, "-c", "1", "-n", "3"]);
    assert_eq!(count(&s, &["messages", "ok"]), 3, "{text}");
    assert_eq!(count(&s, &["connections", "tls_handshakes"]), 0);
    assert_eq!(count(&s, &["latency_ms", "handshake", "count"]), 0);
    assert_eq!(count(&s, &["replies", "starttls", "2xx"]), 0);
    assert!(s["config"].get("tls").is_none(), "{}", s["config"]);
    assert!(!text.contains("handshake"), "{text}");

    // --tls-resume: reconnects may resume (Postfix issues TLS 1.3 tickets);
    // each is still counted once, as resumed.
    let (s, text) = run_json(
        &dir,
        "resume",
        &[
            "--target",
            &target,
            "--starttls",
            "--tls-ca",
            ca,
            "--tls-resume",
            "-c",
            "1",
            "-n",
            "6",
            "--scenario",
            "handshake",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 6, "{text}");
    assert_handshakes(&s, &text, 6);
    let resumed = count(&s, &["connections", "tls_resumed"]);
    assert!((1..=5).contains(&resumed), "resumed {resumed}:\n{text}");
}

#[test]
fn implicit_tls_to_postfix_wrappermode() {
    let dir = TempDir::new("implicit");
    let Some(certs) = make_certs(&dir.0) else {
        return;
    };
    let Some(pf) = Postfix::start(&dir.0, &certs, true) else {
        return;
    };
    let ca = certs.ca.to_str().unwrap();
    let target = pf.target();
    // A bare session per message: connect, TLS, greeting, EHLO, QUIT.
    let (s, text) = run_json(
        &dir,
        "handshake",
        &[
            "--target",
            &target,
            "--tls",
            "--tls-ca",
            ca,
            "-c",
            "2",
            "-n",
            "10",
            "--scenario",
            "handshake",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 10, "{text}");
    assert_eq!(s["errors"], serde_json::json!({}), "{text}");
    assert_handshakes(&s, &text, 10);
    assert_eq!(count(&s, &["replies", "greeting", "2xx"]), 10);
    assert_eq!(count(&s, &["replies", "ehlo", "2xx"]), 10);
    assert_eq!(count(&s, &["replies", "quit", "2xx"]), 10);
    assert_eq!(count(&s, &["replies", "starttls", "2xx"]), 0);
    assert_eq!(count(&s, &["config", "msgs_per_conn"]), 1);
    assert_eq!(s["config"]["tls"], "implicit");
    assert_eq!(pf.held(), 0, "no transaction in --scenario handshake");

    // One mail per connection, the server's name given as SNI.
    let (s, text) = run_json(
        &dir,
        "mail",
        &[
            "--target",
            &target,
            "--tls",
            "--tls-ca",
            ca,
            "--tls-sni",
            "localhost",
            "-c",
            "2",
            "-n",
            "6",
            "--msgs-per-conn",
            "1",
            "--to-domain",
            "example.com",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 6, "{text}");
    assert_handshakes(&s, &text, 6);
    assert_eq!(pf.held(), 6);

    // STARTTLS against implicit TLS: the server waits for a ClientHello,
    // the client for a greeting; --timeout ends it, counted, not hung.
    let (s, text) = run_json(
        &dir,
        "mismatch",
        &[
            "--target",
            &target,
            "--starttls",
            "--tls-ca",
            ca,
            "-c",
            "1",
            "-n",
            "1",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(count(&s, &["errors", "timeout"]), 1, "{text}");
    assert_eq!(count(&s, &["messages", "error"]), 1, "{text}");
}

#[test]
fn untrusted_certificate_fails_each_connection_clearly() {
    let dir = TempDir::new("untrusted");
    let Some(certs) = make_certs(&dir.0) else {
        return;
    };
    let Some(pf) = Postfix::start(&dir.0, &certs, false) else {
        return;
    };
    let target = pf.target();
    let other = certs.other_ca.to_str().unwrap();
    let ca = certs.ca.to_str().unwrap();
    let base = [
        "--target",
        target.as_str(),
        "--starttls",
        "-c",
        "1",
        "-n",
        "3",
    ];

    // A CA that did not sign the server's certificate.
    let (s, text) = run_json(
        &dir,
        "wrong-ca",
        &[&base[..], &["--tls-ca", other]].concat(),
    );
    assert_eq!(count(&s, &["messages", "ok"]), 0, "{text}");
    assert_eq!(count(&s, &["messages", "error"]), 3, "{text}");
    assert_eq!(count(&s, &["errors", "tls"]), 3, "{text}");
    assert_eq!(count(&s, &["connections", "tls_handshakes"]), 0);
    assert_eq!(count(&s, &["latency_ms", "handshake", "count"]), 0);
    let why = s["first_errors"]["tls"].as_str().unwrap();
    assert!(
        why.contains("UnknownIssuer") && why.contains("--tls-ca") && why.contains("--tls-insecure"),
        "{why}"
    );

    // The right CA, but a name the certificate is not for.
    let (s, text) = run_json(
        &dir,
        "wrong-name",
        &[
            &base[..],
            &["--tls-ca", ca, "--tls-sni", "mx.elsewhere.example"],
        ]
        .concat(),
    );
    assert_eq!(count(&s, &["errors", "tls"]), 3, "{text}");
    let why = s["first_errors"]["tls"].as_str().unwrap();
    assert!(
        why.contains("mx.elsewhere.example") && why.contains("--tls-sni"),
        "{why}"
    );

    // --tls-insecure accepts the same server.
    let (s, text) = run_json(&dir, "insecure", &[&base[..], &["--tls-insecure"]].concat());
    assert_eq!(count(&s, &["messages", "ok"]), 3, "{text}");
    assert_eq!(s["errors"], serde_json::json!({}), "{text}");
    assert_eq!(pf.held(), 3);
}

#[test]
fn starttls_not_offered_is_a_tls_error() {
    // smtp-sink offers no STARTTLS; loadgen must not go on in plaintext.
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let dir = TempDir::new("notoffered");
    let (s, text) = run_json(
        &dir,
        "run",
        &[
            "--target",
            &sink.target(),
            "--starttls",
            "--tls-insecure",
            "-c",
            "1",
            "-n",
            "2",
        ],
    );
    assert_eq!(count(&s, &["errors", "tls"]), 2, "{text}");
    assert_eq!(count(&s, &["replies", "mail", "2xx"]), 0, "{text}");
    let why = s["first_errors"]["tls"].as_str().unwrap();
    assert!(why.contains("does not offer STARTTLS"), "{why}");
}

#[test]
fn tls_flags_are_checked_before_connecting() {
    let dir = TempDir::new("flags");
    let not_pem = dir.path("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    // Nothing listens on port 9 of 127.0.0.1 in a test; these never get that far.
    for (args, want) in [
        (vec!["--tls"], "--tls needs --tls-ca FILE"),
        (vec!["--starttls"], "--starttls needs --tls-ca FILE"),
        (vec!["--tls-insecure"], "need --starttls or --tls"),
        (
            vec!["--tls", "--tls-ca", "/nonexistent/ca.pem"],
            "cannot read it",
        ),
        (vec!["--tls", "--tls-ca", not_pem], "no CERTIFICATE block"),
        (
            vec!["--tls", "--tls-insecure", "--tls-sni", "bad name!"],
            "not a DNS name",
        ),
        (
            vec!["--scenario", "handshake", "--msgs-per-conn", "5"],
            "--scenario handshake",
        ),
    ] {
        let mut all = vec!["run", "--target", "127.0.0.1:9", "-n", "1"];
        all.extend_from_slice(&args);
        let out = run_loadgen(&all, LIMIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    let out = run_loadgen(
        &["run", "--target", "127.0.0.1:9", "--tls", "--starttls"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
}

/// tests/data/tls-smtp-server.py on a free port, stopped on drop.
struct PyServer {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl PyServer {
    /// `None` after [`skip`] without python3.
    fn start(dir: &Path, mode: &str, certs: &Certs) -> Option<PyServer> {
        use std::io::BufRead;
        let python = require_tool("python3", "python3")?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls-smtp-server.py");
        let log = dir.join(format!("{mode}.log"));
        let mut child = Command::new(python)
            .arg(script)
            .args([
                mode,
                certs.cert.to_str().unwrap(),
                certs.key.to_str().unwrap(),
            ])
            .arg(&log)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start tls-smtp-server.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("tls-smtp-server.py printed {line:?}, not a port")
        });
        Some(PyServer { child, port, log })
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How each accepted message arrived: `TLSv1.3 TLS_AES_256_GCM_SHA384`, or `plain`.
    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // its signal to stop
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn starttls_and_implicit_tls_to_python_ssl() {
    let dir = TempDir::new("python");
    let Some(certs) = make_certs(&dir.0) else {
        return;
    };
    let ca = certs.ca.to_str().unwrap();
    for (mode, flag) in [("starttls", "--starttls"), ("implicit", "--tls")] {
        let Some(py) = PyServer::start(&dir.0, mode, &certs) else {
            return;
        };
        let target = py.target();
        let (s, text) = run_json(
            &dir,
            mode,
            &[
                "--target",
                &target,
                flag,
                "--tls-ca",
                ca,
                "-c",
                "2",
                "-n",
                "10",
                "--msgs-per-conn",
                "5",
            ],
        );
        assert_eq!(count(&s, &["messages", "ok"]), 10, "{mode}: {text}");
        assert_eq!(s["errors"], serde_json::json!({}), "{mode}: {text}");
        let conns = count(&s, &["connections", "opened"]);
        assert_handshakes(&s, &text, conns);
        // The server saw every message inside TLS (1.3: rustls and OpenSSL
        // both prefer it).
        let got = py.received();
        assert_eq!(got.len(), 10, "{mode}: {got:?}");
        assert!(
            got.iter().all(|l| l.starts_with("TLSv1.3 ")),
            "{mode}: {got:?}"
        );
    }
}

#[test]
fn bytes_after_the_starttls_220_are_never_read_as_replies() {
    // The server sends `220 Ready` and `250 injected` in one write: the 250
    // must not be taken as an answer to anything. loadgen sees it behind the
    // 220 (a protocol error), or, if it arrives later, as a broken TLS
    // record (a tls error); either way no message is sent.
    let dir = TempDir::new("inject");
    let Some(certs) = make_certs(&dir.0) else {
        return;
    };
    let Some(py) = PyServer::start(&dir.0, "inject", &certs) else {
        return;
    };
    let (s, text) = run_json(
        &dir,
        "inject",
        &[
            "--target",
            &py.target(),
            "--starttls",
            "--tls-ca",
            certs.ca.to_str().unwrap(),
            "-c",
            "1",
            "-n",
            "3",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 0, "{text}");
    assert_eq!(count(&s, &["messages", "error"]), 3, "{text}");
    assert_eq!(
        count(&s, &["errors", "protocol"]) + count(&s, &["errors", "tls"]),
        3,
        "{text}"
    );
    assert_eq!(count(&s, &["replies", "mail", "2xx"]), 0, "{text}");
    assert_eq!(count(&s, &["connections", "tls_handshakes"]), 0, "{text}");
    if let Some(why) = s["first_errors"]["protocol"].as_str() {
        assert!(why.contains("after its 220"), "{why}");
    }
    assert!(py.received().is_empty());
}
