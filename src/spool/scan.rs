//! Walks one segment file record by record with positioned reads
//! (`std::fs`, blocking). Shared by recovery (at start-up, before the shard
//! serves anyone), by the reader and by `verify`. Reads format versions 1
//! and 2.
//!
//! It decides "is there a whole, intact record here?" and, when there is
//! not, what kind of damage it is ([`SegmentFile::classify`]): zeros up to
//! the end of the file (the end of data), a torn tail (nothing intact
//! follows), or damage in the middle (an intact record of this segment
//! follows: [`SegmentFile::resync`] finds it by the segment's nonce). What
//! to do about it (cut, quarantine, report, a write in progress) is the
//! caller's call, because it depends on where the segment sits and whether
//! a server is running.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::format::{
    decode_seal, FileHeader, HeaderError, Kind, RecordHeader, Seal, FORMAT_VERSION_1,
    MAX_RECORD_PAYLOAD, SEAL_PAYLOAD_LEN, V1_FILE_HEADER_LEN,
};

/// Payload bytes checked per read when a record is verified without being
/// kept, and bytes searched per read by a resync.
const CHUNK: usize = 64 * 1024;

/// Bytes a sealed segment's read-ahead reads at once: records of a few
/// KiB then cost one pread per window instead of two or three each.
const READ_AHEAD: usize = 128 * 1024;

/// Bytes read at a record's header in a segment still written to: header
/// and payload of a message of a couple of KiB in one pread.
const READ_RECORD: usize = 4 * 1024;

/// The bytes last read ahead: `buf[..valid]` holds the file's bytes at
/// `start..start + valid`, never past the length last seen.
#[derive(Debug)]
struct Window {
    start: u64,
    /// `size` bytes once used (zeroed once, not per read).
    buf: Vec<u8>,
    valid: usize,
    /// Bytes read at once.
    size: usize,
    /// Serve later records from it too (a sealed segment); else each
    /// record is read afresh ([`SegmentFile::next`] drops the window).
    keep: bool,
}

/// An open segment file with a valid header.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    file: File,
    path: PathBuf,
    /// File length when last looked at; [`SegmentFile::refresh_len`] updates it.
    len: u64,
    /// The decoded header.
    pub(crate) header: FileHeader,
    /// Read-ahead, for a segment no one writes to any more
    /// ([`SegmentFile::read_ahead`]); `None`: every read is a pread.
    ahead: Option<std::cell::RefCell<Window>>,
}

/// Why a segment could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The header is missing or unreadable; the flag says whether the file
    /// is too short to hold any record after a header of its version (a
    /// creation that never completed).
    Header(HeaderError, bool),
    /// The file could not be opened or read.
    Spool(SpoolError),
}

impl OpenError {
    /// The file is gone: deleted by space reclamation after it was listed.
    pub(crate) fn is_gone(&self) -> bool {
        matches!(self, OpenError::Spool(SpoolError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound)
    }
}

/// One step of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The walk reached the end of the file exactly at a record boundary.
    End,
    /// An intact end mark (version 2; in version 1 a zeroed header slot):
    /// the segment's data ends at this offset, whatever follows.
    EndMark,
    /// An intact record (its CRC checked unless the walk skips payloads).
    Record(RecordMeta),
    /// No intact record starts here.
    Bad(&'static str),
}

/// What lies at a spot where no intact record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Only zero bytes from here to the end of the file, and no intact
    /// record among them: the end of data (version 2), not damage.
    Zeros,
    /// No intact record of this segment follows (version 1: always): a
    /// torn tail, or where a write is under way.
    Tail,
    /// Damage in the middle: the next intact record starts at this offset.
    Middle(u64),
}

/// Where a record is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    /// Offset of its header.
    pub(crate) offset: u64,
    /// Its decoded header.
    pub(crate) header: RecordHeader,
    /// Its header's length (by format version).
    pub(crate) header_len: u32,
}

impl RecordMeta {
    /// Offset of its payload.
    pub(crate) fn payload(&self) -> u64 {
        self.offset + u64::from(self.header_len)
    }

    /// Offset just past the record.
    pub(crate) fn end(&self) -> u64 {
        self.payload() + u64::from(self.header.len)
    }
}

/// What to do with a record's payload during a walk.
pub(crate) enum Payload<'a> {
    /// Trust the header; read nothing else (fast hops for lookups).
    Skip,
    /// Check the CRC with bounded memory.
    Verify,
    /// Check the CRC and keep the payload in the buffer.
    Load(&'a mut Vec<u8>),
    /// [`Payload::Load`] for a `Message` or `Commit` record,
    /// [`Payload::Skip`] for any other: a reader of messages reads each
    /// header once.
    LoadMessages(&'a mut Vec<u8>),
}

impl SegmentFile {
    /// Opens `path` read-only and checks its header.
    pub(crate) fn open(path: &Path) -> Result<Self, OpenError> {
        let file = File::open(path)
            .map_err(|e| OpenError::Spool(SpoolError::io("opening segment", path, e)))?;
        Self::from_file(file, path)
    }

    /// Wraps an already open file (recovery opens it read-write to truncate).
    pub(crate) fn from_file(file: File, path: &Path) -> Result<Self, OpenError> {
        let len = file
            .metadata()
            .map_err(|e| OpenError::Spool(SpoolError::io("reading size of", path, e)))?
            .len();
        let mut b = [0u8; super::format::FILE_HEADER_LEN];
        let n = (len as usize).min(b.len());
        file.read_exact_at(&mut b[..n], 0)
            .map_err(|e| OpenError::Spool(SpoolError::io("reading header of", path, e)))?;
        let header = FileHeader::decode(&b[..n]).map_err(|e| {
            // The version field, if it made it to disk, says how long the
            // header is; without it assume the longer (version 2) header.
            let v1 = n >= 10 && b[0..8] == super::format::FILE_MAGIC && b[8..10] == [1, 0];
            let room = if v1 {
                V1_FILE_HEADER_LEN
            } else {
                super::format::FILE_HEADER_LEN
            };
            OpenError::Header(e, len <= room as u64)
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
            header,
            ahead: None,
        })
    }

    /// Reads in windows from now on. `sealed`: the server appends nothing
    /// more to this segment (a newer one exists), so windows of
    /// [`READ_AHEAD`] bytes serve record after record. Otherwise each
    /// record is read afresh, [`READ_RECORD`] bytes at its header: a
    /// window read a while ago could hold bytes the server has since cut
    /// back (after a failed write) and written again, and reading them
    /// would skip the new records. Dropped by [`SegmentFile::refresh_len`]
    /// all the same.
    pub(crate) fn read_ahead(&mut self, sealed: bool) {
        self.ahead = Some(std::cell::RefCell::new(Window {
            start: 0,
            buf: Vec::new(),
            valid: 0,
            size: if sealed { READ_AHEAD } else { READ_RECORD },
            keep: sealed,
        }));
    }

    /// Reads with plain preads from now on; true if it read ahead before.
    pub(crate) fn stop_read_ahead(&mut self) -> bool {
        self.ahead.take().is_some()
    }

    /// Forgets what was read ahead: the next read is a fresh pread.
    fn drop_read_ahead(&self) {
        if let Some(w) = self.ahead.as_ref() {
            w.borrow_mut().valid = 0;
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file length as last seen.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Where the first record starts.
    pub(crate) fn data_start(&self) -> u64 {
        self.header.header_len() as u64
    }

    /// The format version.
    pub(crate) fn version(&self) -> u16 {
        self.header.version
    }

    /// The underlying file (recovery truncates through it).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Re-reads the file length: a segment the server still appends to grows.
    pub(crate) fn refresh_len(&mut self) -> Result<u64, SpoolError> {
        self.len = self
            .file
            .metadata()
            .map_err(|e| SpoolError::io("reading size of", &self.path, e))?
            .len();
        self.drop_read_ahead();
        Ok(self.len)
    }

    /// Sets the remembered length after the caller truncated the file.
    pub(crate) fn set_len_after_truncate(&mut self, len: u64) {
        self.len = len;
        self.drop_read_ahead();
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> Result<(), SpoolError> {
        let Some(w) = self.ahead.as_ref() else {
            return self.pread(buf, pos);
        };
        let w = &mut *w.borrow_mut();
        let end = pos + buf.len() as u64;
        if pos < w.start || end > w.start + w.valid as u64 {
            if buf.len() >= w.size / 2 || end > self.len {
                // Large (no gain in a copy), or past the known end (an
                // error or a race the plain read reports as before).
                return self.pread(buf, pos);
            }
            let n = usize::try_from(self.len - pos).map_or(w.size, |n| n.min(w.size));
            if w.buf.len() < w.size {
                w.buf.resize(w.size, 0);
            }
            w.start = pos;
            w.valid = 0;
            self.pread(&mut w.buf[..n], pos)?;
            w.valid = n;
        }
        let at = (pos - w.start) as usize;
        buf.copy_from_slice(&w.buf[at..at + buf.len()]);
        Ok(())
    }

    fn pread(&self, buf: &mut [u8], pos: u64) -> Result<(), SpoolError> {
        self.file.read_exact_at(buf, pos).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // The file shrank under us (a writer cut its tail after a failed write).
                SpoolError::corrupt(&self.path, pos, "file shrank while being read")
            } else {
                SpoolError::io("reading", &self.path, e)
            }
        })
    }

    /// The seal at the very end of the file, if the file ends with a valid
    /// one whose recorded length matches: the fast "this segment is complete"
    /// check that saves recovery a full scan of every older segment.
    pub(crate) fn read_seal(&self) -> Result<Option<Seal>, SpoolError> {
        let rh = self.header.record_header_len();
        let Some(pos) = self.len.checked_sub((rh + SEAL_PAYLOAD_LEN) as u64) else {
            return Ok(None);
        };
        if pos < self.data_start() {
            return Ok(None);
        }
        match self.next(pos, Payload::Verify)? {
            Step::Record(m) if m.header.kind == Kind::Seal => {
                let mut p = [0u8; SEAL_PAYLOAD_LEN];
                self.read_at(&mut p, m.payload())?;
                Ok(decode_seal(&p).filter(|s| s.segment_len == self.len))
            }
            _ => Ok(None),
        }
    }

    /// Looks for an intact record at `pos`, treating `self.len()` as the end.
    pub(crate) fn next(&self, pos: u64, payload: Payload<'_>) -> Result<Step, SpoolError> {
        if self.ahead.as_ref().is_some_and(|w| !w.borrow().keep) {
            // Each record afresh (see `read_ahead`).
            self.drop_read_ahead();
        }
        if pos == self.len {
            return Ok(Step::End);
        }
        let version = self.version();
        let rh = self.header.record_header_len();
        if pos + rh as u64 > self.len {
            return Ok(Step::Bad("file ends inside a record header"));
        }
        let mut hb = [0u8; super::format::RECORD_HEADER_LEN];
        let hb = &mut hb[..rh];
        self.read_at(hb, pos)?;
        if version == FORMAT_VERSION_1 && hb.iter().all(|&b| b == 0) {
            // Version 1 writers zero a header slot to mark the end when
            // they cannot cut a failed write back.
            return Ok(Step::EndMark);
        }
        let Some(header) = RecordHeader::decode(hb, version) else {
            return Ok(Step::Bad(
                "not a record header (unknown kind or reserved bits set)",
            ));
        };
        if header.nonce != self.header.nonce {
            return Ok(Step::Bad("record nonce is not this segment's"));
        }
        if header.len > MAX_RECORD_PAYLOAD {
            return Ok(Step::Bad("record length over the format's limit"));
        }
        let meta = RecordMeta {
            offset: pos,
            header,
            header_len: rh as u32,
        };
        if meta.end() > self.len {
            return Ok(Step::Bad("file ends inside a record"));
        }
        let start = meta.payload();
        let crc = RecordHeader::crc_start(hb, version);
        let crc = match payload {
            Payload::Skip => return Ok(self.found(meta)),
            Payload::LoadMessages(_) if !matches!(header.kind, Kind::Message | Kind::Commit) => {
                return Ok(self.found(meta))
            }
            Payload::Load(buf) | Payload::LoadMessages(buf) => {
                buf.clear();
                buf.resize(header.len as usize, 0);
                self.read_at(buf, start)?;
                crc32c::crc32c_append(crc, buf)
            }
            Payload::Verify => {
                let mut chunk = vec![0u8; CHUNK.min(header.len as usize)];
                let mut crc = crc;
                let mut done = 0u64;
                while done < u64::from(header.len) {
                    let n = (u64::from(header.len) - done).min(CHUNK as u64) as usize;
                    self.read_at(&mut chunk[..n], start + done)?;
                    crc = crc32c::crc32c_append(crc, &chunk[..n]);
                    done += n as u64;
                }
                crc
            }
        };
        if RecordHeader::crc_finish(crc, hb, version) != header.crc {
            return Ok(Step::Bad("CRC32C mismatch"));
        }
        Ok(self.found(meta))
    }

    fn found(&self, meta: RecordMeta) -> Step {
        if meta.header.kind == Kind::End {
            Step::EndMark
        } else {
            Step::Record(meta)
        }
    }

    /// The offset of the first intact record (header, nonce and CRC check
    /// out) at or after `from`, if any. Version 2 only: a version 1
    /// segment has no nonce, and a body could hold a record that passes
    /// every other check, so it never resynchronises. A record inside a
    /// message body carries another segment's nonce (or none), so it is
    /// never taken for one of this segment's.
    pub(crate) fn resync(&self, from: u64) -> Result<Option<u64>, SpoolError> {
        if self.version() == FORMAT_VERSION_1 {
            return Ok(None);
        }
        let nonce = self.header.nonce.to_le_bytes();
        // The nonce sits at bytes 20..28 of a header.
        const NONCE_AT: u64 = 20;
        let finder = memchr::memmem::Finder::new(&nonce);
        let mut buf = vec![0u8; CHUNK];
        let mut base = from + NONCE_AT;
        while base + nonce.len() as u64 <= self.len {
            let n = ((self.len - base) as usize).min(CHUNK);
            self.read_at(&mut buf[..n], base)?;
            for hit in finder.find_iter(&buf[..n]) {
                let at = base + hit as u64 - NONCE_AT;
                if matches!(
                    self.next(at, Payload::Verify)?,
                    Step::Record(_) | Step::EndMark
                ) {
                    return Ok(Some(at));
                }
            }
            if base + n as u64 >= self.len {
                break;
            }
            // Overlap so a nonce across two reads is found.
            base += (n - (nonce.len() - 1)) as u64;
        }
        Ok(None)
    }

    /// Whether an intact record (or end mark) starts at `pos` now: after
    /// [`Self::classify`] found damage there in a segment a server may be
    /// writing over zeros it wrote ahead, the record may have been written
    /// since.
    pub(crate) fn intact_at(&self, pos: u64) -> Result<bool, SpoolError> {
        Ok(matches!(
            self.next(pos, Payload::Verify)?,
            Step::Record(_) | Step::EndMark
        ))
    }

    /// What lies at `pos`, where no intact record starts.
    pub(crate) fn classify(&self, pos: u64) -> Result<Damage, SpoolError> {
        if let Some(next) = self.resync(pos + 1)? {
            return Ok(Damage::Middle(next));
        }
        if self.version() != FORMAT_VERSION_1 && self.all_zero(pos, self.len)? {
            return Ok(Damage::Zeros);
        }
        Ok(Damage::Tail)
    }

    /// After a walk that trusted record headers ([`Payload::Skip`]) found no
    /// record at `pos`, where the previous record started at `prev`: where
    /// the damage really starts (the previous record, if its CRC fails: a
    /// damaged length field sends a hop astray) and what lies there.
    pub(crate) fn damage_after_skip(
        &self,
        prev: Option<u64>,
        pos: u64,
    ) -> Result<(u64, Damage), SpoolError> {
        let start = match prev {
            Some(p) if !matches!(self.next(p, Payload::Verify)?, Step::Record(_)) => p,
            _ => pos,
        };
        Ok((start, self.classify(start)?))
    }

    /// Where the records end: the file's length, unless the file ends in
    /// zeros (a server writing zeros ahead of its records,
    /// `spool.prewrite_bytes` or `spool.direct_io`); then the end of the
    /// last record before them. Bisects over 4 KiB blocks for where the
    /// zeros start, then hops over record headers from an intact record a
    /// little before that: a few dozen reads, not the whole segment.
    pub(crate) fn records_end(&self) -> Result<u64, SpoolError> {
        const BLOCK: u64 = 4096;
        // Back from the zeros' start to look for an intact record: longer
        // records are found by the walk from the start instead.
        const BACK: u64 = 256 << 10;
        let (start, len) = (self.data_start(), self.len);
        if len <= start || !self.all_zero(len - 1, len)? {
            return Ok(len);
        }
        let zero_block = |b: u64| self.all_zero((b * BLOCK).max(start), ((b + 1) * BLOCK).min(len));
        // The first all-zero block of the trailing run. Blocks of zeros
        // inside a record can mislead the bisection; the hop below still
        // ends at the true end, from any intact record before it.
        let (mut lo, mut hi) = (start / BLOCK, (len - 1) / BLOCK);
        if zero_block(hi)? {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if zero_block(mid)? {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
        }
        let from = (hi * BLOCK).saturating_sub(BACK).max(start);
        let mut pos = if from == start {
            start
        } else {
            self.resync(from)?.unwrap_or(start)
        };
        while let Step::Record(m) = self.next(pos, Payload::Skip)? {
            pos = m.end();
        }
        Ok(pos)
    }

    /// Whether bytes `from..to` are all zero.
    pub(crate) fn all_zero(&self, from: u64, to: u64) -> Result<bool, SpoolError> {
        let mut buf = vec![0u8; CHUNK];
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(CHUNK);
            self.read_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Reads `buf.len()` bytes at `pos` (fragment bodies).
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<(), SpoolError> {
        self.read_at(buf, pos)
    }
}

/// `(sequence, path)` of each segment, and the paths of everything else.
pub(crate) type Listing = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

/// Lists `(sequence, path)` of the segments in a shard directory, in
/// sequence order; other files are returned apart so callers can say so.
///
/// # Errors
/// The directory cannot be read, or holds a segment of another format version.
pub(crate) fn list_segments(dir: &Path) -> Result<Listing, SpoolError> {
    use super::format::{is_quarantine_file_name, parse_segment_file_name, SegmentName};
    let mut segs = Vec::new();
    let mut foreign = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| SpoolError::io("listing", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| SpoolError::io("listing", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        match parse_segment_file_name(&name.to_string_lossy()) {
            SegmentName::Current(seq) => segs.push((seq, path)),
            SegmentName::OtherVersion(found) => {
                return Err(SpoolError::UnsupportedVersion { path, found })
            }
            SegmentName::Foreign if is_quarantine_file_name(&name.to_string_lossy()) => {}
            SegmentName::Foreign => foreign.push(path),
        }
    }
    segs.sort_unstable_by_key(|(seq, _)| *seq);
    Ok((segs, foreign))
}
