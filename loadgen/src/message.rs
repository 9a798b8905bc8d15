//! The bytes loadgen sends, built once before the run and shared read-only by
//! every connection: envelope commands, message bodies per size (CRLF,
//! dot-stuffed, with the `.` terminator for DATA and the chunk header for BDAT),
//! and pipelined batches that combine them.
//!
//! Nothing is formatted per message on the hot path; a connection only picks
//! which prebuilt slice to write (except with `--rcpt-pattern`, whose
//! envelopes differ per message). Deciding when to write what is `client.rs`'s job.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{RcptPattern, RunConfig};

/// Commands of one transaction, each ready to write.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `MAIL FROM:<..>\r\n`.
    pub mail: Vec<u8>,
    /// One `RCPT TO:<..>\r\n` per recipient.
    pub rcpts: Vec<Vec<u8>>,
    /// MAIL, every RCPT and `DATA\r\n` in one buffer: one write when pipelining.
    pub pipelined_data: Vec<u8>,
}

/// One message size, in every form the client may send it.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Message size in bytes (headers and body, before dot-stuffing): the
    /// number reported as throughput.
    pub bytes: usize,
    /// Dot-stuffed content followed by `.\r\n`, sent after `354`.
    pub data_body: Vec<u8>,
    /// [`Payload::data_body`] followed by the next message's MAIL, RCPTs and
    /// `DATA\r\n`: RFC 2920 §3.1 lets the content be the first command of a
    /// pipelined group, so a chained connection ends one message and starts
    /// the next in one write.
    pub chained: Vec<u8>,
    /// `BDAT <n> LAST\r\n` followed by the raw content (RFC 3030 §2).
    pub bdat_chunk: Vec<u8>,
    /// Envelope (MAIL, RCPTs) followed by [`Payload::bdat_chunk`]: the whole
    /// transaction in one write when pipelining BDAT.
    pub pipelined_bdat: Vec<u8>,
}

/// Everything a run sends, indexed by size-distribution entry.
#[derive(Debug, Clone)]
pub struct Messages {
    /// The envelope, the same for every message (without `--rcpt-pattern`).
    pub envelope: Envelope,
    /// `--rcpt-pattern`: each message's recipients are formatted from it
    /// (see `client.rs`); `envelope.rcpts` then only gives their number.
    pub rcpt_pattern: Option<RcptPattern>,
    /// One payload per entry of the size distribution, same order.
    pub payloads: Vec<Payload>,
    /// `EHLO <name>\r\n`.
    pub ehlo: Vec<u8>,
    /// `HELO <name>\r\n`, for servers that refuse EHLO.
    pub helo: Vec<u8>,
}

impl Messages {
    /// Builds all bytes for `cfg`.
    pub fn build(cfg: &RunConfig) -> Messages {
        let mail = format!("MAIL FROM:<{}>\r\n", cfg.from).into_bytes();
        let rcpts: Vec<Vec<u8>> = (0..cfg.rcpts)
            .map(|i| format!("RCPT TO:<user{i}@{}>\r\n", cfg.to_domain).into_bytes())
            .collect();
        let mut pipelined_data = mail.clone();
        rcpts
            .iter()
            .for_each(|r| pipelined_data.extend_from_slice(r));
        let envelope_len = pipelined_data.len();
        pipelined_data.extend_from_slice(b"DATA\r\n");
        let date = rfc5322_date(SystemTime::now());
        let payloads = cfg
            .sizes
            .entries
            .iter()
            .map(|e| {
                let content = message_content(e.bytes, &cfg.from, &cfg.to_domain, &date);
                let mut data_body = dot_stuff(&content);
                data_body.extend_from_slice(b".\r\n");
                let mut chained = data_body.clone();
                chained.extend_from_slice(&pipelined_data);
                let mut bdat_chunk = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
                bdat_chunk.extend_from_slice(&content);
                let mut pipelined_bdat = pipelined_data[..envelope_len].to_vec();
                pipelined_bdat.extend_from_slice(&bdat_chunk);
                Payload {
                    bytes: content.len(),
                    data_body,
                    chained,
                    bdat_chunk,
                    pipelined_bdat,
                }
            })
            .collect();
        Messages {
            rcpt_pattern: cfg.rcpt_pattern.clone(),
            envelope: Envelope {
                mail,
                rcpts,
                pipelined_data,
            },
            payloads,
            ehlo: format!("EHLO {}\r\n", cfg.ehlo).into_bytes(),
            helo: format!("HELO {}\r\n", cfg.ehlo).into_bytes(),
        }
    }
}

/// A message of exactly `size` bytes (or just its headers, if they are longer):
/// RFC 5322 headers, a blank line, then 78-octet text lines (RFC 5322 §2.1.1's
/// recommended limit) with CRLF endings. The last line is cut to hit `size`.
pub fn message_content(size: usize, from: &str, to_domain: &str, date: &str) -> Vec<u8> {
    let mut out = format!(
        "Message-ID: <loadgen-{size}@loadgen.invalid>\r\nDate: {date}\r\nFrom: <{from}>\r\n\
         To: <user0@{to_domain}>\r\nSubject: loadgen {size}-byte message\r\n\r\n"
    )
    .into_bytes();
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut line_no = 0usize;
    while out.len() + 2 < size {
        // Each line is `NNNNNN ` then letters, so no line starts with '.', and
        // the lines differ from each other (compressors cannot flatten them).
        let room = size - out.len() - 2;
        let mut line = format!("{line_no:06} ").into_bytes();
        let mut i = line_no;
        while line.len() < 76 {
            line.push(ALPHABET[i % ALPHABET.len()]);
            i = i.wrapping_mul(31).wrapping_add(7);
        }
        line.truncate(room);
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
        line_no += 1;
    }
    // A remainder of one or two bytes cannot hold a line plus CRLF: lengthen
    // the last body line, or the Subject when there is no body line.
    if out.len() < size {
        let pad = size - out.len();
        let at = out.len() - if line_no == 0 { 4 } else { 2 };
        out.splice(at..at, std::iter::repeat_n(b'x', pad));
    }
    out
}

/// Dot-stuffs CRLF text for DATA (RFC 5321 §4.5.2): a line that starts with
/// `.` gets another `.` in front. The input must end with CRLF.
///
/// # Example
/// ```
/// assert_eq!(loadgen::message::dot_stuff(b".a\r\nb\r\n..\r\n"), b"..a\r\nb\r\n...\r\n");
/// ```
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// Formats a time as an RFC 5322 §3.3 date in UTC, e.g. `Thu, 1 Jan 2026 00:00:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ringmx::civil::rfc5322(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exact_sizes_and_line_rules() {
        let date = rfc5322_date(UNIX_EPOCH);
        // Around the header length (about 160 bytes) the padding cases kick in.
        let sizes = [0, 1, 100, 1023, 1024, 4096, 65536, 1 << 20]
            .into_iter()
            .chain(150..=175);
        for size in sizes {
            let c = message_content(size, "a@b.test", "c.test", &date);
            let head_end = c.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            if c.len() != size {
                assert!(
                    size < c.len() && c.len() == head_end,
                    "size {size}: only headers"
                );
            }
            let last_header = c[..head_end - 4]
                .split(|&b| b == b'\n')
                .next_back()
                .unwrap();
            assert!(last_header.starts_with(b"Subject: "), "size {size}");
            assert!(c.ends_with(b"\r\n"));
            for line in c.split(|&b| b == b'\n') {
                assert!(line.len() <= 1000, "RFC 5321 4.5.3.1.6 line limit");
                assert!(!line.starts_with(b"."));
            }
            // Every LF is part of a CRLF.
            for (i, &b) in c.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(c[i - 1], b'\r');
                }
            }
        }
    }

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n");
        assert_eq!(dot_stuff(b"a.b\r\n.c\r\n"), b"a.b\r\n..c\r\n");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56 UTC
        assert_eq!(rfc5322_date(t), "Thu, 29 Feb 2024 12:34:56 +0000");
    }
}
