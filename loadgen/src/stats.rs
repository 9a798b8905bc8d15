//! Measurement bookkeeping: what is counted (messages, replies by command and
//! class, errors by kind), which latencies are recorded (one HdrHistogram per
//! phase), and how per-core interval records merge into run totals.
//!
//! Recording happens on the generator cores and never blocks; merging happens on
//! the reporting thread. Formatting is `report.rs`'s job, files are `hlog.rs`'s.

use hdrhistogram::Histogram;

/// Latency histograms record nanoseconds, the unit HdrHistogram's own tools
/// assume by default (they divide by 1e6 to show milliseconds).
pub const NANOS_PER_MS: f64 = 1e6;

/// Significant decimal digits kept by every histogram: values are exact to
/// 0.1%, as wrk2 and HdrHistogram's defaults do.
pub const SIGFIG: u8 = 3;

/// A new, empty latency histogram. It grows as values arrive, so an idle
/// phase costs almost nothing and no value is ever clipped.
pub fn new_histogram() -> Histogram<u64> {
    // SIGFIG is within 0..=5, the only way Histogram::new can fail.
    Histogram::new(SIGFIG).expect("3 significant digits is a valid histogram precision")
}

/// A latency that is recorded per message or per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Message start to final reply. Closed loop: from when the connection
    /// began the message (including any connect, greeting and EHLO it had to do
    /// first). Open loop: from the message's *intended* start time, so time spent
    /// waiting for a free connection counts (coordinated omission corrected).
    E2e,
    /// First command of the transaction (MAIL, or NOOP) written to final reply.
    Txn,
    /// Last byte of the message written to the end-of-data reply.
    Eod,
    /// TCP connect.
    Connect,
    /// Connection established to the greeting (220) received.
    Greeting,
    /// TCP connection established to TLS established (`--tls`: the
    /// handshake; `--starttls`: greeting, EHLO, STARTTLS and the handshake).
    Handshake,
}

impl Phase {
    /// Every phase, in report order.
    pub const ALL: [Phase; 6] = [
        Phase::E2e,
        Phase::Txn,
        Phase::Eod,
        Phase::Connect,
        Phase::Greeting,
        Phase::Handshake,
    ];

    /// The key used in JSON, file names and `--phase`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::E2e => "e2e",
            Phase::Txn => "transaction",
            Phase::Eod => "eod",
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Handshake => "handshake",
        }
    }

    /// A label for humans.
    pub fn title(self) -> &'static str {
        match self {
            Phase::E2e => "end-to-end",
            Phase::Txn => "transaction",
            Phase::Eod => "end-of-data -> reply",
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Handshake => "handshake",
        }
    }

    /// The phase named `name` (see [`Phase::name`]).
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The command a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The server's greeting on connect.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO, sent when EHLO is refused.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354 step).
    Data,
    /// The end-of-data dot: the reply that accepts the message.
    DataEnd,
    /// BDAT ... LAST: the reply that accepts the message.
    Bdat,
    /// RSET after a failed transaction.
    Rset,
    /// STARTTLS (`--starttls`).
    Starttls,
    /// NOOP (the noop scenario).
    Noop,
    /// QUIT.
    Quit,
    /// AUTH PLAIN (`--auth`).
    Auth,
}

impl Command {
    /// Number of commands.
    pub const COUNT: usize = 13;
    /// Every command, in report order.
    pub const ALL: [Command; Command::COUNT] = [
        Command::Greeting,
        Command::Ehlo,
        Command::Helo,
        Command::Mail,
        Command::Rcpt,
        Command::Data,
        Command::DataEnd,
        Command::Bdat,
        Command::Rset,
        Command::Starttls,
        Command::Noop,
        Command::Quit,
        Command::Auth,
    ];

    /// The key used in JSON and reports.
    pub fn name(self) -> &'static str {
        match self {
            Command::Greeting => "greeting",
            Command::Ehlo => "ehlo",
            Command::Helo => "helo",
            Command::Mail => "mail",
            Command::Rcpt => "rcpt",
            Command::Data => "data",
            Command::DataEnd => "data-end",
            Command::Bdat => "bdat",
            Command::Rset => "rset",
            Command::Starttls => "starttls",
            Command::Noop => "noop",
            Command::Quit => "quit",
            Command::Auth => "auth",
        }
    }
}

/// What went wrong on a connection, apart from the server saying no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server refused the TCP connection (nothing listening, or backlog full).
    ConnectRefused,
    /// The TCP connect did not complete within `--connect-timeout`.
    ConnectTimeout,
    /// Another connect failure (unreachable, no ports left, ...).
    ConnectOther,
    /// A reply (or a write) did not come within `--timeout`.
    Timeout,
    /// The connection was reset (ECONNRESET, EPIPE).
    Reset,
    /// The server closed the connection while a reply was awaited.
    EarlyClose,
    /// Bytes that are not a reply, or a reply that makes no sense at that point.
    Protocol,
    /// Any other I/O error.
    Io,
    /// A message still in flight when the run was stopped (drain deadline or Ctrl-C).
    Unfinished,
    /// TLS could not be started: STARTTLS not offered or refused, or the
    /// handshake failed (certificate not trusted, no common protocol, ...).
    Tls,
}

impl ErrorKind {
    /// Number of kinds.
    pub const COUNT: usize = 10;
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::ConnectOther,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::EarlyClose,
        ErrorKind::Protocol,
        ErrorKind::Io,
        ErrorKind::Unfinished,
        ErrorKind::Tls,
    ];

    /// The key used in JSON and reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect-refused",
            ErrorKind::ConnectTimeout => "connect-timeout",
            ErrorKind::ConnectOther => "connect-error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::EarlyClose => "early-close",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Io => "io",
            ErrorKind::Unfinished => "unfinished",
            ErrorKind::Tls => "tls",
        }
    }
}

/// Plain counters of one interval on one core; they add up across both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Messages the server accepted (final 2xx).
    pub msgs_ok: u64,
    /// Messages refused with a 4xx somewhere in the transaction.
    pub msgs_temp_fail: u64,
    /// Messages refused with a 5xx somewhere in the transaction.
    pub msgs_perm_fail: u64,
    /// Messages lost to a connection error (see [`Counters::errors`]).
    pub msgs_error: u64,
    /// Message bytes of accepted messages (before dot-stuffing).
    pub bytes_ok: u64,
    /// TCP connections established.
    pub conns_opened: u64,
    /// Connections on which commands were pipelined.
    pub conns_pipelined: u64,
    /// Connections whose server advertised CHUNKING (BDAT).
    pub conns_chunking: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// Of those, abbreviated ones (session resumed; `--tls-resume`).
    pub tls_resumed: u64,
    /// Early-talker connections (`--pregreet-fraction`) opened.
    pub pregreet_sent: u64,
    /// Of those, how many the server refused (4xx/5xx) before serving them.
    pub pregreet_rejected: u64,
    /// Open loop: messages due before the end that no connection started.
    pub backlog: u64,
    /// Replies by command (index: [`Command`] order) and class (2xx..5xx).
    pub replies: [[u64; 4]; Command::COUNT],
    /// Errors by kind (index: [`ErrorKind`] order).
    pub errors: [u64; ErrorKind::COUNT],
    /// RCPT replies: 250, 550, anything else (recipient checks).
    pub rcpt_codes: [u64; 3],
}

impl Counters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.msgs_ok += other.msgs_ok;
        self.msgs_temp_fail += other.msgs_temp_fail;
        self.msgs_perm_fail += other.msgs_perm_fail;
        self.msgs_error += other.msgs_error;
        self.bytes_ok += other.bytes_ok;
        self.conns_opened += other.conns_opened;
        self.conns_pipelined += other.conns_pipelined;
        self.conns_chunking += other.conns_chunking;
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        self.pregreet_sent += other.pregreet_sent;
        self.pregreet_rejected += other.pregreet_rejected;
        self.backlog += other.backlog;
        for (a, b) in self.replies.iter_mut().zip(other.replies.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
        for (x, y) in self.errors.iter_mut().zip(other.errors.iter()) {
            *x += y;
        }
        for (x, y) in self.rcpt_codes.iter_mut().zip(other.rcpt_codes.iter()) {
            *x += y;
        }
    }

    /// Counts a RCPT reply by code: 250, 550, other.
    pub fn rcpt_reply(&mut self, code: u16) {
        let i = match code {
            250 => 0,
            550 => 1,
            _ => 2,
        };
        self.rcpt_codes[i] += 1;
    }

    /// Counts a reply with `code` (200..=599) to `cmd`.
    pub fn reply(&mut self, cmd: Command, code: u16) {
        let class = usize::from(code / 100).clamp(2, 5) - 2;
        self.replies[cmd as usize][class] += 1;
    }

    /// Replies of class `class` (2..=5) to `cmd`.
    pub fn replies_of(&self, cmd: Command, class: u16) -> u64 {
        self.replies[cmd as usize][usize::from(class) - 2]
    }

    /// Errors of `kind`.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }

    /// Every error, all kinds.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Replies of class 4 or 5 over all commands: (4xx, 5xx).
    pub fn rejections(&self) -> (u64, u64) {
        self.replies
            .iter()
            .fold((0, 0), |(t, p), r| (t + r[2], p + r[3]))
    }

    /// Messages attempted: accepted, refused or lost.
    pub fn msgs_attempted(&self) -> u64 {
        self.msgs_ok + self.msgs_temp_fail + self.msgs_perm_fail + self.msgs_error
    }
}

/// One histogram per [`Phase`].
#[derive(Debug, Clone)]
pub struct PhaseHistograms(pub [Histogram<u64>; 6]);

impl Default for PhaseHistograms {
    fn default() -> Self {
        PhaseHistograms(std::array::from_fn(|_| new_histogram()))
    }
}

impl PhaseHistograms {
    /// Records `nanos` for `phase`.
    pub fn record(&mut self, phase: Phase, nanos: u64) {
        // An auto-resizing histogram only refuses values beyond u64 range
        // after scaling, which a nanosecond latency never reaches; if it ever
        // did, dropping one sample is better than stopping the run.
        let _ = self.0[phase as usize].record(nanos);
    }

    /// The histogram of `phase`.
    pub fn get(&self, phase: Phase) -> &Histogram<u64> {
        &self.0[phase as usize]
    }

    /// Adds every histogram of `other` into `self`.
    pub fn add(&mut self, other: &PhaseHistograms) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            // Both auto-resize with the same precision, so adding cannot fail.
            a.add(b)
                .expect("auto-resizing histograms of equal precision always add");
        }
    }
}

/// Everything one core measured in one interval.
#[derive(Debug, Clone, Default)]
pub struct IntervalStats {
    /// Latencies by phase.
    pub hists: PhaseHistograms,
    /// Counts.
    pub counters: Counters,
    /// Queue ids acknowledged in this interval, one per line (for `--ack-log`).
    pub acks: Vec<u8>,
    /// The first error message seen of each kind, to show what went wrong.
    pub first_errors: [Option<String>; ErrorKind::COUNT],
}

impl IntervalStats {
    /// Adds `other` into `self`; first error messages already held are kept.
    pub fn add(&mut self, other: &IntervalStats) {
        self.hists.add(&other.hists);
        self.counters.add(&other.counters);
        self.acks.extend_from_slice(&other.acks);
        for (mine, theirs) in self.first_errors.iter_mut().zip(other.first_errors.iter()) {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }

    /// Counts one error of `kind`; keeps `detail` if it is the first of its kind.
    pub fn error(&mut self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        self.counters.errors[kind as usize] += 1;
        let slot = &mut self.first_errors[kind as usize];
        if slot.is_none() {
            *slot = Some(detail());
        }
    }
}

/// Latency percentiles of one histogram in milliseconds, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `h` (nanoseconds) in milliseconds. HdrHistogram
    /// reports the highest value equivalent to the bucket, so a percentile is
    /// never understated.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / NANOS_PER_MS;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / NANOS_PER_MS,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            p9999: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_classes() {
        let mut a = Counters::default();
        a.reply(Command::Mail, 250);
        a.reply(Command::Mail, 451);
        a.reply(Command::Rcpt, 550);
        a.reply(Command::Data, 354);
        a.msgs_ok = 3;
        a.errors[ErrorKind::Reset as usize] = 2;
        let mut b = a;
        b.add(&a);
        assert_eq!(b.replies_of(Command::Mail, 2), 2);
        assert_eq!(b.replies_of(Command::Mail, 4), 2);
        assert_eq!(b.replies_of(Command::Data, 3), 2);
        assert_eq!(b.rejections(), (2, 2));
        assert_eq!(b.errors_of(ErrorKind::Reset), 4);
        assert_eq!(b.errors_total(), 4);
        assert_eq!(b.msgs_ok, 6);
    }

    #[test]
    fn interval_merge_equals_recording_everything_in_one() {
        // Splitting samples over cores and intervals, then merging, must give
        // exactly the histogram of all samples: percentiles are never averaged.
        let mut whole = PhaseHistograms::default();
        let mut parts: Vec<IntervalStats> = (0..6).map(|_| IntervalStats::default()).collect();
        let mut x: u64 = 12345;
        for i in 0..60_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = 1_000 + (x >> 32) % 50_000_000; // 1 us .. 50 ms
            whole.record(Phase::E2e, v);
            parts[(i % 6) as usize].hists.record(Phase::E2e, v);
        }
        let mut merged = IntervalStats::default();
        for p in &parts {
            merged.add(p);
        }
        let (a, b) = (whole.get(Phase::E2e), merged.hists.get(Phase::E2e));
        assert_eq!(a.len(), 60_000);
        assert_eq!(a, b);
        assert_eq!(Percentiles::of(a), Percentiles::of(b));
        // And averaging per-part percentiles would not: the reason to merge.
        let p99 = Percentiles::of(a).p99;
        assert!(p99 > 49.0 && p99 < 50.1, "uniform 1us..50ms: p99 {p99}");
    }

    #[test]
    fn percentiles_are_highest_equivalent_values() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1_000_000).unwrap(); // 1..1000 ms
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() / 500.0 < 0.001, "{}", p.p50);
        assert!(p.p99 >= 990.0 && p.p99 < 991.0, "{}", p.p99);
        assert!(p.max >= 1000.0 && p.max < 1001.0);
        assert!((p.mean - 500.5).abs() < 0.5);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn first_error_detail_is_kept() {
        let mut s = IntervalStats::default();
        s.error(ErrorKind::Protocol, || "first".into());
        s.error(ErrorKind::Protocol, || "second".into());
        let mut t = IntervalStats::default();
        t.error(ErrorKind::Timeout, || "slow".into());
        t.add(&s);
        assert_eq!(t.counters.errors_of(ErrorKind::Protocol), 2);
        assert_eq!(
            t.first_errors[ErrorKind::Protocol as usize].as_deref(),
            Some("first")
        );
        assert_eq!(
            t.first_errors[ErrorKind::Timeout as usize].as_deref(),
            Some("slow")
        );
    }
}
