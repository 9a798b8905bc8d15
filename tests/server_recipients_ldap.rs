//! The `ldap` recipient policy (issue 17) against a real OpenLDAP `slapd`
//! started by the test (its own config, database and free port; users
//! loaded with `ldapadd`), and the real `ringmx` binary: known recipients
//! get `250`, unknown ones `550 5.1.1`, a stopped directory `451 4.3.0`
//! (never `250`), a hung one `451` after the lookup timeout, and the cache
//! answers while the directory is down until its TTL.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Server, TempDir, STEP};

const BASE: &str = "dc=example,dc=com";

const USERS: &str = "\
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: uid=alice,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@ldap.example

dn: uid=bob,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
mail: bob@ldap.example
";

/// A `slapd` of our own: killed (and its files removed) on drop.
struct Slapd {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Slapd {
    /// Starts slapd with an mdb database under `dir` and loads [`USERS`];
    /// `None` (skipped) if slapd or ldapadd is missing.
    fn start() -> Option<Slapd> {
        let slapd = common::require_tool("slapd", "slapd")?;
        let ldapadd = common::require_tool("ldapadd", "ldap-utils")?;
        let dir = TempDir::new("slapd");
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 pidfile {pid}\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 database mdb\n\
                 suffix \"{BASE}\"\n\
                 rootdn \"cn=admin,{BASE}\"\n\
                 rootpw secret\n\
                 directory {db}\n\
                 maxsize 10485760\n\
                 index mail eq\n",
                pid = dir.path().join("slapd.pid").display(),
                db = db.display(),
            ),
        )
        .unwrap();
        // A port free now; slapd takes it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // -d: stay in the foreground (so the test owns the process).
        let child = Command::new(slapd)
            .arg("-f")
            .arg(&conf)
            .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn slapd");
        let s = Slapd {
            child,
            port,
            _dir: dir,
        };
        let until = Instant::now() + STEP;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "slapd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ldif: PathBuf = s._dir.path().join("users.ldif");
        std::fs::write(&ldif, USERS).unwrap();
        let out = Command::new(ldapadd)
            .args(["-x", "-H", &s.url(), "-D", &format!("cn=admin,{BASE}")])
            .args(["-w", "secret", "-f"])
            .arg(&ldif)
            .output()
            .expect("run ldapadd");
        assert!(
            out.status.success(),
            "ldapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(s)
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}/", self.port)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        // A SIGSTOPped slapd must be woken to die of SIGKILL promptly.
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// `ringmx serve` accepting example.com (catch-all) and ldap.example
/// (policy `ldap`, in `slapd`), plus `extra`.
fn start(slapd: &Slapd, extra: &[&str]) -> Server {
    let url = slapd.url();
    let mut args = vec![
        "--domain",
        "example.com",
        "--domain",
        "ldap.example",
        "--recipient-ldap",
        &url,
        "--recipient-ldap-base",
        BASE,
        "--recipient-ldap-domain",
        "ldap.example",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn session(s: &Server) -> Client {
    let mut c = s.client();
    c.ehlo();
    c.send("MAIL FROM:<sender@example.org>\r\n");
    c.expect("250 ");
    c
}

/// RCPT's reply line for `to`.
fn rcpt(c: &mut Client, to: &str) -> String {
    c.send(format!("RCPT TO:<{to}>\r\n"));
    c.reply().pop().unwrap()
}

#[test]
fn known_recipients_get_250_unknown_550_in_command_order_and_only_known_are_stored() {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let mut s = start(&slapd, &[]);
    assert!(
        s.logs()
            .contains("recipient lookups: ldap domains: ldap.example (at ldap://127.0.0.1:"),
        "{}",
        s.logs()
    );
    let mut c = session(&s);
    for (to, want) in [
        ("alice@ldap.example", "250 2.1.5"),
        ("Bob+lists@LDAP.example", "250 2.1.5"),
        ("mallory@ldap.example", "550 5.1.1"),
        ("postmaster@ldap.example", "250 2.1.5"),
        // The filter's value is escaped: no wildcard match.
        ("*@ldap.example", "550 5.1.1"),
        ("anyone@example.com", "250 2.1.5"),
    ] {
        let got = rcpt(&mut c, to);
        assert!(got.starts_with(want), "{to}: {got}\n{}", s.logs());
    }
    c.send("QUIT\r\n");
    c.expect("221");

    // One pipelined batch, lookups and all: replies in command order.
    let mut c = s.client();
    c.send(
        "EHLO client.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<nobody@ldap.example>\r\n\
         RCPT TO:<carol@example.com>\r\nRCPT TO:<alice+x@ldap.example>\r\nNOOP\r\nDATA\r\n",
    );
    c.expect("250 ");
    c.expect("250 ");
    c.expect("550 5.1.1");
    c.expect("250 2.1.5");
    c.expect("250 2.1.5");
    c.expect("250 ");
    c.expect("354");
    c.send("Subject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    c.expect("250 ");
    c.expect("221");
    assert!(s.stop().success(), "{}", s.logs());
    let stored = s.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].rcpts,
        ["carol@example.com", "alice+x@ldap.example"]
    );
    let logs = s.logs();
    assert!(
        logs.contains("NOQUEUE: reject: RCPT from 127.0.0.1")
            && logs.contains("550 5.1.1 Recipient address rejected: User unknown")
            && logs.contains("arg=\"TO:<nobody@ldap.example>\""),
        "{logs}"
    );
    assert!(
        logs.contains("rcpt_unknown=3 ") && logs.contains("rcpt_lookup_failed=0 "),
        "{logs}"
    );
}

#[test]
fn a_stopped_directory_gives_451_and_the_cache_answers_until_its_ttl() {
    let Some(mut slapd) = Slapd::start() else {
        return;
    };
    const TTL: Duration = Duration::from_secs(6);
    let mut s = start(
        &slapd,
        &[
            "--recipient-cache-positive-ttl",
            "6s",
            "--recipient-cache-negative-ttl",
            "6s",
        ],
    );
    let mut c = session(&s);
    let cached_at = Instant::now();
    assert!(rcpt(&mut c, "alice@ldap.example").starts_with("250 2.1.5"));
    assert!(rcpt(&mut c, "mallory@ldap.example").starts_with("550 5.1.1"));
    slapd.kill();
    // Answered from the shard's cache, the directory gone.
    let hits = [
        rcpt(&mut c, "alice@ldap.example"),
        rcpt(&mut c, "mallory@ldap.example"),
    ];
    let within_ttl = cached_at.elapsed() < TTL;
    // Never in the cache: the directory must be asked, and is down.
    let got = rcpt(&mut c, "bob@ldap.example");
    assert!(got.starts_with("451 4.3.0"), "{got}\n{}", s.logs());
    // A machine too loaded to get here within the TTL cannot check hits.
    if within_ttl {
        assert!(hits[0].starts_with("250 2.1.5"), "{hits:?}");
        assert!(hits[1].starts_with("550 5.1.1"), "{hits:?}");
    }
    // Past the TTL the cached answers are gone: 451, never accept-all.
    std::thread::sleep(TTL.saturating_sub(cached_at.elapsed()) + Duration::from_millis(100));
    let got = rcpt(&mut c, "alice@ldap.example");
    assert!(got.starts_with("451 4.3.0"), "{got}");
    let got = rcpt(&mut c, "mallory@ldap.example");
    assert!(got.starts_with("451 4.3.0"), "{got}");
    c.send("QUIT\r\n");
    c.expect("221");
    assert!(s.stop().success(), "{}", s.logs());
    let logs = s.logs();
    assert!(
        logs.contains("rcpt_lookup_failed=3 ")
            && logs.contains("451 4.3.0 Recipient address rejected: lookup failed")
            && logs.contains("arg=\"TO:<bob@ldap.example>\""),
        "{logs}"
    );
    assert!(s.stored().is_empty());
}

#[test]
fn a_hung_directory_gives_451_after_the_timeout_and_pipelined_commands_follow_in_order() {
    let Some(slapd) = Slapd::start() else {
        return;
    };
    let s = start(&slapd, &["--recipient-lookup-timeout", "1s"]);
    let mut c = session(&s);
    assert!(rcpt(&mut c, "alice@ldap.example").starts_with("250 2.1.5"));
    slapd.signal(libc::SIGSTOP);
    c.send("RCPT TO:<bob@ldap.example>\r\nNOOP\r\nRCPT TO:<x@example.com>\r\n");
    c.expect("451 4.3.0");
    c.expect("250 ");
    c.expect("250 2.1.5");
    // Still hung: the next uncached lookup times out too, the cached one
    // does not need the directory.
    assert!(rcpt(&mut c, "carol@ldap.example").starts_with("451 4.3.0"));
    assert!(rcpt(&mut c, "alice@ldap.example").starts_with("250 2.1.5"));
    slapd.signal(libc::SIGCONT);
    // The directory is back: a lookup thread reconnects (its old
    // connection timed out). A thread may still be finishing a search
    // begun before; retry briefly.
    let until = Instant::now() + STEP;
    loop {
        let got = rcpt(&mut c, "bob@ldap.example");
        if got.starts_with("250 2.1.5") {
            break;
        }
        assert!(got.starts_with("451 4.3.0"), "{got}");
        assert!(Instant::now() < until, "the directory never answered again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn settings_that_cannot_work_stop_the_start_with_a_reason() {
    for (args, want) in [
        (
            &[
                "--domain",
                "ldap.example",
                "--recipient-ldap-domain",
                "ldap.example",
            ][..],
            "ldap_domains needs a server: give --recipient-ldap URL",
        ),
        (
            &[
                "--recipient-ldap",
                "ldap://127.0.0.1:1/",
                "--recipient-ldap-domain",
                "other.example",
            ][..],
            "\"other.example\" is not in smtp.accepted_domains",
        ),
        (
            &[
                "--domain",
                "d.example",
                "--recipient-ldap",
                "ldaps://127.0.0.1:1/",
                "--recipient-ldap-domain",
                "d.example",
            ][..],
            "use ldap://host:port or ldapi://",
        ),
        (
            &[
                "--domain",
                "d.example",
                "--recipient-ldap",
                "ldap://127.0.0.1:1/",
                "--recipient-ldap-filter",
                "(objectClass=*)",
                "--recipient-ldap-domain",
                "d.example",
            ][..],
            "names no %s, %u or %d",
        ),
    ] {
        let Err((status, logs)) =
            Server::try_start(&["--listen", "127.0.0.1:0", "--cores", "1"], args)
        else {
            panic!("{args:?} started");
        };
        assert!(!status.success());
        assert!(logs.contains(want), "{args:?}: {logs}");
    }
}
