//! A minimal in-memory runtime for the engine: feeds a script of reads,
//! clock advances, shutdown and commit failures through a [`Session`],
//! commits every message at once, and checks the event contract on the way.
//! Used by the benches and the callgrind driver (counting only, [`replay`])
//! and by the fuzz targets (recording replies and bodies, [`record`], so
//! that a run split into small reads can be compared byte for byte with the
//! one-shot run). The server's real runtime is `server::conn`.

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::envelope::SHED_KEEP_RCPTS;
use super::recipients::LookupFailed;
use super::session::{ClientInfo, CloseReason, CommitError, Event, Session};
use crate::config::{ServerConfig, SmtpConfig};

/// One step of a replay script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Bytes from the client, fed in reads of the replay's read size.
    Bytes(&'a [u8]),
    /// The clock moves on; the session's timeout is handled if it is due.
    Advance(Duration),
    /// Server shutdown (`handle_shutdown`).
    Shutdown,
    /// The shutdown grace period is over (`handle_hard_stop`).
    HardStop,
    /// The next commit fails with this error.
    FailNextCommit(CommitError),
}

/// What a replay produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Messages committed (`MessageEnd`, then a successful commit).
    pub messages: u64,
    /// Messages whose commit failed on purpose ([`Step::FailNextCommit`]).
    pub commit_failures: u64,
    /// Messages abandoned (`MessageAbort`).
    pub aborts: u64,
    /// Body bytes of committed messages.
    pub body_bytes: u64,
    /// Why the session closed, if it did.
    pub closed: Option<CloseReason>,
    /// Every reply, in order ([`record`] only).
    pub replies: Vec<u8>,
    /// The body of each committed message ([`record`] only).
    pub bodies: Vec<Vec<u8>>,
}

/// Feeds `input` in reads of `read` bytes (the unconsumed tail kept in
/// front, as a connection does), committing each message with queue id
/// `"Q"`, and counts what happened. Replies go to `out`, which is cleared
/// after each read; bodies are counted, not kept. This is what the benches
/// time: the engine plus the least a runtime must do.
///
/// # Panics
/// If the engine breaks its event contract: a body outside a message, a
/// second `MessageStart`, a message without recipients or whose count
/// changed after shedding its envelope, a consumed count past the input, a partial line
/// carried that is longer than the longest allowed line, a message whose
/// delivered bytes differ from the session's count, or a deadline that
/// `poll_timeout` and `handle_timeout` disagree on. These are engine bugs,
/// which is what the fuzz targets look for.
pub fn replay(cfg: &Rc<SmtpConfig>, input: &[u8], read: usize, out: &mut Vec<u8>) -> Replay {
    let lifetime = ServerConfig::default().max_connection_lifetime;
    drive(cfg, lifetime, &[Step::Bytes(input)], read, false, None, out)
}

/// [`replay`] with the session counting its commands into `tally`, as the
/// server's sessions do (examples/engine_profile measures the cost).
///
/// # Panics
/// As [`replay`].
pub fn replay_counted(
    cfg: &Rc<SmtpConfig>,
    input: &[u8],
    read: usize,
    out: &mut Vec<u8>,
    tally: std::sync::Arc<super::session::CommandTally>,
) -> Replay {
    let lifetime = ServerConfig::default().max_connection_lifetime;
    drive(
        cfg,
        lifetime,
        &[Step::Bytes(input)],
        read,
        false,
        Some(tally),
        out,
    )
}

/// Runs `steps` with reads of `read` bytes and a connection lifetime of
/// `lifetime`, keeping every reply and every committed body.
///
/// # Panics
/// As [`replay`].
pub fn record(cfg: &Rc<SmtpConfig>, lifetime: Duration, steps: &[Step<'_>], read: usize) -> Replay {
    let mut out = Vec::new();
    let mut r = drive(cfg, lifetime, steps, read, true, None, &mut out);
    r.replies = out;
    r
}

/// Compares two recorded runs; `Err` says where they first differ.
///
/// # Errors
/// A description of the first difference: replies (with the offset and
/// both texts from there), bodies, counts or close reason.
pub fn compare(a: &Replay, b: &Replay) -> Result<(), String> {
    if a.replies != b.replies {
        let at = a
            .replies
            .iter()
            .zip(&b.replies)
            .position(|(x, y)| x != y)
            .unwrap_or(a.replies.len().min(b.replies.len()));
        return Err(format!(
            "replies differ at byte {at}:\n  {:?}\nvs\n  {:?}",
            String::from_utf8_lossy(&a.replies[at..]),
            String::from_utf8_lossy(&b.replies[at..]),
        ));
    }
    if a.bodies != b.bodies {
        let mut e = String::from("stored bodies differ:");
        for (i, (x, y)) in a.bodies.iter().zip(&b.bodies).enumerate() {
            if x != y {
                let _ = write!(e, " message {i}: {} vs {} bytes;", x.len(), y.len());
            }
        }
        let _ = write!(e, " {} vs {} messages", a.bodies.len(), b.bodies.len());
        return Err(e);
    }
    if a != b {
        return Err(format!("outcomes differ: {a:?} vs {b:?}"));
    }
    Ok(())
}

/// The replay's runtime state.
struct Driver<'c> {
    cfg: &'c SmtpConfig,
    s: Session,
    now: Instant,
    /// Unconsumed input, as a connection's read buffer.
    buf: Vec<u8>,
    /// Keep replies and bodies, or only count them.
    record: bool,
    /// A message is open: its length so far, and its bytes when recording.
    open: Option<(u64, Vec<u8>)>,
    /// Recipients of the open message, counted at `MessageStart`.
    rcpts: usize,
    fail_next: Option<CommitError>,
    r: Replay,
}

fn drive(
    cfg: &Rc<SmtpConfig>,
    lifetime: Duration,
    steps: &[Step<'_>],
    read: usize,
    record: bool,
    tally: Option<std::sync::Arc<super::session::CommandTally>>,
    out: &mut Vec<u8>,
) -> Replay {
    // A runtime owns the clock; this one reads it once, for a base that
    // the script's advances move (the engine only compares instants).
    let now = Instant::now();
    let mut d = Driver {
        cfg,
        s: Session::new(Rc::clone(cfg), ClientInfo::default(), now, lifetime, out),
        now,
        buf: Vec::with_capacity(read.clamp(1, 1 << 20) * 2),
        record,
        open: None,
        rcpts: 0,
        fail_next: None,
        r: Replay::default(),
    };
    if let Some(t) = tally {
        d.s.count_commands_into(t);
    }
    for step in steps {
        if d.r.closed.is_some() {
            break;
        }
        match *step {
            Step::Bytes(bytes) => {
                for chunk in bytes.chunks(read.max(1)) {
                    d.buf.extend_from_slice(chunk);
                    d.pump(out);
                    if !record {
                        out.clear();
                    }
                    if d.r.closed.is_some() {
                        break;
                    }
                }
            }
            Step::Advance(by) => d.advance(by, out),
            Step::Shutdown => {
                if d.s.handle_shutdown(out) {
                    d.closed(d.s.close_reason().expect("closed after handle_shutdown"));
                }
            }
            Step::HardStop => {
                let reason = d.s.handle_hard_stop(out);
                d.closed(reason);
            }
            Step::FailNextCommit(e) => d.fail_next = Some(e),
        }
        // As a connection does after any wake-up, let the session look at
        // what it holds (a shutdown may now close an idle session).
        if d.r.closed.is_none() && !matches!(step, Step::Bytes(_)) {
            d.pump(out);
        }
    }
    d.r
}

impl Driver<'_> {
    /// Hands the session all unconsumed input until it needs more.
    fn pump(&mut self, out: &mut Vec<u8>) {
        let mut pos = 0;
        while self.r.closed.is_none() {
            let (used, ev) = self.s.handle_input(self.now, &self.buf[pos..], out);
            assert!(pos + used <= self.buf.len(), "consumed past the input");
            pos += used;
            match ev {
                Event::NeedInput => break,
                Event::MessageStart => {
                    assert!(self.open.is_none(), "MessageStart inside a message");
                    self.open = Some((0, Vec::new()));
                    // As a connection does once its record holds the envelope.
                    self.rcpts = self.s.envelope().rcpt_count();
                    assert!(self.rcpts > 0, "MessageStart without recipients");
                    self.s.shed_envelope();
                }
                Event::Body(b) => {
                    let (n, body) = self.open.as_mut().expect("Body outside a message");
                    assert!(!b.is_empty(), "empty Body event");
                    *n += b.len() as u64;
                    assert!(
                        *n <= self.cfg.max_message_bytes,
                        "body past max_message_bytes"
                    );
                    if self.record {
                        body.extend_from_slice(b);
                    }
                }
                Event::MessageAbort => {
                    self.open.take().expect("MessageAbort outside a message");
                    self.r.aborts += 1;
                }
                Event::MessageEnd => self.commit(out),
                // No directory here: a remote lookup answers as a failed one.
                Event::Lookup => self.s.handle_lookup(Err(LookupFailed), out),
                // Never offered here (no `set_tls`); answered as unavailable.
                Event::Starttls => self.s.handle_starttls(false, out),
                // Never offered here (no `set_submission`); no users to ask.
                Event::Auth => self
                    .s
                    .handle_auth(crate::protocol::AuthVerdict::Unavailable, out),
                Event::Close(reason) => self.closed(reason),
            }
        }
        self.buf.drain(..pos);
        let carry_limit = self
            .cfg
            .max_command_line_bytes
            .max(self.cfg.max_text_line_bytes);
        assert!(
            self.r.closed.is_some() || self.buf.len() <= carry_limit,
            "carried {} bytes of a partial line",
            self.buf.len()
        );
    }

    /// Commits the message that just ended, or fails it as scripted.
    fn commit(&mut self, out: &mut Vec<u8>) {
        let (n, body) = self.open.take().expect("MessageEnd outside a message");
        assert_eq!(
            n,
            self.s.body_bytes(),
            "delivered bytes differ from the session's count"
        );
        // Shedding kept the count and the recipients the log line names.
        let env = self.s.envelope();
        assert_eq!(env.rcpt_count(), self.rcpts, "recipient count changed");
        assert_eq!(
            env.rcpts().len(),
            self.rcpts.min(SHED_KEEP_RCPTS),
            "a shed envelope kept the wrong recipients"
        );
        match self.fail_next.take() {
            Some(e) => {
                self.r.commit_failures += 1;
                self.s.handle_commit(Err(e), out);
            }
            None => {
                self.r.messages += 1;
                self.r.body_bytes += n;
                if self.record {
                    self.r.bodies.push(body);
                }
                self.s.handle_commit(Ok("Q"), out);
            }
        }
    }

    /// Moves the clock; a timeout is handled exactly when it is due.
    fn advance(&mut self, by: Duration, out: &mut Vec<u8>) {
        self.now += by;
        let due = self.s.poll_timeout().is_some_and(|t| self.now >= t);
        match self.s.handle_timeout(self.now, out) {
            Some(reason) => {
                assert!(due, "handle_timeout closed before poll_timeout was due");
                self.closed(reason);
            }
            None => assert!(!due, "poll_timeout was due but handle_timeout did nothing"),
        }
    }

    /// The session closed: any open message is abandoned.
    fn closed(&mut self, reason: CloseReason) {
        assert_eq!(self.s.close_reason(), Some(reason), "close reason mismatch");
        self.open = None;
        self.r.closed = Some(reason);
    }
}

/// The fuzz targets' bodies. They live here, not in `fuzz/`, so that the
/// ordinary test run replays committed crash inputs through the same code
/// (`fuzz/regressions/`, see `protocol::tests`).
pub mod fuzz {
    use super::*;
    use crate::config::BareNewline;

    /// Deadlines far enough apart that each advance below crosses a
    /// different one.
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
    const DATA_TIMEOUT: Duration = Duration::from_secs(600);
    const LIFETIME: Duration = Duration::from_secs(1000);

    fn config(knobs: u8, max_message_bytes: u64) -> Rc<SmtpConfig> {
        Rc::new(SmtpConfig {
            accepted_domains: vec!["test".into()],
            max_message_bytes,
            command_timeout: COMMAND_TIMEOUT,
            data_timeout: DATA_TIMEOUT,
            bare_newline: if knobs & 1 == 0 {
                BareNewline::Reject
            } else {
                BareNewline::Accept
            },
            // Whole and split runs must agree, and this rule is about
            // where reads end; the engine tests cover it.
            forbid_pipelined_data: false,
            // The server's own error limit, so that closing on errors is
            // part of what is fuzzed.
            ..SmtpConfig::default()
        })
    }

    /// Runs `steps` whole (each `Bytes` step one read) and in reads of
    /// `read` bytes; replies, bodies and outcome must be identical.
    fn split_invariant(cfg: &Rc<SmtpConfig>, steps: &[Step<'_>], read: usize) {
        let whole = record(cfg, LIFETIME, steps, usize::MAX);
        let split = record(cfg, LIFETIME, steps, read);
        if let Err(e) = compare(&whole, &split) {
            panic!("reads of {read} bytes changed the outcome: {e}");
        }
    }

    /// A non-byte step picked by `k` (`None` for most values).
    fn action(k: u8) -> Option<Step<'static>> {
        Some(match k % 16 {
            0 => Step::Advance(Duration::from_secs(60)),
            1 => Step::Advance(COMMAND_TIMEOUT + Duration::from_secs(1)),
            2 => Step::Advance(DATA_TIMEOUT + Duration::from_secs(1)),
            3 => Step::Shutdown,
            4 => Step::HardStop,
            5 => Step::FailNextCommit(CommitError::SpoolFull),
            6 => Step::FailNextCommit(CommitError::Io),
            _ => return None,
        })
    }

    /// Target `session`: the first byte picks policy and read size, the
    /// second where to cut the input, the third the steps before it, at
    /// the cut and at the end (commit failures, clock, shutdown); the rest
    /// is raw input. `[knobs, 0, 0x77, input..]` is the whole input in one
    /// step with no others.
    pub fn raw(data: &[u8]) {
        let [knobs, cut, plan, input @ ..] = data else {
            return;
        };
        let cut = input.len() * usize::from(*cut) / 256;
        let mut steps = Vec::with_capacity(4);
        steps.extend(action(plan & 0x0f));
        steps.push(Step::Bytes(&input[..cut]));
        steps.extend(action(plan >> 4));
        steps.push(Step::Bytes(&input[cut..]));
        steps.extend(action(plan.rotate_left(2)));
        split_invariant(
            &config(*knobs, 2000),
            &steps,
            1 + usize::from(knobs >> 1) * 37,
        );
    }

    /// Pieces of SMTP that `smtp_alphabet` strings together.
    const ALPHABET: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
        b"MAIL FROM:<a@b> BODY=BINARYMIME SMTPUTF8\r\n",
        b"RCPT TO:<u@test>\r\n",
        b"RCPT TO:<u@other>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"DATA\r\n",
        b"BDAT 7\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT 3 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b".\r\n",
        b"..\r\n",
        b".",
        b"\r\n",
        b"\r",
        b"\n",
        b"x",
        b"text line\r\n",
        &[b'L'; 300],
        b"\xc3\xa9",
        b"\0",
    ];

    /// Pick bytes from here on are steps ([`action`]) rather than pieces,
    /// where `action` has one; below it, pieces as before the steps were
    /// added (so committed regression inputs keep their meaning).
    const FIRST_ACTION: u8 = 240;

    /// Target `session_smtp`: the first byte picks policy and read size,
    /// each further byte a piece of SMTP or (from byte 240 up) a
    /// step such as a clock advance, shutdown or failing commit, so the
    /// fuzzer reaches DATA, BDAT, the limits and the deadlines quickly.
    pub fn smtp_alphabet(data: &[u8]) {
        let Some((&knobs, picks)) = data.split_first() else {
            return;
        };
        // The bytes, with the steps between them at their offsets.
        let mut input = Vec::new();
        let mut actions = Vec::new();
        for &p in picks {
            match action(p.wrapping_sub(FIRST_ACTION)).filter(|_| p >= FIRST_ACTION) {
                Some(a) => actions.push((input.len(), a)),
                None => input.extend_from_slice(ALPHABET[usize::from(p) % ALPHABET.len()]),
            }
        }
        let mut steps = Vec::with_capacity(2 * actions.len() + 1);
        let mut from = 0;
        for (at, a) in actions {
            steps.push(Step::Bytes(&input[from..at]));
            steps.push(a);
            from = at;
        }
        steps.push(Step::Bytes(&input[from..]));
        split_invariant(
            &config(knobs, 1500),
            &steps,
            1 + usize::from(knobs >> 1) * 13,
        );
    }
}
