//! The channel between sessions and the writer task: a [`Job`] carries one
//! record to the writer, a [`Completion`] carries the writer's verdict back.
//! Each job is answered exactly once; a job dropped unanswered answers
//! [`SpoolError::Closed`], so no session waits forever.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use futures_lite::future::poll_fn;

use crate::spool::error::SpoolError;
use crate::spool::format::Location;
use crate::spool::queue_id::QueueId;

/// The outcome the writer hands a job back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// Where the record starts.
    pub(crate) at: Location,
    /// [`Core::frag_epoch`](super::shared::Core::frag_epoch) when it was written.
    pub(crate) epoch: u64,
    /// When the writer answered (after the fdatasync for a durable record):
    /// the session measures its own wake-up from here.
    pub(crate) answered_at: Instant,
}

/// One record for the writer task.
pub(crate) struct Job {
    /// The whole record, header included.
    pub(crate) bytes: Vec<u8>,
    /// Complete after the fdatasync (message, commit) or after the write (fragment).
    pub(crate) durable: bool,
    /// A commit of a streamed message: the epoch its fragments were written in.
    pub(crate) needs_epoch: Option<u64>,
    /// The message the record belongs to.
    pub(crate) id: QueueId,
    /// When it was queued (durable records only: the commit stages start here).
    pub(crate) queued: Option<Instant>,
    pub(crate) done: Rc<Completion>,
}

impl Job {
    /// Answers the session that queued the record.
    pub(super) fn finish(self, r: Result<Written, SpoolError>) {
        self.done.complete(r);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Every path through the writer answers each job; should one ever
        // not (a bug, or the writer task torn down with jobs queued), the
        // session gets an error instead of waiting forever.
        if !self.done.answered.get() {
            self.done.complete(Err(SpoolError::Closed(self.id.shard())));
        }
    }
}

/// A one-shot slot the writer fills and a session awaits.
#[derive(Default)]
pub(crate) struct Completion {
    result: RefCell<Option<Result<Written, SpoolError>>>,
    waker: RefCell<Option<Waker>>,
    answered: Cell<bool>,
}

impl Completion {
    fn complete(&self, r: Result<Written, SpoolError>) {
        self.answered.set(true);
        *self.result.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits for the writer's verdict.
    pub(crate) async fn wait(&self) -> Result<Written, SpoolError> {
        poll_fn(|cx| {
            if let Some(r) = self.result.borrow_mut().take() {
                return Poll::Ready(r);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
