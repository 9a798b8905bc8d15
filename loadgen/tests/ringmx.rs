//! loadgen against a real ringmx server on loopback: closed loop, open loop
//! and BDAT; every queue id in the ack log must be a committed message in
//! ringmx's spool, and every committed message must be in the ack log.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{count, run_loadgen, summary, TempDir};

const LIMIT: Duration = Duration::from_secs(60);

/// The ringmx binary, built beside loadgen by `cargo test --workspace`
/// (or `cargo build -p ringmx`).
fn ringmx_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_loadgen")).with_file_name("ringmx");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p ringmx` (the workspace test run does)",
        p.display()
    );
    p
}

/// A ringmx server on a free port with its own spool; SIGKILLed on drop
/// if not stopped.
struct Ringmx {
    child: Child,
    target: String,
}

impl Ringmx {
    /// `extra`: more `ringmx serve` flags.
    fn start_with(spool: &Path, extra: &[&str]) -> Ringmx {
        let mut child = Command::new(ringmx_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "1",
                "--domain",
                "example.com",
            ])
            .args(extra)
            // One loopback client: no per-IP connection limit.
            .args(["--max-connections-per-ip", "0"])
            .args(["--log-level", "warn", "--spool"])
            .arg(spool)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringmx");
        // The "listening on" line is written whatever the log level.
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
                }
            }
        });
        let target = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ringmx did not start");
        Ringmx { child, target }
    }

    /// SIGTERM and wait: the spool is closed cleanly.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "ringmx exited with {status}");
    }
}

impl Drop for Ringmx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ids committed in the spool.
fn spool_ids(spool: &Path) -> BTreeSet<String> {
    let reader = ringmx::spool::SpoolReader::open(spool).unwrap();
    reader
        .messages()
        .unwrap()
        .map(|m| m.unwrap().id.to_string())
        .collect()
}

/// Runs loadgen against a fresh ringmx with `extra` flags; checks the ack
/// log against the spool; returns the summary.
fn run_against_ringmx(name: &str, extra: &[&str]) -> serde_json::Value {
    run_against_ringmx_with(name, &[], extra).0
}

/// [`run_against_ringmx`] with `serve` flags for the server; also returns
/// the recipients of every stored message.
fn run_against_ringmx_with(
    name: &str,
    serve: &[&str],
    extra: &[&str],
) -> (serde_json::Value, Vec<Vec<String>>) {
    let dir = TempDir::new(name);
    let spool = dir.path("spool");
    let server = Ringmx::start_with(&spool, serve);
    let (json, acks) = (dir.path("run.json"), dir.path("acks.log"));
    let mut args = vec![
        "run",
        "--target",
        &server.target,
        "--to-domain",
        "example.com",
    ];
    args.extend_from_slice(&[
        "--json",
        json.to_str().unwrap(),
        "--ack-log",
        acks.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    let out = run_loadgen(&args, LIMIT);
    out.assert_ok();
    server.stop();
    let s = summary(&json);
    assert_eq!(s["errors"], serde_json::json!({}), "{}", out.stdout);
    let acked: Vec<String> = std::fs::read_to_string(&acks)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let acked_set: BTreeSet<String> = acked.iter().cloned().collect();
    assert_eq!(
        acked.len(),
        acked_set.len(),
        "a queue id was acknowledged twice"
    );
    // One 250 with a queue id per message: the end of data, or the BDAT LAST
    // (each BDAT chunk here is the whole message).
    let final_2xx =
        count(&s, &["replies", "data-end", "2xx"]) + count(&s, &["replies", "bdat", "2xx"]);
    assert_eq!(acked_set.len() as u64, final_2xx);
    // The ack log and the spool agree exactly (no warm-up here, so every
    // committed message was measured).
    assert_eq!(acked_set, spool_ids(&spool));
    let rcpts = ringmx::spool::SpoolReader::open(&spool)
        .unwrap()
        .messages()
        .unwrap()
        .map(|m| m.unwrap().envelope.rcpts)
        .collect();
    (s, rcpts)
}

#[test]
fn closed_loop_acks_match_the_spool() {
    let s = run_against_ringmx("ringmx-closed", &["-c", "8", "--messages", "400"]);
    assert_eq!(count(&s, &["messages", "ok"]), 400);
    assert_eq!(
        count(&s, &["connections", "pipelined"]),
        8,
        "ringmx advertises PIPELINING"
    );
}

#[test]
fn chained_closed_loop_acks_match_the_spool() {
    // Each body shares its write with the next envelope (RFC 2920 §3.1):
    // ringmx must answer them in order and store exactly what it acked.
    let s = run_against_ringmx(
        "ringmx-chained",
        &["-c", "8", "--messages", "400", "--chain"],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 400);
    assert_eq!(s["config"]["chain"], true);
}

#[test]
fn open_loop_holds_its_rate_against_ringmx() {
    let s = run_against_ringmx(
        "ringmx-open",
        &["-c", "16", "--rate", "200", "--duration", "2s"],
    );
    let ok = count(&s, &["messages", "ok"]);
    // 200/s for 2 s; a loaded CI machine may fall a little behind.
    assert!((300..=401).contains(&ok), "{ok} messages at 200/s for 2 s");
}

#[test]
fn bdat_with_new_connection_per_message() {
    let s = run_against_ringmx(
        "ringmx-bdat",
        &[
            "-c",
            "4",
            "--messages",
            "100",
            "--bdat",
            "--msgs-per-conn",
            "1",
            "--size",
            "70k",
        ],
    );
    assert_eq!(count(&s, &["messages", "ok"]), 100);
    assert_eq!(count(&s, &["connections", "chunking"]), 100);
    assert_eq!(count(&s, &["replies", "quit", "2xx"]), 100);
}

/// `--rcpt-pattern` over twice the users a recipient map lists: the RCPT
/// replies split into 250 and 550, counted per reply, and only listed users
/// are stored. Pipelined with chaining, and pipelined BDAT: both build each
/// message's envelope from the pattern.
#[test]
fn rcpt_pattern_mixes_known_and_unknown_recipients() {
    let dir = TempDir::new("ringmx-rcpt-map");
    let map = dir.path("recipients");
    // Half the users, in runs of two: each message (two recipients in turn)
    // has zero, one or two known. Long runs of unknown recipients would
    // trip smtp.max_junk_commands, as a harvester should.
    let users: String = (0..200)
        .filter(|i| i % 4 < 2)
        .map(|i| format!("user{i}@example.com\n"))
        .collect();
    std::fs::write(&map, users).unwrap();
    for mode in [&["--chain"][..], &["--bdat"][..]] {
        let mut extra = vec![
            "-c",
            "4",
            "--messages",
            "200",
            "--rcpts",
            "2",
            "--rcpt-pattern",
            "user{0..199}@example.com",
        ];
        extra.extend_from_slice(mode);
        let (s, stored) = run_against_ringmx_with(
            "ringmx-rcpt",
            &["--recipient-map", map.to_str().unwrap()],
            &extra,
        );
        let split = |k: &str| count(&s, &["rcpt_replies", k]);
        assert_eq!(split("250") + split("550"), 400, "{s}");
        assert_eq!(split("other"), 0);
        assert!(split("250") > 0 && split("550") > 0, "{s}");
        assert_eq!(split("250"), count(&s, &["replies", "rcpt", "2xx"]));
        let stored_rcpts: usize = stored.iter().map(Vec::len).sum();
        assert_eq!(stored_rcpts as u64, split("250"), "{mode:?}");
        for r in stored.iter().flatten() {
            let n: u32 = r["user".len()..r.find('@').unwrap()].parse().unwrap();
            assert!(n % 4 < 2, "{r} is not in the map but was stored");
        }
    }
}

/// Issue 12's botnet scenario, small: connections from as many source
/// addresses, a tenth of them early talkers, against a greeting wait.
/// Every early talker is refused (521), every other client delivers, and
/// the acks still match the spool.
#[test]
fn early_talkers_from_many_addresses_are_refused_and_no_one_else() {
    let (s, _) = run_against_ringmx_with(
        "pregreet",
        &["--greet-wait", "500ms"],
        &[
            "-q",
            "-c",
            "50",
            "--messages",
            "200",
            "--msgs-per-conn",
            "1",
            "--source-ips",
            "127.2.0.0/16",
            "--pregreet-fraction",
            "0.1",
        ],
    );
    assert_eq!(s["connections"]["pregreet"], 20, "{s}");
    assert_eq!(s["connections"]["pregreet_rejected"], 20, "{s}");
    assert_eq!(s["messages"]["perm_fail"], 20, "{s}");
    assert_eq!(s["messages"]["ok"], 180, "{s}");
    assert_eq!(s["messages"]["temp_fail"], 0, "{s}");
}
