//! `ringmx ship`, end to end: the real server takes mail from Python's
//! smtplib, the real `ringmx ship` binary ships the spool into a Maildir,
//! and the test reads the Maildir back against the spool.
//!
//! Spools and Maildirs live on /dev/shm when there is one: the sink and the
//! checkpoints fsync per batch, which costs ~10 ms a time on a plain disk
//! here and nothing on tmpfs; what is tested is order and counts, not
//! durability against power loss (the spool's own tests do that).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{require_tool, ringmx, Server, TempDir, STEP};

/// A server with its spool in `dir/spool`.
fn server(dir: &TempDir, cores: &str) -> Server {
    let spool = dir.path().join("spool");
    Server::start_with(
        &["--listen", "127.0.0.1:0", "--cores", cores],
        &["--spool", spool.to_str().unwrap()],
    )
}

/// Sends `n` messages with Python's smtplib over `conns` connections;
/// returns the queue ids from the `250` replies. `None`: no python3.
const SENDER: &str = r#"
import smtplib, sys, threading
host, port, n, conns, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ids, lock = [], threading.Lock()
def work(t):
    s = smtplib.SMTP(host, port, timeout=60)
    s.ehlo("client.example")
    for i in range(t, n, conns):
        body = (f"Subject: {tag} {i}\r\nMessage-ID: <{tag}.{i}@example.org>\r\n\r\n"
                f"line one of {i}\r\n.a line that starts with a dot\r\n" + "x" * (i * 37 % 900) + "\r\n")
        s.mail("sender@example.org")
        s.rcpt(f"rcpt{i}@localhost")
        code, resp = s.data(body.encode())
        if code != 250:
            sys.exit(f"DATA {i}: {code} {resp!r}")
        with lock:
            ids.append(resp.decode().rsplit(" ", 1)[1])
    s.quit()
ts = [threading.Thread(target=work, args=(t,)) for t in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
if len(ids) != n: sys.exit(f"sent {len(ids)} of {n}")
print("\n".join(ids))
"#;

fn send(srv: &Server, n: usize, tag: &str) -> Option<Vec<String>> {
    let py = require_tool("python3", "python3")?;
    let out = Command::new(py)
        .args(["-c", SENDER, "127.0.0.1"])
        .arg(srv.addr.port().to_string())
        .arg(n.to_string())
        .arg(n.clamp(1, 4).to_string())
        .arg(tag)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), n);
    Some(ids)
}

/// How a `ringmx ship` run ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ship(spool: &Path, args: &[&str]) -> Run {
    let out = ringmx()
        .arg("ship")
        .arg("--spool")
        .arg(spool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ringmx ship");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "ringmx ship {args:?}: exit {}\n{}{}",
        run.code, run.stdout, run.stderr
    );
    run
}

fn ship_ok(spool: &Path, args: &[&str]) -> Run {
    let r = ship(spool, args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r
}

/// `shipped N messages` from a drain's summary.
fn shipped(r: &Run) -> usize {
    let s = r.stdout.split("shipped ").nth(1).expect("a summary");
    s.split(' ').next().unwrap().parse().unwrap()
}

/// The Maildir's `new/`: queue id -> (file name, bytes, inode). Panics on a
/// queue id delivered under two names.
fn maildir(dir: &Path) -> BTreeMap<String, (String, Vec<u8>, u64)> {
    let mut m = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir.join("new")) else {
        return m;
    };
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".ringmx").expect("a ringmx file name");
        let id = stem.rsplit('.').next().unwrap().to_owned();
        let bytes = std::fs::read(e.path()).unwrap();
        let ino = e.metadata().unwrap().ino();
        assert!(
            m.insert(id.clone(), (name, bytes, ino)).is_none(),
            "{id} twice"
        );
    }
    m
}

fn count_new(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("new")).map_or(0, |rd| rd.count())
}

/// What the Maildir file of each stored message must hold: Return-Path,
/// the Received: field and the body, CRLF turned into LF.
fn expected(spool: &Path) -> HashMap<String, Vec<u8>> {
    let r = ringmx::spool::SpoolReader::open(spool).unwrap();
    let mut want = HashMap::new();
    for m in r.messages().unwrap() {
        let m = m.unwrap();
        let mut v = Vec::new();
        m.write_to(&mut v).unwrap();
        let text = v
            .windows(2)
            .fold(Vec::with_capacity(v.len()), |mut acc, w| {
                if w != b"\r\n" {
                    acc.push(w[0]);
                }
                acc
            });
        let mut text = text;
        text.push(*v.last().unwrap());
        want.insert(m.id.to_string(), text);
    }
    want
}

/// Every id in `ids` is in the Maildir exactly once with the stored bytes,
/// and nothing else is.
fn assert_delivered(dir: &Path, spool: &Path, ids: &[String]) {
    let got = maildir(dir);
    let want = expected(spool);
    let mut sorted = ids.to_vec();
    sorted.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), sorted);
    for (id, (name, bytes, _)) in &got {
        assert!(
            bytes == &want[id],
            "{name}: not the stored message:\n{}",
            String::from_utf8_lossy(bytes)
        );
        assert!(bytes.starts_with(b"Return-Path: <sender@example.org>\nReceived: "));
    }
}

/// Waits until `f` holds, polling; panics with `what` after [`STEP`].
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + STEP;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `ringmx ship` running in the background, its stderr collected.
struct Bg {
    child: Child,
    err: Arc<Mutex<String>>,
}

impl Bg {
    fn start(spool: &Path, args: &[&str]) -> Bg {
        let mut child = ringmx()
            .arg("ship")
            .arg("--spool")
            .arg(spool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringmx ship");
        let err = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let e2 = Arc::clone(&err);
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = e2.lock().unwrap();
                g.push_str(&l);
                g.push('\n');
            }
        });
        Bg { child, err }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit; its status code and stdout.
    fn wait(&mut self) -> (Option<i32>, String) {
        let mut stdout = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut o, &mut stdout).unwrap();
        }
        let status = self.child.wait().unwrap();
        (status.code(), stdout)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ship_delivers_every_accepted_message_once_and_consumers_are_independent() {
    let dir = TempDir::in_shm("drain");
    let mut srv = server(&dir, "2");
    let Some(mut ids) = send(&srv, 120, "drain") else {
        return;
    };
    let spool = dir.path().join("spool");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let to_a = format!("maildir:{}", a.display());
    let to_b = format!("maildir:{}", b.display());
    // While the server runs: the reader needs no lock.
    let r = ship_ok(&spool, &["--name", "a", "--to", &to_a]);
    assert_eq!(shipped(&r), 120);
    assert_delivered(&a, &spool, &ids);
    // A second run ships nothing and touches no file.
    let before = maildir(&a);
    let r = ship_ok(&spool, &["--name", "a", "--to", &to_a]);
    assert_eq!(shipped(&r), 0);
    assert_eq!(maildir(&a), before);
    // More mail: consumer a gets only the new; consumer b, new, gets all.
    let more = send(&srv, 30, "more").unwrap();
    let r = ship_ok(&spool, &["--name", "a", "--to", &to_a]);
    assert_eq!(shipped(&r), 30);
    ids.extend(more);
    srv.stop();
    assert_delivered(&a, &spool, &ids);
    let r = ship_ok(&spool, &["--name", "b", "--to", &to_b]);
    assert_eq!(shipped(&r), 150);
    assert_delivered(&b, &spool, &ids);
    // Both have a checkpoint per shard, side by side.
    for name in ["a", "b"] {
        for shard in 0..2 {
            let cp = spool.join(format!("consumers/{name}/shard-{shard}.checkpoint"));
            assert!(cp.is_file(), "{}", cp.display());
        }
    }
    let r = ship_ok(&spool, &["--name", "b", "--dead-letters"]);
    assert!(r.stdout.is_empty() && r.stderr.contains("0 dead letters"));
}

#[test]
fn follow_picks_up_mail_sent_after_it_started_and_sigterm_keeps_its_place() {
    let dir = TempDir::in_shm("follow");
    let srv = server(&dir, "1");
    let spool = dir.path().join("spool");
    let out = dir.path().join("out");
    let to = format!("maildir:{}", out.display());
    let mut bg = Bg::start(&spool, &["--name", "f", "--to", &to, "--follow"]);
    let Some(mut ids) = send(&srv, 20, "one") else {
        return;
    };
    wait_until("the first 20 in the Maildir", || count_new(&out) == 20);
    ids.extend(send(&srv, 25, "two").unwrap());
    wait_until("all 45 in the Maildir", || count_new(&out) == 45);
    bg.signal(libc::SIGTERM);
    let err = bg.stderr();
    let (code, stdout) = bg.wait();
    assert_eq!(code, Some(0), "{stdout}{err}");
    assert!(stdout.contains("shipped 45 messages"), "{stdout}");
    assert_delivered(&out, &spool, &ids);
    // The checkpoint covers all of it: a drain now ships nothing.
    let r = ship_ok(&spool, &["--name", "f", "--to", &to]);
    assert_eq!(shipped(&r), 0);
}

#[test]
fn sigkill_mid_drain_loses_nothing_and_reships_at_most_two_batches() {
    let dir = TempDir::in_shm("kill");
    let mut srv = server(&dir, "1");
    let n = 1500;
    let Some(ids) = send(&srv, n, "kill") else {
        return;
    };
    srv.stop();
    let spool = dir.path().join("spool");
    let out = dir.path().join("out");
    let to = format!("maildir:{}", out.display());
    let batch = 3;
    let mut bg = Bg::start(
        &spool,
        &[
            "--name",
            "k",
            "--to",
            &to,
            "--max-batch",
            &batch.to_string(),
        ],
    );
    wait_until("a tenth shipped", || count_new(&out) >= n / 10);
    bg.signal(libc::SIGKILL);
    let (code, _) = bg.wait();
    assert_eq!(code, None, "killed by a signal");
    let at_kill = maildir(&out);
    assert!(
        at_kill.len() < n,
        "the drain finished before the kill: make it longer"
    );
    let r = ship_ok(&spool, &["--name", "k", "--to", &to]);
    let after = maildir(&out);
    // A file written again gets a new inode (written to tmp/, renamed).
    let again = at_kill
        .iter()
        .filter(|(id, (_, _, ino))| after[*id].2 != *ino)
        .count();
    eprintln!(
        "SIGKILL after {} of {n}: the second run shipped {}, of which {again} again",
        at_kill.len(),
        shipped(&r)
    );
    assert_eq!(shipped(&r), n - at_kill.len() + again);
    // The batch in flight, and the one before it while its checkpoint was
    // being written (one checkpoint write overlaps the next batch).
    assert!(
        again <= 2 * batch,
        "{again} shipped twice, more than two batches"
    );
    assert_delivered(&out, &spool, &ids);
}

#[test]
fn a_sink_that_fails_is_retried_until_it_recovers() {
    let dir = TempDir::in_shm("retry");
    let srv = server(&dir, "1");
    let spool = dir.path().join("spool");
    let out = dir.path().join("out");
    let aside = dir.path().join("out.aside");
    let to = format!("maildir:{}", out.display());
    let mut bg = Bg::start(&spool, &["--name", "r", "--to", &to, "--follow"]);
    let Some(mut ids) = send(&srv, 5, "before") else {
        return;
    };
    wait_until("the first 5", || count_new(&out) == 5);
    // The Maildir goes away; a plain file stands in its place.
    std::fs::rename(&out, &aside).unwrap();
    std::fs::write(&out, b"not a directory").unwrap();
    ids.extend(send(&srv, 7, "during").unwrap());
    wait_until("a deferred delivery, logged", || {
        bg.stderr().contains("deferred")
    });
    wait_until("a second attempt, logged", || {
        bg.stderr().matches("deferred").count() >= 2
    });
    std::fs::remove_file(&out).unwrap();
    std::fs::rename(&aside, &out).unwrap();
    wait_until("all 12", || count_new(&out) == 12);
    bg.signal(libc::SIGTERM);
    let err = bg.stderr();
    let (code, stdout) = bg.wait();
    assert_eq!(code, Some(0), "{stdout}{err}");
    assert!(err.contains("Not a directory"), "{err}");
    assert_delivered(&out, &spool, &ids);
}

fn rfc3339(unix: i64) -> String {
    let t = ringmx::civil::DateTime::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn reset_replays_all_or_from_a_time_and_forget_says_what_was_left() {
    let dir = TempDir::in_shm("reset");
    let srv = server(&dir, "1");
    let spool = dir.path().join("spool");
    let Some(first) = send(&srv, 6, "first") else {
        return;
    };
    // The second batch arrives in a later second than the first.
    let t = now_unix() + 1;
    while now_unix() < t {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = send(&srv, 4, "second").unwrap();
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let m1 = dir.path().join("m1");
    let to1 = format!("maildir:{}", m1.display());
    assert_eq!(
        shipped(&ship_ok(&spool, &["--name", "x", "--to", &to1])),
        10
    );

    // --reset --since the second batch's first second, both forms: exactly
    // the second batch again, into a fresh Maildir.
    for (i, since) in [rfc3339(t), t.to_string()].iter().enumerate() {
        let r = ship_ok(&spool, &["--name", "x", "--reset", "--since", since]);
        assert!(
            r.stdout.contains("4 messages will be shipped again"),
            "{}",
            r.stdout
        );
        let m = dir.path().join(format!("since{i}"));
        let to = format!("maildir:{}", m.display());
        assert_eq!(shipped(&ship_ok(&spool, &["--name", "x", "--to", &to])), 4);
        assert_delivered(&m, &spool, &second);
    }
    // --reset: everything the spool holds.
    let r = ship_ok(&spool, &["--name", "x", "--reset"]);
    assert!(
        r.stdout.contains("10 messages will be shipped again"),
        "{}",
        r.stdout
    );
    let m2 = dir.path().join("m2");
    let to2 = format!("maildir:{}", m2.display());
    assert_eq!(
        shipped(&ship_ok(&spool, &["--name", "x", "--to", &to2])),
        10
    );
    assert_delivered(&m2, &spool, &all);
    // A bad time is a usage error that shows the forms.
    let r = ship(&spool, &["--name", "x", "--reset", "--since", "yesterday"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("RFC 3339"), "{}", r.stderr);

    // --forget: says what was not shipped, then the consumer is gone.
    send(&srv, 3, "late").unwrap();
    let r = ship_ok(&spool, &["--name", "x", "--forget"]);
    assert!(r.stdout.contains("3 unshipped messages"), "{}", r.stdout);
    assert!(!spool.join("consumers/x").exists());
    let r = ship(&spool, &["--name", "x", "--forget"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no consumer \"x\""), "{}", r.stderr);
}

#[test]
fn dead_letters_are_listed_and_redriven() {
    use ringmx::outlet::dead::DeadLetters;
    use ringmx::outlet::{ConsumerDir, HeaderFields, Parcel};
    let dir = TempDir::in_shm("dead");
    let mut srv = server(&dir, "1");
    let Some(ids) = send(&srv, 3, "dead") else {
        return;
    };
    srv.stop();
    let spool = dir.path().join("spool");
    // A consumer whose sink refused two of them (the Maildir sink never
    // refuses; the consumer's unit tests drive refusals through a sink).
    let cd = ConsumerDir::new(&spool, "d").unwrap();
    cd.create().unwrap();
    let dead = DeadLetters::of(&cd);
    let reader = ringmx::spool::SpoolReader::open(&spool).unwrap();
    let bump = bumpalo::Bump::new();
    let mut refused = Vec::new();
    for m in reader.messages().unwrap().take(2) {
        let m = m.unwrap();
        let mut data = m.received.clone();
        data.extend_from_slice(&m.body_bytes().unwrap());
        let key = ringmx::outlet::consumer::key_of(&m);
        let headers = HeaderFields::parse(&bump, &data);
        let p = Parcel {
            key: &key,
            msg: &m,
            data: &data,
            headers: &headers,
        };
        dead.store(&p, "550 5.1.1 no such user", None).unwrap();
        refused.push(m.id.to_string());
    }
    // And one whose body the consumer found damaged in the spool: a record
    // without a message, listed but not sendable.
    let third = reader.messages().unwrap().nth(2).unwrap().unwrap();
    let third_key = ringmx::outlet::consumer::key_of(&third);
    dead.store_damaged(
        &third_key,
        &third,
        "damaged in the spool, cannot be read: test",
    )
    .unwrap();
    dead.sync().unwrap();
    let r = ship_ok(&spool, &["--name", "d", "--dead-letters"]);
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    assert!(r.stdout.contains("550 5.1.1 no such user"));
    assert!(r.stdout.contains(&third_key) && r.stdout.contains("damaged in the spool"));
    let out = dir.path().join("out");
    let to = format!("maildir:{}", out.display());
    let r = ship_ok(&spool, &["--name", "d", "--redrive", "--to", &to]);
    assert!(r.stdout.contains("2 accepted and removed"), "{}", r.stdout);
    assert!(
        r.stdout.contains("1 damaged in the spool (not sent)"),
        "{}",
        r.stdout
    );
    assert_delivered(&out, &spool, &refused);
    let left = dead.list().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].damaged && left[0].key == third_key);
    assert!(ids.iter().any(|i| !refused.contains(i)));
}

#[test]
fn usage_errors_exit_2_and_say_what_to_do() {
    let dir = TempDir::in_shm("usage");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let r = ship(&spool, &["--name", "n", "--to", "kafka://x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("maildir:"), "{}", r.stderr);
    let r = ship(&spool, &["--name", "a/b", "--to", "maildir:/tmp/x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("A-Z a-z 0-9"), "{}", r.stderr);
    let r = ship(&spool, &["--name", "n"]);
    assert_eq!(r.code, 2, "--to is required to ship");
    let r = ship(&spool, &["--name", "n", "--forget", "--reset"]);
    assert_eq!(r.code, 2, "one action at a time");
    let r = ship(
        &spool,
        &["--name", "n", "--since", "0", "--to", "maildir:/x"],
    );
    assert_eq!(r.code, 2, "--since needs --reset");
    let r = ship(
        &dir.path().join("nope"),
        &["--name", "n", "--to", "maildir:/x"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--spool"), "{}", r.stderr);
}

#[test]
fn serve_ship_runs_a_consumer_child_and_restarts_it_when_it_dies() {
    let dir = TempDir::in_shm("serve");
    let spool = dir.path().join("spool");
    let out = dir.path().join("out");
    let target = format!("sup=maildir:{}", out.display());
    let mut srv = Server::start_with(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--spool", spool.to_str().unwrap(), "--ship", &target],
    );
    let Some(mut ids) = send(&srv, 5, "sup1") else {
        return;
    };
    wait_until("the first 5 shipped by the child", || count_new(&out) == 5);
    let line = srv
        .wait_log("ship sup: started `ringmx ship` (pid ", STEP)
        .expect("the child's start is logged");
    let pid: i32 = line
        .rsplit("(pid ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the server's child, which the server has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    srv.wait_log(
        "ship sup: `ringmx ship` exited (killed by signal 9); restarting",
        STEP,
    )
    .expect("the death is logged");
    let again = srv
        .wait_log_nth("ship sup: started `ringmx ship` (pid ", 2, STEP)
        .expect("a new child");
    assert_ne!(again, line);
    ids.extend(send(&srv, 6, "sup2").unwrap());
    wait_until("all 11 shipped", || count_new(&out) == 11);
    let status = srv.stop();
    assert!(status.success(), "{}", srv.logs());
    assert!(
        srv.wait_log("ship sup: stopped (status 0)", STEP).is_some(),
        "{}",
        srv.logs()
    );
    assert_delivered(&out, &spool, &ids);
}

#[test]
fn a_follower_keeps_shipping_across_a_server_sigkill_and_restart() {
    let dir = TempDir::in_shm("srvkill");
    let spool = dir.path().join("spool");
    let out = dir.path().join("out");
    let to = format!("maildir:{}", out.display());
    let mut srv = server(&dir, "1");
    let mut bg = Bg::start(&spool, &["--name", "s", "--to", &to, "--follow"]);
    let Some(mut ids) = send(&srv, 30, "before") else {
        return;
    };
    srv.signal(libc::SIGKILL);
    assert!(srv.wait_exit(STEP).is_some(), "the server did not die");
    // The same spool, recovered by a new server.
    let srv = server(&dir, "1");
    ids.extend(send(&srv, 30, "after").unwrap());
    wait_until("all 60", || count_new(&out) == 60);
    bg.signal(libc::SIGTERM);
    let err = bg.stderr();
    let (code, stdout) = bg.wait();
    assert_eq!(code, Some(0), "{stdout}{err}");
    assert!(!err.contains("damage"), "{err}");
    assert_delivered(&out, &spool, &ids);
}

/// Review finding: `serve --ship` started its `ringmx ship` children in a
/// process group of their own and nothing tied their life to the server's
/// (no PR_SET_PDEATHSIG, no watch on the parent). A server killed with
/// SIGKILL (the OOM killer, a crash under panic = "abort") leaves the child
/// running unsupervised for good: it keeps the consumer's lock, so the
/// restarted server's own child fails on it again and again (backing off to
/// a minute), and the orphan ships with whatever URL it was started with
/// even after the operator changed the settings or stopped the service.
#[test]
fn a_ship_child_does_not_outlive_a_killed_server() {
    let dir = TempDir::in_shm("orphan");
    let spool = dir.path().join("spool");
    let out = dir.path().join("out");
    let target = format!("orph=maildir:{}", out.display());
    let mut srv = Server::start_with(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--spool", spool.to_str().unwrap(), "--ship", &target],
    );
    let line = srv
        .wait_log("ship orph: started `ringmx ship` (pid ", STEP)
        .expect("the child's start is logged");
    let pid: i32 = line
        .rsplit("(pid ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    // The child holds the consumer's lock once it runs.
    let lock = spool.join("consumers/orph/.lock");
    wait_until("the child holds its lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|s| s.trim() == pid.to_string())
    });
    srv.signal(libc::SIGKILL);
    assert!(srv.wait_exit(STEP).is_some(), "the server did not die");
    // Give an orphan every chance to notice.
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let alive = || unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let survived = alive();
    if survived {
        // Clean up the orphan this test made (by its pid).
        // SAFETY: kill(2) on the child this test's server started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        !survived,
        "`ringmx ship` (pid {pid}) still runs 5 s after its server was killed"
    );
}

/// Review finding: on shutdown the server sent its ship children SIGTERM
/// and waited for them without a bound; a child in the middle of a batch to
/// a next hop that accepted the connection and never answered held the
/// shutdown up for the sink's timeout (here 10 minutes). Now it is killed
/// after `supervise::STOP_GRACE` (10 s).
#[test]
fn serve_stops_within_the_bound_when_a_ship_child_is_stuck_on_its_sink() {
    let dir = TempDir::in_shm("stall");
    let spool = dir.path().join("spool");
    // A next hop that takes connections and never says a word.
    let hop = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hop.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = Arc::clone(&held);
        std::thread::spawn(move || {
            for c in hop.incoming().flatten() {
                held.lock().unwrap().push(c);
            }
        });
    }
    let target = format!("stall=smtp://127.0.0.1:{port}?timeout=600s");
    let mut srv = Server::start_with(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--spool", spool.to_str().unwrap(), "--ship", &target],
    );
    if send(&srv, 1, "stall").is_none() {
        return;
    }
    wait_until("the child is connected to the silent next hop", || {
        !held.lock().unwrap().is_empty()
    });
    srv.signal(libc::SIGTERM);
    // Well under the sink's 600 s timeout: only the kill ends it this soon.
    let status = srv.wait_exit(Duration::from_secs(120));
    let logs = srv.logs();
    assert!(status.is_some(), "the server still runs: {logs}");
    let killing = logs
        .find("ship stall: `ringmx ship` (pid ")
        .filter(|&i| logs[i..].contains("killing it"))
        .expect("the kill is logged");
    let stopped = logs
        .find("ship stall: stopped (killed by signal 9)")
        .expect("the child's end is logged");
    assert!(killing < stopped, "{logs}");
}

/// Whether `pid` is a zombie (exited, not yet reaped by its new parent).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
