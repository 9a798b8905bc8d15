//! Running a load test: one glommio executor per core, each driving its share
//! of the connections, and the calling thread merging their per-second reports,
//! printing live lines and writing the logs.
//!
//! Per core, one *supervisor* task cuts intervals at the shared boundaries and
//! decides when the core is done; one *worker* task per connection claims
//! messages (closed loop: as soon as it is free; open loop: the next due time
//! from the core's schedule) and runs them through `client.rs`; glommio
//! wakes them when their sockets or timers are ready.
//! Cores share nothing but the read-only plan and a channel to the reporting
//! thread. The run's clock starts only once every core is up.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use ringmx::sys::{self, Limit};

use crate::aggregate::{Aggregator, CoreReport, IntervalKind, Merged, Totals};
use crate::client::{self, Conn, Failure, Outcome, Recorder, Settings};
use crate::config::{Load, RunConfig, Scenario};
use crate::hlog::{write_hgrm, HlogFile, HlogWriter};
use crate::message::Messages;
use crate::report::{banner, live_line, Summary};
use crate::schedule::{Rng, Schedule};
use crate::stats::{ErrorKind, IntervalStats, Phase};

/// Why a run could not start or its results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A generator thread (glommio executor) did not start.
    #[error(
        "cannot start generator core {core} on CPU {cpu}: {source} \
         (glommio needs io_uring and at least 512 KiB of locked memory: try `ulimit -l unlimited`)"
    )]
    Executor {
        /// Which core.
        core: usize,
        /// Which CPU it was to run on.
        cpu: usize,
        /// glommio's error.
        source: io::Error,
    },
    /// An output file (`--ack-log`, `--json`, `--hist-out`) could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Set by SIGINT: every core stops at once and the summary so far is printed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the Ctrl-C handler. The first Ctrl-C stops the run and prints the
/// summary so far; the handler is one-shot (SA_RESETHAND), so a second Ctrl-C
/// kills the process the usual way.
pub fn install_interrupt_handler() {
    // SAFETY: sigaction is given a zeroed, then filled, struct that lives for
    // the call; the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit: glommio registers io_uring
/// buffers in locked memory. Failure is not fatal (glommio then runs without
/// registered buffers), so it is only reported.
pub fn raise_memlock_limit() -> Option<String> {
    let (_, hard) = sys::limit(Limit::LockedMemory);
    let got = sys::raise_limit(Limit::LockedMemory, hard);
    (got < hard).then(|| format!("cannot raise RLIMIT_MEMLOCK from {got} to its hard limit {hard}"))
}

/// The CPUs this process may run on (its affinity mask, e.g. from `taskset`).
/// Generator cores are pinned to these in order, so `taskset -c 1 loadgen`
/// keeps the generator on CPU 1. CPU 0 when the mask cannot be read.
fn allowed_cpus() -> Vec<usize> {
    match sys::allowed_cpus() {
        Ok(cpus) if !cpus.is_empty() => cpus,
        _ => vec![0],
    }
}

/// glommio's io_uring buffer pool per core. It serves glommio's file I/O; the
/// generator's sockets are unbuffered and read into the connection's own
/// buffer, so glommio's 64 KiB minimum is plenty, and many cores stay far
/// under the usual 8 MiB memlock limit.
const IO_MEMORY_BYTES: usize = 64 << 10;

/// Slack between the last core saying it is ready and the run's start, so
/// that every core sees the start time before it arrives.
const START_SLACK: Duration = Duration::from_millis(1);

/// Longest wait for the generator cores to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a supervisor looks at its workers and the interrupt flag.
const SUPERVISOR_TICK: Duration = Duration::from_millis(10);

/// Interval boundaries, the same on every core.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    start: Instant,
    /// Measurement start (start + warm-up).
    measure: Instant,
    /// Measurement end, if the run is timed.
    end: Option<Instant>,
}

impl Timeline {
    /// The end of interval `seq`, its kind, and whether it is the run's end.
    /// Intervals are whole seconds, cut short at the warm-up end and the run end.
    fn boundary(&self, seq: u32) -> (Instant, IntervalKind, bool) {
        let warm = self.measure - self.start;
        let warm_intervals = warm.as_secs() as u32 + u32::from(warm.subsec_nanos() > 0);
        if seq < warm_intervals {
            let at = (self.start + Duration::from_secs(u64::from(seq) + 1)).min(self.measure);
            return (at, IntervalKind::Warmup, false);
        }
        let j = seq - warm_intervals;
        let at = self.measure + Duration::from_secs(u64::from(j) + 1);
        match self.end {
            Some(end) if at >= end => (end, IntervalKind::Measure, true),
            _ => (at, IntervalKind::Measure, false),
        }
    }

    fn interval_start(&self, seq: u32) -> Instant {
        if seq == 0 {
            self.start
        } else {
            self.boundary(seq - 1).0
        }
    }
}

/// Read-only state every core shares.
struct Plan {
    cfg: RunConfig,
    settings: Settings,
    msgs: Messages,
    /// Set by the reporting thread once every core is ready.
    timeline: OnceLock<Timeline>,
    /// Set when the run is abandoned before it starts (a core failed).
    abandoned: AtomicBool,
}

/// One core's share of the work.
#[derive(Debug, Clone, Copy)]
struct Share {
    core: usize,
    cpu: usize,
    connections: usize,
    messages: Option<u64>,
    /// Open loop: this core's part of `--rate`.
    rate: Option<f64>,
}

/// Splits `total` into `parts` near-equal pieces (the first ones get the rest).
fn split(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

/// Runs the load test described by `cfg`: prints live lines to stderr (unless
/// `cfg.live` is off), writes the requested files, and returns the summary.
///
/// # Errors
/// [`RunError`] when a core cannot start or an output file cannot be written.
pub fn run(cfg: RunConfig) -> Result<Summary, RunError> {
    let cores = cfg.effective_cores();
    let cpus = allowed_cpus();
    let settings = Settings {
        target: cfg.target,
        connect_timeout: cfg.connect_timeout,
        reply_timeout: cfg.reply_timeout,
        pipelining: cfg.pipelining,
        bdat: cfg.bdat,
        ack_log: cfg.ack_log.is_some(),
        // Open loop keeps each message's own start time: no chaining there.
        chain: cfg.chain && cfg.load == Load::Closed && cfg.scenario == Scenario::Mail,
        tls: cfg.tls.clone(),
        source_ips: cfg.source_ips,
        pregreet_fraction: cfg.pregreet_fraction,
        proxy_source: cfg.proxy_source,
        auth: cfg.auth.as_deref().map(crate::client::auth_plain_line),
    };
    let plan = Arc::new(Plan {
        msgs: Messages::build(&cfg),
        cfg: cfg.clone(),
        settings,
        timeline: OnceLock::new(),
        abandoned: AtomicBool::new(false),
    });

    // Files first: a run whose results cannot be written should not start.
    let mut hlog_files = create_hlogs(&cfg)?;
    let mut outputs = Outputs::open(&cfg, &mut hlog_files)?;
    let (tx, rx) = mpsc::channel::<CoreReport>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(cores);
    for core in 0..cores {
        let connections = split(cfg.connections as u64, cores, core) as usize;
        let share = Share {
            core,
            cpu: cpus[core % cpus.len()],
            connections,
            messages: cfg.messages.map(|n| split(n, cores, core)),
            rate: match cfg.load {
                Load::Closed => None,
                Load::Open { rate, .. } => Some(rate * connections as f64 / cfg.connections as f64),
            },
        };
        let plan2 = plan.clone();
        let (tx, ready) = (tx.clone(), ready_tx.clone());
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(share.cpu))
            .name(&format!("loadgen-{core}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move { run_core(plan2, share, tx, ready).await });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                plan.abandoned.store(true, Ordering::SeqCst);
                return Err(RunError::Executor {
                    core,
                    cpu: share.cpu,
                    source: e.into(),
                });
            }
        }
    }
    drop((tx, ready_tx));
    // Start the clock only once every core is up, so that a slow start does
    // not show up as latency (open loop) or lost time (closed loop).
    for core in 0..cores {
        if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_ok() {
            continue;
        }
        plan.abandoned.store(true, Ordering::SeqCst);
        return Err(RunError::Executor {
            core,
            cpu: cpus[core % cpus.len()],
            source: io::Error::other("the core did not start (see glommio's error above)"),
        });
    }
    let start = Instant::now() + START_SLACK;
    let measure = start + cfg.warmup;
    let timeline = Timeline {
        start,
        measure,
        end: cfg.duration.map(|d| measure + d),
    };
    // Only this thread sets it, once.
    plan.timeline.set(timeline).expect("timeline set once");
    if cfg.live {
        eprintln!("{}", banner(&cfg));
    }

    let mut agg = Aggregator::new(cores);
    let mut totals = Totals::default();
    let mut publish = |merged: Vec<Merged>, totals: &mut Totals| -> Result<(), RunError> {
        for m in merged {
            if cfg.live {
                eprintln!("{}", live_line(&m, m.end.saturating_duration_since(start)));
            }
            outputs.interval(&m, measure)?;
            totals.add(&m);
        }
        Ok(())
    };
    while !agg.done() {
        match rx.recv() {
            Ok(report) => publish(agg.push(report), &mut totals)?,
            // Every core's sender is gone without a last report: a core died.
            Err(mpsc::RecvError) => {
                publish(agg.flush(), &mut totals)?;
                break;
            }
        }
    }
    for h in handles {
        if let Err(e) = h.join() {
            eprintln!("loadgen: a generator core failed: {e}");
            totals.aborted = true;
        }
    }
    let summary = Summary::new(&cfg, &totals);
    outputs.finish(&summary, &totals)?;
    Ok(summary)
}

/// The files a run writes, open for the run's length; the `.hlog` writers
/// borrow their files from [`create_hlogs`].
struct Outputs<'a> {
    ack_log: Option<(PathBuf, BufWriter<File>)>,
    hlogs: Vec<(Phase, &'a Path, HlogWriter<'a>)>,
    json: Option<PathBuf>,
    hist_prefix: Option<PathBuf>,
}

fn output_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |source| RunError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// `PREFIX` + `.phase.ext`, e.g. `run1.e2e.hlog`.
pub fn hist_path(prefix: &std::path::Path, phase: Phase, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!(".{}.{ext}", phase.name()));
    PathBuf::from(s)
}

/// `--hist-out`: one `.hlog` file per phase.
fn create_hlogs(cfg: &RunConfig) -> Result<Vec<(Phase, PathBuf, HlogFile)>, RunError> {
    let Some(prefix) = &cfg.hist_out else {
        return Ok(Vec::new());
    };
    Phase::ALL
        .into_iter()
        .map(|phase| {
            let path = hist_path(prefix, phase, "hlog");
            let file = HlogFile::create(&path).map_err(output_err(&path))?;
            Ok((phase, path, file))
        })
        .collect()
}

impl<'a> Outputs<'a> {
    fn open(
        cfg: &RunConfig,
        hlog_files: &'a mut [(Phase, PathBuf, HlogFile)],
    ) -> Result<Outputs<'a>, RunError> {
        let ack_log = match &cfg.ack_log {
            Some(p) => Some((
                p.clone(),
                BufWriter::new(File::create(p).map_err(output_err(p))?),
            )),
            None => None,
        };
        // The wall-clock time of the measurement start, for the logs'
        // StartTime: the cores start within milliseconds of this.
        let wall = SystemTime::now() + cfg.warmup;
        let mut hlogs = Vec::new();
        for (phase, path, file) in hlog_files {
            let comment = format!(
                "[Logged with loadgen {}: {} latency, target {}, values in ns]",
                env!("CARGO_PKG_VERSION"),
                phase.title(),
                cfg.target_text
            );
            let path: &Path = path;
            let w = file.begin(wall, &comment).map_err(output_err(path))?;
            hlogs.push((*phase, path, w));
        }
        Ok(Outputs {
            ack_log,
            hlogs,
            json: cfg.json.clone(),
            hist_prefix: cfg.hist_out.clone(),
        })
    }

    fn interval(&mut self, m: &Merged, measure: Instant) -> Result<(), RunError> {
        if let Some((path, w)) = &mut self.ack_log {
            w.write_all(&m.stats.acks)
                .and_then(|()| w.flush())
                .map_err(output_err(path))?;
        }
        if m.kind != IntervalKind::Warmup {
            let rel = m.start.saturating_duration_since(measure);
            for (phase, path, w) in &mut self.hlogs {
                w.interval(rel, m.length(), m.stats.hists.get(*phase))
                    .map_err(output_err(path))?;
            }
        }
        Ok(())
    }

    fn finish(self, summary: &Summary, totals: &Totals) -> Result<(), RunError> {
        if let Some(prefix) = &self.hist_prefix {
            for phase in Phase::ALL {
                let path = hist_path(prefix, phase, "hgrm");
                let mut f = BufWriter::new(File::create(&path).map_err(output_err(&path))?);
                write_hgrm(&mut f, totals.stats.hists.get(phase))
                    .and_then(|()| f.flush())
                    .map_err(output_err(&path))?;
            }
        }
        if let Some(path) = &self.json {
            // Summary holds only strings, numbers and maps: serialising cannot fail.
            let text = serde_json::to_string_pretty(summary).expect("summary serialises");
            std::fs::write(path, text + "\n").map_err(output_err(path))?;
        }
        Ok(())
    }
}

/// Per-core control state shared by the supervisor and the workers.
struct CoreCtl {
    /// No new messages may be claimed.
    stopping: Cell<bool>,
    /// Messages claimed and not yet finished.
    in_flight: Cell<u64>,
    /// Worker tasks still running.
    workers: Cell<usize>,
    /// Wakes the supervisor when the last worker is done.
    workers_done: Notify,
    /// `--messages` left for this core, counted after warm-up.
    remaining: Cell<Option<u64>>,
    /// Open loop: due times.
    schedule: RefCell<Option<Schedule>>,
    /// When the last message finished, for the final interval's end.
    last_done: Cell<Instant>,
    /// Size draws.
    rng: RefCell<Rng>,
}

impl CoreCtl {
    /// Claims the next message; `None` when this core's work is over. The
    /// returned instant is when the message is due: now in closed loop, its
    /// scheduled time in open loop.
    fn claim(&self, tl: &Timeline) -> Option<Instant> {
        if self.stopping.get() {
            return None;
        }
        let now = Instant::now();
        let mut schedule = self.schedule.borrow_mut();
        let due = match schedule.as_ref() {
            None => now,
            Some(s) => tl.start + Duration::from_nanos(s.peek()),
        };
        if tl.end.is_some_and(|end| due >= end) {
            return None;
        }
        if due >= tl.measure {
            match self.remaining.get() {
                Some(0) => return None,
                Some(n) => self.remaining.set(Some(n - 1)),
                None => {}
            }
        }
        if let Some(s) = schedule.as_mut() {
            s.take();
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Some(due)
    }

    fn finished(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.last_done.set(Instant::now());
    }
}

async fn run_core(
    plan: Arc<Plan>,
    share: Share,
    tx: mpsc::Sender<CoreReport>,
    ready: mpsc::Sender<()>,
) {
    // The receiver waits for every core (or has given up, when the run is
    // abandoned; the check below then ends this core).
    let _ = ready.send(());
    drop(ready);
    // Nothing runs on this core yet, so waiting here blocks no task.
    let tl = loop {
        if let Some(tl) = plan.timeline.get() {
            break *tl;
        }
        if plan.abandoned.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_micros(50));
    };
    supervise(tl, plan, share, tx).await;
}

/// Completes at `at` (at once if it has passed).
async fn sleep_until(at: Instant) {
    let left = at.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        glommio::timer::sleep(left).await;
    }
}

/// A wake-up call between tasks of one core: one task waits, any other
/// notifies.
#[derive(Default)]
struct Notify {
    waiter: RefCell<Option<Waker>>,
    notified: Cell<bool>,
}

impl Notify {
    /// Wakes the waiter, or lets the next wait return at once.
    fn notify(&self) {
        self.notified.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// Completes once notified (consuming the notification).
    fn notified(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            if self.notified.replace(false) {
                return Poll::Ready(());
            }
            *self.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

/// One core's run: starts its workers, cuts intervals at the shared
/// boundaries, and decides when the core is done.
async fn supervise(tl: Timeline, plan: Arc<Plan>, share: Share, tx: mpsc::Sender<CoreReport>) {
    let rec: Recorder = Rc::new(RefCell::new(IntervalStats::default()));
    let seed = plan.cfg.seed ^ (share.core as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let ctl = Rc::new(CoreCtl {
        stopping: Cell::new(false),
        in_flight: Cell::new(0),
        workers: Cell::new(share.connections),
        workers_done: Notify::default(),
        remaining: Cell::new(share.messages),
        schedule: RefCell::new(share.rate.map(|rate| match plan.cfg.load {
            Load::Open { arrivals, .. } => Schedule::new(rate, arrivals, seed),
            Load::Closed => unreachable!("a rate is only set in open loop"),
        })),
        last_done: Cell::new(tl.start),
        rng: RefCell::new(Rng::new(seed.wrapping_add(1))),
    });

    sleep_until(tl.start).await;
    let workers: Vec<glommio::Task<()>> = (0..share.connections)
        .map(|_| glommio::spawn_local(worker(tl, plan.clone(), ctl.clone(), rec.clone())))
        .collect();

    let send = |seq: u32, kind, end: Instant, last: bool, aborted: bool| {
        let stats = std::mem::take(&mut *rec.borrow_mut());
        let report = CoreReport {
            core: share.core,
            seq,
            kind,
            start: tl.interval_start(seq),
            end,
            last,
            aborted,
            stats,
        };
        // The receiver lives until every core's last report; if it is gone the
        // process is exiting anyway.
        let _ = tx.send(report);
    };

    let mut seq = 0u32;
    loop {
        let (boundary, kind, is_end) = tl.boundary(seq);
        // Wait for the boundary, the end of this core's work, or Ctrl-C.
        loop {
            if INTERRUPTED.load(Ordering::Relaxed) {
                ctl.stopping.set(true);
                count_unfinished(&rec, ctl.in_flight.get());
                drop(workers);
                send(seq, kind, Instant::now(), true, true);
                return;
            }
            // Every worker is done: with --messages used up (or no time limit)
            // the run ends with the last message. An open-loop schedule that
            // simply has nothing more due before --duration ends waits for the
            // end instead, so the measured window stays --duration long.
            let all_done = ctl.remaining.get() == Some(0) || tl.end.is_none();
            if ctl.workers.get() == 0 && all_done {
                drop(workers);
                let end = ctl.last_done.get().max(tl.interval_start(seq));
                send(seq, kind, end, true, false);
                return;
            }
            let now = Instant::now();
            if now >= boundary {
                break;
            }
            let tick = sleep_until(boundary.min(now + SUPERVISOR_TICK));
            future::or(tick, ctl.workers_done.notified()).await;
        }
        if !is_end {
            send(seq, kind, boundary, false, false);
            seq += 1;
            continue;
        }

        // The measured window is over: stop claiming, count what the schedule
        // still owed, and let in-flight messages finish (bounded by the reply
        // timeout) so their latencies are not lost.
        ctl.stopping.set(true);
        if let Some(s) = ctl.schedule.borrow().as_ref() {
            let end_ns = u64::try_from((boundary - tl.start).as_nanos()).unwrap_or(u64::MAX);
            rec.borrow_mut().counters.backlog += s.due_before(end_ns);
        }
        send(seq, kind, boundary, false, false);
        seq += 1;
        let deadline = boundary + plan.cfg.reply_timeout;
        let mut aborted = false;
        while ctl.workers.get() > 0 {
            aborted = INTERRUPTED.load(Ordering::Relaxed);
            if aborted || Instant::now() >= deadline {
                count_unfinished(&rec, ctl.in_flight.get());
                break;
            }
            let tick = sleep_until(Instant::now() + SUPERVISOR_TICK);
            future::or(tick, ctl.workers_done.notified()).await;
        }
        drop(workers);
        send(seq, IntervalKind::Drain, Instant::now(), true, aborted);
        return;
    }
}

fn count_unfinished(rec: &Recorder, n: u64) {
    let mut r = rec.borrow_mut();
    for _ in 0..n {
        r.error(ErrorKind::Unfinished, || {
            "message in flight when the run stopped".into()
        });
    }
    r.counters.msgs_error += n;
}

/// Backoff after consecutive failures to set up a connection: 10 ms doubling
/// to 1 s, so a dead server is probed, not hammered.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))
}

/// One connection's loop: claim a message, (re)connect if needed, send it,
/// record how it went.
///
/// When chaining, the next message is claimed while the current one is being
/// sent (its envelope goes out with the current body), so it is carried into
/// the next iteration instead of claimed there. If the connection is lost
/// first, the carried message is still only claimed, not lost: nothing of it
/// was accepted or refused, and it goes out on the next connection.
async fn worker(tl: Timeline, plan: Arc<Plan>, ctl: Rc<CoreCtl>, rec: Recorder) {
    let cfg = &plan.cfg;
    let mut conn: Option<Conn> = None;
    let mut setup_failures = 0u32;
    let mut carried: Option<Instant> = None;
    while let Some(due) = carried.take().or_else(|| ctl.claim(&tl)) {
        sleep_until(due).await;
        let payload = if plan.msgs.payloads.len() == 1 {
            &plan.msgs.payloads[0]
        } else {
            let u = ctl.rng.borrow_mut().next_f64();
            &plan.msgs.payloads[cfg.sizes.pick(u)]
        };

        if conn.is_none() {
            if setup_failures > 0 {
                sleep_until(Instant::now() + backoff(setup_failures)).await;
            }
            if plan.settings.next_is_pregreet() {
                // An early talker sends no mail: its message slot is the
                // server's answer to it (refused, or a failure if served).
                match client::pregreet(&plan.settings, &plan.msgs, &rec).await {
                    Ok(code) => count_refusal(&rec, code),
                    Err(f) => count_failure(&rec, &f, true),
                }
                ctl.finished();
                continue;
            }
            match Conn::open(&plan.settings, &plan.msgs, &rec).await {
                Ok(Ok(c)) => {
                    setup_failures = 0;
                    conn = Some(c);
                }
                Ok(Err(code)) => {
                    setup_failures += 1;
                    count_refusal(&rec, code);
                    ctl.finished();
                    continue;
                }
                Err(f) => {
                    setup_failures += 1;
                    count_failure(&rec, &f, true);
                    ctl.finished();
                    continue;
                }
            }
        }
        // Just set above when it was None.
        let c = conn.as_mut().expect("connection open");
        // The next message may share this connection only if it is not this
        // message's last (`transactions` is about to count this one).
        let room = cfg.msgs_per_conn == 0 || c.transactions + 2 <= cfg.msgs_per_conn;
        let mut next = None;
        let chain_next = || {
            next = if room { ctl.claim(&tl) } else { None };
            next.is_some()
        };
        let result = match cfg.scenario {
            Scenario::Mail => {
                c.send_mail(&plan.settings, &plan.msgs, payload, &rec, chain_next)
                    .await
            }
            Scenario::Noop => c.noop(&rec).await,
            // The session was the work: open() did it, quit() ends it.
            Scenario::Handshake => {
                c.transactions += 1;
                Ok(Outcome::Accepted)
            }
        };
        match result {
            Ok(Outcome::Accepted) => {
                let mut r = rec.borrow_mut();
                r.counters.msgs_ok += 1;
                r.hists.record(
                    Phase::E2e,
                    u64::try_from(due.elapsed().as_nanos()).unwrap_or(u64::MAX),
                );
            }
            Ok(Outcome::Refused { code }) => {
                count_refusal(&rec, code);
                // RFC 5321 §3.8: 421 means the server is closing the channel.
                // Otherwise a refused transaction is reset before the next
                // one, unless the next one's envelope is already on its way
                // (chained: the end of data has ended the transaction).
                let usable = if code == 421 {
                    false
                } else if cfg.scenario == Scenario::Mail && next.is_none() {
                    match c.rset(&rec).await {
                        Ok(usable) => usable,
                        Err(f) => {
                            count_failure(&rec, &f, false);
                            false
                        }
                    }
                } else {
                    true
                };
                if !usable {
                    conn = None;
                }
            }
            Err(f) => {
                count_failure(&rec, &f, true);
                conn = None;
            }
        }
        ctl.finished();
        carried = next;
        let spent = conn
            .as_ref()
            .is_some_and(|c| cfg.msgs_per_conn > 0 && c.transactions >= cfg.msgs_per_conn);
        if spent && carried.is_none() {
            quit(conn.take(), &rec).await;
        }
    }
    quit(conn.take(), &rec).await;
    ctl.workers.set(ctl.workers.get() - 1);
    if ctl.workers.get() == 0 {
        ctl.workers_done.notify();
    }
}

/// Counts a connection failure; `lost_message` when it cost the message in hand.
fn count_failure(rec: &Recorder, f: &Failure, lost_message: bool) {
    let mut r = rec.borrow_mut();
    r.error(f.kind, || f.detail.clone());
    r.counters.msgs_error += u64::from(lost_message);
}

fn count_refusal(rec: &Recorder, code: u16) {
    let mut r = rec.borrow_mut();
    if code >= 500 {
        r.counters.msgs_perm_fail += 1;
    } else {
        r.counters.msgs_temp_fail += 1;
    }
}

async fn quit(conn: Option<Conn>, rec: &Recorder) {
    if let Some(c) = conn {
        if let Err(f) = c.quit(rec).await {
            count_failure(rec, &f, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_whole_seconds_cut_at_warmup_and_end() {
        let start = Instant::now();
        let tl = Timeline {
            start,
            measure: start + Duration::from_millis(1500),
            end: Some(start + Duration::from_millis(3700)),
        };
        let ms = |seq| {
            let (at, kind, end) = tl.boundary(seq);
            ((at - start).as_millis(), kind, end)
        };
        assert_eq!(ms(0), (1000, IntervalKind::Warmup, false));
        assert_eq!(ms(1), (1500, IntervalKind::Warmup, false));
        assert_eq!(ms(2), (2500, IntervalKind::Measure, false));
        assert_eq!(ms(3), (3500, IntervalKind::Measure, false));
        assert_eq!(ms(4), (3700, IntervalKind::Measure, true));
        assert_eq!(tl.interval_start(0), start);
        assert_eq!(tl.interval_start(2), start + Duration::from_millis(1500));

        let untimed = Timeline {
            start,
            measure: start,
            end: None,
        };
        assert_eq!(
            untimed.boundary(0),
            (start + Duration::from_secs(1), IntervalKind::Measure, false)
        );
        assert_eq!(untimed.boundary(99).0, start + Duration::from_secs(100));
    }

    #[test]
    fn shares_add_up() {
        for total in [0u64, 1, 7, 16, 1000] {
            for parts in 1..5 {
                let sum: u64 = (0..parts).map(|i| split(total, parts, i)).sum();
                assert_eq!(sum, total);
            }
        }
        assert_eq!(split(7, 2, 0), 4);
        assert_eq!(split(7, 2, 1), 3);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(20));
        assert_eq!(backoff(3), Duration::from_millis(80));
        assert_eq!(backoff(30), Duration::from_secs(1));
    }

    #[test]
    fn hist_paths() {
        let p = hist_path(std::path::Path::new("/tmp/run1"), Phase::E2e, "hlog");
        assert_eq!(p, PathBuf::from("/tmp/run1.e2e.hlog"));
    }
}
