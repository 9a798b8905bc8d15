//! The consumer loop: one per (consumer name, shard), on a plain std
//! thread of the `ringmx ship` process. It reads the shard from its
//! checkpoint on, hands bounded batches to the sink, copies refused parcels
//! to the dead letters, and moves the checkpoint past what the sink took.
//!
//! ```text
//! read (from the checkpoint) ─▶ batch (≤ max_batch parcels, ≤ max_batch_bytes)
//!   ─▶ Sink::deliver ─▶ Rejected: dead letter ─▶ checkpoint past the
//!      longest prefix of Accepted/Rejected ─▶ Deferred or SinkError: back
//!      off (min doubling to max) and deliver the rest again
//! ```
//!
//! Guarantees: the checkpoint only ever moves past a message once the sink
//! said `Accepted` (durably taken) or `Rejected` and its dead letter is
//! durable, or its body is damaged in the spool (a CRC mismatch, a fragment
//! missing for good) and a dead letter saying so (no `.eml`) is durable. A
//! body that cannot be read for a moment (an I/O error) is read again after
//! a backoff, from a new reader at the position before it.
//!
//! A checkpoint is written (fsync'd) on a thread of its own while the next
//! batch is read and delivered, one write in flight at most: the consumer
//! waits for it before it issues the next, and before it returns. A crash
//! therefore ships again at most two batches (the one whose checkpoint was
//! being written and the one in flight): at-least-once, with
//! [`Parcel::key`] as the idempotency key. A follower can ship a message the
//! server then drops after a failed fdatasync (see
//! [`crate::spool::SpoolReader`]'s docs): the next hop may get such a message
//! twice under two queue ids, never lose one.
//!
//! Leaves to the caller (the binary): threads, signals, the sink's URL, the
//! consumer's lock, and the progress line (from [`ShardProgress`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bumpalo::Bump;

use super::checkpoint::{Checkpoint, ConsumerDir};
use super::dead::DeadLetters;
use super::headers::HeaderFields;
use super::sink::{Parcel, Sink, Verdict};
use super::OutletError;
use crate::spool::{Location, SpoolError, SpoolReader, StoredMessage};

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Keep tailing the shard (`--follow`) instead of ending once what was
    /// committed at the start is shipped.
    pub follow: bool,
    /// At most this many parcels per batch, below the sink's own
    /// `max_batch` (`None`: the sink's): smaller batches ship each message
    /// sooner and re-ship fewer after a crash, at more checkpoint writes.
    pub max_batch: Option<usize>,
    /// A batch ends at this many bytes of message data (or at the sink's
    /// `max_batch` parcels): bounds the memory a batch holds, at one
    /// message's size over it.
    pub max_batch_bytes: usize,
    /// How often a follower looks for new mail when it has none.
    pub idle_poll: Duration,
    /// The first wait after a sink failure or a `Deferred`; doubles per
    /// failure in a row up to [`ConsumerConfig::backoff_max`].
    pub backoff_min: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            follow: false,
            max_batch: None,
            // 16 MiB: large enough for a batch of 64 typical messages
            // many times over, small enough for many shards at once.
            max_batch_bytes: 16 << 20,
            // 50 ms: a follower ships new mail within a blink, and an idle
            // poll is a stat() or two.
            idle_poll: Duration::from_millis(50),
            backoff_min: Duration::from_millis(100),
            // 30 s: a next hop that comes back is found again within half
            // a minute, and a dead one gets two tries a minute.
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Counters of one shard's consumer, shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct ShardProgress {
    /// Messages the sink accepted.
    pub shipped: AtomicU64,
    /// Messages it refused for good (now dead letters).
    pub rejected: AtomicU64,
    /// Messages whose body could not be read from the spool (damage); not
    /// shipped, logged, recorded as dead letters marked `damaged`.
    pub damaged: AtomicU64,
    /// Deliveries retried after a `Deferred` or a sink failure.
    pub retries: AtomicU64,
    /// The checkpoint as last read or written.
    pub position: Mutex<Option<Location>>,
}

impl ShardProgress {
    /// The checkpoint as last written (`None`: not yet).
    pub fn position(&self) -> Option<Location> {
        *self.position.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How one shard's consumer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Drain mode: everything committed when it started is shipped.
    Drained,
    /// Asked to stop; the checkpoint covers every batch finished.
    Stopped,
}

/// The idempotency key of a message: `<node_id>.<queue_id>`, or the queue
/// id alone for a version 1 segment (no node id).
pub fn key_of(msg: &StoredMessage) -> String {
    if msg.node_id.is_empty() {
        msg.id.to_string()
    } else {
        format!("{}.{}", msg.node_id, msg.id)
    }
}

/// One message read and ready to go: what a [`Parcel`] borrows.
struct Item {
    key: String,
    msg: StoredMessage,
    /// `Received:` field plus body.
    data: Vec<u8>,
    /// The reader's position just after it.
    after: Location,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sleeps `d`, waking early when `stop` is set; true if it was.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Whether `pos` has reached `end` (everything before `end` was read).
fn reached(pos: Location, end: Option<Location>) -> bool {
    end.is_none_or(|e| (pos.segment, pos.offset) >= (e.segment, e.offset))
}

/// The checkpoint writer of a running consumer: a thread that writes one
/// checkpoint at a time while the consumer goes on with the next batch.
struct CheckpointWriter {
    to: SyncSender<Checkpoint>,
    done: Receiver<Result<Checkpoint, OutletError>>,
    /// A checkpoint was sent and its result not yet received.
    in_flight: bool,
}

/// One shard's consumer.
pub struct ShardConsumer<'a> {
    spool: &'a SpoolReader,
    dir: &'a ConsumerDir,
    dead: DeadLetters,
    shard: u32,
    cfg: &'a ConsumerConfig,
    progress: &'a ShardProgress,
    /// The checkpoint last issued: on disk, or being written by the
    /// checkpoint writer thread.
    committed: Checkpoint,
    bump: Bump,
}

impl<'a> ShardConsumer<'a> {
    /// The consumer `dir` (registered) for `shard`, from its checkpoint.
    ///
    /// # Errors
    /// The checkpoint cannot be read.
    pub fn new(
        spool: &'a SpoolReader,
        dir: &'a ConsumerDir,
        shard: u32,
        cfg: &'a ConsumerConfig,
        progress: &'a ShardProgress,
    ) -> Result<Self, OutletError> {
        let committed = dir.read(shard)?.unwrap_or(Checkpoint {
            position: Location {
                segment: 0,
                offset: 0,
            },
            shipped: 0,
            written_unix: 0,
        });
        *progress.position.lock().unwrap_or_else(|e| e.into_inner()) = Some(committed.position);
        Ok(Self {
            spool,
            dir,
            dead: DeadLetters::of(dir),
            shard,
            cfg,
            progress,
            committed,
            bump: Bump::new(),
        })
    }

    /// Whether `e`, from reading `msg`'s body, may pass: an I/O error
    /// (EIO, EMFILE, a remount) rather than damage. A segment not found is
    /// damage only when the message's own segment is still there (the
    /// spool never deletes a fragment a remaining commit lists); if that
    /// one is gone too, the shard was moved or reclaimed under the reader,
    /// which a new reader sorts out.
    fn may_pass(&self, msg: &StoredMessage, e: &SpoolError) -> bool {
        match e {
            SpoolError::Io { path, source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let dir = self
                    .spool
                    .root()
                    .join(crate::spool::format::shard_dir_name(self.shard));
                let seq = msg.location.segment;
                let own = [
                    crate::spool::format::FORMAT_VERSION_1,
                    crate::spool::format::FORMAT_VERSION,
                ]
                .iter()
                .any(|v| {
                    dir.join(crate::spool::format::segment_file_name_v(*v, seq))
                        .exists()
                });
                path.exists() || !own
            }
            SpoolError::Io { .. } | SpoolError::NoSpace { .. } => true,
            _ => false,
        }
    }

    /// Moves the checkpoint to `pos` if it is elsewhere: hands it to the
    /// writer thread once the previous write is durable (so at most one is
    /// in flight).
    fn commit(
        &mut self,
        w: &mut CheckpointWriter,
        pos: Location,
        shipped: u64,
    ) -> Result<(), OutletError> {
        if pos == self.committed.position && shipped == 0 {
            return Ok(());
        }
        let cp = Checkpoint {
            position: pos,
            shipped: self.committed.shipped + shipped,
            written_unix: now_unix(),
        };
        self.flush(w)?;
        if w.to.send(cp).is_ok() {
            w.in_flight = true;
        } else {
            // The thread is gone (it cannot be, short of a panic): in place.
            self.dir.write(self.shard, &cp)?;
            self.durable(&cp);
        }
        self.committed = cp;
        Ok(())
    }

    /// Waits for the checkpoint write in flight, if any.
    fn flush(&self, w: &mut CheckpointWriter) -> Result<(), OutletError> {
        if !std::mem::take(&mut w.in_flight) {
            return Ok(());
        }
        let cp = match w.done.recv() {
            Ok(r) => r?,
            // The thread is gone (it cannot be, short of a panic): write
            // the last issued checkpoint in place.
            Err(_) => {
                self.dir.write(self.shard, &self.committed)?;
                self.committed
            }
        };
        self.durable(&cp);
        Ok(())
    }

    /// `cp` is on disk: reported as the position.
    fn durable(&self, cp: &Checkpoint) {
        *self
            .progress
            .position
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cp.position);
    }

    /// Runs until drained (unless `cfg.follow`) or until `stop` is set.
    ///
    /// # Errors
    /// A checkpoint or dead letter could not be written (the consumer
    /// stops rather than ship on without recording it), or the spool could
    /// not be read at all.
    pub fn run(&mut self, sink: &mut dyn Sink, stop: &AtomicBool) -> Result<Ended, OutletError> {
        let (dir, shard) = (self.dir, self.shard);
        let (to, from) = sync_channel::<Checkpoint>(1);
        let (done_tx, done) = channel();
        std::thread::scope(|s| {
            s.spawn(move || {
                for cp in from {
                    let r = dir.write(shard, &cp).map(|()| cp);
                    if done_tx.send(r).is_err() {
                        return;
                    }
                }
            });
            // Owned here: dropped (ending the thread, which the scope
            // joins) however this closure is left, a panic included.
            let mut w = CheckpointWriter {
                to,
                done,
                in_flight: false,
            };
            let ended = self.run_batches(sink, stop, &mut w);
            // However it ended, what was issued is on disk before it returns.
            let flushed = self.flush(&mut w);
            let ended = ended?;
            flushed.map(|()| ended)
        })
    }

    fn run_batches(
        &mut self,
        sink: &mut dyn Sink,
        stop: &AtomicBool,
        w: &mut CheckpointWriter,
    ) -> Result<Ended, OutletError> {
        let end = if self.cfg.follow {
            None
        } else {
            match self.spool.shard_end(self.shard)? {
                Some(e) => Some(e),
                None => return Ok(Ended::Drained),
            }
        };
        let mut it = self
            .spool
            .shard_messages_from(self.shard, self.committed.position);
        let max_batch = self
            .cfg
            .max_batch
            .map_or(sink.max_batch(), |m| m.min(sink.max_batch()))
            .max(1);
        let mut items: Vec<Item> = Vec::new();
        let mut backoff = self.cfg.backoff_min;
        loop {
            if stop.load(Ordering::Relaxed) && items.is_empty() {
                self.commit(w, it.resume_point(), 0)?;
                return Ok(Ended::Stopped);
            }
            // Fill the batch (after a failure it still holds what is left).
            let mut bytes: usize = items.iter().map(|i| i.data.len()).sum();
            let mut at_end = false;
            while items.len() < max_batch && bytes < self.cfg.max_batch_bytes {
                if !self.cfg.follow && reached(it.resume_point(), end) {
                    at_end = true;
                    break;
                }
                let before = it.resume_point();
                match it.next() {
                    Some(Ok(msg)) => {
                        let after = it.resume_point();
                        let mut data = Vec::with_capacity(
                            msg.received.len() + usize::try_from(msg.body_len).unwrap_or(0),
                        );
                        data.extend_from_slice(&msg.received);
                        match msg.append_body(&mut data) {
                            Ok(()) => {}
                            Err(e) if self.may_pass(&msg, &e) => {
                                // Out of reach for now: read it again later,
                                // never move past it.
                                crate::warn!(
                                    "ship {}: shard {}: message {} cannot be read now: {e}; \
                                     again in {backoff:?}",
                                    self.dir.name(),
                                    self.shard,
                                    msg.id
                                );
                                it = self.spool.shard_messages_from(self.shard, before);
                                if sleep_unless(stop, backoff) {
                                    break;
                                }
                                backoff = (backoff * 2).min(self.cfg.backoff_max);
                                continue;
                            }
                            Err(e) => {
                                // Damaged for good: recorded (durably, before
                                // the checkpoint can pass it) and listed by
                                // `--dead-letters`, then stepped over.
                                let key = key_of(&msg);
                                self.dead.store_damaged(
                                    &key,
                                    &msg,
                                    &format!("damaged in the spool, cannot be read: {e}"),
                                )?;
                                self.dead.sync()?;
                                self.progress.damaged.fetch_add(1, Ordering::Relaxed);
                                crate::error!(
                                    "ship {}: shard {}: message {} is damaged in the spool and \
                                     cannot be shipped (a dead letter now; see --dead-letters): \
                                     {e}",
                                    self.dir.name(),
                                    self.shard,
                                    msg.id
                                );
                                continue;
                            }
                        }
                        bytes += data.len();
                        items.push(Item {
                            key: key_of(&msg),
                            msg,
                            data,
                            after,
                        });
                    }
                    Some(Err(e)) if !it.ended() => {
                        // Damage, stepped over by the reader: what follows
                        // is read.
                        crate::error!(
                            "ship {}: shard {}: damage in the spool, stepped over: {e}",
                            self.dir.name(),
                            self.shard
                        );
                    }
                    Some(Err(e)) => {
                        // The reader ended (a file could not be read): a
                        // new one starts where it stood, after a wait.
                        crate::warn!(
                            "ship {}: shard {}: reading the spool: {e}; again in {backoff:?}",
                            self.dir.name(),
                            self.shard
                        );
                        it = self
                            .spool
                            .shard_messages_from(self.shard, it.resume_point());
                        if sleep_unless(stop, backoff) {
                            break;
                        }
                        backoff = (backoff * 2).min(self.cfg.backoff_max);
                    }
                    None => {
                        at_end = true;
                        break;
                    }
                }
            }
            if items.is_empty() {
                // Nothing to ship: still record a move past sealed segments
                // (space reclamation waits for it), and at the end.
                let pos = it.resume_point();
                if pos.segment != self.committed.position.segment || (at_end && !self.cfg.follow) {
                    self.commit(w, pos, 0)?;
                }
                if !self.cfg.follow && at_end {
                    return Ok(Ended::Drained);
                }
                if sleep_unless(stop, self.cfg.idle_poll) {
                    self.commit(w, it.resume_point(), 0)?;
                    return Ok(Ended::Stopped);
                }
                continue;
            }
            let done = self.deliver(sink, &items)?;
            if done == items.len() {
                // All taken: the reader's own position may be further on
                // (past non-message records, into the next segment).
                self.commit(w, it.resume_point(), done as u64)?;
                items.clear();
                backoff = self.cfg.backoff_min;
                continue;
            }
            if done > 0 {
                self.commit(w, items[done - 1].after, done as u64)?;
                items.drain(..done);
            }
            self.progress.retries.fetch_add(1, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                // The batch in hand is finished as far as it goes.
                return Ok(Ended::Stopped);
            }
            if sleep_unless(stop, backoff) {
                return Ok(Ended::Stopped);
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    /// Hands `items` to the sink; dead-letters the refused ones of the
    /// finished prefix. Returns how many, from the start, are finished.
    fn deliver(&mut self, sink: &mut dyn Sink, items: &[Item]) -> Result<usize, OutletError> {
        self.bump.reset();
        let bump = &self.bump;
        let headers: Vec<HeaderFields<'_>> = items
            .iter()
            .map(|i| HeaderFields::parse(bump, &i.data))
            .collect();
        let parcels: Vec<Parcel<'_>> = items
            .iter()
            .zip(&headers)
            .map(|(i, h)| Parcel {
                key: &i.key,
                msg: &i.msg,
                data: &i.data,
                headers: h,
            })
            .collect();
        let verdicts = match sink.deliver(&parcels) {
            Ok(v) => v,
            Err(e) => {
                crate::warn!(
                    "ship {}: shard {}: sink failed ({e}); {} messages to try again",
                    self.dir.name(),
                    self.shard,
                    items.len()
                );
                return Ok(0);
            }
        };
        if verdicts.len() != parcels.len() {
            crate::error!(
                "ship {}: shard {}: the sink answered {} verdicts for {} messages (a sink bug); \
                 trying again",
                self.dir.name(),
                self.shard,
                verdicts.len(),
                parcels.len()
            );
            return Ok(0);
        }
        let done = verdicts
            .iter()
            .take_while(|v| !matches!(v, Verdict::Deferred(_)))
            .count();
        let mut rejected = 0;
        for (p, v) in parcels.iter().zip(&verdicts).take(done) {
            if let Verdict::Rejected { reason, rcpts } = v {
                self.dead.store(p, reason, rcpts.as_deref())?;
                rejected += 1;
                crate::warn!(
                    "ship {}: {} refused for good, now a dead letter: {reason}",
                    self.dir.name(),
                    p.key
                );
            }
        }
        if rejected > 0 {
            self.dead.sync()?;
        }
        if let Some(Verdict::Deferred(why)) = verdicts.get(done) {
            crate::warn!(
                "ship {}: shard {}: {} deferred ({why}); {} messages to try again",
                self.dir.name(),
                self.shard,
                parcels[done].key,
                parcels.len() - done
            );
        }
        self.progress
            .shipped
            .fetch_add((done - rejected) as u64, Ordering::Relaxed);
        self.progress
            .rejected
            .fetch_add(rejected as u64, Ordering::Relaxed);
        Ok(done)
    }
}

/// Bytes of the spool after `pos` in `shard`: what a consumer standing
/// there has yet to read (records of every kind, so an upper bound on the
/// message bytes). 0 when the shard holds nothing.
///
/// # Errors
/// The shard cannot be listed.
pub fn lag_bytes(spool: &SpoolReader, shard: u32, pos: Location) -> Result<u64, OutletError> {
    let dir = spool
        .root()
        .join(crate::spool::format::shard_dir_name(shard));
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(OutletError::io("listing", dir, e)),
    };
    let mut segs = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let crate::spool::format::SegmentName::Current(seq) =
            crate::spool::format::parse_segment_file_name(&name.to_string_lossy())
        else {
            continue;
        };
        segs.push((seq, entry.path()));
    }
    segs.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(crate::spool::reclaim::lag_bytes(&segs, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::{write_test_spool, TempDir};
    use std::collections::VecDeque;

    /// A sink that answers from a script: per call, a verdict per parcel
    /// by position (`'A'`ccept, `'R'`eject, `'D'`efer), or `'E'` for a
    /// failure of the whole call; past the script, it accepts everything.
    /// It records the keys of every call and what it took.
    struct Scripted {
        script: VecDeque<&'static str>,
        calls: Vec<Vec<String>>,
        taken: Vec<(String, Vec<u8>)>,
        max: usize,
    }

    impl Sink for Scripted {
        fn deliver(
            &mut self,
            batch: &[Parcel<'_>],
        ) -> Result<Vec<Verdict>, super::super::SinkError> {
            self.calls
                .push(batch.iter().map(|p| p.key.to_owned()).collect());
            let plan = self.script.pop_front().unwrap_or("");
            if plan == "E" {
                return Err(super::super::SinkError("scripted failure".into()));
            }
            let mut v = Vec::new();
            for (i, p) in batch.iter().enumerate() {
                // Every parcel carries its parsed header fields.
                assert!(p.headers.get("Received").is_some(), "{}", p.key);
                v.push(match plan.as_bytes().get(i).copied().unwrap_or(b'A') {
                    b'A' => {
                        self.taken.push((p.key.to_owned(), p.data.to_vec()));
                        Verdict::Accepted
                    }
                    b'R' => Verdict::Rejected {
                        reason: "550 5.1.1 scripted".into(),
                        rcpts: None,
                    },
                    _ => Verdict::Deferred("451 4.3.0 scripted".into()),
                });
            }
            Ok(v)
        }

        fn max_batch(&self) -> usize {
            self.max
        }
    }

    fn cfg() -> ConsumerConfig {
        ConsumerConfig {
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            ..ConsumerConfig::default()
        }
    }

    #[test]
    fn verdicts_move_the_checkpoint_past_the_finished_prefix_only() {
        let dir = TempDir::new("consumer");
        let msgs = write_test_spool(dir.path(), 10, 8 << 10);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let c = cfg();
        let mut sink = Scripted {
            // Call 1 (parcels 0-3): 0 taken, 1 refused, 2 deferred: the
            // checkpoint moves past 0 and 1, and 2 comes again first.
            // Call 2 (2-5): the sink fails as a whole: nothing moves.
            // Call 3 (2-5): 2 and 3 taken, 4 deferred.
            script: ["ARDD", "E", "AADD"].into(),
            calls: Vec::new(),
            taken: Vec::new(),
            max: 4,
        };
        let stop = AtomicBool::new(false);
        let mut consumer = ShardConsumer::new(&spool, &cd, 0, &c, &progress).unwrap();
        assert_eq!(consumer.run(&mut sink, &stop).unwrap(), Ended::Drained);
        let stored: Vec<StoredMessage> = spool.shard_messages(0).map(Result::unwrap).collect();
        let keys: Vec<String> = stored.iter().map(key_of).collect();
        assert_eq!(keys.len(), 10);
        assert_eq!(sink.calls[0], keys[0..4]);
        assert_eq!(sink.calls[1], keys[2..6], "retried from the first deferred");
        assert_eq!(sink.calls[2], keys[2..6], "a failed call is retried whole");
        assert_eq!(sink.calls[3][0], keys[4], "retried from the deferred one");
        // Every message but the refused one was taken once, body intact.
        let want: Vec<String> = keys.iter().filter(|k| **k != keys[1]).cloned().collect();
        let got: Vec<String> = sink.taken.iter().map(|t| t.0.clone()).collect();
        assert_eq!(got, want);
        for ((k, data), m) in sink
            .taken
            .iter()
            .zip(stored.iter().filter(|m| key_of(m) != keys[1]))
        {
            assert_eq!(*k, key_of(m));
            let (_, body) = msgs.iter().find(|(id, _)| *id == m.id).unwrap();
            assert_eq!(&data[..m.received.len()], &m.received[..]);
            assert_eq!(&data[m.received.len()..], &body[..]);
        }
        // The refused one is a dead letter, loadable as it was.
        let dead = DeadLetters::of(&cd);
        let list = dead.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].key, keys[1]);
        assert_eq!(list[0].reason, "550 5.1.1 scripted");
        let back = dead.load(&list[0]).unwrap();
        assert_eq!(back.received, stored[1].received);
        assert_eq!(back.body_bytes().unwrap(), stored[1].body_bytes().unwrap());
        assert_eq!(back.envelope, stored[1].envelope);
        // The checkpoint stands at the end; counters add up.
        let cp = cd.read(0).unwrap().unwrap();
        assert_eq!(Some(cp.position), spool.shard_end(0).unwrap());
        assert_eq!(cp.shipped, 10);
        assert_eq!(progress.shipped.load(Ordering::Relaxed), 9);
        assert_eq!(progress.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(progress.retries.load(Ordering::Relaxed), 3);

        // A second run from the checkpoint ships nothing.
        let mut again = Scripted {
            script: VecDeque::new(),
            calls: Vec::new(),
            taken: Vec::new(),
            max: 4,
        };
        let mut consumer = ShardConsumer::new(&spool, &cd, 0, &c, &progress).unwrap();
        assert_eq!(consumer.run(&mut again, &stop).unwrap(), Ended::Drained);
        assert!(again.calls.is_empty(), "{:?}", again.calls);
    }

    #[test]
    fn the_checkpoint_moves_past_segments_with_nothing_to_ship() {
        let dir = TempDir::new("consumer-empty");
        write_test_spool(dir.path(), 3, 8 << 10);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let (c, stop) = (cfg(), AtomicBool::new(false));
        let mut sink = Scripted {
            script: VecDeque::new(),
            calls: Vec::new(),
            taken: Vec::new(),
            max: 64,
        };
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        assert_eq!(sink.taken.len(), 3);
        let before = cd.read(0).unwrap().unwrap().position;
        // An aborted streamed message fills segments with fragments only.
        crate::spool::tests::append_aborted(dir.path(), 40 << 10, 8 << 10);
        let end = spool.shard_end(0).unwrap().unwrap();
        assert!(end.segment >= before.segment + 3, "{before:?} {end:?}");
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        assert_eq!(sink.calls.len(), 1, "nothing more was delivered");
        let cp = cd.read(0).unwrap().unwrap();
        assert_eq!(cp.position, end, "space reclamation sees the position move");
        assert_eq!(cp.shipped, 3);
    }

    #[test]
    fn a_stop_during_retries_keeps_what_was_finished_and_resumes_there() {
        let dir = TempDir::new("consumer-stop");
        write_test_spool(dir.path(), 6, 1 << 20);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let c = cfg();
        let stop = AtomicBool::new(false);
        /// Takes the first two, then defers and asks the consumer to stop.
        struct StopAfterTwo<'s>(&'s AtomicBool, Vec<String>);
        impl Sink for StopAfterTwo<'_> {
            fn deliver(
                &mut self,
                batch: &[Parcel<'_>],
            ) -> Result<Vec<Verdict>, super::super::SinkError> {
                self.0.store(true, Ordering::Relaxed);
                Ok(batch
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if i < 2 {
                            self.1.push(p.key.to_owned());
                            Verdict::Accepted
                        } else {
                            Verdict::Deferred("busy".into())
                        }
                    })
                    .collect())
            }
        }
        let mut sink = StopAfterTwo(&stop, Vec::new());
        let mut consumer = ShardConsumer::new(&spool, &cd, 0, &c, &progress).unwrap();
        assert_eq!(consumer.run(&mut sink, &stop).unwrap(), Ended::Stopped);
        assert_eq!(sink.1.len(), 2);
        assert_eq!(cd.read(0).unwrap().unwrap().shipped, 2);
        // Resumed: exactly the other four.
        let mut rest = Scripted {
            script: VecDeque::new(),
            calls: Vec::new(),
            taken: Vec::new(),
            max: 64,
        };
        let stop = AtomicBool::new(false);
        let mut consumer = ShardConsumer::new(&spool, &cd, 0, &c, &progress).unwrap();
        assert_eq!(consumer.run(&mut rest, &stop).unwrap(), Ended::Drained);
        assert_eq!(rest.taken.len(), 4);
        assert!(rest.taken.iter().all(|(k, _)| !sink.1.contains(k)));
    }

    /// Review finding: a consumer that shipped records the server wrote but
    /// had not yet made durable (a follower reads the page cache before the
    /// fdatasync) stores a checkpoint past what survives a power loss.
    /// Recovery cuts the segment back and the server appends new,
    /// acknowledged mail at the cut, in the same segment: the consumer
    /// resumes at its stale offset, inside or past the new records, and
    /// skips them.
    #[test]
    fn a_checkpoint_past_what_survived_a_power_loss_skips_no_new_mail() {
        let dir = TempDir::new("consumer-powerloss");
        write_test_spool(dir.path(), 3, 1 << 20);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let (c, stop) = (cfg(), AtomicBool::new(false));
        let mut sink = Scripted {
            script: VecDeque::new(),
            calls: Vec::new(),
            taken: Vec::new(),
            max: 64,
        };
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        assert_eq!(sink.taken.len(), 3);
        // Power loss: the last two records were written (and shipped) but
        // never covered by an fdatasync, so their clients never got a 250.
        let stored: Vec<StoredMessage> = spool.shard_messages(0).map(Result::unwrap).collect();
        let cut = stored[1].location;
        let segs: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("shard-0"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                matches!(
                    crate::spool::format::parse_segment_file_name(&e.file_name().to_string_lossy()),
                    crate::spool::format::SegmentName::Current(_)
                )
            })
            .map(|e| e.path())
            .collect();
        assert_eq!(segs.len(), 1);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segs[0])
            .unwrap()
            .set_len(cut.offset)
            .unwrap();
        // The server restarts (recovery) and acknowledges three new messages.
        let new: Vec<String> = write_test_spool(dir.path(), 3, 1 << 20)
            .iter()
            .map(|(id, _)| id.to_string())
            .collect();
        // The consumer comes back: every new message must be shipped.
        let before = sink.taken.len();
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        let got: Vec<&String> = sink.taken[before..].iter().map(|t| &t.0).collect();
        for id in &new {
            assert!(
                got.iter().any(|k| k.ends_with(id.as_str())),
                "acknowledged {id} was never shipped; shipped after the restart: {got:?}"
            );
        }
    }

    /// Review finding: when a message's body could not be read (here its
    /// segment is briefly out of reach, as with EMFILE, EIO or a remount),
    /// the consumer counted it "damaged", logged it, and moved its
    /// checkpoint past it: a transient error lost an acknowledged message
    /// for this consumer for good, without a dead letter to redrive.
    #[test]
    fn a_body_that_cannot_be_read_for_a_moment_is_shipped_later() {
        let dir = TempDir::new("consumer-transient");
        let ids = crate::spool::tests::write_streamed_spool(dir.path(), 3, 5000, 1 << 20);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let (c, stop) = (cfg(), AtomicBool::new(false));
        let seg = std::fs::read_dir(dir.path().join("shard-0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let away = seg.with_extension("away");
        /// Takes the parcels; the first call puts the segment out of reach.
        struct Blip<'s>(&'s std::path::Path, &'s std::path::Path, Vec<String>);
        impl Sink for Blip<'_> {
            fn deliver(
                &mut self,
                batch: &[Parcel<'_>],
            ) -> Result<Vec<Verdict>, super::super::SinkError> {
                if self.2.is_empty() {
                    std::fs::rename(self.0, self.1).unwrap();
                }
                self.2.extend(batch.iter().map(|p| p.key.to_owned()));
                Ok(vec![Verdict::Accepted; batch.len()])
            }
            fn max_batch(&self) -> usize {
                1
            }
        }
        let mut sink = Blip(&seg, &away, Vec::new());
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        // The segment is back; the consumer runs again.
        std::fs::rename(&away, &seg).unwrap();
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        for id in &ids {
            let id = id.to_string();
            assert!(
                sink.2.iter().any(|k| k.ends_with(&id)),
                "{id} was never shipped (damaged count {}); shipped: {:?}",
                progress.damaged.load(Ordering::Relaxed),
                sink.2
            );
        }
    }

    /// A body that is damaged for good (a fragment's CRC does not match) is
    /// not shipped but recorded as a dead letter marked damaged, listed and
    /// never redriven; the messages around it ship.
    #[test]
    fn a_damaged_body_becomes_a_dead_letter_and_the_rest_ships() {
        let dir = TempDir::new("consumer-damaged");
        let ids = crate::spool::tests::write_streamed_spool(dir.path(), 3, 5000, 1 << 20);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let stored: Vec<StoredMessage> = spool.shard_messages(0).map(Result::unwrap).collect();
        // Flip one byte inside the second message's body, in its segment.
        let body = stored[1].body_bytes().unwrap();
        let seg = std::fs::read_dir(dir.path().join("shard-0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let probe = &body[100..132];
        let at = bytes
            .windows(probe.len())
            .position(|w| w == probe)
            .expect("the body is in the segment");
        bytes[at + 10] ^= 0x55;
        std::fs::write(&seg, &bytes).unwrap();
        assert!(stored[1].body_bytes().is_err(), "the damage is seen");

        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let (c, stop) = (cfg(), AtomicBool::new(false));
        let mut sink = Scripted {
            script: VecDeque::new(),
            calls: Vec::new(),
            taken: Vec::new(),
            max: 64,
        };
        let mut consumer = ShardConsumer::new(&spool, &cd, 0, &c, &progress).unwrap();
        assert_eq!(consumer.run(&mut sink, &stop).unwrap(), Ended::Drained);
        let got: Vec<&String> = sink.taken.iter().map(|t| &t.0).collect();
        assert_eq!(got, [&key_of(&stored[0]), &key_of(&stored[2])]);
        assert_eq!(progress.damaged.load(Ordering::Relaxed), 1);
        let dead = DeadLetters::of(&cd);
        let list = dead.list().unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].queue_id, ids[1].to_string());
        assert!(list[0].damaged);
        assert!(
            list[0].reason.starts_with("damaged in the spool"),
            "{}",
            list[0].reason
        );
        assert!(dead
            .load(&list[0])
            .unwrap_err()
            .to_string()
            .contains("nothing to send"));
        // Past it for good: the checkpoint is at the end.
        let cp = cd.read(0).unwrap().unwrap();
        assert_eq!(Some(cp.position), spool.shard_end(0).unwrap());
    }

    /// Found in review: when the reader could not open a segment (EMFILE,
    /// EIO; here its name briefly is a directory) it reported the error as
    /// resumable damage and went on with the next segment; the consumer
    /// logged "damage in the spool, stepped over" and its checkpoint moved
    /// past the whole segment, whose messages it never shipped.
    #[test]
    fn a_segment_that_cannot_be_opened_for_a_moment_is_shipped_later() {
        let dir = TempDir::new("consumer-openblip");
        let msgs = write_test_spool(dir.path(), 12, 6 << 10);
        let spool = SpoolReader::open(dir.path()).unwrap();
        let cd = ConsumerDir::new(dir.path(), "t").unwrap();
        cd.create().unwrap();
        let progress = ShardProgress::default();
        let (c, stop) = (cfg(), AtomicBool::new(false));
        let mut segs: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("shard-0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3, "{segs:?}");
        let second = segs[1].clone();
        let aside = second.with_extension("aside");
        /// Takes the parcels; the first call makes the second segment
        /// unreadable for 300 ms.
        struct Blip<'s>(&'s std::path::Path, &'s std::path::Path, Vec<String>);
        impl Sink for Blip<'_> {
            fn deliver(
                &mut self,
                batch: &[Parcel<'_>],
            ) -> Result<Vec<Verdict>, super::super::SinkError> {
                if self.2.is_empty() {
                    // Its name leads to a directory: listed, not readable.
                    // (A link, so that one rename puts the segment back at
                    // once: a moment without the name would read as the
                    // segment reclaimed, which readers rightly skip.)
                    let dir = self.1.with_extension("dir");
                    std::fs::create_dir(&dir).unwrap();
                    std::fs::rename(self.0, self.1).unwrap();
                    std::os::unix::fs::symlink(&dir, self.0).unwrap();
                    // Readable again a moment later.
                    let (seg, aside) = (self.0.to_owned(), self.1.to_owned());
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(300));
                        std::fs::rename(&aside, &seg).unwrap();
                        std::fs::remove_dir(&dir).unwrap();
                    });
                }
                self.2.extend(batch.iter().map(|p| p.key.to_owned()));
                Ok(vec![Verdict::Accepted; batch.len()])
            }
            fn max_batch(&self) -> usize {
                1
            }
        }
        let mut sink = Blip(&second, &aside, Vec::new());
        ShardConsumer::new(&spool, &cd, 0, &c, &progress)
            .unwrap()
            .run(&mut sink, &stop)
            .unwrap();
        assert!(!aside.exists(), "restored");
        let missing: Vec<String> = msgs
            .iter()
            .map(|(id, _)| id.to_string())
            .filter(|id| !sink.2.iter().any(|k| k.ends_with(id.as_str())))
            .collect();
        assert!(
            missing.is_empty(),
            "never shipped: {missing:?} ({} of {})",
            missing.len(),
            msgs.len()
        );
    }
}
