//! The Prometheus metrics: what each shard counts, and the text exposition
//! that `GET /metrics` serves (`server.metrics`, `--metrics ADDR`).
//!
//! Owns: the metric names, help texts and labels, the per-shard instrument
//! set ([`ShardMetrics`]), the reasons a connection or a message is
//! refused, and what is read at scrape time (spool files and free space per
//! shard, the process's RSS and open descriptors). Leaves to
//! [`crate::metrics`] the instruments themselves (single-writer atomics:
//! nothing shared on the hot path, see its docs) and to `http.rs` the
//! listener and its thread.
//!
//! Every per-shard series carries a `shard` label; the exposition is
//! `prometheus-client`'s Prometheus text encoder (format 0.0.4) fed by one
//! custom collector that reads every shard's instruments when scraped.
//!
//! # Adding a metric
//!
//! One line in [`shard_metrics!`] below (doc, field, kind, initial value,
//! name, help), then `shard.metrics.FIELD.inc()` (or `.add`, `.record`)
//! where it happens, on the shard's own thread. A metric with a label of
//! its own is a [`ByLabel`] over an enum implementing [`LabelValues`]: add a
//! variant there to add a reason.

mod http;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::{
    CommitStages, Counter, Gauge, Histogram, SyncMetrics, BATCH_BOUNDS, LATENCY_BOUNDS_NS,
    STAGE_BOUNDS_NS,
};
use crate::protocol::reply::{self, Reply};
use crate::protocol::session::{CommandTally, COUNTED_VERBS, REPLY_CLASSES};
use crate::protocol::Refusal;
use crate::spool::format::{parse_segment_file_name, shard_dir_name, SegmentName};

pub(crate) use http::start;

/// Declares [`ShardMetrics`] and how each of its fields is exposed. One
/// line per metric: `FIELD: TYPE = INIT, "NAME", "HELP";` (a counter's
/// name gets `_total` from the encoder).
macro_rules! shard_metrics {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty = $init:expr, $name:literal, $help:literal;
    )*) => {
        /// One shard's instruments: written only by that shard's thread,
        /// read by the scrape.
        #[derive(Debug)]
        pub(crate) struct ShardMetrics {
            $( $(#[doc = $doc])* pub(crate) $field: $ty, )*
        }

        impl Default for ShardMetrics {
            fn default() -> Self {
                Self { $( $field: $init, )* }
            }
        }

        impl ShardMetrics {
            /// Every family, each with one series set per shard.
            fn encode_all(
                shards: &[(String, Arc<ShardMetrics>)],
                enc: &mut DescriptorEncoder,
            ) -> fmt::Result {
                $( encode_family(enc, $name, $help, shards, |m| &m.$field)?; )*
                Ok(())
            }

            /// The names exposed per shard (tests check the dashboard's).
            #[cfg(test)]
            pub(crate) const NAMES: &'static [&'static str] = &[$($name),*];
        }
    };
}

shard_metrics! {
    /// Connections given an SMTP session.
    connections_accepted: Counter = Counter::default(),
        "ringmx_connections_accepted", "Connections accepted and given an SMTP session.";
    /// Connections turned away before a session, by reason.
    connections_rejected: ByLabel<ConnRejected> = ByLabel::default(),
        "ringmx_connections_rejected", "Connections turned away before a session, by reason.";
    /// Sessions open now.
    connections_open: Gauge = Gauge::default(),
        "ringmx_connections_open", "SMTP sessions open now.";
    /// Command lines by verb and reply class (counted by the session).
    commands: Arc<CommandTally> = Arc::default(),
        "ringmx_commands", "SMTP commands by verb and reply class (2xx..5xx).";
    /// Messages acknowledged with `250` (durable).
    messages_accepted: Counter = Counter::default(),
        "ringmx_messages_accepted", "Messages accepted (250 after the spool made them durable).";
    /// Body bytes of the accepted messages.
    message_bytes: Counter = Counter::default(),
        "ringmx_message_bytes", "Body bytes of accepted messages.";
    /// TLS handshakes completed, by protocol version (STARTTLS and
    /// implicit TLS; failures are in `connections_rejected`).
    tls_handshakes: ByLabel<TlsVersion> = ByLabel::default(),
        "ringmx_tls_handshakes", "TLS handshakes completed, by protocol version.";
    /// Of those, resumed from a ticket (no full handshake).
    tls_resumed: Counter = Counter::default(),
        "ringmx_tls_resumed", "TLS handshakes resumed from a session ticket.";
    /// Mail refused, by reason (see [`MsgRejected`]).
    messages_rejected: ByLabel<MsgRejected> = ByLabel::default(),
        "ringmx_messages_rejected",
        "Mail refused by reason: a MAIL, a recipient (RCPT) or a message body.";
    /// Recipients by outcome, as the session's RCPT checks count them.
    recipients: ByLabel<RcptOutcome> = ByLabel::default(),
        "ringmx_recipients", "RCPT commands by outcome (counted as each session ends).";
    /// From the end of a message's data to its reply (the commit's wait).
    end_of_data_seconds: Histogram = Histogram::seconds(LATENCY_BOUNDS_NS),
        "ringmx_end_of_data_reply_seconds",
        "Time from a message's end of data to its reply (the durable commit).";
    /// Time each group-commit fdatasync took (recorded by the spool writer;
    /// a batch written O_DSYNC with `spool.direct_io` needs none).
    fdatasync_seconds: Arc<Histogram> = Arc::new(Histogram::seconds(LATENCY_BOUNDS_NS)),
        "ringmx_spool_fdatasync_seconds",
        "Time each spool fdatasync took (none where a batch was written O_DSYNC, spool.direct_io).";
    /// Messages each group commit made durable (its batch size), by one
    /// fdatasync or one O_DSYNC write.
    commits_per_fdatasync: Arc<Histogram> = Arc::new(Histogram::counts(BATCH_BOUNDS)),
        "ringmx_spool_commits_per_fdatasync",
        "Messages made durable by each group commit, one fdatasync or O_DSYNC write (batch size).";
    /// Commit stage: oldest commit queued to its batch taken by the writer.
    commit_queue_seconds: Arc<Histogram> = Arc::new(Histogram::seconds(STAGE_BOUNDS_NS)),
        "ringmx_spool_commit_queue_seconds",
        "Per group commit: the oldest commit's wait for the writer to take its batch.";
    /// Commit stage: the batch's writes, first submitted to last complete.
    commit_write_seconds: Arc<Histogram> = Arc::new(Histogram::seconds(STAGE_BOUNDS_NS)),
        "ringmx_spool_commit_write_seconds",
        "Per group commit: the batch's writes, first submitted to last complete.";
    /// Commit stage: last write complete to the fdatasync submitted.
    commit_gap_seconds: Arc<Histogram> = Arc::new(Histogram::seconds(STAGE_BOUNDS_NS)),
        "ringmx_spool_commit_gap_seconds",
        "Per group commit: last write complete to the fdatasync submitted.";
    /// Commit stage: fdatasync complete to the session resumed.
    commit_wake_seconds: Arc<Histogram> = Arc::new(Histogram::seconds(STAGE_BOUNDS_NS)),
        "ringmx_spool_commit_wake_seconds",
        "Per message: the commit's fdatasync complete to its session resumed to reply.";
}

impl ShardMetrics {
    /// The spool writer's view of these: its two histograms.
    pub(crate) fn sync_metrics(&self) -> Arc<SyncMetrics> {
        Arc::new(SyncMetrics {
            fdatasync_seconds: Arc::clone(&self.fdatasync_seconds),
            commits_per_fdatasync: Arc::clone(&self.commits_per_fdatasync),
            stages: CommitStages {
                queue: Arc::clone(&self.commit_queue_seconds),
                write: Arc::clone(&self.commit_write_seconds),
                gap: Arc::clone(&self.commit_gap_seconds),
                wake: Arc::clone(&self.commit_wake_seconds),
            },
        })
    }

    /// Counts a refused command if it refused mail (see [`MsgRejected`]).
    pub(crate) fn note_refusal(&self, r: &Refusal) {
        if let Some(reason) = MsgRejected::of(r.verb, r.reply) {
            self.messages_rejected.inc(reason);
        }
    }
}

/// One family's descriptor, then each shard's series.
fn encode_family<I: Instrument>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    shards: &[(String, Arc<ShardMetrics>)],
    get: impl Fn(&ShardMetrics) -> &I,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, I::TYPE)?;
    for (shard, m) in shards {
        get(m).encode(shard, &mut family)?;
    }
    Ok(())
}

/// An instrument as exposed: its type and its series for one shard.
trait Instrument {
    const TYPE: MetricType;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result;
}

fn counter_series(family: &mut MetricEncoder, labels: &[(&str, &str)], v: u64) -> fmt::Result {
    family
        .encode_family(&labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

impl Instrument for Counter {
    const TYPE: MetricType = MetricType::Counter;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result {
        counter_series(family, &[("shard", shard)], self.get())
    }
}

impl Instrument for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result {
        family
            .encode_family(&[("shard", shard)])?
            .encode_gauge(&self.get())
    }
}

impl Instrument for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result {
        let s = self.snapshot();
        family
            .encode_family(&[("shard", shard)])?
            .encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)
    }
}

impl<I: Instrument> Instrument for Arc<I> {
    const TYPE: MetricType = I::TYPE;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result {
        (**self).encode(shard, family)
    }
}

impl Instrument for CommandTally {
    const TYPE: MetricType = MetricType::Counter;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result {
        for (v, verb) in COUNTED_VERBS.iter().enumerate() {
            for (c, class) in REPLY_CLASSES.iter().enumerate() {
                let labels = [("shard", shard), ("verb", verb), ("class", class)];
                counter_series(family, &labels, self.get(v, c))?;
            }
        }
        Ok(())
    }
}

/// The values of a label of its own (a reason, an outcome): an enum whose
/// variant `i` is `VALUES[i]`.
pub(crate) trait LabelValues: Copy {
    /// The label's name.
    const NAME: &'static str;
    /// Its values, in variant order.
    const VALUES: &'static [&'static str];
    /// The variant's index in `VALUES`.
    fn index(self) -> usize;
}

/// A counter per value of label `L`, every value exposed (zeros too, so a
/// rate over a reason that never happened yet is 0, not absent).
#[derive(Debug)]
pub(crate) struct ByLabel<L: LabelValues> {
    counts: Box<[Counter]>,
    _label: std::marker::PhantomData<L>,
}

impl<L: LabelValues> Default for ByLabel<L> {
    fn default() -> Self {
        Self {
            counts: L::VALUES.iter().map(|_| Counter::default()).collect(),
            _label: std::marker::PhantomData,
        }
    }
}

impl<L: LabelValues> ByLabel<L> {
    /// Adds one for `l`.
    #[inline]
    pub(crate) fn inc(&self, l: L) {
        self.add(l, 1);
    }

    /// Adds `n` for `l`.
    #[inline]
    pub(crate) fn add(&self, l: L, n: u64) {
        self.counts[l.index()].add(n);
    }
}

impl<L: LabelValues> Instrument for ByLabel<L> {
    const TYPE: MetricType = MetricType::Counter;
    fn encode(&self, shard: &str, family: &mut MetricEncoder) -> fmt::Result {
        for (value, c) in L::VALUES.iter().zip(self.counts.iter()) {
            counter_series(family, &[("shard", shard), (L::NAME, value)], c.get())?;
        }
        Ok(())
    }
}

/// Declares a [`LabelValues`] enum: `Variant => "value"` per line.
macro_rules! label_values {
    ($(#[doc = $doc:literal])* $name:ident $label:literal { $($(#[doc = $vdoc:literal])* $v:ident => $s:literal,)* }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name { $($(#[doc = $vdoc])* $v,)* }

        impl LabelValues for $name {
            const NAME: &'static str = $label;
            const VALUES: &'static [&'static str] = &[$($s),*];
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_values! {
    /// Why a connection was turned away before its session.
    ConnRejected "reason" {
        /// Over `server.max_connections`: `421 4.3.2`.
        TooMany => "too_many_connections",
        /// `accept` failed (out of descriptors, aborted handshake).
        AcceptError => "accept_error",
        /// Over a per-client limit (`server.max_connections_per_ip`,
        /// `server.max_connection_rate_per_ip`): `421 4.7.0`.
        ClientLimit => "client_limit",
        /// Talked before the greeting (`server.greet_wait`): `521 5.5.1`.
        Pregreet => "pregreet",
        /// No valid PROXY header from a trusted proxy: closed unanswered.
        Proxy => "proxy",
        /// The TLS handshake failed (implicit TLS or STARTTLS).
        TlsHandshake => "tls_handshake",
    }
}

label_values! {
    /// The TLS version a handshake agreed on (rustls offers no other).
    TlsVersion "version" {
        /// TLS 1.2.
        V12 => "TLSv1.2",
        /// TLS 1.3.
        V13 => "TLSv1.3",
    }
}

label_values! {
    /// Why mail was refused: one count per refused MAIL, RCPT or message
    /// body (a message to two relay-denied recipients counts twice).
    /// Protocol slips (bad sequence, unknown verbs) are in `ringmx_commands`.
    MsgRejected "reason" {
        /// Over `smtp.max_message_bytes` (SIZE= at MAIL, or the body).
        Size => "size",
        /// A recipient outside the accepted domains.
        Relay => "relay",
        /// A recipient that does not exist.
        UnknownRecipient => "unknown_recipient",
        /// Past `smtp.max_recipients`.
        TooManyRecipients => "too_many_recipients",
        /// A recipient lookup failed or timed out.
        LookupFailed => "lookup_failed",
        /// Bad address or parameter syntax, bare newlines, overlong lines.
        Syntax => "syntax",
        /// The spool is full or over a backpressure mark.
        SpoolFull => "spool_full",
        /// Writing or syncing the spool failed.
        SpoolError => "spool_error",
    }
}

impl MsgRejected {
    /// The reason a refusal refused mail; `None` for protocol slips.
    fn of(verb: &str, rep: Reply) -> Option<Self> {
        if !matches!(verb, "MAIL" | "RCPT" | "DATA" | "BDAT") {
            return None;
        }
        Some(match rep {
            _ if rep == reply::MESSAGE_TOO_BIG => Self::Size,
            _ if rep == reply::RELAY_DENIED => Self::Relay,
            _ if rep == reply::UNKNOWN_RECIPIENT => Self::UnknownRecipient,
            _ if rep == reply::TOO_MANY_RECIPIENTS => Self::TooManyRecipients,
            _ if rep == reply::LOOKUP_FAILED => Self::LookupFailed,
            _ if rep == reply::SPOOL_FULL => Self::SpoolFull,
            _ if rep == reply::SPOOL_ERROR => Self::SpoolError,
            _ if rep == reply::MAIL_SYNTAX
                || rep == reply::RCPT_SYNTAX
                || rep == reply::BAD_ADDRESS
                || rep == reply::UTF8_NOT_ALLOWED
                || rep == reply::BAD_PARAM
                || rep == reply::BARE_NEWLINE
                || rep == reply::TEXT_LINE_TOO_LONG
                || rep == reply::LINE_TOO_LONG =>
            {
                Self::Syntax
            }
            _ => return None,
        })
    }
}

label_values! {
    /// RCPT outcomes, as `RcptCounts` counts them.
    RcptOutcome "outcome" {
        /// `250`.
        Accepted => "accepted",
        /// Outside the accepted domains.
        RelayDenied => "relay_denied",
        /// Not in the recipient map.
        Unknown => "unknown",
        /// Past `smtp.max_recipients`.
        OverLimit => "over_limit",
        /// The lookup failed.
        LookupFailed => "lookup_failed",
    }
}

impl ShardMetrics {
    /// Adds a finished session's RCPT outcomes.
    pub(crate) fn add_rcpt_counts(&self, c: &crate::protocol::RcptCounts) {
        let r = &self.recipients;
        r.add(RcptOutcome::Accepted, c.accepted);
        r.add(RcptOutcome::RelayDenied, c.relay_denied);
        r.add(RcptOutcome::Unknown, c.unknown);
        r.add(RcptOutcome::OverLimit, c.over_limit);
        r.add(RcptOutcome::LookupFailed, c.lookup_failed);
    }
}

/// What a scrape reads: every shard's instruments, and where the spool is.
#[derive(Debug)]
pub(crate) struct Scrape {
    shards: Vec<(String, Arc<ShardMetrics>)>,
    spool_dir: PathBuf,
}

impl Scrape {
    /// `shards[i]` is shard `i`'s.
    pub(crate) fn new(shards: Vec<Arc<ShardMetrics>>, spool_dir: &Path) -> Self {
        Self {
            shards: shards
                .into_iter()
                .enumerate()
                .map(|(i, m)| (i.to_string(), m))
                .collect(),
            spool_dir: spool_dir.to_path_buf(),
        }
    }

    /// The exposition, Prometheus text format 0.0.4.
    pub(crate) fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::with_capacity(32 * 1024);
        // Writing into a String cannot fail; an encoder error would be a
        // bug in a collector, and a partial page is still the best answer.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            crate::warn!("metrics: encoding failed: {e}");
        }
        out
    }

    /// Spool files and free space per shard, read from the directory now.
    fn encode_spool(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let per_shard: Vec<(&str, SpoolFiles)> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, (label, _))| {
                let dir = self.spool_dir.join(shard_dir_name(i as u32));
                (label.as_str(), SpoolFiles::read(&dir))
            })
            .collect();
        let gauges: [SpoolGauge; 3] = [
            (
                "ringmx_spool_bytes",
                "Bytes in the shard's spool segment files (zeros written ahead included).",
                |f| f.bytes,
            ),
            (
                "ringmx_spool_segments",
                "Segment files in the shard's spool directory.",
                |f| f.segments,
            ),
            (
                "ringmx_spool_free_bytes",
                "Free bytes (for an unprivileged writer) on the shard's spool filesystem.",
                |f| f.free,
            ),
        ];
        for (name, help, get) in gauges {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (shard, files) in &per_shard {
                family
                    .encode_family(&[("shard", *shard)])?
                    .encode_gauge(&get(files))?;
            }
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        ShardMetrics::encode_all(&self.shards, &mut enc)?;
        self.encode_spool(&mut enc)?;
        let p = ProcessStats::read();
        for (name, help, v) in [
            (
                "ringmx_process_resident_memory_bytes",
                "Resident set size of the ringmx process.",
                p.rss_bytes,
            ),
            (
                "ringmx_process_open_fds",
                "File descriptors the ringmx process holds open.",
                p.open_fds,
            ),
        ] {
            enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&v)?;
        }
        Ok(())
    }
}

/// A spool gauge: name, help, and its value from [`SpoolFiles`].
type SpoolGauge = (&'static str, &'static str, fn(&SpoolFiles) -> u64);

/// A shard's spool directory as found on disk.
#[derive(Debug, Default)]
struct SpoolFiles {
    segments: u64,
    bytes: u64,
    free: u64,
}

impl SpoolFiles {
    /// Zeros for what cannot be read (a shard whose directory is gone
    /// reports an empty spool rather than failing the whole scrape).
    fn read(dir: &Path) -> Self {
        let mut f = SpoolFiles {
            free: crate::spool::available_bytes(dir).unwrap_or(0),
            ..Self::default()
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return f;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if matches!(
                parse_segment_file_name(name),
                SegmentName::Current(_) | SegmentName::OtherVersion(_)
            ) {
                f.segments += 1;
                f.bytes += e.metadata().map_or(0, |m| m.len());
            }
        }
        f
    }
}

/// The process as `/proc/self` shows it.
#[derive(Debug, Default)]
struct ProcessStats {
    rss_bytes: u64,
    open_fds: u64,
}

impl ProcessStats {
    /// Zeros for what cannot be read (no /proc).
    fn read() -> Self {
        // `VmRSS:   1234 kB` (proc(5)); statm would need the page size.
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        // The read_dir's own descriptor is among those counted: one less.
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map_or(0, |d| d.count() as u64)
            .saturating_sub(1);
        Self {
            rss_bytes: rss_kib * 1024,
            open_fds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_and_shard_is_exposed_with_help_and_type() {
        // No spool there: its gauges read 0, the rest is unaffected.
        let dir = Path::new("/nonexistent/ringmx-metrics-test");
        let shards: Vec<Arc<ShardMetrics>> = (0..2).map(|_| Arc::default()).collect();
        shards[1].connections_accepted.add(3);
        shards[1].connections_rejected.inc(ConnRejected::TooMany);
        shards[0]
            .end_of_data_seconds
            .record_duration(std::time::Duration::from_millis(2));
        let scrape = Arc::new(Scrape::new(shards, dir));
        let page = scrape.render();
        assert!(
            page.contains("ringmx_connections_accepted_total{shard=\"1\"} 3\n"),
            "{page}"
        );
        assert!(
            page.contains("ringmx_connections_accepted_total{shard=\"0\"} 0\n"),
            "{page}"
        );
        assert!(page.contains(
            "ringmx_connections_rejected_total{shard=\"1\",reason=\"too_many_connections\"} 1\n"
        ));
        assert!(
            page.contains("ringmx_end_of_data_reply_seconds_bucket{shard=\"0\",le=\"0.0025\"} 1\n"),
            "{page}"
        );
        for name in ShardMetrics::NAMES {
            assert!(page.contains(&format!("# TYPE {name}")), "{name} missing");
        }
        assert!(page.contains("ringmx_process_resident_memory_bytes "));
    }

    #[test]
    fn refusals_are_sorted_into_reasons_and_protocol_slips_left_out() {
        let cases = [
            (reply::MESSAGE_TOO_BIG, "DATA", Some(MsgRejected::Size)),
            (reply::MESSAGE_TOO_BIG, "MAIL", Some(MsgRejected::Size)),
            (reply::RELAY_DENIED, "RCPT", Some(MsgRejected::Relay)),
            (reply::BAD_ADDRESS, "MAIL", Some(MsgRejected::Syntax)),
            (reply::SPOOL_FULL, "MAIL", Some(MsgRejected::SpoolFull)),
            (reply::NEED_MAIL, "RCPT", None),
            (reply::UNRECOGNIZED, "UNKNOWN", None),
        ];
        for (rep, verb, want) in cases {
            assert_eq!(MsgRejected::of(verb, rep), want, "{verb} {rep:?}");
        }
    }
}
