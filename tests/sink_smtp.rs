//! The SMTP/LMTP sink against real next hops on loopback: `ringmx serve`
//! itself (byte-exact through its spool, real 550s for foreign domains,
//! real 452s past its recipient limit), Postfix's `smtp-sink` (dumps what
//! it received; refuses chosen commands with 4xx/5xx/421, disconnects, or
//! stalls) and Dovecot's LMTP server (per-recipient results after the data:
//! unknown users, full mailboxes).
//!
//! Parcels come from a real spool: mail is sent to a real `ringmx serve`
//! with Python's smtplib, the server is stopped, and its spool is read back
//! with `SpoolReader`, as the consumer does.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bumpalo::Bump;
use common::{find_tool, require_tool, skip, Server, Stored, TempDir, STEP};
use ringmx::outlet::{sinks, HeaderFields, Parcel, Sink, Verdict};
use ringmx::spool::{SpoolReader, StoredMessage};

/// One message to put in the spool.
#[derive(Clone)]
struct Mail {
    from: String,
    rcpts: Vec<String>,
    data: Vec<u8>,
    /// MAIL FROM parameters.
    opts: Vec<&'static str>,
    /// Send with BDAT (the only way to store a body without a final CRLF).
    bdat: bool,
}

fn mail(from: &str, rcpts: &[&str], data: &[u8]) -> Mail {
    Mail {
        from: from.into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        data: data.to_vec(),
        opts: Vec::new(),
        bdat: false,
    }
}

/// Sends each mail with Python's smtplib (a real client: it dot-stuffs)
/// over one connection, asserting each was accepted.
const SEND_PY: &str = r#"
import json, smtplib, sys
msgs = json.load(sys.stdin)
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
s.ehlo("client.test")
for m in msgs:
    data = m["data"].encode("latin-1")
    if m["bdat"]:
        code, resp = s.mail(m["from"], m["opts"])
        assert code == 250, (code, resp)
        for r in m["rcpts"]:
            code, resp = s.rcpt(r)
            assert code == 250, (code, resp)
        s.putcmd("BDAT", "%d LAST" % len(data))
        s.send(data)
        code, resp = s.getreply()
        assert code == 250, (code, resp)
    else:
        refused = s.sendmail(m["from"], m["rcpts"], data, mail_options=m["opts"])
        assert not refused, refused
s.quit()
"#;

/// Mail in a stopped server's spool, read back as the consumer reads it.
struct Spooled {
    /// Owns the spool directory.
    _server: Server,
    msgs: Vec<StoredMessage>,
}

/// Puts `mails` into a fresh spool through a real `ringmx serve` that
/// accepts example.com and other.org; `None` (after a skip) without python3.
fn spool_of(mails: &[Mail]) -> Option<Spooled> {
    let python = require_tool("python3", "python3")?;
    let mut server = Server::start(&["--domain", "example.com", "--domain", "other.org"]);
    let json: Vec<_> = mails
        .iter()
        .map(|m| {
            serde_json::json!({
                "from": m.from,
                "rcpts": m.rcpts,
                // Latin-1 carries any byte through JSON.
                "data": m.data.iter().map(|&b| b as char).collect::<String>(),
                "opts": m.opts,
                "bdat": m.bdat,
            })
        })
        .collect();
    let mut child = Command::new(python)
        .args(["-c", SEND_PY, "127.0.0.1", &server.addr.port().to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&json).unwrap().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "smtplib failed to send");
    server.stop();
    let reader = SpoolReader::open(server.spool.path()).unwrap();
    let msgs: Vec<StoredMessage> = reader.messages().unwrap().map(|m| m.unwrap()).collect();
    assert_eq!(msgs.len(), mails.len());
    Some(Spooled {
        _server: server,
        msgs,
    })
}

/// What the consumer hands a sink for a stored message.
fn data_of(m: &StoredMessage) -> Vec<u8> {
    let mut d = m.received.clone();
    d.extend_from_slice(&m.body_bytes().unwrap());
    d
}

/// Builds the parcels of `msgs` and runs `f` on them.
fn with_parcels<R>(msgs: &[StoredMessage], f: impl FnOnce(&[Parcel<'_>]) -> R) -> R {
    let bump = Bump::new();
    let keys: Vec<String> = msgs
        .iter()
        .map(|m| format!("{}.{}", m.node_id, m.id))
        .collect();
    let datas: Vec<Vec<u8>> = msgs.iter().map(data_of).collect();
    let headers: Vec<HeaderFields<'_>> = datas
        .iter()
        .map(|d| HeaderFields::parse(&bump, d))
        .collect();
    let parcels: Vec<Parcel<'_>> = (0..msgs.len())
        .map(|i| Parcel {
            key: &keys[i],
            msg: &msgs[i],
            data: &datas[i],
            headers: &headers[i],
        })
        .collect();
    f(&parcels)
}

/// Hands `parcels` to `sink` in batches of its size; one verdict each.
fn ship(sink: &mut dyn Sink, parcels: &[Parcel<'_>]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for batch in parcels.chunks(sink.max_batch()) {
        let v = sink.deliver(batch).expect("deliver");
        assert_eq!(v.len(), batch.len(), "one verdict per parcel");
        out.extend(v);
    }
    out
}

fn is_deferred(v: &Verdict) -> bool {
    matches!(v, Verdict::Deferred(_))
}

/// What a DATA next hop must end up holding for `data`: the same bytes, a
/// CRLF added when they lack a final one (DATA cannot say otherwise).
fn over_data(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    if !d.ends_with(b"\r\n") {
        d.extend_from_slice(b"\r\n");
    }
    d
}

fn lf(data: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(data)
        .replace("\r\n", "\n")
        .into_bytes()
}

/// The awkward messages every next hop gets: dot lines, a lone `.` line,
/// a body without a final CRLF (also one ending in a dot), 8-bit text, the
/// null sender.
fn awkward() -> Vec<Mail> {
    let mut v = vec![
        mail(
            "dots@sender.test",
            &["dots@example.com"],
            b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\n. \r\nend\r\n",
        ),
        mail(
            "",
            &["bounce@example.com"],
            b"Subject: null sender\r\n\r\nDelivery failed.\r\n",
        ),
        Mail {
            opts: vec!["BODY=8BITMIME"],
            ..mail(
                "8bit@sender.test",
                &["8bit@example.com"],
                "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve \u{2014} 8-bit\r\n".as_bytes(),
            )
        },
        Mail {
            bdat: true,
            ..mail(
                "bdat@sender.test",
                &["bdat@example.com"],
                b"Subject: no final CRLF\r\n\r\nlast line",
            )
        },
        Mail {
            bdat: true,
            ..mail(
                "bdat@sender.test",
                &["bdatdot@example.com"],
                b"Subject: ends in a dot\r\n\r\nbefore\r\n.",
            )
        },
    ];
    for (i, m) in v.iter_mut().enumerate() {
        // Tells the messages apart wherever they land.
        let mut d = format!("X-Seq: awkward-{i}\r\n").into_bytes();
        d.extend_from_slice(&m.data);
        m.data = d;
    }
    v
}

fn plain(i: usize, rcpts: &[&str]) -> Mail {
    mail(
        &format!("s{i}@sender.test"),
        rcpts,
        format!("X-Seq: plain-{i}\r\nSubject: m{i}\r\n\r\nline {i}\r\n.dot {i}\r\n").as_bytes(),
    )
}

/// Many parcels through one pipelined connection to `ringmx serve`: each
/// arrives byte-exact with its envelope; a foreign-domain recipient gets a
/// real 550, which makes the parcel `Rejected` for that recipient only.
#[test]
fn ringmx_next_hop_takes_a_pipelined_batch_byte_exact() {
    let mut mails = awkward();
    for i in 0..40 {
        mails.push(plain(i, &[&format!("u{i}@example.com")]));
    }
    let mixed = mails.len();
    mails.push(mail(
        "mixed@sender.test",
        &["in1@example.com", "out@other.org", "in2@example.com"],
        b"X-Seq: mixed\r\n\r\nhalf in\r\n",
    ));
    let foreign = mails.len();
    mails.push(mail(
        "foreign@sender.test",
        &["a@other.org", "b@other.org"],
        b"X-Seq: foreign\r\n\r\nnobody\r\n",
    ));
    let Some(up) = spool_of(&mails) else { return };
    let mut next = Server::start(&["--domain", "example.com"]);
    let mut sink =
        sinks::open(&format!("smtp://{}?timeout=20s&helo=ship.test", next.addr)).unwrap();
    assert!(sink.max_batch() >= mails.len(), "one batch");
    let verdicts = with_parcels(&up.msgs, |p| ship(sink.as_mut(), p));
    drop(sink);
    for (i, v) in verdicts.iter().enumerate() {
        match i {
            _ if i == mixed => assert!(
                matches!(v, Verdict::Rejected { rcpts: Some(r), reason }
                    if r == &["out@other.org"] && reason.contains("550")),
                "{v:?}"
            ),
            _ if i == foreign => assert!(
                matches!(v, Verdict::Rejected { rcpts: None, reason } if reason.contains("550")),
                "{v:?}"
            ),
            _ => assert_eq!(v, &Verdict::Accepted, "parcel {i}"),
        }
    }
    next.stop();
    let got = next.stored();
    // Everything but the all-foreign parcel, in order.
    let sent: Vec<&StoredMessage> = up.msgs.iter().take(foreign).collect();
    assert_eq!(got.len(), sent.len());
    for (g, m) in got.iter().zip(&sent) {
        assert_eq!(g.body, over_data(&data_of(m)), "{}", g.text());
        assert_eq!(g.mail_from, m.envelope.mail_from);
        let want: Vec<String> = m
            .envelope
            .rcpts
            .iter()
            .filter(|r| r.ends_with("@example.com"))
            .cloned()
            .collect();
        assert_eq!(g.rcpts, want);
        assert_eq!(g.helo, "ship.test");
        // ringmx offers SIZE and 8BITMIME: the sink declares both.
        let data = data_of(m);
        assert!(
            g.mail_params.contains(&format!("SIZE={}", data.len())),
            "{}",
            g.mail_params
        );
        let eightbit = data.iter().any(|&b| b >= 0x80);
        assert_eq!(
            g.mail_params.contains("BODY=8BITMIME"),
            eightbit,
            "{}",
            g.mail_params
        );
    }
    // One connection: every message came from the same client port.
    assert!(
        got.iter().all(|g| g.client == got[0].client),
        "{:?}",
        got.iter().map(|g| &g.client).collect::<Vec<_>>()
    );
    assert!(
        got.iter().any(|g| g.mail_from.is_empty()),
        "the null sender kept"
    );
}

/// Postfix's smtp-sink on a free loopback port with extra flags, dumping
/// each transaction to a file; killed on drop.
struct PostfixSink {
    child: Child,
    addr: SocketAddr,
    dumps: TempDir,
}

impl PostfixSink {
    fn start(flags: &[&str]) -> Option<PostfixSink> {
        let bin = require_tool("smtp-sink", "postfix")?;
        let dumps = TempDir::new("smtp-sink-dumps");
        // smtp-sink drops to nobody when run as root; let it write there.
        std::fs::set_permissions(
            dumps.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        for _ in 0..5 {
            // smtp-sink takes a port, not a socket: borrow a free one.
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut cmd = Command::new(&bin);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "nobody"]);
            }
            let mut child = cmd
                .args(flags)
                .arg("-d")
                .arg(dumps.path().join("msg."))
                .arg(format!("127.0.0.1:{port}"))
                .arg("100")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start smtp-sink");
            if wait_listening(addr, &mut child) {
                return Some(PostfixSink { child, addr, dumps });
            }
        }
        panic!("smtp-sink did not start");
    }

    fn url(&self, query: &str) -> String {
        format!("smtp://{}?helo=ship.test{query}", self.addr)
    }

    /// The dumped transactions, in no particular order.
    fn dumps(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dumps.path())
            .unwrap()
            .map(|e| {
                String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned()
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections at `addr`; false if `child`
/// exited first (its port was taken meanwhile) or nothing listened in time.
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

/// The dump holding the message with this `X-Seq:`.
fn dump_with<'a>(dumps: &'a [String], seq: &str) -> &'a str {
    let needle = format!("\nX-Seq: {seq}\n");
    let found: Vec<&String> = dumps.iter().filter(|d| d.contains(&needle)).collect();
    assert_eq!(found.len(), 1, "{seq}: {found:?}");
    found[0]
}

/// smtp-sink with and without ESMTP (the sink falls back to HELO, sends
/// one command at a time and no parameters) and with PIPELINING: each
/// dump ends with the message, dot-unstuffed as sent, and shows the
/// envelope; the MAIL parameters follow what the server offers.
#[test]
fn smtp_sink_gets_the_awkward_messages_with_and_without_esmtp() {
    let mails = awkward();
    let Some(up) = spool_of(&mails) else { return };
    for flags in [&[][..], &["-e"]] {
        let Some(next) = PostfixSink::start(flags) else {
            return;
        };
        let mut sink = sinks::open(&next.url("&timeout=20s")).unwrap();
        let verdicts = with_parcels(&up.msgs, |p| ship(sink.as_mut(), p));
        assert!(
            verdicts.iter().all(|v| v == &Verdict::Accepted),
            "{flags:?}: {verdicts:?}"
        );
        drop(sink);
        let dumps = next.dumps();
        assert_eq!(dumps.len(), mails.len(), "{flags:?}");
        for (i, m) in up.msgs.iter().enumerate() {
            let d = dump_with(&dumps, &format!("awkward-{i}"));
            let mut want = lf(&over_data(&data_of(m)));
            want.push(b'\n'); // smtp-sink ends each dump with an empty line
            assert!(d.as_bytes().ends_with(&want), "{flags:?} {i}:\n{d}");
            assert!(
                d.contains(&format!("X-Mail-Args: <{}>", m.envelope.mail_from)),
                "{d}"
            );
            assert!(
                d.contains(&format!("X-Rcpt-Args: <{}>\n", m.envelope.rcpts[0])),
                "{d}"
            );
            let esmtp = flags.is_empty();
            assert_eq!(d.contains("X-Client-Proto: ESMTP"), esmtp, "{d}");
            let eightbit = data_of(m).iter().any(|&b| b >= 0x80);
            assert_eq!(d.contains("BODY=8BITMIME"), esmtp && eightbit, "{d}");
            // smtp-sink does not offer SIZE.
            assert!(!d.contains("SIZE="), "{d}");
        }
    }
}

/// Each refusal smtp-sink can make, at each step, maps to its verdict; a
/// deferral leaves the rest of the batch untried (the consumer retries from
/// there), a rejection does not.
#[test]
fn smtp_sink_refusals_map_to_verdicts() {
    let mails: Vec<Mail> = (0..2)
        .map(|i| plain(i, &["a@example.com", "b@example.com"]))
        .collect();
    let Some(up) = spool_of(&mails) else { return };
    // -f: 5xx, -r: 4xx, -Q: 421 and close, -q: close without a reply.
    for (flags, want) in [
        (["-f", "MAIL"], "rejected"),
        (["-r", "MAIL"], "deferred"),
        (["-f", "RCPT"], "rejected"),
        (["-r", "RCPT"], "deferred"),
        (["-f", "DATA"], "rejected"),
        (["-r", "DATA"], "deferred"),
        (["-f", "."], "rejected"),
        (["-r", "."], "deferred"),
        (["-Q", "MAIL"], "deferred"),
        (["-q", "RCPT"], "deferred"),
        (["-q", "."], "deferred"),
    ] {
        let Some(next) = PostfixSink::start(&flags) else {
            return;
        };
        let mut sink = sinks::open(&next.url("&timeout=20s")).unwrap();
        let v = with_parcels(&up.msgs, |p| sink.deliver(p)).expect("deliver");
        match want {
            "rejected" => {
                for x in &v {
                    assert!(
                        matches!(x, Verdict::Rejected { rcpts: None, .. }),
                        "{flags:?}: {v:?}"
                    );
                }
            }
            _ => {
                assert!(is_deferred(&v[0]), "{flags:?}: {v:?}");
                assert_eq!(
                    v[1],
                    Verdict::Deferred(
                        "not tried: an earlier parcel in the batch was deferred".into()
                    ),
                    "{flags:?}"
                );
            }
        }
        // Nothing a refusal stopped before the data reached the dump.
        if flags[1] != "." {
            assert!(
                next.dumps().iter().all(|d| !d.contains("X-Seq")),
                "{flags:?}"
            );
        }
    }
}

/// A next hop that closes the connection mid-batch (smtp-sink -M 3 exits
/// on the third message's final dot, before its reply): what it took is
/// `Accepted`, the third and the rest are deferred; a restarted next hop
/// gets them on retry (the sink reconnects by itself), and only the third,
/// whose fate was unknown, may arrive twice (at-least-once).
#[test]
fn peer_closing_mid_batch_defers_the_rest() {
    let mails: Vec<Mail> = (0..6).map(|i| plain(i, &["a@example.com"])).collect();
    let Some(up) = spool_of(&mails) else { return };
    let Some(first) = PostfixSink::start(&["-M", "3"]) else {
        return;
    };
    let url = first.url("&timeout=20s");
    let mut sink = sinks::open(&url).unwrap();
    let v = with_parcels(&up.msgs, |p| sink.deliver(p)).expect("deliver");
    assert_eq!(&v[..2], &[Verdict::Accepted, Verdict::Accepted], "{v:?}");
    assert!(
        matches!(&v[2], Verdict::Deferred(why) if why.contains("closed the connection")),
        "{v:?}"
    );
    assert!(v[3..].iter().all(is_deferred), "{v:?}");
    // A new next hop on the same port: the same sink retries from parcel 2.
    let port = first.addr.port();
    let mut all = first.dumps();
    drop(first);
    let second = restart_sink_on(port);
    let v = with_parcels(&up.msgs[2..], |p| sink.deliver(p)).expect("deliver");
    assert!(v.iter().all(|v| v == &Verdict::Accepted), "{v:?}");
    all.extend(second.dumps());
    for i in 0..6 {
        let n = all
            .iter()
            .filter(|d| d.contains(&format!("\nX-Seq: plain-{i}\n")))
            .count();
        match i {
            2 => assert!((1..=2).contains(&n), "plain-2 arrived {n} times"),
            _ => assert_eq!(n, 1, "plain-{i}"),
        }
    }
}

/// smtp-sink again on `port` (just freed by the one before).
fn restart_sink_on(port: u16) -> PostfixSink {
    let bin = find_tool("smtp-sink").unwrap();
    let dumps = TempDir::new("smtp-sink-dumps");
    std::fs::set_permissions(
        dumps.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(bin);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd
        .arg("-d")
        .arg(dumps.path().join("msg."))
        .arg(addr.to_string())
        .arg("100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    assert!(
        wait_listening(addr, &mut child),
        "smtp-sink again on {addr}"
    );
    PostfixSink { child, addr, dumps }
}

/// A next hop that goes idle-silent on a kept connection (ringmx closes
/// it with 421 after its command timeout): the next batch reconnects and
/// nothing is lost or deferred.
#[test]
fn sink_reconnects_after_the_next_hop_closed_an_idle_connection() {
    let mails: Vec<Mail> = (0..4).map(|i| plain(i, &["a@example.com"])).collect();
    let Some(up) = spool_of(&mails) else { return };
    let mut next = Server::start(&["--domain", "example.com", "--command-timeout", "1s"]);
    let mut sink = sinks::open(&format!("smtp://{}?timeout=20s", next.addr)).unwrap();
    let v = with_parcels(&up.msgs[..2], |p| sink.deliver(p)).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted]);
    // The server's log line for the closed connection.
    let line = next
        .wait_log("conn peer=", STEP)
        .expect("the idle connection closed");
    assert!(line.contains("messages=2"), "{line}");
    let v = with_parcels(&up.msgs[2..], |p| sink.deliver(p)).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted]);
    next.stop();
    let got = next.stored();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].client, got[1].client);
    assert_eq!(got[2].client, got[3].client);
    assert_ne!(got[1].client, got[2].client, "a second connection");
}

/// A `452` for some recipients (ringmx past its --max-recipients, which
/// is at least 100) defers the parcel; the retry goes only to the
/// recipients still owed, so no one gets it twice, and a 550 seen on the
/// way is kept for the verdict. 103 recipients also take two pipelined
/// windows.
#[test]
fn a_4xx_then_success_delivers_each_recipient_once() {
    let mut rcpts: Vec<String> = (0..102).map(|i| format!("r{i}@example.com")).collect();
    rcpts.insert(50, "x@other.org".into());
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mails = vec![mail(
        "s@sender.test",
        &rcpt_refs,
        b"X-Seq: retry\r\n\r\nonce each\r\n",
    )];
    let Some(up) = spool_of(&mails) else { return };
    let mut next = Server::start(&["--domain", "example.com", "--max-recipients", "100"]);
    let mut sink = sinks::open(&format!("smtp://{}?timeout=20s", next.addr)).unwrap();
    let v = with_parcels(&up.msgs, |p| sink.deliver(p)).unwrap();
    assert!(
        matches!(&v[0], Verdict::Deferred(why) if why.contains("452")),
        "{v:?}"
    );
    let v = with_parcels(&up.msgs, |p| sink.deliver(p)).unwrap();
    assert!(
        matches!(&v[0], Verdict::Rejected { rcpts: Some(r), reason }
            if r == &["x@other.org"] && reason.contains("550")),
        "{v:?}"
    );
    next.stop();
    let got: Vec<Stored> = next.stored();
    assert_eq!(got.len(), 2);
    let mut want: Vec<String> = rcpts
        .iter()
        .filter(|r| r.ends_with("@example.com"))
        .cloned()
        .collect();
    let tail = want.split_off(100);
    assert_eq!(got[0].rcpts, want);
    assert_eq!(got[1].rcpts, tail);
    for g in &got {
        assert_eq!(g.body, data_of(&up.msgs[0]));
    }
}

/// A BINARYMIME body (bare LF and CR, NUL, no final CRLF) goes by BDAT to
/// a next hop offering CHUNKING and BINARYMIME, and arrives byte-exact; an
/// SMTPUTF8 envelope goes where SMTPUTF8 is offered and is refused before
/// sending where it is not (smtp-sink).
#[test]
fn binarymime_by_bdat_and_smtputf8_where_offered() {
    let mails = vec![
        Mail {
            bdat: true,
            opts: vec!["BODY=BINARYMIME"],
            ..mail(
                "bin@sender.test",
                &["bin@example.com"],
                b"X-Seq: binary\r\n\r\nbare\nLF\rCR \x00 NUL\n.\nno final CRLF",
            )
        },
        Mail {
            opts: vec!["SMTPUTF8"],
            ..mail(
                "j\u{f6}rg@sender.test",
                &["zo\u{eb}@example.com"],
                b"X-Seq: utf8\r\n\r\nhello\r\n",
            )
        },
    ];
    let Some(up) = spool_of(&mails) else { return };
    let mut next = Server::start(&["--domain", "example.com"]);
    let mut sink = sinks::open(&format!("smtp://{}?timeout=20s", next.addr)).unwrap();
    let v = with_parcels(&up.msgs, |p| sink.deliver(p)).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted]);
    next.stop();
    let got = next.stored();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, data_of(&up.msgs[0]), "{}", got[0].text());
    assert!(
        got[0].mail_params.contains("BODY=BINARYMIME"),
        "{}",
        got[0].mail_params
    );
    assert_eq!(got[1].mail_from, "j\u{f6}rg@sender.test");
    assert_eq!(got[1].rcpts, ["zo\u{eb}@example.com"]);
    assert!(
        got[1].mail_params.contains("SMTPUTF8"),
        "{}",
        got[1].mail_params
    );
    let Some(plain) = PostfixSink::start(&[]) else {
        return;
    };
    let mut sink = sinks::open(&plain.url("&timeout=20s")).unwrap();
    let v = with_parcels(&up.msgs[1..], |p| sink.deliver(p)).unwrap();
    assert!(
        matches!(&v[0], Verdict::Rejected { rcpts: None, reason } if reason.contains("SMTPUTF8")),
        "{v:?}"
    );
    assert!(plain.dumps().is_empty());
}

/// A next hop that accepts the connection and never answers, and one that
/// stalls after DATA: bounded by the URL's timeout, never a hang. Nothing
/// handed over: `Err`; a stall mid-transaction: `Deferred`.
#[test]
fn a_silent_peer_times_out() {
    let mails = vec![plain(0, &["a@example.com"])];
    let Some(up) = spool_of(&mails) else { return };
    // Accepts (the kernel does) and never writes a greeting.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sink = sinks::open(&format!(
        "smtp://{}?timeout=1s",
        silent.local_addr().unwrap()
    ))
    .unwrap();
    let e = with_parcels(&up.msgs, |p| sink.deliver(p)).expect_err("no greeting");
    assert!(
        e.0.contains("greeting") && e.0.contains("no reply within 1s"),
        "{e}"
    );
    // smtp-sink -w: waits before answering DATA.
    let Some(slow) = PostfixSink::start(&["-w", "60"]) else {
        return;
    };
    let mut sink = sinks::open(&slow.url("&timeout=1s")).unwrap();
    let v = with_parcels(&up.msgs, |p| sink.deliver(p)).unwrap();
    assert!(
        matches!(&v[0], Verdict::Deferred(why) if why.contains("no reply within 1s")),
        "{v:?}"
    );
    drop(silent);
}

/// Dovecot's LMTP server, started for one test with a generated config:
/// a TCP listener on a free port, a Unix socket, Maildirs under a temp dir,
/// users and quotas from a passwd-file.
struct Dovecot {
    child: Child,
    dir: TempDir,
    port: u16,
    /// `uid:gid` Dovecot delivers as.
    owner: String,
}

impl Dovecot {
    fn start(users: &str) -> Option<Dovecot> {
        let bin = require_tool("dovecot", "dovecot-lmtpd")?;
        if !Path::new("/usr/lib/dovecot/lmtp").exists() {
            skip("Dovecot's LMTP server is missing (Debian package dovecot-lmtpd)");
            return None;
        }
        let dir = TempDir::new("dovecot");
        let mail = dir.path().join("mail");
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::create_dir_all(&mail).unwrap();
        // Dovecot refuses to deliver as root: as root, deliver as its own
        // `dovecot` user; otherwise as ourselves.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let (user, uid, gid) = if root {
            let id = |flag: &str| {
                let o = Command::new("id").args([flag, "dovecot"]).output().unwrap();
                String::from_utf8(o.stdout).unwrap().trim().to_owned()
            };
            ("dovecot".to_string(), id("-u"), id("-g"))
        } else {
            let id = |flag: &str| {
                let o = Command::new("id").arg(flag).output().unwrap();
                String::from_utf8(o.stdout).unwrap().trim().to_owned()
            };
            (id("-un"), id("-u"), id("-g"))
        };
        if root {
            let ok = Command::new("chown")
                .arg(format!("{uid}:{gid}"))
                .arg(&mail)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let d = dir.path().display();
        std::fs::write(dir.path().join("users"), users).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let conf = format!(
                "base_dir = {d}/run\n\
                 state_dir = {d}/state\n\
                 instance_name = ringmx-test-{port}\n\
                 log_path = {d}/dovecot.log\n\
                 protocols = lmtp\n\
                 listen = 127.0.0.1\n\
                 ssl = no\n\
                 first_valid_uid = 1\n\
                 default_internal_user = {user}\n\
                 default_internal_group = {user}\n\
                 default_login_user = {user}\n\
                 mail_location = maildir:{d}/mail/%n\n\
                 mail_plugins = quota\n\
                 # A full mailbox is a 552 after the data (a 452 with yes).\n\
                 quota_full_tempfail = no\n\
                 plugin {{\n  quota = count:User quota\n  quota_vsizes = yes\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = username_format=%n {d}/users\n  \
                   default_fields = uid={uid} gid={gid} home={d}/mail/%n\n}}\n\
                 passdb {{\n  driver = passwd-file\n  args = username_format=%n {d}/users\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  \
                   unix_listener lmtp-test {{\n    mode = 0666\n  }}\n}}\n"
            );
            std::fs::write(dir.path().join("dovecot.conf"), conf).unwrap();
            let mut child = Command::new(&bin)
                .arg("-F")
                .arg("-c")
                .arg(dir.path().join("dovecot.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dovecot");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            if wait_listening(addr, &mut child) {
                let owner = format!("{uid}:{gid}");
                return Some(Dovecot {
                    child,
                    dir,
                    port,
                    owner,
                });
            }
        }
        panic!("dovecot did not start");
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/lmtp-test")
    }

    /// Makes `user`'s Maildir unusable (a directory no one may enter):
    /// delivering to it fails with a temporary error after the data.
    fn block(&self, user: &str) {
        let home = self.dir.path().join("mail").join(user);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
    }

    /// Undoes [`Dovecot::block`]: the directory belongs to the delivering
    /// user again.
    fn unblock(&self, user: &str) {
        let home = self.dir.path().join("mail").join(user);
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let ok = Command::new("chown")
            .arg(&self.owner)
            .arg(&home)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// The messages in `user`'s Maildir.
    fn mailbox(&self, user: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(dir) = std::fs::read_dir(self.dir.path().join("mail").join(user).join(sub))
            else {
                continue;
            };
            for e in dir {
                let mut v = Vec::new();
                std::fs::File::open(e.unwrap().path())
                    .unwrap()
                    .read_to_end(&mut v)
                    .unwrap();
                out.push(v);
            }
        }
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its children too.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BIG: &str = "userdb_quota_rule=*:storage=100M";
const TINY: &str = "userdb_quota_rule=*:storage=1K";

/// LMTP answers per recipient after the data. To four recipients: an
/// unknown user (550 at RCPT), a full mailbox (552 after the data), a
/// mailbox Dovecot cannot open (4xx after the data) and one that takes it:
/// the parcel is `Deferred`; once the mailbox can be opened, the retry goes
/// to that user alone and the verdict names the two refused ones. Over TCP
/// and over the Unix socket.
#[test]
fn lmtp_per_recipient_results_and_retry_with_dovecot() {
    // Over the 1K quota, in lines a server takes.
    let body = format!("{}\r\n", "x".repeat(70)).repeat(30);
    let mails = vec![
        mail(
            "s@sender.test",
            &[
                "alice@example.com",
                "carol@example.com",
                "bob@example.com",
                "dave@example.com",
            ],
            format!("X-Seq: lmtp-mixed\r\nSubject: to four\r\n\r\n.{body}").as_bytes(),
        ),
        mail(
            "",
            &["alice@example.com"],
            b"X-Seq: lmtp-unix\r\n\r\n.\r\n..\r\nvia the socket\r\n",
        ),
    ];
    let Some(up) = spool_of(&mails) else { return };
    let users = format!("alice:::::::{BIG}\nbob:::::::{TINY}\ndave:::::::{BIG}\n");
    let Some(dc) = Dovecot::start(&users) else {
        return;
    };
    dc.block("dave");
    let mut sink = sinks::open(&format!("lmtp://127.0.0.1:{}?timeout=20s", dc.port)).unwrap();
    let v = with_parcels(&up.msgs[..1], |p| sink.deliver(p)).unwrap();
    assert!(
        matches!(&v[0], Verdict::Deferred(why) if why.starts_with("data for <dave@example.com>: 4")),
        "{v:?}\n{}",
        dc.log()
    );
    assert_eq!(dc.mailbox("alice").len(), 1);
    dc.unblock("dave");
    assert_eq!(dc.mailbox("dave").len(), 0);
    let v = with_parcels(&up.msgs[..1], |p| sink.deliver(p)).unwrap();
    let Verdict::Rejected {
        rcpts: Some(r),
        reason,
    } = &v[0]
    else {
        panic!("{v:?}\n{}", dc.log())
    };
    assert_eq!(r, &["carol@example.com", "bob@example.com"]);
    assert!(reason.contains("550"), "{reason}");
    let want = lf(&data_of(&up.msgs[0]));
    for user in ["alice", "dave"] {
        let got = dc.mailbox(user);
        assert_eq!(got.len(), 1, "{user}: once");
        assert!(
            got[0].ends_with(&want),
            "{user}: {}",
            String::from_utf8_lossy(&got[0])
        );
    }
    assert_eq!(dc.mailbox("bob").len(), 0);
    let mut unix =
        sinks::open(&format!("lmtp:unix:{}?timeout=20s", dc.socket().display())).unwrap();
    let v = with_parcels(&up.msgs[1..], |p| unix.deliver(p)).unwrap();
    assert_eq!(v, [Verdict::Accepted], "{}", dc.log());
    let want = lf(&data_of(&up.msgs[1]));
    let alice = dc.mailbox("alice");
    assert_eq!(alice.len(), 2);
    assert!(alice.iter().any(|m| m.ends_with(&want)), "{alice:?}");
    assert!(
        alice.iter().any(|m| m.starts_with(b"Return-Path: <>")),
        "the null sender kept"
    );
}

/// URLs the sink cannot use fail at open, saying what to write.
#[test]
fn bad_urls_fail_at_open() {
    for url in [
        "smtp://",
        "lmtp:unix:",
        "smtp://h?timeout=0",
        "smtp://h:70000",
    ] {
        let Err(e) = sinks::open(url) else {
            panic!("{url} opened")
        };
        assert!(e.0.contains("smtp://host[:port]"), "{url}: {e}");
    }
    let Err(e) = sinks::open("gopher://h") else {
        panic!("gopher opened")
    };
    assert!(e.0.contains("smtp") && e.0.contains("lmtp"), "{e}");
}

/// Not a test: a figure. Ships 2,000 one-recipient parcels (about 300
/// bytes each) to smtp-sink, pipelined over one connection, and prints the
/// rate. `cargo test --test sink_smtp -- --ignored --nocapture throughput`
#[test]
#[ignore]
fn throughput_to_smtp_sink() {
    let mails: Vec<Mail> = (0..2000).map(|i| plain(i, &["a@example.com"])).collect();
    let Some(up) = spool_of(&mails) else { return };
    let Some(next) = PostfixSink::start(&[]) else {
        return;
    };
    let mut sink = sinks::open(&format!("smtp://{}?timeout=20s", next.addr)).unwrap();
    let started = Instant::now();
    let v = with_parcels(&up.msgs, |p| ship(sink.as_mut(), p));
    let took = started.elapsed();
    assert!(v.iter().all(|v| v == &Verdict::Accepted));
    let bytes: usize = up.msgs.iter().map(|m| data_of(m).len()).sum();
    eprintln!(
        "{} parcels, {bytes} bytes in {took:?}: {:.0} parcels/s",
        v.len(),
        v.len() as f64 / took.as_secs_f64()
    );
}
