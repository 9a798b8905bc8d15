//! Consumers and their positions on disk.
//!
//! ```text
//! <spool>/consumers/<name>/                     one directory per consumer
//! <spool>/consumers/<name>/shard-<n>.checkpoint its position in shard n
//! ```
//!
//! A checkpoint file is small text, replaced atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the directory), so a
//! crash leaves either the old position or the new one. A consumer without
//! a checkpoint for a shard starts at the oldest segment that shard still
//! holds. The set of directories is the set of consumers that space
//! reclamation waits for: a consumer is removed only on purpose.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::OutletError;
use crate::spool::Location;

/// The directory under the spool root that holds the consumers.
pub const CONSUMERS_DIR: &str = "consumers";

const MAGIC: &str = "ringmx-checkpoint 1";

/// A consumer's position in one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next record to read: every committed message before it was
    /// shipped. Offset 0 means the start of that segment's records; a
    /// position in segment `s` has passed every segment before `s`.
    pub position: Location,
    /// Messages shipped from this shard so far (for reports).
    pub shipped: u64,
    /// When it was written, unix seconds.
    pub written_unix: i64,
}

/// One consumer's directory.
#[derive(Debug, Clone)]
pub struct ConsumerDir {
    name: String,
    dir: PathBuf,
}

/// Checks a consumer name: it becomes a directory name.
///
/// # Errors
/// [`OutletError::BadName`].
pub fn validate_name(name: &str) -> Result<(), OutletError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(OutletError::BadName(name.to_owned()))
    }
}

/// The consumers registered in the spool at `spool`, sorted by name.
///
/// # Errors
/// The consumers directory exists but cannot be listed.
pub fn list(spool: &Path) -> Result<Vec<ConsumerDir>, OutletError> {
    let root = spool.join(CONSUMERS_DIR);
    let rd = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(OutletError::io("listing", root, e)),
    };
    let mut v = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| OutletError::io("listing", &root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if validate_name(&name).is_ok() && entry.path().is_dir() {
            v.push(ConsumerDir {
                dir: entry.path(),
                name,
            });
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<(), OutletError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OutletError::io("syncing directory", dir, e))
}

impl ConsumerDir {
    /// The consumer `name` of the spool at `spool`, registered or not.
    ///
    /// # Errors
    /// A bad name.
    pub fn new(spool: &Path, name: &str) -> Result<Self, OutletError> {
        validate_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            dir: spool.join(CONSUMERS_DIR).join(name),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it is registered.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Registers it (idempotent); durable once this returns.
    ///
    /// # Errors
    /// The directory cannot be created or synced.
    pub fn create(&self) -> Result<(), OutletError> {
        if self.exists() {
            return Ok(());
        }
        let root = self.dir.parent().unwrap_or(Path::new("."));
        let spool = root.parent().unwrap_or(Path::new("."));
        let new_root = !root.is_dir();
        fs::create_dir_all(&self.dir).map_err(|e| OutletError::io("creating", &self.dir, e))?;
        sync_dir(root)?;
        if new_root {
            sync_dir(spool)?;
        }
        Ok(())
    }

    /// Removes it and everything it holds (its dead letters too); space
    /// reclamation stops waiting for it.
    ///
    /// # Errors
    /// The directory cannot be removed.
    pub fn remove(&self) -> Result<(), OutletError> {
        fs::remove_dir_all(&self.dir).map_err(|e| OutletError::io("removing", &self.dir, e))?;
        sync_dir(self.dir.parent().unwrap_or(Path::new(".")))
    }

    fn path(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard}.checkpoint"))
    }

    /// Its checkpoint for `shard`; `None` when it has none (it starts at the
    /// oldest segment there).
    ///
    /// # Errors
    /// A file that exists but cannot be read or parsed.
    pub fn read(&self, shard: u32) -> Result<Option<Checkpoint>, OutletError> {
        let path = self.path(shard);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OutletError::io("reading", path, e)),
        };
        parse(&text)
            .map(Some)
            .map_err(|reason| OutletError::BadCheckpoint { path, reason })
    }

    /// Replaces its checkpoint for `shard`; durable once this returns.
    ///
    /// # Errors
    /// Writing, syncing or renaming failed; the old checkpoint stands.
    pub fn write(&self, shard: u32, cp: &Checkpoint) -> Result<(), OutletError> {
        let path = self.path(shard);
        let tmp = self.dir.join(format!(".shard-{shard}.checkpoint.tmp"));
        let text = format!(
            "{MAGIC}\nsegment {}\noffset {}\nshipped {}\nwritten {}\n",
            cp.position.segment, cp.position.offset, cp.shipped, cp.written_unix
        );
        let mut f = File::create(&tmp).map_err(|e| OutletError::io("creating", &tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| OutletError::io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| OutletError::io("renaming", &tmp, e))?;
        sync_dir(&self.dir)
    }

    /// Removes its checkpoint for `shard` (it starts over at the oldest
    /// segment there).
    ///
    /// # Errors
    /// The file exists and cannot be removed.
    pub fn clear(&self, shard: u32) -> Result<(), OutletError> {
        let path = self.path(shard);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OutletError::io("removing", path, e)),
        }
    }
}

fn parse(text: &str) -> Result<Checkpoint, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("not a checkpoint: the first line is not {MAGIC:?}"));
    }
    let mut get = |key: &str| -> Result<u64, String> {
        let line = lines.next().ok_or(format!("no {key} line"))?;
        let v = line
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(format!("expected {key:?}, found {line:?}"))?;
        v.parse()
            .map_err(|_| format!("{key}: {v:?} is not a number"))
    };
    let segment = get("segment")?;
    let offset = get("offset")?;
    let shipped = get("shipped")?;
    let written = get("written")?;
    Ok(Checkpoint {
        position: Location { segment, offset },
        shipped,
        written_unix: i64::try_from(written).map_err(|_| "written: out of range".to_owned())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ringmx-cp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_replace() {
        let spool = tmp();
        let c = ConsumerDir::new(&spool, "nats-1").unwrap();
        assert!(!c.exists());
        c.create().unwrap();
        assert_eq!(c.read(0).unwrap(), None);
        let mut cp = Checkpoint {
            position: Location {
                segment: 7,
                offset: 4096,
            },
            shipped: 12,
            written_unix: 1_764_480_000,
        };
        c.write(0, &cp).unwrap();
        assert_eq!(c.read(0).unwrap(), Some(cp));
        cp.position.offset = 8192;
        c.write(0, &cp).unwrap();
        assert_eq!(c.read(0).unwrap(), Some(cp));
        assert_eq!(c.read(1).unwrap(), None);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(c.dir()).unwrap().count(), 1);
        assert_eq!(list(&spool).unwrap()[0].name(), "nats-1");
        c.clear(0).unwrap();
        assert_eq!(c.read(0).unwrap(), None);
        c.remove().unwrap();
        assert!(list(&spool).unwrap().is_empty());
        fs::remove_dir_all(spool).unwrap();
    }

    #[test]
    fn a_damaged_checkpoint_is_an_error_not_a_fresh_start() {
        let spool = tmp();
        let c = ConsumerDir::new(&spool, "x").unwrap();
        c.create().unwrap();
        fs::write(
            c.dir().join("shard-3.checkpoint"),
            "ringmx-checkpoint 1\nsegment 4\n",
        )
        .unwrap();
        let e = c.read(3).unwrap_err().to_string();
        assert!(e.contains("no offset line") && e.contains("--reset"), "{e}");
        fs::write(c.dir().join("shard-3.checkpoint"), "garbage").unwrap();
        assert!(c.read(3).is_err());
        fs::remove_dir_all(spool).unwrap();
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "nats.main", "web-hook_2"] {
            validate_name(good).unwrap();
        }
    }
}
