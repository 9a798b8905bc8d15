//! Walks one segment file record by record with positioned reads
//! (`std::fs`, blocking). Shared by recovery (at start-up, before the shard
//! serves anyone), by the reader and by `verify`.
//!
//! It decides only "is there a whole, intact record here?"; what a bad
//! record means (torn tail to cut, corruption to report, a write still in
//! progress) is the caller's call, because it depends on where the segment
//! sits and whether a server is running.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::format::{
    decode_seal, FileHeader, HeaderError, Kind, RecordHeader, Seal, FILE_HEADER_LEN,
    MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN, SEAL_RECORD_LEN,
};

/// Payload bytes checked per read when a record is verified without being kept.
const CHUNK: usize = 64 * 1024;

/// An open segment file with a valid header.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    file: File,
    path: PathBuf,
    /// File length when last looked at; [`SegmentFile::refresh_len`] updates it.
    len: u64,
    /// The decoded header.
    pub(crate) header: FileHeader,
}

/// Why a segment could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The header is missing or unreadable; `len` is the file length.
    Header(HeaderError, u64),
    /// The file could not be opened or read.
    Spool(SpoolError),
}

/// One step of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The walk reached the end of the file exactly at a record boundary.
    End,
    /// An intact record (its CRC checked unless the walk skips payloads).
    Record(RecordMeta),
    /// No intact record starts here.
    Bad(&'static str),
}

/// Where a record is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    /// Offset of its header.
    pub(crate) offset: u64,
    /// Its decoded header.
    pub(crate) header: RecordHeader,
}

impl RecordMeta {
    /// Offset just past the record.
    pub(crate) fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64 + u64::from(self.header.len)
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
        let mut b = [0u8; FILE_HEADER_LEN];
        let n = (len as usize).min(FILE_HEADER_LEN);
        file.read_exact_at(&mut b[..n], 0)
            .map_err(|e| OpenError::Spool(SpoolError::io("reading header of", path, e)))?;
        let header = FileHeader::decode(&b[..n]).map_err(|e| OpenError::Header(e, len))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
            header,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file length as last seen.
    pub(crate) fn len(&self) -> u64 {
        self.len
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
        Ok(self.len)
    }

    /// Sets the remembered length after the caller truncated the file.
    pub(crate) fn set_len_after_truncate(&mut self, len: u64) {
        self.len = len;
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> Result<(), SpoolError> {
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
        let Some(pos) = self.len.checked_sub(SEAL_RECORD_LEN as u64) else {
            return Ok(None);
        };
        if pos < FILE_HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut b = [0u8; SEAL_RECORD_LEN];
        self.read_at(&mut b, pos)?;
        let mut hb = [0u8; RECORD_HEADER_LEN];
        hb.copy_from_slice(&b[..RECORD_HEADER_LEN]);
        let Some(h) = RecordHeader::decode(&hb) else {
            return Ok(None);
        };
        if h.kind != Kind::Seal
            || h.len as usize != SEAL_RECORD_LEN - RECORD_HEADER_LEN
            || crc32c::crc32c_append(RecordHeader::crc_start(&hb), &b[RECORD_HEADER_LEN..]) != h.crc
        {
            return Ok(None);
        }
        Ok(decode_seal(&b[RECORD_HEADER_LEN..]).filter(|s| s.segment_len == self.len))
    }

    /// Looks for an intact record at `pos`, treating `self.len()` as the end.
    pub(crate) fn next(&self, pos: u64, payload: Payload<'_>) -> Result<Step, SpoolError> {
        if pos == self.len {
            return Ok(Step::End);
        }
        if pos + RECORD_HEADER_LEN as u64 > self.len {
            return Ok(Step::Bad("file ends inside a record header"));
        }
        let mut hb = [0u8; RECORD_HEADER_LEN];
        self.read_at(&mut hb, pos)?;
        let Some(header) = RecordHeader::decode(&hb) else {
            return Ok(Step::Bad(
                "not a record header (unknown kind or reserved bits set)",
            ));
        };
        if header.len > MAX_RECORD_PAYLOAD {
            return Ok(Step::Bad("record length over the format's limit"));
        }
        let meta = RecordMeta {
            offset: pos,
            header,
        };
        if meta.end() > self.len {
            return Ok(Step::Bad("file ends inside a record"));
        }
        let start = pos + RECORD_HEADER_LEN as u64;
        let crc = RecordHeader::crc_start(&hb);
        let crc = match payload {
            Payload::Skip => return Ok(Step::Record(meta)),
            Payload::Load(buf) => {
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
        if crc != header.crc {
            return Ok(Step::Bad("CRC32C mismatch"));
        }
        Ok(Step::Record(meta))
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
    use super::format::{parse_segment_file_name, SegmentName};
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
            SegmentName::Foreign => foreign.push(path),
        }
    }
    segs.sort_unstable_by_key(|(seq, _)| *seq);
    Ok((segs, foreign))
}
