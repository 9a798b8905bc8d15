//! The outlet end to end (issue 14, "Tests and measurements"), with real
//! processes only: `loadgen` sends 1 KiB messages over many connections to
//! `ringmx serve --ship ...`, whose supervised `ringmx ship --follow`
//! children ship the spool to a 3-node `nats-server` JetStream cluster,
//! Postfix's `smtp-sink` speaking LMTP, and the Python webhook receiver of
//! `tests/fixtures`. What loadgen's `--ack-log` says was acknowledged is
//! checked against what each destination holds, counting duplicates.
//!
//! Spools and dumps live on /dev/shm when there is one: fsync there costs
//! nothing, and what is tested is order and counts, not power loss (the
//! spool's own tests do that). A SIGKILL loses nothing on tmpfs either: the
//! files stay, only the process goes.
//!
//! Nothing here is timed: every wait is "until it happened", with a limit
//! only to fail instead of hanging (no progress for [`STALL`]).

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, Server, TempDir, STEP};

/// How long a destination may make no progress before the test fails.
const STALL: Duration = Duration::from_secs(90);

/// Shards of every server here: checkpoints per shard are part of the test.
const SHARDS: usize = 2;

/// The smtp/lmtp and webhook sinks' default batch (`Sink::max_batch`): what
/// one consumer thread may have in flight, so what a kill may ship twice.
const BATCH: usize = 64;

// ---- loadgen ----------------------------------------------------------------

/// The loadgen binary, built beside ringmx by the workspace's test run.
fn loadgen_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ringmx")).with_file_name("loadgen");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p loadgen` (the workspace test run does)",
        p.display()
    );
    p
}

/// A loadgen run in the background; killed on drop.
struct Load {
    child: Child,
    acks: PathBuf,
}

impl Load {
    /// `loadgen run` against `addr`: `n` messages of 1 KiB to
    /// userN@example.com over `conns` connections, closed loop unless
    /// `rate` is given.
    fn start(addr: SocketAddr, n: usize, conns: usize, rate: Option<u32>, acks: &Path) -> Load {
        let mut cmd = Command::new(loadgen_bin());
        cmd.args(["run", "--quiet", "--target"])
            .arg(addr.to_string())
            .args(["--connections", &conns.to_string()])
            .args(["--messages", &n.to_string()])
            .args(["--size", "1k", "--to-domain", "example.com"])
            .arg("--ack-log")
            .arg(acks);
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loadgen");
        Load {
            child,
            acks: acks.to_owned(),
        }
    }

    /// Acknowledged so far (loadgen writes its log once a second).
    fn acked(&self) -> usize {
        read_acks(&self.acks).len()
    }

    /// Waits until `n` are acknowledged (or loadgen ended).
    fn wait_acked(&mut self, n: usize) {
        let mut last = (0, Instant::now());
        loop {
            let a = self.acked();
            if a >= n || self.child.try_wait().unwrap().is_some() {
                return;
            }
            if a > last.0 {
                last = (a, Instant::now());
            }
            assert!(last.1.elapsed() < STALL, "loadgen stalled at {a} acks");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for loadgen to end; returns its summary. Panics if it failed.
    fn finish(mut self) -> String {
        let mut out = String::new();
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "loadgen: {status}\n{out}{err}");
        out
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Queue ids in an ack log (a reply without "queued as" is logged whole:
/// not an id, left out).
fn read_acks(p: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.contains(' '))
        .map(str::to_owned)
        .collect()
}

// ---- the server and its ship children ---------------------------------------

/// `ringmx serve` on `port` with its spool at `spool` and `extra` flags.
/// A port that a killed process still held a moment ago is tried again.
fn serve(port: u16, spool: &Path, extra: &[&str]) -> Server {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--spool",
        spool.to_str().unwrap(),
        "--domain",
        "example.com",
        "--node-id",
        "mx1.test",
    ];
    args.extend_from_slice(extra);
    let until = Instant::now() + STEP;
    loop {
        match Server::try_start(&["--listen", &listen, "--cores", "2"], &args) {
            Ok(s) => return s,
            Err((_, logs)) if logs.contains("already in use") && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((status, logs)) => {
                let ss = Command::new("ss").args(["-tanp"]).output();
                let ss = ss.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                let held: Vec<String> = ss
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(&format!(":{port} ")))
                    .map(str::to_owned)
                    .collect();
                panic!("server did not start ({status:?}):\n{logs}\nport {port}: {held:#?}")
            }
        }
    }
}

/// The pid of the `nth` (1-based) `ringmx ship` child the server started
/// for consumer `name`, from its log.
fn child_pid(srv: &Server, name: &str, nth: usize) -> i32 {
    let line = srv
        .wait_log_nth(
            &format!("ship {name}: started `ringmx ship` (pid "),
            nth,
            STEP,
        )
        .unwrap_or_else(|| panic!("ship child {nth} of {name} never started:\n{}", srv.logs()));
    line.rsplit("(pid ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap()
}

/// SIGKILL to a process this test started (directly or through the server).
fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a pid this test's server started and logged.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// SIGKILLs the server and its ship children, as a service manager that
/// kills the whole unit does. (The children do not die with the server by
/// themselves: tests/ship.rs, `a_ship_child_does_not_outlive_a_killed_server`.)
fn kill_all(srv: &mut Server, children: &[i32]) {
    srv.signal(libc::SIGKILL);
    for &pid in children {
        sigkill(pid);
    }
    assert!(srv.wait_exit(STEP).is_some(), "the server did not die");
}

/// Waits until `done()` says yes; fails if `progress()` stays the same for
/// [`STALL`].
fn wait_done(what: &str, mut progress: impl FnMut() -> usize, mut done: impl FnMut() -> bool) {
    let mut last = (usize::MAX, Instant::now());
    loop {
        if done() {
            return;
        }
        let p = progress();
        if p != last.0 {
            last = (p, Instant::now());
        }
        assert!(
            last.1.elapsed() < STALL,
            "{what}: no progress for {STALL:?} (at {p})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---- smtp-sink as the LMTP next hop -----------------------------------------

/// Postfix's `smtp-sink -L` (LMTP) on a free port, dumping each transaction
/// to a file; killed on drop.
struct LmtpSink {
    child: Child,
    addr: SocketAddr,
    dumps: TempDir,
}

impl LmtpSink {
    fn start() -> Option<LmtpSink> {
        Self::start_on(None)
    }

    /// On `port` when given (a next hop that comes back where it was),
    /// else on a free one.
    fn start_on(port: Option<u16>) -> Option<LmtpSink> {
        let bin = require_tool("smtp-sink", "postfix")?;
        let dumps = TempDir::in_shm("lmtp-dumps");
        // smtp-sink drops to nobody when run as root; let it write there.
        std::fs::set_permissions(
            dumps.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        for _ in 0..5 {
            let port = port.unwrap_or_else(nats::free_port);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut cmd = Command::new(&bin);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "nobody"]);
            }
            let mut child = cmd
                .arg("-L")
                .arg("-d")
                .arg(dumps.path().join("m."))
                .arg(format!("127.0.0.1:{port}"))
                .arg("256")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start smtp-sink");
            if wait_listening(addr, &mut child) {
                return Some(LmtpSink { child, addr, dumps });
            }
        }
        panic!("smtp-sink did not start");
    }

    fn count(&self) -> usize {
        std::fs::read_dir(self.dumps.path()).map_or(0, Iterator::count)
    }

    /// Queue id (from ringmx's Received: field) -> how many dumps have it.
    fn ids(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in std::fs::read_dir(self.dumps.path()).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let id = received_id(&text)
                .unwrap_or_else(|| panic!("a dump without ringmx's Received: field:\n{text}"));
            *m.entry(id).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for LmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The queue id in ringmx's `Received: ... (ringmx) with ESMTP id QID`.
fn received_id(text: &str) -> Option<String> {
    let at = text.find("(ringmx) with ")?;
    let rest = &text[at..];
    let id = rest.split(" id ").nth(1)?;
    Some(
        id.split(|c: char| c.is_whitespace() || c == ';')
            .next()?
            .to_owned(),
    )
}

fn wait_listening(addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Ids seen more than once, and how many extra copies in all.
fn dups(counts: &BTreeMap<String, usize>) -> (usize, usize) {
    let twice = counts.values().filter(|&&n| n > 1).count();
    let extra = counts.values().map(|&n| n - 1).sum();
    (twice, extra)
}

// ---- 1 and 2: JetStream and LMTP across kills --------------------------------

/// 20,000 messages (1 KiB, 16 connections) to a server shipping to a
/// 3-node R3 JetStream stream and to an LMTP next hop. Mid-run: the server
/// and both ship children are SIGKILLed and the server restarted on the
/// same spool and port (loadgen keeps going, reconnecting); later both
/// children of the new server are SIGKILLed (it restarts them); later a
/// NATS node is SIGKILLed. Every acknowledged id arrives at both; JetStream
/// holds none twice (its duplicate window covers the retries); the LMTP
/// hop may hold some twice, at most one batch per shard per kill.
#[test]
fn jetstream_and_lmtp_get_every_acked_message_across_kills() {
    let Some(bin) = nats::nats_bin() else { return };
    let Some(lmtp) = LmtpSink::start() else {
        return;
    };
    let total: usize = env_num("RINGMX_E2E_MESSAGES", 20_000);
    let mut nodes = nats::cluster(&bin);
    let rt = nats::runtime();
    // A node that is never killed, for the test's own reads.
    let js = rt.block_on(nats::js(&nodes[2].url()));
    rt.block_on(nats::wait_jetstream(&js));
    let hosts: Vec<String> = nodes.iter().map(nats::Nats::url).collect();
    let nats_to = format!(
        "nats=nats://{}/mail.in.{{rcpt_domain}}?stream=E2E&replicas=3",
        hosts.join(",")
    );
    let lmtp_to = format!("lmtp=lmtp://{}", lmtp.addr);
    let dir = TempDir::in_shm("nats-lmtp");
    let spool = dir.path().join("spool");
    let acks = dir.path().join("acks");
    let port = nats::free_port();
    let ship = ["--ship", nats_to.as_str(), "--ship", lmtp_to.as_str()];

    let mut srv = serve(port, &spool, &ship);
    // Paced, so that the kills below land mid-run (loadgen logs its acks
    // once a second; unpaced, 20,000 may be done within one).
    let rate = env_num("RINGMX_E2E_RATE", 1000) as u32;
    let mut load = Load::start(srv.addr, total, 16, Some(rate), &acks);

    // 1. The server and both children, SIGKILLed together; a new server on
    // the same spool and port.
    load.wait_acked(total / 5);
    let children = [child_pid(&srv, "nats", 1), child_pid(&srv, "lmtp", 1)];
    kill_all(&mut srv, &children);
    let at_kill = load.acked();
    let mut srv = serve(port, &spool, &ship);

    // 2. Both children of the new server; it restarts them.
    load.wait_acked(total * 2 / 5);
    sigkill(child_pid(&srv, "nats", 1));
    sigkill(child_pid(&srv, "lmtp", 1));
    child_pid(&srv, "nats", 2);
    child_pid(&srv, "lmtp", 2);
    let at_child_kill = load.acked();

    // 3. A NATS node (the first the children's URL names).
    load.wait_acked(total * 3 / 5);
    nodes[0].kill();
    let at_node_kill = load.acked();

    let summary = load.finish();
    let acked = read_acks(&acks);
    eprintln!(
        "acked {} of {total}; kills at {at_kill} (server + children), {at_child_kill} \
         (children), {at_node_kill} (NATS node)\nloadgen: {summary}",
        acked.len()
    );
    assert!(
        at_kill < acked.len() && at_child_kill < acked.len() && at_node_kill < acked.len(),
        "every kill landed mid-run"
    );
    assert!(
        acked.len() >= total / 2,
        "most of the load was acknowledged"
    );

    // Until each destination has every acked id (or stops moving).
    let t0 = Instant::now();
    wait_done(
        "JetStream",
        || rt.block_on(nats::stream_count(&js, "E2E")).unwrap_or(0) as usize,
        || rt.block_on(nats::stream_count(&js, "E2E")).unwrap_or(0) as usize >= acked.len(),
    );
    wait_done(
        "LMTP",
        || lmtp.count(),
        || {
            lmtp.count() >= acked.len() && {
                let ids = lmtp.ids();
                acked.iter().all(|id| ids.contains_key(id))
            }
        },
    );
    eprintln!(
        "all arrived {:.1} s after loadgen ended",
        t0.elapsed().as_secs_f64()
    );
    srv.stop();
    for l in srv.logs().lines().filter(|l| l.contains("ship ")) {
        eprintln!("{l}");
    }

    let got = rt.block_on(nats::read_stream(&js, "E2E"));
    let mut in_js: BTreeMap<String, usize> = BTreeMap::new();
    for g in &got {
        assert_eq!(g.subject, "mail.in.example.com");
        // One publish per recipient domain, keyed node.queue-id:domain.
        assert_eq!(
            g.one("Nats-Msg-Id"),
            format!("mx1.test.{}:example.com", g.one("Ringmx-Queue-Id"))
        );
        *in_js
            .entry(g.one("Ringmx-Queue-Id").to_owned())
            .or_insert(0) += 1;
    }
    let in_lmtp = lmtp.ids();
    let (js_twice, js_extra) = dups(&in_js);
    let (lmtp_twice, lmtp_extra) = dups(&in_lmtp);
    eprintln!(
        "JetStream: {} messages, {} ids, {js_twice} ids twice or more ({js_extra} extra copies)\n\
         LMTP: {} dumps, {} ids, {lmtp_twice} ids twice or more ({lmtp_extra} extra copies)\n\
         stored but not acked (acks lost to the kill): JetStream {}, LMTP {}",
        got.len(),
        in_js.len(),
        lmtp.count(),
        in_lmtp.len(),
        in_js.keys().filter(|k| !acked.contains(*k)).count(),
        in_lmtp.keys().filter(|k| !acked.contains(*k)).count(),
    );
    let lost_js: Vec<&String> = acked.iter().filter(|id| !in_js.contains_key(*id)).collect();
    let lost_lmtp: Vec<&String> = acked
        .iter()
        .filter(|id| !in_lmtp.contains_key(*id))
        .collect();
    assert!(lost_js.is_empty(), "acked, not in JetStream: {lost_js:?}");
    assert!(
        lost_lmtp.is_empty(),
        "acked, not at the LMTP hop: {lost_lmtp:?}"
    );
    assert_eq!(
        js_extra, 0,
        "JetStream's duplicate window covers every retry"
    );
    // Two kills of the LMTP child, each with at most a batch per shard in
    // flight that was delivered but not checkpointed.
    assert!(
        lmtp_extra <= 2 * SHARDS * BATCH,
        "{lmtp_extra} duplicates at the LMTP hop: more than two kills' batches"
    );
}

fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: want a whole number")),
        Err(_) => default,
    }
}

// ---- 3: the webhook receiver goes away and comes back ------------------------

/// tests/fixtures/webhook_receiver.py on `port` (0: any), answering 200 to
/// everything, appending one JSON line per request to `record`.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(python: &Path, port: u16, record: &Path) -> Receiver {
        use std::io::BufRead;
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhook_receiver.py");
        let until = Instant::now() + STEP;
        loop {
            let mut child = Command::new(python)
                .arg(&script)
                .arg(port.to_string())
                .arg(record)
                .arg("")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the webhook receiver");
            let mut line = String::new();
            let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if let Some(p) = line.trim().strip_prefix("port ") {
                return Receiver {
                    child,
                    port: p.parse().unwrap(),
                };
            }
            // The port a killed receiver held may take a moment to free.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < until,
                "the webhook receiver did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The receiver's record: per queue id, requests answered 200 and the
/// Idempotency-Keys they carried. Panics on a request it could not parse.
fn webhook_record(record: &Path) -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut m: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for line in std::fs::read_to_string(record).unwrap_or_default().lines() {
        // A receiver killed mid-write leaves a cut line: not answered.
        let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        assert!(rec.get("error").is_none(), "malformed request: {line}");
        if rec["status"] != 200 {
            continue;
        }
        let id = rec["envelope"]["queue_id"].as_str().unwrap().to_owned();
        let e = m.entry(id).or_default();
        e.0 += 1;
        e.1.insert(rec["key"].as_str().unwrap().to_owned());
    }
    m
}

/// Loadgen sends 3,000 messages (1 KiB, 16 connections, paced) to a server
/// shipping to the webhook receiver; a third of the way in the receiver is
/// SIGKILLed, stays down for `RINGMX_E2E_WEBHOOK_OUTAGE_S` seconds
/// (default 15; the minute is `=60`) and comes back on the same
/// port. Every acknowledged id is POSTed and answered 200; one answered
/// twice only where the receiver took it and died before its answer, at
/// most one batch per shard, and always with the same Idempotency-Key.
#[test]
fn webhook_outage_loses_nothing() {
    let Some(python) = require_tool("python3", "python3") else {
        return;
    };
    let total = env_num("RINGMX_E2E_WEBHOOK_MESSAGES", 3000);
    let outage = Duration::from_secs(env_num("RINGMX_E2E_WEBHOOK_OUTAGE_S", 15) as u64);
    let dir = TempDir::in_shm("webhook");
    let record = dir.path().join("record.jsonl");
    let mut recv = Receiver::start(&python, 0, &record);
    let hook = format!("hook=http://127.0.0.1:{}/hook", recv.port);
    let spool = dir.path().join("spool");
    let acks = dir.path().join("acks");
    let mut srv = serve(nats::free_port(), &spool, &["--ship", &hook]);
    let mut load = Load::start(srv.addr, total, 16, Some(300), &acks);

    load.wait_acked(total / 3);
    let before = webhook_record(&record).len();
    recv.kill();
    let at_kill = load.acked();
    eprintln!("receiver down after {before} delivered, {at_kill} acked; down for {outage:?}");
    std::thread::sleep(outage);
    let port = recv.port;
    let _recv = Receiver::start(&python, port, &record);

    let summary = load.finish();
    let acked = read_acks(&acks);
    eprintln!("acked {} of {total}\nloadgen: {summary}", acked.len());
    assert!(at_kill < acked.len(), "the outage began mid-run");
    wait_done(
        "webhook",
        || webhook_record(&record).len(),
        || {
            let got = webhook_record(&record);
            acked.iter().all(|id| got.contains_key(id))
        },
    );
    srv.stop();
    for l in srv.logs().lines().filter(|l| l.contains("ship hook")) {
        eprintln!("{l}");
    }

    let got = webhook_record(&record);
    let twice: Vec<(&String, usize)> = got
        .iter()
        .filter(|(_, (n, _))| *n > 1)
        .map(|(id, (n, _))| (id, *n))
        .collect();
    let extra: usize = twice.iter().map(|(_, n)| n - 1).sum();
    eprintln!(
        "webhook: {} ids answered 200, {} twice or more ({extra} extra requests)",
        got.len(),
        twice.len()
    );
    for (id, (_, keys)) in &got {
        assert_eq!(keys.len(), 1, "{id}: one Idempotency-Key, got {keys:?}");
        assert_eq!(
            keys.iter().next().unwrap(),
            &format!("mx1.test.{id}"),
            "the key is node.queue-id"
        );
    }
    assert!(
        extra <= SHARDS * BATCH,
        "{extra} requests answered twice: more than a batch per shard in flight at the kill"
    );
}

// ---- 4: the spool stays bounded while shipping --------------------------------

/// Bytes of the spool's segments (what reclaiming frees).
fn segment_bytes(spool: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut n = 0;
    for shard in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.file_name().to_string_lossy().ends_with(".seg") {
                // A segment deleted between listing and stat counts 0.
                bytes += f.metadata().map_or(0, |m| m.len());
                n += 1;
            }
        }
    }
    (bytes, n)
}

/// Runs `f` while sampling the spool's segment bytes every `every_ms`;
/// the most seen, how many samples, and what `f` returned.
fn max_segment_bytes_during<R>(
    spool: &Path,
    every_ms: u64,
    f: impl FnOnce() -> R,
) -> (u64, usize, R) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut max, mut samples) = (0u64, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(segment_bytes(spool).0);
                samples += 1;
                std::thread::sleep(Duration::from_millis(every_ms));
            }
            (max, samples)
        });
        let r = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (max, samples) = sampler.join().unwrap();
        (max, samples, r)
    })
}

/// Small segments (128 KiB) and a Maildir consumer: a sustained load (paced
/// at 500 msgs/s, well within what a debug build ships while other tests
/// share the CPUs) that writes several times the bound keeps the spool's
/// segments within a few segments per shard all along (sampled every
/// 20 ms), and once all is shipped the spool is down to about two segments
/// per shard (the live one and the newest sealed one, which reclaiming
/// keeps: SPOOL-FORMAT.md).
#[test]
fn shipping_keeps_the_spool_bounded() {
    const SEGMENT: u64 = 128 * 1024;
    let total = env_num("RINGMX_E2E_SPACE_MESSAGES", 12_000);
    let dir = TempDir::in_shm("space");
    let spool = dir.path().join("spool");
    let out = dir.path().join("maildir");
    let acks = dir.path().join("acks");
    let to = format!("mbox=maildir:{}", out.display());
    let mut srv = serve(
        nats::free_port(),
        &spool,
        &[
            "--ship",
            &to,
            "--segment-size",
            "128KiB",
            "--reclaim-interval",
            "250ms",
        ],
    );
    let (max, samples, load_summary) = max_segment_bytes_during(&spool, 20, || {
        Load::start(srv.addr, total, 16, Some(500), &acks).finish()
    });
    let acked = read_acks(&acks);
    let written = acked.len() as u64 * 1024;
    // Each shard: its live segment, the one just sealed, and a few more
    // sealed between reclaim passes or not yet passed by the consumer (a
    // second of ingest is about 5 segments in all).
    let bound = 8 * SHARDS as u64 * SEGMENT;
    eprintln!(
        "acked {}, about {written} bytes written; spool segments at most {max} bytes \
         over {samples} samples (bound {bound})\nloadgen: {load_summary}",
        acked.len()
    );
    assert!(
        written > 4 * bound,
        "the load wrote several times the bound"
    );
    assert!(
        max <= bound,
        "the spool grew to {max} bytes (bound {bound})"
    );

    // Once shipped: two segments per shard, the live one and the newest
    // sealed one, which reclaiming keeps (SPOOL-FORMAT.md), with a little
    // slack for a shard that sealed one since the latest pass.
    let end = 2 * SHARDS as u64 * SEGMENT + SEGMENT / 2;
    wait_done(
        "reclaiming",
        || segment_bytes(&spool).0 as usize,
        || segment_bytes(&spool).0 <= end,
    );
    let (bytes, n) = segment_bytes(&spool);
    eprintln!("after shipping: {n} segments, {bytes} bytes");
    srv.stop();
    let shipped = std::fs::read_dir(out.join("new")).unwrap().count();
    assert!(
        shipped >= acked.len(),
        "{shipped} shipped of {} acked",
        acked.len()
    );
}

// ---- 5: a next hop that is down: the high mark bounds the spool -------------

/// The LMTP next hop is down (nothing listens on its port) while loadgen
/// sends at full speed (closed loop, 16 connections): the consumer ships
/// nothing, so only `--lag-high` keeps the spool from growing with the run.
/// Past the mark MAIL gets `452 4.3.1` and the spool stays within the mark
/// plus what arrives between two reclaim passes, although the load offers
/// many times that. Everything acknowledged is kept; once the next hop is
/// back, all of it arrives there, the lag falls under the low mark, and
/// mail is accepted again.
#[test]
fn the_high_mark_bounds_the_spool_at_full_speed_while_the_next_hop_is_down() {
    const HIGH: u64 = 2 << 20;
    let offered = env_num("RINGMX_E2E_HIGH_MARK_MESSAGES", 20_000);
    let Some(bin) = require_tool("smtp-sink", "postfix") else {
        return;
    };
    drop(bin);
    let dir = TempDir::in_shm("high-mark");
    let spool = dir.path().join("spool");
    let acks = dir.path().join("acks");
    let hop = nats::free_port();
    let to = format!("hop=lmtp://127.0.0.1:{hop}");
    let mut srv = serve(
        nats::free_port(),
        &spool,
        &[
            "--ship",
            &to,
            "--segment-size",
            "128KiB",
            "--lag-high",
            "2MiB",
            "--lag-low",
            "1MiB",
            "--reclaim-interval",
            "50ms",
        ],
    );
    let (max, _, summary) = max_segment_bytes_during(&spool, 10, || {
        Load::start(srv.addr, offered, 16, None, &acks).finish()
    });
    let acked = read_acks(&acks);
    eprintln!(
        "offered {offered}, acked {}; spool segments at most {max} bytes (high mark {HIGH})\n\
         loadgen: {summary}",
        acked.len()
    );
    let offered_bytes = offered as u64 * 1024;
    assert!(
        offered_bytes > 5 * HIGH,
        "the load offers several times the mark"
    );
    assert!(acked.len() < offered, "some mail was refused: {summary}");
    assert!(
        srv.logs().contains("452 4.3.1"),
        "refused at MAIL with 452 4.3.1:\n{}",
        srv.logs()
    );
    // What was acknowledged is all still here: nothing was shipped.
    assert!(
        max >= acked.len() as u64 * 1024,
        "{max} bytes hold {} acks",
        acked.len()
    );
    // The mark plus what arrives between two reclaim passes (50 ms) and
    // the segments being written: well under what was offered.
    let bound = HIGH + 2 * SHARDS as u64 * 128 * 1024 + (1 << 20);
    assert!(
        max <= bound,
        "the spool grew to {max} bytes (bound {bound})"
    );

    // The next hop comes back where it was: everything acknowledged
    // arrives there, and mail is taken again.
    let sink = LmtpSink::start_on(Some(hop)).expect("smtp-sink was found above");
    wait_done(
        "shipping to the returned next hop",
        || sink.count(),
        || sink.count() >= acked.len(),
    );
    let got = sink.ids();
    let missing: Vec<&String> = acked.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acked but not shipped: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let acks2 = dir.path().join("acks2");
    wait_done(
        "accepting again under the low mark",
        || segment_bytes(&spool).0 as usize,
        || {
            let mut c = TcpStream::connect(srv.addr).unwrap();
            smtp_mail_accepted(&mut c)
        },
    );
    let summary = Load::start(srv.addr, 200, 4, None, &acks2).finish();
    assert_eq!(read_acks(&acks2).len(), 200, "all taken again: {summary}");
    srv.stop();
}

/// Says EHLO and MAIL on `c`; whether MAIL got `250`.
fn smtp_mail_accepted(c: &mut TcpStream) -> bool {
    use std::io::{BufRead, BufReader, Write};
    c.set_read_timeout(Some(STEP)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    let mut reply = |r: &mut BufReader<TcpStream>| -> String {
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.clone();
            }
        }
    };
    reply(&mut r);
    c.write_all(b"EHLO probe.example\r\n").unwrap();
    reply(&mut r);
    c.write_all(b"MAIL FROM:<probe@example.org>\r\n").unwrap();
    let ok = reply(&mut r).starts_with("250 ");
    let _ = c.write_all(b"QUIT\r\n");
    ok
}
