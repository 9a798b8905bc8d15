//! The `Received:` trace header (RFC 5321 §4.4), built from the envelope.
//!
//! Time is an argument: the engine never reads the clock. The date itself is
//! [`crate::civil`]'s (pure arithmetic).

use super::envelope::Envelope;

/// Appends the `Received:` header, CRLF-terminated and folded, e.g.
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///     by mx.example (ringmx) with ESMTP id 0A1B2C3D4E5F
///     for <user@example.com>; Sun, 29 Nov 2026 13:44:42 +0000
/// ```
///
/// `for` is written only with exactly one recipient, so a message to many
/// does not disclose the others to each.
pub fn write_received(
    out: &mut Vec<u8>,
    env: &Envelope<'_>,
    hostname: &str,
    queue_id: &str,
    unix_secs: i64,
) {
    out.extend_from_slice(b"Received: from ");
    out.extend_from_slice(sanitize(env.helo).as_bytes());
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

/// The HELO name is client-controlled: keep it on one header line.
fn sanitize(s: &str) -> &str {
    if s.bytes()
        .any(|b| b.is_ascii_control() || b == b'(' || b == b')')
    {
        "invalid-helo"
    } else {
        s
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
        write_received(&mut v, &env, "mx.example", "Q1", 1_795_959_882);
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
        write_received(&mut v, &env, "mx.example", "Q2", 0);
        let s = String::from_utf8(v).unwrap();
        assert!(
            s.starts_with("Received: from invalid-helo ([IPv6:2001:db8::1])\r\n"),
            "{s}"
        );
        assert!(!s.contains("for <"), "{s}");
    }
}
