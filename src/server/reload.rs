//! SIGHUP: re-read the settings and apply those that can change at run
//! time; the rest need a restart, and the log says which changed.
//!
//! Applied at run time: the `[smtp]` table (accepted domains, message and
//! line limits, timeouts, hostname, policies) except the `recipient_*`
//! settings (the lookup threads, caches and the map's parse options are
//! built once at start; the map file itself reloads, see
//! [`super::recipients`]), and from `[server]` the log level and format and
//! the connection lifetime. Everything else (listeners, cores, spool,
//! buffers, limits on connections, tables added later) is logged as
//! changed-but-not-applied.
//!
//! The new file is read and validated first (the caller's `reread`, the
//! same defaults-file-flags path as the start); on any error the running
//! settings stay and the log says why. The shards read the reloadable
//! settings through [`Live`]: the signal thread publishes a new snapshot
//! under a mutex it holds only to swap an `Arc`, then bumps a generation;
//! each shard compares the generation (one atomic load) when a connection
//! starts and copies a new snapshot only after a change. A connection keeps
//! the settings it started with.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, ConfigError, SmtpConfig};

/// Re-reads the configuration as the process was started (file, then
/// flags), validated.
pub type Reread = Box<dyn FnMut() -> Result<Config, ConfigError> + Send>;

/// The settings a connection takes when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// What the session engine reads.
    pub smtp: SmtpConfig,
    /// `server.max_connection_lifetime`.
    pub max_connection_lifetime: Duration,
}

impl Snapshot {
    fn of(cfg: &Config) -> Snapshot {
        Snapshot {
            smtp: cfg.smtp.clone(),
            max_connection_lifetime: cfg.server.max_connection_lifetime,
        }
    }
}

/// The current [`Snapshot`], shared by the signal thread and every shard.
#[derive(Debug)]
pub struct Live {
    generation: AtomicU64,
    current: Mutex<Arc<Snapshot>>,
}

impl Live {
    /// The snapshot of the settings at start.
    pub fn new(cfg: &Config) -> Live {
        Live {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Snapshot::of(cfg))),
        }
    }

    fn load(&self) -> Arc<Snapshot> {
        // Only a swap happens under the lock; a poisoned one still holds
        // a whole snapshot.
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn publish(&self, s: Snapshot) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// One shard's copy of the [`Live`] snapshot, refreshed after a reload.
pub(crate) struct ShardLive {
    live: Arc<Live>,
    seen: Cell<u64>,
    smtp: RefCell<Rc<SmtpConfig>>,
    lifetime: Cell<Duration>,
}

impl ShardLive {
    pub(crate) fn new(live: Arc<Live>) -> ShardLive {
        let seen = live.generation.load(Ordering::Acquire);
        let s = live.load();
        ShardLive {
            live,
            seen: Cell::new(seen),
            smtp: RefCell::new(Rc::new(s.smtp.clone())),
            lifetime: Cell::new(s.max_connection_lifetime),
        }
    }

    /// The settings for a connection starting now.
    pub(crate) fn get(&self) -> (Rc<SmtpConfig>, Duration) {
        // The generation first: a swap in between is taken next time.
        let g = self.live.generation.load(Ordering::Acquire);
        if g != self.seen.get() {
            let s = self.live.load();
            *self.smtp.borrow_mut() = Rc::new(s.smtp.clone());
            self.lifetime.set(s.max_connection_lifetime);
            self.seen.set(g);
        }
        (Rc::clone(&self.smtp.borrow()), self.lifetime.get())
    }

    /// The SMTP settings of the latest snapshot this shard has taken.
    pub(crate) fn smtp(&self) -> Rc<SmtpConfig> {
        Rc::clone(&self.smtp.borrow())
    }
}

/// Whether `table.key` is applied by a reload (see the module docs).
fn reloadable(table: &str, key: &str) -> bool {
    match table {
        "smtp" => !key.starts_with("recipient_"),
        "server" => matches!(key, "log_level" | "log_format" | "max_connection_lifetime"),
        _ => false,
    }
}

/// What a reload does, for its log line and for tests.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The file could not be used; the running settings stay.
    Kept(String),
    /// Applied (`changed`: the keys that changed, `table.key`) and changed
    /// in the file but not applied (`restart`).
    Applied {
        /// Reloadable settings that changed.
        changed: Vec<String>,
        /// Settings that changed but need a restart.
        restart: Vec<String>,
    },
}

/// `running` with the reloadable settings of `new`, checked; the keys that
/// changed and those that need a restart.
fn merge(running: &Config, new: &Config) -> Result<(Config, Outcome), String> {
    let value = |c: &Config| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(_) => Err("the settings are not a table".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let (old_v, new_v) = (value(running)?, value(new)?);
    let mut merged = old_v.clone();
    let (mut changed, mut restart) = (Vec::new(), Vec::new());
    for (table, nt) in &new_v {
        let (Some(toml::Value::Table(nt)), Some(toml::Value::Table(ot))) =
            (Some(nt), old_v.get(table))
        else {
            continue;
        };
        // Keys absent from one side are empty lists or tables: compare as such.
        let keys: std::collections::BTreeSet<&String> = nt.keys().chain(ot.keys()).collect();
        for key in keys {
            if nt.get(key) == ot.get(key) {
                continue;
            }
            let name = format!("{table}.{key}");
            if !reloadable(table, key) {
                restart.push(name);
                continue;
            }
            changed.push(name);
            if let Some(toml::Value::Table(mt)) = merged.get_mut(table) {
                match nt.get(key) {
                    Some(v) => mt.insert(key.clone(), v.clone()),
                    None => mt.remove(key),
                };
            }
        }
    }
    let cfg: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    // The new reloadable settings against the running restart-only ones
    // (e.g. a longer command line against the running read buffer).
    cfg.validate().map_err(|e| {
        format!("{e} (with the running values of the settings that need a restart)")
    })?;
    Ok((cfg, Outcome::Applied { changed, restart }))
}

/// Re-reads the settings and publishes what can change; logs the outcome.
pub fn reload(live: &Live, running: &mut Config, reread: &mut Reread) -> Outcome {
    let merged = reread()
        .map_err(|e| e.to_string())
        .and_then(|new| merge(running, &new));
    let outcome = match merged {
        Err(why) => {
            crate::error!("SIGHUP: settings not reloaded, the running ones stay: {why}");
            return Outcome::Kept(why);
        }
        Ok((cfg, outcome)) => {
            crate::log::set_level(cfg.server.log_level);
            crate::log::set_format(cfg.server.log_format);
            live.publish(Snapshot::of(&cfg));
            *running = cfg;
            outcome
        }
    };
    if let Outcome::Applied { changed, restart } = &outcome {
        if changed.is_empty() {
            crate::info!("SIGHUP: settings reloaded: none changed");
        } else {
            crate::info!("SIGHUP: settings reloaded: {} changed", changed.join(" "));
        }
        if !restart.is_empty() {
            crate::warn!(
                "SIGHUP: {} changed but take effect only after a restart; not applied",
                restart.join(" ")
            );
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn reloadable_settings_apply_and_the_rest_are_named() {
        let running = cfg("[smtp]\naccepted_domains = [\"a.example\"]\n");
        let new = cfg(
            "[smtp]\naccepted_domains = [\"a.example\", \"b.example\"]\n\
             max_message_bytes = \"1MiB\"\nrecipient_delimiter = \"-\"\n\
             [server]\nlog_level = \"debug\"\nbacklog = 7\n[spool]\ndir = \"/x\"\n",
        );
        let (merged, outcome) = merge(&running, &new).unwrap();
        assert_eq!(merged.smtp.accepted_domains, ["a.example", "b.example"]);
        assert_eq!(merged.smtp.max_message_bytes, 1 << 20);
        assert_eq!(merged.server.log_level, crate::log::Level::Debug);
        assert_eq!(merged.server.backlog, running.server.backlog);
        assert_eq!(merged.spool.dir, running.spool.dir);
        assert_eq!(merged.smtp.recipient_delimiter, "+");
        assert_eq!(
            outcome,
            Outcome::Applied {
                changed: vec![
                    "server.log_level".into(),
                    "smtp.accepted_domains".into(),
                    "smtp.max_message_bytes".into(),
                ],
                restart: vec![
                    "server.backlog".into(),
                    "smtp.recipient_delimiter".into(),
                    "spool.dir".into(),
                ],
            }
        );
    }

    #[test]
    fn a_merge_that_does_not_validate_keeps_the_running_settings() {
        // A longer command line than the running read buffer holds.
        let running = cfg("[server]\nread_buffer_bytes = 2048\n");
        let new =
            cfg("[server]\nread_buffer_bytes = 8192\n[smtp]\nmax_command_line_bytes = 4096\n");
        let e = merge(&running, &new).unwrap_err();
        assert!(e.contains("need a restart"), "{e}");
        let live = Live::new(&running);
        let mut r = running.clone();
        let mut reread: Reread = Box::new(move || Ok(new.clone()));
        assert!(matches!(
            reload(&live, &mut r, &mut reread),
            Outcome::Kept(_)
        ));
        assert_eq!(r, running);
        assert_eq!(live.generation.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_shard_takes_a_new_snapshot_only_after_a_publish() {
        let c = cfg("[smtp]\nhostname = \"one.example\"\n");
        let live = Arc::new(Live::new(&c));
        let shard = ShardLive::new(Arc::clone(&live));
        let (a, _) = shard.get();
        let (b, _) = shard.get();
        assert!(Rc::ptr_eq(&a, &b));
        let mut c2 = c.clone();
        c2.smtp.hostname = "two.example".into();
        live.publish(Snapshot::of(&c2));
        assert_eq!(a.hostname, "one.example");
        assert_eq!(shard.get().0.hostname, "two.example");
        assert_eq!(shard.smtp().hostname, "two.example");
    }
}
