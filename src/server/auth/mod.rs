//! Submission with SMTP AUTH (RFC 6409, RFC 4954): the users file, the
//! password check off the shard, failed attempts per client address.
//!
//! The engine runs the AUTH dialogue and says when it has credentials
//! (`Event::Auth`); `answer` queues them for the password threads (an
//! argon2 or bcrypt check takes milliseconds to tens of milliseconds of
//! CPU, which must not stall the shard's other connections) and hands the
//! verdict back. The threads are plain, unpinned threads shared by the
//! shards, at most half the CPUs, so a flood of AUTH attempts leaves the
//! shards CPU; their queue is bounded (a full queue answers `454 4.7.0` at
//! once) and a session waits no longer than its command timeout, nor past
//! the hard stop. The users live in an `Arc`
//! swapped on SIGHUP ([`reload`]); a bad new file is logged and the old
//! users kept. Failures are counted per client address across shards
//! ([`failures`]); past submission.auth_max_failures the client gets
//! `421 4.7.0`, at AUTH and at connect, until the window ends.
//!
//! Passwords never reach a log line: not here, and the engine records AUTH
//! refusals without their argument.

pub mod failures;
pub mod users;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_lite::future;
use glommio::timer::sleep;

use super::lookup::{PendingAnswer, Slot};
use super::shard::Shard;
use crate::config::SubmissionConfig;
use crate::protocol::{AuthVerdict, Session};
use failures::AuthFailures;
use users::{Users, UsersError};

/// Where the submission listeners sit in a shard's listener list: after
/// `server.listen`, `server.listen_proxy` and `tls.listen`, the
/// `submission.listen` ones from `from`, the `submission.listen_tls` ones
/// from `tls_from`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Roles {
    pub(crate) from: usize,
    pub(crate) tls_from: usize,
}

impl Roles {
    /// No submission listener: both past any index.
    pub(crate) fn none() -> Roles {
        Roles {
            from: usize::MAX,
            tls_from: usize::MAX,
        }
    }
}

/// Checks queued per password thread before new ones get `454` at once:
/// with doveadm's argon2id (about 80 ms) a full queue is 2.5 s of work.
const QUEUE_PER_THREAD: usize = 32;

/// One password check for the threads.
struct Check {
    users: Arc<Users>,
    name: String,
    password: Vec<u8>,
    reply: Arc<Slot<bool>>,
}

/// Everything AUTH needs, shared by every shard.
#[derive(Debug)]
pub struct AuthService {
    users: Mutex<Arc<Users>>,
    /// The password threads' queue.
    checks: SyncSender<Check>,
    /// Its other end until [`AuthService::start`] hands it to the threads.
    unstarted: Mutex<Option<mpsc::Receiver<Check>>>,
    /// Failed attempts per client address.
    pub failures: AuthFailures,
    /// submission.sender_login_match.
    pub sender_login_match: bool,
}

impl AuthService {
    /// Reads the users file of `cfg`; `None` when no submission listener
    /// is configured.
    ///
    /// # Errors
    /// The users file cannot be read or has a bad line (file:line).
    pub fn from_config(cfg: &SubmissionConfig) -> Result<Option<AuthService>, UsersError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let users = Users::load(&cfg.users)?;
        let (checks, rx) = mpsc::sync_channel(password_threads() * QUEUE_PER_THREAD);
        Ok(Some(AuthService {
            users: Mutex::new(Arc::new(users)),
            checks,
            unstarted: Mutex::new(Some(rx)),
            failures: AuthFailures::new(cfg.auth_max_failures, cfg.auth_failure_window),
            sender_login_match: cfg.sender_login_match,
        }))
    }

    /// Starts the password threads (once; after the server has blocked
    /// its signals, so that SIGHUP and SIGTERM reach only the signal
    /// thread).
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn start(&self) -> std::io::Result<()> {
        let Some(rx) = self
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..password_threads() {
            let rx = Arc::clone(&rx);
            // Detached: each ends when the service (its queue's sender)
            // is dropped.
            std::thread::Builder::new()
                .name(format!("ringmx-auth{i}"))
                .spawn(move || check_passwords(&rx))?;
        }
        Ok(())
    }

    /// The current users.
    pub fn users(&self) -> Arc<Users> {
        // A poisoned lock still holds a valid Arc: the swap cannot panic.
        Arc::clone(&self.users.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn store(&self, users: Users) {
        *self.users.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
    }

    /// Whether `ip` is over the failure limit now (checked at connect on
    /// submission listeners).
    pub fn blocked(&self, ip: Option<IpAddr>, now: Instant) -> bool {
        ip.is_some_and(|ip| self.failures.blocked(ip, now))
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("Check").field("name", &self.name).finish()
    }
}

/// Half the CPUs, at least one: hashing never takes every core from the
/// shards.
fn password_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn check_passwords(rx: &Mutex<mpsc::Receiver<Check>>) {
    loop {
        // One thread at a time waits on the queue; the others on the lock.
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(mut job) = job else { return };
        // The session stopped waiting (its timeout, the hard stop).
        if Arc::strong_count(&job.reply) > 1 {
            let ok = job.users.verify(&job.name, &job.password);
            job.reply.set(ok);
        }
        job.password.iter_mut().for_each(|b| *b = 0);
    }
}

/// SIGHUP: rereads the users file; swaps the new users in only if the file
/// is valid, and logs what happened either way.
pub fn reload(svc: &AuthService, path: &Path) {
    match Users::load(path) {
        Ok(u) => {
            let what = u.describe();
            svc.store(u);
            crate::info!("SIGHUP: users file {} reloaded: {what}", path.display());
        }
        Err(e) => {
            let kept = svc.users().len();
            crate::error!("SIGHUP: {e}; keeping the previous users ({kept})");
        }
    }
}

/// Answers the session's `Event::Auth`: queues its credentials for the
/// password threads, waits for the verdict (at most the session's command
/// timeout, and not past the hard stop: `454 4.7.0` then), counts a
/// failure against the client's address, and hands the verdict to the
/// session (which writes the reply). The session's peer names the log
/// line; the password never does, nor the user name of a failed attempt
/// (users type passwords there too).
pub(crate) async fn answer(shard: &Shard, session: &mut Session, out: &mut Vec<u8>) {
    let Some((user, password)) = session.pending_auth() else {
        return;
    };
    let Some(svc) = shard.auth.as_ref() else {
        // Only submission sessions offer AUTH, and they have the service.
        session.handle_auth(AuthVerdict::Unavailable, out);
        return;
    };
    let peer = session.client().peer;
    let ip = peer.map(|p| p.ip());
    if svc.blocked(ip, Instant::now()) {
        log(shard.id, peer, "blocked", None);
        session.handle_auth(AuthVerdict::Blocked, out);
        return;
    }
    let name = user.to_owned();
    let (reply, pending) = PendingAnswer::new();
    let check = Check {
        users: svc.users(),
        name: name.clone(),
        password: password.to_vec(),
        reply,
    };
    if svc.checks.try_send(check).is_err() {
        crate::warn!(
            "shard {}: password check queue full; answering 454",
            shard.id
        );
        session.handle_auth(AuthVerdict::Unavailable, out);
        return;
    }
    let limit = session.read_timeout();
    let ok = future::or(async { Some(pending.await) }, async {
        future::or(sleep(limit), shard.hard_stop.wait()).await;
        None
    })
    .await;
    let Some(ok) = ok else {
        log(shard.id, peer, "unanswered", None);
        session.handle_auth(AuthVerdict::Unavailable, out);
        return;
    };
    let verdict = match ok {
        true => AuthVerdict::Accepted,
        false if ip.is_some_and(|ip| svc.failures.fail(ip, Instant::now())) => AuthVerdict::Blocked,
        false => AuthVerdict::Rejected,
    };
    let what = match verdict {
        AuthVerdict::Accepted => "ok",
        AuthVerdict::Blocked => "failed-now-blocked",
        _ => "failed",
    };
    log(shard.id, peer, what, ok.then_some(name.as_str()));
    session.handle_auth(verdict, out);
}

fn log(shard: u32, peer: Option<std::net::SocketAddr>, what: &str, user: Option<&str>) {
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    match user {
        // Printable ASCII only: a user name is the client's text.
        Some(u) => crate::info!(
            "auth peer={peer} shard={shard} result={what} user={}",
            u.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect::<String>()
        ),
        None => crate::info!("auth peer={peer} shard={shard} result={what}"),
    }
}
