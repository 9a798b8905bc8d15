//! Engine tests for SMTP AUTH on a submission session (RFC 4954, RFC 4616,
//! RFC 6409): what is offered when, the SASL exchange, the verdicts, and
//! what a logged-in user may do. The harness answers `alice`/`secret` as
//! right and everything else as wrong.

use super::reply;
use super::tests::Harness;
use super::CloseReason;

/// `\0alice\0secret`, base64.
const PLAIN_ALICE: &str = "AGFsaWNlAHNlY3JldA==";

/// A submission session after STARTTLS and EHLO.
fn submission() -> Harness {
    let mut h = Harness::new();
    h.s.set_tls(true, true);
    h.s.set_submission(false);
    h.feed(b"EHLO c.example\r\nSTARTTLS\r\n");
    let ehlo = h.feed(b"EHLO c.example\r\n");
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo}");
    h
}

fn s(r: reply::Reply) -> &'static str {
    std::str::from_utf8(r).unwrap()
}

#[test]
fn auth_is_offered_only_on_submission_after_tls() {
    // The MX role: never offered, never accepted.
    let mut h = Harness::new();
    h.s.set_tls(true, false);
    assert!(!h.feed(b"EHLO c.example\r\n").contains("AUTH"));
    let r = h.feed(format!("AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes());
    assert_eq!(r, s(reply::NOT_IMPLEMENTED));
    h.feed(b"STARTTLS\r\n");
    assert!(!h.feed(b"EHLO c.example\r\n").contains("AUTH"));
    // AUTH= belongs to the extension: not on the MX role.
    assert_eq!(
        h.feed(b"MAIL FROM:<a@b.example> AUTH=<>\r\n"),
        s(reply::BAD_PARAM)
    );
    assert!(h.auths.is_empty());

    // Submission before TLS: not advertised; 538; MAIL needs TLS first.
    let mut h = Harness::new();
    h.s.set_tls(true, true);
    h.s.set_submission(false);
    let ehlo = h.feed(b"EHLO c.example\r\n");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let r = h.feed(format!("AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes());
    assert_eq!(r, s(reply::AUTH_NEEDS_TLS));
    assert_eq!(
        h.feed(b"MAIL FROM:<a@b.example>\r\n"),
        s(reply::TLS_REQUIRED)
    );
    assert!(h.auths.is_empty());
}

#[test]
fn plain_and_login_with_and_without_initial_response() {
    let mut h = submission();
    let r = h.feed(format!("AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes());
    assert_eq!(r, s(reply::AUTH_OK));
    assert_eq!(h.s.auth_identity(), Some("alice"));
    // Already logged in.
    assert_eq!(h.feed(b"AUTH LOGIN\r\n"), s(reply::AUTH_ALREADY));

    let mut h = submission();
    assert_eq!(h.feed(b"auth plain\r\n"), "334 \r\n");
    assert_eq!(
        h.feed(format!("{PLAIN_ALICE}\r\n").as_bytes()),
        s(reply::AUTH_OK)
    );

    let mut h = submission();
    assert_eq!(h.feed(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.feed(b"YWxpY2U=\r\n"), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(h.feed(b"c2VjcmV0\r\n"), s(reply::AUTH_OK));

    let mut h = submission();
    assert_eq!(h.feed(b"AUTH LOGIN YWxpY2U=\r\n"), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(h.feed(b"d3Jvbmc=\r\n"), s(reply::AUTH_FAILED));
    assert_eq!(h.s.auth_identity(), None);
    assert_eq!(h.auths, [("alice".to_owned(), b"wrong".to_vec())]);
    // A second try may follow a failure.
    let r = h.feed(format!("AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes());
    assert_eq!(r, s(reply::AUTH_OK));
}

#[test]
fn cancel_empty_bad_base64_unknown_mechanism_and_order() {
    let mut h = submission();
    assert_eq!(h.feed(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(h.feed(b"*\r\n"), s(reply::AUTH_CANCELLED));
    assert_eq!(
        h.feed(b"AUTH LOGIN\r\n*\r\n"),
        format!("334 VXNlcm5hbWU6\r\n{}", s(reply::AUTH_CANCELLED))
    );
    // `=`: an empty response, which PLAIN cannot use.
    assert_eq!(h.feed(b"AUTH PLAIN =\r\n"), s(reply::AUTH_BAD_RESPONSE));
    assert_eq!(h.feed(b"AUTH PLAIN !!!!\r\n"), s(reply::AUTH_BAD_RESPONSE));
    assert_eq!(h.feed(b"AUTH CRAM-MD5\r\n"), s(reply::AUTH_MECHANISM));
    assert_eq!(h.feed(b"AUTH\r\n"), s(reply::AUTH_SYNTAX));
    // Acting as someone else (authzid) is not offered.
    // "bob\0alice\0secret"
    assert_eq!(
        h.feed(b"AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n"),
        s(reply::AUTH_FAILED)
    );
    assert!(h.auths.is_empty());
    // Before AUTH no MAIL on submission.
    assert_eq!(
        h.feed(b"MAIL FROM:<a@b.example>\r\n"),
        s(reply::AUTH_REQUIRED)
    );
    // None of these refusals is named with its credential.
    for r in h.s.drain_refusals() {
        assert!(
            !r.arg().contains("Ym9i") && !r.arg().contains("!!!!"),
            "{}",
            r.arg()
        );
    }
}

#[test]
fn a_sasl_line_over_the_limit_ends_the_exchange() {
    let mut h = submission();
    assert_eq!(h.feed(b"AUTH PLAIN\r\n"), "334 \r\n");
    // Over RFC 4954's 12288 octets (a 2000-octet response is taken).
    let long = "A".repeat(super::session::SASL_LINE_BYTES + 8);
    let r = h.feed(format!("{long}\r\n").as_bytes());
    assert_eq!(r, s(reply::LINE_TOO_LONG));
    // Back to commands: the next line is a command again.
    assert_eq!(h.feed(b"NOOP\r\n"), s(reply::OK));
}

#[test]
fn logged_in_users_relay_anywhere_and_the_record_says_so() {
    let mut h = submission();
    h.feed(format!("AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes());
    let r = h.feed(b"MAIL FROM:<alice@example.com> AUTH=alice@example.com\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n");
    assert_eq!(
        r,
        "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    let env = h.s.envelope();
    assert_eq!((env.protocol, env.auth), ("ESMTPSA", Some("alice")));
    h.feed(b"hi\r\n.\r\n");
    assert_eq!(h.stored.len(), 1);
    // Inside a transaction too, the answer is that it is done already.
    h.feed(b"MAIL FROM:<alice@example.com>\r\n");
    assert_eq!(h.feed(b"AUTH LOGIN\r\n"), s(reply::AUTH_ALREADY));
}

#[test]
fn sender_login_match_refuses_other_senders() {
    let mut h = Harness::new();
    h.s.set_tls(true, true);
    h.s.set_submission(true);
    h.feed(b"EHLO c.example\r\nSTARTTLS\r\n");
    h.feed(b"EHLO c.example\r\n");
    h.feed(format!("AUTH PLAIN {PLAIN_ALICE}\r\n").as_bytes());
    assert_eq!(
        h.feed(b"MAIL FROM:<bob@example.com>\r\n"),
        s(reply::SENDER_LOGIN_MISMATCH)
    );
    assert_eq!(
        h.feed(b"MAIL FROM:<alice@elsewhere.example>\r\n"),
        s(reply::SENDER_LOGIN_MISMATCH)
    );
    assert_eq!(
        h.feed(b"MAIL FROM:<Alice@example.com>\r\n"),
        s(reply::SENDER_LOGIN_MISMATCH)
    );
    assert_eq!(
        h.feed(b"MAIL FROM:<alice@example.com>\r\n"),
        "250 2.1.0 Sender ok\r\n"
    );
}

#[test]
fn a_blocked_verdict_closes_with_421() {
    let mut h = submission();
    h.auth_blocks = true;
    let r = h.feed(b"AUTH LOGIN YWxpY2U=\r\nd3Jvbmc=\r\n");
    assert_eq!(
        r,
        format!("334 UGFzc3dvcmQ6\r\n{}", s(reply::TOO_MANY_AUTH_FAILURES))
    );
    assert_eq!(h.closed, Some(CloseReason::AuthFailures));
}
