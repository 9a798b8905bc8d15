//! The `Received:` trace header (RFC 5321 §4.4), built from the envelope.
//!
//! Time is an argument: the engine never reads the clock. The date itself is
//! [`crate::civil`]'s (pure arithmetic).

use super::command::{address_literal, valid_domain};
use super::envelope::Envelope;

/// The TLS a message arrived over, as `Received:` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsTrace {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The IANA cipher suite name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
    /// The cipher's key bits.
    pub bits: u16,
}

/// Appends the `Received:` header, CRLF-terminated and folded, e.g.
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///     by mx.example (ringmx) with ESMTP id 0A1B2C3D4E5F
///     for <user@example.com>; Sun, 29 Nov 2026 13:44:42 +0000
/// ```
///
/// `for` is written only with exactly one recipient, so a message to many
/// does not disclose the others to each. Over TLS a line as Postfix writes
/// it follows `from`:
/// `(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))`
/// (and the protocol, from the envelope, is `ESMTPS`).
pub fn write_received(
    out: &mut Vec<u8>,
    env: &Envelope<'_>,
    tls: Option<&TlsTrace>,
    hostname: &str,
    queue_id: &str,
    unix_secs: i64,
) {
    out.extend_from_slice(b"Received: from ");
    out.extend_from_slice(helo_name(env.helo, env.protocol == "UTF8SMTP").as_bytes());
    if let Some(addr) = env.client {
        out.extend_from_slice(b" ([");
        match addr.ip() {
            std::net::IpAddr::V4(ip) => out.extend_from_slice(ip.to_string().as_bytes()),
            std::net::IpAddr::V6(ip) => {
                // RFC 5321 §4.1.3 address literal form.
                out.extend_from_slice(b"IPv6:");
                out.extend_from_slice(ip.to_string().as_bytes());
            }
        }
        out.extend_from_slice(b"])");
    }
    if let Some(t) = tls {
        out.extend_from_slice(b"\r\n\t(using ");
        out.extend_from_slice(t.version.as_bytes());
        out.extend_from_slice(b" with cipher ");
        out.extend_from_slice(t.cipher.as_bytes());
        let bits = t.bits.to_string();
        out.extend_from_slice(format!(" ({bits}/{bits} bits))").as_bytes());
    }
    out.extend_from_slice(b"\r\n\tby ");
    out.extend_from_slice(hostname.as_bytes());
    out.extend_from_slice(b" (ringmx) with ");
    out.extend_from_slice(env.protocol.as_bytes());
    out.extend_from_slice(b" id ");
    out.extend_from_slice(queue_id.as_bytes());
    let mut rcpts = env.rcpts();
    if let (Some(only), None) = (rcpts.next(), rcpts.next()) {
        out.extend_from_slice(b"\r\n\tfor <");
        out.extend_from_slice(only.as_bytes());
        out.push(b'>');
    }
    out.extend_from_slice(b"; ");
    crate::civil::write_rfc5322(out, unix_secs);
    out.extend_from_slice(b"\r\n");
}

/// The HELO name as the header records it. The session accepts any name
/// (as Postfix does: it is only recorded), but `from` takes a domain or an
/// address literal (RFC 5321 §4.4, §4.1.1.1), non-ASCII only under SMTPUTF8
/// (RFC 6531 §3.7.3); anything else — control bytes, parentheses that would
/// unbalance the comment, spaces, `_` — is recorded as `invalid-helo`, so
/// the client cannot break or inject into the header. The spool keeps the
/// name as given.
fn helo_name(s: &str, utf8: bool) -> &str {
    let domain = valid_domain(s) && (utf8 || s.is_ascii());
    if domain || address_literal(s) {
        s
    } else {
        "invalid-helo"
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::MailParams;
    use super::super::envelope::TxArena;
    use super::*;

    #[test]
    fn rfc5321_4_4_received_header() {
        let mut a = TxArena::default();
        a.set_mail("s@src.example", MailParams::default(), "");
        a.add_rcpt("u@example.com");
        let env = Envelope::new(
            &a,
            Some("192.0.2.1:40000".parse().unwrap()),
            "client.example",
            "ESMTP",
        );
        let mut v = Vec::new();
        write_received(&mut v, &env, None, "mx.example", "Q1", 1_795_959_882);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example (ringmx) with ESMTP \
             id Q1\r\n\tfor <u@example.com>; Sun, 29 Nov 2026 13:44:42 +0000\r\n"
        );
        a.add_rcpt("v@example.com");
        let env = Envelope::new(
            &a,
            Some("[2001:db8::1]:25".parse().unwrap()),
            "x\r\ny",
            "SMTP",
        );
        let mut v = Vec::new();
        write_received(&mut v, &env, None, "mx.example", "Q2", 0);
        let s = String::from_utf8(v).unwrap();
        assert!(
            s.starts_with("Received: from invalid-helo ([IPv6:2001:db8::1])\r\n"),
            "{s}"
        );
        assert!(!s.contains("for <"), "{s}");
    }

    #[test]
    fn rfc3848_received_over_tls_names_version_and_cipher() {
        let mut a = TxArena::default();
        a.set_mail("s@src.example", MailParams::default(), "");
        a.add_rcpt("u@example.com");
        let env = Envelope::new(
            &a,
            Some("192.0.2.1:40000".parse().unwrap()),
            "client.example",
            "ESMTPS",
        );
        let tls = TlsTrace {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            bits: 256,
        };
        let mut v = Vec::new();
        write_received(&mut v, &env, Some(&tls), "mx.example", "Q1", 1_795_959_882);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "Received: from client.example ([192.0.2.1])\r\n\t(using TLSv1.3 with cipher \
             TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby mx.example (ringmx) with ESMTPS \
             id Q1\r\n\tfor <u@example.com>; Sun, 29 Nov 2026 13:44:42 +0000\r\n"
        );
    }

    #[test]
    fn rfc5321_4_4_helo_name_is_a_domain_or_literal_or_replaced() {
        let table: &[(&str, bool, &str)] = &[
            ("client.example", false, "client.example"),
            ("[192.0.2.1]", false, "[192.0.2.1]"),
            ("[IPv6:2001:db8::1]", false, "[IPv6:2001:db8::1]"),
            ("b\u{fc}cher.example", true, "b\u{fc}cher.example"),
            ("b\u{fc}cher.example", false, "invalid-helo"),
            ("a(b", false, "invalid-helo"),
            ("a)b(c", false, "invalid-helo"),
            ("x\r\nX-Injected: 1", false, "invalid-helo"),
            ("my_host", false, "invalid-helo"),
            ("host.", false, "invalid-helo"),
            ("[1.2.3", false, "invalid-helo"),
            ("", false, "invalid-helo"),
        ];
        for (name, utf8, want) in table {
            assert_eq!(helo_name(name, *utf8), *want, "{name:?}");
        }
        // Through the header: one line, balanced.
        let mut a = TxArena::default();
        a.set_mail("s@src.example", MailParams::default(), "");
        a.add_rcpt("u@example.com");
        let env = Envelope::new(&a, None, "a(b))", "ESMTP");
        let mut v = Vec::new();
        write_received(&mut v, &env, None, "mx.example", "Q3", 0);
        let s = String::from_utf8(v).unwrap();
        assert!(s.starts_with("Received: from invalid-helo\r\n"), "{s}");
        assert_eq!(s.matches('(').count(), s.matches(')').count(), "{s}");
    }
}
