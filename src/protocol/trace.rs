//! The `Received:` trace header (RFC 5321 §4.4), built from the envelope.
//!
//! Time is an argument: the engine never reads the clock.

use super::envelope::Envelope;
use super::reply::write_u64;

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
    write_rfc5322_date(out, unix_secs);
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

/// Appends an RFC 5322 §3.3 date-time in UTC, e.g. `Sun, 29 Nov 2026 13:44:42 +0000`.
pub fn write_rfc5322_date(out: &mut Vec<u8>, unix_secs: i64) {
    const DAYS: [&[u8]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    out.extend_from_slice(DAYS[days.rem_euclid(7) as usize]);
    out.extend_from_slice(b", ");
    write_u64(out, d as u64);
    out.push(b' ');
    out.extend_from_slice(MONTHS[(m - 1) as usize]);
    out.push(b' ');
    write_u64(out, y as u64);
    out.push(b' ');
    for (i, v) in [secs / 3600, secs / 60 % 60, secs % 60]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(b':');
        }
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    }
    out.extend_from_slice(b" +0000");
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31); Howard Hinnant's
/// `civil_from_days`, exact over the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::super::command::MailParams;
    use super::super::envelope::TxArena;
    use super::*;

    fn date(secs: i64) -> String {
        let mut v = Vec::new();
        write_rfc5322_date(&mut v, secs);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn rfc5322_3_3_dates() {
        assert_eq!(date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(date(1_795_959_882), "Sun, 29 Nov 2026 13:44:42 +0000");
    }

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
