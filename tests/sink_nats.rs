//! The NATS JetStream sink against real `nats-server -js` processes (a
//! single node and a 3-node cluster on loopback, Debian package
//! `nats-server`), fed with Parcels built from a real spool: `ringmx serve`
//! takes mail from Python's smtplib, stops, and the spool is read back.
//! What arrived is read with an async-nats pull consumer.

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bumpalo::Bump;
use common::{require_tool, Server};
use nats::{
    cluster, free_port, js, nats_bin, read_stream, runtime, single, single_with, stream_count,
    wait_jetstream, Got, Nats, WAIT,
};
use ringmx::outlet::sinks::nats::NatsSink;
use ringmx::outlet::{sinks, HeaderFields, Parcel, Sink, Verdict};
use ringmx::spool::{SpoolReader, StoredMessage};

// ---- mail into a real spool -----------------------------------------------

/// One message to send: sender, recipients, the data as sent.
struct Mail {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

/// Python's smtplib sends every mail over one connection.
const SEND: &str = r#"
import base64, json, smtplib, sys
mails = json.load(open(sys.argv[3]))
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=60) as s:
    for m in mails:
        s.sendmail(m["from"], m["to"], base64.b64decode(m["data"]))
"#;

/// Starts `ringmx serve`, sends `mails` with smtplib, stops the server and
/// returns it (its spool lives as long as it does) and what it stored, in
/// commit order. `None`: python3 is missing (skipped).
fn spool_with(mails: &[Mail]) -> Option<(Server, Vec<StoredMessage>)> {
    let python = require_tool("python3", "python3")?;
    // Every recipient domain is one the server accepts mail for.
    let domains: BTreeSet<String> = mails
        .iter()
        .flat_map(|m| &m.to)
        .filter_map(|t| t.rsplit_once('@'))
        .map(|(_, d)| d.to_lowercase())
        .collect();
    let mut args = vec!["--node-id", "mx1.test"];
    for d in &domains {
        args.extend(["--domain", d]);
    }
    let mut server = Server::start(&args);
    let json = std::path::PathBuf::from(format!("{}.json", server.spool.path().display()));
    let list: Vec<String> = mails
        .iter()
        .map(|m| {
            format!(
                r#"{{"from":{:?},"to":[{}],"data":"{}"}}"#,
                m.from,
                m.to.iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(","),
                base64(&m.data)
            )
        })
        .collect();
    std::fs::write(&json, format!("[{}]", list.join(","))).unwrap();
    let out = Command::new(python)
        .args(["-c", SEND])
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg(&json)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "smtplib failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    server.stop();
    let reader = SpoolReader::open(server.spool.path()).unwrap();
    let msgs: Vec<StoredMessage> = reader.messages().unwrap().map(|m| m.unwrap()).collect();
    assert_eq!(msgs.len(), mails.len());
    Some((server, msgs))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A stored message as the consumer hands it on: key, data, header fields.
struct Built {
    key: String,
    data: Vec<u8>,
}

fn built(msgs: &[StoredMessage]) -> Vec<Built> {
    msgs.iter()
        .map(|m| {
            let mut data = m.received.clone();
            data.extend_from_slice(&m.body_bytes().unwrap());
            Built {
                key: format!("{}.{}", m.node_id, m.id),
                data,
            }
        })
        .collect()
}

/// Delivers `msgs[range]` as one batch.
fn deliver(
    sink: &mut dyn Sink,
    msgs: &[StoredMessage],
    b: &[Built],
) -> Result<Vec<Verdict>, ringmx::outlet::SinkError> {
    let bump = Bump::new();
    let headers: Vec<HeaderFields<'_>> = b
        .iter()
        .map(|x| HeaderFields::parse(&bump, &x.data))
        .collect();
    let parcels: Vec<Parcel<'_>> = msgs
        .iter()
        .zip(b)
        .zip(&headers)
        .map(|((m, x), h)| Parcel {
            key: &x.key,
            msg: m,
            data: &x.data,
            headers: h,
        })
        .collect();
    let v = sink.deliver(&parcels);
    if let Ok(v) = &v {
        assert_eq!(v.len(), parcels.len(), "one verdict per parcel");
    }
    v
}

/// What the consumer loop does: batches of `max_batch`, moving past the
/// Accepted prefix and retrying from the first parcel that is not, until
/// all are Accepted. `after_batch` is told how many batches were tried so
/// far. Returns how many batches were retried.
fn ship_all(
    sink: &mut dyn Sink,
    msgs: &[StoredMessage],
    b: &[Built],
    after_batch: &dyn Fn(usize),
) -> usize {
    let mut pos = 0;
    let mut retries = 0;
    let mut batches = 0;
    while pos < msgs.len() {
        let end = (pos + sink.max_batch()).min(msgs.len());
        match deliver(sink, &msgs[pos..end], &b[pos..end]) {
            Ok(v) => {
                let ok = v.iter().take_while(|v| **v == Verdict::Accepted).count();
                if ok < v.len() {
                    assert!(
                        matches!(v[ok], Verdict::Deferred(_)),
                        "nothing here is refused for good: {:?}",
                        v[ok]
                    );
                    eprintln!("retry from {}: {:?}", pos + ok, v[ok]);
                    retries += 1;
                }
                pos += ok;
            }
            Err(e) => {
                eprintln!("retry from {pos}: {e}");
                retries += 1;
            }
        }
        if retries > 0 && pos < end {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(retries < 100, "no progress at {pos}");
        batches += 1;
        after_batch(batches);
    }
    retries
}

fn mail(i: usize, to: &[&str], extra_headers: &str, body: &str) -> Mail {
    Mail {
        from: format!("sender{i}@example.org"),
        to: to.iter().map(|s| s.to_string()).collect(),
        data: format!(
            "From: Sender {i} <sender{i}@example.org>\r\nTo: {}\r\nSubject: message {i}\r\nMessage-ID: <{i}@example.org>\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\n{extra_headers}\r\n{body}",
            to.join(", ")
        )
        .into_bytes(),
    }
}

// ---- the tests --------------------------------------------------------------

/// Every message arrives once, payload byte-exact, with the envelope and
/// the selected header fields as headers; delivering the same batch again
/// stores nothing new (the stream's duplicate window drops it).
#[test]
fn every_message_arrives_once_with_its_headers() {
    let Some(bin) = nats_bin() else { return };
    let mut mails: Vec<Mail> = (0..20)
        .map(|i| {
            mail(
                i,
                &["rcpt@example.com", "Other@Example.NET"],
                "",
                &format!("body {i}\r\n"),
            )
        })
        .collect();
    // Folded, 8-bit, repeated and CR-bearing fields, a null sender, a dot line.
    mails.push(Mail {
        from: String::new(),
        to: vec!["x@example.com".into()],
        data: b"From: a@example.org\r\nTo: one@example.com\r\nTo: two@example.com\r\nSubject: folded\r\n  onto two lines\r\nList-Id: <list.example.org>\r\nAuto-Submitted: auto-replied\r\nX-Bin: caf\xc3\xa9 \xff\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n".to_vec(),
    });
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);
    let nats = single(&bin);
    let rt = runtime();
    let url = format!(
        "nats://{}/mail.{{node}}.{{shard}}.in?stream=T1&batch=8",
        nats.url()
    );
    let mut sink = NatsSink::open(&url).unwrap();
    assert_eq!(sink.max_batch(), 8);
    assert_eq!(ship_all(&mut sink, &msgs, &b, &|_| {}), 0);
    assert_eq!(sink.duplicates(), 0);

    let js = rt.block_on(js(&nats.url()));
    let got = rt.block_on(read_stream(&js, "T1"));
    assert_eq!(got.len(), msgs.len());
    for ((g, m), x) in got.iter().zip(&msgs).zip(&b) {
        assert_eq!(g.subject, format!("mail.mx1_test.{}.in", m.id.shard()));
        assert_eq!(g.payload, x.data, "payload byte-exact");
        assert_eq!(g.one("Nats-Msg-Id"), x.key);
        assert_eq!(g.one("Ringmx-Queue-Id"), m.id.to_string());
        assert_eq!(g.one("Ringmx-Node"), "mx1.test");
        assert_eq!(g.one("Ringmx-Arrival"), m.envelope.arrival_unix.to_string());
        assert_eq!(
            g.one("Ringmx-Client"),
            m.envelope
                .client
                .expect("the server knows the client")
                .to_string()
        );
        assert_eq!(g.headers["Ringmx-Rcpt-To"], m.envelope.rcpts);
        assert!(!g.headers.contains_key("Ringmx-Object"));
    }
    for (i, g) in got[..20].iter().enumerate() {
        assert_eq!(g.one("Ringmx-Mail-From"), format!("sender{i}@example.org"));
        assert_eq!(g.one("Ringmx-Hdr-Subject"), format!("message {i}"));
        assert_eq!(g.one("Ringmx-Hdr-Message-ID"), format!("<{i}@example.org>"));
        assert_eq!(g.one("Ringmx-Hdr-Date"), "Mon, 30 Nov 2026 08:00:00 +0000");
        assert_eq!(
            g.one("Ringmx-Hdr-From"),
            format!("Sender {i} <sender{i}@example.org>")
        );
        assert_eq!(
            g.one("Ringmx-Hdr-To"),
            "rcpt@example.com, Other@Example.NET"
        );
    }
    let odd = &got[20];
    assert_eq!(odd.one("Ringmx-Mail-From"), "<>");
    assert_eq!(odd.one("Ringmx-Hdr-Subject"), "folded  onto two lines");
    assert_eq!(
        odd.headers["Ringmx-Hdr-To"],
        ["one@example.com", "two@example.com"]
    );
    assert_eq!(odd.one("Ringmx-Hdr-List-Id"), "<list.example.org>");
    assert_eq!(odd.one("Ringmx-Hdr-Auto-Submitted"), "auto-replied");
    assert!(
        !odd.headers.contains_key("Ringmx-Hdr-X-Bin"),
        "only the listed fields"
    );

    // The same batches again: all Accepted, each ack a duplicate, nothing
    // stored twice.
    assert_eq!(ship_all(&mut sink, &msgs, &b, &|_| {}), 0);
    assert_eq!(sink.duplicates(), msgs.len() as u64);
    assert_eq!(
        rt.block_on(stream_count(&js, "T1")),
        Some(msgs.len() as u64)
    );
}

/// `{rcpt_domain}`: one publish per distinct recipient domain, each with
/// its own key and its own recipients, all stored (none deduplicated).
#[test]
fn per_domain_subjects_store_one_message_per_domain() {
    let Some(bin) = nats_bin() else { return };
    let mails = [
        mail(
            0,
            &["a@one.example", "b@Two.Example", "c@ONE.example"],
            "",
            "x\r\n",
        ),
        mail(1, &["d@two.example"], "", "y\r\n"),
        mail(2, &["postmaster"], "", "z\r\n"),
    ];
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);
    let nats = single(&bin);
    let rt = runtime();
    let mut sink = sinks::open(&format!("nats://{}/mail.in.{{rcpt_domain}}", nats.url())).unwrap();
    let v = deliver(sink.as_mut(), &msgs, &b).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted, Verdict::Accepted]);

    let js = rt.block_on(js(&nats.url()));
    let got = rt.block_on(read_stream(&js, "RINGMX"));
    let seen: Vec<(&str, &str, &[String])> = got
        .iter()
        .map(|g| {
            (
                g.subject.as_str(),
                g.one("Nats-Msg-Id"),
                g.headers["Ringmx-Rcpt-To"].as_slice(),
            )
        })
        .collect();
    let k0 = &b[0].key;
    let k1 = &b[1].key;
    let k2 = &b[2].key;
    assert_eq!(
        seen,
        [
            (
                "mail.in.one.example",
                format!("{k0}:one.example").as_str(),
                &["a@one.example".to_owned(), "c@ONE.example".to_owned()][..]
            ),
            (
                "mail.in.two.example",
                format!("{k0}:two.example").as_str(),
                &["b@Two.Example".to_owned()][..]
            ),
            (
                "mail.in.two.example",
                format!("{k1}:two.example").as_str(),
                &["d@two.example".to_owned()][..]
            ),
            (
                "mail.in._",
                format!("{k2}:_").as_str(),
                &["postmaster".to_owned()][..]
            ),
        ]
    );
    assert!(got
        .iter()
        .zip([0, 0, 1, 2])
        .all(|(g, i)| g.payload == b[i].data));

    // Again: every publish is a duplicate now.
    let v = deliver(sink.as_mut(), &msgs, &b).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted, Verdict::Accepted]);
    assert_eq!(rt.block_on(stream_count(&js, "RINGMX")), Some(4));
}

/// Over the server's max payload, the data goes to the object store under
/// the parcel's key and the message names it; smaller ones stay inline.
#[test]
fn large_message_goes_to_the_object_store() {
    let Some(bin) = nats_bin() else { return };
    let big_body: String = (0..4000)
        .map(|i| format!("line {i:05} of a message too big for one NATS message\r\n"))
        .collect();
    let mails = [
        mail(0, &["a@example.com"], "", "small\r\n"),
        mail(1, &["b@example.com", "b@example.net"], "", &big_body),
        mail(2, &["c@example.com"], "", "small too\r\n"),
    ];
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);
    assert!(b[1].data.len() > 200_000);
    let nats = single_with(&bin, "max_payload: 65536\n");
    let rt = runtime();
    let mut sink = sinks::open(&format!(
        "nats://{}/mail.in.{{rcpt_domain}}?stream=BIG&bucket=BODIES",
        nats.url()
    ))
    .unwrap();
    let v = deliver(sink.as_mut(), &msgs, &b).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted, Verdict::Accepted]);

    let js = rt.block_on(js(&nats.url()));
    let got = rt.block_on(read_stream(&js, "BIG"));
    // The big one per domain: two small messages naming one object.
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].payload, b[0].data);
    assert_eq!(got[3].payload, b[2].data);
    for (g, domain) in got[1..3].iter().zip(["example.com", "example.net"]) {
        assert_eq!(g.subject, format!("mail.in.{domain}"));
        assert!(g.payload.is_empty());
        assert_eq!(g.one("Ringmx-Object"), format!("BODIES/{}", b[1].key));
        assert_eq!(g.one("Ringmx-Hdr-Subject"), "message 1");
    }
    let stored = rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let store = js.get_object_store("BODIES").await.unwrap();
        let mut obj = store.get(&b[1].key).await.unwrap();
        let mut out = Vec::new();
        obj.read_to_end(&mut out).await.unwrap();
        out
    });
    assert!(stored == b[1].data, "the object holds the data byte-exact");

    // Again: the object is put again (same name), the message deduplicated.
    let v = deliver(sink.as_mut(), &msgs, &b).unwrap();
    assert_eq!(v, [Verdict::Accepted, Verdict::Accepted, Verdict::Accepted]);
    assert_eq!(rt.block_on(stream_count(&js, "BIG")), Some(4));
}

/// A 3-node cluster, a stream with 3 replicas; the node the sink is
/// connected to is SIGKILLed while batches are in flight. Every message
/// ends up stored exactly once: the sink defers what was not acked, the
/// consumer retries it, the duplicate window drops what had landed.
#[test]
fn cluster_node_killed_mid_run_loses_nothing() {
    let Some(bin) = nats_bin() else { return };
    let mails: Vec<Mail> = (0..300)
        .map(|i| {
            mail(
                i,
                &["rcpt@example.com"],
                "",
                &format!("{}\r\n", "x".repeat(900)),
            )
        })
        .collect();
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);
    let mut nodes = cluster(&bin);
    let rt = runtime();
    let survivor = rt.block_on(js(&nodes[1].url()));
    rt.block_on(wait_jetstream(&survivor));

    // Only n1 in the URL: the sink connects there and, once n1 is gone,
    // reconnects to the servers n1 told it about.
    let url = format!(
        "nats://{}/mail.in?stream=R3&replicas=3&batch=10&timeout=5",
        nodes[0].url()
    );
    let mut sink = NatsSink::open(&url).unwrap();
    // The kill comes from another thread once 5 batches are done, so it
    // may land while one is in flight; batch 9 waits for it, so it always
    // lands mid-run.
    let done = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    let mut n1 = nodes.remove(0);
    let (retries, killed_at) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let until = Instant::now() + WAIT * 2;
            while done.load(Ordering::SeqCst) < 5 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            n1.kill();
            killed.store(true, Ordering::SeqCst);
            done.load(Ordering::SeqCst)
        });
        let r = ship_all(&mut sink, &msgs, &b, &|n| {
            done.store(n, Ordering::SeqCst);
            let until = Instant::now() + WAIT;
            while n == 8 && !killed.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        (r, killer.join().unwrap())
    });
    assert!(killed.load(Ordering::SeqCst));
    eprintln!(
        "killed after batch {killed_at}; batches retried: {retries}; publishes the stream had already (duplicates): {}",
        sink.duplicates()
    );

    let got = rt.block_on(read_stream(&survivor, "R3"));
    let keys: BTreeSet<&str> = got.iter().map(|g| g.one("Nats-Msg-Id")).collect();
    assert_eq!(keys.len(), got.len(), "no key stored twice");
    assert_eq!(got.len(), msgs.len(), "every message stored once");
    let want: BTreeSet<&str> = b.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys, want);
    let by_key: BTreeMap<&str, &Got> = got.iter().map(|g| (g.one("Nats-Msg-Id"), g)).collect();
    assert!(b.iter().all(|x| by_key[x.key.as_str()].payload == x.data));
}

/// No server: connecting fails within its timeout, an error and no hang.
/// A server that dies between batches: the next batch fails the same way;
/// once it is back, the sink reconnects by itself and what was stored
/// before is not stored again.
#[test]
fn server_down_is_an_error_not_a_hang() {
    let Some(bin) = nats_bin() else { return };
    let mails: Vec<Mail> = (0..6)
        .map(|i| mail(i, &["r@example.com"], "", "b\r\n"))
        .collect();
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);

    let nobody = free_port();
    let mut sink = sinks::open(&format!(
        "nats://127.0.0.1:{nobody}/mail.in?connect_timeout=1&timeout=2"
    ))
    .unwrap();
    let e = deliver(sink.as_mut(), &msgs, &b).unwrap_err();
    assert!(e.0.contains("connect"), "{e}");

    let mut nats = single(&bin);
    let mut sink = sinks::open(&format!(
        "nats://{}/mail.in?connect_timeout=1&timeout=2",
        nats.url()
    ))
    .unwrap();
    let v = deliver(sink.as_mut(), &msgs[..3], &b[..3]).unwrap();
    assert!(v.iter().all(|v| *v == Verdict::Accepted));
    nats.kill();
    match deliver(sink.as_mut(), &msgs, &b) {
        Err(e) => eprintln!("while down: {e}"),
        Ok(v) => assert!(v.iter().all(|v| matches!(v, Verdict::Deferred(_))), "{v:?}"),
    }
    nats.start();
    let until = Instant::now() + WAIT;
    let v = loop {
        match deliver(sink.as_mut(), &msgs, &b) {
            Ok(v) if v.iter().all(|v| *v == Verdict::Accepted) => break v,
            other => {
                assert!(Instant::now() < until, "never recovered: {other:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(v.len(), 6);
    let rt = runtime();
    let js = rt.block_on(js(&nats.url()));
    assert_eq!(rt.block_on(stream_count(&js, "RINGMX")), Some(6));
}

/// A stream that cannot take the subjects: an error that says what to do,
/// whether it exists over other subjects or cannot be created.
#[test]
fn a_stream_that_cannot_take_the_subject_is_a_clear_error() {
    let Some(bin) = nats_bin() else { return };
    let mails = [mail(0, &["r@example.com"], "", "b\r\n")];
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);
    let nats = single(&bin);
    let rt = runtime();
    let js = rt.block_on(js(&nats.url()));
    rt.block_on(js.create_stream(jetstream::stream::Config {
        name: "OTHER".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    }))
    .unwrap();

    let mut sink = sinks::open(&format!(
        "nats://{}/mail.in?stream=OTHER&timeout=2",
        nats.url()
    ))
    .unwrap();
    let e = deliver(sink.as_mut(), &msgs, &b).unwrap_err();
    assert!(e.0.contains("does not take these subjects"), "{e}");
    assert!(e.0.contains("\"mail.in\""), "{e}");

    // Three replicas on a single node: the stream cannot be created.
    let mut sink = sinks::open(&format!(
        "nats://{}/mail.in?stream=R3&replicas=3&timeout=2",
        nats.url()
    ))
    .unwrap();
    let e = deliver(sink.as_mut(), &msgs, &b).unwrap_err();
    assert!(e.0.contains("could not be created"), "{e}");
    assert_eq!(rt.block_on(stream_count(&js, "OTHER")), Some(0));
}

/// Bad URLs fail at open, naming what to write.
#[test]
fn bad_urls_fail_at_open() {
    for (url, want) in [
        ("nats://127.0.0.1:4222", "no subject"),
        ("nats://127.0.0.1:4222/a.{bogus}", "placeholder"),
        ("nats://127.0.0.1:4222/a?stream=x.y", "stream="),
    ] {
        let e = sinks::open(url).err().expect(url);
        assert!(e.0.contains(want), "{url}: {e}");
    }
}

/// Throughput of 1 KiB messages to a single node (R1) and to the 3-node
/// cluster (R3), median of 3 runs each. A measurement, not a check: run by
/// hand (README.md, "Shipping to NATS JetStream", has the command).
#[test]
#[ignore = "a measurement; run by hand with --ignored --nocapture"]
fn throughput_1k() {
    let Some(bin) = nats_bin() else { return };
    let n: usize = std::env::var("RINGMX_NATS_BENCH_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // Parcels per batch (the sink's default, 64, unless set).
    let batch: usize = std::env::var("RINGMX_NATS_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    // 1 KiB of data per message as shipped: Received: line, header, body.
    let mails: Vec<Mail> = (0..n)
        .map(|i| {
            mail(
                i,
                &["rcpt@example.com"],
                "",
                &format!("{}\r\n", "x".repeat(700)),
            )
        })
        .collect();
    let Some((_server, msgs)) = spool_with(&mails) else {
        return;
    };
    let b = built(&msgs);
    let bytes: usize = b.iter().map(|x| x.data.len()).sum();
    eprintln!(
        "{n} messages, {} bytes each on average, batches of {batch}",
        bytes / n
    );

    // CPU seconds so far: this process (the sink), and the nats-servers.
    let own_cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    let servers_cpu = |nodes: &[&Nats]| -> f64 {
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        nodes
            .iter()
            .filter_map(|n| n.pid())
            .map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                // Fields 14 and 15 (utime, stime), counted after the ")"
                // that ends the command name.
                let after = &stat[stat.rfind(')').unwrap() + 2..];
                let f: Vec<&str> = after.split(' ').collect();
                (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tick
            })
            .sum()
    };
    let measure = |label: &str, hosts: &str, params: &str, nodes: &[&Nats]| {
        let mut rates = Vec::new();
        let mut cpu = Vec::new();
        for run in 0..3 {
            // A stream and subject of their own per run, so each starts empty.
            let url = format!(
                "nats://{hosts}/bench.{label}{run}?stream={label}{run}&batch={batch}&{params}"
            );
            let mut sink = sinks::open(&url).unwrap();
            // Connect and create the stream outside the clock.
            deliver(sink.as_mut(), &msgs[..1], &b[..1]).unwrap();
            let (own0, srv0) = (own_cpu(), servers_cpu(nodes));
            let t = Instant::now();
            assert_eq!(ship_all(sink.as_mut(), &msgs, &b, &|_| {}), 0);
            let s = t.elapsed().as_secs_f64();
            rates.push((n as f64 / s, bytes as f64 / s / 1e6));
            cpu.push((own_cpu() - own0, servers_cpu(nodes) - srv0));
        }
        let (own, srv) = cpu.iter().fold((0.0, 0.0), |a, c| (a.0 + c.0, a.1 + c.1));
        eprintln!(
            "{label}: CPU per message, sink {:.1} us, nats-server(s) {:.1} us",
            own / (3 * n) as f64 * 1e6,
            srv / (3 * n) as f64 * 1e6
        );
        rates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (m, mb) = rates[1];
        eprintln!(
            "{label}: median {m:.0} msgs/s, {mb:.1} MB/s (runs: {})",
            rates
                .iter()
                .map(|r| format!("{:.0}", r.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let solo = single(&bin);
    measure("R1", &solo.url(), "replicas=1", &[&solo]);
    drop(solo);
    let nodes = cluster(&bin);
    let rt = runtime();
    rt.block_on(wait_jetstream(&rt.block_on(js(&nodes[0].url()))));
    let all: Vec<String> = nodes.iter().map(Nats::url).collect();
    let refs: Vec<&Nats> = nodes.iter().collect();
    measure("R3", &all.join(","), "replicas=3", &refs);
}
