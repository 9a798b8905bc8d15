//! [`MessageWriter`]: one message on its way into the spool, from
//! `ShardSpool::begin` to `commit` or abort.
//!
//! A message whose body fits `max_buffered_message_bytes` is built whole in
//! memory as one `Message` record and handed to the writer task at commit:
//! one record, one write, no copy besides the one into this buffer. A larger
//! body is streamed: each time the buffer holds that many body bytes it goes
//! to disk as a `Fragment` record, and `write` waits until it is written
//! before taking more, so a session never holds more than one fragment. The
//! final `Commit` record repeats nothing: it carries the envelope, the list
//! of fragment locations and the last body bytes, and it is what makes the
//! message visible. Aborting writes nothing; fragments already written stay
//! on disk unreferenced and no reader ever shows them.

use std::rc::Rc;

use super::error::SpoolError;
use super::format::{
    encode_message_prefix, finish_record, push_frag_ref, set_body_len, set_frag_count, set_kind,
    start_record, EnvelopeRecord, FragRef, Kind, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN,
};
use super::queue_id::QueueId;
use super::segment::{Completion, Job, ShardSpool, Written};

/// A message being received. Feed it body bytes in order with
/// [`MessageWriter::write`], then [`MessageWriter::commit`]; drop it (or
/// call [`MessageWriter::abort`]) to discard it.
pub struct MessageWriter {
    spool: Rc<ShardSpool>,
    id: QueueId,
    /// Buffered: the whole `Message` record so far. Streaming: the final
    /// record's start (header, envelope, trace header, body length, fragment
    /// count), completed at commit.
    record: Vec<u8>,
    /// Offset in `record` of the body length field.
    body_len_at: usize,
    /// Offset in `record` where body bytes begin while buffered.
    body_start: usize,
    /// Streaming: the fragment being filled, header slot first.
    frag: Vec<u8>,
    /// Streaming: fragments written so far.
    frags: Vec<FragRef>,
    /// The writer's epoch when the first fragment was written.
    frag_epoch: Option<u64>,
    streaming: bool,
    body_len: u64,
    /// Body bytes per fragment, and the most a buffered message holds.
    limit: usize,
    /// Set by the first failure; later calls repeat it.
    failed: Option<SpoolError>,
    committed: bool,
    /// The segment pinned for this message while in flight (see
    /// `Core::pin`): taken before its first fragment, dropped with it.
    pinned: Option<u64>,
}

impl MessageWriter {
    pub(crate) fn new(
        spool: Rc<ShardSpool>,
        id: QueueId,
        env: &EnvelopeRecord<'_>,
        received: &[u8],
    ) -> Result<Self, SpoolError> {
        let cfg = &spool.core().cfg;
        // At least one byte per fragment; at most what a record may hold
        // next to an envelope.
        let limit = cfg
            .max_buffered_message_bytes
            .clamp(1, (MAX_RECORD_PAYLOAD / 2) as usize);
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + 256 + received.len());
        start_record(&mut record, Kind::Message, id.seq());
        let body_len_at = encode_message_prefix(&mut record, env, received)?;
        let body_start = record.len();
        Ok(Self {
            spool,
            id,
            record,
            body_len_at,
            body_start,
            frag: Vec::new(),
            frags: Vec::new(),
            frag_epoch: None,
            streaming: false,
            body_len: 0,
            limit,
            failed: None,
            committed: false,
            pinned: None,
        })
    }

    /// The message's queue id.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Body bytes taken so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Appends body bytes (already dot-unstuffed), in order. Returns at once
    /// while the body fits the buffer; past it, returns once the full
    /// fragment has been written, so memory stays bounded by one fragment.
    ///
    /// # Errors
    /// A fragment write failing ([`SpoolError::is_full`] for lack of space);
    /// once failed, every later call returns the same error.
    pub async fn write(&mut self, mut body: &[u8]) -> Result<(), SpoolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !body.is_empty() {
            let held = if self.streaming {
                self.frag.len() - RECORD_HEADER_LEN
            } else {
                self.record.len() - self.body_start
            };
            if held >= self.limit {
                if let Err(e) = self.spill().await {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
                continue;
            }
            let n = (self.limit - held).min(body.len());
            let target = if self.streaming {
                &mut self.frag
            } else {
                &mut self.record
            };
            target.extend_from_slice(&body[..n]);
            body = &body[n..];
            self.body_len += n as u64;
        }
        Ok(())
    }

    /// Writes the buffered body bytes as a fragment and waits until written.
    async fn spill(&mut self) -> Result<(), SpoolError> {
        let mut frag = if self.streaming {
            std::mem::take(&mut self.frag)
        } else {
            // First spill: the body moves out of the message buffer, which
            // keeps only the envelope part for the commit record.
            let mut f = Vec::with_capacity(RECORD_HEADER_LEN + self.limit);
            start_record(&mut f, Kind::Fragment, self.id.seq());
            f.extend_from_slice(&self.record[self.body_start..]);
            self.record.truncate(self.body_start);
            self.record.shrink_to_fit();
            self.streaming = true;
            f
        };
        let len = (frag.len() - RECORD_HEADER_LEN) as u32;
        finish_record(&mut frag)?;
        if self.pinned.is_none() {
            self.pinned = Some(self.spool.core().pin());
        }
        let w = self.submit(frag, false, None).await?;
        match self.frag_epoch {
            None => self.frag_epoch = Some(w.epoch),
            Some(e) if e != w.epoch => return Err(SpoolError::FragmentsLost(self.id)),
            Some(_) => {}
        }
        self.frags.push(FragRef {
            segment: w.at.segment,
            offset: w.at.offset,
            len,
        });
        self.frag = Vec::with_capacity(RECORD_HEADER_LEN + self.limit);
        start_record(&mut self.frag, Kind::Fragment, self.id.seq());
        Ok(())
    }

    async fn submit(
        &self,
        bytes: Vec<u8>,
        durable: bool,
        needs_epoch: Option<u64>,
    ) -> Result<Written, SpoolError> {
        let done = Rc::new(Completion::default());
        let job = Job {
            bytes,
            durable,
            needs_epoch,
            id: self.id,
            queued: durable.then(std::time::Instant::now),
            done: Rc::clone(&done),
        };
        let core = self.spool.core();
        core.submit(job)?;
        let w = done.wait().await?;
        if durable {
            core.sync_metrics
                .borrow()
                .stages
                .wake
                .record_duration(w.answered_at.elapsed());
        }
        Ok(w)
    }

    /// Completes the message: writes its final record and returns once it is
    /// durable (`durability = fsync`: an fdatasync covers its last byte) or
    /// written (`none`). Only then may the server reply `250` with the id.
    ///
    /// # Errors
    /// The write or the fdatasync failing, for this message alone
    /// ([`SpoolError::is_full`] → `452 4.3.1`, otherwise `451 4.3.0`); the
    /// message is then not in the spool.
    pub async fn commit(mut self) -> Result<QueueId, SpoolError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut rec = std::mem::take(&mut self.record);
        set_body_len(&mut rec, self.body_len_at, self.body_len);
        let needs_epoch = if self.streaming {
            set_kind(&mut rec, Kind::Commit);
            let n = u32::try_from(self.frags.len()).map_err(|_| SpoolError::TooLarge {
                what: "fragment list",
                len: self.frags.len() as u64,
                max: u64::from(u32::MAX),
            })?;
            set_frag_count(&mut rec, self.body_len_at, n);
            rec.reserve(self.frags.len() * super::format::FRAG_REF_LEN + self.frag.len());
            for f in &self.frags {
                push_frag_ref(&mut rec, f);
            }
            rec.extend_from_slice(&self.frag[RECORD_HEADER_LEN..]);
            self.frag = Vec::new();
            self.frag_epoch
        } else {
            None
        };
        finish_record(&mut rec)?;
        self.submit(rec, true, needs_epoch).await?;
        self.committed = true;
        Ok(self.id)
    }

    /// Bytes of body buffer this writer holds (tests check the bound).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.frag.capacity() + self.record.capacity()
    }

    /// Discards the message (client gone, RSET, over the size limit). Same
    /// as dropping it: nothing of it will ever be visible.
    pub fn abort(self) {}
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if !self.committed {
            self.spool.core().stats.borrow_mut().aborted += 1;
        }
        // Committed: the Commit record now names the fragments; aborted:
        // they are dead space. Either way the reclaimer may judge them.
        if let Some(seg) = self.pinned.take() {
            self.spool.core().unpin(seg);
        }
    }
}

impl std::fmt::Debug for MessageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("id", &self.id)
            .field("body_len", &self.body_len)
            .field("streaming", &self.streaming)
            .field("fragments", &self.frags.len())
            .finish()
    }
}
