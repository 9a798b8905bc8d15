//! `ringmx serve --ship [NAME=]URL`: the server runs each consumer as a
//! child process `ringmx ship --spool DIR --to URL --name NAME --follow`
//! and keeps it running.
//!
//! Why a child and not a thread: a sink may own a tokio runtime, block, or
//! panic, and the release build aborts on panic; in a process of its own
//! none of that reaches the shards. Each child gets a supervising std
//! thread (never a shard thread) that restarts it when it exits, after a
//! backoff of 1 s doubling to 60 s (back to 1 s once a child has run for a
//! minute), logging each exit. Children run in their own process group, so
//! a Ctrl-C on the terminal reaches only the server; on shutdown, once the
//! shards have stopped, each child gets SIGTERM (it finishes its batch and
//! writes its checkpoints) and is waited for up to [`STOP_GRACE`], then
//! SIGKILLed (a next hop that never answers must not hold the shutdown up;
//! the checkpoints make a kill safe: at most two batches ship again).
//! Dropping the [`Supervisor`] (an error path of `serve`) stops them too.
//!
//! A child never outlives its server: it asks the kernel for SIGTERM when
//! its parent dies (`PR_SET_PDEATHSIG`, set between fork and exec), so a
//! server killed with SIGKILL or aborted by a panic leaves no orphan
//! holding the consumer's lock. The kernel sends it when the *thread* that
//! forked the child ends, so children are spawned by their supervising
//! thread, which lives until its child has exited.
//!
//! Settings: `server.ship` ([`ShipTarget`]), from `--ship [NAME=]URL`
//! (repeatable) or TOML `[[server.ship]]` tables with `to` and `name`.

use std::fmt;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::checkpoint::validate_name;
use super::sinks::SCHEMES;

/// One consumer the server runs: where it ships and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipTarget {
    /// The consumer's name (`ringmx ship --name`).
    pub name: String,
    /// The sink URL (`ringmx ship --to`).
    pub to: String,
}

impl FromStr for ShipTarget {
    type Err = String;

    /// `URL` (named after its scheme) or `NAME=URL`. A `=` after a `:`
    /// belongs to the URL (`nats://h/s?stream=X`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, to) = match s.split_once('=') {
            Some((n, u)) if !n.contains(':') => (n.to_owned(), u.to_owned()),
            _ => (
                s.split_once(':').map_or("", |(a, _)| a).to_owned(),
                s.to_owned(),
            ),
        };
        let t = ShipTarget { name, to };
        t.check()?;
        Ok(t)
    }
}

impl fmt::Display for ShipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.to)
    }
}

impl ShipTarget {
    /// A known sink scheme and a usable name.
    ///
    /// # Errors
    /// What is wrong, and the form to use.
    pub fn check(&self) -> Result<(), String> {
        let scheme = self.to.split_once(':').map_or("", |(s, _)| s);
        if !SCHEMES.contains(&scheme) {
            return Err(format!(
                "ship {:?}: unknown sink; give [NAME=]URL with a URL of: {}",
                self.to,
                SCHEMES
                    .iter()
                    .map(|s| format!("{s}:..."))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        validate_name(&self.name).map_err(|e| format!("ship {:?}: {e}", self.to))
    }
}

/// In TOML: `{ to = "URL", name = "NAME" }` (name optional), or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum TargetForm {
    Str(String),
    Table {
        to: String,
        #[serde(default)]
        name: Option<String>,
    },
}

#[derive(Serialize)]
struct TargetTable<'a> {
    to: &'a str,
    name: &'a str,
}

impl<'de> Deserialize<'de> for ShipTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = match TargetForm::deserialize(d)? {
            TargetForm::Str(s) => return s.parse().map_err(serde::de::Error::custom),
            TargetForm::Table { to, name } => ShipTarget {
                name: name.unwrap_or_else(|| to.split_once(':').map_or("", |(s, _)| s).to_owned()),
                to,
            },
        };
        t.check().map_err(serde::de::Error::custom)?;
        Ok(t)
    }
}

impl Serialize for ShipTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TargetTable {
            to: &self.to,
            name: &self.name,
        }
        .serialize(s)
    }
}

/// Checks a list of targets: each valid, names unique.
///
/// # Errors
/// The first problem.
pub fn check_all(targets: &[ShipTarget]) -> Result<(), String> {
    for (i, t) in targets.iter().enumerate() {
        t.check()?;
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(format!(
                "two ship targets are named {:?}: give each its own, --ship NAME=URL",
                t.name
            ));
        }
    }
    Ok(())
}

/// The first wait before a restart.
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// The longest.
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A child that ran this long resets the backoff: it was working.
const RAN_WELL: Duration = Duration::from_secs(60);
/// How long a child has, after SIGTERM, to finish its batch and exit before
/// it is SIGKILLed: a batch to a next hop that answers ends well within
/// this; one that never answers would hold the shutdown up for the sink's
/// own timeouts (minutes) otherwise.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The supervising threads; [`Supervisor::stop`] (or dropping it) ends them
/// and their children.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts one child per target, shipping the spool at `spool`, each
    /// with a thread that restarts it. `exe` is the `ringmx` binary.
    pub fn start(exe: &std::path::Path, spool: &std::path::Path, targets: &[ShipTarget]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = targets
            .iter()
            .filter_map(|t| {
                let mut cmd = Command::new(exe);
                cmd.arg("ship")
                    .arg("--spool")
                    .arg(spool)
                    .args(["--to", &t.to, "--name", &t.name, "--follow"]);
                let (stop, name) = (Arc::clone(&stop), t.name.clone());
                std::thread::Builder::new()
                    .name(format!("ship-{}", t.name))
                    .spawn(move || supervise(&name, cmd, &stop))
                    .map_err(|e| crate::error!("ship {}: cannot start its supervisor: {e}", t.name))
                    .ok()
            })
            .collect();
        Self { stop, threads }
    }

    /// SIGTERM to every child, then waits for each to exit (at most
    /// [`STOP_GRACE`], then SIGKILL).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` in short steps; true if `stop` was set meanwhile.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.load(Ordering::Relaxed)
}

fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: between fork and exec the closure only makes system calls
    // (prctl, getppid) and builds an error from a number: no allocation,
    // no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The server may have died before the prctl: then nothing
            // would ever signal this child.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    // Its own process group: a terminal's Ctrl-C goes to the server,
    // which stops the children itself once the shards are done.
    cmd.stdin(Stdio::null()).process_group(0).spawn()
}

/// SIGTERM, then up to [`STOP_GRACE`] for `child` to exit, then SIGKILL.
fn stop_child(name: &str, child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let until = Instant::now() + STOP_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                crate::info!("ship {name}: stopped ({})", describe(Some(s)));
                return;
            }
            Ok(None) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => break,
            Err(e) => {
                crate::error!("ship {name}: waiting for pid {pid}: {e}");
                break;
            }
        }
    }
    crate::warn!(
        "ship {name}: `ringmx ship` (pid {pid}) still runs {STOP_GRACE:?} after SIGTERM; \
         killing it (its checkpoints hold: at most two batches ship again)"
    );
    let _ = child.kill();
    let s = child.wait();
    crate::info!("ship {name}: stopped ({})", describe(s.ok()));
}

fn supervise(name: &str, mut cmd: Command, stop: &AtomicBool) {
    let mut backoff = RESTART_MIN;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut child = match spawn(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                crate::error!("ship {name}: cannot start `ringmx ship`: {e}; again in {backoff:?}");
                if sleep_unless(stop, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(RESTART_MAX);
                continue;
            }
        };
        crate::info!("ship {name}: started `ringmx ship` (pid {})", child.id());
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(e) => {
                    crate::error!("ship {name}: waiting for pid {}: {e}", child.id());
                    break None;
                }
            }
            if stop.load(Ordering::Relaxed) {
                stop_child(name, &mut child);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if started.elapsed() >= RAN_WELL {
            backoff = RESTART_MIN;
        }
        crate::warn!(
            "ship {name}: `ringmx ship` exited ({}); restarting in {backoff:?}",
            describe(status)
        );
        if sleep_unless(stop, backoff) {
            return;
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}

fn describe(s: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match s {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_flags_and_toml() {
        let t: ShipTarget = "maildir:/srv/in".parse().unwrap();
        assert_eq!(
            (t.name.as_str(), t.to.as_str()),
            ("maildir", "maildir:/srv/in")
        );
        let t: ShipTarget = "box=maildir:/a=b".parse().unwrap();
        assert_eq!((t.name.as_str(), t.to.as_str()), ("box", "maildir:/a=b"));
        assert!("kafka://x"
            .parse::<ShipTarget>()
            .unwrap_err()
            .contains("maildir:"));
        assert!("a/b=maildir:/x".parse::<ShipTarget>().is_err());
        #[derive(Deserialize)]
        struct T {
            ship: Vec<ShipTarget>,
        }
        let t: T = toml::from_str(
            "[[ship]]\nto = \"maildir:/a\"\nname = \"one\"\n[[ship]]\nto = \"maildir:/b\"\n",
        )
        .unwrap();
        assert_eq!(t.ship[0].name, "one");
        assert_eq!(t.ship[1].name, "maildir");
        let dup = [t.ship[0].clone(), t.ship[0].clone()];
        assert!(check_all(&dup).unwrap_err().contains("NAME=URL"));
        assert!(toml::from_str::<T>("[[ship]]\nto = \"x:/a\"\n").is_err());
        // In the server's settings file.
        let c: crate::config::Config =
            toml::from_str("[[server.ship]]\nto = \"maildir:/a\"\nname = \"box\"\n").unwrap();
        assert_eq!(
            c.server.ship,
            ["box=maildir:/a".parse::<ShipTarget>().unwrap()]
        );
        c.validate().unwrap();
    }
}
