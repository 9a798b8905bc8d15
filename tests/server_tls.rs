//! TLS on the real server with real clients: openssl s_client (STARTTLS
//! and implicit TLS, SNI, session resumption), Python's smtplib, swaks, a
//! rustls client for the STARTTLS injection test; bad certificates at start,
//! certificate reload on SIGHUP; the spool read back. Certificates are made
//! in each test with the openssl command line (never committed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::postfix::read_reply;
use common::{Server, TempDir};

const STEP: Duration = Duration::from_secs(20);

/// openssl is needed to make certificates: `None` skips (fails in CI).
fn certs(tag: &str) -> Option<(TempDir, PathBuf, PathBuf)> {
    common::require_tool("openssl", "openssl")?;
    let dir = TempDir::new(tag);
    let (pem, key) = common::certs::make_cert(dir.path(), "mx", &["mx.test"]);
    Some((dir, pem, key))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A server with STARTTLS and one implicit-TLS listener; returns it and
/// the implicit listener's address.
fn tls_server(pem: &Path, key: &Path, extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec![
        "--tls-cert",
        s(pem),
        "--tls-key",
        s(key),
        "--listen-tls",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let line = server
        .wait_log("listening with implicit TLS on ", STEP)
        .expect("implicit TLS listener logged");
    let addr = line
        .split("listening with implicit TLS on ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (server, addr)
}

/// Runs `openssl s_client` with `args`, feeding `input` (LF lines; -crlf
/// makes them CRLF) and waiting for it to end; returns stdout + stderr.
fn s_client(args: &[&str], input: &str) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        // -nocommands: else a line starting with Q or R is s_client's own
        // command (quit, renegotiate), not text to send.
        .args(["-crlf", "-ign_eof", "-nocommands"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const MAIL: &str = "EHLO client.test\nMAIL FROM:<a@src.test>\nRCPT TO:<u@localhost>\nDATA\n\
                    Subject: over tls\n\nhello\n.\nQUIT\n";

/// openssl s_client: STARTTLS on the plain listener and implicit TLS on
/// the other, a message over each; the spool has both, marked as TLS.
#[test]
fn openssl_s_client_starttls_and_implicit_tls_deliver() {
    let Some((_dir, pem, key)) = certs("tls-sclient") else {
        return;
    };
    let (mut server, implicit) = tls_server(&pem, &key, &[]);
    let plain = server.addr.to_string();
    let out = s_client(&["-starttls", "smtp", "-connect", &plain], MAIL);
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    assert!(out.contains("221 2.0.0 Bye"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    let out = s_client(&["-connect", &implicit.to_string()], MAIL);
    assert!(out.contains("220 localhost ESMTP ringmx"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    // TLS 1.2 is offered too; 1.1 is not.
    let out = s_client(&["-tls1_2", "-connect", &implicit.to_string()], MAIL);
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let out = s_client(&["-tls1_1", "-connect", &implicit.to_string()], "QUIT\n");
    assert!(!out.contains("220 localhost"), "{out}");
    assert!(
        server
            .wait_log("tls handshake failed peer=127.0.0.1", STEP)
            .is_some(),
        "{}",
        server.logs()
    );
    server.stop();
    let stored = server.stored();
    assert_eq!(stored.len(), 3);
    for m in &stored {
        let text = m.text();
        assert!(text.contains(") with ESMTPS id "), "{text}");
        assert!(text.contains("\t(using TLSv1."), "{text}");
        assert!(text.contains("Subject: over tls"), "{text}");
    }
    let t13 = "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))";
    assert!(stored[0].text().contains(t13), "{}", stored[0].text());
    // The spool record keeps version and cipher (TLV 0x0009/0x000A), and
    // `ringmx spool ls --json` shows them.
    let reader = ringmx::spool::SpoolReader::open(server.spool.path()).unwrap();
    let tls: Vec<(Option<String>, Option<String>)> = reader
        .messages()
        .unwrap()
        .map(|m| {
            let e = m.unwrap().envelope;
            (e.tls_version, e.tls_cipher)
        })
        .collect();
    let v13 = (
        Some("TLSv1.3".to_string()),
        Some("TLS_AES_256_GCM_SHA384".to_string()),
    );
    assert_eq!(tls[0], v13);
    assert_eq!(tls[1], v13);
    assert_eq!(tls[2].0.as_deref(), Some("TLSv1.2"));
    assert!(
        tls[2]
            .1
            .as_deref()
            .is_some_and(|c| c.starts_with("TLS_ECDHE_")),
        "{tls:?}"
    );
    let out = common::ringmx()
        .args(["spool", "ls", "--json", "--spool"])
        .arg(server.spool.path())
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        json.matches(r#""tls_version":"TLSv1.3""#).count(),
        2,
        "{json}"
    );
}

/// The injection test (CVE-2011-0411 class): `STARTTLS\r\nRSET\r\n` in
/// one write; the RSET must never be answered, inside TLS or out.
#[test]
fn commands_pipelined_after_starttls_are_dropped_not_answered() {
    let Some((_dir, pem, key)) = certs("tls-inject") else {
        return;
    };
    let (mut server, _) = tls_server(&pem, &key, &[]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    tcp.write_all(b"EHLO client.test\r\n").unwrap();
    let ehlo = read_reply(&mut r);
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    tcp.write_all(b"STARTTLS\r\nRSET\r\n").unwrap();
    assert_eq!(read_reply(&mut r), "220 2.0.0 Ready to start TLS\r\n");
    assert!(r.buffer().is_empty(), "nothing after the 220 in plain text");
    drop(r);
    let mut tls = rustls_client(tcp);
    tls.write_all(b"NOOP\r\nQUIT\r\n").unwrap();
    let mut all = String::new();
    tls.read_to_string(&mut all).unwrap();
    // One 250 (the NOOP's), then the 221: the RSET's 250 never came.
    assert_eq!(all, "250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
    assert!(
        server
            .wait_log("dropped 6 bytes pipelined after STARTTLS", STEP)
            .is_some(),
        "{}",
        server.logs()
    );
    server.stop();
}

/// After STARTTLS the session starts over (RFC 3207 §4.2): MAIL needs a new
/// EHLO, which no longer offers STARTTLS; a second STARTTLS is refused.
#[test]
fn after_starttls_the_session_starts_over() {
    let Some((_dir, pem, key)) = certs("tls-reset") else {
        return;
    };
    let (mut server, _) = tls_server(&pem, &key, &[]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    read_reply(&mut r);
    tcp.write_all(b"EHLO client.test\r\nMAIL FROM:<a@src.test>\r\n")
        .unwrap();
    read_reply(&mut r);
    read_reply(&mut r);
    tcp.write_all(b"STARTTLS\r\n").unwrap();
    assert_eq!(
        read_reply(&mut r),
        "503 5.5.1 STARTTLS not allowed inside a mail transaction\r\n"
    );
    tcp.write_all(b"RSET\r\n").unwrap();
    read_reply(&mut r);
    tcp.write_all(b"STARTTLS\r\n").unwrap();
    assert_eq!(read_reply(&mut r), "220 2.0.0 Ready to start TLS\r\n");
    drop(r);
    let tls = rustls_client(tcp);
    let mut r = BufReader::new(tls);
    r.get_mut()
        .write_all(b"MAIL FROM:<a@src.test>\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut r), "503 5.5.1 Send HELO/EHLO first\r\n");
    r.get_mut().write_all(b"EHLO client.test\r\n").unwrap();
    let ehlo = read_reply(&mut r);
    assert!(
        ehlo.starts_with("250-localhost") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    r.get_mut().write_all(b"STARTTLS\r\n").unwrap();
    assert_eq!(read_reply(&mut r), "503 5.5.1 TLS already active\r\n");
    r.get_mut().write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_reply(&mut r), "221 2.0.0 Bye\r\n");
    server.stop();
}

/// Without a certificate: no STARTTLS in EHLO, and the verb gets 502.
#[test]
fn without_a_certificate_starttls_is_not_offered() {
    let mut server = Server::start(&[]);
    let mut c = server.client();
    c.send("EHLO client.test\r\n");
    let ehlo = c.reply().join("\n");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    c.send("STARTTLS\r\n");
    c.expect("502 5.5.1");
    server.stop();
}

/// tls.only: MAIL in plain text gets 530 5.7.0; the warning about public
/// MXs is logged at start.
#[test]
fn tls_only_refuses_mail_before_starttls() {
    let Some((_dir, pem, key)) = certs("tls-only") else {
        return;
    };
    let (mut server, _) = tls_server(&pem, &key, &["--tls-only", "true"]);
    assert!(server.logs().contains("RFC 3207 §4 forbids this"));
    let mut c = server.client();
    c.send("EHLO client.test\r\nMAIL FROM:<a@src.test>\r\n");
    c.reply();
    c.expect("530 5.7.0 Must issue a STARTTLS command first");
    server.stop();
    // Over STARTTLS it goes through.
    let (mut server, _) = tls_server(&pem, &key, &["--tls-only", "true"]);
    let out = s_client(
        &["-starttls", "smtp", "-connect", &server.addr.to_string()],
        MAIL,
    );
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    server.stop();
}

/// Python's smtplib: starttls() and SMTP_SSL, verifying the certificate
/// against it as the CA; both messages are in the spool.
#[test]
fn python_smtplib_starttls_and_smtp_ssl() {
    let Some((_dir, pem, key)) = certs("tls-python") else {
        return;
    };
    let Some(python) = common::require_tool("python3", "python3") else {
        return;
    };
    let (mut server, implicit) = tls_server(&pem, &key, &[]);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={pem:?})
msg = "Subject: from python\r\n\r\nhello\r\n"
with smtplib.SMTP("127.0.0.1", {plain}) as s:
    s.ehlo()
    assert s.has_extn("starttls")
    s.starttls(context=ctx)
    s.ehlo()
    assert not s.has_extn("starttls")
    s.sendmail("py@src.test", ["u@localhost"], msg)
with smtplib.SMTP_SSL("127.0.0.1", {tls}, context=ctx) as s:
    s.sendmail("py2@src.test", ["u@localhost"], msg)
print("ok")
"#,
        pem = s(&pem),
        plain = server.addr.port(),
        tls = implicit.port(),
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
    let stored = server.stored();
    let froms: Vec<&str> = stored.iter().map(|m| m.mail_from.as_str()).collect();
    assert_eq!(froms, ["py@src.test", "py2@src.test"]);
    for m in &stored {
        assert!(m.text().contains("with ESMTPS"), "{}", m.text());
    }
}

/// swaks --tls (STARTTLS) and --tlsc (implicit).
#[test]
fn swaks_tls_and_tlsc() {
    let Some((_dir, pem, key)) = certs("tls-swaks") else {
        return;
    };
    let Some(swaks) = common::require_tool("swaks", "swaks") else {
        return;
    };
    let (mut server, implicit) = tls_server(&pem, &key, &[]);
    for (flag, addr) in [("--tls", server.addr), ("--tlsc", implicit)] {
        let out = Command::new(&swaks)
            .args(["--server", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--from", "sw@src.test", "--to", "u@localhost", flag])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("TLS started"), "{flag}: {text}");
        assert!(text.contains("250 2.0.0 Ok: queued as"), "{flag}: {text}");
    }
    server.stop();
    assert_eq!(server.stored().len(), 2);
}

/// Expired, mismatched, missing: one clear line and exit 2.
#[test]
fn bad_certificates_at_start_exit_2_with_one_line() {
    let Some((dir, pem, key)) = certs("tls-bad") else {
        return;
    };
    let d = dir.path();
    let (_other_pem, other_key) = common::certs::make_cert(d, "other", &["other.test"]);
    // An expired certificate: openssl ca lets us set the dates.
    common::certs::openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=old.test",
            "-keyout",
            "old.key",
            "-out",
            "old.csr",
        ],
    );
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("serial"), "01\n").unwrap();
    common::certs::openssl(
        d,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "old.key",
            "-in",
            "old.csr",
            "-out",
            "old.pem",
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ],
    );
    let missing = d.join("missing.pem");
    let cases: [(&Path, &Path, &str); 5] = [
        (
            &d.join("old.pem"),
            &d.join("old.key"),
            "expired on Thu, 2 Jan 2020",
        ),
        (&pem, &other_key, "does not match certificate"),
        (&missing, &key, "missing.pem: No such file"),
        (&key, &key, "no CERTIFICATE in the file"),
        (&pem, &pem, "TLS key"),
    ];
    for (cert, k, want) in cases {
        let (status, out) = Server::try_start(
            &["--listen", "127.0.0.1:0", "--cores", "1"],
            &["--tls-cert", s(cert), "--tls-key", s(k)],
        )
        .err()
        .expect("must not start");
        assert_eq!(status.code(), Some(2), "{out}");
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("ringmx:")).collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].contains(want), "want {want:?}: {out}");
    }
    // Settings that do not fit: also exit 2.
    let (status, out) = Server::try_start(
        &["--listen", "127.0.0.1:0", "--cores", "1"],
        &["--listen-tls", "127.0.0.1:0"],
    )
    .err()
    .expect("must not start");
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("needs a certificate"), "{out}");
}

/// The leaf certificate's subject as s_client prints it.
fn subject(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in {out}"))
        .to_string()
}

/// SNI chooses among certificates by the names they are valid for; the
/// default answers any other name. SIGHUP reloads them (new handshakes
/// only); a bad new file is logged and the old certificate kept.
#[test]
fn sni_chooses_the_certificate_and_sighup_reloads_it() {
    let Some((dir, pem, key)) = certs("tls-sni") else {
        return;
    };
    let d = dir.path();
    let (opem, okey) = common::certs::make_cert(d, "other", &["other.test", "*.wild.test"]);
    let sni = format!("{}:{}", s(&opem), s(&okey));
    let (mut server, implicit) = tls_server(&pem, &key, &["--tls-sni", &sni]);
    let at = implicit.to_string();
    let who = |name: &str| subject(&s_client(&["-connect", &at, "-servername", name], "QUIT\n"));
    assert!(who("other.test").contains("other.test"));
    assert!(who("a.wild.test").contains("other.test"));
    assert!(who("mx.test").contains("mx.test"));
    assert!(who("nobody.test").contains("mx.test"));

    // Reload: the default becomes a new certificate.
    let (npem, nkey) = common::certs::make_cert(d, "new", &["new.test"]);
    std::fs::copy(&npem, &pem).unwrap();
    std::fs::copy(&nkey, &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(server.wait_log("TLS certificates reloaded", STEP).is_some());
    assert!(who("nobody.test").contains("new.test"));
    // A broken file: logged, the one in use kept.
    std::fs::write(&pem, "not a certificate\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(server
        .wait_log("TLS certificates not reloaded, keeping the old ones", STEP)
        .is_some());
    assert!(who("nobody.test").contains("new.test"));
    server.stop();
}

/// Ticket resumption: a session saved from one connection resumes on the
/// next (`Reused`), on any shard: the ticket keys are shared.
#[test]
fn sessions_resume_from_tickets_across_shards() {
    let Some((dir, pem, key)) = certs("tls-resume") else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let base = ["--listen", "127.0.0.1:0", "--cores", &cores.to_string()];
    let mut server = Server::start_with(
        &base,
        &[
            "--tls-cert",
            s(&pem),
            "--tls-key",
            s(&key),
            "--listen-tls",
            "127.0.0.1:0",
        ],
    );
    let line = server
        .wait_log("listening with implicit TLS on ", STEP)
        .unwrap();
    let at = line.split(" on ").nth(1).unwrap().trim().to_string();
    let sess = dir.path().join("sess.pem");
    let first = s_client(&["-connect", &at, "-sess_out", s(&sess)], "QUIT\n");
    assert!(first.contains("221 2.0.0 Bye"), "{first}");
    assert!(!first.contains("Reused,"), "{first}");
    // Several reconnects: with more than one shard, SO_REUSEPORT spreads
    // them, and each must still resume.
    for _ in 0..6 {
        let again = s_client(&["-connect", &at, "-sess_in", s(&sess)], "QUIT\n");
        assert!(again.contains("Reused, TLSv1.3"), "{again}");
    }
    server.stop();
    // The server counted them the same way.
    let logs = server.logs();
    assert!(
        logs.contains("tls: handshakes=7 resumed=6 failed=0 starttls=0 implicit=7"),
        "{logs}"
    );
}

/// A rustls client over `tcp`, handshake done. It does not check the
/// server's certificate (what is tested here is the server's side).
fn rustls_client(tcp: TcpStream) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("mx.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Postfix as the sending MTA: a private instance (its own config, queue
/// and port) relays a message to ringmx with `smtp_tls_security_level =
/// encrypt`, so it is delivered over STARTTLS or not at all. Needs root
/// (Postfix's master) and Debian's postfix.
#[test]
fn postfix_delivers_over_starttls_with_encrypt() {
    let Some((_dir, pem, key)) = certs("tls-postfix") else {
        return;
    };
    let (mut server, _) = tls_server(&pem, &key, &[]);
    let Some(pf) = common::postfix::Postfix::start(
        "tls-postfix-q",
        server.addr.port(),
        "smtp_tls_security_level = encrypt\n",
    ) else {
        return;
    };
    pf.submit("pf@src.test", "u@localhost", "via postfix");
    // Postfix relays it to ringmx on its own schedule: wait for the
    // accepted message's log line, not for a time.
    let line = server.wait_log("msg id=", Duration::from_secs(60));
    let plog = pf.log();
    assert!(line.is_some(), "{}\n--- postfix:\n{plog}", server.logs());
    server.stop();
    let stored = server.stored();
    assert_eq!(stored.len(), 1);
    let text = stored[0].text();
    assert!(
        text.starts_with("Received: from postfix-sender.test"),
        "{text}"
    );
    assert!(text.contains("(using TLSv1.3 with cipher"), "{text}");
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(
        plog.contains("TLS connection established to 127.0.0.1"),
        "{plog}"
    );
}

/// A client that connects to an implicit-TLS port and says nothing is
/// dropped at the handshake timeout, logged and counted as failed.
#[test]
fn a_silent_handshake_times_out() {
    let Some((_dir, pem, key)) = certs("tls-timeout") else {
        return;
    };
    let (mut server, implicit) = tls_server(&pem, &key, &["--tls-handshake-timeout", "1s"]);
    let mut tcp = TcpStream::connect(implicit).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    // The server closes; nothing was sent (no greeting before TLS).
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{buf:?}");
    let line = server.wait_log("tls handshake failed", STEP).unwrap();
    assert!(line.contains("timed out after 1s"), "{line}");
    assert!(server
        .wait_log("outcome=tls-handshake-failed", STEP)
        .is_some());
    server.stop();
    assert!(server
        .logs()
        .contains("tls: handshakes=0 resumed=0 failed=1"));
}

/// Behind a PROXY header, on an implicit-TLS listener, the ClientHello may
/// arrive in the same read as the header (a balancer forwards both as soon
/// as it has them): it is TLS input, handed to the handshake, and the
/// session that follows sees the header's client address.
#[test]
fn a_clienthello_in_the_same_read_as_a_proxy_header_starts_tls() {
    let Some((_dir, pem, key)) = certs("tls-proxy") else {
        return;
    };
    let Some(python) = common::require_tool("python3", "python3") else {
        return;
    };
    let (mut server, implicit) = tls_server(
        &pem,
        &key,
        &[
            "--proxy-protocol",
            "true",
            "--trusted-proxy",
            "127.0.0.1/32",
        ],
    );
    // The first ClientHello comes out of a memory BIO, so that it goes in
    // one write with the header; the rest of the handshake and the session
    // run over the socket.
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={pem:?})
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname="mx.test")
s = socket.create_connection(("127.0.0.1", {port}), timeout=20)
def pump(op):
    while True:
        try:
            r = op()
            if out.pending: s.sendall(out.read())
            return r
        except ssl.SSLWantReadError:
            if out.pending: s.sendall(out.read())
            data = s.recv(65536)
            if not data: raise SystemExit("closed during TLS")
            inc.write(data)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 465\r\n" + out.read())
pump(tls.do_handshake)
def reply():
    buf = b""
    while True:
        buf += pump(lambda: tls.read(65536))
        last = buf.rstrip(b"\r\n").split(b"\r\n")[-1]
        if len(last) >= 4 and last[3:4] == b" ": return buf.decode()
assert reply().startswith("220"), "greeting"
for cmd, want in [("EHLO c.test", "250"), ("MAIL FROM:<p@src.test>", "250"),
                  ("RCPT TO:<u@localhost>", "250"), ("DATA", "354"),
                  ("Subject: behind a balancer\r\n\r\nhello\r\n.", "250"), ("QUIT", "221")]:
    pump(lambda: tls.write((cmd + "\r\n").encode()))
    r = reply()
    assert r.split("\r\n")[-2][:3] == want, (cmd, r)
print("ok")
"#,
        pem = s(&pem),
        port = implicit.port(),
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    server.stop();
    let stored = server.stored();
    assert_eq!(stored.len(), 1);
    let text = stored[0].text();
    assert!(
        text.contains("192.0.2.7") && text.contains("with ESMTPS"),
        "{text}"
    );
}

/// Over the shard's connection limit, a client of an implicit-TLS
/// listener is closed without a reply: a plaintext `421` is not TLS, and
/// the client would take it for a broken record (as for the per-IP limits).
#[test]
fn over_the_connection_limit_an_implicit_tls_client_gets_no_plaintext() {
    let Some((_dir, pem, key)) = certs("tls-limit") else {
        return;
    };
    let (server, implicit) = tls_server(&pem, &key, &["--max-connections", "1"]);
    // Holds the shard's one place (plain and TLS listeners share it).
    let mut held = server.client();
    held.ehlo();
    let mut tcp = TcpStream::connect(implicit).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    assert!(
        server
            .wait_log("outcome=too-many-connections", STEP)
            .is_some(),
        "{}",
        server.logs()
    );
}

/// Idle TLS connections held by
/// [`idle_tls_connections_stay_within_their_bound`], opened in waves of
/// [`TLS_WAVE`] (each wave's release lines stay under the log's burst).
const TLS_IDLE: usize = 400;
const TLS_WAVE: usize = 50;

/// The process's resident set, bytes.
fn vm_rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Implicit TLS, one small message, then the connection stays open and
/// silent.
fn tls_small_transaction(
    addr: SocketAddr,
    n: usize,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut s = rustls_client(TcpStream::connect(addr).unwrap());
    let mut r = BufReader::new(&mut s);
    assert!(read_reply(&mut r).starts_with("220 "));
    drop(r);
    s.write_all(
        b"EHLO idle.example\r\nMAIL FROM:<idle@example.org>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n",
    )
    .unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(&mut s);
    for want in ["250 ", "250 2.1.0", "250 2.1.5", "354 "] {
        let got = read_reply(&mut r);
        assert!(got.contains(want), "{want}: {got}");
    }
    drop(r);
    s.write_all(format!("Subject: {n}\r\n\r\nhello\r\n.\r\n").as_bytes())
        .unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(&mut s);
    assert!(read_reply(&mut r).starts_with("250 2.0.0 Ok: queued as"));
    drop(r);
    s
}

#[test]
fn idle_tls_connections_stay_within_their_bound() {
    let Some((_dir, pem, key)) = certs("tls-idle") else {
        return;
    };
    common::raise_nofile(2 * TLS_IDLE as u64 + 256);
    let (server, addr) = tls_server(
        &pem,
        &key,
        &["--max-connections", "2000", "--log-level", "debug"],
    );
    let bound = ringmx::server::conn_memory_bound(&ringmx::config::Config::default());
    let released = |n: usize| {
        server
            .wait_log_nth("idle connection released", n, STEP)
            .unwrap_or_else(|| panic!("hung: no idle release #{n}:\n{}", server.logs()));
    };
    // Warm up: the shard's one-time allocations (rustls's config, the
    // ticket keys) go into the baseline.
    let warm = tls_small_transaction(addr, 0);
    released(1);
    drop(warm);
    let before = vm_rss(server.pid());
    let mut idle = Vec::with_capacity(TLS_IDLE);
    for w in 0..TLS_IDLE / TLS_WAVE {
        for i in 0..TLS_WAVE {
            idle.push(tls_small_transaction(addr, 1 + w * TLS_WAVE + i));
        }
        released(1 + (w + 1) * TLS_WAVE);
    }
    let after = vm_rss(server.pid());
    let per_conn = after.saturating_sub(before) / TLS_IDLE as u64;
    eprintln!("RSS before {before} after {after}: {per_conn} per idle TLS connection");
    assert!(
        per_conn <= bound.idle_tls,
        "{per_conn} bytes per idle TLS connection; bound {}",
        bound.idle_tls
    );
    drop(idle);
    let mut server = server;
    server.stop();
    assert_eq!(server.stored().len(), TLS_IDLE + 1);
}
