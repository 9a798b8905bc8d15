//! The webhook sink against a real HTTP server: mail goes into a real
//! `ringmx serve` through Python's smtplib, is read back from the spool as
//! parcels, and is posted by the sink (opened by URL, as the consumer opens
//! it) to `tests/fixtures/webhook_receiver.py`, which parses every request
//! and records what it got. Its scripted answers (503s, 404, 429 with
//! Retry-After, a sleep past the timeout, a crash mid-request, a restart on
//! the same port) check the verdict mapping and that a redelivery carries
//! the same Idempotency-Key; a listener whose queue is full checks the
//! connect timeout.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bumpalo::Bump;
use ringmx::outlet::sinks::{self, webhook};
use ringmx::outlet::{HeaderFields, Parcel, Sink, Verdict};
use ringmx::spool::{SpoolReader, StoredMessage};
use serde_json::Value;

use common::{Server, TempDir, STEP};

const NODE: &str = "test-node";

/// A committed message read back from the spool, as the consumer holds it.
struct Mail {
    key: String,
    msg: StoredMessage,
    data: Vec<u8>,
}

/// One message for [`spool_mail`] to send: envelope and the message bytes.
struct Outgoing {
    from: &'static str,
    to: Vec<&'static str>,
    message: Vec<u8>,
}

fn simple(i: usize) -> Outgoing {
    Outgoing {
        from: "alice@example.org",
        to: vec!["bob@localhost"],
        message: format!(
            "From: Alice <alice@example.org>\r\nTo: bob@localhost\r\n\
             Subject: message {i}\r\nMessage-ID: <m{i}@example.org>\r\n\
             Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n\r\nBody of message {i}.\r\n"
        )
        .into_bytes(),
    }
}

/// The set that checks the format: encoded words, folding, 8-bit bytes, a
/// line that looks like a boundary, a null sender, a large body.
fn varied() -> Vec<Outgoing> {
    let mut tricky = b"From: =?utf-8?q?Ren=C3=A9?= <rene@example.org>\r\n\
        To: bob@localhost,\r\n\tcarol@localhost\r\n\
        Cc: dave@localhost\r\n\
        Subject: =?utf-8?q?caf=C3=A9?= and\r\n more\r\n\
        Message-ID: <tricky@example.org>\r\n\
        Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n\
        List-Id: Test list <test.lists.example.org>\r\n\
        Content-Type: text/plain; charset=iso-8859-1\r\n\
        Content-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    tricky.extend_from_slice(b"caf\xe9 in latin-1\r\n");
    tricky.extend_from_slice(b"--ringmx-0000000000000000\r\n");
    tricky.extend_from_slice(b".a line with a leading dot\r\n");
    tricky.extend_from_slice(b"\r\n--\r\nthe end\r\n");
    let bounce = b"From: MAILER-DAEMON@example.org\r\nTo: bob@localhost\r\n\
        Subject: Undelivered Mail\r\nAuto-Submitted: auto-replied\r\n\r\nSorry.\r\n"
        .to_vec();
    let mut large =
        b"From: big@example.org\r\nTo: bob@localhost\r\nSubject: large\r\n\r\n".to_vec();
    for i in 0..12_000 {
        large.extend_from_slice(
            format!("line {i:05} of a large message, 50 bytes long.\r\n").as_bytes(),
        );
    }
    vec![
        simple(0),
        Outgoing {
            from: "rene@example.org",
            to: vec!["bob@localhost", "carol@localhost", "dave@localhost"],
            message: tricky,
        },
        Outgoing {
            from: "",
            to: vec!["bob@localhost"],
            message: bounce,
        },
        Outgoing {
            from: "big@example.org",
            to: vec!["bob@localhost"],
            message: large,
        },
    ]
}

/// Sends `mail` through a real server with smtplib, stops it, and reads
/// back what it committed. `None`: python3 is missing (skipped).
fn spool_mail(mail: &[Outgoing]) -> Option<(TempDir, Vec<Mail>)> {
    let python = common::require_tool("python3", "python3")?;
    let work = TempDir::new("webhook-mail");
    let mut manifest = Vec::new();
    for (i, m) in mail.iter().enumerate() {
        let file = work.path().join(format!("m{i}.eml"));
        std::fs::write(&file, &m.message).unwrap();
        manifest.push(serde_json::json!({"from": m.from, "to": m.to, "file": file}));
    }
    let manifest_path = work.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let mut s = Server::start(&["--node-id", NODE]);
    let script = r#"
import json, smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as c:
    c.ehlo("client.example")
    opts = ["BODY=8BITMIME"] if c.has_extn("8bitmime") else []
    for m in json.load(open(sys.argv[2])):
        refused = c.sendmail(m["from"], m["to"], open(m["file"], "rb").read(), opts)
        assert not refused, refused
"#;
    let out = Command::new(python)
        .args(["-c", script, &s.addr.port().to_string()])
        .arg(&manifest_path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtplib failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    assert!(s.stop().success());
    let reader = SpoolReader::open(s.spool.path()).expect("open spool");
    let mut mails = Vec::new();
    for msg in reader.messages().expect("list spool") {
        let msg = msg.expect("read message");
        let mut data = msg.received.clone();
        data.extend_from_slice(&msg.body_bytes().expect("read body"));
        mails.push(Mail {
            key: format!("{}.{}", msg.node_id, msg.id),
            msg,
            data,
        });
    }
    assert_eq!(mails.len(), mail.len(), "{}", s.logs());
    // The spool directory goes with the server; the mail is in memory now.
    Some((work, mails))
}

/// Hands `mails` to the sink as one batch, each parcel's header fields
/// parsed into one arena, as the consumer does.
fn deliver(sink: &mut dyn Sink, mails: &[Mail]) -> Vec<Verdict> {
    let bump = Bump::new();
    let headers: Vec<HeaderFields<'_>> = mails
        .iter()
        .map(|m| HeaderFields::parse(&bump, &m.data))
        .collect();
    let parcels: Vec<Parcel<'_>> = mails
        .iter()
        .zip(&headers)
        .map(|(m, h)| Parcel {
            key: &m.key,
            msg: &m.msg,
            data: &m.data,
            headers: h,
        })
        .collect();
    let verdicts = sink.deliver(&parcels).expect("deliver");
    assert_eq!(verdicts.len(), mails.len(), "one verdict per parcel");
    verdicts
}

/// What the consumer does: deliver, move past the settled prefix, retry
/// the rest, until everything is settled. Returns the verdicts of every
/// round.
fn drain(sink: &mut dyn Sink, mails: &[Mail], max_rounds: usize) -> Vec<Vec<Verdict>> {
    let mut rounds = Vec::new();
    let mut from = 0;
    while from < mails.len() {
        assert!(rounds.len() < max_rounds, "not drained: {rounds:#?}");
        let v = deliver(sink, &mails[from..]);
        from += v
            .iter()
            .take_while(|v| !matches!(v, Verdict::Deferred(_)))
            .count();
        rounds.push(v);
    }
    rounds
}

/// The receiver script, running.
struct Receiver {
    child: Child,
    port: u16,
    dir: TempDir,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Receiver {
    /// Starts it with a fresh record (`port` 0: any free port).
    fn start(plan: &str) -> Option<Receiver> {
        common::require_tool("python3", "python3")?;
        Some(Self::spawn(TempDir::new("webhook-recv"), 0, plan, None))
    }

    fn spawn(dir: TempDir, port: u16, plan: &str, tls: Option<(PathBuf, PathBuf)>) -> Receiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/webhook_receiver.py"
        );
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg(port.to_string())
            .arg(dir.path().join("record.jsonl"))
            .arg(plan);
        if let Some((cert, key)) = &tls {
            cmd.arg(cert).arg(key);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(STEP).unwrap_or_default();
        let Some(port) = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "receiver did not start: {line:?}\n{}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            );
        };
        Receiver {
            child,
            port,
            dir,
            tls,
        }
    }

    fn url(&self, options: &str) -> String {
        self.url_as("", options)
    }

    /// [`Receiver::url`] with user info (`user:password@`).
    fn url_as(&self, userinfo: &str, options: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "{scheme}://{userinfo}127.0.0.1:{}/inbound?token=t0k#{options}",
            self.port
        )
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for a process that exits by itself (the `die` step).
    fn wait_exit(&mut self) {
        for _ in 0..(STEP.as_millis() / 10) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("receiver did not exit");
    }

    /// Starts it again on the same port, with the same record and a new
    /// plan.
    fn restart(mut self, plan: &str) -> Receiver {
        self.kill();
        let dir = TempDir::new("unused");
        let dir = std::mem::replace(&mut self.dir, dir);
        Self::spawn(dir, self.port, plan, self.tls.take())
    }

    /// Every request on record, in arrival order.
    fn records(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.path().join("record.jsonl")).unwrap_or_default();
        let recs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record line"))
            .collect();
        for r in &recs {
            assert!(r.get("error").is_none(), "malformed request: {r}");
            assert_eq!(
                r["path"], "/inbound?token=t0k",
                "the fragment is never sent"
            );
        }
        recs
    }

    /// The keys of the requests it answered with `status`.
    fn keys_with(&self, status: u64) -> Vec<String> {
        self.records()
            .iter()
            .filter(|r| r["status"].as_u64() == Some(status))
            .map(|r| r["key"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

fn keys(mails: &[Mail]) -> Vec<String> {
    mails.iter().map(|m| m.key.clone()).collect()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn rfc3339(unix: i64) -> String {
    let t = ringmx::civil::DateTime::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn is_deferred(v: &Verdict, needle: &str) -> bool {
    matches!(v, Verdict::Deferred(r) if r.contains(needle))
}

#[test]
fn every_message_arrives_byte_exact_with_its_envelope() {
    let Some(recv) = Receiver::start("") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&varied()) else {
        return;
    };
    let mut sink = sinks::open(&recv.url("")).expect("open");
    let verdicts = deliver(sink.as_mut(), &mails);
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Accepted),
        "{verdicts:?}"
    );

    let recs = recv.records();
    assert_eq!(recs.len(), mails.len());
    // One kept-alive connection carried them all.
    let ports: Vec<&Value> = recs.iter().map(|r| &r["peer_port"]).collect();
    assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
    for (m, r) in mails.iter().zip(&recs) {
        assert_eq!(r["key"], m.key.as_str(), "Idempotency-Key, in order");
        assert_eq!(r["authorization"], Value::Null);
        assert!(r["user_agent"].as_str().unwrap().starts_with("ringmx/"));
        assert_eq!(r["envelope_type"], "application/json");
        assert_eq!(r["message_type"], "message/rfc822");
        assert_eq!(hex(r["message_hex"].as_str().unwrap()), m.data, "{}", m.key);
        let e = &r["envelope"];
        let env = &m.msg.envelope;
        assert_eq!(e["key"], m.key.as_str());
        assert_eq!(e["queue_id"], m.msg.id.to_string());
        assert_eq!(e["node_id"], NODE);
        assert_eq!(e["mail_from"], env.mail_from.as_str());
        assert_eq!(e["mail_params"], env.mail_params.as_str());
        assert_eq!(e["rcpts"], serde_json::json!(env.rcpts));
        assert_eq!(e["client"], env.client.unwrap().to_string());
        assert_eq!(e["helo"], "client.example");
        assert_eq!(e["arrival"], rfc3339(env.arrival_unix));
        assert_eq!(e["size"], m.data.len());
    }
    // Header fields as written, unfolded, encoded words left encoded,
    // absent ones left out.
    let h = |i: usize| recs[i]["envelope"]["headers"].clone();
    assert_eq!(
        h(0),
        serde_json::json!({
            "From": "Alice <alice@example.org>",
            "To": "bob@localhost",
            "Subject": "message 0",
            "Message-ID": "<m0@example.org>",
            "Date": "Mon, 30 Nov 2026 08:00:00 +0000",
        })
    );
    assert_eq!(
        h(1),
        serde_json::json!({
            "From": "=?utf-8?q?Ren=C3=A9?= <rene@example.org>",
            "To": "bob@localhost,\tcarol@localhost",
            "Cc": "dave@localhost",
            "Subject": "=?utf-8?q?caf=C3=A9?= and more",
            "Message-ID": "<tricky@example.org>",
            "Date": "Mon, 30 Nov 2026 08:00:00 +0000",
            "List-Id": "Test list <test.lists.example.org>",
        })
    );
    assert_eq!(recs[1]["envelope"]["rcpts"].as_array().unwrap().len(), 3);
    assert_eq!(recs[2]["envelope"]["mail_from"], "");
    assert_eq!(h(2)["Auto-Submitted"], "auto-replied");
    assert!(mails[3].data.len() > 500_000, "the large one is large");
}

#[test]
fn status_codes_map_to_verdicts() {
    let Some(recv) = Receiver::start("404,200,422,400,410,413,415,409,500,200") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&(0..10).map(simple).collect::<Vec<_>>()) else {
        return;
    };
    let mut sink = sinks::open(&recv.url("")).expect("open");
    let v = deliver(sink.as_mut(), &mails);
    let rejected = |v: &Verdict, code: &str| matches!(v, Verdict::Rejected { reason, rcpts: None } if reason.contains(&format!("HTTP {code} ")));
    assert!(rejected(&v[0], "404"), "{v:?}");
    assert_eq!(v[1], Verdict::Accepted);
    for (i, code) in [(2, "422"), (3, "400"), (4, "410"), (5, "413"), (6, "415")] {
        assert!(rejected(&v[i], code), "{i}: {v:?}");
    }
    // 409 is not in the default permanent set: deferred, and the rest of
    // the batch is left for the retry.
    assert!(is_deferred(&v[7], "HTTP 409 Conflict"), "{v:?}");
    // The receiver's answer text goes into the reason; the URL's query
    // (it may hold a token) does not.
    assert!(is_deferred(&v[7], "status 409 for request 7"), "{v:?}");
    assert!(v.iter().all(|v| !format!("{v:?}").contains("t0k")), "{v:?}");
    assert!(v[8..].iter().all(|v| is_deferred(v, "not sent")), "{v:?}");
    assert_eq!(
        recv.records().len(),
        8,
        "nothing sent after the deferred one"
    );
    // The retry from the deferred parcel on: 500 defers, then all go.
    let rounds = drain(sink.as_mut(), &mails[7..], 3);
    assert!(is_deferred(&rounds[0][0], "HTTP 500"), "{rounds:?}");
    assert_eq!(rounds[1], vec![Verdict::Accepted; 3]);
    // Redeliveries carry the same key.
    let recs = recv.records();
    assert_eq!(recs[7]["key"], recs[8]["key"]);
    assert_eq!(recs[8]["key"], recs[9]["key"]);
    assert_eq!(recs[9]["key"], mails[7].key.as_str());
    assert_eq!(
        recv.keys_with(200),
        [&keys(&mails[1..2])[..], &keys(&mails[7..])[..]].concat()
    );
}

#[test]
fn the_permanent_set_is_configured_in_the_fragment() {
    let Some(recv) = Receiver::start("404,409,408,429,301,404") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&(0..3).map(simple).collect::<Vec<_>>()) else {
        return;
    };
    // Only 409 is permanent: 404 defers.
    let mut sink = sinks::open(&recv.url("permanent=409&batch=2")).expect("open");
    assert_eq!(sink.max_batch(), 2);
    let v = deliver(sink.as_mut(), &mails[..1]);
    assert!(is_deferred(&v[0], "HTTP 404"), "{v:?}");
    let v = deliver(sink.as_mut(), &mails[..1]);
    assert!(matches!(&v[0], Verdict::Rejected { reason, .. } if reason.contains("HTTP 409")));
    // 408 and 429 always defer; a redirect is not followed.
    let v = deliver(sink.as_mut(), &mails[1..2]);
    assert!(is_deferred(&v[0], "HTTP 408"), "{v:?}");
    let v = deliver(sink.as_mut(), &mails[1..2]);
    assert!(is_deferred(&v[0], "HTTP 429"), "{v:?}");
    let v = deliver(sink.as_mut(), &mails[1..2]);
    assert!(
        is_deferred(
            &v[0],
            "redirect to http://elsewhere.example/hook not followed"
        ),
        "{v:?}"
    );
    // An empty set defers every 4xx.
    let mut sink = sinks::open(&recv.url("permanent=")).expect("open");
    let v = deliver(sink.as_mut(), &mails[2..]);
    assert!(is_deferred(&v[0], "HTTP 404"), "{v:?}");
    assert_eq!(recv.records().len(), 6);
    // Options that cannot work are refused when the sink opens.
    for bad in [
        "permanent=503",
        "permanent=429",
        "timeout=never",
        "retries=3",
    ] {
        let Err(e) = sinks::open(&recv.url(bad)) else {
            panic!("{bad} opened")
        };
        assert!(!e.0.contains("t0k"), "{e}");
    }
}

#[test]
fn retry_after_is_reported_for_the_backoff() {
    let Some(recv) = Receiver::start("503:7,429:3600000,429:date+120,503,429,200") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&[simple(0)]) else {
        return;
    };
    let mut sink = sinks::open(&recv.url("")).expect("open");
    let rounds = drain(sink.as_mut(), &mails, 6);
    assert_eq!(rounds.len(), 6, "{rounds:?}");
    let reason = |i: usize| match &rounds[i][0] {
        Verdict::Deferred(r) => r.clone(),
        v => panic!("round {i}: {v:?}"),
    };
    assert_eq!(
        webhook::retry_after(&reason(0)),
        Some(Duration::from_secs(7))
    );
    // A huge delay is capped.
    assert_eq!(
        webhook::retry_after(&reason(1)),
        Some(webhook::MAX_RETRY_AFTER)
    );
    // An HTTP-date: 120 s after the receiver's clock read, so at most 120
    // s from ours (the same clock) and certainly more than none.
    let wait = webhook::retry_after(&reason(2)).unwrap_or_else(|| panic!("{}", reason(2)));
    assert!(
        wait <= Duration::from_secs(120) && wait > Duration::ZERO,
        "{wait:?}"
    );
    // No Retry-After, no hint.
    assert_eq!(webhook::retry_after(&reason(3)), None, "{}", reason(3));
    assert_eq!(webhook::retry_after(&reason(4)), None, "{}", reason(4));
    assert_eq!(rounds[5], vec![Verdict::Accepted]);
    let recs = recv.records();
    assert_eq!(recs.len(), 6);
    assert!(recs.iter().all(|r| r["key"] == mails[0].key.as_str()));
}

#[test]
fn a_receiver_503_for_a_while_gets_everything_once_it_recovers() {
    let Some(recv) = Receiver::start("200,200,503,503,503") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&(0..6).map(simple).collect::<Vec<_>>()) else {
        return;
    };
    let mut sink = sinks::open(&recv.url("")).expect("open");
    let rounds = drain(sink.as_mut(), &mails, 5);
    assert_eq!(rounds.len(), 4, "three 503s, then the rest: {rounds:?}");
    assert_eq!(rounds[0][..2], [Verdict::Accepted, Verdict::Accepted]);
    for v in [&rounds[0][2], &rounds[1][0], &rounds[2][0]] {
        assert!(is_deferred(v, "HTTP 503 Service Unavailable"), "{rounds:?}");
    }
    assert_eq!(rounds[3], vec![Verdict::Accepted; 4]);
    // Each accepted once, in order; the third posted four times, one key.
    assert_eq!(recv.keys_with(200), keys(&mails));
    assert_eq!(recv.keys_with(503), vec![mails[2].key.clone(); 3]);
}

#[test]
fn a_slow_receiver_times_out_and_the_retry_carries_the_same_key() {
    // The receiver sleeps far past the sink's 1 s timeout; were the timeout
    // not kept, the first verdict would be Accepted 30 s later.
    let Some(recv) = Receiver::start("sleep:30") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&(0..2).map(simple).collect::<Vec<_>>()) else {
        return;
    };
    let mut sink = sinks::open(&recv.url("timeout=1s")).expect("open");
    assert_eq!(sink.timeout(), Duration::from_secs(1));
    let v = deliver(sink.as_mut(), &mails);
    assert!(is_deferred(&v[0], "no answer within timeout=1s"), "{v:?}");
    assert!(is_deferred(&v[1], "not sent"), "{v:?}");
    let v = deliver(sink.as_mut(), &mails);
    assert_eq!(v, vec![Verdict::Accepted; 2]);
    let recs = recv.records();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["key"], recs[1]["key"]);
    assert!(
        recs[0].get("status").is_none(),
        "the slow answer never counted"
    );
    assert_eq!(recv.keys_with(200), keys(&mails));
}

#[test]
fn the_receiver_goes_down_and_comes_back_on_the_same_port() {
    // It crashes while the third message is being posted (after reading it,
    // before answering).
    let Some(recv) = Receiver::start("200,200,die") else {
        return;
    };
    let Some((_work, mails)) = spool_mail(&(0..8).map(simple).collect::<Vec<_>>()) else {
        return;
    };
    let mut sink = sinks::open(&recv.url("")).expect("open");
    let mut recv = recv;
    let v = deliver(sink.as_mut(), &mails);
    assert_eq!(v[..2], [Verdict::Accepted, Verdict::Accepted]);
    assert!(is_deferred(&v[2], "closed before an answer"), "{v:?}");
    assert!(v[3..].iter().all(|v| is_deferred(v, "not sent")), "{v:?}");
    recv.wait_exit();
    // Down: the connection is refused, and nothing is lost.
    let v = deliver(sink.as_mut(), &mails[2..]);
    assert!(is_deferred(&v[0], "refused"), "{v:?}");
    assert!(v[1..].iter().all(|v| is_deferred(v, "not sent")), "{v:?}");
    // Back on the same port, with the same record: the rest goes, and the
    // kept-alive connection to the dead process is not reused.
    let mut recv = recv.restart("");
    assert_eq!(
        deliver(sink.as_mut(), &mails[2..4]),
        vec![Verdict::Accepted; 2]
    );
    // Killed between batches (SIGKILL) and back again.
    recv.kill();
    let mut recv = recv.restart("");
    assert_eq!(
        deliver(sink.as_mut(), &mails[4..]),
        vec![Verdict::Accepted; 4]
    );
    recv.kill();
    let recs = recv.records();
    let accepted = recv.keys_with(200);
    assert_eq!(
        accepted,
        keys(&mails),
        "every message accepted once, in order"
    );
    // The one in flight when it crashed was posted twice, with one key.
    assert_eq!(recs[2]["step"], "die");
    assert_eq!(recs[2]["key"], mails[2].key.as_str());
    assert_eq!(recs.len(), mails.len() + 1);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &recs {
        *seen.entry(r["key"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(seen[mails[2].key.as_str()], 2);
}

/// A CA and a `localhost`/127.0.0.1 certificate it signed, made with the
/// openssl command line. `None`: openssl is missing (skipped).
fn make_certs(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    common::require_tool("openssl", "openssl")?;
    let run = |args: &[&str]| common::certs::openssl(dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &[
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ][..],
        &ec,
    ]
    .concat());
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
    Some((
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    ))
}

#[test]
fn https_with_a_private_ca() {
    if common::require_tool("python3", "python3").is_none() {
        return;
    }
    let certs = TempDir::new("webhook-certs");
    let Some((ca, cert, key)) = make_certs(certs.path()) else {
        return;
    };
    let recv = Receiver::spawn(TempDir::new("webhook-recv"), 0, "", Some((cert, key)));
    let Some((_work, mails)) = spool_mail(&(0..2).map(simple).collect::<Vec<_>>()) else {
        return;
    };
    // Mozilla's roots do not know the test CA: the handshake fails, the
    // messages wait.
    let mut sink = sinks::open(&recv.url("")).expect("open");
    let v = deliver(sink.as_mut(), &mails);
    assert!(is_deferred(&v[0], "invalid peer certificate"), "{v:?}");
    assert!(recv.records().is_empty());
    // Trusting it, both go; user info in the URL becomes Basic auth.
    let url = recv.url_as("hook:s3cret@", &format!("ca={}", ca.display()));
    let mut sink = sinks::open(&url).expect("open");
    assert_eq!(deliver(sink.as_mut(), &mails), vec![Verdict::Accepted; 2]);
    assert_eq!(recv.keys_with(200), keys(&mails));
    let recs = recv.records();
    assert_eq!(hex(recs[1]["message_hex"].as_str().unwrap()), mails[1].data);
    // base64("hook:s3cret")
    assert_eq!(recs[1]["authorization"], "Basic aG9vazpzM2NyZXQ=");
}

#[test]
fn a_peer_that_never_completes_the_connect_hits_connect_timeout() {
    use socket2::{Domain, Socket, Type};
    let Some((_work, mails)) = spool_mail(&[simple(0)]) else {
        return;
    };
    // A listener that never accepts, its queue filled: Linux drops further
    // SYNs, so a connect neither succeeds nor fails until the client gives
    // up.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<Socket> = (0..4)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    // A whole-request timeout far longer: were the connect bounded by it
    // instead, the reason would name it.
    let url = format!("http://{addr}/inbound#connect-timeout=500ms&timeout=20s");
    let mut sink = sinks::open(&url).expect("open");
    let v = deliver(sink.as_mut(), &mails);
    assert!(
        is_deferred(&v[0], "not connected within connect-timeout=500ms"),
        "{v:?}"
    );
    drop(fillers);
}
