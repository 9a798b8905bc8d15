//! Start-up recovery of one shard directory: find the segments, check them,
//! cut a torn tail, and work out where appending resumes and which queue
//! sequence numbers are already taken.
//!
//! Only the newest segment can hold a torn write when the server ran with
//! `durability = fsync`: a segment is sealed and fdatasync'd before the next
//! one is created. So older segments are checked by their seal alone (a read
//! of the last 36 bytes) and scanned in full only when the seal is missing
//! (a crash under `durability = none`, or a segment abandoned after an I/O
//! error). The newest is always scanned, every CRC checked.
//!
//! A record that is not whole and intact ends the segment: it and everything
//! after it is cut (logged with file and offset). That never loses an
//! acknowledged message: a message is acknowledged only after the fdatasync
//! that covers its last byte, and a torn write can only hit bytes that no
//! fdatasync had covered yet. Cutting at the first bad record also means no
//! uncommitted message can surface: a streamed message's commit record comes
//! after all of its fragments.
//!
//! Recovery reads with blocking `std::fs` calls and yields to the executor
//! between records; it runs before the shard accepts connections.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::format::{
    decode_seal, HeaderError, Kind, FILE_HEADER_LEN, RECORD_HEADER_LEN, SEAL_PAYLOAD_LEN,
};
use super::scan::{list_segments, OpenError, Payload, SegmentFile, Step};

/// What recovery found and did in one shard directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Segments scanned record by record (the newest, and any unsealed older one).
    pub scanned_segments: usize,
    /// Intact records in the scanned segments.
    pub scanned_records: u64,
    /// Torn or corrupt tails that were cut.
    pub cuts: Vec<TailCut>,
    /// Segment files that never got a header (a crash or failure while
    /// creating them) and were removed; they held no records.
    pub removed: Vec<PathBuf>,
    /// Files in the shard directory that are not segments; left alone.
    pub foreign: Vec<PathBuf>,
}

/// One cut tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file.
    pub path: PathBuf,
    /// Where the first bad record began; the file now ends here.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// Where the shard resumes.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The newest segment, if it can take more appends: (sequence, length).
    pub(crate) append_to: Option<(u64, u64)>,
    /// The sequence number for the next new segment.
    pub(crate) next_segment_seq: u64,
    /// Every queue sequence number found on disk is below this.
    pub(crate) id_floor: u64,
    pub(crate) report: RecoveryReport,
}

fn log(shard: u32, msg: std::fmt::Arguments<'_>) {
    crate::warn!("spool shard={shard} recovery: {msg}");
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("syncing directory", dir, e))
}

/// Recovers shard `shard` in `dir` (which must exist).
///
/// # Errors
/// I/O errors, a segment of another format version, or damage recovery
/// must not guess about: a header that is not ours on a file longer than a
/// header, or a segment whose header names another shard or sequence.
pub(crate) async fn recover_shard(dir: &Path, shard: u32) -> Result<Recovered, SpoolError> {
    let (segs, foreign) = list_segments(dir)?;
    let mut report = RecoveryReport {
        segments: segs.len(),
        foreign,
        ..Default::default()
    };
    for f in &report.foreign {
        log(
            shard,
            format_args!("ignoring {} (not a segment of this format)", f.display()),
        );
    }
    let next_segment_seq = segs.last().map_or(1, |(seq, _)| seq.saturating_add(1));
    let mut id_floor = 0u64;
    // (sequence, length, sealed) of the newest usable segment so far.
    let mut newest: Option<(u64, u64, bool)> = None;
    let n = segs.len();
    for (i, (seq, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == n;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| SpoolError::io("opening segment", path, e))?;
        let mut seg = match SegmentFile::from_file(file, path) {
            Ok(s) => s,
            Err(OpenError::Header(HeaderError::Version(found), _)) => {
                return Err(SpoolError::UnsupportedVersion {
                    path: path.clone(),
                    found,
                })
            }
            // No room for a record: a creation that never completed.
            Err(OpenError::Header(HeaderError::Torn | HeaderError::BadCrc, len))
                if len <= FILE_HEADER_LEN as u64 =>
            {
                std::fs::remove_file(path).map_err(|e| SpoolError::io("removing", path, e))?;
                sync_dir(dir)?;
                log(
                    shard,
                    format_args!("removed {} (created, never written)", path.display()),
                );
                report.removed.push(path.clone());
                continue;
            }
            Err(OpenError::Header(e, _)) => {
                return Err(SpoolError::corrupt(
                    path,
                    0,
                    format!("bad segment header ({e:?}); move the file aside to start"),
                ))
            }
            Err(OpenError::Spool(e)) => return Err(e),
        };
        if seg.header.shard != shard || seg.header.segment != *seq {
            return Err(SpoolError::corrupt(
                path,
                0,
                format!(
                    "header says shard {} segment {}, but the file is shard {shard} segment {seq}",
                    seg.header.shard, seg.header.segment
                ),
            ));
        }
        id_floor = id_floor.max(seg.header.id_floor);
        if !is_last {
            if let Some(seal) = seg.read_seal()? {
                id_floor = id_floor.max(seal.next_id_seq);
                newest = Some((*seq, seg.len(), true));
                continue;
            }
        }
        report.scanned_segments += 1;
        let mut pos = FILE_HEADER_LEN as u64;
        let mut sealed = false;
        let cut: Option<(u64, &'static str)> = loop {
            glommio::yield_if_needed().await;
            match seg.next(pos, Payload::Verify)? {
                Step::End => break None,
                Step::Bad(reason) => break Some((pos, reason)),
                Step::Record(m) if m.header.kind == Kind::Seal => {
                    let mut p = [0u8; SEAL_PAYLOAD_LEN];
                    seg.read_exact_at(&mut p, m.offset + RECORD_HEADER_LEN as u64)?;
                    match decode_seal(&p) {
                        Some(s) if s.segment_len == m.end() && m.end() == seg.len() => {
                            id_floor = id_floor.max(s.next_id_seq);
                            report.scanned_records += 1;
                            sealed = true;
                            break None;
                        }
                        Some(s) if s.segment_len == m.end() => {
                            // We never append after a seal: what follows is not ours.
                            id_floor = id_floor.max(s.next_id_seq);
                            report.scanned_records += 1;
                            sealed = true;
                            break Some((m.end(), "bytes after the seal record"));
                        }
                        _ => break Some((pos, "seal record does not match its segment")),
                    }
                }
                Step::Record(m) => {
                    id_floor = id_floor.max(m.header.id_seq.saturating_add(1));
                    report.scanned_records += 1;
                    pos = m.end();
                }
            }
        };
        let mut len = seg.len();
        if let Some((at, reason)) = cut {
            let bytes = len - at;
            seg.file()
                .set_len(at)
                .and_then(|()| seg.file().sync_all())
                .map_err(|e| SpoolError::io("cutting torn tail of", path, e))?;
            seg.set_len_after_truncate(at);
            log(
                shard,
                format_args!(
                    "{}: cut torn tail at offset {at} ({bytes} bytes): {reason}",
                    path.display()
                ),
            );
            report.cuts.push(TailCut {
                path: path.clone(),
                offset: at,
                bytes,
                reason: reason.to_owned(),
            });
            len = at;
        }
        newest = Some((*seq, len, sealed));
    }
    let append_to = match newest {
        Some((seq, len, false)) => Some((seq, len)),
        _ => None,
    };
    Ok(Recovered {
        append_to,
        next_segment_seq,
        id_floor,
        report,
    })
}
