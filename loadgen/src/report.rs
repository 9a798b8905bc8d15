//! What a person or a script reads: the live line per interval, the final text
//! summary, and the JSON summary (`--json`), which also carries the full
//! histograms so that `loadgen compare` can redraw any percentile later.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::aggregate::{IntervalKind, Merged, Totals};
use crate::config::{format_size, Load, Pipelining, RunConfig};
use crate::hlog::encode_histogram;
use crate::stats::{Command, ErrorKind, Percentiles, Phase};
use crate::tls::TlsMode;

/// Version of the JSON summary layout; bumped when a field changes meaning.
pub const SUMMARY_FORMAT: u32 = 1;

/// The machine-readable summary of one run (`--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// [`SUMMARY_FORMAT`].
    pub format: u32,
    /// `--label`, or the target.
    pub label: String,
    /// The server as given.
    pub target: String,
    /// What was asked for.
    pub config: ConfigEcho,
    /// The run was interrupted (Ctrl-C); totals cover the part that ran.
    pub aborted: bool,
    /// Length of the measured window in seconds (warm-up and drain excluded).
    pub measured_s: f64,
    /// Message outcomes.
    pub messages: MessageCounts,
    /// Accepted messages per second in the measured window.
    pub msgs_per_s: f64,
    /// Accepted message megabytes (10^6 bytes) per second in the measured window.
    pub mb_per_s: f64,
    /// Connections opened, and on how many commands were pipelined.
    pub connections: ConnectionCounts,
    /// TLS handshakes completed per second in the measured window (0
    /// without TLS; absent in summaries from before TLS).
    #[serde(default)]
    pub handshakes_per_s: f64,
    /// Replies by command, then by class (`2xx`..`5xx`); commands never sent are left out.
    pub replies: BTreeMap<String, BTreeMap<String, u64>>,
    /// RCPT replies by code: `250`, `550` and `other` (recipient checks;
    /// absent in summaries written before it existed).
    #[serde(default)]
    pub rcpt_replies: BTreeMap<String, u64>,
    /// Errors by kind; kinds that never happened are left out.
    pub errors: BTreeMap<String, u64>,
    /// The first error message of each kind seen.
    pub first_errors: BTreeMap<String, String>,
    /// Latency percentiles in milliseconds by phase (`e2e`, `transaction`,
    /// `eod`, `connect`, `greeting`, `handshake`).
    pub latency_ms: BTreeMap<String, Percentiles>,
    /// Full latency histograms by phase: HdrHistogram V2 compressed, base64,
    /// values in nanoseconds (the `.hlog` encoding).
    pub histograms: BTreeMap<String, String>,
}

/// The run's settings, as recorded in the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// Closed or open loop (with rate and arrivals).
    pub load: Load,
    /// `--connections`.
    pub connections: usize,
    /// `--cores` actually used.
    pub cores: usize,
    /// `--duration` in seconds, if given.
    pub duration_s: Option<f64>,
    /// `--messages`, if given.
    pub messages: Option<u64>,
    /// `--warmup` in seconds.
    pub warmup_s: f64,
    /// `--size` as given.
    pub size: String,
    /// `--rcpts`.
    pub rcpts: usize,
    /// `--msgs-per-conn` (0 = unlimited).
    pub msgs_per_conn: u64,
    /// `--pipelining`.
    pub pipelining: crate::config::Pipelining,
    /// `--chain`; absent in summaries from before the flag.
    #[serde(default)]
    pub chain: bool,
    /// `--bdat`.
    pub bdat: bool,
    /// `--scenario`.
    pub scenario: crate::config::Scenario,
    /// `--starttls` or `--tls`; absent without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
}

/// Message outcomes over the measured window and the drain.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MessageCounts {
    /// Accepted (final 2xx).
    pub ok: u64,
    /// Refused with 4xx.
    pub temp_fail: u64,
    /// Refused with 5xx.
    pub perm_fail: u64,
    /// Lost to connection errors.
    pub error: u64,
    /// Of `ok`: accepted after the measured window ended (drain).
    pub ok_after_end: u64,
    /// Open loop: due before the end but never started (the server, or the
    /// connection count, could not keep up with `--rate`).
    pub backlog: u64,
    /// Accepted during warm-up (not in any other number).
    pub warmup_ok: u64,
}

/// Connection counts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// TCP connections established.
    pub opened: u64,
    /// Of those, how many pipelined.
    pub pipelined: u64,
    /// Of those, how many had a server that advertised CHUNKING (BDAT);
    /// `--bdat` sends BDAT either way.
    pub chunking: u64,
    /// TLS handshakes completed (absent in summaries from before TLS).
    #[serde(default)]
    pub tls_handshakes: u64,
    /// Of those, abbreviated ones (session resumed).
    #[serde(default)]
    pub tls_resumed: u64,
    /// TLS handshakes during the warm-up (in no other number), so that a
    /// server's CPU over the whole run can be divided by all handshakes.
    #[serde(default)]
    pub warmup_tls_handshakes: u64,
    /// Early talkers sent (`--pregreet-fraction`).
    #[serde(default)]
    pub pregreet: u64,
    /// Of those, refused by the server before any session.
    #[serde(default)]
    pub pregreet_rejected: u64,
}

impl Summary {
    /// Builds the summary of a finished (or interrupted) run.
    pub fn new(cfg: &RunConfig, totals: &Totals) -> Summary {
        let c = &totals.stats.counters;
        let mut replies = BTreeMap::new();
        for cmd in Command::ALL {
            let by_class: BTreeMap<String, u64> = (2..=5)
                .map(|class| (format!("{class}xx"), c.replies_of(cmd, class)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if !by_class.is_empty() {
                replies.insert(cmd.name().to_string(), by_class);
            }
        }
        let errors = ErrorKind::ALL
            .iter()
            .filter(|k| c.errors_of(**k) > 0)
            .map(|k| (k.name().to_string(), c.errors_of(*k)))
            .collect();
        let first_errors = ErrorKind::ALL
            .iter()
            .filter_map(|k| {
                let e = totals.stats.first_errors[*k as usize].as_ref()?;
                Some((k.name().to_string(), e.clone()))
            })
            .collect();
        let hist = |p: Phase| totals.stats.hists.get(p);
        Summary {
            format: SUMMARY_FORMAT,
            label: cfg.label.clone(),
            target: cfg.target_text.clone(),
            config: ConfigEcho {
                load: cfg.load,
                connections: cfg.connections,
                cores: cfg.effective_cores(),
                duration_s: cfg.duration.map(|d| d.as_secs_f64()),
                messages: cfg.messages,
                warmup_s: cfg.warmup.as_secs_f64(),
                size: cfg.sizes.spec.clone(),
                rcpts: cfg.rcpts,
                msgs_per_conn: cfg.msgs_per_conn,
                pipelining: cfg.pipelining,
                chain: cfg.chain,
                bdat: cfg.bdat,
                scenario: cfg.scenario,
                tls: cfg.tls.as_ref().map(|t| t.mode),
            },
            aborted: totals.aborted,
            measured_s: totals.measured.as_secs_f64(),
            messages: MessageCounts {
                ok: c.msgs_ok,
                temp_fail: c.msgs_temp_fail,
                perm_fail: c.msgs_perm_fail,
                error: c.msgs_error,
                ok_after_end: totals.drain.msgs_ok,
                backlog: c.backlog,
                warmup_ok: totals.warmup.msgs_ok,
            },
            msgs_per_s: totals.msgs_per_sec(),
            mb_per_s: totals.mb_per_sec(),
            connections: ConnectionCounts {
                opened: c.conns_opened,
                pipelined: c.conns_pipelined,
                chunking: c.conns_chunking,
                tls_handshakes: c.tls_handshakes,
                tls_resumed: c.tls_resumed,
                warmup_tls_handshakes: totals.warmup.tls_handshakes,
                pregreet: c.pregreet_sent,
                pregreet_rejected: c.pregreet_rejected,
            },
            handshakes_per_s: totals.handshakes_per_sec(),
            replies,
            rcpt_replies: ["250", "550", "other"]
                .iter()
                .zip(c.rcpt_codes)
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            errors,
            first_errors,
            latency_ms: Phase::ALL
                .iter()
                .map(|p| (p.name().to_string(), Percentiles::of(hist(*p))))
                .collect(),
            histograms: Phase::ALL
                .iter()
                .map(|p| (p.name().to_string(), encode_histogram(hist(*p))))
                .collect(),
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let m = &self.messages;
        let cfg = &self.config;
        // Writing into a String cannot fail; the results are ignored below.
        let _ = writeln!(
            s,
            "\n== loadgen summary: {} ({}) ==",
            self.label, self.target
        );
        let _ = writeln!(
            s,
            "{}, {} connections on {} core{}, size {}, {} rcpt{}, {}, pipelining {}{}{}",
            cfg.load,
            cfg.connections,
            cfg.cores,
            if cfg.cores == 1 { "" } else { "s" },
            cfg.size,
            cfg.rcpts,
            if cfg.rcpts == 1 { "" } else { "s" },
            if cfg.msgs_per_conn == 0 {
                "connections kept for the run".to_string()
            } else {
                format!("{} msgs per connection", cfg.msgs_per_conn)
            },
            pipelining_name(cfg.pipelining),
            if cfg.bdat { ", BDAT" } else { "" },
            if cfg.chain { "" } else { ", not chained" },
        );
        if self.aborted {
            let _ = writeln!(s, "INTERRUPTED: these totals cover only the part that ran");
        }
        let _ = writeln!(
            s,
            "measured     {:.2} s{}",
            self.measured_s,
            if cfg.warmup_s > 0.0 {
                format!(
                    " (after {:.1} s warm-up: {} msgs)",
                    cfg.warmup_s, m.warmup_ok
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "messages     ok {}  temp-fail(4xx) {}  perm-fail(5xx) {}  error {}{}",
            m.ok,
            m.temp_fail,
            m.perm_fail,
            m.error,
            if m.ok_after_end > 0 {
                format!("  (of ok, {} finished after the end)", m.ok_after_end)
            } else {
                String::new()
            }
        );
        let _ = write!(
            s,
            "throughput   {:.1} msgs/s  {:.2} MB/s",
            self.msgs_per_s, self.mb_per_s
        );
        if let Load::Open { rate, .. } = cfg.load {
            let _ = write!(s, "  (target {rate} msgs/s");
            if m.backlog > 0 {
                let _ = write!(
                    s,
                    "; {} due messages never started: target not met",
                    m.backlog
                );
            }
            let _ = write!(s, ")");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "connections  opened {}  pipelined {}  CHUNKING advertised {}",
            self.connections.opened, self.connections.pipelined, self.connections.chunking
        );
        if let Some(mode) = cfg.tls {
            let _ = writeln!(
                s,
                "tls          {} handshakes {} (resumed {})  {:.1} handshakes/s",
                match mode {
                    TlsMode::StartTls => "STARTTLS",
                    TlsMode::Implicit => "implicit",
                },
                self.connections.tls_handshakes,
                self.connections.tls_resumed,
                self.handshakes_per_s
            );
        }
        if self.connections.pregreet > 0 {
            let _ = writeln!(
                s,
                "pregreet     sent {}  rejected {}  served {}",
                self.connections.pregreet,
                self.connections.pregreet_rejected,
                self.connections.pregreet - self.connections.pregreet_rejected
            );
        }

        let _ = writeln!(
            s,
            "\nlatency (ms)          {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
        );
        for phase in Phase::ALL {
            let Some(p) = self.latency_ms.get(phase.name()) else {
                continue;
            };
            if p.count == 0 {
                continue;
            }
            let _ = writeln!(
                s,
                "  {:<20}{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                phase.title(),
                p.count,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.p999),
                ms(p.p9999),
                ms(p.max),
                ms(p.mean)
            );
        }
        if cfg.load != Load::Closed {
            let _ = writeln!(
                s,
                "  (open loop: end-to-end is measured from each message's intended start, \
                 so queueing behind a slow server counts)"
            );
        }

        let _ = writeln!(
            s,
            "\nreplies       {:>10} {:>10} {:>10} {:>10}",
            "2xx", "3xx", "4xx", "5xx"
        );
        for (cmd, by_class) in Command::ALL
            .iter()
            .filter_map(|c| Some((c, self.replies.get(c.name())?)))
        {
            let n = |k: &str| by_class.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "  {:<11} {:>10} {:>10} {:>10} {:>10}",
                cmd.name(),
                n("2xx"),
                n("3xx"),
                n("4xx"),
                n("5xx")
            );
        }

        let rcpt = |k: &str| self.rcpt_replies.get(k).copied().unwrap_or(0);
        let all = rcpt("250") + rcpt("550") + rcpt("other");
        if all > 0 {
            let pct = |n: u64| 100.0 * n as f64 / all as f64;
            let _ = writeln!(
                s,
                "  RCPT split: 250 {} ({:.1}%), 550 {} ({:.1}%), other {} ({:.1}%)",
                rcpt("250"),
                pct(rcpt("250")),
                rcpt("550"),
                pct(rcpt("550")),
                rcpt("other"),
                pct(rcpt("other"))
            );
        }

        if self.errors.is_empty() {
            let _ = writeln!(s, "\nerrors        none");
        } else {
            let _ = writeln!(s, "\nerrors");
            for kind in ErrorKind::ALL {
                if let Some(n) = self.errors.get(kind.name()) {
                    let first = self
                        .first_errors
                        .get(kind.name())
                        .map_or("", String::as_str);
                    let _ = writeln!(s, "  {:<16}{:>10}  first: {first}", kind.name(), n);
                }
            }
        }
        s
    }
}

fn pipelining_name(p: Pipelining) -> &'static str {
    match p {
        Pipelining::Auto => "auto",
        Pipelining::On => "on",
        Pipelining::Off => "off",
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The live line for one merged interval, e.g.
/// `[   3s]   15234 msgs/s  p50 0.512 p99 1.234 p99.9 3.210 ms  4xx 0 5xx 0 err 0`.
/// `elapsed` is the interval's end since the run's start.
pub fn live_line(m: &Merged, elapsed: std::time::Duration) -> String {
    let c = &m.stats.counters;
    let secs = m.length().as_secs_f64();
    let rate = if secs > 0.0 {
        c.msgs_ok as f64 / secs
    } else {
        0.0
    };
    let h = m.stats.hists.get(Phase::E2e);
    let q = |x: f64| ms(h.value_at_quantile(x) as f64 / crate::stats::NANOS_PER_MS);
    let (t, p) = c.rejections();
    let (tag, throughput) = match m.kind {
        IntervalKind::Warmup => (" warmup", format!("{rate:>9.0} msgs/s")),
        IntervalKind::Measure => ("", format!("{rate:>9.0} msgs/s")),
        // The drain is a short tail after the end: a rate would mislead.
        IntervalKind::Drain => (
            " drain",
            format!("{:>9} msgs finished after the end", c.msgs_ok),
        ),
    };
    let latency = if h.is_empty() {
        "no messages completed".to_string()
    } else {
        format!("p50 {} p99 {} p99.9 {} ms", q(0.5), q(0.99), q(0.999))
    };
    format!(
        "[{:>5.0}s{tag}] {throughput}  {latency}  4xx {t} 5xx {p} err {}",
        elapsed.as_secs_f64(),
        c.errors_total()
    )
}

/// The first line printed: what is about to run.
pub fn banner(cfg: &RunConfig) -> String {
    let sizes: Vec<String> = cfg
        .sizes
        .entries
        .iter()
        .map(|e| {
            if cfg.sizes.entries.len() == 1 {
                format_size(e.bytes)
            } else {
                format!("{} ({})", format_size(e.bytes), e.weight)
            }
        })
        .collect();
    let how_long = match (cfg.duration, cfg.messages) {
        (Some(d), Some(n)) => format!("{:.1} s or {n} messages", d.as_secs_f64()),
        (Some(d), None) => format!("{:.1} s", d.as_secs_f64()),
        (None, Some(n)) => format!("{n} messages"),
        (None, None) => String::new(),
    };
    format!(
        "loadgen -> {}: {}, {} connections on {} core(s), {how_long}{}, size {}",
        cfg.target_text,
        cfg.load,
        cfg.connections,
        cfg.effective_cores(),
        if cfg.warmup.is_zero() {
            String::new()
        } else {
            format!(" after {:.1} s warm-up", cfg.warmup.as_secs_f64())
        },
        sizes.join(", ")
    )
}
