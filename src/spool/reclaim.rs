//! Reclaiming spool space behind the consumers, their lag, and the
//! backpressure flag. Blocking `std::fs`: it runs on a thread of its own in
//! the server ([`Reclaimer::spawn`]) or in `ringmx spool gc`, never on a
//! shard thread.
//!
//! A sealed segment of a shard is deleted when all of these hold:
//!
//! * at least one consumer is registered (`<spool>/consumers/<name>/`):
//!   with none, nothing ships, so nothing is deleted;
//! * every consumer's position in the shard lies in a later segment (a
//!   consumer without a checkpoint is at the very start; a damaged
//!   checkpoint stops all deletion in the shard until it is repaired);
//! * no Commit record that stays lists a fragment in it or an earlier
//!   segment (a streamed message's fragments can precede its commit by
//!   several segments): unshipped messages keep their bodies, and shipped
//!   ones still in the spool stay readable (`verify` stays clean);
//! * no message still in flight on a connection has a fragment in it or an
//!   earlier segment (the shard's in-flight pin, [`crate::spool::NO_PIN`]
//!   when none);
//! * it is not the shard's newest segment (that carries the queue-id
//!   sequence across restarts), and it ends with a valid seal (a segment
//!   abandoned unsealed after a write error stays; later ones still go);
//! * it was sealed (last modified) at least `spool.retention` ago.
//!
//! Commit records are found incrementally: each shard remembers how far it
//! scanned and the commits it saw whose fragments lie in older segments,
//! and only reads what was appended since (the first pass reads the
//! record headers of the whole shard once, and the payloads of its Commit
//! records only).
//!
//! Order of reading, which makes a pass safe against a running server: list
//! the segments (newest `N`), then read the pins, then the checkpoints, then
//! scan. A fragment written after the listing lands in `N` or later, which
//! is never deleted; one written before it was pinned before it was
//! written, so the pin read sees it unless its message already committed,
//! and then the scan (which starts after the checkpoints were read) sees the
//! Commit record unless a consumer has already shipped it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use super::error::SpoolError;
use super::format::{decode_payload, shard_dir_name, Kind, Location, MessageView};
use super::scan::{list_segments, Damage, OpenError, Payload, SegmentFile, Step};
use super::segment::{available_bytes, NO_PIN};
use crate::config::SpoolConfig;
use crate::log::Level;
use crate::outlet::checkpoint;

/// Where a consumer stands in one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerPosition {
    /// The consumer's name.
    pub name: String,
    /// Its position (the start of the shard when it has no checkpoint
    /// there), or why its checkpoint cannot be read.
    pub position: Result<Location, String>,
}

/// The consumers of the spool at `root` and their positions in `shard`.
///
/// # Errors
/// The consumers directory cannot be listed.
pub fn consumer_positions(root: &Path, shard: u32) -> Result<Vec<ConsumerPosition>, SpoolError> {
    let consumers = checkpoint::list(root).map_err(|e| {
        let dir = root.join(checkpoint::CONSUMERS_DIR);
        SpoolError::io(
            "listing consumers in",
            dir,
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(consumers
        .iter()
        .map(|c| ConsumerPosition {
            name: c.name().to_owned(),
            position: match c.read(shard) {
                Ok(Some(cp)) => Ok(cp.position),
                Ok(None) => Ok(Location::default()),
                Err(e) => Err(e.to_string()),
            },
        })
        .collect())
}

/// What one committed message contributes to a walk.
struct Seen<'a> {
    at: Location,
    view: &'a MessageView<'a>,
}

/// Walks the records of the shard in `dir` from `from` to the end of its
/// data, calling `visit` for each Commit record (and each Message record
/// too when `messages`). Damage is stepped over as readers do. Returns the
/// position where the walk stopped: the end of the newest segment's intact
/// records (a write in progress is looked at again next time).
fn walk(
    dir: &Path,
    from: Location,
    messages: bool,
    mut visit: impl FnMut(Seen<'_>),
) -> Result<Location, SpoolError> {
    let (segs, _) = list_segments(dir)?;
    let Some(&(newest, _)) = segs.last() else {
        return Ok(from);
    };
    let mut stop = from;
    let mut buf = Vec::new();
    for (seq, path) in segs.iter().filter(|(s, _)| *s >= from.segment) {
        let seq = *seq;
        let seg = match SegmentFile::open(path) {
            Ok(s) => s,
            // Being created right now: nothing in it yet.
            Err(OpenError::Header(_, true)) => {
                stop = Location {
                    segment: seq,
                    offset: 0,
                };
                continue;
            }
            // Deleted meanwhile (`spool gc`): nothing in it can be needed.
            Err(e) if e.is_gone() => continue,
            // Unreadable for now (EMFILE, EIO): stepping over it would hide
            // its Commit records from every later pass; try again next time.
            Err(OpenError::Spool(e)) => return Err(e),
            // A damaged header: no reader reads its records either.
            Err(OpenError::Header(..)) => continue,
        };
        let mut pos = if seq == from.segment {
            from.offset.max(seg.data_start())
        } else {
            seg.data_start()
        };
        let mut prev = None;
        loop {
            match seg.next(pos, Payload::Skip)? {
                Step::End | Step::EndMark => break,
                Step::Bad(_) => match seg.damage_after_skip(prev, pos)? {
                    // Written since it read as zeros (a server writing zeros
                    // ahead of its records): read it again.
                    (start, Damage::Middle(_)) if start == pos && seg.intact_at(pos)? => {}
                    (_, Damage::Middle(next)) => {
                        prev = None;
                        pos = next;
                    }
                    (_, Damage::Zeros | Damage::Tail) => break,
                },
                Step::Record(m) => {
                    let k = m.header.kind;
                    if k == Kind::Commit || (messages && k == Kind::Message) {
                        if let Step::Record(_) = seg.next(pos, Payload::Load(&mut buf))? {
                            if let Ok(view) = decode_payload(seg.version(), &buf) {
                                visit(Seen {
                                    at: Location {
                                        segment: seq,
                                        offset: pos,
                                    },
                                    view: &view,
                                });
                            }
                        } else if let Damage::Middle(next) = seg.classify(pos)? {
                            if seg.intact_at(pos)? {
                                // Written meanwhile (see above): read it again.
                                continue;
                            }
                            // Not intact: no reader ships it. Step over it.
                            prev = None;
                            pos = next;
                            continue;
                        } else {
                            break;
                        }
                    }
                    prev = Some(pos);
                    pos = m.end();
                }
            }
        }
        stop = Location {
            segment: seq,
            offset: pos,
        };
        if seq == newest {
            break;
        }
    }
    Ok(stop)
}

/// What a shard's consumers have not shipped yet (`ringmx spool stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Committed messages at or after the position.
    pub messages: u64,
    /// Their body bytes.
    pub body_bytes: u64,
    /// The earliest arrival among them, unix seconds.
    pub oldest_arrival: Option<i64>,
}

/// The messages of `shard` at or after `position`: what a consumer there
/// has still to ship.
///
/// # Errors
/// The shard directory cannot be listed or a segment read.
pub fn lag(root: &Path, shard: u32, position: Location) -> Result<Lag, SpoolError> {
    let dir = root.join(shard_dir_name(shard));
    let mut lag = Lag::default();
    if !dir.is_dir() {
        return Ok(lag);
    }
    walk(&dir, position, true, |s| {
        lag.messages += 1;
        lag.body_bytes += s.view.body_len;
        let t = s.view.arrival_unix;
        lag.oldest_arrival = Some(lag.oldest_arrival.map_or(t, |o| o.min(t)));
    })?;
    Ok(lag)
}

/// What one pass decided for one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardPlan {
    /// The shard.
    pub shard: u32,
    /// Segments to delete: sequence, path, bytes.
    pub delete: Vec<(u64, PathBuf, u64)>,
    /// Segment bytes at or after the slowest consumer's position (0 with no
    /// consumer).
    pub lag_bytes: u64,
    /// Why nothing older may go, when something holds deletion back that
    /// the operator may want to know about (no consumer, a damaged checkpoint).
    pub held: Option<String>,
}

/// What a shard remembers between passes.
#[derive(Debug, Default)]
struct ShardState {
    /// Records before this were scanned (`None`: nothing yet).
    scanned_to: Option<Location>,
    /// Commit records still in the spool whose oldest fragment lies in an
    /// older segment: commit position → that segment.
    cross: BTreeMap<Location, u64>,
}

/// The shared state between a running server's shards and its reclaimer.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Per shard, the oldest segment holding a fragment of a message in
    /// flight ([`NO_PIN`]: none); see `ShardSpool::publish_pins_to`.
    pub pins: Vec<Arc<AtomicU64>>,
    /// Set while the spool is above a high mark (consumer lag or free
    /// space) until it is below the low mark again: refuse new mail at MAIL.
    pub pressure: Arc<AtomicBool>,
}

impl Shared {
    /// State for `shards` shards: nothing pinned, no pressure.
    pub fn new(shards: u32) -> Self {
        Self {
            pins: (0..shards)
                .map(|_| Arc::new(AtomicU64::new(NO_PIN)))
                .collect(),
            pressure: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Space reclamation and backpressure for one spool.
#[derive(Debug)]
pub struct Reclaimer {
    root: PathBuf,
    cfg: SpoolConfig,
    shared: Shared,
    states: Vec<ShardState>,
    /// Hysteresis: above the lag high mark, until below the low mark.
    lag_over: bool,
    /// Hysteresis: below `min_free_bytes`, until above the resume mark.
    free_under: bool,
    /// The lag the last successful pass found: a failed pass keeps it (it
    /// says nothing about the lag, and 0 would lift backpressure).
    last_lag: u64,
    /// What holds deletion back (or the error), as last logged: each
    /// reason is said once, not every round.
    told: Option<String>,
}

/// What [`Reclaimer::pass`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Per shard.
    pub shards: Vec<ShardPlan>,
    /// Segments deleted (0 on a dry run).
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// The sum of the shards' lag, bytes.
    pub lag_bytes: u64,
}

impl Reclaimer {
    /// A reclaimer for the spool at `root`: the shards `shared` has pins
    /// for (a running server's), and any other shard found on disk
    /// (nothing writes those, so nothing is in flight there).
    pub fn new(root: &Path, cfg: &SpoolConfig, shared: Shared) -> Self {
        Self {
            root: root.to_owned(),
            cfg: cfg.clone(),
            states: shared.pins.iter().map(|_| ShardState::default()).collect(),
            shared,
            lag_over: false,
            free_under: false,
            last_lag: 0,
            told: None,
        }
    }

    /// One pass over every shard: decides what may go and, unless
    /// `dry_run`, deletes it (then fsyncs the shard directory).
    ///
    /// # Errors
    /// Listing or reading the spool failing; deleting a segment failing.
    pub fn pass(&mut self, dry_run: bool) -> Result<PassReport, SpoolError> {
        let mut report = PassReport::default();
        // Shards on disk beyond this server's (a run with more cores left
        // them): nothing writes them, so nothing pins them.
        let on_disk = super::SpoolReader::open(&self.root)?
            .shards()?
            .last()
            .map_or(0, |s| *s as usize + 1);
        while self.states.len() < on_disk {
            self.states.push(ShardState::default());
        }
        for shard in 0..self.states.len() as u32 {
            let plan = self.plan_shard(shard)?;
            report.lag_bytes += plan.lag_bytes;
            if !dry_run && !plan.delete.is_empty() {
                let dir = self.root.join(shard_dir_name(shard));
                let mut bytes = 0;
                for (_, path, len) in &plan.delete {
                    match std::fs::remove_file(path) {
                        Ok(()) => {
                            bytes += len;
                            report.deleted += 1;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(SpoolError::io("deleting", path, e)),
                    }
                }
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| SpoolError::io("syncing directory", &dir, e))?;
                report.deleted_bytes += bytes;
                crate::info!(
                    "spool shard={shard}: reclaimed {} segments, {bytes} bytes (oldest {}, \
                     newest {}), every consumer had passed them",
                    plan.delete.len(),
                    plan.delete[0].0,
                    plan.delete[plan.delete.len() - 1].0
                );
            }
            report.shards.push(plan);
        }
        Ok(report)
    }

    fn plan_shard(&mut self, shard: u32) -> Result<ShardPlan, SpoolError> {
        let dir = self.root.join(shard_dir_name(shard));
        let mut plan = ShardPlan {
            shard,
            ..ShardPlan::default()
        };
        if !dir.is_dir() {
            return Ok(plan);
        }
        // 1. The segments now; the newest (and the newest sealed) is never
        // deleted.
        let (segs, _) = list_segments(&dir)?;
        let Some(&(newest, _)) = segs.last() else {
            return Ok(plan);
        };
        // 2. The in-flight pin.
        let pin = self
            .shared
            .pins
            .get(shard as usize)
            .map_or(NO_PIN, |p| p.load(Ordering::SeqCst));
        // 3. The consumers.
        let consumers = consumer_positions(&self.root, shard)?;
        if consumers.is_empty() {
            // Quiet for a spool with nothing to reclaim yet.
            if segs.len() > 1 {
                plan.held =
                    Some("no consumer is registered: nothing ships, nothing is deleted".into());
            }
            return Ok(plan);
        }
        let mut slowest: Option<Location> = None;
        for c in &consumers {
            match &c.position {
                Ok(p) => slowest = Some(slowest.map_or(*p, |s| s.min(*p))),
                Err(why) => {
                    plan.held = Some(format!(
                        "consumer {}: {why}; nothing is deleted until it is repaired",
                        c.name
                    ));
                    return Ok(plan);
                }
            }
        }
        let slowest = slowest.unwrap_or_default();
        plan.lag_bytes = lag_bytes(&segs, slowest);
        // 4. Commit records appended since the last pass; forget those
        // whose own segment is gone.
        let oldest = segs[0].0;
        let present: BTreeSet<u64> = segs.iter().map(|(q, _)| *q).collect();
        let st = &mut self.states[shard as usize];
        st.cross.retain(|at, _| present.contains(&at.segment));
        let from = match st.scanned_to {
            Some(at) if at.segment >= oldest => at,
            _ => Location {
                segment: oldest,
                offset: 0,
            },
        };
        let cross = &mut st.cross;
        st.scanned_to = Some(walk(&dir, from, false, |s| {
            if let Some(first) = s.view.frags.iter().map(|f| f.segment).min() {
                if first < s.at.segment {
                    cross.insert(s.at, first);
                }
            }
        })?);
        // 5. Candidates: before every consumer, the pin and the newest
        // sealed segment; sealed (one left unsealed after a write error is
        // kept, and the ones after it still go); past the retention. The
        // newest sealed one stays as well as the newest: while a new
        // segment is being created (no header yet) it is the one that
        // carries the queue-id floor and the sequence, and a crash then
        // must not find the shard without a segment. (A segment that
        // cannot be opened here counts as unsealed: more is kept.)
        let newest_sealed = segs
            .iter()
            .rev()
            .find(|(_, path)| {
                SegmentFile::open(path).is_ok_and(|seg| matches!(seg.read_seal(), Ok(Some(_))))
            })
            .map_or(oldest, |(q, _)| *q);
        let limit = slowest.segment.min(pin).min(newest).min(newest_sealed);
        let now = SystemTime::now();
        let mut candidates = BTreeMap::new();
        for (seq, path) in segs.iter().take_while(|(s, _)| *s < limit) {
            let Ok(seg) = SegmentFile::open(path) else {
                continue;
            };
            if seg.read_seal()?.is_none() {
                continue;
            }
            let meta = seg
                .file()
                .metadata()
                .map_err(|e| SpoolError::io("reading metadata of", path, e))?;
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age >= self.cfg.retention {
                candidates.insert(*seq, (path.clone(), meta.len()));
            }
        }
        // 6. No Commit record that stays may lose a fragment (shipped or
        // not): a commit in a kept segment keeps every segment from its
        // first fragment's on. Keeping one may keep more: repeat until
        // nothing changes. (Commits in candidates were all shipped.)
        loop {
            let mut keep = Vec::new();
            for (at, first) in &st.cross {
                if !candidates.contains_key(&at.segment) {
                    keep.extend(candidates.range(*first..at.segment).map(|(q, _)| *q));
                }
            }
            if keep.is_empty() {
                break;
            }
            for q in keep {
                candidates.remove(&q);
            }
        }
        let candidates = candidates
            .into_iter()
            .map(|(q, (path, len))| (q, path, len))
            .collect();
        plan.delete = candidates;
        Ok(plan)
    }

    /// Recomputes the backpressure flag from the lag of the last pass and
    /// the free space now, with hysteresis; logs each change.
    fn update_pressure(&mut self, lag: u64) {
        let cfg = &self.cfg;
        if cfg.lag_high_bytes > 0 {
            let low = if cfg.lag_low_bytes == 0 {
                cfg.lag_high_bytes / 2
            } else {
                cfg.lag_low_bytes
            };
            if !self.lag_over && lag > cfg.lag_high_bytes {
                self.lag_over = true;
                crate::warn!(
                    "spool: consumers are {lag} bytes behind, over spool.lag_high_bytes = {}: \
                     refusing new mail (452 4.3.1 at MAIL) until under {low}",
                    cfg.lag_high_bytes
                );
            } else if self.lag_over && lag < low {
                self.lag_over = false;
                crate::info!(
                    "spool: consumers are {lag} bytes behind, under {low}: accepting mail again"
                );
            }
        } else {
            self.lag_over = false;
        }
        if cfg.min_free_bytes > 0 {
            let resume = if cfg.resume_free_bytes == 0 {
                cfg.min_free_bytes.saturating_mul(2)
            } else {
                cfg.resume_free_bytes.max(cfg.min_free_bytes)
            };
            match available_bytes(&self.root) {
                Ok(free) if !self.free_under && free < cfg.min_free_bytes => {
                    self.free_under = true;
                    crate::warn!(
                        "spool: {free} bytes free, under spool.min_free_bytes = {}: refusing new \
                         mail (452 4.3.1 at MAIL) until {resume} are free",
                        cfg.min_free_bytes
                    );
                }
                Ok(free) if self.free_under && free >= resume => {
                    self.free_under = false;
                    crate::info!("spool: {free} bytes free: accepting mail again");
                }
                Ok(_) => {}
                Err(e) => {
                    crate::warn!("spool: checking free space of {}: {e}", self.root.display())
                }
            }
        } else {
            self.free_under = false;
        }
        self.shared
            .pressure
            .store(self.lag_over || self.free_under, Ordering::Relaxed);
    }

    /// One round of the server's thread: reclaim, then update the flag.
    fn round(&mut self, n: u64) {
        let (lag, news) = match self.pass(false) {
            Ok(r) => {
                let held = r.shards.iter().find_map(|s| {
                    let why = s.held.as_ref()?;
                    Some(format!("shard {}: {why}", s.shard))
                });
                self.last_lag = r.lag_bytes;
                (r.lag_bytes, held.map(|h| (Level::Info, h)))
            }
            Err(e) => (self.last_lag, Some((Level::Warn, e.to_string()))),
        };
        let text = news.as_ref().map(|(_, t)| t.clone());
        if text != self.told {
            if let Some((level, why)) = news.filter(|(l, _)| crate::log::enabled(*l)) {
                crate::log::write(level, format_args!("spool: not reclaiming space: {why}"));
            }
            self.told = text;
        }
        self.update_pressure(lag);
        // Tests wait for these to know a whole pass ran after their setup.
        crate::debug!(
            "spool: reclaim pass {n} done: lag {lag} bytes, backpressure {}",
            self.shared.pressure.load(Ordering::Relaxed)
        );
    }

    /// Runs [`Reclaimer::pass`] and the backpressure check every
    /// `spool.reclaim_interval` on a thread of its own until the returned
    /// handle is dropped.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn(mut self) -> std::io::Result<ReclaimThread> {
        let (tx, rx) = mpsc::channel::<()>();
        let every = self.cfg.reclaim_interval;
        let handle = std::thread::Builder::new()
            .name("ringmx-reclaim".into())
            .spawn(move || {
                for n in 1.. {
                    self.round(n);
                    match rx.recv_timeout(every) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(ReclaimThread {
            stop: Some(tx),
            handle: Some(handle),
        })
    }
}

/// Segment bytes at or after `from` in `segs` (sorted by sequence, as
/// [`list_segments`] gives them; the newest segment's up to the end of its
/// records: not the zeros a server writes ahead of them).
pub(crate) fn lag_bytes(segs: &[(u64, PathBuf)], from: Location) -> u64 {
    let newest = segs.last().map(|(s, _)| *s);
    segs.iter()
        .filter(|(s, _)| *s >= from.segment)
        .filter_map(|(s, p)| {
            let mut len = std::fs::metadata(p).ok()?.len();
            if Some(*s) == newest {
                len = super::reader::data_end(p, len).unwrap_or(len);
            }
            Some(if *s == from.segment {
                len.saturating_sub(from.offset)
            } else {
                len
            })
        })
        .sum()
}

/// The reclaimer's thread; dropping it tells the thread to stop after the
/// round under way. It is not waited for: a first round over a large spool
/// may take a while, and must not hold up a shutdown (a deletion cut short
/// by the exit is simply redone next time).
#[derive(Debug)]
pub struct ReclaimThread {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ReclaimThread {
    fn drop(&mut self) {
        self.stop.take();
        self.handle.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::{write_test_spool, TempDir};

    /// Review finding: the reclaimer kept only a shard's newest segment. At
    /// the moment a rotation creates the next one (an empty file, no header
    /// yet) with every consumer caught up, it deleted every sealed segment,
    /// and a crash then left the shard with no segment to carry its
    /// queue-id floor and sequence.
    #[test]
    fn the_newest_sealed_segment_stays_while_a_new_one_is_being_created() {
        let dir = TempDir::new("reclaim-newsealed");
        let root = dir.path().to_owned();
        write_test_spool(&root, 30, 8 << 10);
        let shard = root.join(shard_dir_name(0));
        let (segs, _) = list_segments(&shard).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        // The newest as a rotation has just created it: no header yet. The
        // one before is the newest sealed.
        let (last, ref path) = *segs.last().unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let prev = segs[segs.len() - 2].0;
        let seg = SegmentFile::open(&segs[segs.len() - 2].1).unwrap();
        assert!(seg.read_seal().unwrap().is_some(), "sealed by the rotation");
        // A consumer that has shipped everything, standing in the new one.
        let cd = checkpoint::ConsumerDir::new(&root, "done").unwrap();
        cd.create().unwrap();
        cd.write(
            0,
            &checkpoint::Checkpoint {
                position: Location {
                    segment: last,
                    offset: 0,
                },
                shipped: 30,
                written_unix: 0,
            },
        )
        .unwrap();
        let mut rec = Reclaimer::new(&root, &SpoolConfig::default(), Shared::new(1));
        let report = rec.pass(false).unwrap();
        let (left, _) = list_segments(&shard).unwrap();
        let left: Vec<u64> = left.iter().map(|(q, _)| *q).collect();
        assert_eq!(left, [prev, last], "{report:?}");
        assert_eq!(report.deleted as usize, segs.len() - 2);
    }

    /// Review finding: a pass that failed (a segment unreadable for a
    /// moment) counted as a lag of 0, which lifted backpressure while the
    /// consumers were as far behind as before.
    #[test]
    fn a_failed_pass_keeps_the_backpressure_of_the_last_lag() {
        let dir = TempDir::new("reclaim-lagkeep");
        let root = dir.path().to_owned();
        write_test_spool(&root, 12, 8 << 10);
        // A consumer at the very start: the whole shard is its lag.
        checkpoint::ConsumerDir::new(&root, "slow")
            .unwrap()
            .create()
            .unwrap();
        let cfg = SpoolConfig {
            lag_high_bytes: 1,
            lag_low_bytes: 1,
            ..SpoolConfig::default()
        };
        let shared = Shared::new(1);
        let mut rec = Reclaimer::new(&root, &cfg, shared.clone());
        rec.round(1);
        assert!(shared.pressure.load(Ordering::Relaxed), "over the mark");
        // The newest segment cannot be read during the next pass.
        let (segs, _) = list_segments(&root.join(shard_dir_name(0))).unwrap();
        let path = segs.last().unwrap().1.clone();
        let aside = path.with_extension("aside");
        std::fs::rename(&path, &aside).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(rec.pass(true).is_err(), "the pass fails");
        rec.round(2);
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        assert!(
            shared.pressure.load(Ordering::Relaxed),
            "a failed pass lifted backpressure"
        );
        rec.round(3);
        assert!(shared.pressure.load(Ordering::Relaxed));
    }
}
