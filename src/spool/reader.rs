//! Reading the spool from outside the server, with plain blocking `std::fs`:
//! iterate committed messages per shard in the order they were committed,
//! look one up by queue id, verify every checksum, count what is on disk.
//! Works while a server appends to the same spool; takes no lock.
//!
//! What a reader sees: `Message` and `Commit` records only, so an aborted or
//! still-streaming message never shows. A record becomes visible once it is
//! *written*, which is a moment before the server's fdatasync returns and it
//! replies `250`. If that fdatasync fails, the server cuts the record away
//! again and the client is told to retry: a consumer that races the server
//! can, in that rare case, see a message that the spool then drops and the
//! client re-sends. Consumers that must not see it should stay behind the
//! newest segment, or re-check after a moment.
//!
//! Consumers (`ringmx ship`) resume and tail: [`SpoolReader::shard_messages_from`]
//! starts at a stored [`Location`], [`ShardMessages::resume_point`] is where the
//! next read begins (store it once what came before is shipped), and a
//! [`ShardMessages`] that returned `None` can be polled again to see what
//! the server appended since, in the live segment or in new ones. A
//! follower that ships what it sees at once can, in the rare case above,
//! ship a message the server then drops (and its client sends again): the
//! next hop gets it once more under a new queue id, never loses one. A
//! reader that finds its segment shorter than where it stands goes on from
//! the new end, where the server writes next; only if the server has
//! written past that point again before the reader looks does the reader
//! meet a record boundary it does not know, which it reports as damage and
//! resynchronises after (the server moves to a new segment after a failed
//! fdatasync, so that needs a failed write, cut and rewritten, in between).
//!
//! At the end of the newest segment a record that is not intact is where the
//! server is writing now (or a torn tail the next start will cut): iteration
//! ends there quietly. Anywhere else it is damage: reported as an error
//! naming the segment file and offset, and stepped over (version 2 segments
//! resynchronise on their nonce, see SPOOL-FORMAT.md); iteration goes on.
//! Readers read format versions 1 and 2.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::format::{
    decode_payload, decode_seal, parse_shard_dir_name, segment_file_name_v, shard_dir_name,
    FragRef, Kind, Location, MessageView, RecordHeader, FORMAT_VERSION, FORMAT_VERSION_1,
    RECORD_HEADER_LEN, SEAL_PAYLOAD_LEN,
};
use super::lock::lock_holder;
use super::queue_id::QueueId;
use super::scan::{list_segments, Damage, OpenError, Payload, SegmentFile, Step};

/// A read-only view of a spool directory.
///
/// # Example
/// ```no_run
/// use ringmx::spool::SpoolReader;
/// let spool = SpoolReader::open("spool")?;
/// for msg in spool.messages()? {
///     let msg = msg?;
///     println!("{} from <{}>: {} bytes", msg.id, msg.envelope.mail_from, msg.body_len);
///     let body: Vec<u8> = msg.body_bytes()?; // or stream it: `msg.body()` is a `Read`
///     assert_eq!(body.len() as u64, msg.body_len);
/// }
/// # Ok::<(), ringmx::spool::SpoolError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SpoolReader {
    root: PathBuf,
}

/// The envelope of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Arrival time, unix seconds.
    pub arrival_unix: i64,
    /// The client's address, when the server knew it.
    pub client: Option<SocketAddr>,
    /// HELO/EHLO name.
    pub helo: String,
    /// Reverse path; empty for the null sender.
    pub mail_from: String,
    /// MAIL FROM parameters as sent.
    pub mail_params: String,
    /// Recipients, in order.
    pub rcpts: Vec<String>,
    /// TLS version (`TLSv1.3`) when the message arrived over TLS.
    pub tls_version: Option<String>,
    /// TLS cipher suite (IANA name) when the message arrived over TLS.
    pub tls_cipher: Option<String>,
    /// The SMTP AUTH identity, when the client logged in (submission).
    pub auth_id: Option<String>,
}

/// A committed message. Holds the envelope, the trace header and at most
/// `max_buffered_message_bytes` of body; the rest is read from its fragments
/// by [`StoredMessage::body`].
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its queue id.
    pub id: QueueId,
    /// Where its `Message` or `Commit` record starts.
    pub location: Location,
    /// The node id of the host that wrote it (segment header; empty for a
    /// version 1 segment): node id plus queue id name it across a fleet.
    pub node_id: String,
    /// The envelope.
    pub envelope: StoredEnvelope,
    /// The `Received:` header the server added (CRLF-terminated).
    pub received: Vec<u8>,
    /// Body length in bytes.
    pub body_len: u64,
    frags: Vec<FragRef>,
    tail: Vec<u8>,
    shard_dir: PathBuf,
}

impl StoredMessage {
    /// A message held outside the spool (a consumer's dead letter, a copy
    /// taken before space reclamation deleted its segment): the body is
    /// kept in memory, [`StoredMessage::body`] reads it from there.
    /// `location` is where it was stored, for reports only.
    pub fn from_parts(
        id: QueueId,
        location: Location,
        node_id: String,
        envelope: StoredEnvelope,
        received: Vec<u8>,
        body: Vec<u8>,
    ) -> Self {
        Self {
            id,
            location,
            node_id,
            envelope,
            received,
            body_len: body.len() as u64,
            frags: Vec::new(),
            tail: body,
            shard_dir: PathBuf::new(),
        }
    }

    /// How many fragment records hold the start of the body (0: stored whole).
    pub fn fragments(&self) -> usize {
        self.frags.len()
    }

    /// A reader over the body, streaming fragments from disk with bounded
    /// memory. Each fragment's CRC is checked as its last byte is read; a
    /// mismatch is an `InvalidData` error whose inner error is a
    /// [`SpoolError::Corrupt`].
    pub fn body(&self) -> BodyReader<'_> {
        BodyReader {
            msg: self,
            frag: 0,
            in_frag: 0,
            crc: None,
            seg: None,
            tail_pos: 0,
        }
    }

    /// The whole body in memory (small messages, tests).
    ///
    /// # Errors
    /// A fragment missing, unreadable or failing its CRC.
    pub fn body_bytes(&self) -> Result<Vec<u8>, SpoolError> {
        let mut v = Vec::new();
        self.append_body(&mut v)?;
        Ok(v)
    }

    /// Appends the whole body to `out` (a shipper's buffer that already
    /// holds the `Received:` field): one copy, no buffer of its own. On
    /// an error `out` may hold part of it.
    ///
    /// # Errors
    /// A fragment missing, unreadable or failing its CRC.
    pub fn append_body(&self, out: &mut Vec<u8>) -> Result<(), SpoolError> {
        out.reserve(usize::try_from(self.body_len).unwrap_or(0));
        if self.frags.is_empty() {
            // Stored whole: no fragment to read or check.
            out.extend_from_slice(&self.tail);
            return Ok(());
        }
        self.body()
            .read_to_end(out)
            .map_err(|e| unwrap_io(e, &self.shard_dir))?;
        Ok(())
    }

    /// `Return-Path: <sender>` (RFC 5321 §4.4), CRLF-terminated.
    pub fn return_path(&self) -> Vec<u8> {
        format!("Return-Path: <{}>\r\n", self.envelope.mail_from).into_bytes()
    }

    /// Writes the message as delivered: `Return-Path:`, the `Received:`
    /// header, then the body as stored.
    ///
    /// # Errors
    /// Reading the body or writing `out` failing.
    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), SpoolError> {
        let werr = |e: io::Error| SpoolError::io("writing", "output", e);
        out.write_all(&self.return_path()).map_err(werr)?;
        out.write_all(&self.received).map_err(werr)?;
        let mut body = self.body();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| unwrap_io(e, &self.shard_dir))?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n]).map_err(werr)?;
        }
    }
}

/// Turns an I/O error from [`BodyReader`] back into the spool error inside it.
fn unwrap_io(e: io::Error, path: &Path) -> SpoolError {
    if e.get_ref().is_some_and(|i| i.is::<SpoolError>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(s) = inner.downcast::<SpoolError>() {
                return *s;
            }
        }
        // The downcast was checked just above.
        return SpoolError::corrupt(path, 0, "unreadable body");
    }
    SpoolError::io("reading body from", path, e)
}

/// Streams a message body: fragments in order, then the tail.
pub struct BodyReader<'a> {
    msg: &'a StoredMessage,
    frag: usize,
    in_frag: u32,
    /// CRC of the current fragment so far; `None` until its header is checked.
    crc: Option<u32>,
    seg: Option<SegmentFile>,
    tail_pos: usize,
}

fn invalid(e: SpoolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl BodyReader<'_> {
    fn open_fragment(&mut self, f: FragRef) -> Result<(), SpoolError> {
        if self
            .seg
            .as_ref()
            .is_none_or(|s| s.header.segment != f.segment)
        {
            let path = segment_path(&self.msg.shard_dir, f.segment);
            self.seg = Some(SegmentFile::open(&path).map_err(|e| match e {
                OpenError::Spool(s) => s,
                OpenError::Header(h, _) => {
                    SpoolError::corrupt(&path, 0, format!("bad header: {h:?}"))
                }
            })?);
        }
        let Some(seg) = self.seg.as_ref() else {
            unreachable!("opened just above")
        };
        let (version, rh) = (seg.version(), seg.header.record_header_len());
        let mut hb = [0u8; RECORD_HEADER_LEN];
        seg.read_exact_at(&mut hb[..rh], f.offset)?;
        let ok = RecordHeader::decode(&hb[..rh], version).is_some_and(|h| {
            h.kind == Kind::Fragment
                && h.id_seq == self.msg.id.seq()
                && h.len == f.len
                && h.nonce == seg.header.nonce
        });
        if !ok {
            return Err(SpoolError::corrupt(
                seg.path(),
                f.offset,
                format!("message {}: no matching fragment record here", self.msg.id),
            ));
        }
        self.crc = Some(RecordHeader::crc_start(&hb[..rh], version));
        Ok(())
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while let Some(&f) = self.msg.frags.get(self.frag) {
            if self.crc.is_none() {
                self.open_fragment(f).map_err(invalid)?;
            }
            let left = f.len - self.in_frag;
            if left == 0 {
                // An empty fragment (never written, but valid): next.
                self.frag += 1;
                self.in_frag = 0;
                self.crc = None;
                continue;
            }
            let n = (left as usize).min(out.len());
            let (Some(seg), Some(crc)) = (self.seg.as_ref(), self.crc) else {
                unreachable!("open_fragment set both")
            };
            let (version, rh) = (seg.version(), seg.header.record_header_len());
            let pos = f.offset + rh as u64 + u64::from(self.in_frag);
            seg.read_exact_at(&mut out[..n], pos).map_err(invalid)?;
            let crc = crc32c::crc32c_append(crc, &out[..n]);
            self.in_frag += n as u32;
            if self.in_frag == f.len {
                let mut hb = [0u8; RECORD_HEADER_LEN];
                let hb = &mut hb[..rh];
                seg.read_exact_at(hb, f.offset).map_err(invalid)?;
                let crc = RecordHeader::crc_finish(crc, hb, version);
                if RecordHeader::decode(hb, version).map(|h| h.crc) != Some(crc) {
                    return Err(invalid(SpoolError::corrupt(
                        seg.path(),
                        f.offset,
                        format!("message {}: fragment CRC32C mismatch", self.msg.id),
                    )));
                }
                self.frag += 1;
                self.in_frag = 0;
                self.crc = None;
            } else {
                self.crc = Some(crc);
            }
            return Ok(n);
        }
        let rest = &self.msg.tail[self.tail_pos..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.tail_pos += n;
        Ok(n)
    }
}

/// The file of segment `seq` in `dir`: a version 2 name, or the version 1
/// name when only that exists (a spool written before the upgrade).
fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    let v2 = dir.join(segment_file_name_v(FORMAT_VERSION, seq));
    if v2.exists() {
        return v2;
    }
    let v1 = dir.join(segment_file_name_v(FORMAT_VERSION_1, seq));
    if v1.exists() {
        v1
    } else {
        v2
    }
}

fn header_error(path: &Path, e: OpenError) -> SpoolError {
    match e {
        OpenError::Spool(s) => s,
        OpenError::Header(super::format::HeaderError::Version(found), _) => {
            SpoolError::UnsupportedVersion {
                path: path.to_owned(),
                found,
            }
        }
        OpenError::Header(h, _) => {
            SpoolError::corrupt(path, 0, format!("bad segment header: {h:?}"))
        }
    }
}

/// Builds a [`StoredMessage`] from a loaded `Message`/`Commit` payload.
fn stored(
    shard: u32,
    shard_dir: &Path,
    seg: &SegmentFile,
    offset: u64,
    id_seq: u64,
    payload: &[u8],
) -> Result<StoredMessage, SpoolError> {
    let m = decode_payload(seg.version(), payload)
        .map_err(|r| SpoolError::corrupt(seg.path(), offset, r))?;
    Ok(StoredMessage {
        id: QueueId::new(shard, id_seq)?,
        location: Location {
            segment: seg.header.segment,
            offset,
        },
        node_id: seg.header.node_id().to_owned(),
        envelope: StoredEnvelope {
            arrival_unix: m.arrival_unix,
            client: m.client,
            helo: m.helo.to_owned(),
            mail_from: m.mail_from.to_owned(),
            mail_params: m.mail_params.to_owned(),
            rcpts: m.rcpts.iter().map(|s| (*s).to_owned()).collect(),
            tls_version: m.tls_version.map(str::to_owned),
            tls_cipher: m.tls_cipher.map(str::to_owned),
            auth_id: m.auth_id.map(str::to_owned),
        },
        received: m.received.to_vec(),
        body_len: m.body_len,
        frags: m.frags,
        tail: m.tail.to_vec(),
        shard_dir: shard_dir.to_owned(),
    })
}

fn check_segment_header(seg: &SegmentFile, shard: u32, seq: u64) -> Result<(), SpoolError> {
    if seg.header.shard != shard || seg.header.segment != seq {
        return Err(SpoolError::corrupt(
            seg.path(),
            0,
            format!(
                "header says shard {} segment {}, the name says shard {shard} segment {seq}",
                seg.header.shard, seg.header.segment
            ),
        ));
    }
    Ok(())
}

/// Where the records of the segment at `path` (`len` bytes long) end: see
/// [`SegmentFile::records_end`]; its length where it cannot be opened as a
/// segment (being created, damaged: the readers judge it).
pub(crate) fn data_end(path: &Path, len: u64) -> Result<u64, SpoolError> {
    let mut tries = 0;
    loop {
        let seg = match SegmentFile::open(path) {
            Ok(seg) => seg,
            Err(_) => return Ok(len),
        };
        match seg.records_end() {
            // The server sealed it and cut its zeros under the reads: the
            // file is final now, read it again.
            Err(_) if tries < 3 && seg.file().metadata().is_ok_and(|m| m.len() < seg.len()) => {
                tries += 1;
            }
            r => return r,
        }
    }
}

impl SpoolReader {
    /// Opens the spool at `root`.
    ///
    /// # Errors
    /// `root` is not a directory.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, SpoolError> {
        let root = root.as_ref();
        let meta = std::fs::metadata(root).map_err(|e| SpoolError::io("opening spool", root, e))?;
        if !meta.is_dir() {
            let e = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
            return Err(SpoolError::io("opening spool", root, e));
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shards present, ascending.
    ///
    /// # Errors
    /// The root cannot be listed.
    pub fn shards(&self) -> Result<Vec<u32>, SpoolError> {
        let rd =
            std::fs::read_dir(&self.root).map_err(|e| SpoolError::io("listing", &self.root, e))?;
        let mut v = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| SpoolError::io("listing", &self.root, e))?;
            if let Some(n) = parse_shard_dir_name(&entry.file_name().to_string_lossy()) {
                if entry.path().is_dir() {
                    v.push(n);
                }
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    fn shard_dir(&self, shard: u32) -> PathBuf {
        self.root.join(shard_dir_name(shard))
    }

    /// Committed messages of one shard, in commit order.
    pub fn shard_messages(&self, shard: u32) -> ShardMessages {
        self.shard_messages_from(
            shard,
            Location {
                segment: 0,
                offset: 0,
            },
        )
    }

    /// Committed messages of one shard from `from` on, in commit order: a
    /// consumer resuming at its checkpoint. Offset 0 (or any offset inside
    /// the segment header) means the start of that segment's records; a
    /// segment older than the oldest present means the oldest present
    /// (space reclamation deleted the ones before). `from` must be a record
    /// boundary, as [`ShardMessages::resume_point`] returns.
    pub fn shard_messages_from(&self, shard: u32, from: Location) -> ShardMessages {
        ShardMessages {
            shard,
            dir: self.shard_dir(shard),
            pending: Vec::new(),
            listed_up_to: from.segment.checked_sub(1),
            resume: Some(from),
            here: from,
            at_end: false,
            cur: None,
            pos: 0,
            prev: None,
            buf: Vec::new(),
            done: false,
            resumable: false,
        }
    }

    /// Where one shard's data ends now: the newest segment and its length
    /// (`None`: the shard holds no segment). A consumer that drains "what
    /// was committed when it started" stops once its
    /// [`ShardMessages::resume_point`] reaches this.
    ///
    /// # Errors
    /// The shard directory cannot be listed or the file's size read.
    pub fn shard_end(&self, shard: u32) -> Result<Option<Location>, SpoolError> {
        let dir = self.shard_dir(shard);
        if !dir.is_dir() {
            return Ok(None);
        }
        let (segs, _) = list_segments(&dir)?;
        let Some((seq, path)) = segs.last() else {
            return Ok(None);
        };
        let len = std::fs::metadata(path)
            .map_err(|e| SpoolError::io("reading size of", path, e))?
            .len();
        Ok(Some(Location {
            segment: *seq,
            offset: data_end(path, len)?,
        }))
    }

    /// Committed messages of every shard: shard 0's in order, then shard 1's, ...
    ///
    /// # Errors
    /// The root cannot be listed.
    pub fn messages(
        &self,
    ) -> Result<impl Iterator<Item = Result<StoredMessage, SpoolError>> + '_, SpoolError> {
        Ok(self
            .shards()?
            .into_iter()
            .flat_map(move |s| self.shard_messages(s)))
    }

    /// The committed message with this id.
    ///
    /// Segments sealed before the id was issued are skipped by their seal;
    /// the rest are walked header to header without reading payloads.
    ///
    /// # Errors
    /// [`SpoolError::NotFound`]; corruption met on the way.
    pub fn get(&self, id: QueueId) -> Result<StoredMessage, SpoolError> {
        let dir = self.shard_dir(id.shard());
        if !dir.is_dir() {
            return Err(SpoolError::NotFound(id));
        }
        let (segs, _) = list_segments(&dir)?;
        let mut buf = Vec::new();
        for (seq, path) in &segs {
            let seg = match SegmentFile::open(path) {
                Ok(s) => s,
                // A segment being created right now holds nothing yet.
                Err(OpenError::Header(_, true)) => continue,
                // Reclaimed after the listing: every consumer had shipped it.
                Err(e) if e.is_gone() => continue,
                Err(e) => return Err(header_error(path, e)),
            };
            check_segment_header(&seg, id.shard(), *seq)?;
            if seg.read_seal()?.is_some_and(|s| s.next_id_seq <= id.seq()) {
                continue;
            }
            let mut pos = seg.data_start();
            let mut prev = None;
            loop {
                match seg.next(pos, Payload::Skip)? {
                    Step::End | Step::EndMark => break,
                    // Damage is stepped over as recovery does; a tail ends
                    // the segment (a write in progress, a torn tail, or a
                    // segment abandoned after a failed write).
                    Step::Bad(_) => match seg.damage_after_skip(prev, pos)?.1 {
                        Damage::Middle(next) => {
                            prev = None;
                            pos = next;
                        }
                        Damage::Zeros | Damage::Tail => break,
                    },
                    Step::Record(m)
                        if m.header.kind == Kind::Ignorable
                            && !matches!(seg.next(pos, Payload::Verify)?, Step::Record(_)) =>
                    {
                        // A damaged kind byte can land in the ignorable range.
                        match seg.classify(pos)? {
                            Damage::Middle(next) => {
                                prev = None;
                                pos = next;
                            }
                            Damage::Zeros | Damage::Tail => break,
                        }
                    }
                    Step::Record(m) => {
                        let h = m.header;
                        if h.id_seq == id.seq() && matches!(h.kind, Kind::Message | Kind::Commit) {
                            return match seg.next(pos, Payload::Load(&mut buf))? {
                                Step::Record(_) => {
                                    stored(id.shard(), &dir, &seg, pos, h.id_seq, &buf)
                                }
                                Step::Bad(reason) => Err(SpoolError::corrupt(path, pos, reason)),
                                Step::End | Step::EndMark => Err(SpoolError::NotFound(id)),
                            };
                        }
                        prev = Some(pos);
                        pos = m.end();
                    }
                }
            }
        }
        Err(SpoolError::NotFound(id))
    }

    /// Checks every record of every shard: header, CRC32C, message payload,
    /// that each commit's fragments exist where it says, seals. A bad record
    /// at the end of a shard's newest segment while a server holds the spool
    /// is reported apart, as a write in progress.
    ///
    /// # Errors
    /// Only failures to read at all; damage goes into the report.
    pub fn verify(&self) -> Result<Vec<ShardSummary>, SpoolError> {
        self.summarize(true)
    }

    /// Counts what is on disk per shard, checking only what it must read
    /// anyway (message records), not fragment CRCs.
    ///
    /// # Errors
    /// As [`SpoolReader::verify`].
    pub fn disk_stats(&self) -> Result<Vec<ShardSummary>, SpoolError> {
        self.summarize(false)
    }

    fn summarize(&self, verify: bool) -> Result<Vec<ShardSummary>, SpoolError> {
        let in_use = lock_holder(&self.root)?.is_some();
        self.shards()?
            .into_iter()
            .map(|s| self.summarize_shard(s, verify, in_use))
            .collect()
    }

    fn summarize_shard(
        &self,
        shard: u32,
        verify: bool,
        in_use: bool,
    ) -> Result<ShardSummary, SpoolError> {
        let mut walk = Summarizer {
            dir: self.shard_dir(shard),
            verify,
            in_use,
            sum: ShardSummary {
                shard,
                ..Default::default()
            },
            buf: Vec::new(),
            ref_seg: None,
        };
        let segs = match list_segments(&walk.dir) {
            Ok((segs, _)) => segs,
            Err(e @ SpoolError::UnsupportedVersion { .. }) => {
                let dir = walk.dir.clone();
                walk.damage(&dir, 0, 0, e.to_string());
                return Ok(walk.sum);
            }
            Err(e) => return Err(e),
        };
        let n = segs.len();
        for (i, (seq, path)) in segs.iter().enumerate() {
            walk.segment(*seq, path, i + 1 == n)?;
        }
        Ok(walk.sum)
    }
}

/// One shard's walk for [`SpoolReader::verify`] and
/// [`SpoolReader::disk_stats`]: segment by segment, record by record,
/// counting into `sum`.
struct Summarizer {
    dir: PathBuf,
    /// Check every CRC and fragment reference, not only what must be read.
    verify: bool,
    /// A server holds the spool: damage at the end of the newest segment is
    /// likely a write in progress.
    in_use: bool,
    sum: ShardSummary,
    /// A message payload being checked.
    buf: Vec<u8>,
    /// One open segment for fragment reference checks: most point at the
    /// segment being walked or the one before.
    ref_seg: Option<SegmentFile>,
}

impl Summarizer {
    /// Damage, whoever holds the spool: `bytes` long from `offset` (0: a
    /// whole file, or unknown).
    fn damage(&mut self, path: &Path, offset: u64, bytes: u64, reason: String) {
        self.sum.problems.push(Problem {
            path: path.to_owned(),
            offset,
            bytes,
            reason,
        });
    }

    /// Damage that ends a segment: in the newest segment while a server
    /// holds the spool, a write in progress rather than corruption.
    fn damage_at_end(&mut self, path: &Path, last: bool, offset: u64, bytes: u64, reason: String) {
        if last && self.in_use {
            self.sum.in_progress.push(Problem {
                path: path.to_owned(),
                offset,
                bytes,
                reason,
            });
        } else {
            self.damage(path, offset, bytes, reason);
        }
    }

    /// Walks segment `seq` (`last`: the shard's newest) to its end,
    /// stepping over damage in the middle.
    fn segment(&mut self, seq: u64, path: &Path, last: bool) -> Result<(), SpoolError> {
        self.sum.segments += 1;
        let Some(seg) = self.open(seq, path, last) else {
            return Ok(());
        };
        self.sum.bytes += seg.len();
        let mut pos = seg.data_start();
        let mut prev = None;
        while let Some((next, intact)) = self.record(&seg, prev, pos, last)? {
            prev = intact.then_some(pos);
            pos = next;
        }
        Ok(())
    }

    /// The segment file, or `None` (noted as damage) when its header is
    /// missing, torn or names another shard or sequence.
    fn open(&mut self, seq: u64, path: &Path, last: bool) -> Option<SegmentFile> {
        let seg = match SegmentFile::open(path) {
            Ok(s) => s,
            Err(OpenError::Header(h, true)) => {
                let reason = format!("segment has no complete header ({h:?})");
                self.damage_at_end(path, last, 0, 0, reason);
                return None;
            }
            // Reclaimed after the listing: not damage.
            Err(e) if e.is_gone() => return None,
            Err(e) => {
                self.damage(path, 0, 0, header_error(path, e).to_string());
                return None;
            }
        };
        if let Err(e) = check_segment_header(&seg, self.sum.shard, seq) {
            self.damage(path, 0, 0, e.to_string());
            return None;
        }
        Some(seg)
    }

    /// No intact record at `pos` (`prev`: the record before, if intact):
    /// notes the damaged range; where the walk goes on, if it does.
    fn bad(
        &mut self,
        seg: &SegmentFile,
        prev: Option<u64>,
        pos: u64,
        last: bool,
        reason: &str,
    ) -> Result<Option<u64>, SpoolError> {
        let (start, damage) = seg.damage_after_skip(prev, pos)?;
        match damage {
            Damage::Middle(next) => {
                let reason = format!("{reason}; intact records resume at offset {next}");
                self.damage(seg.path(), start, next - start, reason);
                Ok(Some(next))
            }
            Damage::Zeros => Ok(None),
            Damage::Tail => {
                let bytes = seg.len() - start;
                self.damage_at_end(seg.path(), last, start, bytes, reason.to_owned());
                Ok(None)
            }
        }
    }

    /// Counts the record at `pos`; the offset of the next one and whether
    /// this one was intact, or `None` when the segment ends here.
    fn record(
        &mut self,
        seg: &SegmentFile,
        prev: Option<u64>,
        pos: u64,
        last: bool,
    ) -> Result<Option<(u64, bool)>, SpoolError> {
        let mode = if self.verify {
            Payload::Verify
        } else {
            Payload::Skip
        };
        let m = match seg.next(pos, mode)? {
            Step::End | Step::EndMark => return Ok(None),
            Step::Bad(reason) => {
                return Ok(self.bad(seg, prev, pos, last, reason)?.map(|n| (n, false)))
            }
            Step::Record(m) => m,
        };
        let go_on = match m.header.kind {
            Kind::Fragment => {
                self.sum.fragments += 1;
                self.sum.fragment_bytes += u64::from(m.header.len);
                true
            }
            Kind::Seal => self.seal(seg, pos, last, m.end())?,
            Kind::Message | Kind::Commit => {
                if let Step::Bad(reason) = seg.next(pos, Payload::Load(&mut self.buf))? {
                    return Ok(self.bad(seg, prev, pos, last, reason)?.map(|n| (n, false)));
                }
                self.message(seg, pos, m.header.id_seq)?;
                true
            }
            Kind::Hole => {
                self.sum.holes += 1;
                self.sum.hole_bytes += m.end() - pos;
                true
            }
            Kind::End | Kind::Ignorable => true,
        };
        self.sum.records += 1;
        Ok(go_on.then(|| (m.end(), true)))
    }

    /// A seal must be the last record (only zeros may follow) and decode;
    /// false if it is not.
    fn seal(
        &mut self,
        seg: &SegmentFile,
        pos: u64,
        last: bool,
        end: u64,
    ) -> Result<bool, SpoolError> {
        // Zeros after a seal are not data (SPOOL-FORMAT.md, "End of data").
        let zeros_after = end < seg.len() && seg.all_zero(end, seg.len())?;
        let valid = if zeros_after {
            let mut p = [0u8; SEAL_PAYLOAD_LEN];
            seg.read_exact_at(&mut p, end - SEAL_PAYLOAD_LEN as u64)?;
            decode_seal(&p).is_some_and(|s| s.segment_len == end)
        } else {
            end == seg.len() && seg.read_seal()?.is_some()
        };
        if !valid {
            let reason = "seal record is not a valid end of its segment".to_owned();
            let bytes = seg.len() - pos;
            self.damage_at_end(seg.path(), last, pos, bytes, reason);
            return Ok(false);
        }
        self.sum.sealed_segments += 1;
        Ok(true)
    }

    /// Counts the message (or commit) record loaded into `self.buf`, and
    /// under `verify` checks its fragment references.
    fn message(&mut self, seg: &SegmentFile, pos: u64, id_seq: u64) -> Result<(), SpoolError> {
        let msg = match decode_payload(seg.version(), &self.buf) {
            Ok(msg) => msg,
            Err(reason) => {
                let len = self.buf.len() as u64;
                self.damage(seg.path(), pos, len, reason.to_owned());
                return Ok(());
            }
        };
        self.sum.count_message(&msg);
        if !self.verify {
            return Ok(());
        }
        // The first bad reference is reported; the walk goes on.
        let bad = msg.frags.iter().find_map(|f| {
            check_frag_ref(&self.dir, &mut self.ref_seg, f, id_seq)
                .err()
                .map(|reason| (*f, reason))
        });
        if let Some((f, reason)) = bad {
            let reason = format!(
                "message {}: fragment at segment {} offset {}: {reason}",
                QueueId::new(self.sum.shard, id_seq)?,
                f.segment,
                f.offset
            );
            self.damage(seg.path(), pos, 0, reason);
        }
        Ok(())
    }
}

/// Checks that a commit's fragment reference points at a fragment record of
/// the same message and length (its CRC is checked by the sequential walk).
fn check_frag_ref(
    dir: &Path,
    cache: &mut Option<SegmentFile>,
    f: &FragRef,
    id_seq: u64,
) -> Result<(), String> {
    if cache.as_ref().is_none_or(|s| s.header.segment != f.segment) {
        let path = segment_path(dir, f.segment);
        *cache =
            Some(SegmentFile::open(&path).map_err(|_| "segment missing or unreadable".to_owned())?);
    }
    let Some(seg) = cache.as_ref() else {
        unreachable!("filled just above")
    };
    let rh = seg.header.record_header_len();
    let mut hb = [0u8; RECORD_HEADER_LEN];
    // Hostile offsets must not overflow (a commit's fields are on-disk data).
    let end = f
        .offset
        .checked_add(rh as u64)
        .and_then(|e| e.checked_add(u64::from(f.len)));
    if end.is_none_or(|e| e > seg.len()) {
        return Err("points past the end of its segment".into());
    }
    seg.read_exact_at(&mut hb[..rh], f.offset)
        .map_err(|e| e.to_string())?;
    match RecordHeader::decode(&hb[..rh], seg.version()) {
        Some(h)
            if h.kind == Kind::Fragment
                && h.id_seq == id_seq
                && h.len == f.len
                && h.nonce == seg.header.nonce =>
        {
            Ok(())
        }
        _ => Err("no matching fragment record there".into()),
    }
}

/// A damaged spot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The segment file (or shard directory).
    pub path: PathBuf,
    /// Byte offset in it.
    pub offset: u64,
    /// Length of the damaged range; 0 for a whole file or a spot of unknown extent.
    pub bytes: u64,
    /// What is wrong.
    pub reason: String,
}

/// What one shard holds on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSummary {
    /// The shard number.
    pub shard: u32,
    /// Segment files.
    pub segments: u64,
    /// Of which end with a valid seal.
    pub sealed_segments: u64,
    /// Bytes in segment files.
    pub bytes: u64,
    /// Intact records.
    pub records: u64,
    /// Committed messages.
    pub messages: u64,
    /// Their body bytes.
    pub body_bytes: u64,
    /// Fragment records.
    pub fragments: u64,
    /// Their payload bytes.
    pub fragment_bytes: u64,
    /// Fragment references in commit records; `fragments` minus this is the
    /// number of orphans (aborted streamed messages).
    pub referenced_fragments: u64,
    /// Earliest arrival among the messages, unix seconds.
    pub oldest_arrival: Option<i64>,
    /// Latest arrival.
    pub newest_arrival: Option<i64>,
    /// Hole records: damaged ranges recovery copied to quarantine files
    /// and replaced (see SPOOL-FORMAT.md, "Recovery at start").
    pub holes: u64,
    /// Their bytes.
    pub hole_bytes: u64,
    /// Corruption found.
    pub problems: Vec<Problem>,
    /// Incomplete records at the end of the newest segment while a server
    /// holds the spool: most likely a write in progress.
    pub in_progress: Vec<Problem>,
}

impl ShardSummary {
    /// Fragments no commit refers to (dead space from aborted messages).
    pub fn orphan_fragments(&self) -> u64 {
        self.fragments.saturating_sub(self.referenced_fragments)
    }

    fn count_message(&mut self, msg: &MessageView<'_>) {
        self.messages += 1;
        self.body_bytes += msg.body_len;
        self.referenced_fragments += msg.frags.len() as u64;
        let t = msg.arrival_unix;
        self.oldest_arrival = Some(self.oldest_arrival.map_or(t, |o| o.min(t)));
        self.newest_arrival = Some(self.newest_arrival.map_or(t, |n| n.max(t)));
    }
}

/// Committed messages of one shard, in order. Returns `None` at the end of
/// the newest segment present when it gets there; polled again, it goes on
/// with whatever was appended since (tailing the live segment, then newer
/// segments).
///
/// Damage is reported as an `Err` item ([`SpoolError::Corrupt`] naming the
/// segment file and the offset where the damaged range starts), after which
/// iteration goes on with the next intact record: damage in the middle of a
/// segment is stepped over (version 2 segments resynchronise on their
/// nonce), a damaged tail of an older segment ends that segment only. Any
/// other error (the directory or a file cannot be read) ends iteration for
/// good (start a new one at [`ShardMessages::resume_point`] to retry).
pub struct ShardMessages {
    shard: u32,
    dir: PathBuf,
    /// Segments listed but not yet opened, in reverse order (pop = next).
    pending: Vec<(u64, PathBuf)>,
    /// The highest segment sequence listed so far.
    listed_up_to: Option<u64>,
    /// Where to start in the first segment opened, if it is this one.
    resume: Option<Location>,
    /// The position: every committed message before it has been returned.
    here: Location,
    /// The last poll found nothing more: the current segment's length is
    /// re-read before the next (a partial record may be whole by now).
    at_end: bool,
    cur: Option<SegmentFile>,
    pos: u64,
    /// Start of the previous record of the current segment, while known intact
    /// but for its CRC (hops trust headers).
    prev: Option<u64>,
    buf: Vec<u8>,
    done: bool,
    /// The error `step` returns now reports damage that iteration steps over.
    resumable: bool,
}

impl ShardMessages {
    /// Where the next read begins: every committed message before it has
    /// been returned, so a consumer that shipped them stores this. Moves
    /// past records that are not messages too (fragments, seals), and to
    /// `(next segment, 0)` once a segment is read to its end and a newer
    /// one exists, so a position in segment `s` has passed every segment
    /// before `s` (space reclamation counts on that). (Not `position`:
    /// that name is `Iterator::position`'s, which a `&mut ShardMessages`
    /// would call instead.)
    pub fn resume_point(&self) -> Location {
        self.here
    }

    /// Whether iteration ended for good after an error (the directory or a
    /// file could not be read): start a new one at
    /// [`ShardMessages::resume_point`] to try again.
    pub fn ended(&self) -> bool {
        self.done
    }

    /// The shard this reads.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Leaves the current segment for the next one listed (`refill` said
    /// there is one).
    fn next_segment(&mut self) {
        self.cur = None;
        if let Some((seq, _)) = self.pending.last() {
            self.here = Location {
                segment: *seq,
                offset: 0,
            };
        }
    }

    /// The current segment is shorter than where this reader stands: the
    /// server cut records away after a failed write or fdatasync (records
    /// this reader saw a moment before the fdatasync; see the module docs).
    /// A cut ends at a record boundary and anything written later starts
    /// there, so reading goes on from the new end.
    fn after_shrink(&mut self) {
        let Some(len) = self.cur.as_ref().map(SegmentFile::len) else {
            return;
        };
        if len < self.pos {
            self.pos = len;
            self.here.offset = len;
            self.prev = None;
        }
    }

    /// Whether the current segment is shorter now than when its length was
    /// last read (the length is then the new one).
    fn shrank(&mut self) -> Result<bool, SpoolError> {
        let Some(seg) = self.cur.as_mut() else {
            return Ok(false);
        };
        let before = seg.len();
        Ok(seg.refresh_len()? < before)
    }

    /// Whether the current segment is longer now than when its length was
    /// last read. Called once a newer segment is listed: the server appends
    /// nothing to a segment after creating the next one, so this length is
    /// final, but records (and the seal) may have been appended between the
    /// last length read and the listing. Leaving without reading them
    /// would skip their messages for good.
    fn grew(&mut self) -> Result<bool, SpoolError> {
        let Some(seg) = self.cur.as_mut() else {
            return Ok(false);
        };
        let before = seg.len();
        Ok(seg.refresh_len()? > before)
    }

    /// [`Self::grew`], or an intact record (or end mark) now starts at
    /// `pos`, where zeros or a write under way were seen: a server that
    /// writes zeros ahead of its records (`spool.prewrite_bytes`) writes
    /// records *inside* the file and cuts the zeros away when it seals,
    /// so the file can end up shorter, not longer, with new records in it.
    fn changed_at(&mut self, pos: u64) -> Result<bool, SpoolError> {
        if self.grew()? {
            return Ok(true);
        }
        let Some(seg) = self.cur.as_mut() else {
            return Ok(false);
        };
        Ok(matches!(
            seg.next(pos, Payload::Verify)?,
            Step::Record(_) | Step::EndMark
        ))
    }

    /// Lists segments newer than those already seen; true if there are any.
    fn refill(&mut self) -> Result<bool, SpoolError> {
        if !self.pending.is_empty() {
            return Ok(true);
        }
        if !self.dir.is_dir() {
            return Ok(false);
        }
        let (segs, _) = list_segments(&self.dir)?;
        let after = self.listed_up_to;
        let mut newer: Vec<(u64, PathBuf)> = segs
            .into_iter()
            .filter(|(s, _)| after.is_none_or(|a| *s > a))
            .collect();
        if let Some((s, _)) = newer.last() {
            self.listed_up_to = Some(*s);
        }
        newer.reverse();
        self.pending = newer;
        Ok(!self.pending.is_empty())
    }

    fn step(&mut self) -> Result<Option<StoredMessage>, SpoolError> {
        loop {
            if self.cur.is_none() {
                if !self.refill()? {
                    return Ok(None);
                }
                let Some((seq, path)) = self.pending.pop() else {
                    return Ok(None);
                };
                let seg = match SegmentFile::open(&path) {
                    Ok(s) => s,
                    // Being created right now: look again at the next poll.
                    Err(OpenError::Header(_, true)) if self.pending.is_empty() => {
                        self.listed_up_to = seq.checked_sub(1);
                        return Ok(None);
                    }
                    // A failed creation, with newer segments after it: no records.
                    Err(OpenError::Header(_, true)) => {
                        self.next_segment();
                        continue;
                    }
                    // Reclaimed after the listing: every consumer had shipped it.
                    Err(e) if e.is_gone() => {
                        self.next_segment();
                        continue;
                    }
                    // Not readable now (EMFILE, EIO): end here, before it, so
                    // a reader started again at `resume_point` retries it.
                    // Going on with the next segment would let a consumer's
                    // checkpoint pass all of its messages.
                    Err(OpenError::Spool(e)) => {
                        self.pending.push((seq, path));
                        return Err(e);
                    }
                    Err(e) => {
                        // A damaged header: the other segments can still be read.
                        self.resumable = true;
                        return Err(header_error(&path, e));
                    }
                };
                if let Err(e) = check_segment_header(&seg, self.shard, seq) {
                    self.resumable = true;
                    return Err(e);
                }
                let mut seg = seg;
                // Sealed when a newer segment exists: the server appends
                // nothing more to this one.
                seg.read_ahead(!self.pending.is_empty());
                let mut start = seg.data_start();
                if let Some(r) = self.resume.take() {
                    if r.segment == seq {
                        start = start.max(r.offset);
                    }
                }
                self.here = Location {
                    segment: seq,
                    offset: start,
                };
                self.pos = start;
                self.prev = None;
                self.cur = Some(seg);
            }
            let Some(seg) = self.cur.as_mut() else {
                continue;
            };
            if self.pos >= seg.len() {
                // Catch records appended since the file was opened.
                let len = seg.refresh_len()?;
                if len < self.pos {
                    // Cut shorter: see `after_shrink`.
                    self.pos = len;
                    self.here.offset = len;
                    self.prev = None;
                }
            }
            // One read of the header (and of a message's payload) per
            // record: other records are hopped over on their header alone.
            let step = match seg.next(self.pos, Payload::LoadMessages(&mut self.buf)) {
                Ok(step) => step,
                Err(e) => {
                    // A server that writes zeros ahead of its records
                    // (`spool.prewrite_bytes`) cuts them when it seals: the
                    // file can end before the length read earlier.
                    let before = seg.len();
                    if seg.refresh_len()? < before {
                        self.after_shrink();
                        continue;
                    }
                    return Err(e);
                }
            };
            match step {
                step @ (Step::End | Step::EndMark) => {
                    if !self.refill()? {
                        return Ok(None);
                    }
                    // Records appended between the length read and the
                    // listing: read them before leaving (see `grew`).
                    if step == Step::End && self.grew()? {
                        continue;
                    }
                    self.next_segment();
                }
                Step::Bad(_) if seg.stop_read_ahead() => {
                    // Damage is judged (and stepped over) on plain reads,
                    // as it always was.
                    continue;
                }
                Step::Bad(reason) => {
                    let (path, pos) = (seg.path().to_owned(), self.pos);
                    // Damage starts here when the header holds up and only
                    // the payload's CRC fails; when the header itself does
                    // not, the previous record's length may be what is wrong.
                    let prev = match seg.next(pos, Payload::Skip)? {
                        Step::Record(_) => None,
                        _ => self.prev,
                    };
                    return self.damaged(path, prev, pos, reason);
                }
                Step::Record(m) => {
                    let pos = self.pos;
                    if m.header.kind == Kind::Ignorable {
                        // Rare, and a damaged kind byte of a message can
                        // land in this range: check it before skipping it.
                        if let Step::Bad(reason) = seg.next(pos, Payload::Verify)? {
                            let path = seg.path().to_owned();
                            return self.damaged(path, None, pos, reason);
                        }
                    }
                    self.prev = Some(pos);
                    self.pos = m.end();
                    self.here.offset = self.pos;
                    if !matches!(m.header.kind, Kind::Message | Kind::Commit) {
                        continue;
                    }
                    let r = stored(self.shard, &self.dir, seg, pos, m.header.id_seq, &self.buf);
                    // An undecodable payload is damage of one record.
                    self.resumable = r.is_err();
                    return r.map(Some);
                }
            }
        }
    }

    /// No intact record at `pos` of the current segment: step over damage
    /// in the middle and report it; a tail of an older segment is reported
    /// and ends that segment; a tail of the newest segment (where the
    /// server writes, or a torn tail the next start cuts) or zeros end the
    /// segment quietly.
    fn damaged(
        &mut self,
        path: PathBuf,
        prev: Option<u64>,
        pos: u64,
        reason: &str,
    ) -> Result<Option<StoredMessage>, SpoolError> {
        let Some(seg) = self.cur.as_ref() else {
            return Ok(None);
        };
        let (start, damage) = seg.damage_after_skip(prev, pos)?;
        let len = seg.len();
        match damage {
            // Zeros written ahead of the records (`spool.prewrite_bytes`):
            // the server may have written the record at `pos`, and the ones
            // after it that the search just found, since `pos` read as
            // zeros. It writes in order, so `pos` is whole: read on.
            Damage::Middle(_) if start == pos && seg.intact_at(pos)? => self.step(),
            Damage::Middle(next) => {
                // The newest segment of a running server: the writer's
                // O_DIRECT write of a run (`spool.direct_io`) is split into
                // device requests that finish in any order, so a record can
                // be torn while one after it in the same write is whole
                // already. Look again at the next poll, as for a torn tail;
                // damage that stays is reported once a newer segment exists
                // or the server has stopped.
                if !self.refill()? {
                    let root = self.dir.parent().unwrap_or(&self.dir);
                    if lock_holder(root)?.is_some() {
                        return Ok(None);
                    }
                } else if self.changed_at(start)? {
                    return self.step();
                }
                self.pos = next;
                self.here.offset = next;
                self.prev = None;
                self.resumable = true;
                Err(SpoolError::corrupt(
                    path,
                    start,
                    format!(
                        "damaged range of {} bytes ({reason}); intact records resume at offset {next}",
                        next - start
                    ),
                ))
            }
            Damage::Zeros => {
                // The end of data: on to the next segment, if there is one;
                // else stay here, where the next poll looks again.
                if self.refill()? {
                    // A write under way then, finished now: read it.
                    if !self.changed_at(start)? {
                        self.next_segment();
                    }
                    self.step()
                } else {
                    Ok(None)
                }
            }
            Damage::Tail => {
                // In the newest segment: where the server writes now; the
                // next poll looks again from here.
                if !self.refill()? {
                    return Ok(None);
                }
                // A write under way then, finished now: read it.
                if self.changed_at(start)? {
                    return self.step();
                }
                self.next_segment();
                self.resumable = true;
                Err(SpoolError::corrupt(
                    path,
                    start,
                    format!("damaged tail of {} bytes: {reason}", len - start),
                ))
            }
        }
    }
}

impl Iterator for ShardMessages {
    type Item = Result<StoredMessage, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.resumable = false;
        if std::mem::take(&mut self.at_end) {
            if let Some(seg) = self.cur.as_mut() {
                if let Err(e) = seg.refresh_len() {
                    return Some(Err(e));
                }
                self.after_shrink();
            }
        }
        let mut step = self.step();
        // A server that writes zeros ahead of its records (`spool.prewrite_bytes`,
        // `spool.direct_io`) cuts them when it seals, so the file can end
        // before a length read earlier, under any of the reads a step makes
        // (a record, the damage check after it, the seal): read again with
        // the new length. Bounded, as every cut makes the file shorter.
        for _ in 0..3 {
            if step.is_ok() || !matches!(self.shrank(), Ok(true)) {
                break;
            }
            self.after_shrink();
            step = self.step();
        }
        match step {
            Ok(Some(m)) => Some(Ok(m)),
            // Not done: a later poll sees what is appended by then.
            Ok(None) => {
                self.at_end = true;
                None
            }
            Err(e) => {
                self.done = !self.resumable;
                Some(Err(e))
            }
        }
    }
}
