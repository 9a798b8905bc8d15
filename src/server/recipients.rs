//! The recipient map at run time: read from `smtp.recipient_map` on the
//! main thread, shared read-only by every shard, replaced on SIGHUP.
//!
//! The map itself (syntax, policy, lookups) is
//! [`crate::protocol::recipients`]; this file owns the file, the one copy
//! the shards share and its replacement. A reload builds and checks the
//! new map on the signal thread, then publishes it with one pointer swap;
//! each connection picks it up before its next batch of commands (one
//! atomic load per read, see `conn.rs`). A broken file never replaces a
//! working map.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::SmtpConfig;
use crate::protocol::recipients::{MapError, MapOptions, Policy, RecipientMap};

/// Why a recipient map could not be loaded; names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum RecipientMapError {
    /// The file cannot be read.
    #[error("cannot read recipient map {path}: {reason}")]
    Read {
        /// `smtp.recipient_map`.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A line is not a valid entry.
    #[error("recipient map {}:{}: {}", path.display(), err.line, err.reason)]
    Line {
        /// `smtp.recipient_map`.
        path: PathBuf,
        /// The line and what is wrong with it.
        err: MapError,
    },
}

/// The normalisation options `smtp` asks for.
pub fn options(smtp: &SmtpConfig) -> MapOptions {
    MapOptions {
        delimiter: smtp.recipient_delimiter.clone(),
        ignore_case: smtp.recipient_ignore_case,
    }
}

/// Reads and parses the map at `path`.
///
/// # Errors
/// The file cannot be read, or a line is bad (with its number).
pub fn load(path: &Path, options: MapOptions) -> Result<RecipientMap, RecipientMapError> {
    let text = std::fs::read(path).map_err(|e| RecipientMapError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    RecipientMap::parse(&text, options).map_err(|err| RecipientMapError::Line {
        path: path.to_owned(),
        err,
    })
}

/// The accepted domains whose policy the map file decides: all but those
/// the ldap and verify settings name (see `server::lookup`).
pub fn map_policy_domains(smtp: &SmtpConfig) -> Vec<String> {
    let remote = |d: &String| {
        smtp.recipient_ldap_domains
            .iter()
            .chain(&smtp.recipient_verify_domains)
            .any(|r| r.eq_ignore_ascii_case(d))
    };
    smtp.accepted_domains
        .iter()
        .filter(|d| !remote(d))
        .cloned()
        .collect()
}

/// One line about a loaded map, for the start-up and reload logs.
pub fn describe(map: &RecipientMap, accepted: &[String]) -> String {
    let listed = map.domains(Policy::Map);
    let mut catch_all = map.domains(Policy::CatchAll);
    catch_all.extend(
        accepted
            .iter()
            .filter(|d| map.named_policy(d).is_none())
            .map(|d| format!("{d} (unnamed)")),
    );
    let stray = listed
        .iter()
        .filter(|d| !accepted.iter().any(|a| a.eq_ignore_ascii_case(d)))
        .count();
    let mut s = format!(
        "{} addresses, {} KiB; map domains: {}; catch-all domains: {}",
        map.addresses(),
        map.memory_bytes() >> 10,
        list(&listed),
        list(&catch_all),
    );
    if stray > 0 {
        s.push_str(&format!(
            "; {stray} map domains are not in smtp.accepted_domains (their recipients get \
             550 5.7.1)"
        ));
    }
    s
}

/// At most 10 names, then a count.
fn list<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let mut s: Vec<String> = v.iter().take(10).map(ToString::to_string).collect();
    if v.len() > 10 {
        s.push(format!("and {} more", v.len() - 10));
    }
    s.join(" ")
}

/// The current map, shared by every shard (one per process).
#[derive(Debug)]
pub struct SharedRecipients {
    /// Bumped after each swap: a connection compares it with the one it
    /// holds, and only then takes the lock.
    generation: AtomicU64,
    /// Taken by the signal thread for one pointer swap and by a shard once
    /// per reload: never waited on in practice.
    map: Mutex<Option<Arc<RecipientMap>>>,
}

impl SharedRecipients {
    /// Starts with `map` (`None`: catch-all everywhere).
    pub fn new(map: Option<RecipientMap>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            map: Mutex::new(map.map(Arc::new)),
        }
    }

    /// Changes with each [`SharedRecipients::store`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current map.
    pub fn load(&self) -> Option<Arc<RecipientMap>> {
        // A poisoned lock still holds a valid Arc: the swap cannot panic.
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the map; connections take it before their next commands.
    pub fn store(&self, map: RecipientMap) {
        let old = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(Arc::new(map));
        self.generation.fetch_add(1, Ordering::Release);
        // The old map (tens of MiB for millions of entries) is freed here
        // unless a connection still holds it: then once the last of them
        // reads again or closes (so two maps may briefly coexist).
        drop(old);
    }
}

/// SIGHUP: rereads `path`; swaps the new map in only if it is valid, and
/// logs what happened either way.
pub fn reload(shared: &SharedRecipients, path: &Path, smtp: &SmtpConfig) {
    let started = Instant::now();
    match load(path, options(smtp)) {
        Ok(map) => {
            let what = describe(&map, &map_policy_domains(smtp));
            shared.store(map);
            crate::info!(
                "SIGHUP: recipient map {} reloaded in {} ms: {what}",
                path.display(),
                started.elapsed().as_millis()
            );
        }
        Err(e) => {
            let kept = shared.load().map_or(0, |m| m.addresses());
            crate::error!("SIGHUP: {e}; keeping the previous map ({kept} addresses)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RecipientMap {
        RecipientMap::parse(text.as_bytes(), MapOptions::default()).unwrap()
    }

    #[test]
    fn the_log_line_names_both_policies_and_domains_nobody_accepts() {
        let m = parse("a@example.com\nb@stray.example\n@catch.example\n");
        let accepted: Vec<String> = ["example.com", "catch.example", "open.example"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            describe(&m, &accepted),
            format!(
                "2 addresses, {} KiB; map domains: example.com stray.example; catch-all \
                 domains: catch.example open.example (unnamed); 1 map domains are not in \
                 smtp.accepted_domains (their recipients get 550 5.7.1)",
                m.memory_bytes() >> 10
            )
        );
        let names: Vec<String> = (0..12).map(|i| format!("d{i}.example")).collect();
        assert!(list(&names).ends_with("d9.example and 2 more"));
        assert_eq!(list::<String>(&[]), "none");
    }

    #[test]
    fn ldap_and_verify_domains_are_not_listed_as_the_map_s() {
        let smtp = SmtpConfig {
            accepted_domains: ["a.example", "L.example", "v.example"]
                .map(String::from)
                .to_vec(),
            recipient_ldap_domains: vec!["l.example".into()],
            recipient_verify_domains: vec!["V.EXAMPLE".into()],
            ..SmtpConfig::default()
        };
        assert_eq!(map_policy_domains(&smtp), ["a.example"]);
    }

    #[test]
    fn a_store_bumps_the_generation_and_loads_see_the_new_map() {
        let shared = SharedRecipients::new(None);
        let g0 = shared.generation();
        assert!(shared.load().is_none());
        shared.store(parse("a@example.com\n"));
        assert_ne!(shared.generation(), g0);
        let held = shared.load().unwrap();
        shared.store(parse("a@example.com\nb@example.com\n"));
        // A holder keeps its map until it loads again.
        assert_eq!(held.addresses(), 1);
        assert_eq!(shared.load().unwrap().addresses(), 2);
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("ringmx-rcpt-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("map");
        std::fs::write(&path, "ok@example.com\n\nnot-an-address\n").unwrap();
        let e = load(&path, MapOptions::default()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("recipient map {}:3: ", path.display())),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        let e = load(&path, MapOptions::default()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read recipient map {}: ", path.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir(&dir);
    }
}
