//! Submission with SMTP AUTH (RFC 6409, RFC 4954): the users file, the
//! password check off the shard, failed attempts per client address.
//!
//! The engine runs the AUTH dialogue and says when it has credentials
//! (`Event::Auth`); `answer` checks them on the shard's blocking thread
//! (`glommio::executor().spawn_blocking`: an argon2 or bcrypt check takes
//! tens of milliseconds of CPU, which must not stall the shard's other
//! connections) and hands the verdict back. The users live in an `Arc`
//! swapped on SIGHUP ([`reload`]); a bad new file is logged and the old
//! users kept. Failures are counted per client address across shards
//! ([`failures`]); past submission.auth_max_failures the client gets
//! `421 4.7.0`, at AUTH and at connect, until the window ends.
//!
//! Passwords never reach a log line: not here, and the engine records AUTH
//! refusals without their argument.

pub mod failures;
pub mod users;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Everything AUTH needs, shared by every shard.
#[derive(Debug)]
pub struct AuthService {
    users: Mutex<Arc<Users>>,
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
        Ok(Some(AuthService {
            users: Mutex::new(Arc::new(users)),
            failures: AuthFailures::new(cfg.auth_max_failures, cfg.auth_failure_window),
            sender_login_match: cfg.sender_login_match,
        }))
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

/// Answers the session's `Event::Auth`: checks its credentials on the
/// blocking thread, counts a failure against the client's address, and
/// hands the verdict to the session (which writes the reply). `shard_id`
/// and the session's peer name the log line; the password never does, nor
/// the user name of a failed attempt (users type passwords there too).
pub(crate) async fn answer(
    svc: Option<&Arc<AuthService>>,
    shard_id: u32,
    session: &mut Session,
    out: &mut Vec<u8>,
) {
    let Some((user, password)) = session.pending_auth() else {
        return;
    };
    let Some(svc) = svc else {
        // Only submission sessions offer AUTH, and they have the service.
        session.handle_auth(AuthVerdict::Unavailable, out);
        return;
    };
    let peer = session.client().peer;
    let ip = peer.map(|p| p.ip());
    if svc.blocked(ip, Instant::now()) {
        log(shard_id, peer, "blocked", None);
        session.handle_auth(AuthVerdict::Blocked, out);
        return;
    }
    let users = svc.users();
    let (name, mut pw) = (user.to_owned(), password.to_vec());
    let (ok, name) = glommio::executor()
        .spawn_blocking(move || {
            let ok = users.verify(&name, &pw);
            pw.iter_mut().for_each(|b| *b = 0);
            (ok, name)
        })
        .await;
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
    log(shard_id, peer, what, ok.then_some(name.as_str()));
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
