//! The on-disk format, as pure functions over byte slices: segment names,
//! the file header, record headers, the message and seal payloads.
//! SPOOL-FORMAT.md at the repository root is the prose description of the
//! same thing; a change here changes that file and [`FORMAT_VERSION`].
//!
//! Nothing here does I/O; `scan.rs` reads files with these functions,
//! `message.rs` and `segment/writer.rs` build records with them. Decoding never
//! panics on bad bytes: it returns a reason that callers turn into
//! [`SpoolError::Corrupt`] with a file and an offset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::SpoolError;

/// First 8 bytes of every segment file.
pub const FILE_MAGIC: [u8; 8] = *b"RMXSPOOL";
/// The format this build writes and reads. Also part of segment file names.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the segment file header.
pub const FILE_HEADER_LEN: usize = 48;
/// Length of every record header.
pub const RECORD_HEADER_LEN: usize = 20;
/// Largest record payload this build writes or accepts (1 GiB): bounds what a
/// corrupt length field can make a reader allocate.
pub const MAX_RECORD_PAYLOAD: u32 = 1 << 30;
/// Payload of a seal record: segment length, next queue sequence.
pub const SEAL_PAYLOAD_LEN: usize = 16;
/// A whole seal record.
pub const SEAL_RECORD_LEN: usize = RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN;
/// One entry of a commit record's fragment list: segment, offset, length.
pub const FRAG_REF_LEN: usize = 20;

/// A position in a shard's spool: a segment and a byte offset in it.
/// Positions order by segment, then offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The segment's sequence number.
    pub segment: u64,
    /// Byte offset in the segment file.
    pub offset: u64,
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole message: envelope, trace header and body in one record.
    /// Visible to readers as soon as it is complete.
    Message = 1,
    /// Body bytes of a streamed message; invisible until a [`Kind::Commit`]
    /// record lists it.
    Fragment = 2,
    /// Ends a streamed message: envelope, trace header, the list of its
    /// fragments and the last body bytes. Makes the message visible.
    Commit = 3,
    /// The last record of a segment that will get no more appends.
    Seal = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::Fragment),
            3 => Some(Kind::Commit),
            4 => Some(Kind::Seal),
            _ => None,
        }
    }
}

/// The name of segment `seq`: prefix, format version, 16 hex digits, so that
/// names sort by sequence and recovery can tell segments from other files.
pub fn segment_file_name(seq: u64) -> String {
    format!("ringmx-v{FORMAT_VERSION}-{seq:016x}.seg")
}

/// What a directory entry's name says it is.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentName {
    /// A segment of this format version with this sequence number.
    Current(u64),
    /// A segment of another format version.
    OtherVersion(u16),
    /// Not a segment (editor backups, operator notes, ...).
    Foreign,
}

/// Classifies a file name found in a shard directory.
pub fn parse_segment_file_name(name: &str) -> SegmentName {
    let Some(rest) = name.strip_prefix("ringmx-v") else {
        return SegmentName::Foreign;
    };
    let Some((version, rest)) = rest.split_once('-') else {
        return SegmentName::Foreign;
    };
    let Some(hex) = rest.strip_suffix(".seg") else {
        return SegmentName::Foreign;
    };
    let Ok(version) = version.parse::<u16>() else {
        return SegmentName::Foreign;
    };
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return SegmentName::Foreign;
    }
    if version != FORMAT_VERSION {
        return SegmentName::OtherVersion(version);
    }
    match u64::from_str_radix(hex, 16) {
        Ok(seq) => SegmentName::Current(seq),
        Err(_) => SegmentName::Foreign,
    }
}

/// The name of shard `n`'s directory under the spool root.
pub fn shard_dir_name(shard: u32) -> String {
    format!("shard-{shard}")
}

/// The shard number a spool root entry names, if it is a shard directory.
pub fn parse_shard_dir_name(name: &str) -> Option<u32> {
    let n = name.strip_prefix("shard-")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The segment file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// The shard that wrote the segment.
    pub shard: u32,
    /// The segment's sequence number (also in its name).
    pub segment: u64,
    /// Every queue sequence number issued after this segment was created is
    /// at least this: recovery's floor when the segment holds no records.
    pub id_floor: u64,
    /// Creation time, unix seconds (for operators; nothing depends on it).
    pub created_unix: i64,
}

/// Why a file header was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header, or all zero: the file was created but its
    /// header never reached the disk.
    Torn,
    /// The magic is not ours.
    NotASegment,
    /// Written by another format version.
    Version(u16),
    /// The header's checksum does not match.
    BadCrc,
}

impl FileHeader {
    /// Encodes the header (see SPOOL-FORMAT.md, "Segment header").
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[0..8].copy_from_slice(&FILE_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(FILE_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.shard.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.id_floor.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_unix.to_le_bytes());
        let crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header from the first bytes of a file (fewer than
    /// [`FILE_HEADER_LEN`] bytes means the file is shorter than a header).
    ///
    /// # Errors
    /// Why the bytes are not a header of this version.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < FILE_HEADER_LEN || b[..FILE_HEADER_LEN].iter().all(|&x| x == 0) {
            return Err(HeaderError::Torn);
        }
        if b[0..8] != FILE_MAGIC {
            return Err(HeaderError::NotASegment);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if crc32c::crc32c(&b[..44]) != le_u32(&b[44..48]) {
            return Err(HeaderError::BadCrc);
        }
        Ok(Self {
            shard: le_u32(&b[12..16]),
            segment: le_u64(&b[16..24]),
            id_floor: le_u64(&b[24..32]),
            created_unix: le_u64(&b[32..40]) as i64,
        })
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// CRC32C over header bytes 4..20 and the payload.
    pub crc: u32,
    /// Payload length.
    pub len: u32,
    /// What the record holds.
    pub kind: Kind,
    /// The queue sequence number of the message the record belongs to (0 for seals).
    pub id_seq: u64,
}

impl RecordHeader {
    /// Decodes a header; `None` when the kind byte or reserved bytes are not
    /// ones this version writes (a torn or foreign record).
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Option<Self> {
        let kind = Kind::from_u8(b[8])?;
        if b[9] != 0 || b[10] != 0 || b[11] != 0 {
            return None;
        }
        Some(Self {
            crc: le_u32(&b[0..4]),
            len: le_u32(&b[4..8]),
            kind,
            id_seq: le_u64(&b[12..20]),
        })
    }

    /// The CRC of the header's covered part (bytes 4..20), to be extended
    /// with the payload by `crc32c_append`.
    pub fn crc_start(b: &[u8; RECORD_HEADER_LEN]) -> u32 {
        crc32c::crc32c(&b[4..])
    }
}

/// Appends a zeroed record header of `kind` for `id_seq`; [`finish_record`]
/// fills in length and CRC once the payload follows it.
pub fn start_record(buf: &mut Vec<u8>, kind: Kind, id_seq: u64) {
    let at = buf.len();
    buf.resize(at + RECORD_HEADER_LEN, 0);
    buf[at + 8] = kind as u8;
    buf[at + 12..at + 20].copy_from_slice(&id_seq.to_le_bytes());
}

/// Completes the record that starts at `buf[0]` and runs to the end of `buf`:
/// writes its payload length and CRC32C.
///
/// # Errors
/// [`SpoolError::TooLarge`] if the payload exceeds [`MAX_RECORD_PAYLOAD`].
pub fn finish_record(buf: &mut [u8]) -> Result<(), SpoolError> {
    let len = buf.len() - RECORD_HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_RECORD_PAYLOAD)
        .ok_or(SpoolError::TooLarge {
            what: "spool record",
            len: len as u64,
            max: u64::from(MAX_RECORD_PAYLOAD),
        })?;
    buf[4..8].copy_from_slice(&len32.to_le_bytes());
    let crc = crc32c::crc32c(&buf[4..]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Sets the kind byte of the record that starts at `buf[0]`.
pub fn set_kind(buf: &mut [u8], kind: Kind) {
    buf[8] = kind as u8;
}

/// The envelope of a message, as the server hands it to
/// [`ShardSpool::begin`](super::ShardSpool::begin).
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRecord<'a> {
    /// When the message arrived (end of DATA is close enough: MAIL FROM time
    /// is also fine), unix seconds.
    pub arrival_unix: i64,
    /// The client's address, when known.
    pub client: Option<SocketAddr>,
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// The reverse path without angle brackets; empty for `<>`.
    pub mail_from: &'a str,
    /// The MAIL FROM parameters exactly as the client sent them.
    pub mail_params: &'a str,
    /// Accepted recipients, in order, without angle brackets.
    pub rcpts: &'a [&'a str],
}

/// Where one fragment of a streamed message lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragRef {
    /// The segment's sequence number.
    pub segment: u64,
    /// Offset of the fragment record's header in that segment.
    pub offset: u64,
    /// Body bytes in the fragment (its payload length).
    pub len: u32,
}

fn put_str(buf: &mut Vec<u8>, what: &'static str, s: &[u8]) -> Result<(), SpoolError> {
    let len = u32::try_from(s.len())
        .ok()
        .filter(|&l| l <= MAX_RECORD_PAYLOAD)
        .ok_or(SpoolError::TooLarge {
            what,
            len: s.len() as u64,
            max: u64::from(MAX_RECORD_PAYLOAD),
        })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s);
    Ok(())
}

/// Appends the envelope and trace header part of a message payload, then a
/// zero body length and an empty fragment list; returns the offset (in
/// `buf`) of the body length field, which [`set_body_len`] patches.
///
/// # Errors
/// [`SpoolError::TooLarge`] when a field exceeds what a length can say.
pub fn encode_message_prefix(
    buf: &mut Vec<u8>,
    env: &EnvelopeRecord<'_>,
    received: &[u8],
) -> Result<usize, SpoolError> {
    buf.extend_from_slice(&env.arrival_unix.to_le_bytes());
    match env.client {
        None => buf.push(0),
        Some(SocketAddr::V4(a)) => {
            buf.push(4);
            buf.extend_from_slice(&a.ip().octets());
            buf.extend_from_slice(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            buf.push(6);
            buf.extend_from_slice(&a.ip().octets());
            buf.extend_from_slice(&a.port().to_le_bytes());
        }
    }
    put_str(buf, "HELO name", env.helo.as_bytes())?;
    put_str(buf, "MAIL FROM address", env.mail_from.as_bytes())?;
    put_str(buf, "MAIL FROM parameters", env.mail_params.as_bytes())?;
    let n = u32::try_from(env.rcpts.len()).map_err(|_| SpoolError::TooLarge {
        what: "recipient list",
        len: env.rcpts.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    buf.extend_from_slice(&n.to_le_bytes());
    for r in env.rcpts {
        put_str(buf, "recipient", r.as_bytes())?;
    }
    put_str(buf, "Received header", received)?;
    let body_len_at = buf.len();
    buf.extend_from_slice(&0u64.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    Ok(body_len_at)
}

/// Writes the body length field at `at` (from [`encode_message_prefix`]).
pub fn set_body_len(buf: &mut [u8], at: usize, body_len: u64) {
    buf[at..at + 8].copy_from_slice(&body_len.to_le_bytes());
}

/// Writes the fragment count field that follows the body length at `at`.
pub fn set_frag_count(buf: &mut [u8], at: usize, n: u32) {
    buf[at + 8..at + 12].copy_from_slice(&n.to_le_bytes());
}

/// Appends one fragment list entry.
pub fn push_frag_ref(buf: &mut Vec<u8>, f: &FragRef) {
    buf.extend_from_slice(&f.segment.to_le_bytes());
    buf.extend_from_slice(&f.offset.to_le_bytes());
    buf.extend_from_slice(&f.len.to_le_bytes());
}

/// A message or commit payload, decoded, borrowing the payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView<'a> {
    /// Unix seconds.
    pub arrival_unix: i64,
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// HELO/EHLO name.
    pub helo: &'a str,
    /// Reverse path.
    pub mail_from: &'a str,
    /// MAIL FROM parameters.
    pub mail_params: &'a str,
    /// Recipients.
    pub rcpts: Vec<&'a str>,
    /// The `Received:` header bytes.
    pub received: &'a [u8],
    /// Total body length.
    pub body_len: u64,
    /// Earlier fragments holding the start of the body, in order.
    pub frags: Vec<FragRef>,
    /// The body bytes after the fragments (the whole body when there are none).
    pub tail: &'a [u8],
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("payload ends inside a field")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(le_u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(le_u64(self.take(8)?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "envelope text is not UTF-8")
    }
}

/// Decodes a message or commit payload.
///
/// # Errors
/// What is malformed; the CRC having matched, this means a writer bug or a
/// format mismatch rather than a torn write.
pub fn decode_message(payload: &[u8]) -> Result<MessageView<'_>, &'static str> {
    let mut c = Cursor { b: payload, at: 0 };
    let arrival_unix = c.u64()? as i64;
    let client = match c.u8()? {
        0 => None,
        4 => {
            let ip: [u8; 4] = c.take(4)?.try_into().map_err(|_| "short IPv4 address")?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), c.u16()?))
        }
        6 => {
            let ip: [u8; 16] = c.take(16)?.try_into().map_err(|_| "short IPv6 address")?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), c.u16()?))
        }
        _ => return Err("unknown client address family"),
    };
    let helo = c.str()?;
    let mail_from = c.str()?;
    let mail_params = c.str()?;
    let n = c.u32()? as usize;
    // Each recipient takes at least its 4-byte length: a count the payload
    // cannot hold is rejected before it sizes an allocation.
    if n > (payload.len() - c.at) / 4 {
        return Err("recipient count exceeds the payload");
    }
    let mut rcpts = Vec::with_capacity(n);
    for _ in 0..n {
        rcpts.push(c.str()?);
    }
    let received = c.bytes()?;
    let body_len = c.u64()?;
    let nf = c.u32()? as usize;
    if nf > (payload.len() - c.at) / FRAG_REF_LEN {
        return Err("fragment count exceeds the payload");
    }
    let mut frags = Vec::with_capacity(nf);
    let mut frag_bytes: u64 = 0;
    for _ in 0..nf {
        let f = FragRef {
            segment: c.u64()?,
            offset: c.u64()?,
            len: c.u32()?,
        };
        frag_bytes += u64::from(f.len);
        frags.push(f);
    }
    let tail = &payload[c.at..];
    if frag_bytes.checked_add(tail.len() as u64) != Some(body_len) {
        return Err("body length does not match fragments plus tail");
    }
    Ok(MessageView {
        arrival_unix,
        client,
        helo,
        mail_from,
        mail_params,
        rcpts,
        received,
        body_len,
        frags,
        tail,
    })
}

/// A decoded seal payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The segment's final length, seal included.
    pub segment_len: u64,
    /// The shard's next queue sequence number when the seal was written:
    /// every record in the segment has a smaller one.
    pub next_id_seq: u64,
}

/// A complete seal record.
pub fn encode_seal(seal: &Seal) -> Vec<u8> {
    let mut b = Vec::with_capacity(SEAL_RECORD_LEN);
    start_record(&mut b, Kind::Seal, 0);
    b.extend_from_slice(&seal.segment_len.to_le_bytes());
    b.extend_from_slice(&seal.next_id_seq.to_le_bytes());
    // A 16-byte payload is far under the limit.
    let _ = finish_record(&mut b);
    b
}

/// Decodes a seal payload.
pub fn decode_seal(payload: &[u8]) -> Option<Seal> {
    if payload.len() != SEAL_PAYLOAD_LEN {
        return None;
    }
    Some(Seal {
        segment_len: le_u64(&payload[0..8]),
        next_id_seq: le_u64(&payload[8..16]),
    })
}

/// Little-endian u32 from a 4-byte slice (callers slice exactly 4 bytes).
fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 from an 8-byte slice (callers slice exactly 8 bytes).
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_standard_crc32c() {
        // The check value SPOOL-FORMAT.md gives, so other readers can match it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn segment_names_round_trip_and_reject_cruft() {
        assert_eq!(segment_file_name(0xa3), "ringmx-v1-00000000000000a3.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(7)),
            SegmentName::Current(7)
        );
        assert_eq!(
            parse_segment_file_name("ringmx-v2-0000000000000001.seg"),
            SegmentName::OtherVersion(2)
        );
        for cruft in [
            "LOCK",
            "ringmx-v1-1.seg",
            "ringmx-v1-00000000000000a3.seg~",
            "ringmx-v1-00000000000000zz.seg",
            ".ringmx-v1-00000000000000a3.seg.swp",
        ] {
            assert_eq!(
                parse_segment_file_name(cruft),
                SegmentName::Foreign,
                "{cruft}"
            );
        }
        assert_eq!(parse_shard_dir_name("shard-12"), Some(12));
        assert_eq!(parse_shard_dir_name("shard-"), None);
        assert_eq!(parse_shard_dir_name("shard-1x"), None);
    }

    #[test]
    fn file_header_round_trip_and_every_flip_is_caught() {
        let h = FileHeader {
            shard: 3,
            segment: 9,
            id_floor: 1234,
            created_unix: -5,
        };
        let b = h.encode();
        assert_eq!(FileHeader::decode(&b), Ok(h));
        assert_eq!(FileHeader::decode(&b[..47]), Err(HeaderError::Torn));
        assert_eq!(FileHeader::decode(&[0u8; 48]), Err(HeaderError::Torn));
        for i in 0..FILE_HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(FileHeader::decode(&c).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn message_payload_round_trip() {
        let rcpts = ["a@x.example", "b@x.example"];
        for client in [
            None,
            Some("192.0.2.1:25".parse().unwrap()),
            Some("[2001:db8::1]:587".parse().unwrap()),
        ] {
            let env = EnvelopeRecord {
                arrival_unix: 1_795_880_682,
                client,
                helo: "client.example",
                mail_from: "",
                mail_params: "SIZE=10 BODY=8BITMIME",
                rcpts: &rcpts,
            };
            let mut buf = Vec::new();
            start_record(&mut buf, Kind::Commit, 77);
            let at = encode_message_prefix(&mut buf, &env, b"Received: x\r\n").unwrap();
            let frag = FragRef {
                segment: 2,
                offset: 48,
                len: 5,
            };
            push_frag_ref(&mut buf, &frag);
            set_frag_count(&mut buf, at, 1);
            buf.extend_from_slice(b"tail");
            set_body_len(&mut buf, at, 9);
            finish_record(&mut buf).unwrap();
            let hb: [u8; RECORD_HEADER_LEN] = buf[..RECORD_HEADER_LEN].try_into().unwrap();
            let h = RecordHeader::decode(&hb).unwrap();
            assert_eq!(
                (h.kind, h.id_seq, h.len as usize),
                (Kind::Commit, 77, buf.len() - RECORD_HEADER_LEN)
            );
            assert_eq!(
                crc32c::crc32c_append(RecordHeader::crc_start(&hb), &buf[RECORD_HEADER_LEN..]),
                h.crc
            );
            let m = decode_message(&buf[RECORD_HEADER_LEN..]).unwrap();
            assert_eq!(m.client, client);
            assert_eq!(
                (m.helo, m.mail_from, m.mail_params),
                ("client.example", "", "SIZE=10 BODY=8BITMIME")
            );
            assert_eq!(m.rcpts, rcpts);
            assert_eq!(m.received, b"Received: x\r\n");
            assert_eq!(
                (m.body_len, m.frags.as_slice(), m.tail),
                (9, &[frag][..], &b"tail"[..])
            );
        }
    }

    #[test]
    fn truncated_message_payloads_are_errors_not_panics() {
        let env = EnvelopeRecord {
            arrival_unix: 1,
            client: Some("[2001:db8::1]:587".parse().unwrap()),
            helo: "h",
            mail_from: "f@x",
            mail_params: "",
            rcpts: &["r@x"],
        };
        let mut buf = Vec::new();
        let at = encode_message_prefix(&mut buf, &env, b"R: x\r\n").unwrap();
        buf.extend_from_slice(b"body");
        set_body_len(&mut buf, at, 4);
        assert!(decode_message(&buf).is_ok());
        for cut in 0..buf.len() {
            assert!(
                decode_message(&buf[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
        // A huge recipient count must not size an allocation.
        let mut evil = buf.clone();
        let count_at = 8 + 1 + 16 + 2 + 4 + 1 + 4 + 3 + 4;
        evil[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_message(&evil).is_err());
    }

    #[test]
    fn seal_round_trip() {
        let s = Seal {
            segment_len: 4096,
            next_id_seq: 99,
        };
        let b = encode_seal(&s);
        assert_eq!(b.len(), SEAL_RECORD_LEN);
        assert_eq!(decode_seal(&b[RECORD_HEADER_LEN..]), Some(s));
    }
}
