//! [`Core`]: the state a shard's sessions and its writer task share, on one
//! executor thread (hence `Cell`/`RefCell`, no locks): the job queue and the
//! writer's waker, counters, the fragment epoch, the next queue id, and the
//! shard's claim on the spool lock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use futures_lite::future::poll_fn;

use super::channel::Job;
use super::free_space::FreeCheck;
use super::stats::SpoolStats;
use crate::config::SpoolConfig;
use crate::spool::error::SpoolError;
use crate::spool::lock::ShardClaim;
use crate::spool::recovery::RecoveryReport;

/// State shared by the shard's sessions and its writer task.
pub(crate) struct Core {
    pub(crate) shard: u32,
    pub(crate) dir: PathBuf,
    pub(crate) cfg: SpoolConfig,
    /// The node id for segment headers: `cfg.node_id`, or derived from the
    /// host name when that is empty.
    pub(crate) node_id: String,
    /// Jobs not yet taken by the writer, in submission order.
    pub(super) queue: RefCell<VecDeque<Job>>,
    pub(super) writer_waker: RefCell<Option<Waker>>,
    /// Set by `close` (or dropping the handle): no new jobs; the writer
    /// drains the queue and ends.
    pub(super) closing: Cell<bool>,
    /// The sequence of the next queue id.
    pub(super) next_id: Cell<u64>,
    pub(crate) stats: RefCell<SpoolStats>,
    /// Bumped whenever bytes already reported as written are cut away (after
    /// a failed fdatasync); a commit whose fragments predate the bump fails.
    pub(crate) frag_epoch: Cell<u64>,
    pub(super) free: RefCell<FreeCheck>,
    pub(super) recovery: RecoveryReport,
    /// Keeps this process's spool lock and this shard's claim on it.
    pub(super) claim: RefCell<Option<ShardClaim>>,
    /// In-flight pins: for each segment, how many messages still in flight
    /// (a fragment written, not yet committed or aborted) wrote their first
    /// fragment there or later. Per message, not per fragment.
    pub(super) pins: RefCell<BTreeMap<u64, u32>>,
    /// The oldest pinned segment, published for the reclaimer thread;
    /// [`NO_PIN`] when nothing is in flight.
    pub(super) pin_out: RefCell<Arc<AtomicU64>>,
    /// Where the writer records each group commit's fdatasync time and
    /// batch size for the server's metrics (a private one until
    /// `publish_sync_metrics_to`).
    pub(crate) sync_metrics: RefCell<Arc<crate::metrics::SyncMetrics>>,
}

/// The published pin when no message is in flight.
pub const NO_PIN: u64 = u64::MAX;

impl Core {
    /// Queues a record for the writer.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SpoolError> {
        if self.closing.get() {
            return Err(SpoolError::Closed(self.shard));
        }
        self.queue.borrow_mut().push_back(job);
        self.wake_writer();
        Ok(())
    }

    /// Wakes the writer task if it waits for work.
    pub(super) fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Everything queued, or `None` once closing with nothing left.
    pub(super) fn next_batch(&self) -> impl Future<Output = Option<Vec<Job>>> + '_ {
        poll_fn(move |cx| {
            let mut q = self.queue.borrow_mut();
            if !q.is_empty() {
                return Poll::Ready(Some(q.drain(..).collect()));
            }
            if self.closing.get() {
                return Poll::Ready(None);
            }
            *self.writer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Pins the segment being written now for a message about to write its
    /// first fragment (it lands there or in a later segment); returns the
    /// pinned segment for [`Core::unpin`]. Called before the fragment is
    /// queued, so a reclaimer never sees the fragment without the pin.
    pub(crate) fn pin(&self) -> u64 {
        let seg = self.stats.borrow().written.segment;
        *self.pins.borrow_mut().entry(seg).or_insert(0) += 1;
        self.publish_pin();
        seg
    }

    /// Drops a pin taken by [`Core::pin`] (the message committed or was abandoned).
    pub(crate) fn unpin(&self, seg: u64) {
        let mut pins = self.pins.borrow_mut();
        if let Some(n) = pins.get_mut(&seg) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&seg);
            }
        }
        drop(pins);
        self.publish_pin();
    }

    pub(super) fn publish_pin(&self) {
        let oldest = self.pins.borrow().keys().next().copied().unwrap_or(NO_PIN);
        self.pin_out.borrow().store(oldest, Ordering::SeqCst);
    }

    /// [`FreeCheck::check`] for this shard, counting a refusal as a full error.
    pub(super) fn check_free(&self) -> Result<(), SpoolError> {
        let appended = self.stats.borrow().bytes;
        let r = self
            .free
            .borrow_mut()
            .check(&self.dir, self.cfg.min_free_bytes, appended);
        if let Err(SpoolError::BelowFreeFloor { .. }) = r {
            self.stats.borrow_mut().full_errors += 1;
        }
        r
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.claim.borrow_mut().take();
    }
}
