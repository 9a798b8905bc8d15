//! What a run is asked to do: the validated configuration, and the parser for
//! size distributions. Sizes and durations are read by [`ringmx::units`], as
//! the server reads them.
//!
//! `main.rs` owns the flags and their help text; this file owns what they mean.
//! Everything here is checked once, before any connection is opened, and each
//! error carries the offending text.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringmx::units::{parse_size_as, UnitError};
use serde::{Deserialize, Serialize};

/// A flag value that could not be understood, or flags that contradict each other.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size such as `1k`, `64KiB` or `1MB` did not parse (the forms of
    /// [`ringmx::units`], shared with the server).
    #[error("bad size: {0}")]
    Size(#[from] UnitError),
    /// A size distribution such as `1k:80,64k:15,1m:5` did not parse.
    #[error("bad size distribution {0:?}: expected SIZE or SIZE:WEIGHT,SIZE:WEIGHT,...")]
    SizeDist(String),
    /// Two flags, or a flag's value, cannot be honoured together.
    #[error("{0}")]
    Invalid(String),
}

/// How the next message's start time is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Load {
    /// Closed loop: each connection starts its next message as soon as the
    /// previous one is answered. Throughput is whatever the server allows.
    Closed,
    /// Open loop: messages are due at a fixed average rate whatever the server
    /// does; latency is measured from each message's due time.
    Open {
        /// Messages per second over all connections and cores.
        rate: f64,
        /// How due times are spaced.
        arrivals: Arrivals,
    },
}

/// Spacing of due times in open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced, 1/rate apart (as wrk2 does).
    Constant,
    /// A Poisson process: exponential gaps with mean 1/rate, as independent
    /// senders would produce.
    Poisson,
}

/// When to send commands without waiting for each reply (RFC 2920).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pipelining {
    /// Pipeline when the server's EHLO reply advertises PIPELINING.
    Auto,
    /// Always pipeline, advertised or not (tests a server's tolerance).
    On,
    /// Never pipeline: one command, one reply, one round trip each.
    Off,
}

/// What one "message" of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// A full mail transaction: MAIL, RCPT..., DATA or BDAT, body.
    Mail,
    /// One NOOP round trip; with `--msgs-per-conn 1` this is connect + EHLO +
    /// NOOP + QUIT, the cost of a session without the transaction.
    Noop,
    /// A session and nothing in it: connect, greeting, EHLO (with TLS:
    /// the handshake and EHLO again), QUIT. Every "message" is a new
    /// connection (`--msgs-per-conn` is taken as 1): the cost of a
    /// connection, and with TLS of a handshake.
    Handshake,
}

/// One entry of a message size distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeWeight {
    /// Message size in bytes, headers included, as sent before dot-stuffing.
    pub bytes: usize,
    /// Relative weight; the weights need not add up to 100.
    pub weight: f64,
}

/// The message sizes a run draws from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeDist {
    /// Sizes with their weights, in the order given.
    pub entries: Vec<SizeWeight>,
    /// The flag text it was parsed from, for reports.
    pub spec: String,
}

impl SizeDist {
    /// Parses `1k` (one fixed size) or `1k:80,64k:15,1m:5` (weighted sizes).
    ///
    /// # Errors
    /// [`ConfigError::SizeDist`] or [`ConfigError::Size`] naming the bad text.
    ///
    /// # Example
    /// ```
    /// let d = loadgen::config::SizeDist::parse("1k:80,64k:20,1MB:1").unwrap();
    /// assert_eq!(d.entries[1].bytes, 65536);
    /// assert_eq!(d.entries[2].bytes, 1_000_000);
    /// assert_eq!(d.entries[1].weight, 20.0);
    /// ```
    pub fn parse(text: &str) -> Result<SizeDist, ConfigError> {
        let bad = || ConfigError::SizeDist(text.to_string());
        let mut entries = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let (size, weight) = match part.split_once(':') {
                Some((s, w)) => (s, w.trim().parse::<f64>().map_err(|_| bad())?),
                None => (part, 1.0),
            };
            if !(weight.is_finite() && weight > 0.0) {
                return Err(bad());
            }
            entries.push(SizeWeight {
                bytes: parse_size_as(size)?,
                weight,
            });
        }
        if entries.is_empty() {
            return Err(bad());
        }
        Ok(SizeDist {
            entries,
            spec: text.to_string(),
        })
    }

    /// Picks an entry index for a uniform random `u` in [0, 1).
    pub fn pick(&self, u: f64) -> usize {
        let total: f64 = self.entries.iter().map(|e| e.weight).sum();
        let mut x = u * total;
        for (i, e) in self.entries.iter().enumerate() {
            if x < e.weight {
                return i;
            }
            x -= e.weight;
        }
        self.entries.len() - 1
    }

    /// Mean message size in bytes, weighted.
    pub fn mean_bytes(&self) -> f64 {
        let total: f64 = self.entries.iter().map(|e| e.weight).sum();
        self.entries
            .iter()
            .map(|e| e.bytes as f64 * e.weight)
            .sum::<f64>()
            / total
    }
}

/// Formats a byte count the way sizes are written on the command line.
pub fn format_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Everything `loadgen run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server, resolved once at start.
    pub target: SocketAddr,
    /// The target as the user wrote it, for reports.
    pub target_text: String,
    /// Concurrent connections over all cores; in open loop, the most messages
    /// in flight at once.
    pub connections: usize,
    /// Generator threads (glommio executors), one per CPU.
    pub cores: usize,
    /// Closed or open loop.
    pub load: Load,
    /// Measured run length; `None` with `messages` set means "until N messages".
    pub duration: Option<Duration>,
    /// Stop after this many messages (attempts, failed ones included), not
    /// counting warm-up.
    pub messages: Option<u64>,
    /// Time before measurement starts; its samples are shown live but left out
    /// of totals and logs.
    pub warmup: Duration,
    /// Message sizes to draw from.
    pub sizes: SizeDist,
    /// Recipients per message.
    pub rcpts: usize,
    /// Messages per connection before QUIT; 0 = keep the connection for the run.
    pub msgs_per_conn: u64,
    /// RFC 2920 command pipelining.
    pub pipelining: Pipelining,
    /// Closed loop, pipelined DATA: end one message's data and start the next
    /// message's envelope in the same write (RFC 2920 §3.1).
    pub chain: bool,
    /// Send the body with BDAT (RFC 3030) instead of DATA.
    pub bdat: bool,
    /// Mail transaction or NOOP round trip.
    pub scenario: Scenario,
    /// Reverse path for MAIL FROM.
    pub from: String,
    /// Domain of the generated recipients `user<N>@DOMAIN`.
    pub to_domain: String,
    /// Recipients drawn in turn from a pattern instead (`--rcpt-pattern`).
    pub rcpt_pattern: Option<RcptPattern>,
    /// Name sent in EHLO/HELO.
    pub ehlo: String,
    /// Longest wait for any one read of a server reply (or write).
    pub reply_timeout: Duration,
    /// Longest wait for a TCP connect.
    pub connect_timeout: Duration,
    /// Send a PROXY v2 header from these addresses, one per connection in
    /// turn (`--proxy-source`).
    pub proxy_source: Option<ipnet::IpNet>,
    /// `--auth USER:PASS`: AUTH PLAIN after TLS on every connection.
    pub auth: Option<String>,
    /// File that receives every acknowledged queue id, one per line.
    pub ack_log: Option<PathBuf>,
    /// File that receives the JSON summary.
    pub json: Option<PathBuf>,
    /// Prefix for `.hlog` interval logs and `.hgrm` percentile files.
    pub hist_out: Option<PathBuf>,
    /// Name of this run in reports and in `compare`.
    pub label: String,
    /// Seed for size choice and Poisson gaps; the same seed gives the same draws.
    pub seed: u64,
    /// Print one line per second while running.
    pub live: bool,
    /// `--starttls` or `--tls`, with its client config built.
    pub tls: Option<crate::tls::TlsSetup>,
    /// Bind each connection to the next address of this network
    /// (`--source-ips`), so one loadgen looks like many clients.
    pub source_ips: Option<ipnet::IpNet>,
    /// Share of connections that send EHLO before the greeting
    /// (`--pregreet-fraction`): early talkers, as spamware is.
    pub pregreet_fraction: f64,
}

/// `--rcpt-pattern`: addresses `PREFIX{LO..HI}SUFFIX` (both ends included),
/// e.g. `user{0..1999}@example.com`. Each connection takes `--rcpts` of them
/// per message, in turn, starting at its own offset, so a run covers the
/// whole range; with a recipient map listing only part of it, the run mixes
/// known and unknown recipients in that proportion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptPattern {
    prefix: String,
    lo: u64,
    hi: u64,
    suffix: String,
}

impl RcptPattern {
    /// Parses `PREFIX{LO..HI}SUFFIX`.
    ///
    /// # Errors
    /// No `{LO..HI}`, numbers that do not parse, `LO > HI`, or a result
    /// with spaces or angle brackets (it must fit in `RCPT TO:<..>`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("--rcpt-pattern {s:?}: {why}; e.g. user{{0..999}}@example.com");
        let (prefix, rest) = s.split_once('{').ok_or_else(|| bad("no {LO..HI} range"))?;
        let (range, suffix) = rest.split_once('}').ok_or_else(|| bad("no closing }"))?;
        let (lo, hi) = range
            .split_once("..")
            .ok_or_else(|| bad("the range is not LO..HI"))?;
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| bad("LO and HI must be numbers"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(bad("LO is above HI"));
        }
        if s.contains([' ', '<', '>', '\r', '\n']) || !suffix.contains('@') && !prefix.contains('@')
        {
            return Err(bad("an address needs an @ and no spaces or angle brackets"));
        }
        Ok(Self {
            prefix: prefix.into(),
            lo,
            hi,
            suffix: suffix.into(),
        })
    }

    /// How many addresses the pattern makes.
    pub fn count(&self) -> u64 {
        self.hi - self.lo + 1
    }

    /// Appends `RCPT TO:<address n>\r\n` (n taken modulo [`Self::count`]).
    pub fn write_rcpt(&self, n: u64, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "RCPT TO:<{}{}{}>\r\n",
            self.prefix,
            self.lo + n % self.count(),
            self.suffix
        );
    }
}

impl RunConfig {
    /// Checks flag combinations that each parse but cannot run together.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with the numbers involved.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if self.connections == 0 {
            return invalid("--connections must be at least 1".into());
        }
        if self.cores == 0 {
            return invalid("--cores must be at least 1".into());
        }
        if self.rcpts == 0 {
            return invalid("--rcpts must be at least 1".into());
        }
        if let Load::Open { rate, .. } = self.load {
            if !(rate.is_finite() && rate > 0.0) {
                return invalid(format!("--rate must be a positive number, got {rate}"));
            }
        }
        if self.duration.is_none() && self.messages.is_none() {
            return invalid("give --duration or --messages".into());
        }
        if self.duration == Some(Duration::ZERO) {
            return invalid("--duration must be longer than 0".into());
        }
        if self.scenario == Scenario::Handshake && self.msgs_per_conn != 1 {
            return invalid(format!(
                "--scenario handshake opens a connection per message; \
                 --msgs-per-conn {} does not fit (leave it out, or give 1)",
                self.msgs_per_conn
            ));
        }
        if self.messages == Some(0) {
            return invalid("--messages must be at least 1".into());
        }
        if let Some(a) = &self.auth {
            if !a.contains(':') || a.starts_with(':') {
                return invalid("--auth wants USER:PASS (the user name may not be empty)".into());
            }
            if self.tls.is_none() {
                return invalid(
                    "--auth needs --starttls or --tls: servers offer AUTH only over TLS".into(),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.pregreet_fraction) {
            return invalid(format!(
                "--pregreet-fraction must be between 0 and 1, got {}",
                self.pregreet_fraction
            ));
        }
        if let Some(net) = self.source_ips {
            if net.addr().is_ipv4() != self.target.is_ipv4() {
                return invalid(format!(
                    "--source-ips {net} and --target {} are not the same IP version",
                    self.target
                ));
            }
        }
        if self.reply_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid("--timeout and --connect-timeout must be longer than 0".into());
        }
        for (what, addr) in [("--from", &self.from), ("--to-domain", &self.to_domain)] {
            if addr
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'<' || b == b'>')
            {
                return invalid(format!(
                    "{what} {addr:?} may not hold spaces or angle brackets"
                ));
            }
        }
        Ok(())
    }

    /// Cores that get at least one connection: more would idle.
    pub fn effective_cores(&self) -> usize {
        self.cores.min(self.connections)
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Closed => write!(f, "closed loop"),
            Load::Open { rate, arrivals } => {
                let a = match arrivals {
                    Arrivals::Constant => "constant",
                    Arrivals::Poisson => "Poisson",
                };
                write!(f, "open loop at {rate} msgs/s ({a} arrivals)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcpt_patterns_expand_in_turn_and_bad_ones_say_why() {
        let p = RcptPattern::parse("user{8..10}@example.com").unwrap();
        assert_eq!(p.count(), 3);
        let mut out = Vec::new();
        for n in 0..4 {
            p.write_rcpt(n, &mut out);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "RCPT TO:<user8@example.com>\r\nRCPT TO:<user9@example.com>\r\n\
             RCPT TO:<user10@example.com>\r\nRCPT TO:<user8@example.com>\r\n"
        );
        let mut out = Vec::new();
        RcptPattern::parse("a@d{0..0}.example")
            .unwrap()
            .write_rcpt(5, &mut out);
        assert_eq!(out, b"RCPT TO:<a@d0.example>\r\n");
        for (bad, why) in [
            ("user@example.com", "no {LO..HI}"),
            ("user{1..x}@example.com", "must be numbers"),
            ("user{5..1}@example.com", "LO is above HI"),
            ("user{0..9}", "needs an @"),
            ("us er{0..9}@example.com", "needs an @"),
            ("user{0-9}@example.com", "not LO..HI"),
        ] {
            let e = RcptPattern::parse(bad).unwrap_err();
            assert!(
                e.contains(why) && e.contains("e.g. user{0..999}"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn sizes_have_the_servers_meaning() {
        for (text, want) in [
            ("0", 0),
            ("512", 512),
            ("1k", 1024),
            ("1K", 1024),
            ("64kb", 64_000),
            ("1m", 1 << 20),
            ("1MiB", 1 << 20),
            ("10MB", 10_000_000),
            ("2g", 2 << 30),
            ("100b", 100),
            ("1 k", 1024),
        ] {
            let d = SizeDist::parse(text).unwrap();
            assert_eq!(d.entries[0].bytes, want, "{text}");
        }
        for text in ["", "k", "1x", "1.5k", "-1", "99999999999GiB"] {
            assert!(SizeDist::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn distributions() {
        let d = SizeDist::parse("1k:80,64k:15,1m:5").unwrap();
        assert_eq!(d.entries.len(), 3);
        assert_eq!(d.pick(0.0), 0);
        assert_eq!(d.pick(0.79), 0);
        assert_eq!(d.pick(0.81), 1);
        assert_eq!(d.pick(0.96), 2);
        assert_eq!(d.pick(0.999_999), 2);
        let mean = d.mean_bytes();
        let want = 0.80 * 1024.0 + 0.15 * 65536.0 + 0.05 * 1048576.0;
        assert!((mean - want).abs() < 1e-6);
        let single = SizeDist::parse("4k").unwrap();
        assert_eq!(
            single.entries,
            vec![SizeWeight {
                bytes: 4096,
                weight: 1.0
            }]
        );
        for text in ["", "1k:", "1k:0", "1k:-3", "1k:80,,2k:20", "zz:1"] {
            assert!(SizeDist::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn size_names() {
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
