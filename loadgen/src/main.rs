//! The `loadgen` binary: flags, help text, exit codes. The work is in the library.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringmx::units::parse_duration;

use loadgen::compare;
use loadgen::config::{
    Arrivals, ConfigError, Load, Pipelining, RcptPattern, RunConfig, Scenario, SizeDist,
};
use loadgen::engine;
use loadgen::stats::Phase;
use loadgen::tls::{TlsMode, TlsOptions, TlsSetup};

/// SMTP load generator: drives any SMTP server and reports throughput and tail
/// latency from HdrHistograms.
#[derive(Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a load test against an SMTP server.
    #[command(long_about = RUN_ABOUT, after_help = ringmx::units::FORMS_HELP)]
    Run(Box<RunArgs>),
    /// Compare runs: percentiles side by side with ratios, and a plot.
    #[command(long_about = COMPARE_ABOUT)]
    Compare(CompareArgs),
}

const RUN_ABOUT: &str = "\
Run a load test against an SMTP server.

Closed loop (default): every connection sends its next message as soon as the \
previous one is answered; throughput is whatever the server allows.

Open loop (--rate): messages are due at a fixed average rate whatever the \
server does. Latency is measured from each message's INTENDED start time, not \
from when a connection got round to sending it, so time spent queued behind a \
slow server counts: coordinated omission is corrected, as wrk2 does. If all \
--connections are busy, due messages wait (and that wait is latency).

Live lines (stderr): one per second with msgs/s and end-to-end p50/p99/p99.9. \
Summary (stdout): totals, msgs/s, MB/s, replies by class per command, errors \
by kind, latency percentiles for end-to-end, transaction, end-of-data -> reply, \
connect, greeting and (with --starttls or --tls) handshake, and TLS handshakes/s. \
--msgs-per-conn 1 makes every message a new connection: with TLS, a \
handshake-bound run. Ctrl-C stops the run and prints the summary so far.";

const COMPARE_ABOUT: &str = "\
Compare runs: percentiles side by side, with each run's ratio to the first. \
Each RUN is a JSON summary written by `loadgen run --json` or an HdrHistogram \
interval log (.hlog, e.g. from --hist-out), optionally prefixed with LABEL=. \
--plot draws latency against percentile, the percentile axis logarithmic in \
1/(1-p) as HdrHistogram's plotter draws it.";

#[derive(clap::Args)]
struct RunArgs {
    /// The SMTP server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,

    /// Concurrent connections over all cores (open loop: the most messages in flight).
    #[arg(short, long, value_name = "N", default_value_t = 16)]
    connections: usize,

    /// Generator threads, one glommio executor pinned per CPU (taken in order
    /// from the process's affinity mask, so `taskset` decides which CPUs).
    #[arg(long, value_name = "N", default_value_t = 1)]
    cores: usize,

    /// Open loop at this many messages per second over all connections;
    /// latency is then measured from each message's intended start time
    /// (coordinated omission corrected). Without it: closed loop.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,

    /// Open loop arrival spacing: evenly spaced, or a Poisson process.
    #[arg(long, value_enum, default_value_t = Arrivals::Constant, requires = "rate")]
    arrivals: Arrivals,

    /// Measured run length (e.g. 30s, 2m). Default 10s unless --messages is given.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Stop after this many messages (attempts, after warm-up). With --duration too,
    /// whichever comes first.
    #[arg(short = 'n', long, value_name = "N")]
    messages: Option<u64>,

    /// Warm-up before measuring; shown live, left out of totals and logs.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,

    /// Message size, headers included: a size (1k = 1024 bytes) or a weighted
    /// distribution, e.g. 1k:80,64k:15,1m:5.
    #[arg(long, value_name = "SIZE[:W],...", value_parser = SizeDist::parse, default_value = "1k")]
    size: SizeDist,

    /// Recipients per message.
    #[arg(long, value_name = "N", default_value_t = 1)]
    rcpts: usize,

    /// Messages per connection before QUIT and reconnect; 1 = a new connection
    /// for every message, 0 = keep each connection for the whole run
    /// (default 0; 1 with --scenario handshake).
    #[arg(long, value_name = "N")]
    msgs_per_conn: Option<u64>,

    /// Command pipelining (RFC 2920): auto = when EHLO advertises PIPELINING.
    /// Pipelined, MAIL+RCPTs+DATA go in one write and the body plus dot in one more.
    #[arg(long, value_enum, default_value_t = Pipelining::Auto)]
    pipelining: Pipelining,

    /// Chain messages: in closed loop with pipelined DATA, one message's body
    /// and final dot go in the same write as the next message's
    /// MAIL+RCPTs+DATA (RFC 2920 §3.1), one write per message. Off by
    /// default: RFC 2920 allows it, but some servers (Haraka) refuse a MAIL
    /// that arrives before their end-of-data reply.
    #[arg(long)]
    chain: bool,

    /// Send bodies with BDAT (RFC 3030 CHUNKING) instead of DATA.
    #[arg(long)]
    bdat: bool,

    /// What a "message" is: a mail transaction, one NOOP round trip (with
    /// --msgs-per-conn 1: connect + EHLO + NOOP + QUIT), or a whole session
    /// with nothing in it (handshake: connect + EHLO [+ TLS + EHLO] + QUIT,
    /// a new connection each; --msgs-per-conn is then 1).
    #[arg(long, value_enum, default_value_t = Scenario::Mail)]
    scenario: Scenario,

    /// Reverse path for MAIL FROM.
    #[arg(long, value_name = "ADDR", default_value = "loadgen@loadgen.test")]
    from: String,

    /// Domain of the recipients, which are user0@DOMAIN, user1@DOMAIN, ...
    #[arg(long, value_name = "DOMAIN", default_value = "example.com")]
    to_domain: String,

    /// Recipients drawn in turn from PREFIX{LO..HI}SUFFIX instead of
    /// userN@--to-domain, --rcpts per message, each connection from its own
    /// offset: e.g. 'user{0..1999}@example.com' against a recipient map that
    /// lists user0..user999 mixes known and unknown recipients half and half.
    /// The report then splits RCPT replies into 250 / 550 / other. Envelopes
    /// are formatted per message (a little more client CPU).
    #[arg(long, value_name = "PATTERN", value_parser = RcptPattern::parse)]
    rcpt_pattern: Option<RcptPattern>,

    /// Name sent with EHLO/HELO.
    #[arg(long, value_name = "NAME", default_value = "loadgen.test")]
    ehlo: String,

    /// Longest wait for each read of a reply (and each write).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,

    /// Bind each connection to the next address of this network, in turn
    /// (e.g. 127.1.0.0/16: on Linux all of 127.0.0.0/8 is local), so the
    /// server sees many clients.
    #[arg(long, value_name = "CIDR")]
    source_ips: Option<ipnet::IpNet>,

    /// Share of connections (0 to 1) that send EHLO before the greeting and
    /// send no mail: early talkers, which a server with a greeting wait
    /// rejects (counted as pregreet in the summary).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pregreet_fraction: f64,

    /// Longest wait for a TCP connect.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    connect_timeout: Duration,

    /// Log in with AUTH PLAIN as USER (password PASS) after TLS on every
    /// connection, for submission servers (needs --starttls or --tls). With
    /// --msgs-per-conn 1: a new connection, TLS and AUTH per message.
    #[arg(long, value_name = "USER:PASS")]
    auth: Option<String>,

    /// Open each connection with a PROXY protocol v2 header from IP, or from
    /// the next address of CIDR (one loadgen looks like many clients); for
    /// servers behind a load balancer (ringmx --proxy-protocol).
    #[arg(long, value_name = "IP|CIDR", value_parser = loadgen::proxy::parse_source)]
    proxy_source: Option<ipnet::IpNet>,

    /// Write every queue id the server acknowledged, one per line (the word
    /// after "queued as", else the whole reply text): for durability checks.
    #[arg(long, value_name = "FILE")]
    ack_log: Option<PathBuf>,

    /// Write a JSON summary (with full histograms, for `loadgen compare`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write HdrHistogram interval logs PREFIX.<phase>.hlog (one interval per
    /// second, values in ns) and percentile distributions PREFIX.<phase>.hgrm
    /// (ms), for phases e2e, transaction, eod, connect, greeting and handshake.
    #[arg(long, value_name = "PREFIX")]
    hist_out: Option<PathBuf>,

    /// Name of this run in summaries and comparisons (default: the --json
    /// file's name, else the target).
    #[arg(long, value_name = "NAME")]
    label: Option<String>,

    /// Seed for the size draw and Poisson gaps.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// No live lines, only the summary.
    #[arg(short, long)]
    quiet: bool,

    /// Say STARTTLS after EHLO (RFC 3207), handshake, and EHLO again; a
    /// server that does not offer it fails the connection (error kind tls).
    /// Needs --tls-ca or --tls-insecure.
    #[arg(long, conflicts_with = "tls")]
    starttls: bool,

    /// Implicit TLS (port 465 style): handshake right after connecting,
    /// before the greeting. Needs --tls-ca or --tls-insecure.
    #[arg(long)]
    tls: bool,

    /// Trust the CA certificates in FILE (PEM) for the server's certificate.
    #[arg(long, value_name = "FILE", conflicts_with = "tls_insecure")]
    tls_ca: Option<PathBuf>,

    /// Accept any server certificate (handshake signatures are still
    /// checked, so the cost is that of a verifying client less the chain).
    #[arg(long)]
    tls_insecure: bool,

    /// Name sent as SNI and checked against the certificate (default: the
    /// host of --target; an IP address sends no SNI and is checked against
    /// the certificate's IP addresses).
    #[arg(long, value_name = "NAME")]
    tls_sni: Option<String>,

    /// Let sessions resume (tickets, session ids). Off by default: every
    /// handshake is then a full one, as from a sender the server has not seen.
    #[arg(long)]
    tls_resume: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Runs to compare: [LABEL=]FILE.json or [LABEL=]FILE.hlog; the first is the baseline.
    #[arg(value_name = "RUN", required = true)]
    runs: Vec<String>,

    /// Which latency to compare (JSON summaries hold all six).
    #[arg(long, value_name = "PHASE", default_value = "e2e",
          value_parser = ["e2e", "transaction", "eod", "connect", "greeting", "handshake"])]
    phase: String,

    /// Draw latency by percentile to FILE.svg, or FILE.png (needs rsvg-convert).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Run(args) => run(*args),
        Cmd::Compare(args) => compare_runs(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cfg = match to_config(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(warning) = engine::raise_memlock_limit() {
        eprintln!("loadgen: note: {warning}; glommio may run without registered buffers");
    }
    engine::install_interrupt_handler();
    match engine::run(cfg) {
        Ok(summary) => {
            print!("{}", summary.text());
            if summary.aborted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

fn to_config(a: RunArgs) -> Result<RunConfig, ConfigError> {
    let target = a
        .target
        .to_socket_addrs()
        .map_err(|e| ConfigError::Invalid(format!("--target {:?}: {e}", a.target)))?
        .next()
        .ok_or_else(|| ConfigError::Invalid(format!("--target {:?}: no address", a.target)))?;
    let duration = match (a.duration, a.messages) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let tls = tls_setup(&a)?;
    let label = a.label.unwrap_or_else(|| match &a.json {
        Some(p) => p
            .file_stem()
            .map_or_else(|| a.target.clone(), |s| s.to_string_lossy().into_owned()),
        None => a.target.clone(),
    });
    let cfg = RunConfig {
        target,
        target_text: a.target,
        connections: a.connections,
        cores: a.cores,
        load: match a.rate {
            None => Load::Closed,
            Some(rate) => Load::Open {
                rate,
                arrivals: a.arrivals,
            },
        },
        duration,
        messages: a.messages,
        warmup: a.warmup,
        sizes: a.size,
        rcpts: a.rcpts,
        msgs_per_conn: a.msgs_per_conn.unwrap_or(match a.scenario {
            Scenario::Handshake => 1,
            Scenario::Mail | Scenario::Noop => 0,
        }),
        pipelining: a.pipelining,
        chain: a.chain,
        bdat: a.bdat,
        scenario: a.scenario,
        from: a.from,
        to_domain: a.to_domain,
        rcpt_pattern: a.rcpt_pattern,
        ehlo: a.ehlo,
        reply_timeout: a.timeout,
        connect_timeout: a.connect_timeout,
        proxy_source: a.proxy_source,
        auth: a.auth.clone(),
        ack_log: a.ack_log,
        json: a.json,
        hist_out: a.hist_out,
        label,
        seed: a.seed,
        live: !a.quiet,
        tls,
        source_ips: a.source_ips,
        pregreet_fraction: a.pregreet_fraction,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The TLS flags, checked and turned into a client config.
fn tls_setup(a: &RunArgs) -> Result<Option<TlsSetup>, ConfigError> {
    let mode = match (a.starttls, a.tls) {
        (true, _) => TlsMode::StartTls,
        (false, true) => TlsMode::Implicit,
        (false, false) => {
            if a.tls_ca.is_some() || a.tls_insecure || a.tls_sni.is_some() || a.tls_resume {
                return Err(ConfigError::Invalid(
                    "--tls-ca, --tls-insecure, --tls-sni and --tls-resume need --starttls or --tls"
                        .into(),
                ));
            }
            return Ok(None);
        }
    };
    // The host of HOST:PORT, brackets and all for IPv6 (`server_name` strips them).
    let host = a
        .target
        .rsplit_once(':')
        .map_or(a.target.as_str(), |(h, _)| h);
    let opts = TlsOptions {
        mode,
        ca: a.tls_ca.clone(),
        insecure: a.tls_insecure,
        server_name: a.tls_sni.clone().unwrap_or_else(|| host.to_string()),
        resume: a.tls_resume,
    };
    TlsSetup::new(&opts).map(Some).map_err(ConfigError::Invalid)
}

fn compare_runs(a: CompareArgs) -> ExitCode {
    // The value parser only admits phase names.
    let phase = Phase::from_name(&a.phase).expect("clap checked the phase name");
    let mut runs = Vec::with_capacity(a.runs.len());
    for arg in &a.runs {
        match compare::load_run(arg, phase) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        }
    }
    compare::dedupe_labels(&mut runs);
    print!("{}", compare::table(&runs, phase));
    if let Some(path) = &a.plot {
        if let Err(e) = compare::write_plot(&runs, phase, path) {
            eprintln!("loadgen: {e}");
            return ExitCode::from(1);
        }
        eprintln!("loadgen: plot written to {}", path.display());
    }
    ExitCode::SUCCESS
}
