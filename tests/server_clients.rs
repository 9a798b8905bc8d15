//! Real SMTP clients deliver through ringmx: Python's smtplib and swaks
//! (both installed by .ci/run). A missing client is skipped with a message
//! on a developer's machine and fails the test in CI (`common::skip`).

mod common;

use std::process::Command;

use common::Server;

#[test]
fn python_smtplib_delivers_a_message() {
    let Some(python) = common::require_tool("python3", "python3") else {
        return;
    };
    let mut s = Server::start(&[]);
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
port = int(sys.argv[1])
m = EmailMessage()
m["From"] = "alice@example.org"
m["To"] = "bob@localhost"
m["Subject"] = "smtplib test"
m.set_content("Hello from smtplib.\n.A line with a leading dot.\n")
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    c.ehlo("smtplib.example")
    assert c.has_extn("pipelining") and c.has_extn("size"), c.esmtp_features
    refused = c.send_message(m, to_addrs=["bob@localhost", "carol@elsewhere.example"])
    assert refused == {"carol@elsewhere.example": (550, b"5.7.1 Relay access denied")}, refused
print("sent")
"#;
    let out = Command::new(python)
        .args(["-c", script, &s.addr.port().to_string()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtplib failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 1, "{}", s.logs());
    let m = &stored[0];
    assert_eq!(m.mail_from, "alice@example.org");
    assert_eq!(m.rcpts, ["bob@localhost"]);
    assert_eq!(m.helo, "smtplib.example");
    let t = m.text();
    assert!(t.contains("Subject: smtplib test\r\n"), "{t}");
    // smtplib dot-stuffs the line; stored unstuffed, as the body's end.
    assert!(
        m.body
            .ends_with(b"\r\n\r\nHello from smtplib.\r\n.A line with a leading dot.\r\n"),
        "{t}"
    );
}

#[test]
fn swaks_delivers_a_message() {
    let Some(swaks) = common::require_tool("swaks", "swaks") else {
        return;
    };
    let mut s = Server::start(&[]);
    let out = Command::new(swaks)
        .args(["--server", &s.addr.to_string()])
        .args(["--from", "sender@example.org", "--to", "rcpt@localhost"])
        .args(["--ehlo", "swaks.example", "--pipeline"])
        .args([
            "--header",
            "Subject: swaks test",
            "--body",
            "Hello from swaks.",
        ])
        .args(["--timeout", "20"])
        .output()
        .expect("run swaks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks failed:\n{stdout}\n{}",
        s.logs()
    );
    assert!(stdout.contains("250 2.0.0 Ok: queued as"), "{stdout}");
    assert!(s.stop().success());
    let stored = s.stored();
    assert_eq!(stored.len(), 1, "{}", s.logs());
    assert_eq!(stored[0].mail_from, "sender@example.org");
    assert_eq!(stored[0].rcpts, ["rcpt@localhost"]);
    let t = stored[0].text();
    assert!(
        t.contains("Subject: swaks test\r\n") && t.contains("Hello from swaks."),
        "{t}"
    );
}
