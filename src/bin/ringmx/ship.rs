//! `ringmx ship`: run a named consumer of a spool, and manage it.
//!
//! * `ringmx ship --spool DIR --to URL --name NAME [--follow]`: registers
//!   the consumer if new, then one thread per shard runs
//!   [`ShardConsumer`] with its own sink from `--to`. Without `--follow` it
//!   ships what was committed when it started and exits with a summary on
//!   stdout; with it, it keeps tailing (and picks up shards that appear).
//!   SIGTERM/SIGINT: each shard finishes the batch in hand, writes its
//!   checkpoint, and the command exits 0; a second signal exits at once.
//! * `--dead-letters`: lists the consumer's dead letters; `--redrive --to
//!   URL` hands them to the sink again and removes each one it accepts.
//! * `--reset [--since TIME]`: rewinds every shard's checkpoint to replay
//!   what the spool still holds (from the oldest segment, or from the first
//!   message that arrived at or after TIME).
//! * `--forget`: removes the consumer, saying how much it had not shipped.
//!
//! One process per consumer at a time: `consumers/NAME/.lock` (flock).
//! Exit status: 0 done, 1 a runtime failure, 2 a usage error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bumpalo::Bump;
use ringmx::civil::DateTime;
use ringmx::outlet::consumer::{lag_bytes, ConsumerConfig, Ended, ShardConsumer, ShardProgress};
use ringmx::outlet::dead::DeadLetters;
use ringmx::outlet::{checkpoint, Checkpoint};
use ringmx::outlet::{sinks, ConsumerDir, HeaderFields, OutletError, Parcel, Verdict};
use ringmx::spool::{Location, SpoolReader};

/// `ringmx ship`'s flags.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["forget", "reset", "dead_letters", "redrive"])))]
pub struct ShipArgs {
    /// The spool directory (the server's `spool.dir`).
    #[arg(long, value_name = "DIR", default_value = "spool")]
    pub spool: PathBuf,
    /// Where to ship: maildir:/path, smtp://host:port, lmtp://host:port, lmtp:unix:/path,
    /// nats://host:port[,host:port]/SUBJECT[?stream=NAME], http(s)://host/path (README:
    /// "Shipping to ...").
    #[arg(
        long,
        value_name = "URL",
        required_unless_present_any = ["forget", "reset", "dead_letters"]
    )]
    pub to: Option<String>,
    /// The consumer: its checkpoints and dead letters live under
    /// DIR/consumers/NAME/; several names read one spool independently.
    /// 1 to 64 of A-Z a-z 0-9 _ . -
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Keep tailing the spool after shipping what is there (until SIGTERM).
    #[arg(long, conflicts_with = "action")]
    pub follow: bool,
    /// Remove the consumer and its dead letters; space reclamation stops
    /// waiting for it. Says how much mail it had not shipped.
    #[arg(long)]
    pub forget: bool,
    /// Rewind every shard's checkpoint to replay what the spool still holds.
    #[arg(long)]
    pub reset: bool,
    /// With --reset: replay from the first message that arrived at or after
    /// TIME (RFC 3339, e.g. 2026-11-29T13:44:42Z, or unix seconds).
    #[arg(long, value_name = "TIME", requires = "reset")]
    pub since: Option<String>,
    /// List the consumer's dead letters (messages its sink refused for good).
    #[arg(long)]
    pub dead_letters: bool,
    /// Send the dead letters through the sink (--to) again; each one
    /// accepted is removed.
    #[arg(long)]
    pub redrive: bool,
    /// At most N messages per batch (the sink has its own maximum too):
    /// fewer are shipped twice after a crash, at more checkpoint writes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch: Option<u64>,
    /// Seconds between progress lines on stderr while shipping; 0: none.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub progress: u64,
}

/// Why `ringmx ship` failed: the exit status and the message.
pub struct Failure {
    /// 1 runtime, 2 usage.
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn runtime(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: message.to_string(),
    }
}

impl From<OutletError> for Failure {
    fn from(e: OutletError) -> Self {
        match e {
            OutletError::BadName(_) => usage(e.to_string()),
            _ => runtime(e),
        }
    }
}

impl From<ringmx::spool::SpoolError> for Failure {
    fn from(e: ringmx::spool::SpoolError) -> Self {
        runtime(e)
    }
}

/// Set by the first SIGTERM/SIGINT: every shard finishes its batch and stops.
static STOP: AtomicBool = AtomicBool::new(false);

impl ShipArgs {
    /// Runs the command.
    ///
    /// # Errors
    /// A [`Failure`] with its exit status.
    pub fn run(self) -> Result<(), Failure> {
        if !self.spool.is_dir() {
            return Err(usage(format!(
                "spool {}: not a directory; give the server's spool with --spool DIR",
                self.spool.display()
            )));
        }
        let reader = SpoolReader::open(&self.spool)?;
        let dir = ConsumerDir::new(&self.spool, &self.name)?;
        if self.forget || self.reset || self.dead_letters || self.redrive {
            if !dir.exists() {
                let known: Vec<String> = checkpoint::list(&self.spool)?
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect();
                return Err(usage(format!(
                    "spool {} has no consumer {:?} (consumers: {})",
                    self.spool.display(),
                    self.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            if self.dead_letters {
                return list_dead(&dir);
            }
            let _lock = lock(&dir)?;
            if self.forget {
                return forget(&reader, &dir);
            }
            if self.reset {
                return reset(&reader, &dir, self.since.as_deref());
            }
            let url = self.to.as_deref().unwrap_or_default();
            check_url(url)?;
            return redrive(&dir, url);
        }
        let url = self.to.clone().unwrap_or_default();
        check_url(&url)?;
        // Fail now, not in every shard's thread, when the sink cannot open.
        drop(sinks::open(&url).map_err(runtime)?);
        dir.create()?;
        let _lock = lock(&dir)?;
        ship(&self, reader, &dir, &url)
    }
}

fn check_url(url: &str) -> Result<(), Failure> {
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    if sinks::SCHEMES.contains(&scheme) {
        Ok(())
    } else {
        Err(usage(format!(
            "--to {url:?}: unknown sink; use one of: {}",
            sinks::SCHEMES
                .iter()
                .map(|s| format!("{s}:..."))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Holds `consumers/NAME/.lock` (flock) while it lives: one ship process
/// per consumer.
struct Lock(#[allow(dead_code)] File);

fn lock(dir: &ConsumerDir) -> Result<Lock, Failure> {
    let path = dir.dir().join(".lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| runtime(format!("opening {}: {e}", path.display())))?;
    // SAFETY: flock on a file descriptor we own, for the life of `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(runtime(format!(
            "consumer {:?} is in use by another ringmx ship (pid {}); stop it first",
            dir.name(),
            pid.trim()
        )));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(Lock(f))
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

/// Blocks SIGINT/SIGTERM in this thread (and so in the shard threads it
/// starts later) and starts a thread that turns the first into [`STOP`]
/// and the second into an exit at once.
fn handle_signals() -> Result<(), Failure> {
    let set = signal_set();
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(runtime(format!(
            "cannot block signals: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    std::thread::Builder::new()
        .name("ship-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` and `sig` are valid for the call.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if STOP.swap(true, Ordering::Relaxed) {
                ringmx::warn!("{name} again: exiting at once");
                ringmx::log::flush();
                std::process::exit(128 + sig);
            }
            ringmx::info!(
                "{name}: finishing the batches in hand, then writing checkpoints; \
                 send it again to exit at once"
            );
        })
        .map(drop)
        .map_err(|e| runtime(format!("cannot start the signal thread: {e}")))
}

/// A shard's consumer thread, as the main thread tracks it.
struct Running {
    shard: u32,
    progress: Arc<ShardProgress>,
}

fn ship(args: &ShipArgs, reader: SpoolReader, dir: &ConsumerDir, url: &str) -> Result<(), Failure> {
    ringmx::log::install();
    handle_signals()?;
    let cfg = ConsumerConfig {
        follow: args.follow,
        max_batch: args
            .max_batch
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        ..ConsumerConfig::default()
    };
    let (done_tx, done_rx) = mpsc::channel::<(u32, Result<Ended, String>)>();
    let mut running: Vec<Running> = Vec::new();
    let mut finished = 0;
    let mut failed: Vec<String> = Vec::new();
    let started = Instant::now();
    let every = Duration::from_secs(args.progress);
    let mut last_report = (Instant::now(), 0u64);
    let mut last_scan: Option<Instant> = None;
    ringmx::info!(
        "ship {}: shipping {} to {url}{}",
        dir.name(),
        reader.root().display(),
        if args.follow { ", following" } else { "" }
    );
    loop {
        // Start a thread for each shard not yet running (in follow mode,
        // shards the server creates later are picked up too).
        if last_scan.is_none_or(|t| args.follow && t.elapsed() >= Duration::from_secs(2)) {
            last_scan = Some(Instant::now());
            for shard in reader.shards()? {
                if running.iter().any(|r| r.shard == shard) {
                    continue;
                }
                let progress = Arc::new(ShardProgress::default());
                running.push(Running {
                    shard,
                    progress: Arc::clone(&progress),
                });
                let (reader, dir, cfg, url, tx) = (
                    reader.clone(),
                    dir.clone(),
                    cfg.clone(),
                    url.to_owned(),
                    done_tx.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("ship-shard-{shard}"))
                    .spawn(move || {
                        let r = run_shard(&reader, &dir, shard, &cfg, &progress, &url);
                        let _ = tx.send((shard, r));
                    })
                    .map_err(|e| runtime(format!("cannot start a shard thread: {e}")))?;
            }
        }
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok((shard, r)) => {
                finished += 1;
                if let Err(e) = r {
                    ringmx::error!("ship {}: shard {shard}: {e}; stopping", dir.name());
                    failed.push(format!("shard {shard}: {e}"));
                    STOP.store(true, Ordering::Relaxed);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let all_done = finished == running.len() && (!args.follow || STOP.load(Ordering::Relaxed));
        if all_done {
            break;
        }
        if !every.is_zero() && last_report.0.elapsed() >= every {
            let shipped = total(&running, |p| &p.shipped);
            let rate = (shipped - last_report.1) as f64 / last_report.0.elapsed().as_secs_f64();
            let lag: u64 = running
                .iter()
                .map(|r| {
                    let pos = r.progress.position().unwrap_or(Location {
                        segment: 0,
                        offset: 0,
                    });
                    lag_bytes(&reader, r.shard, pos).unwrap_or(0)
                })
                .sum();
            ringmx::info!(
                "ship {}: shipped {shipped} ({rate:.0} msgs/s), dead letters {}, retries {}, \
                 lag {:.1} MiB in the spool",
                dir.name(),
                total(&running, |p| &p.rejected),
                total(&running, |p| &p.retries),
                lag as f64 / f64::from(1u32 << 20)
            );
            last_report = (Instant::now(), shipped);
        }
    }
    let shipped = total(&running, |p| &p.shipped);
    let rejected = total(&running, |p| &p.rejected);
    let damaged = total(&running, |p| &p.damaged);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ship {}: shipped {shipped} messages to {url} from {} shards in {secs:.1} s \
         ({:.0} msgs/s); {rejected} refused (now dead letters); {damaged} unreadable",
        dir.name(),
        running.len(),
        shipped as f64 / secs.max(1e-3),
    );
    ringmx::log::flush();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(runtime(format!(
            "ship {}: {}; the checkpoints keep what was shipped, run it again once fixed",
            dir.name(),
            failed.join("; ")
        )))
    }
}

fn total(running: &[Running], f: impl Fn(&ShardProgress) -> &std::sync::atomic::AtomicU64) -> u64 {
    running
        .iter()
        .map(|r| f(&r.progress).load(Ordering::Relaxed))
        .sum()
}

fn run_shard(
    reader: &SpoolReader,
    dir: &ConsumerDir,
    shard: u32,
    cfg: &ConsumerConfig,
    progress: &ShardProgress,
    url: &str,
) -> Result<Ended, String> {
    let mut sink = sinks::open(url).map_err(|e| e.to_string())?;
    let mut consumer =
        ShardConsumer::new(reader, dir, shard, cfg, progress).map_err(|e| e.to_string())?;
    consumer
        .run(sink.as_mut(), &STOP)
        .map_err(|e| e.to_string())
}

fn utc(unix: i64) -> String {
    let t = DateTime::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `--dead-letters`: `KEY  REFUSED-AT(UTC)  <FROM>  RCPTS  REASON` per line.
fn list_dead(dir: &ConsumerDir) -> Result<(), Failure> {
    let dead = DeadLetters::of(dir).list()?;
    let mut out = std::io::stdout().lock();
    for d in &dead {
        let _ = writeln!(
            out,
            "{}  {}  <{}>  {}  {}",
            d.key,
            utc(d.time_unix),
            d.envelope.mail_from,
            d.refused_rcpts
                .as_ref()
                .unwrap_or(&d.envelope.rcpts)
                .join(","),
            d.reason
        );
    }
    eprintln!(
        "{} dead letters of consumer {:?} in {}",
        dead.len(),
        dir.name(),
        DeadLetters::of(dir).dir().display()
    );
    Ok(())
}

/// `--redrive`: one attempt per dead letter, in batches; accepted ones are
/// removed, refused ones get the new reason, deferred ones stay.
fn redrive(dir: &ConsumerDir, url: &str) -> Result<(), Failure> {
    ringmx::log::install();
    let dead = DeadLetters::of(dir);
    let list = dead.list()?;
    let mut sink = sinks::open(url).map_err(runtime)?;
    let (mut accepted, mut refused, mut deferred) = (0u64, 0u64, 0u64);
    // Records of damage in the spool have no message to send.
    let (damaged, list): (Vec<_>, Vec<_>) = list.into_iter().partition(|d| d.damaged);
    for d in &damaged {
        ringmx::warn!(
            "redrive: {} is not sent: it was damaged in the spool ({}); nothing is left to send",
            d.key,
            d.reason
        );
    }
    let mut bump = Bump::new();
    for chunk in list.chunks(sink.max_batch().max(1)) {
        let mut msgs = Vec::new();
        for d in chunk {
            let m = dead.load(d)?;
            let mut data = m.received.clone();
            data.extend_from_slice(&m.body_bytes()?);
            msgs.push((d, m, data));
        }
        bump.reset();
        let headers: Vec<HeaderFields<'_>> = msgs
            .iter()
            .map(|(_, _, data)| HeaderFields::parse(&bump, data))
            .collect();
        let parcels: Vec<Parcel<'_>> = msgs
            .iter()
            .zip(&headers)
            .map(|((d, m, data), h)| Parcel {
                key: &d.key,
                msg: m,
                data,
                headers: h,
            })
            .collect();
        let verdicts = match sink.deliver(&parcels) {
            Ok(v) if v.len() == parcels.len() => v,
            Ok(v) => {
                return Err(runtime(format!(
                    "the sink answered {} verdicts for {} messages (a sink bug)",
                    v.len(),
                    parcels.len()
                )))
            }
            Err(e) => {
                ringmx::warn!("redrive: the sink failed: {e}");
                deferred += parcels.len() as u64;
                continue;
            }
        };
        for (p, v) in parcels.iter().zip(verdicts) {
            match v {
                Verdict::Accepted => {
                    dead.remove(p.key)?;
                    accepted += 1;
                }
                Verdict::Rejected { reason, rcpts } => {
                    dead.store(p, &reason, rcpts.as_deref())?;
                    refused += 1;
                }
                Verdict::Deferred(why) => {
                    ringmx::warn!("redrive: {} deferred: {why}", p.key);
                    deferred += 1;
                }
            }
        }
        dead.sync()?;
    }
    println!(
        "redrive {}: {accepted} accepted and removed, {refused} refused again, \
         {deferred} deferred (still dead letters), {} damaged in the spool (not sent)",
        dir.name(),
        damaged.len()
    );
    if deferred > 0 {
        return Err(runtime(format!(
            "{deferred} dead letters could not be delivered now; run --redrive again later"
        )));
    }
    Ok(())
}

/// `--reset [--since TIME]`.
fn reset(reader: &SpoolReader, dir: &ConsumerDir, since: Option<&str>) -> Result<(), Failure> {
    let since = since
        .map(|s| ringmx::civil::parse_time(s).map_err(|e| usage(format!("--since: {e}"))))
        .transpose()?;
    let start = Location {
        segment: 0,
        offset: 0,
    };
    let mut replay_total = 0u64;
    for shard in reader.shards()? {
        let mut it = reader.shard_messages(shard);
        let mut pos = None;
        let mut replay = 0u64;
        for m in it.by_ref() {
            let Ok(m) = m else { continue };
            if pos.is_none() && since.is_none_or(|t| m.envelope.arrival_unix >= t) {
                pos = Some(if since.is_some() { m.location } else { start });
            }
            if pos.is_some() {
                replay += 1;
            }
        }
        // Nothing at or after TIME: the end, where new mail will come.
        let pos = pos.unwrap_or(if since.is_some() {
            it.resume_point()
        } else {
            start
        });
        let old = dir.read(shard)?;
        dir.write(
            shard,
            &Checkpoint {
                position: pos,
                shipped: old.map_or(0, |c| c.shipped),
                written_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            },
        )?;
        println!(
            "shard {shard}: from segment {} offset {}: {replay} messages to ship again",
            pos.segment, pos.offset
        );
        replay_total += replay;
    }
    println!(
        "reset {}: {replay_total} messages will be shipped again by the next `ringmx ship --name {}`",
        dir.name(),
        dir.name()
    );
    Ok(())
}

/// `--forget`.
fn forget(reader: &SpoolReader, dir: &ConsumerDir) -> Result<(), Failure> {
    let (mut msgs, mut bytes) = (0u64, 0u64);
    for shard in reader.shards()? {
        let from = dir.read(shard)?.map_or(
            Location {
                segment: 0,
                offset: 0,
            },
            |c| c.position,
        );
        for m in reader.shard_messages_from(shard, from).flatten() {
            msgs += 1;
            bytes += m.body_len;
        }
    }
    let dead = DeadLetters::of(dir).list().map_or(0, |l| l.len());
    dir.remove()?;
    println!(
        "forgot consumer {}: it had {msgs} unshipped messages ({bytes} bytes of body) and \
         {dead} dead letters; space reclamation no longer waits for it",
        dir.name(),
    );
    Ok(())
}
