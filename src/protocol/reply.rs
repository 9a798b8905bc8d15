//! Every reply ringmx sends, with its enhanced status code (RFC 2034, 3463),
//! and the few that carry numbers, encoded into a caller-owned buffer.
//!
//! Enhanced codes are sent on every reply but the greeting and the EHLO
//! lines, whether the client said EHLO or HELO: RFC 2034 §3 requires them
//! after EHLO and does not forbid them otherwise (Postfix does the same).

/// A fixed reply line, CRLF included.
pub type Reply = &'static [u8];

// Greeting-time and connection-level replies.
/// Over the per-shard connection limit (RFC 5321 §3.8).
pub const TOO_MANY_CONNECTIONS: Reply = b"421 4.3.2 Too many connections, try again later\r\n";
/// Server shutting down (RFC 5321 §3.8).
pub const SHUTTING_DOWN: Reply = b"421 4.3.2 Service shutting down, try again later\r\n";
/// The client was silent for the whole timeout (RFC 5321 §4.5.3.2.7).
pub const TIMEOUT: Reply = b"421 4.4.2 Timeout waiting for input, closing connection\r\n";
/// The connection lived longer than server.max_connection_lifetime.
pub const LIFETIME_EXCEEDED: Reply = b"421 4.4.2 Connection lifetime exceeded, closing\r\n";
/// Too many failed commands.
pub const TOO_MANY_ERRORS: Reply = b"421 4.7.0 Too many errors, closing connection\r\n";
/// More than smtp.max_junk_commands junk commands (Postfix's
/// `smtpd_junk_command_limit`).
pub const TOO_MANY_JUNK: Reply = b"421 4.7.0 Too many junk commands, closing connection\r\n";
/// A refused DATA with data behind it (RFC 2920 §3.1): those bytes are
/// not read as commands.
pub const IMPROPER_PIPELINING: Reply =
    b"554 5.5.0 Improper pipelining: data sent after a refused DATA, closing\r\n";
/// An HTTP request was sent to the SMTP port.
pub const HTTP_REQUEST: Reply = b"500 5.5.1 This is an SMTP server, not HTTP; closing\r\n";
/// Over server.max_connections_per_ip (Postfix's anvil answers the same).
pub const TOO_MANY_CONNECTIONS_FROM_CLIENT: Reply =
    b"421 4.7.0 Too many connections from your address, try again later\r\n";
/// Over server.max_connection_rate_per_ip.
pub const CONNECTION_RATE: Reply =
    b"421 4.7.0 Too many new connections from your address, try again later\r\n";
/// The client talked before the greeting's last line (server.greet_wait;
/// RFC 5321 §3.1 has the client wait for it; RFC 7504 521: no mail here).
pub const PREGREET: Reply = b"521 5.5.1 Protocol error: talking before the greeting\r\n";
/// A command line ended by a bare LF (smtp.reject_bare_lf_commands; RFC
/// 5321 §2.3.8: lines end with CRLF).
pub const BARE_LF_COMMAND: Reply =
    b"554 5.5.1 Protocol error: command line ended by a bare <LF>, closing\r\n";
/// A command with more behind it before PIPELINING was offered
/// (smtp.reject_unoffered_pipelining; RFC 2920 §3.1).
pub const UNOFFERED_PIPELINING: Reply =
    b"554 5.5.0 Improper pipelining: PIPELINING was not offered, closing\r\n";

// Success.
/// Generic success (RSET, NOOP, MAIL).
pub const OK: Reply = b"250 2.0.0 Ok\r\n";
/// MAIL FROM accepted.
pub const SENDER_OK: Reply = b"250 2.1.0 Sender ok\r\n";
/// RCPT TO accepted.
pub const RECIPIENT_OK: Reply = b"250 2.1.5 Recipient ok\r\n";
/// DATA accepted; send the body (RFC 5321 §4.1.1.4).
pub const START_DATA: Reply = b"354 End data with <CR><LF>.<CR><LF>\r\n";
/// QUIT (RFC 5321 §4.1.1.10).
pub const BYE: Reply = b"221 2.0.0 Bye\r\n";
/// VRFY is not used to disclose mailboxes (RFC 5321 §3.5.3 allows 252).
pub const VRFY: Reply =
    b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
/// HELP (RFC 5321 §4.1.1.8).
pub const HELP: Reply =
    b"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n";

// Syntax and sequence errors.
/// Unknown verb (RFC 5321 §4.2.4).
pub const UNRECOGNIZED: Reply = b"500 5.5.2 Command unrecognized\r\n";
/// Command line longer than smtp.max_command_line_bytes (RFC 5321 §4.5.3.1.4).
pub const LINE_TOO_LONG: Reply = b"500 5.5.2 Line too long\r\n";
/// A recognised verb that ringmx does not offer (EXPN, TURN, AUTH; STARTTLS
/// without a certificate).
pub const NOT_IMPLEMENTED: Reply = b"502 5.5.1 Command not implemented\r\n";
/// HELO/EHLO without a domain.
pub const HELO_SYNTAX: Reply = b"501 5.5.4 Syntax: HELO/EHLO domain\r\n";
/// MAIL syntax.
pub const MAIL_SYNTAX: Reply = b"501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n";
/// RCPT syntax.
pub const RCPT_SYNTAX: Reply = b"501 5.5.4 Syntax: RCPT TO:<address> [parameters]\r\n";
/// BDAT syntax (RFC 3030 §2).
pub const BDAT_SYNTAX: Reply = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n";
/// BDAT after HELO: CHUNKING was not negotiated (RFC 3030 §2).
pub const BDAT_NEEDS_EHLO: Reply = b"503 5.5.1 BDAT requires EHLO\r\n";
/// A BDAT whose size cannot be read: the chunk's end is unknown (RFC 3030
/// §2), so this one reply closes the connection.
pub const BDAT_UNKNOWN_SIZE: Reply =
    b"421 4.5.4 Syntax: BDAT size [LAST]; cannot tell where its data ends, closing\r\n";
/// A command that takes no argument got one.
pub const NO_PARAMS: Reply = b"501 5.5.4 This command takes no parameters\r\n";
/// An address that is not a valid mailbox (RFC 5321 §4.1.2).
pub const BAD_ADDRESS: Reply = b"501 5.1.3 Bad address syntax\r\n";
/// Non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
pub const UTF8_NOT_ALLOWED: Reply = b"553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n";
/// A MAIL/RCPT parameter we do not support (RFC 5321 §4.1.1.11).
pub const BAD_PARAM: Reply = b"555 5.5.4 Unsupported or malformed parameter\r\n";
/// MAIL before HELO/EHLO.
pub const NEED_HELO: Reply = b"503 5.5.1 Send HELO/EHLO first\r\n";
/// MAIL inside a transaction.
pub const NESTED_MAIL: Reply = b"503 5.5.1 Sender already specified\r\n";
/// RCPT/DATA/BDAT before MAIL.
pub const NEED_MAIL: Reply = b"503 5.5.1 Send MAIL first\r\n";
/// DATA/BDAT with no accepted recipient (RFC 5321 §3.3).
pub const NEED_RCPT: Reply = b"554 5.5.1 No valid recipients\r\n";
/// DATA after BDAT in one transaction (RFC 3030 §2).
pub const DATA_AFTER_BDAT: Reply = b"503 5.5.1 DATA not allowed after BDAT in this transaction\r\n";
/// BINARYMIME body without BDAT (RFC 3030 §3).
pub const BINARYMIME_NEEDS_BDAT: Reply = b"503 5.5.1 BODY=BINARYMIME requires BDAT\r\n";

// STARTTLS (RFC 3207).
/// STARTTLS accepted: the TLS handshake follows (RFC 3207 §4).
pub const READY_FOR_TLS: Reply = b"220 2.0.0 Ready to start TLS\r\n";
/// TLS could not be started now (RFC 3207 §4).
pub const TLS_UNAVAILABLE: Reply = b"454 4.7.0 TLS not available due to temporary reason\r\n";
/// STARTTLS on a connection that is already encrypted.
pub const TLS_ALREADY_ACTIVE: Reply = b"503 5.5.1 TLS already active\r\n";
/// STARTTLS inside a mail transaction: RSET or finish it first.
pub const TLS_IN_TRANSACTION: Reply =
    b"503 5.5.1 STARTTLS not allowed inside a mail transaction\r\n";
/// `tls.only`: MAIL before STARTTLS (RFC 3207 §4).
pub const TLS_REQUIRED: Reply = b"530 5.7.0 Must issue a STARTTLS command first\r\n";

// SMTP AUTH (RFC 4954), on submission listeners only.
/// AUTH accepted (RFC 4954 §6).
pub const AUTH_OK: Reply = b"235 2.7.0 Authentication successful\r\n";
/// A SASL challenge with no data (PLAIN without an initial response).
pub const AUTH_CONTINUE: Reply = b"334 \r\n";
/// LOGIN's first challenge: base64 of `Username:`.
pub const AUTH_USERNAME: Reply = b"334 VXNlcm5hbWU6\r\n";
/// LOGIN's second challenge: base64 of `Password:`.
pub const AUTH_PASSWORD: Reply = b"334 UGFzc3dvcmQ6\r\n";
/// Bad user name or password (RFC 4954 §6).
pub const AUTH_FAILED: Reply = b"535 5.7.8 Authentication credentials invalid\r\n";
/// AUTH before TLS on a submission listener (RFC 4954 §6: the mechanism
/// needs an encrypted connection).
pub const AUTH_NEEDS_TLS: Reply =
    b"538 5.7.11 Encryption required for requested authentication mechanism\r\n";
/// AUTH after a successful AUTH (RFC 4954 §4).
pub const AUTH_ALREADY: Reply = b"503 5.5.1 Already authenticated\r\n";
/// AUTH inside a mail transaction (RFC 4954 §4).
pub const AUTH_IN_TRANSACTION: Reply = b"503 5.5.1 AUTH not allowed inside a mail transaction\r\n";
/// AUTH before EHLO: the extension was not negotiated.
pub const AUTH_NEEDS_EHLO: Reply = b"503 5.5.1 Send EHLO first\r\n";
/// A mechanism other than PLAIN and LOGIN (RFC 4954 §4).
pub const AUTH_MECHANISM: Reply = b"504 5.5.4 Unrecognized authentication type\r\n";
/// AUTH syntax.
pub const AUTH_SYNTAX: Reply = b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n";
/// The client answered a challenge with `*` (RFC 4954 §4).
pub const AUTH_CANCELLED: Reply = b"501 5.7.0 Authentication cancelled\r\n";
/// A SASL response that is not base64, or not what the mechanism expects.
pub const AUTH_BAD_RESPONSE: Reply = b"501 5.5.2 Cannot decode response\r\n";
/// The users could not be checked now (RFC 4954 §6).
pub const AUTH_TEMPFAIL: Reply = b"454 4.7.0 Temporary authentication failure\r\n";
/// MAIL before AUTH on a submission listener (RFC 4954 §6).
pub const AUTH_REQUIRED: Reply = b"530 5.7.0 Authentication required\r\n";
/// submission.auth_max_failures reached within the window.
pub const TOO_MANY_AUTH_FAILURES: Reply =
    b"421 4.7.0 Too many failed authentications, try again later\r\n";
/// submission.sender_login_match: MAIL FROM is not the login's address
/// (Postfix's `reject_sender_login_mismatch`).
pub const SENDER_LOGIN_MISMATCH: Reply =
    b"553 5.7.1 Sender address rejected: not owned by the authenticated user\r\n";

// Policy.
/// A recipient outside smtp.accepted_domains: no open relay (RFC 5321 §3.6.2).
pub const RELAY_DENIED: Reply = b"550 5.7.1 Relay access denied\r\n";
/// A recipient the recipient map does not list, at a domain whose policy
/// is `map` (RFC 3463 §3.2: X.1.1 bad destination mailbox address).
pub const UNKNOWN_RECIPIENT: Reply = b"550 5.1.1 Recipient address rejected: User unknown\r\n";
/// Past smtp.max_recipients (RFC 5321 §4.5.3.1.10).
pub const TOO_MANY_RECIPIENTS: Reply = b"452 4.5.3 Too many recipients\r\n";
/// An LDAP or verify lookup failed or timed out: never accept on error.
pub const LOOKUP_FAILED: Reply =
    b"451 4.3.0 Recipient address rejected: lookup failed, try again later\r\n";
/// SIZE= or the body itself over smtp.max_message_bytes (RFC 1870 §6.1).
pub const MESSAGE_TOO_BIG: Reply = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n";
/// A text line in DATA over smtp.max_text_line_bytes (RFC 5321 §4.5.3.1.6).
pub const TEXT_LINE_TOO_LONG: Reply = b"500 5.5.6 Message rejected: text line too long\r\n";
/// Bare LF or bare CR in DATA (SMTP smuggling defence, RFC 5321 §2.3.8).
pub const BARE_NEWLINE: Reply =
    b"550 5.6.11 Message rejected: bare <LF> or <CR> not allowed, use <CR><LF>\r\n";
/// MAIL over server.max_message_rate_per_ip (RFC 3463 X.7.1).
pub const MESSAGE_RATE: Reply =
    b"452 4.7.1 Too many messages from your address, try again later\r\n";
/// RCPT over server.max_recipient_rate_per_ip (RFC 3463 X.7.1).
pub const RECIPIENT_RATE: Reply =
    b"452 4.7.1 Too many recipients from your address, try again later\r\n";
/// Spool full or over its free-space floor (RFC 3463 X.3.1).
pub const SPOOL_FULL: Reply = b"452 4.3.1 Insufficient system storage, try again later\r\n";
/// Writing or syncing the spool failed (RFC 3463 X.3.0).
pub const SPOOL_ERROR: Reply = b"451 4.3.0 Local error in processing, try again later\r\n";

/// Writes the first line of a greeting that continues (server.greet_wait):
/// `220-<hostname> ESMTP ringmx`; a client must wait for the `220 ` line.
pub fn write_greeting_start(out: &mut Vec<u8>, hostname: &str) {
    out.extend_from_slice(b"220-");
    out.extend_from_slice(hostname.as_bytes());
    out.extend_from_slice(b" ESMTP ringmx\r\n");
}

/// Writes the greeting: `220 <hostname> ESMTP ringmx`.
pub fn write_greeting(out: &mut Vec<u8>, hostname: &str) {
    out.extend_from_slice(b"220 ");
    out.extend_from_slice(hostname.as_bytes());
    out.extend_from_slice(b" ESMTP ringmx\r\n");
}

/// Writes the EHLO reply (RFC 5321 §4.1.1.1) with our extensions;
/// STARTTLS (RFC 3207) when `starttls`.
pub fn write_ehlo(out: &mut Vec<u8>, hostname: &str, max_message_bytes: u64, starttls: bool) {
    write_ehlo_auth(out, hostname, max_message_bytes, starttls, false);
}

/// [`write_ehlo`], with `AUTH PLAIN LOGIN` (RFC 4954 §3) when `auth`.
pub fn write_ehlo_auth(
    out: &mut Vec<u8>,
    hostname: &str,
    max_message_bytes: u64,
    starttls: bool,
    auth: bool,
) {
    out.extend_from_slice(b"250-");
    out.extend_from_slice(hostname.as_bytes());
    if starttls {
        out.extend_from_slice(b"\r\n250-STARTTLS");
    }
    if auth {
        out.extend_from_slice(b"\r\n250-AUTH PLAIN LOGIN");
    }
    out.extend_from_slice(b"\r\n250-PIPELINING\r\n250-SIZE ");
    write_u64(out, max_message_bytes);
    out.extend_from_slice(
        b"\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
    );
}

/// Writes the HELO reply.
pub fn write_helo(out: &mut Vec<u8>, hostname: &str) {
    out.extend_from_slice(b"250 ");
    out.extend_from_slice(hostname.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes `250 2.0.0 Ok: queued as <id>`: the message is durable.
pub fn write_queued(out: &mut Vec<u8>, queue_id: &str) {
    out.extend_from_slice(b"250 2.0.0 Ok: queued as ");
    out.extend_from_slice(queue_id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the reply to a non-final BDAT chunk (RFC 3030 §2).
pub fn write_bdat_ok(out: &mut Vec<u8>, octets: u64) {
    out.extend_from_slice(b"250 2.0.0 ");
    write_u64(out, octets);
    out.extend_from_slice(b" octets received\r\n");
}

/// Appends `n` in decimal without allocating.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_reply_is_one_crlf_line_with_enhanced_code() {
        let all: &[Reply] = &[
            TOO_MANY_CONNECTIONS,
            SHUTTING_DOWN,
            TIMEOUT,
            LIFETIME_EXCEEDED,
            TOO_MANY_ERRORS,
            TOO_MANY_JUNK,
            IMPROPER_PIPELINING,
            HTTP_REQUEST,
            TOO_MANY_CONNECTIONS_FROM_CLIENT,
            CONNECTION_RATE,
            PREGREET,
            UNOFFERED_PIPELINING,
            BARE_LF_COMMAND,
            MESSAGE_RATE,
            RECIPIENT_RATE,
            OK,
            SENDER_OK,
            RECIPIENT_OK,
            BYE,
            VRFY,
            HELP,
            UNRECOGNIZED,
            LINE_TOO_LONG,
            NOT_IMPLEMENTED,
            HELO_SYNTAX,
            MAIL_SYNTAX,
            RCPT_SYNTAX,
            BDAT_SYNTAX,
            NO_PARAMS,
            BDAT_NEEDS_EHLO,
            BDAT_UNKNOWN_SIZE,
            BAD_ADDRESS,
            UTF8_NOT_ALLOWED,
            BAD_PARAM,
            NEED_HELO,
            NESTED_MAIL,
            NEED_MAIL,
            NEED_RCPT,
            DATA_AFTER_BDAT,
            BINARYMIME_NEEDS_BDAT,
            RELAY_DENIED,
            UNKNOWN_RECIPIENT,
            TOO_MANY_RECIPIENTS,
            LOOKUP_FAILED,
            MESSAGE_TOO_BIG,
            TEXT_LINE_TOO_LONG,
            BARE_NEWLINE,
            SPOOL_FULL,
            SPOOL_ERROR,
            READY_FOR_TLS,
            TLS_UNAVAILABLE,
            TLS_ALREADY_ACTIVE,
            TLS_IN_TRANSACTION,
            TLS_REQUIRED,
            AUTH_OK,
            AUTH_FAILED,
            AUTH_NEEDS_TLS,
            AUTH_ALREADY,
            AUTH_IN_TRANSACTION,
            AUTH_NEEDS_EHLO,
            AUTH_MECHANISM,
            AUTH_SYNTAX,
            AUTH_CANCELLED,
            AUTH_BAD_RESPONSE,
            AUTH_TEMPFAIL,
            AUTH_REQUIRED,
            TOO_MANY_AUTH_FAILURES,
            SENDER_LOGIN_MISMATCH,
        ];
        for r in all {
            let s = std::str::from_utf8(r).unwrap();
            assert!(
                s.ends_with("\r\n") && s.matches("\r\n").count() == 1,
                "{s:?}"
            );
            let (code, rest) = s.split_at(3);
            let class = code.as_bytes()[0];
            assert!(matches!(class, b'2' | b'4' | b'5'), "{s:?}");
            // RFC 3463: the enhanced code's class matches the reply's.
            assert_eq!(rest.as_bytes()[1], class, "{s:?}");
            assert_eq!(rest.as_bytes()[2], b'.', "{s:?}");
        }
    }

    #[test]
    fn numbers_encode() {
        let mut v = Vec::new();
        write_u64(&mut v, 0);
        v.push(b' ');
        write_u64(&mut v, u64::MAX);
        assert_eq!(v, b"0 18446744073709551615");
    }
}
