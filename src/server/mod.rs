//! The server runtime: one glommio executor per selected core, each a shard
//! with its own listeners, connections and store, sharing nothing.
//!
//! | concern | file |
//! |---|---|
//! | start-up checks, resource limits, signals, executor pool | this file |
//! | SO_REUSEPORT listener sockets, port-in-use probe | [`listener`] |
//! | per-core state, accept loop, connection limit, shutdown | `shard.rs` |
//! | one client connection driving the session | `conn.rs` |
//! | per-client limits across shards, greeting-wait pass cache | `anvil.rs` |
//! | the early-talker test (greeting wait) | `pregreet.rs` |
//! | PROXY protocol header: the real client address | [`proxy`] |
//! | deleting shipped segments, backpressure (a thread) | [`crate::spool::reclaim`] |
//! | the recipient map: load, share, reload on SIGHUP | [`recipients`] |
//! | Prometheus metrics: per-shard instruments, `GET /metrics` | `metrics/` |
//! | submission: users file, password checks, failed-AUTH limit | [`auth`] |
//!
//! Start-up, on the main thread: resolve the cores, raise RLIMIT_NOFILE and
//! RLIMIT_MEMLOCK where allowed, bind every shard's sockets (so "port in use"
//! is reported before anything runs), block SIGINT/SIGTERM and start the
//! signal thread, start the executors and wait until each reports that its
//! store is open and its listeners are running. Any failure is one line and
//! [`serve`] returns an error.
//!
//! SIGHUP reloads what can change at run time (so far the recipient map,
//! `smtp.recipient_map`): each reload is checked first and a bad one keeps
//! what runs. Further reloads (certificates, user files) add a hook to the
//! signal thread's list.
//!
//! Shutdown: the first SIGTERM/SIGINT writes a byte to each shard's stop
//! socket; each shard stops accepting, answers idle sessions `421 4.3.2`,
//! lets transactions in flight finish for `server.shutdown_grace`, then cuts
//! off the rest. [`serve`] returns once every shard has stopped. A second
//! signal exits the process at once (status 128 + signal).

pub mod anvil;
pub mod auth;
pub mod listener;
pub mod lookup;
pub mod notify;
pub mod proxy;
pub mod recipients;
pub mod reload;
pub mod tls;
pub mod uring;

mod conn;
mod metrics;
mod pregreet;
mod shard;

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};

use glommio::{LocalExecutorBuilder, Placement};

pub use conn::{conn_memory_bound, ConnMemoryBound};
pub use shard::ShardSummary;

// The message store: the per-core spool (`250` means durable).
use crate::spool as store;

use crate::config::{Config, ConfigError};
use crate::log::Level;
use crate::sys::{self, Limit};

/// glommio's I/O buffer pool per executor (its default, `io_memory`). glommio
/// registers it with each of its three rings; that pins
/// 3 × this many bytes per shard, accounted against RLIMIT_MEMLOCK unless
/// the process has CAP_IPC_LOCK. See README "Locked memory".
pub const IO_MEMORY_BYTES: u64 = 10 << 20;

/// Rings registered per executor (main, latency, poll).
const RINGS_PER_EXECUTOR: u64 = 3;

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK.
pub const MIN_MEMLOCK_BYTES: u64 = 512 << 10;

/// File descriptors of the process outside any shard: stdin/out/err, the
/// spool lock, the signal thread, files opened briefly at start-up, with
/// room to spare.
const FD_PROCESS: u64 = 32;

/// File descriptors each shard holds besides its connections and listeners
/// (counted with `ls /proc/<pid>/fd` on a running server): glommio's three
/// io_uring rings and its eventfd (4), both ends of the stop socket pair
/// (2), the segment being appended to, its successor and the shard
/// directory while a segment rolls over (3).
const FD_PER_SHARD: u64 = 9;

/// File descriptors beyond the connection limit: [`FD_PROCESS`], and per
/// shard [`FD_PER_SHARD`], one listener per listen address and up to
/// [`shard::MAX_REJECTING`] connections being turned away with `421`.
/// Scales with the shards, since each holds its own of all of these.
fn fd_slack(shards: u64, listen_addrs: u64) -> u64 {
    FD_PROCESS + shards * (FD_PER_SHARD + listen_addrs + shard::MAX_REJECTING)
}

/// Why the server could not start or run; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting that cannot work here.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listen address that cannot be used.
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    /// RLIMIT_MEMLOCK below what io_uring needs, and it cannot be raised.
    #[error(
        "locked-memory limit (RLIMIT_MEMLOCK) is {have} KiB; io_uring needs at least {need} KiB: \
         raise it (ulimit -l, LimitMEMLOCK= in systemd) or run with CAP_IPC_LOCK"
    )]
    Memlock {
        /// Current soft limit, KiB.
        have: u64,
        /// The minimum, KiB.
        need: u64,
    },
    /// A shard failed to start (store, executor, CPU placement).
    #[error("shard {shard}: {reason}")]
    Shard {
        /// The shard.
        shard: u32,
        /// What failed.
        reason: String,
    },
    /// `smtp.recipient_map` cannot be read or has a bad line.
    #[error(transparent)]
    RecipientMap(#[from] recipients::RecipientMapError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// `submission.users` cannot be read or has a bad line.
    #[error(transparent)]
    Users(#[from] auth::users::UsersError),
    /// A system call the start-up needs failed.
    #[error("{0}")]
    System(String),
}

/// Runs the server until a signal stops it; see the module docs.
///
/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it
/// starts): a dedicated thread waits for them.
///
/// # Errors
/// A [`ServerError`] at start-up, or if a shard dies.
pub fn serve(cfg: Config) -> Result<Vec<ShardSummary>, ServerError> {
    serve_reloading(cfg, None)
}

/// [`serve`], with SIGHUP re-reading the settings through `reread` (the
/// file and flags the process started with) and applying what can change at
/// run time (see [`reload`]).
///
/// # Errors
/// As [`serve`].
pub fn serve_reloading(
    cfg: Config,
    reread: Option<reload::Reread>,
) -> Result<Vec<ShardSummary>, ServerError> {
    cfg.validate()?;
    crate::log::set_level(cfg.server.log_level);
    crate::log::set_format(cfg.server.log_format);
    crate::log::install();
    // Whatever way this returns, what the shards logged is written first.
    let _flush = FlushLog;

    let allowed = allowed_cpus()?;
    let cpus = cfg.server.cores.resolve(&allowed)?;
    let shards = cpus.len() as u64;

    // Certificates first: a bad one is a settings error (exit 2).
    let tls = tls::Acceptor::from_config(&cfg.tls)?;
    if let Some(a) = &tls {
        crate::info!("TLS certificates: {}", a.describe());
    }
    if cfg.tls.only {
        crate::warn!(
            "tls.only: MAIL before STARTTLS gets 530 5.7.0. RFC 3207 §4 forbids this on a \
             publicly referenced MX (senders without TLS could not deliver): private relays only"
        );
    }
    let listen: Vec<SocketAddr> = cfg
        .server
        .listen
        .iter()
        .chain(&cfg.server.listen_proxy)
        .chain(&cfg.tls.listen)
        .chain(&cfg.submission.listen)
        .chain(&cfg.submission.listen_tls)
        .copied()
        .collect();
    // Submission listeners come last (see `auth::Roles`).
    let roles = submission_roles(&cfg);
    let auth = auth::AuthService::from_config(&cfg.submission)?.map(Arc::new);
    if let Some(a) = &auth {
        crate::info!(
            "submission users {}: {}",
            cfg.submission.users.display(),
            a.users().describe()
        );
    }
    let slack = fd_slack(shards, listen.len() as u64);
    raise_nofile(
        shards * cfg.server.max_connections_per_shard as u64 + slack,
        slack,
    );
    check_memlock(shards)?;
    // Before any executor: a forbidden io_uring is one line, not a panic.
    uring::probe().map_err(ServerError::System)?;

    let shared = Arc::new(recipients::SharedRecipients::new(load_recipients(&cfg)?));
    let mut reloads: Vec<Reload> = Vec::new();
    let live = Arc::new(reload::Live::new(&cfg));
    if let Some(mut reread) = reread {
        let (live, mut running) = (Arc::clone(&live), cfg.clone());
        // First, so that the map below is read under the new settings.
        reloads.push(Box::new(move || {
            reload::reload(&live, &mut running, &mut reread);
        }));
    }
    if !cfg.smtp.recipient_map.as_os_str().is_empty() {
        let (shared, smtp) = (Arc::clone(&shared), cfg.smtp.clone());
        reloads.push(Box::new(move || {
            recipients::reload(&shared, &smtp.recipient_map, &smtp)
        }));
    }
    if let Some(a) = &tls {
        let (a, tcfg) = (Arc::clone(a), cfg.tls.clone());
        reloads.push(Box::new(move || a.reload(&tcfg)));
    }
    if let Some(a) = &auth {
        let (a, path) = (Arc::clone(a), cfg.submission.users.clone());
        reloads.push(Box::new(move || auth::reload(&a, &path)));
    }

    let bound = listener::bind_all(&listen, cpus.len(), &cfg.server)?;

    let reclaim = store::reclaim::Shared::new(cpus.len() as u32);
    let anvil = Arc::new(anvil::Anvil::new(&cfg.server));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut stops = Vec::with_capacity(cpus.len());
    let mut starts = Vec::with_capacity(cpus.len());
    let shard_metrics: Vec<Arc<metrics::ShardMetrics>> =
        cpus.iter().map(|_| Arc::default()).collect();
    for (i, (cpu, sockets)) in cpus.iter().zip(bound.per_shard).enumerate() {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| ServerError::System(format!("cannot create a socket pair: {e}")))?;
        stops.push(ours);
        starts.push(shard::ShardStart {
            id: i as u32,
            cpu: *cpu,
            config: cfg.clone(),
            live: Arc::clone(&live),
            recipients: Arc::clone(&shared),
            // Set below, once signals are blocked.
            lookups: None,
            sockets,
            proxy_from: cfg.server.listen.len(),
            implicit_tls_from: cfg.server.listen.len() + cfg.server.listen_proxy.len(),
            tls: tls.clone(),
            submission: roles,
            auth: auth.clone(),
            stop: OwnedFd::from(theirs),
            ready: shard::Ready::new(i as u32, ready_tx.clone()),
            pin: std::sync::Arc::clone(&reclaim.pins[i]),
            pressure: std::sync::Arc::clone(&reclaim.pressure),
            anvil: Arc::clone(&anvil),
            metrics: Arc::clone(&shard_metrics[i]),
        });
    }
    drop(ready_tx);

    block_signals()?;
    // Started after block_signals, like every thread: one with SIGTERM
    // unblocked would take it, and its default action ends the process.
    let lookups = lookup::LookupPool::start(&cfg.smtp).map_err(|e| {
        ServerError::System(format!("cannot start the recipient lookup threads: {e}"))
    })?;
    for s in &mut starts {
        s.lookups.clone_from(&lookups);
    }
    if lookups.is_some() {
        crate::info!("recipient lookups: {}", lookup::describe(&cfg.smtp));
    }
    if let Some(a) = &auth {
        a.start()
            .map_err(|e| ServerError::System(format!("cannot start the password threads: {e}")))?;
    }
    spawn_signal_thread(stops, cfg.server.shutdown_grace, reloads)?;

    let mut handles = Vec::with_capacity(starts.len());
    for start in starts {
        let (id, cpu) = (start.id, start.cpu);
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("ringmx-shard{id}"))
            .io_memory(IO_MEMORY_BYTES as usize)
            .spawn(move || shard::run(start))
            .map_err(|e| ServerError::Shard {
                shard: id,
                reason: format!("CPU {cpu}: {e}"),
            })?;
        handles.push((id, h));
    }

    // Every shard reports exactly once (see `shard::Ready`): its store is
    // open and its listeners run, or what failed.
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    for _ in 0..handles.len() {
        let Ok((id, r)) = ready_rx.recv() else { break };
        let reason = match r {
            Ok(()) => continue,
            Err(Some(reason)) => reason,
            // The executor never ran the shard: the reason is in its result.
            Err(None) => match handles[id as usize].take().map(|(_, h)| h.join()) {
                Some(Err(e)) => one_line(&e),
                _ => "stopped during start-up".into(),
            },
        };
        return Err(ServerError::Shard { shard: id, reason });
    }

    // Off the shard threads: deletes what every consumer shipped, sets the
    // backpressure flag. Stops when this function returns.
    let _reclaimer = store::reclaim::Reclaimer::new(&cfg.spool.dir, &cfg.spool, reclaim)
        .spawn()
        .map_err(|e| ServerError::System(format!("cannot start the reclaimer thread: {e}")))?;

    // `GET /metrics` once every shard runs; stops when this returns.
    let _metrics = match cfg.server.metrics.is_empty() {
        true => None,
        false => {
            let scrape = metrics::Scrape::new(shard_metrics, &cfg.spool.dir);
            let m = metrics::start(&cfg.server.metrics, scrape).map_err(ServerError::System)?;
            let at: Vec<String> = m
                .addrs
                .iter()
                .map(|a| format!("http://{a}/metrics"))
                .collect();
            // Always written, like the line below: tests read the port from it.
            crate::log::write(Level::Info, format_args!("metrics on {}", at.join(" ")));
            Some(m)
        }
    };
    let plain = cfg.server.listen.len();
    let proxied = plain + cfg.server.listen_proxy.len();
    if proxied > plain {
        let addrs: Vec<String> = bound.addrs[plain..proxied]
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        // Before "listening on", as the TLS line.
        crate::log::write(
            Level::Info,
            format_args!("listening for PROXY on {}", addrs.join(" ")),
        );
    }
    let implicit_end = proxied + cfg.tls.listen.len();
    if implicit_end > proxied {
        let tls_addrs: Vec<String> = bound.addrs[proxied..implicit_end]
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        // Before "listening on": scripts and tests read both.
        crate::log::write(
            Level::Info,
            format_args!("listening with implicit TLS on {}", tls_addrs.join(" ")),
        );
    }
    log_submission_listeners(&bound.addrs, roles);
    let addrs: Vec<String> = bound.addrs[..plain]
        .iter()
        .map(SocketAddr::to_string)
        .collect();
    // Always written, whatever the level: scripts and tests wait for it.
    crate::log::write(
        Level::Info,
        format_args!(
            "listening on {} ({} shards on CPUs {cpus:?})",
            addrs.join(" "),
            cpus.len()
        ),
    );
    // systemd (Type=notify): every shard listens now.
    notify::notify("READY=1");
    // Consumers (`--ship`) start once every shard's spool is open.
    let ships = start_ships(&cfg);
    if cfg.spool.durability == crate::config::Durability::None {
        crate::warn!(
            "spool.durability = none: 250 is sent before messages reach the disk; a crash \
             or power loss LOSES ACKNOWLEDGED MAIL. Use this for benchmarks only."
        );
    }

    let mut summaries = Vec::with_capacity(handles.len());
    for (id, h) in handles.into_iter().flatten() {
        match h.join() {
            Ok(s) => summaries.push(s),
            Err(e) => {
                return Err(ServerError::Shard {
                    shard: id,
                    reason: one_line(&e),
                })
            }
        }
    }
    // After the shards: the consumers ship what they took last.
    if let Some(s) = ships {
        s.stop();
    }
    // The shards' last lines come before the summary.
    crate::log::flush();
    let total: u64 = summaries.iter().map(|s| s.messages).sum();
    crate::info!("per-client limits: {}", anvil.stats.summary());
    crate::info!(
        "stopped: {} shards, {total} messages accepted",
        summaries.len()
    );
    if let Some(a) = &tls {
        let c = a.counters().snapshot();
        crate::info!(
            "tls: handshakes={} resumed={} failed={} starttls={} implicit={} \
             pipelined_dropped={} reloads={} reload_failures={}",
            c.handshakes,
            c.resumed,
            c.failed,
            c.starttls,
            c.implicit,
            c.pipelined_dropped,
            c.reloads,
            c.reload_failures
        );
    }
    Ok(summaries)
}

/// Starts the `server.ship` consumers as child processes of this binary.
fn start_ships(cfg: &Config) -> Option<crate::outlet::supervise::Supervisor> {
    if cfg.server.ship.is_empty() {
        return None;
    }
    match std::env::current_exe() {
        Ok(exe) => Some(crate::outlet::supervise::Supervisor::start(
            &exe,
            &cfg.spool.dir,
            &cfg.server.ship,
        )),
        Err(e) => {
            crate::error!("server.ship: cannot find this program's path ({e}); not shipping");
            None
        }
    }
}

/// Where the submission listeners sit among the bound addresses.
fn submission_roles(cfg: &Config) -> auth::Roles {
    if !cfg.submission.enabled() {
        return auth::Roles::none();
    }
    let from = cfg.server.listen.len() + cfg.server.listen_proxy.len() + cfg.tls.listen.len();
    auth::Roles {
        from,
        tls_from: from + cfg.submission.listen.len(),
    }
}

/// `listening for submission on ...` lines, before "listening on" (scripts
/// and tests read them, as the TLS line).
fn log_submission_listeners(addrs: &[SocketAddr], roles: auth::Roles) {
    let show = |r: &[SocketAddr]| r.iter().map(SocketAddr::to_string).collect::<Vec<_>>();
    let (from, tls_from) = (roles.from.min(addrs.len()), roles.tls_from.min(addrs.len()));
    let starttls = show(&addrs[from..tls_from]);
    if !starttls.is_empty() {
        crate::log::write(
            Level::Info,
            format_args!("listening for submission on {}", starttls.join(" ")),
        );
    }
    let implicit = show(&addrs[tls_from..]);
    if !implicit.is_empty() {
        crate::log::write(
            Level::Info,
            format_args!(
                "listening for submission with implicit TLS on {}",
                implicit.join(" ")
            ),
        );
    }
}

/// Something SIGHUP rereads; run on the signal thread, so it may block
/// (read files) but must log its own failures and keep what runs.
type Reload = Box<dyn FnMut() + Send>;

/// The recipient map named by `smtp.recipient_map`, if any, logged.
fn load_recipients(
    cfg: &Config,
) -> Result<Option<crate::protocol::recipients::RecipientMap>, ServerError> {
    let path = &cfg.smtp.recipient_map;
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let map = recipients::load(path, recipients::options(&cfg.smtp))?;
    crate::info!(
        "recipient map {} loaded in {} ms: {}",
        path.display(),
        started.elapsed().as_millis(),
        recipients::describe(&map, &recipients::map_policy_domains(&cfg.smtp))
    );
    Ok(Some(map))
}

/// Flushes the shards' log queue when dropped (see [`crate::log::flush`]).
struct FlushLog;

impl Drop for FlushLog {
    fn drop(&mut self) {
        crate::log::flush();
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPUs this process may run on (its affinity mask), ascending.
fn allowed_cpus() -> Result<Vec<usize>, ServerError> {
    sys::allowed_cpus()
        .map_err(|e| ServerError::System(format!("cannot read the CPU affinity mask: {e}")))
}

fn raise_nofile(want: u64, slack: u64) {
    let got = sys::raise_limit(Limit::OpenFiles, want);
    if got < want {
        crate::warn!(
            "open-file limit (RLIMIT_NOFILE) is {got}, below shards x max_connections + \
             {slack} = {want}: connections past it fail to accept; raise ulimit -n \
             (LimitNOFILE= in systemd)"
        );
    }
}

/// Whether the process has CAP_IPC_LOCK (the kernel then does not count
/// io_uring's pinned buffers against RLIMIT_MEMLOCK).
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Raises RLIMIT_MEMLOCK to what glommio's buffer registration needs; fails
/// below io_uring's minimum, warns when registration will be skipped.
fn check_memlock(shards: u64) -> Result<(), ServerError> {
    let want = shards * RINGS_PER_EXECUTOR * IO_MEMORY_BYTES;
    let got = sys::raise_limit(Limit::LockedMemory, want);
    if got < MIN_MEMLOCK_BYTES {
        return Err(ServerError::Memlock {
            have: got >> 10,
            need: MIN_MEMLOCK_BYTES >> 10,
        });
    }
    if got < want && !has_cap_ipc_lock() {
        crate::warn!(
            "locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, below the {} KiB that {shards} \
             shards need to register their I/O buffers with io_uring (3 rings x {} KiB each); \
             glommio will skip registration (spool I/O then copies through unregistered \
             buffers). Raise ulimit -l / LimitMEMLOCK= (see README)",
            got >> 10,
            want >> 10,
            IO_MEMORY_BYTES >> 10
        );
    }
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Blocks SIGINT/SIGTERM/SIGHUP here; threads started later inherit the mask, so
/// only the signal thread's `sigwait` ever sees them.
fn block_signals() -> Result<(), ServerError> {
    let set = signal_set();
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(ServerError::System(format!(
            "cannot block signals: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    Ok(())
}

/// Waits for signals: SIGHUP runs every reload in `reloads`, in order;
/// SIGTERM/SIGINT shut down (see the module docs).
fn spawn_signal_thread(
    stops: Vec<UnixStream>,
    grace: std::time::Duration,
    mut reloads: Vec<Reload>,
) -> Result<(), ServerError> {
    std::thread::Builder::new()
        .name("ringmx-signals".into())
        .spawn(move || {
            let set = signal_set();
            let mut first = true;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` and `sig` are valid for the call.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if sig == libc::SIGHUP {
                    if reloads.is_empty() {
                        crate::info!(
                            "SIGHUP: nothing to reload (no --config, no smtp.recipient_map, no tls.cert)"
                        );
                    }
                    for r in &mut reloads {
                        r();
                    }
                    continue;
                }
                let name = if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if first {
                    first = false;
                    notify::notify("STOPPING=1");
                    crate::info!(
                        "{name}: shutting down: no new connections, idle sessions get 421, \
                         transactions in flight have {grace:?}; send it again to exit at once"
                    );
                    for mut s in &stops {
                        let _ = s.write_all(b"x");
                    }
                } else {
                    crate::warn!("{name} again: exiting at once");
                    crate::log::flush();
                    std::process::exit(128 + sig);
                }
            }
        })
        .map(drop)
        .map_err(|e| ServerError::System(format!("cannot start the signal thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_headroom_grows_with_shards_and_listeners() {
        let one = fd_slack(1, 1);
        assert_eq!(one, FD_PROCESS + FD_PER_SHARD + 1 + shard::MAX_REJECTING);
        // Each shard adds its own rings, files, listeners and rejections.
        assert_eq!(fd_slack(8, 1) - one, 7 * (one - FD_PROCESS));
        assert_eq!(fd_slack(8, 3) - fd_slack(8, 1), 16);
    }
}
