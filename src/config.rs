//! Every limit and tunable of ringmx, grouped by phase, with all defaults in
//! one `Default` impl per group and the reason for each default beside it.
//!
//! The same structs are read from TOML (`ringmx serve --config FILE`) with
//! unknown keys rejected; command-line flags override the file. Durations are
//! written as `"300s"`, `"5m"`, `"1h"`, `"250ms"`; sizes as `"50MiB"`,
//! `"64KiB"`, `"1000"` (bytes).
//! [`Config::validate`] runs at start-up and names the numbers that conflict.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration of one `ringmx serve` process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Sockets, cores, buffers, connection limits.
    pub server: ServerConfig,
    /// SMTP policy and protocol limits (the sans-IO engine reads only this).
    pub smtp: SmtpConfig,
    /// Where and how accepted messages are made durable.
    pub spool: SpoolConfig,
}

/// Which CPU cores get a shard.
///
/// Written `"all"`, a count (`4`) or a list (`[0, 1]`, or the strings
/// `"0,2"` and `"0-3"`) in TOML; the same forms on the command line, where a
/// bare number is a count and a single CPU is written `3-3` or `3,`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Cores {
    /// One shard per CPU this process may run on (its affinity mask).
    #[default]
    All,
    /// This many shards, on the first n CPUs of the affinity mask (CPUs
    /// 0..n when the process is not restricted by `taskset` or a cpuset).
    Count(usize),
    /// One shard on each listed CPU.
    List(Vec<usize>),
}

/// Network-side knobs, per process unless stated per shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to accept SMTP on; every shard binds each one (SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// CPUs that run a shard.
    pub cores: Cores,
    /// Open connections per shard; past it the kernel queue backs up and a
    /// connection that still gets through is answered `421 4.3.2`.
    pub max_connections_per_shard: usize,
    /// listen(2) backlog per shard socket (capped by net.core.somaxconn).
    pub backlog: u32,
    /// Read buffer per connection, bytes. Bounds the largest pipelined batch
    /// handled in one pass; must exceed the longest allowed line.
    #[serde(deserialize_with = "de_bytes_usize")]
    pub read_buffer_bytes: usize,
    /// Initial reply buffer per connection, bytes (it grows for a huge
    /// pipelined batch and is shrunk back when idle).
    #[serde(deserialize_with = "de_bytes_usize")]
    pub write_buffer_bytes: usize,
    /// Disable Nagle: replies are already batched per read.
    pub tcp_nodelay: bool,
    /// How long a shutdown waits for transactions in flight.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Upper bound on a connection's whole life.
    #[serde(with = "duration_str")]
    pub max_connection_lifetime: Duration,
    /// Log level: error, warn, info, debug.
    pub log_level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // Loopback by default: an MX facing the internet is an explicit choice.
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            cores: Cores::All,
            // 10,000 per shard at a few KiB each stays well under 100 MiB.
            max_connections_per_shard: 10_000,
            // Many short SMTP connections arrive in bursts; 4096 matches the
            // usual somaxconn on current kernels.
            backlog: 4096,
            // 16 KiB holds a full pipelined envelope with hundreds of recipients
            // and ~200 lines of body per read; see tuning/ for the sweep.
            read_buffer_bytes: 16 * 1024,
            write_buffer_bytes: 1024,
            tcp_nodelay: true,
            shutdown_grace: Duration::from_secs(30),
            max_connection_lifetime: Duration::from_secs(3600),
            log_level: "info".into(),
        }
    }
}

/// What happens to a message that contains a bare LF or a bare CR (one not
/// part of CRLF). Such a line ending never ends the message in any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Reject the message with `550 5.6.11` once its end is reached (as
    /// Postfix's `smtpd_forbid_bare_newline = normalize` era does with reject):
    /// protects downstream MTAs from SMTP smuggling.
    #[default]
    Reject,
    /// Keep the bytes as data, unchanged.
    Accept,
}

/// SMTP policy and protocol limits: everything the sans-IO engine needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// Our name in the greeting, EHLO reply and `Received:` header.
    pub hostname: String,
    /// Recipient domains we accept mail for (case-insensitive). Everything else
    /// gets `550 5.7.1`: no open relay.
    pub accepted_domains: Vec<String>,
    /// Largest message body, bytes after dot-unstuffing; advertised as SIZE.
    #[serde(deserialize_with = "de_bytes_u64")]
    pub max_message_bytes: u64,
    /// Recipients per transaction; RFC 5321 §4.5.3.1.8 demands at least 100.
    pub max_recipients: usize,
    /// Longest command line including CRLF (RFC 5321 §4.5.3.1.4: 512).
    pub max_command_line_bytes: usize,
    /// Longest text line in DATA including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    pub max_text_line_bytes: usize,
    /// Failed commands before `421` and close.
    pub max_errors: u32,
    /// Bare LF / bare CR in message data.
    pub bare_newline: BareNewline,
    /// Waiting for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    #[serde(with = "duration_str")]
    pub command_timeout: Duration,
    /// Waiting for the next block of message data (§4.5.3.2.5's 3 minutes is
    /// the client's; the server's §4.5.3.2.7 5 minutes applies).
    #[serde(with = "duration_str")]
    pub data_timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            accepted_domains: vec!["localhost".into()],
            max_message_bytes: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_command_line_bytes: 512,
            max_text_line_bytes: 1000,
            max_errors: 10,
            bare_newline: BareNewline::Reject,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
        }
    }
}

/// When `250` is sent relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `250` only after the record is written and fdatasync'd (group commit).
    #[default]
    Fsync,
    /// `250` after the write reaches the page cache. Benchmarks only: a crash
    /// loses acknowledged mail. Logged loudly at start.
    None,
}

/// The spool: per-shard append-only segment files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Root directory; shard n writes `<dir>/shard-<n>/`.
    pub dir: PathBuf,
    /// A segment is sealed and a new one opened past this size, bytes (it
    /// may exceed it by one record). Larger: fewer rotations (each costs a
    /// seal, two fdatasyncs and a directory fsync); smaller: a faster start,
    /// since recovery scans only the newest segment, and finer-grained
    /// deletion by consumers.
    #[serde(deserialize_with = "de_bytes_u64")]
    pub segment_bytes: u64,
    /// When `250` may be sent.
    pub durability: Durability,
    /// Buffered body bytes per message before it is streamed to disk as
    /// fragments: bounds memory per connection for huge messages. A body up
    /// to this size is one record and one write; a larger one is written in
    /// fragments of this size. Worst case per shard: connections in DATA at
    /// once times this (plus their envelopes).
    #[serde(deserialize_with = "de_bytes_usize")]
    pub max_buffered_message_bytes: usize,
    /// Reject new messages with `452 4.3.1` when the spool's filesystem has
    /// less than this free, bytes (checked at the start of each message,
    /// re-read at most every 250 ms or 1 MiB appended). 0 disables the check;
    /// a full disk then still gives `452 4.3.1`, from the failed write.
    #[serde(deserialize_with = "de_bytes_u64")]
    pub min_free_bytes: u64,
    /// With `durability = fsync`: after the first record of a batch arrives,
    /// wait this long for more before writing and syncing (PostgreSQL's
    /// `commit_delay`). Batching is already self-clocking — everything queued
    /// while a sync runs goes into the next — so this only helps when a sync
    /// is much faster than the gaps between commits; it adds up to this much
    /// to every acknowledgement. See tuning/results/sweep-*.md.
    #[serde(with = "duration_str")]
    pub group_commit_delay: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            // Recovery reads and checks at most this much at start (well under
            // a second from page cache or SSD); rotation cost is amortised
            // over 64 MiB of mail.
            segment_bytes: 64 * 1024 * 1024,
            // DESIGN.md §1: `250` means durable.
            durability: Durability::Fsync,
            // Most mail is far smaller, so it stays one record and one write;
            // 10,000 connections all mid-DATA stay under 2.5 GiB per shard.
            max_buffered_message_bytes: 256 * 1024,
            // Room for the messages already in flight to finish and for a
            // segment rotation, so a filling disk refuses new mail cleanly
            // (452) before writes start failing mid-message.
            min_free_bytes: 64 * 1024 * 1024,
            // 0: in tuning/sweep.sh (16 connections, fsync) 200us doubled the
            // commits per fdatasync (8 -> 16) but moved msgs/s only +7%,
            // within noise; 1ms and 3ms cut msgs/s to 54% and 25%. An
            // fdatasync (1-5 ms here) already gathers what arrives meanwhile.
            group_commit_delay: Duration::ZERO,
        }
    }
}

/// A setting that cannot work, with the numbers that conflict.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// RFC 5321 §4.5.3.1.8.
    #[error("smtp.max_recipients = {0}: RFC 5321 §4.5.3.1.8 requires at least 100")]
    TooFewRecipients(usize),
    /// A line must fit the read buffer to be parsed in place.
    #[error(
        "server.read_buffer_bytes = {buffer} must exceed the longest line ({line} bytes): \
         raise read_buffer_bytes or lower the line limit"
    )]
    BufferSmallerThanLine {
        /// The read buffer size.
        buffer: usize,
        /// The longest line limit.
        line: usize,
    },
    /// Command line limit below the RFC minimum.
    #[error("smtp.max_command_line_bytes = {0}: RFC 5321 §4.5.3.1.4 requires at least 512")]
    CommandLineTooShort(usize),
    /// Text line limit below the RFC minimum.
    #[error("smtp.max_text_line_bytes = {0}: RFC 5321 §4.5.3.1.6 requires at least 1000")]
    TextLineTooShort(usize),
    /// Nothing to listen on.
    #[error("server.listen is empty: give at least one --listen ADDR")]
    NoListen,
    /// Zero where at least one is needed.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// An empty hostname would make the greeting invalid.
    #[error("smtp.hostname is empty")]
    EmptyHostname,
    /// Unknown log level.
    #[error("server.log_level = {0:?}: use error, warn, info or debug")]
    LogLevel(String),
    /// A core selection that cannot be placed on this machine.
    #[error("server.cores: {0}")]
    Cores(String),
    /// The same listen address twice would make ringmx fight itself for it.
    #[error("server.listen lists {0} twice")]
    DuplicateListen(SocketAddr),
    /// No accepted domain: every recipient would be refused.
    #[error("smtp.accepted_domains is empty: give at least one --domain")]
    NoDomains,
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The config file is not valid TOML for [`Config`]: syntax, an unknown
    /// key or a bad value.
    #[error("config file {path}:{line}:{column}: {reason}")]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// What is wrong, as one line.
        reason: String,
    },
}

impl Config {
    /// Checks the settings against each other and the RFC minimums.
    ///
    /// # Errors
    /// The first conflicting setting, with the numbers involved.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.smtp.validate()?;
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(ConfigError::NoListen);
        }
        let line = self
            .smtp
            .max_command_line_bytes
            .max(self.smtp.max_text_line_bytes);
        if s.read_buffer_bytes <= line {
            return Err(ConfigError::BufferSmallerThanLine {
                buffer: s.read_buffer_bytes,
                line,
            });
        }
        if s.max_connections_per_shard == 0 {
            return Err(ConfigError::Zero("server.max_connections_per_shard"));
        }
        if s.backlog == 0 {
            return Err(ConfigError::Zero("server.backlog"));
        }
        if self.spool.segment_bytes == 0 {
            return Err(ConfigError::Zero("spool.segment_bytes"));
        }
        if !matches!(s.log_level.as_str(), "error" | "warn" | "info" | "debug") {
            return Err(ConfigError::LogLevel(s.log_level.clone()));
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return Err(ConfigError::DuplicateListen(*a));
            }
        }
        match &s.cores {
            Cores::Count(0) => return Err(ConfigError::Zero("server.cores")),
            Cores::List(l) if l.is_empty() => return Err(ConfigError::Zero("server.cores")),
            _ => {}
        }
        Ok(())
    }
}

impl SmtpConfig {
    /// The protocol-only part of [`Config::validate`].
    ///
    /// # Errors
    /// The first setting below an RFC minimum.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_recipients < 100 {
            return Err(ConfigError::TooFewRecipients(self.max_recipients));
        }
        if self.max_command_line_bytes < 512 {
            return Err(ConfigError::CommandLineTooShort(
                self.max_command_line_bytes,
            ));
        }
        if self.max_text_line_bytes < 1000 {
            return Err(ConfigError::TextLineTooShort(self.max_text_line_bytes));
        }
        if self.max_errors == 0 {
            return Err(ConfigError::Zero("smtp.max_errors"));
        }
        if self.hostname.is_empty() {
            return Err(ConfigError::EmptyHostname);
        }
        if self.accepted_domains.is_empty() {
            return Err(ConfigError::NoDomains);
        }
        Ok(())
    }
}

/// Parses `"300s"`, `"5m"`, `"1h"`, `"250ms"` or a bare number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 300s, 5m, 1h or 250ms"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}: use us, ms, s, m or h"
            ))
        }
    };
    Ok(d)
}

/// Parses `"50MiB"`, `"64KiB"`, `"1GiB"`, `"10MB"`, `"1k"` or a bare number of bytes.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use e.g. 1000, 64KiB, 50MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}: use KiB, MiB, GiB, kB, MB, GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us % 1000 != 0 {
        format!("{us}us")
    } else if us % 1_000_000 != 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{}s", d.as_secs())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn de_bytes_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}

fn de_bytes_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = de_bytes_u64(d)?;
    usize::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} does not fit in memory")))
}

mod duration_str {
    use super::{format_duration, parse_duration, Duration, NumOrStr};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => Ok(Duration::from_secs(n)),
            NumOrStr::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading: `--config FILE` (TOML), then command-line flags on top.
// ---------------------------------------------------------------------------

impl FromStr for Cores {
    type Err = String;

    /// `all`, a count (`4`), or a list of CPUs and ranges (`0,2`, `0-3`,
    /// `3-3`, `3,`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Cores::All);
        }
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Cores::Count(n));
        }
        let bad = || {
            format!("{s:?} is not a core selection: use all, a count (4) or a list (0,2 or 0-3)")
        };
        let cpu = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (cpu(a)?, cpu(b)?);
                    if a > b {
                        return Err(format!("{s:?}: range {a}-{b} is backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(cpu(part)?),
            }
        }
        if cpus.is_empty() {
            return Err(bad());
        }
        Ok(Cores::List(cpus))
    }
}

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cores::All => f.write_str("all"),
            Cores::Count(n) => write!(f, "{n}"),
            Cores::List(l) => {
                for (i, c) in l.iter().enumerate() {
                    write!(f, "{}{c}", if i > 0 { "," } else { "" })?;
                }
                // A one-CPU list must not read back as a count.
                if l.len() == 1 {
                    f.write_str(",")?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cores::All => s.serialize_str("all"),
            Cores::Count(n) => s.serialize_u64(*n as u64),
            Cores::List(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
            List(Vec<usize>),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "cores must be \"all\", a count (4) or a list of CPUs ([0, 1])",
            )
        })?;
        match raw {
            Raw::Num(n) => usize::try_from(n)
                .map(Cores::Count)
                .map_err(|_| serde::de::Error::custom(format!("cores = {n} is too large"))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::List(l) => Ok(Cores::List(l)),
        }
    }
}

impl Cores {
    /// The CPUs to run one shard each on, given the CPUs this process may
    /// run on (its affinity mask, ascending).
    ///
    /// # Errors
    /// [`ConfigError::Cores`] naming the CPU or count that does not fit.
    ///
    /// # Example
    /// ```
    /// use ringmx::config::Cores;
    /// let allowed = [0, 1, 2, 3];
    /// assert_eq!("2".parse::<Cores>().unwrap().resolve(&allowed).unwrap(), [0, 1]);
    /// assert_eq!("1-2".parse::<Cores>().unwrap().resolve(&allowed).unwrap(), [1, 2]);
    /// assert!("7,".parse::<Cores>().unwrap().resolve(&allowed).is_err());
    /// ```
    pub fn resolve(&self, allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
        let avail = || format_cpus(allowed);
        match self {
            Cores::All if allowed.is_empty() => Err(ConfigError::Cores(
                "no CPU is available to this process".into(),
            )),
            Cores::All => Ok(allowed.to_vec()),
            Cores::Count(0) => Err(ConfigError::Zero("server.cores")),
            Cores::Count(n) if *n > allowed.len() => Err(ConfigError::Cores(format!(
                "{n} shards asked for, but only {} CPUs are available ({})",
                allowed.len(),
                avail()
            ))),
            Cores::Count(n) => Ok(allowed[..*n].to_vec()),
            Cores::List(l) => {
                for (i, c) in l.iter().enumerate() {
                    if l[..i].contains(c) {
                        return Err(ConfigError::Cores(format!("CPU {c} is listed twice")));
                    }
                    if !allowed.contains(c) {
                        return Err(ConfigError::Cores(format!(
                            "CPU {c} is not available to this process (available: {})",
                            avail()
                        )));
                    }
                }
                if l.is_empty() {
                    return Err(ConfigError::Zero("server.cores"));
                }
                Ok(l.clone())
            }
        }
    }
}

/// `0-3,6` style, for messages.
fn format_cpus(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

impl Config {
    /// Parses TOML text; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with the line and column of the first problem
    /// (bad syntax, an unknown key, a bad value).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                reason: e.message().replace('\n', " "),
            }
        })
    }

    /// Reads a TOML config file (no flags applied, not validated).
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Config::from_toml(&text, path)
    }

    /// The configuration of one `ringmx serve`: the defaults, then the file
    /// named by `--config` (if any), then every flag given; validated.
    ///
    /// # Errors
    /// The first problem in the file or in the combined settings.
    pub fn load(flags: &ConfigOverrides) -> Result<Config, ConfigError> {
        let mut c = match &flags.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        c.apply(flags);
        c.validate()?;
        Ok(c)
    }

    /// Overwrites every setting that `flags` gives.
    pub fn apply(&mut self, flags: &ConfigOverrides) {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        let (srv, smtp, spool) = (&mut self.server, &mut self.smtp, &mut self.spool);
        if !flags.listen.is_empty() {
            srv.listen = flags.listen.clone();
        }
        set(&mut srv.cores, &flags.cores);
        set(&mut srv.max_connections_per_shard, &flags.max_connections);
        set(&mut srv.backlog, &flags.backlog);
        set(&mut srv.read_buffer_bytes, &flags.read_buffer);
        set(&mut srv.write_buffer_bytes, &flags.write_buffer);
        set(&mut srv.tcp_nodelay, &flags.tcp_nodelay);
        set(&mut srv.shutdown_grace, &flags.shutdown_grace);
        set(
            &mut srv.max_connection_lifetime,
            &flags.max_connection_lifetime,
        );
        set(&mut srv.log_level, &flags.log_level);
        set(&mut smtp.hostname, &flags.hostname);
        if !flags.domain.is_empty() {
            smtp.accepted_domains = flags.domain.clone();
        }
        set(&mut smtp.max_message_bytes, &flags.max_message_size);
        set(&mut smtp.max_recipients, &flags.max_recipients);
        set(&mut smtp.max_command_line_bytes, &flags.max_command_line);
        set(&mut smtp.max_text_line_bytes, &flags.max_text_line);
        set(&mut smtp.max_errors, &flags.max_errors);
        set(&mut smtp.bare_newline, &flags.bare_newline);
        set(&mut smtp.command_timeout, &flags.command_timeout);
        set(&mut smtp.data_timeout, &flags.data_timeout);
        set(&mut spool.dir, &flags.spool);
        set(&mut spool.segment_bytes, &flags.segment_size);
        set(&mut spool.durability, &flags.durability);
        set(
            &mut spool.max_buffered_message_bytes,
            &flags.max_buffered_message,
        );
        set(&mut spool.min_free_bytes, &flags.min_free);
        set(&mut spool.group_commit_delay, &flags.group_commit_delay);
    }
}

/// The `ringmx serve` flags: one per setting, each overriding the same key of
/// the `--config` file (the key is named in its help). `None` / empty means
/// "not given". Defaults are shown in `--help` from [`Config::default`] via
/// [`ConfigOverrides::help_defaults`], so they are written down only once.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigOverrides {
    /// TOML file with the same settings as [server], [smtp] and [spool] tables (keys as named below); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// IP:PORT to accept SMTP on; repeat for several; port 0 picks a free port (server.listen)
    #[arg(long, value_name = "ADDR", help_heading = "Network")]
    pub listen: Vec<SocketAddr>,
    /// CPUs that run a shard: all, a count (4), or a list (0,2 or 0-3; one CPU: 3-3) (server.cores)
    #[arg(long, value_name = "CORES", value_parser = Cores::from_str, help_heading = "Network")]
    pub cores: Option<Cores>,
    /// Open connections per shard; past it new connections get 421 4.3.2 (server.max_connections_per_shard)
    #[arg(long, value_name = "N", help_heading = "Network")]
    pub max_connections: Option<usize>,
    /// listen(2) backlog of each shard socket, capped by net.core.somaxconn (server.backlog)
    #[arg(long, value_name = "N", help_heading = "Network")]
    pub backlog: Option<u32>,
    /// Read buffer per active connection; must exceed the longest line (server.read_buffer_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_usize, help_heading = "Network")]
    pub read_buffer: Option<usize>,
    /// Initial reply buffer per active connection (server.write_buffer_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_usize, help_heading = "Network")]
    pub write_buffer: Option<usize>,
    /// Disable Nagle's algorithm on client sockets (server.tcp_nodelay)
    #[arg(long, value_name = "BOOL", help_heading = "Network")]
    pub tcp_nodelay: Option<bool>,
    /// On SIGTERM/SIGINT, how long transactions in flight may take to finish (server.shutdown_grace)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Network")]
    pub shutdown_grace: Option<Duration>,
    /// Upper bound on one connection's life; then 421 4.4.2 (server.max_connection_lifetime)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Network")]
    pub max_connection_lifetime: Option<Duration>,
    /// Log level: error, warn, info or debug (server.log_level)
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level, help_heading = "Network")]
    pub log_level: Option<String>,

    /// Our name in the greeting, EHLO reply and Received: header (smtp.hostname)
    #[arg(long, value_name = "NAME", help_heading = "SMTP")]
    pub hostname: Option<String>,
    /// Recipient domain to accept mail for; repeat for several; others get 550 5.7.1 (smtp.accepted_domains)
    #[arg(long, value_name = "DOMAIN", help_heading = "SMTP")]
    pub domain: Vec<String>,
    /// Largest message body, e.g. 50MiB; advertised as SIZE (smtp.max_message_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, help_heading = "SMTP")]
    pub max_message_size: Option<u64>,
    /// Recipients per transaction, at least 100 (smtp.max_recipients)
    #[arg(long, value_name = "N", help_heading = "SMTP")]
    pub max_recipients: Option<usize>,
    /// Longest command line including CRLF, at least 512 (smtp.max_command_line_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_usize, help_heading = "SMTP")]
    pub max_command_line: Option<usize>,
    /// Longest text line in DATA including CRLF, at least 1000 (smtp.max_text_line_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_usize, help_heading = "SMTP")]
    pub max_text_line: Option<usize>,
    /// Failed commands before 421 and close (smtp.max_errors)
    #[arg(long, value_name = "N", help_heading = "SMTP")]
    pub max_errors: Option<u32>,
    /// Messages with a bare LF or CR: reject or accept (smtp.bare_newline)
    #[arg(long, value_name = "POLICY", value_parser = parse_bare_newline, help_heading = "SMTP")]
    pub bare_newline: Option<BareNewline>,
    /// Wait for the next command before 421 4.4.2; RFC 5321 §4.5.3.2.7 (smtp.command_timeout)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "SMTP")]
    pub command_timeout: Option<Duration>,
    /// Wait for the next block of message data before 421 4.4.2 (smtp.data_timeout)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "SMTP")]
    pub data_timeout: Option<Duration>,

    /// Spool root directory; shard n writes DIR/shard-<n>/ (spool.dir)
    #[arg(long, value_name = "DIR", help_heading = "Spool")]
    pub spool: Option<PathBuf>,
    /// Seal a spool segment past this size (spool.segment_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, help_heading = "Spool")]
    pub segment_size: Option<u64>,
    /// fsync: 250 only after fdatasync; none: benchmarks only, a crash loses mail (spool.durability)
    #[arg(long, value_name = "MODE", value_parser = parse_durability, help_heading = "Spool")]
    pub durability: Option<Durability>,
    /// Body bytes buffered per message before streaming it to disk (spool.max_buffered_message_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_usize, help_heading = "Spool")]
    pub max_buffered_message: Option<usize>,
    /// With fsync: wait this long for more commits before each fdatasync, e.g. 200us (spool.group_commit_delay)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Spool")]
    pub group_commit_delay: Option<Duration>,
    /// Refuse new messages with 452 4.3.1 below this much free disk (spool.min_free_bytes)
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, help_heading = "Spool")]
    pub min_free: Option<u64>,
}

impl ConfigOverrides {
    /// `(flag id, default)` for every flag but `--config`, taken from
    /// [`Config::default`]; `ringmx serve --help` appends them to the help.
    pub fn help_defaults() -> Vec<(&'static str, String)> {
        let d = Config::default();
        let (srv, smtp, spool) = (&d.server, &d.smtp, &d.spool);
        let size = |n: u64| format_bytes(n);
        vec![
            (
                "listen",
                srv.listen
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            ("cores", srv.cores.to_string()),
            ("max_connections", srv.max_connections_per_shard.to_string()),
            ("backlog", srv.backlog.to_string()),
            ("read_buffer", size(srv.read_buffer_bytes as u64)),
            ("write_buffer", size(srv.write_buffer_bytes as u64)),
            ("tcp_nodelay", srv.tcp_nodelay.to_string()),
            ("shutdown_grace", format_duration(srv.shutdown_grace)),
            (
                "max_connection_lifetime",
                format_duration(srv.max_connection_lifetime),
            ),
            ("log_level", srv.log_level.clone()),
            ("hostname", smtp.hostname.clone()),
            ("domain", smtp.accepted_domains.join(" ")),
            ("max_message_size", size(smtp.max_message_bytes)),
            ("max_recipients", smtp.max_recipients.to_string()),
            ("max_command_line", smtp.max_command_line_bytes.to_string()),
            ("max_text_line", smtp.max_text_line_bytes.to_string()),
            ("max_errors", smtp.max_errors.to_string()),
            ("bare_newline", enum_name(&smtp.bare_newline)),
            ("command_timeout", format_duration(smtp.command_timeout)),
            ("data_timeout", format_duration(smtp.data_timeout)),
            ("spool", spool.dir.display().to_string()),
            ("segment_size", size(spool.segment_bytes)),
            ("durability", enum_name(&spool.durability)),
            (
                "max_buffered_message",
                size(spool.max_buffered_message_bytes as u64),
            ),
            ("min_free", size(spool.min_free_bytes)),
            (
                "group_commit_delay",
                format_duration(spool.group_commit_delay),
            ),
        ]
    }
}

/// A serde unit enum's lowercase name (`reject`, `fsync`).
fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Formats a size the way [`parse_bytes`] reads it, in the largest exact
/// binary unit (`50MiB`, `16KiB`, `1000`).
///
/// # Example
/// ```
/// use ringmx::config::{format_bytes, parse_bytes};
/// assert_eq!(format_bytes(50 << 20), "50MiB");
/// assert_eq!(format_bytes(1000), "1000");
/// assert_eq!(parse_bytes(&format_bytes(16 << 10)), Ok(16 << 10));
/// ```
pub fn format_bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

fn parse_size_usize(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    usize::try_from(n).map_err(|_| format!("{s:?} is too large"))
}

fn parse_log_level(s: &str) -> Result<String, String> {
    match s {
        "error" | "warn" | "info" | "debug" => Ok(s.to_owned()),
        _ => Err(format!("{s:?}: use error, warn, info or debug")),
    }
}

fn parse_bare_newline(s: &str) -> Result<BareNewline, String> {
    match s {
        "reject" => Ok(BareNewline::Reject),
        "accept" => Ok(BareNewline::Accept),
        _ => Err(format!("{s:?}: use reject or accept")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "none" => Ok(Durability::None),
        _ => Err(format!("{s:?}: use fsync or none")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rfc5321_4_5_3_1_8_recipient_minimum_enforced() {
        let mut c = Config::default();
        c.smtp.max_recipients = 99;
        assert_eq!(c.validate(), Err(ConfigError::TooFewRecipients(99)));
    }

    #[test]
    fn read_buffer_must_hold_a_line() {
        let mut c = Config::default();
        c.server.read_buffer_bytes = 1000;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BufferSmallerThanLine { .. })
        ));
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_bytes("50MiB"), Ok(50 << 20));
        assert_eq!(parse_bytes("1k"), Ok(1024));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let c: Config = toml::from_str(
            "[smtp]\nhostname = \"mx.example\"\nmax_message_bytes = \"10MiB\"\n\
             command_timeout = \"10m\"\n[spool]\ndurability = \"none\"\n",
        )
        .unwrap();
        assert_eq!(c.smtp.hostname, "mx.example");
        assert_eq!(c.smtp.max_message_bytes, 10 << 20);
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(600));
        assert_eq!(c.spool.durability, Durability::None);
        let err = toml::from_str::<Config>("[smtp]\nhostnme = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("hostnme"), "{err}");
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    #[test]
    fn cores_in_toml_all_count_list_and_ranges() {
        let cores = |t: &str| {
            toml::from_str::<Config>(&format!("[server]\ncores = {t}\n")).map(|c| c.server.cores)
        };
        assert_eq!(cores("\"all\"").unwrap(), Cores::All);
        assert_eq!(cores("4").unwrap(), Cores::Count(4));
        assert_eq!(cores("[0, 1]").unwrap(), Cores::List(vec![0, 1]));
        assert_eq!(cores("\"0-2,5\"").unwrap(), Cores::List(vec![0, 1, 2, 5]));
        assert_eq!(cores("\"3,\"").unwrap(), Cores::List(vec![3]));
        assert!(cores("\"some\"")
            .unwrap_err()
            .to_string()
            .contains("not a core selection"));
        assert!(cores("true").is_err());
        // Round trip, including a one-CPU list (which must not become a count).
        for c in [
            Cores::All,
            Cores::Count(2),
            Cores::List(vec![1]),
            Cores::List(vec![0, 2]),
        ] {
            let mut cfg = Config::default();
            cfg.server.cores = c.clone();
            let back: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back.server.cores, c);
            assert_eq!(c.to_string().parse::<Cores>().unwrap(), c);
        }
    }

    #[test]
    fn cores_resolve_against_the_affinity_mask() {
        let allowed = [0, 1, 2, 3];
        assert_eq!(Cores::All.resolve(&allowed).unwrap(), allowed);
        assert_eq!(Cores::Count(2).resolve(&[2, 3]).unwrap(), [2, 3]);
        assert_eq!(Cores::List(vec![3, 1]).resolve(&allowed).unwrap(), [3, 1]);
        let e = Cores::List(vec![0, 9])
            .resolve(&allowed)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "server.cores: CPU 9 is not available to this process (available: 0-3)"
        );
        let e = Cores::Count(5).resolve(&[0, 1, 3]).unwrap_err().to_string();
        assert_eq!(
            e,
            "server.cores: 5 shards asked for, but only 3 CPUs are available (0-1,3)"
        );
        assert!(Cores::List(vec![1, 1]).resolve(&allowed).is_err());
        assert_eq!(
            Cores::Count(0).resolve(&allowed),
            Err(ConfigError::Zero("server.cores"))
        );
    }

    #[test]
    fn flags_override_the_file_and_the_file_the_defaults() {
        let mut c = Config::from_toml(
            "[smtp]\nhostname = \"file.example\"\nmax_errors = 3\n[server]\nbacklog = 7\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let flags = ConfigOverrides {
            hostname: Some("flag.example".into()),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            domain: vec!["a.example".into(), "b.example".into()],
            command_timeout: Some(Duration::from_secs(9)),
            ..ConfigOverrides::default()
        };
        c.apply(&flags);
        assert_eq!(c.smtp.hostname, "flag.example");
        assert_eq!(c.smtp.max_errors, 3);
        assert_eq!(c.server.backlog, 7);
        assert_eq!(c.server.listen, ["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(c.smtp.accepted_domains, ["a.example", "b.example"]);
        assert_eq!(c.smtp.command_timeout, Duration::from_secs(9));
        assert_eq!(c.smtp.data_timeout, SmtpConfig::default().data_timeout);
    }

    #[test]
    fn file_errors_name_line_and_column() {
        let e = Config::from_toml(
            "[smtp]\nhostname = \"x\"\nhostnme = 1\n",
            Path::new("f.toml"),
        )
        .unwrap_err();
        let ConfigError::Parse {
            line,
            column,
            reason,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!((*line, *column), (3, 1), "{e}");
        assert!(reason.starts_with("unknown field `hostnme`"), "{reason}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn every_flag_shows_a_default_from_config_default() {
        use clap::Args;
        let cmd = ConfigOverrides::augment_args(clap::Command::new("serve"));
        let defaults = ConfigOverrides::help_defaults();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "config" {
                continue;
            }
            assert!(
                defaults.iter().any(|(d, _)| *d == id),
                "--{id} has no default for --help"
            );
        }
        assert_eq!(defaults.len(), cmd.get_arguments().count() - 1);
        let get = |id: &str| defaults.iter().find(|(d, _)| *d == id).unwrap().1.clone();
        assert_eq!(get("max_message_size"), "50MiB");
        assert_eq!(get("listen"), "127.0.0.1:2525");
        assert_eq!(get("bare_newline"), "reject");
        assert_eq!(get("command_timeout"), "300s");
    }

    #[test]
    fn validation_catches_duplicates_and_empty_lists() {
        let mut c = Config::default();
        c.server.listen = vec!["127.0.0.1:25".parse().unwrap(); 2];
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateListen(_))));
        let mut c = Config::default();
        c.smtp.accepted_domains.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoDomains));
    }
}
