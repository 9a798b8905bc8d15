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
//! Each line is formatted into a thread-local buffer and written whole, so
//! lines from different threads never interleave. The `log` crate is a
//! dependency only for that forwarding; everything else is here.
//!
//! # Shards never wait for the log
//!
//! On the main thread (start-up, fatal errors, the exit summary) a line is
//! one blocking `write(2)`. A shard thread calls [`queue_this_thread`]
//! first; its lines then go into a bounded queue ([`QUEUE_LINES`]) that
//! one logger thread writes out, so a slow stderr (a full pipe, a stalled
//! journald) never stalls a shard. When the queue is full the line is
//! dropped and counted, and the logger writes "N log lines dropped" before
//! its next line. [`flush`] waits until everything queued is written:
//! [`crate::server::serve`] calls it before it returns. Lines still queued
//! when the process is killed are lost; nothing depends on them.
//!
//! # Repeated lines are rate-limited
//!
//! On a queued thread, the lines of one macro call site (one template, at
//! any level) are limited to [`RATE_BURST`] per [`RATE_WINDOW`]; the rest
//! are counted, and once the window is over one line says how many
//! "similar lines" were suppressed. A botnet that triggers one refusal
//! line a million times gets a hundred lines a second, not a million.
//! Lines written with [`write()`] directly are never limited: they are the
//! record of events (one per connection, one per accepted message, the
//! shard totals), which must all be there.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines the queue from the shards to the logger thread holds; past it,
/// lines are dropped (and counted). At ~150 bytes a line, ~2.5 MB.
pub const QUEUE_LINES: usize = 16 * 1024;

/// The window of the per-call-site rate limit.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Lines one call site may write per [`RATE_WINDOW`] on one thread.
pub const RATE_BURST: u32 = 100;

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

/// How a line is written: the setting `server.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Format {
    /// `2026-11-29T13:44:42.123Z INFO message`, for people.
    #[default]
    Text = 0,
    /// `{"ts":"2026-11-29T13:44:42.123Z","level":"info","msg":"message"}`:
    /// the same fields, one JSON object per line, for log shippers.
    Json = 1,
}

impl std::str::FromStr for Format {
    type Err = String;

    /// `text` or `json`.
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("{s:?}: use text or json")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Json => "json",
        })
    }
}

static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);

/// Sets the line format for all threads.
pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

fn format() -> Format {
    if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        Format::Json
    } else {
        Format::Text
    }
}

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
    /// This thread's lines go to the logger thread.
    static QUEUED: Cell<bool> = const { Cell::new(false) };
    static LIMITER: RefCell<RateLimiter> =
        RefCell::new(RateLimiter::new(RATE_WINDOW, RATE_BURST));
}

/// What the logger thread is sent.
enum Msg {
    Line(String),
    /// Answer once everything before it is written.
    Flush(SyncSender<()>),
}

/// The sending side of the logger thread's queue: never blocks.
struct LineQueue {
    tx: SyncSender<Msg>,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: Arc<AtomicU64>,
}

impl LineQueue {
    /// A queue of `lines` and its receiving end.
    fn new(lines: usize) -> (LineQueue, Receiver<Msg>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::sync_channel(lines);
        let dropped = Arc::new(AtomicU64::new(0));
        let q = LineQueue {
            tx,
            dropped: Arc::clone(&dropped),
        };
        (q, rx, dropped)
    }

    /// Queues a line, or drops and counts it if the queue is full.
    fn push(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The logger thread is gone (it never panics; only at exit):
            // nothing can be written any more.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The logger thread's loop: writes every line to `out`, each preceded by
/// a count of the lines dropped since the last one, if any.
fn drain(rx: &Receiver<Msg>, dropped: &AtomicU64, out: &mut dyn std::io::Write) {
    let report = |out: &mut dyn std::io::Write| {
        let n = dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            let line = format_line(
                Level::Warn,
                format_args!("{n} log lines dropped: the log could not keep up"),
            );
            let _ = out.write_all(line.as_bytes());
        }
    };
    for msg in rx {
        report(out);
        match msg {
            Msg::Line(l) => {
                let _ = out.write_all(l.as_bytes());
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// The process's queue, with its logger thread started on first use.
fn queue() -> Option<&'static LineQueue> {
    static QUEUE: OnceLock<Option<LineQueue>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (q, rx, dropped) = LineQueue::new(QUEUE_LINES);
            std::thread::Builder::new()
                .name("ringmx-log".into())
                .spawn(move || drain(&rx, &dropped, &mut std::io::stderr()))
                .ok()
                .map(|_| q)
        })
        .as_ref()
}

/// From now on, this thread's lines go through the logger thread (see the
/// module docs). Falls back to writing them itself if that thread cannot
/// be started.
pub fn queue_this_thread() {
    let ok = queue().is_some();
    if ok {
        STARTED.store(true, Ordering::Relaxed);
    }
    QUEUED.set(ok);
}

/// Writes the suppressed-lines counts of this thread's rate limiter for
/// windows still open (a shard calls it as it stops).
pub fn flush_thread() {
    let pending = LIMITER.with(|l| l.borrow_mut().take_all());
    for (key, level, n) in pending {
        write_suppressed(key, level, n);
    }
}

/// Waits until every line queued so far is written. Returns at once if no
/// thread ever queued; waits about [`FLUSH_WAIT`] at most otherwise (a
/// stderr nobody reads must not keep the process from exiting).
pub fn flush() {
    let Some(q) = queue_started() else { return };
    let until = Instant::now() + FLUSH_WAIT;
    let (tx, rx) = mpsc::sync_channel(1);
    let mut msg = Msg::Flush(tx);
    // The queue may be full: retry rather than block.
    loop {
        match q.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < until => {
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = rx.recv_timeout(until.saturating_duration_since(Instant::now()));
}

/// The longest [`flush`] waits.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The queue, if some thread started it.
fn queue_started() -> Option<&'static LineQueue> {
    if STARTED.load(Ordering::Relaxed) {
        queue()
    } else {
        None
    }
}

static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes one line at `level`, rate-limited per call site `key` on a queued
/// thread (the macros pass `file:line` and check [`enabled`] first).
pub fn write_keyed(level: Level, key: &'static str, args: fmt::Arguments<'_>) {
    if QUEUED.get() {
        let now = Instant::now();
        let mut closed = Vec::new();
        let admit = LIMITER.with(|l| l.borrow_mut().admit(key, level, now, &mut closed));
        for (key, level, n) in closed {
            write_suppressed(key, level, n);
        }
        if !admit {
            return;
        }
    }
    write(level, args);
}

fn write_suppressed(key: &str, level: Level, n: u64) {
    write(
        level,
        format_args!("{n} similar lines suppressed (logged at {key})"),
    );
}

/// One formatted line, with its newline.
fn format_line(level: Level, args: fmt::Arguments<'_>) -> String {
    let mut buf = String::new();
    format_into(&mut buf, level, args);
    buf
}

fn format_into(buf: &mut String, level: Level, args: fmt::Arguments<'_>) {
    buf.clear();
    if format() == Format::Json {
        format_json(buf, SystemTime::now(), level, args);
        return;
    }
    write_timestamp(buf, SystemTime::now());
    buf.push(' ');
    buf.push_str(level.name());
    buf.push(' ');
    let _ = buf.write_fmt(args);
    buf.push('\n');
}

/// `{"ts":"...","level":"info","msg":"..."}` and a newline: the text
/// line's three fields. The message is formatted first, then escaped (a
/// message is one line, but a peer's bytes in it may be anything).
fn format_json(buf: &mut String, t: SystemTime, level: Level, args: fmt::Arguments<'_>) {
    let mut msg = String::new();
    let _ = msg.write_fmt(args);
    buf.push_str("{\"ts\":\"");
    write_timestamp(buf, t);
    buf.push_str("\",\"level\":\"");
    let _ = write!(buf, "{level}");
    buf.push_str("\",\"msg\":\"");
    json_escape_into(buf, &msg);
    buf.push_str("\"}\n");
}

/// RFC 8259 §7 string escaping: quote, backslash and control characters.
fn json_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Per call site, how many lines were written in the current window and
/// how many suppressed; the clock is an argument, for tests.
pub(crate) struct RateLimiter {
    window: Duration,
    burst: u32,
    entries: Vec<RateEntry>,
    /// No window can have closed before this.
    next_sweep: Option<Instant>,
}

struct RateEntry {
    key: &'static str,
    level: Level,
    start: Instant,
    written: u32,
    suppressed: u64,
}

impl RateLimiter {
    pub(crate) fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            entries: Vec::new(),
            next_sweep: None,
        }
    }

    /// Whether a line of call site `key` may be written at `now`. Appends to
    /// `closed` each call site whose window ended with lines suppressed, and
    /// how many.
    pub(crate) fn admit(
        &mut self,
        key: &'static str,
        level: Level,
        now: Instant,
        closed: &mut Vec<(&'static str, Level, u64)>,
    ) -> bool {
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.next_sweep = None;
            for e in &mut self.entries {
                if now.saturating_duration_since(e.start) >= self.window {
                    if e.suppressed > 0 {
                        closed.push((e.key, e.level, e.suppressed));
                    }
                    e.start = now;
                    e.written = 0;
                    e.suppressed = 0;
                }
            }
        }
        let i = match self.entries.iter().position(|e| e.key == key) {
            Some(i) => i,
            None => {
                self.entries.push(RateEntry {
                    key,
                    level,
                    start: now,
                    written: 0,
                    suppressed: 0,
                });
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[i];
        if now.saturating_duration_since(e.start) >= self.window {
            if e.suppressed > 0 {
                closed.push((e.key, e.level, e.suppressed));
            }
            e.start = now;
            e.written = 0;
            e.suppressed = 0;
        }
        if e.written < self.burst {
            e.written += 1;
            true
        } else {
            e.suppressed += 1;
            let end = e.start + self.window;
            self.next_sweep = Some(self.next_sweep.map_or(end, |t| t.min(end)));
            false
        }
    }

    /// Every call site with lines suppressed in its open window, and how
    /// many; their counts restart.
    pub(crate) fn take_all(&mut self) -> Vec<(&'static str, Level, u64)> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if e.suppressed > 0 {
                out.push((e.key, e.level, std::mem::take(&mut e.suppressed)));
            }
        }
        out
    }
}

/// Writes one line at `level`, never rate-limited (the macros check
/// [`enabled`] first and go through [`write_keyed`]).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if QUEUED.get() {
        if let Some(q) = queue() {
            q.push(format_line(level, args));
            return;
        }
    }
    LINE.with(|line| {
        // A logger must not panic; a re-entrant call (a Display impl that
        // logs) gets its own buffer.
        let mut own = String::new();
        let mut guard = line.try_borrow_mut().ok();
        let buf = guard.as_deref_mut().unwrap_or(&mut own);
        format_into(buf, level, args);
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
            $crate::log::write_keyed(
                $crate::log::Level::Error,
                concat!(file!(), ":", line!()),
                format_args!($($arg)*),
            )
        }
    };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Warn) {
            $crate::log::write_keyed(
                $crate::log::Level::Warn,
                concat!(file!(), ":", line!()),
                format_args!($($arg)*),
            )
        }
    };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            $crate::log::write_keyed(
                $crate::log::Level::Info,
                concat!(file!(), ":", line!()),
                format_args!($($arg)*),
            )
        }
    };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::write_keyed(
                $crate::log::Level::Debug,
                concat!(file!(), ":", line!()),
                format_args!($($arg)*),
            )
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
    fn the_rate_limiter_lets_a_burst_through_then_counts_and_reports() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Duration::from_secs(1), 3);
        let mut closed = Vec::new();
        let admitted = (0..10)
            .filter(|_| l.admit("a.rs:1", Level::Info, t0, &mut closed))
            .count();
        assert_eq!(admitted, 3);
        // Another call site has its own budget.
        assert!(l.admit("b.rs:2", Level::Warn, t0, &mut closed));
        assert!(closed.is_empty());
        // Within the window: still suppressed, nothing reported yet.
        let t = t0 + Duration::from_millis(999);
        assert!(!l.admit("a.rs:1", Level::Info, t, &mut closed));
        assert!(closed.is_empty());
        // The window is over: the next line of any call site reports it,
        // once, and a.rs:1 gets a fresh burst.
        let t = t0 + Duration::from_secs(1);
        assert!(l.admit("b.rs:2", Level::Warn, t, &mut closed));
        assert_eq!(closed, [("a.rs:1", Level::Info, 8)]);
        closed.clear();
        assert!(l.admit("a.rs:1", Level::Info, t, &mut closed));
        assert!(closed.is_empty());
    }

    #[test]
    fn take_all_reports_open_windows_once() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Duration::from_secs(1), 1);
        let mut closed = Vec::new();
        for _ in 0..5 {
            l.admit("a.rs:1", Level::Debug, t0, &mut closed);
        }
        assert_eq!(l.take_all(), [("a.rs:1", Level::Debug, 4)]);
        assert!(l.take_all().is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_logger_reports_it() {
        let (q, rx, dropped) = LineQueue::new(2);
        for i in 0..5 {
            q.push(format!("line {i}\n"));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        drop(q);
        let mut out = Vec::new();
        drain(&rx, &dropped, &mut out);
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].ends_with("WARN 3 log lines dropped: the log could not keep up"),
            "{out}"
        );
        assert_eq!(&lines[1..], ["line 0", "line 1"]);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn flush_answers_after_the_lines_before_it() {
        let (q, rx, dropped) = LineQueue::new(8);
        q.push("first\n".into());
        let (tx, done) = mpsc::sync_channel(1);
        q.tx.send(Msg::Flush(tx)).unwrap();
        drop(q);
        let mut out = Vec::new();
        drain(&rx, &dropped, &mut out);
        assert_eq!(out, b"first\n");
        assert!(done.try_recv().is_ok());
    }

    #[test]
    fn json_lines_escape_what_json_must() {
        let mut buf = String::new();
        format_json(
            &mut buf,
            UNIX_EPOCH + Duration::from_millis(1_795_959_882_123),
            Level::Warn,
            format_args!("helo=\"a\\b\"\r\n\u{1}\u{7f} \u{e9}"),
        );
        assert_eq!(
            buf,
            "{\"ts\":\"2026-11-29T13:44:42.123Z\",\"level\":\"warn\",\
             \"msg\":\"helo=\\\"a\\\\b\\\"\\r\\n\\u0001\\u007f \u{e9}\"}\n"
        );
        assert_eq!("json".parse(), Ok(Format::Json));
        assert!("xml"
            .parse::<Format>()
            .unwrap_err()
            .contains("use text or json"));
    }

    #[test]
    fn levels_filter() {
        assert_eq!("warn".parse(), Ok(Level::Warn));
        assert!("loud".parse::<Level>().is_err());
        assert_eq!(Level::Debug.to_string(), "debug");
        assert!(Level::Error < Level::Debug);
    }
}
