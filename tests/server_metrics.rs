//! `--metrics ADDR`: the Prometheus endpoint, scraped with a real parser
//! (Python's `prometheus_client`, installed by .ci/run) before and after
//! real mail from smtplib; the counters must move by exactly what was sent.
//! Also: other paths and bad requests get their HTTP error and never hang
//! the endpoint, and the Grafana dashboard uses only metrics served here.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, STEP};

/// Parses a scrape with `prometheus_client.parser` and prints every sample
/// as JSON `[name, {labels}, value]`; fails (exit 1) on a page the parser
/// rejects.
const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=20) as r:
    assert r.status == 200, r.status
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    page = r.read().decode()
out = []
for fam in text_string_to_metric_families(page):
    assert fam.documentation, fam.name
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// Sends mail with smtplib: `n` good messages of `size` bytes each, one
/// to a relay-denied recipient, one over the size limit (refused at MAIL
/// with SIZE=). Prints the body bytes of the good ones.
const SEND: &str = r#"
import smtplib, sys
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def msg(size):
    head = b"From: a@example.org\r\nTo: u@localhost\r\nSubject: metrics\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    body = (line * (size // len(line) + 1))[: size - len(head) - 2] + b"\r\n"
    return head + body
total = 0
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    for _ in range(n):
        m = msg(size)
        assert c.sendmail("a@example.org", ["u@localhost"], m) == {}
        total += len(m)
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    try:
        c.sendmail("a@example.org", ["x@elsewhere.example"], msg(size))
        raise SystemExit("relay accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["x@elsewhere.example"][0] == 550, e.recipients
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    try:
        c.sendmail("a@example.org", ["u@localhost"], msg(64 * 1024))
        raise SystemExit("oversize accepted")
    except smtplib.SMTPSenderRefused as e:
        assert e.smtp_code == 552, e
print(total)
"#;

/// Every sample of one scrape.
struct Scrape(Vec<(String, HashMap<String, String>, f64)>);

impl Scrape {
    /// The sum over every series of `name` whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn names(&self) -> BTreeSet<&str> {
        self.0.iter().map(|(n, _, _)| n.as_str()).collect()
    }
}

fn scrape(python: &Path, metrics: SocketAddr) -> Scrape {
    let url = format!("http://{metrics}/metrics");
    let out = Command::new(python)
        .args(["-c", PARSE, &url])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser output");
    Scrape(v)
}

/// python3 with `prometheus_client`, or a skip (a failure in CI).
fn python_with_parser() -> Option<PathBuf> {
    let python = common::require_tool("python3", "python3")?;
    let ok = Command::new(&python)
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip("python3 lacks prometheus_client (Debian package python3-prometheus-client)");
        return None;
    }
    Some(python)
}

/// Starts a two-shard server with metrics on a free port.
fn start(extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = Server::start_with(&["--listen", "127.0.0.1:0", "--cores", "2"], &args);
    let line = s
        .wait_log("metrics on http://", STEP)
        .unwrap_or_else(|| panic!("no metrics line:\n{}", s.logs()));
    let addr = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad metrics line: {line}"));
    (s, addr)
}

#[test]
fn counters_move_by_exactly_what_was_sent() {
    let Some(python) = python_with_parser() else {
        return;
    };
    let (s, metrics) = start(&["--max-message-size", "20000"]);
    let before = scrape(&python, metrics);
    for name in [
        "ringmx_connections_accepted_total",
        "ringmx_messages_accepted_total",
        "ringmx_spool_free_bytes",
        "ringmx_process_resident_memory_bytes",
        "ringmx_process_open_fds",
    ] {
        assert!(before.names().contains(name), "{name} not served");
    }
    assert!(before.sum("ringmx_process_resident_memory_bytes", &[]) > 0.0);
    assert!(before.sum("ringmx_process_open_fds", &[]) > 0.0);
    assert!(
        before.sum("ringmx_spool_segments", &[]) >= 2.0,
        "one per shard"
    );

    let n = 7;
    let out = Command::new(&python)
        .args([
            "-c",
            SEND,
            &s.addr.port().to_string(),
            &n.to_string(),
            "3000",
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtplib: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

    // Counts added as a session ends (recipients, open sessions) may trail
    // the client's QUIT by a moment: scrape until every session has ended.
    let until = Instant::now() + STEP;
    let after = loop {
        let a = scrape(&python, metrics);
        if a.sum("ringmx_connections_open", &[]) == 0.0
            && a.sum("ringmx_connections_accepted_total", &[]) == 3.0
        {
            break a;
        }
        assert!(
            Instant::now() < until,
            "sessions never ended:\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let n = n as f64;
    assert_eq!(delta("ringmx_messages_accepted_total", &[]), n);
    assert_eq!(delta("ringmx_message_bytes_total", &[]), bytes);
    let rejected = |reason| delta("ringmx_messages_rejected_total", &[("reason", reason)]);
    assert_eq!(rejected("relay"), 1.0);
    assert_eq!(rejected("size"), 1.0);
    assert_eq!(rejected("syntax") + rejected("spool_full"), 0.0);
    assert_eq!(delta("ringmx_messages_rejected_total", &[]), 2.0);
    let cmd = |verb, class| delta("ringmx_commands_total", &[("verb", verb), ("class", class)]);
    assert_eq!(cmd("DATA", "3xx"), n);
    assert_eq!(cmd("MAIL", "2xx"), n + 1.0, "the relay-denied one too");
    assert_eq!(cmd("MAIL", "5xx"), 1.0, "the oversize one");
    assert_eq!(cmd("RCPT", "2xx"), n);
    assert_eq!(cmd("RCPT", "5xx"), 1.0);
    assert_eq!(cmd("EHLO", "2xx"), 3.0);
    assert_eq!(cmd("QUIT", "2xx"), 3.0);
    let outcome = |o| delta("ringmx_recipients_total", &[("outcome", o)]);
    assert_eq!((outcome("accepted"), outcome("relay_denied")), (n, 1.0));
    assert_eq!(
        delta("ringmx_end_of_data_reply_seconds_count", &[]),
        n,
        "one per committed message"
    );
    assert_eq!(
        delta("ringmx_end_of_data_reply_seconds_bucket", &[("le", "+Inf")]),
        n
    );
    // Group commit: every message rode on some group commit, made durable
    // by an fdatasync or (`spool.direct_io`, the default) an O_DSYNC write.
    let commits = delta("ringmx_spool_commits_per_fdatasync_count", &[]);
    assert!(
        commits >= 1.0 && commits <= n,
        "{commits} group commits for {n} messages"
    );
    let syncs = delta("ringmx_spool_fdatasync_seconds_count", &[]);
    assert!(
        syncs <= commits,
        "{syncs} fdatasyncs, {commits} group commits"
    );
    assert_eq!(delta("ringmx_spool_commits_per_fdatasync_sum", &[]), n);
    // The segment files' size on disk, zeros written ahead included
    // (`spool.direct_io`): it moves in steps, but covers the bodies.
    assert!(
        after.sum("ringmx_spool_bytes", &[]) > bytes,
        "the spool holds the bodies"
    );
    assert_eq!(after.sum("ringmx_connections_rejected_total", &[]), 0.0);
}

/// Sends `req` raw and returns the whole answer (the server closes).
fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.write_all(req).unwrap();
    let mut out = Vec::new();
    // A reset after the answer is fine: what was read counts.
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn other_paths_and_bad_requests_get_errors_and_never_hang_the_endpoint() {
    let (mut s, metrics) = start(&[]);
    // A silent client and one that stops mid-line hold connections open;
    // they must not delay the requests below.
    let _silent = TcpStream::connect(metrics).unwrap();
    let mut partial = TcpStream::connect(metrics).unwrap();
    partial.write_all(b"GET /metr").unwrap();
    let cases: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404 "),
        (b"GET /metrics/x HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405 ",
        ),
        (b"EHLO example.org\r\n\r\n", "HTTP/1.1 400 "),
        (b"\x00\xff\xfe garbage \x01\r\n\r\n", "HTTP/1.1 400 "),
        (b"GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 200 "),
    ];
    for (req, want) in cases {
        let got = raw(metrics, req);
        assert!(
            got.starts_with(want),
            "{:?}: {got:?}",
            String::from_utf8_lossy(req)
        );
    }
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Junk: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let got = raw(metrics, &long);
    assert!(got.starts_with("HTTP/1.1 431 "), "{got:?}");
    let head = raw(metrics, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
        "{head:?}"
    );
    // A client that closes mid-request costs nothing either.
    drop(partial);
    assert!(raw(metrics, b"GET /metrics HTTP/1.0\r\n\r\n").contains("ringmx_commands_total"));
    // SMTP still works, and the server stops cleanly with clients open.
    let mut c = s.client();
    c.ehlo();
    assert!(s.stop().success(), "{}", s.logs());
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

#[test]
fn metrics_are_off_by_default() {
    let s = Server::start(&[]);
    assert!(!s.logs().contains("metrics on"), "{}", s.logs());
}

/// Every `expr` in packaging/grafana/ringmx.json names a metric a real
/// server serves.
#[test]
fn the_grafana_dashboard_uses_only_served_metrics() {
    let Some(python) = python_with_parser() else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/ringmx.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 8, "only {} exprs", exprs.len());

    let (_s, metrics) = start(&[]);
    let served = scrape(&python, metrics);
    let names = served.names();
    for e in &exprs {
        let used = metric_names(e);
        assert!(!used.is_empty(), "expr names no ringmx metric: {e}");
        for m in used {
            assert!(names.contains(m.as_str()), "{m} (in {e}) is not served");
        }
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `ringmx_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ringmx_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // Not the tail of a longer identifier (or a label like `x_ringmx_`).
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Connections turned away at the edge count by reason: one over the
/// per-client limit (421) and one that talked before the greeting (521).
#[test]
fn connections_turned_away_at_the_edge_are_counted_by_reason() {
    let Some(python) = python_with_parser() else {
        return;
    };
    let (s, metrics) = start(&["--max-connections-per-ip", "1", "--greet-wait", "300ms"]);
    let rejected =
        |sc: &Scrape, why: &str| sc.sum("ringmx_connections_rejected_total", &[("reason", why)]);
    let before = scrape(&python, metrics);
    // A patient client holds the one place of 127.0.0.1.
    let mut first = common::Client::connect(s.addr);
    first.expect("220 ");
    // A second from the same address: over the limit, wherever it landed.
    let mut second = common::Client::connect(s.addr);
    second.expect("421 4.7.0");
    drop(first);
    // A talker before the greeting, from an address that has not waited
    // (127.0.0.1 passed the wait above and is cached).
    let mut talker = common::Client::connect_from(s.addr, [127, 0, 0, 2].into());
    talker.send("EHLO early.example\r\n");
    talker.expect("521 ");
    drop((second, talker));
    // Counted once the server has closed them (after its lingering close).
    let moved = |why: &str| {
        let deadline = Instant::now() + STEP;
        loop {
            let d = rejected(&scrape(&python, metrics), why) - rejected(&before, why);
            if d >= 1.0 || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(moved("client_limit"), 1.0);
    assert_eq!(moved("pregreet"), 1.0);
}

/// A STARTTLS session counts one TLS 1.3 handshake.
#[test]
fn tls_handshakes_are_counted_by_version() {
    let Some(python) = python_with_parser() else {
        return;
    };
    if common::require_tool("openssl", "openssl").is_none() {
        return;
    }
    let dir = common::TempDir::new("metrics-tls");
    let (pem, key) = common::certs::make_cert(dir.path(), "mx", &["mx.test"]);
    let (s, metrics) = start(&[
        "--tls-cert",
        pem.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let count =
        |v: &str| scrape(&python, metrics).sum("ringmx_tls_handshakes_total", &[("version", v)]);
    let before = count("TLSv1.3");
    let send = format!(
        "import smtplib, ssl\nctx = ssl.create_default_context(cafile={:?})\n\
         with smtplib.SMTP('127.0.0.1', {}, timeout=20) as c:\n    c.starttls(context=ctx)\n    c.noop()\n",
        pem.to_str().unwrap(),
        s.addr.port()
    );
    // smtplib checks the name against the certificate: mx.test.
    let send = send.replace(
        "starttls(context=ctx)",
        "_host = 'mx.test'; c.starttls(context=ctx)",
    );
    let out = Command::new(&python).args(["-c", &send]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count("TLSv1.3") - before, 1.0);
}
