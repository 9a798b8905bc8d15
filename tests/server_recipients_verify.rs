//! The `verify` recipient policy (issue 17): a cached callout to the next
//! hop (`MAIL FROM:<>`, `RCPT TO`, `QUIT`; no mail sent), against real next
//! hops: a second `ringmx serve` with a recipient map (it answers
//! `550 5.1.1` for unknown recipients) and Postfix's `smtp-sink` for
//! temporary failures and a hop that does not answer.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Server, TempDir, STEP};

/// `ringmx serve` accepting relay.example, verified at `hop`.
fn front(hop: SocketAddr, extra: &[&str]) -> Server {
    let hop = hop.to_string();
    let mut args = vec![
        "--domain",
        "relay.example",
        "--domain",
        "local.example",
        "--recipient-verify-host",
        &hop,
        "--recipient-verify-domain",
        "relay.example",
    ];
    args.extend_from_slice(extra);
    Server::start_with(&["--listen", "127.0.0.1:0", "--cores", cores()], &args)
}

/// Two shards where the machine has two CPUs: connections then spread over
/// both, and only the cache the lookup threads share keeps the callouts to
/// one per address.
fn cores() -> &'static str {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => "1",
        _ => "2",
    }
}

/// A new connection's RCPT reply for `to`.
fn rcpt_on_new_connection(s: &Server, to: &str) -> String {
    let mut c = s.client();
    c.ehlo();
    c.send(format!(
        "MAIL FROM:<sender@example.org>\r\nRCPT TO:<{to}>\r\nQUIT\r\n"
    ));
    c.expect("250 ");
    let r = c.reply().pop().unwrap();
    c.expect("221");
    r
}

#[test]
fn the_next_hop_decides_and_its_answers_are_cached_and_no_mail_reaches_it() {
    let dir = TempDir::new("verify-hop");
    let map = dir.path().join("recipients");
    std::fs::write(&map, "alice@relay.example\nj\u{f6}rg@relay.example\n").unwrap();
    let mut hop = Server::start(&[
        "--domain",
        "relay.example",
        "--recipient-map",
        map.to_str().unwrap(),
    ]);
    let mut s = front(hop.addr, &[]);
    // Several connections each: the first asks the next hop, the rest are
    // answered from a cache, whichever shard they land on.
    for _ in 0..6 {
        for (to, want) in [
            ("alice@relay.example", "250 2.1.5"),
            ("Alice+tag@relay.example", "250 2.1.5"),
            ("bob@relay.example", "550 5.1.1"),
            ("anyone@local.example", "250 2.1.5"),
        ] {
            let got = rcpt_on_new_connection(&s, to);
            assert!(got.starts_with(want), "{to}: {got}\n{}", s.logs());
        }
    }
    // RFC 6531: the callout says SMTPUTF8 for a non-ASCII address.
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<s@example.org> SMTPUTF8\r\n");
    c.expect("250 ");
    c.send("RCPT TO:<j\u{f6}rg@relay.example>\r\nRCPT TO:<j\u{fc}rgen@relay.example>\r\n");
    c.expect("250 2.1.5");
    c.expect("550 5.1.1");
    c.send("QUIT\r\n");
    c.expect("221");
    // A whole message for a verified recipient, pipelined.
    let mut c = s.client();
    c.send(
        "EHLO c.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<bob@relay.example>\r\n\
         RCPT TO:<alice@relay.example>\r\nDATA\r\n",
    );
    c.expect("250 ");
    c.expect("250 ");
    c.expect("550 5.1.1");
    c.expect("250 2.1.5");
    c.expect("354");
    c.send("Subject: v\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    c.expect("250 ");
    c.expect("221");
    assert!(s.stop().success(), "{}", s.logs());
    assert!(hop.stop().success(), "{}", hop.logs());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rcpts, ["alice@relay.example"]);
    // The callouts sent no mail, and each address was asked once.
    assert!(hop.stored().is_empty());
    let hop_logs = hop.logs();
    assert_eq!(
        hop_logs.matches("arg=\"TO:<bob@relay.example>\"").count(),
        1,
        "{hop_logs}"
    );
    assert!(
        hop_logs.contains("rcpt_accepted=3 rcpt_unknown=2 "),
        "{hop_logs}"
    );
}

/// Postfix's smtp-sink on a free port with `flags`; killed on drop.
struct Sink(Child, SocketAddr);

impl Sink {
    fn start(flags: &[&str]) -> Option<Sink> {
        let bin = common::require_tool("smtp-sink", "postfix")?;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut cmd = Command::new(&bin);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "nobody"]);
            }
            let mut child = cmd
                .args(flags)
                .arg(format!("127.0.0.1:{port}"))
                .arg("100")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start smtp-sink");
            let until = Instant::now() + STEP;
            while Instant::now() < until {
                if TcpStream::connect(addr).is_ok() {
                    return Some(Sink(child, addr));
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("smtp-sink did not start");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn session(s: &Server) -> Client {
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<sender@example.org>\r\n");
    c.expect("250 ");
    c
}

#[test]
fn temporary_and_odd_next_hop_answers_give_451_never_250_and_are_not_cached() {
    // 450 to RCPT: a temporary failure.
    let Some(sink) = Sink::start(&["-r", "rcpt"]) else {
        return;
    };
    let mut s = front(sink.1, &[]);
    let mut c = session(&s);
    for _ in 0..2 {
        c.send("RCPT TO:<x@relay.example>\r\nNOOP\r\n");
        c.expect("451 4.3.0");
        c.expect("250 ");
    }
    drop(c);
    assert!(s.stop().success());
    assert!(s.logs().contains("rcpt_lookup_failed=2 "), "{}", s.logs());

    // 5xx to MAIL FROM:<> says nothing about the recipient: a failure,
    // not "unknown".
    let Some(sink) = Sink::start(&["-f", "mail"]) else {
        return;
    };
    let s = front(sink.1, &[]);
    let mut c = session(&s);
    c.send("RCPT TO:<x@relay.example>\r\n");
    c.expect("451 4.3.0");
    drop(sink);

    // Nobody listening at the next hop any more.
    c.send("RCPT TO:<y@relay.example>\r\n");
    c.expect("451 4.3.0");
}

#[test]
fn a_next_hop_that_does_not_answer_gives_451_after_the_timeout() {
    // Answers RCPT only after a minute.
    let Some(sink) = Sink::start(&["-W", "rcpt:60"]) else {
        return;
    };
    let s = front(sink.1, &["--recipient-lookup-timeout", "1s"]);
    let mut c = session(&s);
    c.send("RCPT TO:<slow@relay.example>\r\nRCPT TO:<a@local.example>\r\n");
    c.expect("451 4.3.0");
    c.expect("250 2.1.5");
    c.send("QUIT\r\n");
    c.expect("221");
}
