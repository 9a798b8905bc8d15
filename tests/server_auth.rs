//! Submission with SMTP AUTH (issue 11) on the real server with real
//! clients: swaks (--auth PLAIN and LOGIN over --tls), Python's smtplib
//! (starttls() + both mechanisms, SMTP_SSL on the implicit-TLS listener),
//! Postfix relaying through the submission port with
//! `smtp_sasl_auth_enable`; the spool read back for the identity field and
//! `with ESMTPSA`. Negatives: no AUTH before TLS or on the MX listener, a
//! bad password, MAIL without AUTH, `*`, the failure limit, a bad users
//! file, a sender other than the login (--sender-login-match), and the
//! password never in the log.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Server, TempDir};

const STEP: Duration = Duration::from_secs(20);
/// The password of every test user; the log must never contain it.
const PASSWORD: &str = "Tr0ub4dor-and-3";

/// A bcrypt hash as `htpasswd -B` writes it (`$2y$`), cost 4 (quick).
fn bcrypt_hash(pw: &str) -> String {
    bcrypt::hash_with_salt(pw, 4, *b"ringmx-test-salt")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY)
}

/// An argon2id PHC string with small costs (quick), as `doveadm pw -s
/// ARGON2ID` writes it after its `{ARGON2ID}` prefix.
fn argon2_hash(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"ringmx-test-salt").unwrap();
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A certificate and a users file (alice: bcrypt, bob: argon2id with
/// Dovecot's prefix) in a fresh directory; `None` skips (no openssl).
struct Setup {
    dir: TempDir,
    pem: PathBuf,
    key: PathBuf,
    users: PathBuf,
}

fn setup(tag: &str) -> Option<Setup> {
    common::require_tool("openssl", "openssl")?;
    let dir = TempDir::new(tag);
    let (pem, key) = common::certs::make_cert(dir.path(), "mx", &["mx.test"]);
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!(
            "# submission users\nalice@example.com:{}\n\nbob:{{ARGON2ID}}{}\n",
            bcrypt_hash(PASSWORD),
            argon2_hash(PASSWORD)
        ),
    )
    .unwrap();
    Some(Setup {
        dir,
        pem,
        key,
        users,
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The server with one submission listener of each kind; returns it and
/// the (STARTTLS, implicit TLS) submission addresses.
fn start(su: &Setup, extra: &[&str]) -> (Server, SocketAddr, SocketAddr) {
    let mut args = vec![
        "--tls-cert",
        s(&su.pem),
        "--tls-key",
        s(&su.key),
        "--users",
        s(&su.users),
        "--submission",
        "127.0.0.1:0",
        "--submission-tls",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let addr = |what: &str| -> SocketAddr {
        let line = server
            .wait_log(what, STEP)
            .expect("submission listener logged");
        line.split(what).nth(1).unwrap().trim().parse().unwrap()
    };
    let sub = addr("listening for submission on ");
    let sub_tls = addr("listening for submission with implicit TLS on ");
    (server, sub, sub_tls)
}

/// (MAIL FROM, AUTH identity, Received: text) of every stored message, in
/// spool order, through the reader `ringmx spool` uses.
fn stored_auth(spool: &Path) -> Vec<(String, Option<String>, String)> {
    let reader = ringmx::spool::SpoolReader::open(spool).expect("open spool");
    let mut out = Vec::new();
    for m in reader.messages().expect("list spool") {
        let m = m.expect("read message");
        let received = String::from_utf8_lossy(&m.received).into_owned();
        out.push((m.envelope.mail_from, m.envelope.auth_id, received));
    }
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The password never reaches the log, nor its base64 in PLAIN or LOGIN.
fn assert_no_password(server: &Server) {
    let logs = server.logs();
    for secret in [
        PASSWORD.to_owned(),
        b64(PASSWORD.as_bytes()),
        b64(format!("\0bob\0{PASSWORD}").as_bytes()),
        b64(format!("\0alice@example.com\0{PASSWORD}").as_bytes()),
    ] {
        assert!(!logs.contains(&secret), "{secret:?} in the log:\n{logs}");
    }
}

fn b64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                o.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

/// swaks --tls with --auth PLAIN and --auth LOGIN to a domain ringmx does
/// not accept mail for: relayed for the logged-in user, recorded with the
/// identity and `with ESMTPSA`.
#[test]
fn swaks_auth_plain_and_login_over_starttls() {
    let Some(su) = setup("auth-swaks") else {
        return;
    };
    let Some(swaks) = common::require_tool("swaks", "swaks") else {
        return;
    };
    let (mut server, sub, _) = start(&su, &[]);
    for (mech, user) in [("PLAIN", "alice@example.com"), ("LOGIN", "bob")] {
        let out = Command::new(&swaks)
            .args(["--server", "127.0.0.1", "--port", &sub.port().to_string()])
            .args(["--tls", "--auth", mech, "--auth-user", user])
            .args(["--auth-password", PASSWORD])
            .args(["--from", "alice@example.com", "--to", "friend@far.example"])
            .output()
            .unwrap();
        let t = text(&out);
        assert!(out.status.success(), "{mech}: {t}");
        assert!(t.contains("250-AUTH PLAIN LOGIN"), "{mech}: {t}");
        assert!(
            t.contains("235 2.7.0 Authentication successful"),
            "{mech}: {t}"
        );
        assert!(t.contains("250 2.0.0 Ok: queued as"), "{mech}: {t}");
    }
    server.stop();
    let got = stored_auth(server.spool.path());
    let ids: Vec<Option<&str>> = got.iter().map(|m| m.1.as_deref()).collect();
    assert_eq!(ids, [Some("alice@example.com"), Some("bob")]);
    for (_, _, received) in &got {
        assert!(received.contains("with ESMTPSA"), "{received}");
    }
    assert!(
        server.logs().contains("result=ok user=bob"),
        "{}",
        server.logs()
    );
    assert_no_password(&server);
}

/// Runs a Python script; `None` skips (no python3).
fn python(script: &str) -> Option<Output> {
    let py = common::require_tool("python3", "python3")?;
    Some(Command::new(py).args(["-c", script]).output().unwrap())
}

/// smtplib: starttls() then login with each mechanism, SMTP_SSL on the
/// implicit-TLS submission listener; the spool has all three with their
/// identities.
#[test]
fn python_smtplib_starttls_login_and_smtp_ssl() {
    let Some(su) = setup("auth-python") else {
        return;
    };
    let (mut server, sub, sub_tls) = start(&su, &[]);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={pem:?})
msg = "Subject: submitted\r\n\r\nhello\r\n"
for mech, user in (("PLAIN", "bob"), ("LOGIN", "alice@example.com")):
    with smtplib.SMTP("127.0.0.1", {sub}) as s:
        s.starttls(context=ctx)
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
        s.user, s.password = user, {pw:?}
        code, _ = s.auth(mech, getattr(s, "auth_" + mech.lower()))
        assert code == 235, code
        s.sendmail(mech.lower() + "@example.com", ["x@far.example"], msg)
with smtplib.SMTP_SSL("127.0.0.1", {sub_tls}, context=ctx) as s:
    s.login("bob", {pw:?})
    s.sendmail("ssl@example.com", ["y@far.example"], msg)
print("ok")
"#,
        pem = s(&su.pem),
        sub = sub.port(),
        sub_tls = sub_tls.port(),
        pw = PASSWORD,
    );
    let Some(out) = python(&script) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    server.stop();
    let got: Vec<(String, Option<String>)> = stored_auth(server.spool.path())
        .into_iter()
        .map(|(f, a, _)| (f, a))
        .collect();
    let want = [
        ("plain@example.com", "bob"),
        ("login@example.com", "alice@example.com"),
        ("ssl@example.com", "bob"),
    ];
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(f, a)| (f.to_string(), Some(a.to_string())))
        .collect();
    assert_eq!(got, want);
    assert_no_password(&server);
}

/// What a submission client may not do, and the MX listener: smtplib
/// over STARTTLS where TLS is needed, raw text before it.
#[test]
fn refusals_before_tls_without_auth_on_mx_and_bad_passwords() {
    let Some(su) = setup("auth-refusals") else {
        return;
    };
    let (mut server, sub, _) = start(&su, &[]);
    // Plain text on the submission port: no AUTH advertised, 538, 530.
    let mut c = common::Client::connect(sub);
    c.expect("220 ");
    c.send("EHLO c.example\r\n");
    let ehlo = c.reply();
    assert!(ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    c.send(format!(
        "AUTH PLAIN {}\r\n",
        b64(format!("\0bob\0{PASSWORD}").as_bytes())
    ));
    c.expect("538 5.7.11 ");
    c.send("MAIL FROM:<a@example.com>\r\n");
    c.expect("530 5.7.0 Must issue a STARTTLS command first");
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={pem:?})
def sub():
    s = smtplib.SMTP("127.0.0.1", {sub})
    s.starttls(context=ctx)
    s.ehlo()
    return s
s = sub()
# Relay without AUTH: 530.
code, _ = s.docmd("MAIL", "FROM:<a@example.com>")
assert code == 530, code
# A bad password: 535.
try:
    s.login("bob", "wrong-password")
    raise SystemExit("bad password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
# `*` cancels: 501.
code, _ = s.docmd("AUTH", "LOGIN")
assert code == 334, code
code, _ = s.docmd("*")
assert code == 501, code
# An unknown user: 535 as well.
try:
    s.login("nobody", {pw:?})
    raise SystemExit("unknown user accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.quit()
# The MX listener: TLS yes, AUTH no; mail only for its domains.
m = smtplib.SMTP("127.0.0.1", {mx})
m.starttls(context=ctx)
m.ehlo()
assert not m.has_extn("auth"), m.esmtp_features
code, _ = m.docmd("AUTH", "PLAIN")
assert code == 502, code
code, _ = m.docmd("MAIL", "FROM:<a@example.com> AUTH=<>")
assert code == 555, code
m.docmd("MAIL", "FROM:<a@example.com>")
code, _ = m.docmd("RCPT", "TO:<x@far.example>")
assert code == 550, code
m.quit()
print("ok")
"#,
        pem = s(&su.pem),
        sub = sub.port(),
        mx = server.addr.port(),
        pw = PASSWORD,
    );
    let Some(out) = python(&script) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    server.stop();
    assert!(server.stored().is_empty());
    assert_no_password(&server);
}

/// --auth-max-failures 3: the third wrong password gets `421 4.7.0` and
/// the connection closes; a new connection from the address gets the same
/// `421` at once, while the window lasts. The MX listener is not affected.
#[test]
fn the_failure_limit_closes_and_turns_away() {
    let Some(su) = setup("auth-limit") else {
        return;
    };
    let (mut server, sub, _) = start(&su, &["--auth-max-failures", "3"]);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={pem:?})
s = smtplib.SMTP("127.0.0.1", {sub})
s.starttls(context=ctx)
s.ehlo()
codes = []
for i in range(3):
    code, _ = s.docmd("AUTH", "PLAIN " + __import__("base64").b64encode(b"\0bob\0nope%d" % i).decode())
    codes.append(code)
assert codes == [535, 535, 421], codes
try:
    s.noop()
    raise SystemExit("still open after 421")
except smtplib.SMTPServerDisconnected:
    pass
try:
    smtplib.SMTP("127.0.0.1", {sub})
    raise SystemExit("a blocked client was greeted")
except smtplib.SMTPConnectError as e:
    assert e.smtp_code == 421, e
m = smtplib.SMTP("127.0.0.1", {mx})
m.quit()
print("ok")
"#,
        pem = s(&su.pem),
        sub = sub.port(),
        mx = server.addr.port(),
    );
    let Some(out) = python(&script) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    let logs = server.logs();
    assert!(logs.contains("result=failed-now-blocked"), "{logs}");
    assert!(logs.contains("outcome=too-many-auth-failures"), "{logs}");
    assert!(logs.contains("outcome=auth-blocked"), "{logs}");
    server.stop();
}

/// A users file with a bad line, or submission without a certificate or
/// users: one line naming the problem (file:line) and exit status 2, from
/// `serve` and from `check-config`.
#[test]
fn bad_users_files_and_settings_exit_2() {
    let Some(su) = setup("auth-bad") else {
        return;
    };
    let bad = su.dir.path().join("bad-users");
    std::fs::write(
        &bad,
        format!("ok:{}\nmallory plaintext\n", bcrypt_hash("x")),
    )
    .unwrap();
    let base = ["--listen", "127.0.0.1:0", "--cores", "1"];
    let tls = ["--tls-cert", s(&su.pem), "--tls-key", s(&su.key)];
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            [
                &tls[..],
                &["--users", s(&bad), "--submission", "127.0.0.1:0"],
            ]
            .concat(),
            format!("users file {}:2: want user:hash", bad.display()),
        ),
        (
            vec!["--users", s(&su.users), "--submission", "127.0.0.1:0"],
            "submission.listen (--submission, --submission-tls) needs a certificate".into(),
        ),
        (
            [&tls[..], &["--submission-tls", "127.0.0.1:0"]].concat(),
            "needs users: give --users FILE".into(),
        ),
        (
            [
                &tls[..],
                &["--users", s(&su.users), "--submission", "127.0.0.1:0"],
                &["--read-buffer", "8192"],
            ]
            .concat(),
            "read_buffer_bytes over 12288 (RFC 4954 AUTH lines), not 8192".into(),
        ),
    ];
    for (extra, want) in &cases {
        let (status, logs) = match Server::try_start(&base, extra) {
            Ok(_) => panic!("started with {extra:?}"),
            Err(e) => e,
        };
        assert_eq!(status.code(), Some(2), "{extra:?}: {logs}");
        assert!(logs.contains(want.as_str()), "{extra:?}: {logs}");
        assert!(!logs.contains("plaintext"), "{logs}");
    }
    let conf = su.dir.path().join("ringmx.toml");
    std::fs::write(
        &conf,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[submission]\nlisten = [\"127.0.0.1:0\"]\nusers = {:?}\n",
            s(&su.pem),
            s(&su.key),
            s(&bad)
        ),
    )
    .unwrap();
    let out = common::ringmx()
        .args(["check-config", "--config", s(&conf)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(":2: want user:hash"), "{}", text(&out));
}

/// SIGHUP rereads the users file: a new user can log in; a broken file is
/// logged and the old users stay.
#[test]
fn sighup_reloads_the_users_file() {
    let Some(su) = setup("auth-reload") else {
        return;
    };
    let Some(swaks) = common::require_tool("swaks", "swaks") else {
        return;
    };
    let (mut server, sub, _) = start(&su, &[]);
    let login = |user: &str| {
        let out = Command::new(&swaks)
            .args(["--server", "127.0.0.1", "--port", &sub.port().to_string()])
            .args(["--tls", "--auth", "PLAIN", "--auth-user", user])
            .args(["--auth-password", PASSWORD, "--quit-after", "AUTH"])
            .output()
            .unwrap();
        text(&out).contains("235 2.7.0")
    };
    assert!(!login("carol"));
    std::fs::write(&su.users, format!("carol:{}\n", bcrypt_hash(PASSWORD))).unwrap();
    server.signal(libc::SIGHUP);
    server
        .wait_log("users file", STEP)
        .and_then(|_| server.wait_log("reloaded: 1 users", STEP))
        .expect("reload logged");
    assert!(login("carol"));
    assert!(!login("bob"));
    std::fs::write(&su.users, "carol\n").unwrap();
    server.signal(libc::SIGHUP);
    server
        .wait_log("keeping the previous users (1)", STEP)
        .expect("bad reload logged");
    assert!(login("carol"));
    server.stop();
}

/// Postfix as a client: `smtp_sasl_auth_enable` with a password map,
/// relaying through ringmx's submission port over STARTTLS; the message
/// for a foreign domain arrives, recorded with the identity. Needs root
/// (Postfix's master), Debian's postfix and libsasl2-modules (Postfix's
/// PLAIN client).
#[test]
fn postfix_relays_through_submission_with_sasl() {
    let Some(su) = setup("auth-postfix") else {
        return;
    };
    let (mut server, sub, _) = start(&su, &[]);
    let pw_map = su.dir.path().join("sasl_passwd");
    std::fs::write(
        &pw_map,
        format!("[127.0.0.1]:{} bob:{PASSWORD}\n", sub.port()),
    )
    .unwrap();
    let extra = format!(
        "smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = texthash:{}\n\
         smtp_sasl_security_options = noanonymous\nsmtp_sasl_tls_security_options = noanonymous\n\
         smtp_tls_security_level = encrypt\n",
        pw_map.display()
    );
    let Some(pf) = common::postfix::Postfix::start("auth-postfix-q", sub.port(), &extra) else {
        return;
    };
    pf.submit("pf@src.test", "friend@far.example", "via postfix and sasl");
    // Postfix relays on its own schedule: wait for the accepted message's
    // log line, not for a time.
    let line = server.wait_log("msg id=", Duration::from_secs(60));
    assert!(
        line.is_some(),
        "{}\n--- postfix:\n{}",
        server.logs(),
        pf.log()
    );
    server.stop();
    let got = stored_auth(server.spool.path());
    assert_eq!(got.len(), 1);
    let (from, id, received) = &got[0];
    assert_eq!((from.as_str(), id.as_deref()), ("pf@src.test", Some("bob")));
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(
        received.starts_with("Received: from postfix-sender.test"),
        "{received}"
    );
    assert_no_password(&server);
}

/// loadgen --auth over --starttls with a new connection per message
/// (`--msgs-per-conn 1`): every message is a connection, a handshake, an
/// AUTH and a relayed message; a wrong password is a refused session,
/// counted, never a crash.
#[test]
fn loadgen_auth_submits_one_message_per_connection() {
    let Some(su) = setup("auth-loadgen") else {
        return;
    };
    let loadgen = Path::new(env!("CARGO_BIN_EXE_ringmx")).with_file_name("loadgen");
    assert!(
        loadgen.exists(),
        "{} is missing: build it with `cargo build -p loadgen` (the workspace test run does)",
        loadgen.display()
    );
    let (mut server, sub, _) = start(&su, &["--auth-max-failures", "100"]);
    let json = su.dir.path().join("run.json");
    let run = |user_pass: &str, n: &str| {
        Command::new(&loadgen)
            .args([
                "run",
                "--target",
                &sub.to_string(),
                "--to-domain",
                "far.example",
            ])
            // The test certificate is self-signed (its own CA, which
            // webpki refuses as a leaf): what is tested here is AUTH.
            .args(["--starttls", "--tls-insecure"])
            .args(["--auth", user_pass, "--msgs-per-conn", "1"])
            .args(["-c", "2", "--messages", n, "--quiet"])
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap()
    };
    let out = run(&format!("bob:{PASSWORD}"), "12");
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["messages"]["ok"], 12, "{v}");
    assert_eq!(v["replies"]["auth"]["2xx"], 12, "{v}");
    assert_eq!(v["connections"]["opened"], 12, "{v}");
    let out = run("bob:wrong", "3");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["replies"]["auth"]["5xx"], 3, "{}\n{v}", text(&out));
    assert!(v["messages"]["ok"].as_u64().unwrap_or(0) == 0, "{v}");
    server.stop();
    let got = stored_auth(server.spool.path());
    assert_eq!(got.len(), 12, "{}", server.logs());
    assert!(got.iter().all(|m| m.1.as_deref() == Some("bob")));
}

/// --sender-login-match true: a logged-in user sends only as itself
/// (`bob` as bob@ an accepted domain, `alice@example.com` as exactly
/// that); anything else is `553 5.7.1`.
#[test]
fn sender_login_match_refuses_other_senders() {
    let Some(su) = setup("auth-sender") else {
        return;
    };
    let (mut server, sub, _) = start(&su, &["--sender-login-match", "true"]);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={pem:?})
for user, own, other in (("bob", "bob@localhost", "alice@localhost"),
                         ("alice@example.com", "alice@example.com", "bob@localhost")):
    s = smtplib.SMTP("127.0.0.1", {sub})
    s.starttls(context=ctx)
    s.login(user, {pw:?})
    code, _ = s.docmd("MAIL", "FROM:<%s>" % other)
    assert code == 553, (user, code)
    code, _ = s.docmd("MAIL", "FROM:<%s>" % own)
    assert code == 250, (user, code)
    s.rset()
    s.quit()
print("ok")
"#,
        pem = s(&su.pem),
        sub = sub.port(),
        pw = PASSWORD,
    );
    let Some(out) = python(&script) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    server.stop();
}

/// RFC 4954 §4: a server must take the longest response its mechanisms
/// make (PLAIN: up to 255 octets of each field, over 1000 in base64),
/// whatever its command line limit. A 600-character password (a token)
/// over PLAIN's initial response and over LOGIN's 334 line both log in;
/// an AUTH line past 12288 octets is refused and the session goes on.
#[test]
fn long_sasl_responses_log_in() {
    let Some(su) = setup("auth-long") else {
        return;
    };
    let long_pw: String = (0..600).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut users = std::fs::read_to_string(&su.users).unwrap();
    users.push_str(&format!("carol:{}\n", argon2_hash(&long_pw)));
    std::fs::write(&su.users, users).unwrap();
    let (mut server, sub, _) = start(&su, &[]);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={pem:?})
msg = "Subject: long\r\n\r\nhello\r\n"
for mech in ("PLAIN", "LOGIN"):
    with smtplib.SMTP("127.0.0.1", {sub}) as s:
        s.starttls(context=ctx)
        s.ehlo()
        s.user, s.password = "carol", {pw:?}
        code, text = s.auth(mech, getattr(s, "auth_" + mech.lower()))
        assert code == 235, (mech, code, text)
        s.sendmail(mech.lower() + "@example.com", ["x@far.example"], msg)
with smtplib.SMTP("127.0.0.1", {sub}) as s:
    s.starttls(context=ctx)
    s.ehlo()
    code, _ = s.docmd("AUTH", "PLAIN " + "A" * 12300)
    assert code == 500, code
    code, _ = s.docmd("NOOP")
    assert code == 250, code
print("ok")
"#,
        pem = s(&su.pem),
        sub = sub.port(),
        pw = long_pw,
    );
    let Some(out) = python(&script) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    server.stop();
    let got: Vec<(String, Option<String>)> = stored_auth(server.spool.path())
        .into_iter()
        .map(|(f, a, _)| (f, a))
        .collect();
    let carol = Some("carol".to_string());
    assert_eq!(
        got,
        [
            ("plain@example.com".to_string(), carol.clone()),
            ("login@example.com".to_string(), carol)
        ]
    );
    let logs = server.logs();
    assert!(!logs.contains(&long_pw), "the password in the log:\n{logs}");
}
