//! Start-up recovery of one shard directory: find the segments, check them,
//! cut a torn tail, step over damage in the middle, and work out where
//! appending resumes and which queue sequence numbers are already taken.
//!
//! Only the newest segment can hold a torn write when the server ran with
//! `durability = fsync`: a segment is sealed and fdatasync'd before the next
//! one is created. So older segments are checked by their seal alone (a read
//! of the last record) and scanned in full only when the seal is missing
//! (a crash under `durability = none`, or a segment abandoned after an I/O
//! error). The newest is always scanned, every CRC checked. Damage inside a
//! sealed segment is left to readers, which step over it.
//!
//! Where no intact record starts, what follows decides (see
//! [`Damage`](super::scan::Damage)): zeros to the end of the file are the
//! end of data and are cut; a torn tail (nothing intact of this segment
//! after it) is copied to a quarantine file and cut; damage in the middle
//! (an intact record with this segment's nonce follows) is copied to a
//! quarantine file and then overwritten by a hole record of the same
//! length (so readers see a sound segment), and the scan goes on at the
//! next intact record,
//! so one bad sector never takes the acknowledged mail after it along. Each
//! damaged range is logged on one line. A Commit found after such damage
//! whose fragment went with it (a power loss wrote back the Commit's page
//! but not the fragment's: neither was synced, so the message was never
//! acknowledged) can never be read: it is quarantined and replaced by a
//! hole too, rather than listed. Version 1 segments carry no nonce
//! and cannot be resynchronised safely: there any damage ends the segment,
//! as before, but is quarantined before the cut.
//!
//! Cutting a torn tail never loses an acknowledged message: a message is
//! acknowledged only after the fdatasync that covers its last byte, and a
//! torn write can only hit bytes that no fdatasync had covered yet. Records
//! after damage in the middle may include ones never acknowledged (a crash
//! while a batch was half on disk): those surface, and the client that got
//! no `250` sends them again — a duplicate, never a loss. A message that
//! *was* refused after a failed write cannot surface: the writer cut it
//! back durably or wrote an end mark before it.
//!
//! Recovery reads with blocking `std::fs` calls and yields to the executor
//! between records; it runs before the shard accepts connections.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::format::{
    decode_payload, decode_seal, encode_hole, quarantine_file_name, FragRef, HeaderError, Kind,
    RecordHeader, FORMAT_VERSION, RECORD_HEADER_LEN, SEAL_PAYLOAD_LEN,
};
use super::scan::{list_segments, Damage, OpenError, Payload, RecordMeta, SegmentFile, Step};

/// What recovery found and did in one shard directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Segments scanned record by record (the newest, and any unsealed older one).
    pub scanned_segments: usize,
    /// Intact records in the scanned segments.
    pub scanned_records: u64,
    /// Torn or corrupt tails that were cut (their bytes kept in quarantine).
    pub cuts: Vec<TailCut>,
    /// Damaged ranges in the middle of a segment: copied to quarantine,
    /// then replaced by a hole record; the records after them are kept.
    pub damaged: Vec<TailCut>,
    /// Commit records whose body is gone: a fragment they list was lost
    /// to damage (typically unsynced bytes a power loss tore, so the
    /// message was never acknowledged). Copied to quarantine, then replaced
    /// by a hole record, so no reader lists a message it cannot read.
    pub lost_bodies: Vec<TailCut>,
    /// Segment files that never got a header (a crash or failure while
    /// creating them) and were removed; they held no records.
    pub removed: Vec<PathBuf>,
    /// Files in the shard directory that are not segments; left alone.
    pub foreign: Vec<PathBuf>,
}

/// One damaged range: a cut tail, or damage in the middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file.
    pub path: PathBuf,
    /// Where the damage begins (for a cut: the file now ends here).
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// What was wrong at `offset`.
    pub reason: String,
    /// The file holding a copy of the bytes; `None` when they were all
    /// zero (the end of data, nothing to keep).
    pub quarantine: Option<PathBuf>,
}

/// Where the shard resumes.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The newest segment, if it can take more appends: (sequence, length, nonce).
    pub(crate) append_to: Option<(u64, u64, u64)>,
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

/// Copies bytes `from .. from + len` of `seg` into a quarantine file beside
/// it, fsyncs the file and the directory, and returns its path. A file of
/// that name and length already there (the same damage found by an
/// earlier start) is kept as it is.
fn quarantine(
    dir: &Path,
    shard: u32,
    seg: &SegmentFile,
    from: u64,
    len: u64,
) -> Result<PathBuf, SpoolError> {
    let path = dir.join(quarantine_file_name(shard, seg.header.segment, from, len));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == len) {
        return Ok(path);
    }
    let tmp = path.with_extension("tmp");
    let werr = |e| SpoolError::io("writing quarantine file", &tmp, e);
    let mut out = File::create(&tmp).map_err(werr)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        seg.read_exact_at(&mut buf[..n], from + at)?;
        out.write_all(&buf[..n]).map_err(werr)?;
        at += n as u64;
    }
    out.sync_all().map_err(werr)?;
    drop(out);
    std::fs::rename(&tmp, &path).map_err(|e| SpoolError::io("renaming", &tmp, e))?;
    sync_dir(dir)?;
    Ok(path)
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
    // (sequence, length, closed, nonce) of the newest usable segment so far.
    let mut newest: Option<(u64, u64, bool, u64)> = None;
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
            Err(OpenError::Header(HeaderError::Torn | HeaderError::BadCrc, true)) => {
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
                newest = Some((*seq, seg.len(), true, seg.header.nonce));
                continue;
            }
        }
        report.scanned_segments += 1;
        let scan = scan_segment(&mut seg, &segs, dir, shard, &mut report, &mut id_floor).await?;
        // Appending goes on only in a version 2 segment with no seal or end mark.
        let closed = scan.closed || seg.version() != FORMAT_VERSION;
        newest = Some((*seq, seg.len(), closed, seg.header.nonce));
    }
    let append_to = match newest {
        Some((seq, len, false, nonce)) => Some((seq, len, nonce)),
        _ => None,
    };
    Ok(Recovered {
        append_to,
        next_segment_seq,
        id_floor,
        report,
    })
}

/// What scanning one segment found.
struct Scanned {
    /// It ends with a seal or an end mark: no more appends.
    closed: bool,
}

/// Walks every record of `seg`, checking every CRC; cuts a torn tail and
/// steps over damage in the middle (both quarantined first), and replaces
/// any Commit whose fragments are gone by a hole; raises `id_floor` past
/// every record's queue sequence. `segs`: the shard's segments, where
/// fragments in other segments are looked up.
async fn scan_segment(
    seg: &mut SegmentFile,
    segs: &[(u64, PathBuf)],
    dir: &Path,
    shard: u32,
    report: &mut RecoveryReport,
    id_floor: &mut u64,
) -> Result<Scanned, SpoolError> {
    let mut pos = seg.data_start();
    let mut closed = false;
    // (offset, reason) of a tail to cut.
    let cut: Option<(u64, &'static str)> = loop {
        glommio::yield_if_needed().await;
        match seg.next(pos, Payload::Verify)? {
            Step::End => break None,
            Step::EndMark if seg.version() == FORMAT_VERSION => {
                // The writer could not cut a failed write back: what follows
                // was answered as failed. Left as it is; no more appends.
                closed = true;
                break None;
            }
            Step::EndMark => break Some((pos, "zeroed record header (a failed write's mark)")),
            Step::Bad(reason) => match seg.classify(pos)? {
                Damage::Middle(next) => {
                    let bytes = next - pos;
                    let q = quarantine(dir, shard, seg, pos, bytes)?;
                    // With the bytes safe in quarantine, a hole record takes
                    // their place, so readers and `verify` see a sound
                    // segment again. Too short for a header (cannot happen
                    // with records of 28 bytes or more): left as it is.
                    // A range longer than a record can be (only with
                    // segments over 1 GiB) stays too: readers step over it.
                    let hole = usize::try_from(bytes)
                        .ok()
                        .filter(|&b| b >= RECORD_HEADER_LEN)
                        .and_then(|b| encode_hole(b, seg.header.nonce).ok());
                    let healed = if let Some(hole) = hole {
                        seg.file()
                            .write_all_at(&hole, pos)
                            .and_then(|()| seg.file().sync_data())
                            .map_err(|e| {
                                SpoolError::io("writing a hole record into", seg.path(), e)
                            })?;
                        "replaced by a hole record"
                    } else {
                        "left in place"
                    };
                    log(
                        shard,
                        format_args!(
                            "{}: damaged range at offset {pos} ({bytes} bytes): {reason}; \
                             kept in {}, {healed}, records resume at offset {next}",
                            seg.path().display(),
                            q.display()
                        ),
                    );
                    report.damaged.push(TailCut {
                        path: seg.path().to_owned(),
                        offset: pos,
                        bytes,
                        reason: reason.to_owned(),
                        quarantine: Some(q),
                    });
                    pos = next;
                }
                Damage::Zeros => break Some((pos, "zeros after the last record")),
                Damage::Tail => break Some((pos, reason)),
            },
            // A seal of another length is no seal of ours (a writer bug or
            // crafted bytes): never read past its payload, cut it like a
            // seal that does not match.
            Step::Record(m)
                if m.header.kind == Kind::Seal && m.header.len as usize != SEAL_PAYLOAD_LEN =>
            {
                break Some((pos, "seal record does not match its segment"));
            }
            Step::Record(m) if m.header.kind == Kind::Seal => {
                let mut p = [0u8; SEAL_PAYLOAD_LEN];
                seg.read_exact_at(&mut p, m.payload())?;
                match decode_seal(&p) {
                    Some(s) if s.segment_len == m.end() => {
                        *id_floor = (*id_floor).max(s.next_id_seq);
                        report.scanned_records += 1;
                        closed = true;
                        if m.end() == seg.len() {
                            break None;
                        }
                        // We never append after a seal: what follows is not ours.
                        break Some((m.end(), "bytes after the seal record"));
                    }
                    _ => break Some((pos, "seal record does not match its segment")),
                }
            }
            Step::Record(m) => {
                *id_floor = (*id_floor).max(m.header.id_seq.saturating_add(1));
                report.scanned_records += 1;
                if m.header.kind == Kind::Commit && seg.version() == FORMAT_VERSION {
                    if let Some(why) = lost_fragment(seg, segs, &m)? {
                        drop_commit(seg, dir, shard, report, &m, &why)?;
                    }
                }
                pos = m.end();
            }
        }
    };
    if let Some((at, reason)) = cut {
        let len = seg.len();
        let bytes = len - at;
        let quarantine = if seg.all_zero(at, len)? {
            None
        } else {
            Some(quarantine(dir, shard, seg, at, bytes)?)
        };
        seg.file()
            .set_len(at)
            .and_then(|()| seg.file().sync_all())
            .map_err(|e| SpoolError::io("cutting torn tail of", seg.path(), e))?;
        seg.set_len_after_truncate(at);
        let kept = match &quarantine {
            Some(q) => format!("kept in {}", q.display()),
            None => "all zero".to_owned(),
        };
        log(
            shard,
            format_args!(
                "{}: cut torn tail at offset {at} ({bytes} bytes, {kept}): {reason}",
                seg.path().display()
            ),
        );
        report.cuts.push(TailCut {
            path: seg.path().to_owned(),
            offset: at,
            bytes,
            reason: reason.to_owned(),
            quarantine,
        });
    }
    Ok(Scanned { closed })
}

/// Why the Commit record `m` of `seg` cannot be read: the first fragment
/// it lists that demonstrably is not on disk (the place it names lies past
/// its segment's end, or holds no fragment record of this message and
/// length, e.g. the hole that replaced a damaged range), or `None`. A
/// fragment in a segment that cannot be opened proves nothing and is
/// left to readers and `verify`, as is a payload that does not decode.
///
/// A Commit is written after its fragments, so in the scanned, newest
/// segment it can outlive them only when a power loss wrote back the page
/// holding the Commit but not a page of a fragment before it: bytes no
/// fdatasync had covered, so the message was never acknowledged.
fn lost_fragment(
    seg: &SegmentFile,
    segs: &[(u64, PathBuf)],
    m: &RecordMeta,
) -> Result<Option<String>, SpoolError> {
    let mut payload = vec![0u8; m.header.len as usize];
    seg.read_exact_at(&mut payload, m.payload())?;
    let Ok(msg) = decode_payload(seg.version(), &payload) else {
        return Ok(None);
    };
    let mut other: Option<SegmentFile> = None;
    for f in &msg.frags {
        let target = if f.segment == seg.header.segment {
            seg
        } else {
            if other.as_ref().is_none_or(|o| o.header.segment != f.segment) {
                other = segs
                    .binary_search_by_key(&f.segment, |(s, _)| *s)
                    .ok()
                    .and_then(|i| SegmentFile::open(&segs[i].1).ok());
            }
            match other.as_ref() {
                Some(o) => o,
                None => continue,
            }
        };
        if let Some(why) = fragment_missing(target, f, m.header.id_seq)? {
            return Ok(Some(format!(
                "its fragment at segment {} offset {}: {why}",
                f.segment, f.offset
            )));
        }
    }
    Ok(None)
}

/// Whether fragment reference `f` of message `id_seq` misses its record in `seg`.
fn fragment_missing(
    seg: &SegmentFile,
    f: &FragRef,
    id_seq: u64,
) -> Result<Option<&'static str>, SpoolError> {
    let rh = seg.header.record_header_len();
    let end = f
        .offset
        .checked_add(rh as u64)
        .and_then(|e| e.checked_add(u64::from(f.len)));
    if end.is_none_or(|e| e > seg.len()) {
        return Ok(Some("lies past the end of its segment"));
    }
    let mut hb = [0u8; RECORD_HEADER_LEN];
    seg.read_exact_at(&mut hb[..rh], f.offset)?;
    let found = RecordHeader::decode(&hb[..rh], seg.version()).is_some_and(|h| {
        h.kind == Kind::Fragment
            && h.id_seq == id_seq
            && h.len == f.len
            && h.nonce == seg.header.nonce
    });
    Ok((!found).then_some("no fragment record of the message there"))
}

/// Takes a Commit whose body is gone out of the segment: copies it to
/// quarantine, replaces it by a hole record of its length, and logs it.
/// Listed, it would be a message no reader can read and `verify` would
/// fail on for good; its client, never acknowledged, sends it again.
fn drop_commit(
    seg: &mut SegmentFile,
    dir: &Path,
    shard: u32,
    report: &mut RecoveryReport,
    m: &RecordMeta,
    why: &str,
) -> Result<(), SpoolError> {
    let (pos, bytes) = (m.offset, m.end() - m.offset);
    let q = quarantine(dir, shard, seg, pos, bytes)?;
    // A record is at most a record header plus MAX_RECORD_PAYLOAD: a hole fits.
    let hole = encode_hole(bytes as usize, seg.header.nonce)?;
    seg.file()
        .write_all_at(&hole, pos)
        .and_then(|()| seg.file().sync_data())
        .map_err(|e| SpoolError::io("writing a hole record into", seg.path(), e))?;
    let id = super::queue_id::QueueId::new(shard, m.header.id_seq)
        .map_or_else(|_| format!("#{}", m.header.id_seq), |id| id.to_string());
    log(
        shard,
        format_args!(
            "{}: commit of message {id} at offset {pos} ({bytes} bytes) cannot be read, \
             {why} (lost with damage; a message whose fragment held unsynced bytes was \
             never acknowledged); kept in {}, replaced by a hole record",
            seg.path().display(),
            q.display()
        ),
    );
    report.lost_bodies.push(TailCut {
        path: seg.path().to_owned(),
        offset: pos,
        bytes,
        reason: format!("commit of message {id}: {why}"),
        quarantine: Some(q),
    });
    Ok(())
}
