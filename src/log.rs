//! A tiny leveled logger: one line per event on stderr, UTC timestamp first.
//!
//! ```text
//! 2026-11-29T13:44:42.123Z INFO conn peer=127.0.0.1:40000 shard=0 duration_ms=3 messages=1 ...
//! ```
//!
//! Owns: the level filter, the line format, and forwarding the `log` crate's
//! records (glommio reports failures such as "registering buffers ...
//! Skipping" only through `log`; without a logger they vanish) into the same
//! stream. Leaves to callers: what to log. The server logs one line per
//! connection and per accepted message at `info`, never per command.
//!
//! Each line is formatted into a thread-local buffer and written with one
//! `write(2)`, so lines from different shards never interleave. The `log`
//! crate is a dependency only for that forwarding; everything else is here.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How important a line is; a logger set to a level shows it and the ones above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed and needs an operator.
    Error = 0,
    /// Degraded or surprising, e.g. a limit was raised or could not be.
    Warn = 1,
    /// One line per connection and per accepted message; start and stop.
    Info = 2,
    /// Diagnostics; never per command either.
    Debug = 3,
}

impl std::str::FromStr for Level {
    type Err = String;

    /// `error`, `warn`, `info` or `debug`: the setting `server.log_level`.
    fn from_str(s: &str) -> Result<Level, String> {
        match s {
            "error" => Ok(Level::Error),
            "warn" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(format!("{s:?}: use error, warn, info or debug")),
        }
    }
}

impl fmt::Display for Level {
    /// The lowercase name, as [`FromStr`](std::str::FromStr) reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_lowercase())
    }
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level for all threads, and for the forwarded `log` records.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    ::log::set_max_level(match level {
        Level::Error => ::log::LevelFilter::Error,
        Level::Warn => ::log::LevelFilter::Warn,
        Level::Info => ::log::LevelFilter::Info,
        Level::Debug => ::log::LevelFilter::Debug,
    });
}

/// Whether a line at `level` would be written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes one line at `level` (the macros check [`enabled`] first).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    LINE.with(|line| {
        // A logger must not panic; a re-entrant call (a Display impl that
        // logs) gets its own buffer.
        let mut own = String::new();
        let mut guard = line.try_borrow_mut().ok();
        let buf = guard.as_deref_mut().unwrap_or(&mut own);
        buf.clear();
        write_timestamp(buf, SystemTime::now());
        buf.push(' ');
        buf.push_str(level.name());
        buf.push(' ');
        let _ = buf.write_fmt(args);
        buf.push('\n');
        // Nothing sensible can be done if stderr is gone.
        let _ = std::io::stderr().write_all(buf.as_bytes());
        if buf.capacity() > 4096 {
            *buf = String::new();
        }
    });
}

/// `2026-11-29T13:44:42.123Z`
fn write_timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let c = crate::civil::DateTime::from_unix(d.as_secs() as i64);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        d.subsec_millis()
    );
}

/// Logs at error level: `ringmx::error!("spool {}: {}", dir, err)`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Error) {
            $crate::log::write($crate::log::Level::Error, format_args!($($arg)*))
        }
    };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Warn) {
            $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*))
        }
    };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            $crate::log::write($crate::log::Level::Info, format_args!($($arg)*))
        }
    };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*))
        }
    };
}

/// Forwards `log` crate records (from glommio) into this logger.
struct Bridge;

impl ::log::Log for Bridge {
    fn enabled(&self, m: &::log::Metadata<'_>) -> bool {
        enabled(from_log_level(m.level()))
    }

    fn log(&self, r: &::log::Record<'_>) {
        let level = from_log_level(r.level());
        if enabled(level) {
            // glommio's messages may span lines ({:#?}); keep ours to one.
            let msg = r
                .args()
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            write(level, format_args!("{}: {msg}", r.target()));
        }
    }

    fn flush(&self) {}
}

fn from_log_level(l: ::log::Level) -> Level {
    match l {
        ::log::Level::Error => Level::Error,
        ::log::Level::Warn => Level::Warn,
        ::log::Level::Info => Level::Info,
        ::log::Level::Debug | ::log::Level::Trace => Level::Debug,
    }
}

/// Installs the `log` crate bridge (once per process; later calls do nothing).
pub fn install() {
    static BRIDGE: Bridge = Bridge;
    let _ = ::log::set_logger(&BRIDGE);
    set_level(Level::parse_u8(LEVEL.load(Ordering::Relaxed)));
}

impl Level {
    fn parse_u8(v: u8) -> Level {
        match v {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_iso8601_utc() {
        let mut s = String::new();
        write_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_795_959_882_123),
        );
        assert_eq!(s, "2026-11-29T13:44:42.123Z");
        s.clear();
        write_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn levels_filter() {
        assert_eq!("warn".parse(), Ok(Level::Warn));
        assert!("loud".parse::<Level>().is_err());
        assert_eq!(Level::Debug.to_string(), "debug");
        assert!(Level::Error < Level::Debug);
    }
}
