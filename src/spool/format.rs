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
/// The format this build writes. Also part of segment file names. Readers
/// also read [`FORMAT_VERSION_1`].
pub const FORMAT_VERSION: u16 = 2;
/// The first format: still read, never written.
pub const FORMAT_VERSION_1: u16 = 1;
/// Length of a version 2 segment file header.
pub const FILE_HEADER_LEN: usize = 96;
/// Length of a version 1 segment file header.
pub const V1_FILE_HEADER_LEN: usize = 48;
/// Length of every version 2 record header.
pub const RECORD_HEADER_LEN: usize = 28;
/// Length of every version 1 record header.
pub const V1_RECORD_HEADER_LEN: usize = 20;
/// Largest record payload this build writes or accepts (1 GiB): bounds what a
/// corrupt length field can make a reader allocate.
pub const MAX_RECORD_PAYLOAD: u32 = 1 << 30;
/// Payload of a seal record: segment length, next queue sequence.
pub const SEAL_PAYLOAD_LEN: usize = 16;
/// A whole version 2 seal record.
pub const SEAL_RECORD_LEN: usize = RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN;
/// One entry of a commit record's fragment list: segment, offset, length.
pub const FRAG_REF_LEN: usize = 20;
/// Most bytes of a node id (segment header field).
pub const NODE_ID_MAX: usize = 32;

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
    /// Version 2: the data of the segment ends here, whatever follows (the
    /// writer's mark after a failed write it could not cut back).
    End = 5,
    /// Version 2: recovery's stand-in for a damaged range in the middle of
    /// a segment, whose bytes it copied to a quarantine file first: spans
    /// exactly the damaged bytes, payload zero. Readers skip it.
    Hole = 6,
    /// Version 2: a kind in the ignorable range (0x40..=0x7F) this build
    /// does not know; readers check it and skip it.
    Ignorable = 0x40,
}

impl Kind {
    fn from_u8(b: u8, version: u16) -> Option<Self> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::Fragment),
            3 => Some(Kind::Commit),
            4 => Some(Kind::Seal),
            5 if version >= 2 => Some(Kind::End),
            6 if version >= 2 => Some(Kind::Hole),
            0x40..=0x7F if version >= 2 => Some(Kind::Ignorable),
            _ => None,
        }
    }
}

/// The name of segment `seq` in the version this build writes: prefix,
/// format version, 16 hex digits, so that names sort by sequence and
/// recovery can tell segments from other files.
pub fn segment_file_name(seq: u64) -> String {
    segment_file_name_v(FORMAT_VERSION, seq)
}

/// The name of segment `seq` of format `version`.
pub fn segment_file_name_v(version: u16, seq: u64) -> String {
    format!("ringmx-v{version}-{seq:016x}.seg")
}

/// What a directory entry's name says it is.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentName {
    /// A segment of a format version this build reads, with this sequence number.
    Current(u64),
    /// A segment of a format version this build does not read.
    OtherVersion(u16),
    /// Not a segment (editor backups, operator notes, quarantine files, ...).
    Foreign,
}

/// Classifies a file name found in a shard directory.
pub fn parse_segment_file_name(name: &str) -> SegmentName {
    match parse_segment_file_name_v(name) {
        Some((v, Some(seq))) if v == FORMAT_VERSION || v == FORMAT_VERSION_1 => {
            SegmentName::Current(seq)
        }
        Some((v, None)) if v == FORMAT_VERSION || v == FORMAT_VERSION_1 => SegmentName::Foreign,
        Some((v, _)) => SegmentName::OtherVersion(v),
        None => SegmentName::Foreign,
    }
}

/// `(version, sequence)` of a segment name; the sequence is `None` when the
/// hex digits do not fit.
fn parse_segment_file_name_v(name: &str) -> Option<(u16, Option<u64>)> {
    let rest = name.strip_prefix("ringmx-v")?;
    let (version, rest) = rest.split_once('-')?;
    let hex = rest.strip_suffix(".seg")?;
    let version = version.parse::<u16>().ok()?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((version, u64::from_str_radix(hex, 16).ok()))
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

/// The name of the quarantine file that holds a copy of the damaged bytes
/// `offset .. offset + len` of segment `seq` of shard `shard`.
pub fn quarantine_file_name(shard: u32, seq: u64, offset: u64, len: u64) -> String {
    format!("quarantine-shard{shard}-seg{seq:016x}-off{offset}-len{len}.bin")
}

/// Whether `name` is a quarantine file (recovery leaves those alone quietly).
pub fn is_quarantine_file_name(name: &str) -> bool {
    name.starts_with("quarantine-shard") && name.ends_with(".bin")
}

/// Checks a node id: 1 to [`NODE_ID_MAX`] bytes of `A-Z a-z 0-9 . _ -`.
///
/// # Errors
/// What is wrong with it.
pub fn check_node_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > NODE_ID_MAX {
        return Err("a node id has 1 to 32 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a node id holds only A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// A node id derived from a host name: its allowed characters, cut to
/// [`NODE_ID_MAX`] bytes; `localhost` when nothing is left.
pub fn node_id_from_hostname(host: &str) -> String {
    let mut id: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    id.truncate(NODE_ID_MAX);
    if id.is_empty() {
        "localhost".to_owned()
    } else {
        id
    }
}

/// The segment file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// The format version (1 or 2); [`FileHeader::encode`] writes version 2.
    pub version: u16,
    /// The shard that wrote the segment.
    pub shard: u32,
    /// The segment's sequence number (also in its name).
    pub segment: u64,
    /// Every queue sequence number issued after this segment was created is
    /// at least this: recovery's floor when the segment holds no records.
    pub id_floor: u64,
    /// Creation time, unix seconds (for operators; nothing depends on it).
    pub created_unix: i64,
    /// Version 2: the segment's random nonce, carried by every record
    /// header; never 0. 0 for version 1.
    pub nonce: u64,
    /// Version 2: the node id, NUL-padded; all zero for version 1.
    pub node_id: [u8; NODE_ID_MAX],
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
    /// The header's checksum does not match, or a field that must be zero is not.
    BadCrc,
}

impl FileHeader {
    /// A version 2 header.
    pub fn new(
        shard: u32,
        segment: u64,
        id_floor: u64,
        created_unix: i64,
        nonce: u64,
        node_id: &str,
    ) -> Self {
        let mut id = [0u8; NODE_ID_MAX];
        let n = node_id.len().min(NODE_ID_MAX);
        id[..n].copy_from_slice(&node_id.as_bytes()[..n]);
        Self {
            version: FORMAT_VERSION,
            shard,
            segment,
            id_floor,
            created_unix,
            nonce,
            node_id: id,
        }
    }

    /// The node id as text (empty for version 1).
    pub fn node_id(&self) -> &str {
        let n = self
            .node_id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(NODE_ID_MAX);
        std::str::from_utf8(&self.node_id[..n]).unwrap_or("")
    }

    /// The header's length: where the first record starts.
    pub fn header_len(&self) -> usize {
        if self.version == FORMAT_VERSION_1 {
            V1_FILE_HEADER_LEN
        } else {
            FILE_HEADER_LEN
        }
    }

    /// The length of each record header in this segment.
    pub fn record_header_len(&self) -> usize {
        if self.version == FORMAT_VERSION_1 {
            V1_RECORD_HEADER_LEN
        } else {
            RECORD_HEADER_LEN
        }
    }

    /// Encodes a version 2 header (see SPOOL-FORMAT.md, "Segment header").
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[0..8].copy_from_slice(&FILE_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(FILE_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.shard.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.id_floor.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_unix.to_le_bytes());
        b[40..48].copy_from_slice(&self.nonce.to_le_bytes());
        b[48..80].copy_from_slice(&self.node_id);
        let crc = crc32c::crc32c(&b[..92]);
        b[92..96].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header of version 1 or 2 from the first bytes of a file
    /// (fewer bytes than the header needs means the file is shorter).
    ///
    /// # Errors
    /// Why the bytes are not a header this build reads.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < V1_FILE_HEADER_LEN || b[..V1_FILE_HEADER_LEN].iter().all(|&x| x == 0) {
            return Err(HeaderError::Torn);
        }
        if b[0..8] != FILE_MAGIC {
            return Err(HeaderError::NotASegment);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        let (len, crc_at) = match version {
            FORMAT_VERSION_1 => (V1_FILE_HEADER_LEN, 44),
            FORMAT_VERSION => (FILE_HEADER_LEN, 92),
            v => return Err(HeaderError::Version(v)),
        };
        if b.len() < len {
            return Err(HeaderError::Torn);
        }
        if crc32c::crc32c(&b[..crc_at]) != le_u32(&b[crc_at..crc_at + 4])
            || usize::from(u16::from_le_bytes([b[10], b[11]])) != len
        {
            return Err(HeaderError::BadCrc);
        }
        let mut h = Self {
            version,
            shard: le_u32(&b[12..16]),
            segment: le_u64(&b[16..24]),
            id_floor: le_u64(&b[24..32]),
            created_unix: le_u64(&b[32..40]) as i64,
            nonce: 0,
            node_id: [0; NODE_ID_MAX],
        };
        if version == FORMAT_VERSION {
            h.nonce = le_u64(&b[40..48]);
            h.node_id.copy_from_slice(&b[48..80]);
            if h.nonce == 0 || b[80..92].iter().any(|&x| x != 0) {
                return Err(HeaderError::BadCrc);
            }
        }
        Ok(h)
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The stored CRC32C (what it covers depends on the version).
    pub crc: u32,
    /// Payload length.
    pub len: u32,
    /// What the record holds.
    pub kind: Kind,
    /// The queue sequence number of the message the record belongs to (0 for seals).
    pub id_seq: u64,
    /// Version 2: the segment nonce the record carries; 0 in version 1.
    pub nonce: u64,
}

impl RecordHeader {
    /// Decodes a header of format `version` from `b`, which holds exactly
    /// that version's header length; `None` when the kind, flags or
    /// reserved bytes are not ones that version writes (a torn or foreign
    /// record). The nonce is not compared here.
    pub fn decode(b: &[u8], version: u16) -> Option<Self> {
        let want = if version == FORMAT_VERSION_1 {
            V1_RECORD_HEADER_LEN
        } else {
            RECORD_HEADER_LEN
        };
        if b.len() != want {
            return None;
        }
        let kind = Kind::from_u8(b[8], version)?;
        if b[9] != 0 || b[10] != 0 || b[11] != 0 {
            return None;
        }
        Some(Self {
            crc: le_u32(&b[0..4]),
            len: le_u32(&b[4..8]),
            kind,
            id_seq: le_u64(&b[12..20]),
            nonce: if version == FORMAT_VERSION_1 {
                0
            } else {
                le_u64(&b[20..28])
            },
        })
    }

    /// The CRC to extend with the payload (`crc32c_append`), for a header
    /// `hb` of format `version`: version 1 covers the header first, version
    /// 2 the payload first.
    pub fn crc_start(hb: &[u8], version: u16) -> u32 {
        if version == FORMAT_VERSION_1 {
            crc32c::crc32c(&hb[4..])
        } else {
            0
        }
    }

    /// The record's CRC from [`RecordHeader::crc_start`] extended with the
    /// whole payload: version 2 appends the header's bytes 4..28.
    pub fn crc_finish(crc: u32, hb: &[u8], version: u16) -> u32 {
        if version == FORMAT_VERSION_1 {
            crc
        } else {
            crc32c::crc32c_append(crc, &hb[4..])
        }
    }
}

/// Appends a zeroed version 2 record header of `kind` for `id_seq`;
/// [`finish_record`] fills in length and payload CRC once the payload
/// follows it, and [`stamp_record`] the nonce and the final CRC.
pub fn start_record(buf: &mut Vec<u8>, kind: Kind, id_seq: u64) {
    let at = buf.len();
    buf.resize(at + RECORD_HEADER_LEN, 0);
    buf[at + 8] = kind as u8;
    buf[at + 12..at + 20].copy_from_slice(&id_seq.to_le_bytes());
}

/// Completes the payload of the record that starts at `buf[0]` and runs to
/// the end of `buf`: writes its length, and the CRC32C of the payload alone
/// into the CRC field, for [`stamp_record`] to extend once the segment (and
/// so the nonce) is known. Until stamped, the record is not intact.
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
    let crc = crc32c::crc32c(&buf[RECORD_HEADER_LEN..]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Puts the segment's nonce into a record finished by [`finish_record`]
/// and completes its CRC (payload CRC extended by header bytes 4..28): the
/// writer does this as it appends, since only it knows the segment. Costs
/// a CRC of 24 bytes, however long the payload.
pub fn stamp_record(buf: &mut [u8], nonce: u64) {
    buf[20..28].copy_from_slice(&nonce.to_le_bytes());
    let crc = crc32c::crc32c_append(le_u32(&buf[0..4]), &buf[4..RECORD_HEADER_LEN]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the kind byte of the record that starts at `buf[0]`.
pub fn set_kind(buf: &mut [u8], kind: Kind) {
    buf[8] = kind as u8;
}

/// A complete hole record of `len` bytes in all (at least a header) for a
/// segment with `nonce`: a zero payload that spans a damaged range.
pub fn encode_hole(len: usize, nonce: u64) -> Result<Vec<u8>, SpoolError> {
    let mut b = vec![0u8; len.max(RECORD_HEADER_LEN)];
    b[8] = Kind::Hole as u8;
    finish_record(&mut b)?;
    stamp_record(&mut b, nonce);
    Ok(b)
}

/// A complete end mark for a segment with `nonce`: no payload.
pub fn encode_end_mark(nonce: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_HEADER_LEN);
    start_record(&mut b, Kind::End, 0);
    // An empty payload is far under the limit.
    let _ = finish_record(&mut b);
    stamp_record(&mut b, nonce);
    b
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
    /// The TLS the message arrived over: version (`TLSv1.3`) and IANA
    /// cipher suite name; `None` in plain text.
    pub tls: Option<(&'a str, &'a str)>,
    /// The SMTP AUTH identity the client logged in as; `None` if it did not.
    pub auth: Option<&'a str>,
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

/// Envelope field types of a version 2 Message or Commit payload (TLV:
/// type u16, length u32, value). SPOOL-FORMAT.md lists what each holds.
pub mod field {
    /// Ends the envelope; length 0.
    pub const END: u16 = 0x0000;
    /// Arrival, i64 unix seconds. Required.
    pub const ARRIVAL: u16 = 0x0001;
    /// The client address as the server's socket saw it: family, address, port.
    pub const CLIENT: u16 = 0x0002;
    /// HELO/EHLO name, UTF-8.
    pub const HELO: u16 = 0x0003;
    /// MAIL FROM reverse path without `<>`, UTF-8; empty for `<>`. Required.
    pub const MAIL_FROM: u16 = 0x0004;
    /// MAIL FROM parameters as sent.
    pub const MAIL_PARAMS: u16 = 0x0005;
    /// One recipient (forward path without `<>`); repeated, in order.
    pub const RCPT: u16 = 0x0006;
    /// The `Received:` header ringmx added.
    pub const TRACE: u16 = 0x0007;
    /// Reserved: the real client address behind a PROXY header (as CLIENT).
    pub const PROXY_CLIENT: u16 = 0x0008;
    /// The TLS protocol version, e.g. `TLSv1.3` (absent: plain text).
    pub const TLS_VERSION: u16 = 0x0009;
    /// The TLS cipher suite, IANA name.
    pub const TLS_CIPHER: u16 = 0x000A;
    /// The authenticated (SMTP AUTH) identity, text.
    pub const AUTH_ID: u16 = 0x000B;
    /// Reserved: a header field for routing, `Name: value` unfolded; repeated.
    pub const ROUTING_HEADER: u16 = 0x000C;
    /// Reserved: the local address the connection arrived on (as CLIENT).
    pub const LOCAL_ADDR: u16 = 0x000D;
    /// Types with this bit set are critical: a reader that does not know one
    /// must not use the message.
    pub const CRITICAL: u16 = 0x8000;
}

fn put_field(buf: &mut Vec<u8>, ty: u16, what: &'static str, v: &[u8]) -> Result<(), SpoolError> {
    buf.extend_from_slice(&ty.to_le_bytes());
    put_str(buf, what, v)
}

fn encode_addr(a: &SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(19);
    match a {
        SocketAddr::V4(a) => {
            v.push(4);
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_le_bytes());
        }
        SocketAddr::V6(a) => {
            v.push(6);
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_le_bytes());
        }
    }
    v
}

/// Appends the envelope (TLV fields, see [`field`]) and trace header part
/// of a version 2 message payload, then a zero body length and an empty
/// fragment list; returns the offset (in `buf`) of the body length field,
/// which [`set_body_len`] patches.
///
/// # Errors
/// [`SpoolError::TooLarge`] when a field exceeds what a length can say.
pub fn encode_message_prefix(
    buf: &mut Vec<u8>,
    env: &EnvelopeRecord<'_>,
    received: &[u8],
) -> Result<usize, SpoolError> {
    put_field(
        buf,
        field::ARRIVAL,
        "arrival",
        &env.arrival_unix.to_le_bytes(),
    )?;
    if let Some(a) = &env.client {
        put_field(buf, field::CLIENT, "client address", &encode_addr(a))?;
    }
    put_field(buf, field::HELO, "HELO name", env.helo.as_bytes())?;
    put_field(
        buf,
        field::MAIL_FROM,
        "MAIL FROM address",
        env.mail_from.as_bytes(),
    )?;
    put_field(
        buf,
        field::MAIL_PARAMS,
        "MAIL FROM parameters",
        env.mail_params.as_bytes(),
    )?;
    for r in env.rcpts {
        put_field(buf, field::RCPT, "recipient", r.as_bytes())?;
    }
    if let Some((version, cipher)) = env.tls {
        put_field(buf, field::TLS_VERSION, "TLS version", version.as_bytes())?;
        put_field(buf, field::TLS_CIPHER, "TLS cipher", cipher.as_bytes())?;
    }
    if let Some(id) = env.auth {
        put_field(buf, field::AUTH_ID, "AUTH identity", id.as_bytes())?;
    }
    put_field(buf, field::TRACE, "Received header", received)?;
    put_field(buf, field::END, "end of envelope", &[])?;
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
    /// TLS version (`TLSv1.3`), if the message arrived over TLS.
    pub tls_version: Option<&'a str>,
    /// TLS cipher suite (IANA name), if the message arrived over TLS.
    pub tls_cipher: Option<&'a str>,
    /// The SMTP AUTH identity, if the client logged in.
    pub auth_id: Option<&'a str>,
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

/// Decodes a message or commit payload of format `version`.
///
/// # Errors
/// What is malformed; the CRC having matched, this means a writer bug, a
/// format mismatch, or (version 2) a critical field this build does not know.
pub fn decode_payload(version: u16, payload: &[u8]) -> Result<MessageView<'_>, &'static str> {
    if version == FORMAT_VERSION_1 {
        decode_message_v1(payload)
    } else {
        decode_message(payload)
    }
}

fn decode_addr(c: &mut Cursor<'_>, family: u8) -> Result<Option<SocketAddr>, &'static str> {
    match family {
        0 => Ok(None),
        4 => {
            let ip: [u8; 4] = c.take(4)?.try_into().map_err(|_| "short IPv4 address")?;
            Ok(Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(ip)),
                c.u16()?,
            )))
        }
        6 => {
            let ip: [u8; 16] = c.take(16)?.try_into().map_err(|_| "short IPv6 address")?;
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                c.u16()?,
            )))
        }
        _ => Err("unknown client address family"),
    }
}

/// The body part shared by both versions: body length, fragment list, tail.
fn decode_body<'a>(c: &mut Cursor<'a>) -> Result<(u64, Vec<FragRef>, &'a [u8]), &'static str> {
    let body_len = c.u64()?;
    let nf = c.u32()? as usize;
    if nf > (c.b.len() - c.at) / FRAG_REF_LEN {
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
    let tail = &c.b[c.at..];
    if frag_bytes.checked_add(tail.len() as u64) != Some(body_len) {
        return Err("body length does not match fragments plus tail");
    }
    Ok((body_len, frags, tail))
}

/// Decodes a version 2 message or commit payload: TLV envelope fields up
/// to [`field::END`], then the body part. Unknown fields are skipped unless
/// critical; single fields may appear once.
///
/// # Errors
/// What is malformed.
pub fn decode_message(payload: &[u8]) -> Result<MessageView<'_>, &'static str> {
    let mut c = Cursor { b: payload, at: 0 };
    let mut arrival_unix = None;
    let mut client = None;
    let mut helo = None;
    let mut mail_from = None;
    let mut mail_params = None;
    let mut received = None;
    let mut tls_version = None;
    let mut tls_cipher = None;
    let mut auth_id = None;
    let mut rcpts = Vec::new();
    loop {
        let ty = c.u16()?;
        let v = c.bytes()?;
        let text = || std::str::from_utf8(v).map_err(|_| "envelope text is not UTF-8");
        let once = |slot: bool| {
            if slot {
                Err("envelope field repeated")
            } else {
                Ok(())
            }
        };
        match ty {
            field::END => break,
            field::ARRIVAL => {
                once(arrival_unix.is_some())?;
                let a: [u8; 8] = v.try_into().map_err(|_| "arrival is not 8 bytes")?;
                arrival_unix = Some(i64::from_le_bytes(a));
            }
            field::CLIENT => {
                once(client.is_some())?;
                let mut a = Cursor { b: v, at: 0 };
                let family = a.u8()?;
                client = Some(decode_addr(&mut a, family)?);
                if a.at != v.len() {
                    return Err("client address field has extra bytes");
                }
            }
            field::HELO => {
                once(helo.is_some())?;
                helo = Some(text()?);
            }
            field::MAIL_FROM => {
                once(mail_from.is_some())?;
                mail_from = Some(text()?);
            }
            field::MAIL_PARAMS => {
                once(mail_params.is_some())?;
                mail_params = Some(text()?);
            }
            field::RCPT => rcpts.push(text()?),
            field::TRACE => {
                once(received.is_some())?;
                received = Some(v);
            }
            field::TLS_VERSION => {
                once(tls_version.is_some())?;
                tls_version = Some(text()?);
            }
            field::TLS_CIPHER => {
                once(tls_cipher.is_some())?;
                tls_cipher = Some(text()?);
            }
            field::AUTH_ID => {
                once(auth_id.is_some())?;
                auth_id = Some(text()?);
            }
            t if t & field::CRITICAL != 0 => {
                return Err("critical envelope field this version does not know")
            }
            // Reserved or newer, not critical: skipped.
            _ => {}
        }
    }
    let (body_len, frags, tail) = decode_body(&mut c)?;
    Ok(MessageView {
        arrival_unix: arrival_unix.ok_or("envelope has no arrival time")?,
        client: client.flatten(),
        helo: helo.unwrap_or(""),
        mail_from: mail_from.ok_or("envelope has no MAIL FROM")?,
        mail_params: mail_params.unwrap_or(""),
        rcpts,
        received: received.unwrap_or(b""),
        tls_version,
        tls_cipher,
        auth_id,
        body_len,
        frags,
        tail,
    })
}

/// Decodes a version 1 message or commit payload (fixed field order).
///
/// # Errors
/// What is malformed.
pub fn decode_message_v1(payload: &[u8]) -> Result<MessageView<'_>, &'static str> {
    let mut c = Cursor { b: payload, at: 0 };
    let arrival_unix = c.u64()? as i64;
    let family = c.u8()?;
    let client = decode_addr(&mut c, family)?;
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
    let (body_len, frags, tail) = decode_body(&mut c)?;
    Ok(MessageView {
        arrival_unix,
        client,
        helo,
        mail_from,
        mail_params,
        rcpts,
        received,
        tls_version: None,
        tls_cipher: None,
        auth_id: None,
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

/// A complete version 2 seal record for a segment with `nonce`.
pub fn encode_seal(seal: &Seal, nonce: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(SEAL_RECORD_LEN);
    start_record(&mut b, Kind::Seal, 0);
    b.extend_from_slice(&seal.segment_len.to_le_bytes());
    b.extend_from_slice(&seal.next_id_seq.to_le_bytes());
    // A 16-byte payload is far under the limit.
    let _ = finish_record(&mut b);
    stamp_record(&mut b, nonce);
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
        assert_eq!(segment_file_name(0xa3), "ringmx-v2-00000000000000a3.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(7)),
            SegmentName::Current(7)
        );
        // Version 1 segments are still read.
        assert_eq!(
            parse_segment_file_name("ringmx-v1-0000000000000009.seg"),
            SegmentName::Current(9)
        );
        assert_eq!(
            parse_segment_file_name("ringmx-v3-0000000000000001.seg"),
            SegmentName::OtherVersion(3)
        );
        for cruft in [
            "LOCK",
            "ringmx-v2-1.seg",
            "ringmx-v2-00000000000000a3.seg~",
            "ringmx-v2-00000000000000zz.seg",
            ".ringmx-v2-00000000000000a3.seg.swp",
            &quarantine_file_name(1, 2, 300, 4096),
        ] {
            assert_eq!(
                parse_segment_file_name(cruft),
                SegmentName::Foreign,
                "{cruft}"
            );
        }
        assert!(is_quarantine_file_name(&quarantine_file_name(
            1, 2, 300, 4096
        )));
        assert_eq!(parse_shard_dir_name("shard-12"), Some(12));
        assert_eq!(parse_shard_dir_name("shard-"), None);
        assert_eq!(parse_shard_dir_name("shard-1x"), None);
    }

    #[test]
    fn node_ids() {
        assert_eq!(
            node_id_from_hostname("mx1.example.com\n"),
            "mx1.example.com"
        );
        assert_eq!(node_id_from_hostname(" mx 1\n"), "mx1");
        assert_eq!(node_id_from_hostname("\u{e9}\n"), "localhost");
        assert_eq!(node_id_from_hostname(&"a".repeat(40)).len(), NODE_ID_MAX);
        assert!(check_node_id("mx-1.example_2").is_ok());
        for bad in ["", "a b", "a/b", &"a".repeat(33)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_header_round_trip_and_every_flip_is_caught() {
        let h = FileHeader::new(3, 9, 1234, -5, 0x1122_3344_5566_7788, "mx1.example");
        let b = h.encode();
        assert_eq!(FileHeader::decode(&b), Ok(h));
        assert_eq!(h.node_id(), "mx1.example");
        assert_eq!((h.header_len(), h.record_header_len()), (96, 28));
        assert_eq!(FileHeader::decode(&b[..95]), Err(HeaderError::Torn));
        assert_eq!(FileHeader::decode(&[0u8; 96]), Err(HeaderError::Torn));
        for i in 0..FILE_HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(FileHeader::decode(&c).is_err(), "flip at {i} accepted");
        }
    }

    fn stamped_record(kind: Kind, seq: u64, payload: &[u8], nonce: u64) -> Vec<u8> {
        let mut b = Vec::new();
        start_record(&mut b, kind, seq);
        b.extend_from_slice(payload);
        finish_record(&mut b).unwrap();
        stamp_record(&mut b, nonce);
        b
    }

    fn crc_ok(rec: &[u8]) -> bool {
        let hb = &rec[..RECORD_HEADER_LEN];
        let h = RecordHeader::decode(hb, FORMAT_VERSION).unwrap();
        let c = crc32c::crc32c_append(RecordHeader::crc_start(hb, 2), &rec[RECORD_HEADER_LEN..]);
        RecordHeader::crc_finish(c, hb, 2) == h.crc
    }

    #[test]
    fn v2_record_crc_covers_nonce_and_header() {
        let rec = stamped_record(Kind::Fragment, 42, b"body bytes", 7);
        let h = RecordHeader::decode(&rec[..RECORD_HEADER_LEN], FORMAT_VERSION).unwrap();
        assert_eq!(
            (h.kind, h.id_seq, h.nonce, h.len),
            (Kind::Fragment, 42, 7, 10)
        );
        assert!(crc_ok(&rec));
        for i in 0..rec.len() {
            let mut c = rec.clone();
            c[i] ^= 0x01;
            let ok = RecordHeader::decode(&c[..RECORD_HEADER_LEN], FORMAT_VERSION)
                .filter(|h| h.len == 10)
                .is_some_and(|_| crc_ok(&c));
            assert!(!ok, "flip at {i} accepted");
        }
        // Kind 0 (zeros) is never a record; ignorable kinds decode as such.
        assert!(RecordHeader::decode(&[0u8; RECORD_HEADER_LEN], 2).is_none());
        let mut ign = rec.clone();
        ign[8] = 0x41;
        assert_eq!(
            RecordHeader::decode(&ign[..RECORD_HEADER_LEN], 2).map(|h| h.kind),
            Some(Kind::Ignorable)
        );
        ign[8] = 0x80;
        assert!(RecordHeader::decode(&ign[..RECORD_HEADER_LEN], 2).is_none());
        let end = encode_end_mark(9);
        assert!(crc_ok(&end));
        assert_eq!(
            RecordHeader::decode(&end, 2).map(|h| h.kind),
            Some(Kind::End)
        );
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
                arrival_unix: -1_795_880_682,
                client,
                helo: "client.example",
                mail_from: "",
                mail_params: "SIZE=10 BODY=8BITMIME",
                rcpts: &rcpts,
                tls: None,
                auth: None,
            };
            let mut buf = Vec::new();
            start_record(&mut buf, Kind::Commit, 77);
            let at = encode_message_prefix(&mut buf, &env, b"Received: x\r\n").unwrap();
            let frag = FragRef {
                segment: 2,
                offset: 96,
                len: 5,
            };
            push_frag_ref(&mut buf, &frag);
            set_frag_count(&mut buf, at, 1);
            buf.extend_from_slice(b"tail");
            set_body_len(&mut buf, at, 9);
            finish_record(&mut buf).unwrap();
            stamp_record(&mut buf, 0xfeed);
            let hb = &buf[..RECORD_HEADER_LEN];
            let h = RecordHeader::decode(hb, FORMAT_VERSION).unwrap();
            assert_eq!(
                (h.kind, h.id_seq, h.len as usize, h.nonce),
                (Kind::Commit, 77, buf.len() - RECORD_HEADER_LEN, 0xfeed)
            );
            assert!(crc_ok(&buf));
            let m = decode_payload(FORMAT_VERSION, &buf[RECORD_HEADER_LEN..]).unwrap();
            assert_eq!(m.arrival_unix, -1_795_880_682);
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

    /// An envelope with one extra field of type `ty` before the others.
    fn with_extra_field(ty: u16) -> Vec<u8> {
        let mut buf = Vec::new();
        put_field(&mut buf, ty, "x", b"TLSv1.3").unwrap();
        let env = EnvelopeRecord {
            arrival_unix: 5,
            client: None,
            helo: "h",
            mail_from: "f@x",
            mail_params: "",
            rcpts: &["r@x"],
            tls: None,
            auth: None,
        };
        let at = encode_message_prefix(&mut buf, &env, b"R: x\r\n").unwrap();
        buf.extend_from_slice(b"body");
        set_body_len(&mut buf, at, 4);
        buf
    }

    #[test]
    fn unknown_fields_are_skipped_unless_critical() {
        for ty in [field::LOCAL_ADDR, 0x4321] {
            let b = with_extra_field(ty);
            let m = decode_message(&b).unwrap();
            assert_eq!(
                (m.mail_from, m.rcpts.as_slice(), m.tail),
                ("f@x", &["r@x"][..], &b"body"[..])
            );
        }
        assert!(decode_message(&with_extra_field(field::CRITICAL | 0x0042)).is_err());
        // A single field twice is malformed.
        assert!(decode_message(&with_extra_field(field::MAIL_FROM)).is_err());
    }

    #[test]
    fn tls_version_and_cipher_round_trip() {
        let mut env = EnvelopeRecord {
            arrival_unix: 5,
            client: None,
            helo: "h",
            mail_from: "f@x",
            mail_params: "",
            rcpts: &["r@x"],
            tls: Some(("TLSv1.3", "TLS_AES_256_GCM_SHA384")),
            auth: None,
        };
        let mut buf = Vec::new();
        let at = encode_message_prefix(&mut buf, &env, b"R: x\r\n").unwrap();
        set_body_len(&mut buf, at, 0);
        let m = decode_message(&buf).unwrap();
        assert_eq!(m.tls_version, Some("TLSv1.3"));
        assert_eq!(m.tls_cipher, Some("TLS_AES_256_GCM_SHA384"));
        env.tls = None;
        buf.clear();
        let at = encode_message_prefix(&mut buf, &env, b"R: x\r\n").unwrap();
        set_body_len(&mut buf, at, 0);
        let m = decode_message(&buf).unwrap();
        assert_eq!((m.tls_version, m.tls_cipher), (None, None));
    }

    #[test]
    fn auth_identity_round_trips() {
        let mut env = EnvelopeRecord {
            arrival_unix: 5,
            client: None,
            helo: "h",
            mail_from: "f@x",
            mail_params: "AUTH=f@x",
            rcpts: &["r@x"],
            tls: Some(("TLSv1.3", "TLS_AES_256_GCM_SHA384")),
            auth: Some("alice"),
        };
        let mut buf = Vec::new();
        let at = encode_message_prefix(&mut buf, &env, b"R: x\r\n").unwrap();
        set_body_len(&mut buf, at, 0);
        assert_eq!(decode_message(&buf).unwrap().auth_id, Some("alice"));
        env.auth = None;
        buf.clear();
        let at = encode_message_prefix(&mut buf, &env, b"R: x\r\n").unwrap();
        set_body_len(&mut buf, at, 0);
        assert_eq!(decode_message(&buf).unwrap().auth_id, None);
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
            tls: None,
            auth: None,
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
        // A huge field length must not size an allocation or read past the end.
        let mut evil = buf.clone();
        evil[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_message(&evil).is_err());
    }

    #[test]
    fn seal_round_trip() {
        let s = Seal {
            segment_len: 4096,
            next_id_seq: 99,
        };
        let b = encode_seal(&s, 3);
        assert_eq!(b.len(), SEAL_RECORD_LEN);
        assert!(crc_ok(&b));
        assert_eq!(decode_seal(&b[RECORD_HEADER_LEN..]), Some(s));
    }
}
