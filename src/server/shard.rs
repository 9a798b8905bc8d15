//! One shard: the state and tasks of one executor on one core.
//!
//! Owns: the shard's listeners and accept loops, the connection permits
//! (the per-shard connection limit), the shutdown sequence (stop accepting,
//! tell connections, wait for the grace period, cut off what is left, close
//! the store) and the shard's counters. Everything here is single-threaded
//! (`Rc`, `Cell`); the only thing that crosses threads is the byte on the
//! stop socket that [`super`] writes when a signal arrives.
//! Leaves to [`super::conn`]: everything that happens on a client socket,
//! including the `421` to a connection over the limit.

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_lite::{future, AsyncReadExt};
use glommio::net::{TcpListener, UnixStream};
use glommio::sync::{Semaphore, StaticPermit};
use glommio::timer::sleep;

use super::anvil::Anvil;
use super::auth::{AuthService, Roles};
use super::conn;
use super::lookup::{LookupPool, TtlCache};
use super::metrics::{ConnRejected, ShardMetrics};
use super::recipients::SharedRecipients;
use super::reload::{Live, ShardLive};
use super::store;
use super::tls::Acceptor;
use crate::config::{Config, ServerConfig};
use crate::protocol::RcptCounts;

/// Connections a shard turns away at once (each gets `421 4.3.2` and a
/// lingering close, up to [`super::conn`]'s linger time). Below this the
/// accept loop answers connections over the limit as fast as they come;
/// past it, a flood waits in the kernel's listen backlog instead of holding
/// ever more descriptors.
pub(crate) const MAX_REJECTING: u64 = 64;

/// After `accept` fails for lack of file descriptors or memory, pause before
/// trying again rather than spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Once the grace period is over and connections were told to stop, how long
/// to wait for them to write their `421` and go.
const HARD_STOP_WAIT: Duration = Duration::from_secs(2);

/// A one-shot, many-waiter notification: `fire` wakes every `wait`, now and
/// later. Built on a closed semaphore, whose waiter list is intrusive (no
/// allocation per waiter) and cleaned up when a waiting future is dropped.
pub(crate) struct Trigger {
    fired: Cell<bool>,
    sem: Semaphore,
}

impl Trigger {
    fn new() -> Self {
        Self {
            fired: Cell::new(false),
            sem: Semaphore::new(0),
        }
    }

    /// Wakes every waiter; later waits return at once.
    pub(crate) fn fire(&self) {
        if !self.fired.replace(true) {
            self.sem.close();
        }
    }

    /// Whether [`Trigger::fire`] was called.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Returns once fired.
    pub(crate) async fn wait(&self) {
        if !self.fired.get() {
            // Nobody ever signals the semaphore: acquire returns only with
            // the error that `close` causes.
            let _ = self.sem.acquire(1).await;
        }
    }
}

/// Counters of one shard, logged when it stops.
#[derive(Default)]
pub(crate) struct Stats {
    /// Connections given a session.
    pub(crate) connections: Cell<u64>,
    /// Connections answered `421 4.3.2` over the limit.
    pub(crate) rejected: Cell<u64>,
    /// Messages acknowledged with `250`.
    pub(crate) messages: Cell<u64>,
    /// Body bytes of those messages.
    pub(crate) message_bytes: Cell<u64>,
    /// Failed `accept` calls (out of descriptors, aborted handshakes).
    pub(crate) accept_errors: Cell<u64>,
    /// RCPT commands by outcome, added as each session ends.
    pub(crate) rcpt: Cell<RcptCounts>,
}

impl Stats {
    /// Adds `n` to counter `c`.
    pub(crate) fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
}

/// The per-core state every connection task of the shard shares.
pub(crate) struct Shard {
    /// Shard number (0-based), in logs and queue ids.
    pub(crate) id: u32,
    /// Network knobs.
    pub(crate) server: ServerConfig,
    /// What each session needs, as of the last SIGHUP (see `reload`).
    pub(crate) live: ShardLive,
    /// Where accepted messages go.
    pub(crate) spool: Rc<store::ShardSpool>,
    /// Set by the reclaimer thread while the spool is over a backpressure
    /// mark: new transactions get `452 4.3.1` at MAIL.
    pub(crate) pressure: Arc<AtomicBool>,
    /// Who exists at RCPT time; read by every connection before its next
    /// commands, replaced by the signal thread on SIGHUP.
    pub(crate) recipients: Arc<SharedRecipients>,
    /// The LDAP and verify lookup threads (`None`: no domain needs them).
    pub(crate) lookups: Option<Arc<LookupPool>>,
    /// Answers of recent LDAP and verify lookups (smtp.recipient_cache_*).
    pub(crate) lookup_cache: RefCell<TtlCache>,
    /// Per-client limits and the greeting-wait pass cache, shared by
    /// every shard.
    pub(crate) anvil: Arc<Anvil>,
    /// TLS, shared by every shard (`None`: no certificate configured).
    pub(crate) tls: Option<Arc<Acceptor>>,
    /// Users and failed-AUTH counts (`None`: no submission listener).
    pub(crate) auth: Option<Arc<AuthService>>,
    /// `tls.only`: MAIL before STARTTLS is refused on plain listeners.
    pub(crate) tls_only: bool,
    /// One permit per open connection: the per-shard connection limit.
    permits: Rc<Semaphore>,
    /// One permit per connection being turned away: [`MAX_REJECTING`].
    rejecting: Rc<Semaphore>,
    /// Connection tasks alive (served or being rejected).
    active: Cell<usize>,
    /// Fired at the first signal: stop accepting; idle sessions get `421`.
    pub(crate) shutdown: Trigger,
    /// Fired when the grace period is over: every session gets `421` now.
    pub(crate) hard_stop: Trigger,
    /// Fired when `active` drops to zero after shutdown.
    drained: Trigger,
    pub(crate) stats: Stats,
    /// The shard's Prometheus instruments (written here, read by the scrape).
    pub(crate) metrics: Arc<ShardMetrics>,
}

/// Keeps [`Shard::active`] up to date; held by every connection task.
pub(crate) struct ActiveGuard(Rc<Shard>);

impl ActiveGuard {
    fn new(shard: &Rc<Shard>) -> Self {
        shard.active.set(shard.active.get() + 1);
        ActiveGuard(Rc::clone(shard))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.active.set(s.active.get() - 1);
        if s.active.get() == 0 && s.shutdown.is_fired() {
            s.drained.fire();
        }
    }
}

/// Everything a shard thread needs; built on the main thread.
pub(crate) struct ShardStart {
    pub(crate) id: u32,
    pub(crate) cpu: usize,
    pub(crate) config: Config,
    /// The settings a SIGHUP can change.
    pub(crate) live: Arc<Live>,
    /// The recipient map every shard shares (swapped on SIGHUP).
    pub(crate) recipients: Arc<SharedRecipients>,
    /// The LDAP and verify lookup threads, if a domain has those policies.
    pub(crate) lookups: Option<Arc<LookupPool>>,
    /// Bound and listening, one per listen address: `server.listen`, then
    /// `tls.listen` (implicit TLS) from index `implicit_tls_from` on.
    pub(crate) sockets: Vec<socket2::Socket>,
    pub(crate) implicit_tls_from: usize,
    /// `server.listen_proxy` (a PROXY header first) from index
    /// `proxy_from` up to `implicit_tls_from`.
    pub(crate) proxy_from: usize,
    /// TLS, if a certificate is configured.
    pub(crate) tls: Option<Arc<Acceptor>>,
    /// Which listeners are submission ones (after all the others).
    pub(crate) submission: Roles,
    /// Users and failed-AUTH counts, if submission is configured.
    pub(crate) auth: Option<Arc<AuthService>>,
    /// Readable (a byte, or EOF) when the process is told to stop.
    pub(crate) stop: OwnedFd,
    /// Start-up result, so the main thread can report it in one line.
    pub(crate) ready: Ready,
    /// Where the spool publishes its in-flight pin for the reclaimer.
    pub(crate) pin: Arc<AtomicU64>,
    /// The reclaimer's backpressure flag.
    pub(crate) pressure: Arc<AtomicBool>,
    /// Per-client limits, shared by every shard.
    pub(crate) anvil: Arc<Anvil>,
    /// This shard's instruments, also held by the metrics scrape.
    pub(crate) metrics: Arc<ShardMetrics>,
}

/// What a shard reports to the main thread at start: `Ok`, `Err(Some(why))`,
/// or `Err(None)` when the executor never ran the shard (the reason is then
/// in the executor's join result).
pub(crate) type ReadyMsg = (u32, Result<(), Option<String>>);

/// Reports a shard's start exactly once: explicitly, or with `Err(None)` when
/// dropped unreported (the executor failed before running the shard, or the
/// shard panicked), so the main thread never waits forever.
pub(crate) struct Ready {
    id: u32,
    tx: Option<mpsc::Sender<ReadyMsg>>,
}

impl Ready {
    pub(crate) fn new(id: u32, tx: mpsc::Sender<ReadyMsg>) -> Self {
        Self { id, tx: Some(tx) }
    }

    fn report(&mut self, r: Result<(), String>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.id, r.map_err(Some)));
        }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.id, Err(None)));
        }
    }
}

/// What a shard did, for the exit summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardSummary {
    /// Connections served.
    pub connections: u64,
    /// Connections answered `421` over the limit.
    pub rejected: u64,
    /// Messages accepted.
    pub messages: u64,
    /// Connections still open when the shard stopped (cut off).
    pub cut_off: usize,
}

/// The shard's main future: start, serve until told to stop, shut down.
pub(crate) async fn run(start: ShardStart) -> ShardSummary {
    let ShardStart {
        id,
        cpu,
        config,
        live,
        recipients,
        lookups,
        sockets,
        implicit_tls_from,
        proxy_from,
        tls,
        submission,
        auth,
        stop,
        mut ready,
        pin,
        pressure,
        anvil,
        metrics,
    } = start;
    // From here on this thread never waits for stderr (see crate::log).
    crate::log::queue_this_thread();
    let spool = match store::ShardSpool::open(&config.spool.dir, id, &config.spool).await {
        Ok(s) => s,
        Err(e) => {
            ready.report(Err(e.to_string()));
            return ShardSummary::default();
        }
    };
    spool.publish_pins_to(pin);
    spool.publish_sync_metrics_to(metrics.sync_metrics());
    let listeners: Vec<TcpListener> = sockets
        .into_iter()
        // SAFETY: each fd is a bound, listening TCP socket that we own and
        // give away here; nothing else closes or uses it afterwards.
        .map(|s| unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) })
        .collect();
    // SAFETY: `stop` is one end of a Unix socket pair, owned and given away.
    let stop = unsafe { UnixStream::from_raw_fd(stop.into_raw_fd()) };
    let max = config.server.max_connections_per_shard as u64;
    let shard = Rc::new(Shard {
        id,
        server: config.server.clone(),
        live: ShardLive::new(live),
        spool,
        pressure,
        recipients,
        lookups,
        lookup_cache: RefCell::new(TtlCache::new(config.smtp.recipient_cache_entries)),
        anvil,
        tls,
        auth,
        tls_only: config.tls.only,
        permits: Rc::new(Semaphore::new(max)),
        rejecting: Rc::new(Semaphore::new(MAX_REJECTING)),
        active: Cell::new(0),
        shutdown: Trigger::new(),
        hard_stop: Trigger::new(),
        drained: Trigger::new(),
        stats: Stats::default(),
        metrics,
    });
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let kind = Listener {
                implicit_tls: (implicit_tls_from..submission.from).contains(&i)
                    || i >= submission.tls_from,
                proxy: (proxy_from..implicit_tls_from).contains(&i),
                submission: i >= submission.from,
            };
            glommio::spawn_local(accept_loop(Rc::clone(&shard), l, kind))
        })
        .collect();
    crate::debug!("shard {id} running on CPU {cpu}");
    ready.report(Ok(()));

    // Wait for the stop byte (EOF counts too: the main thread is gone).
    let mut stop = stop;
    let _ = stop.read(&mut [0u8; 1]).await;
    shutdown(&shard, accept_loops).await
}

async fn shutdown(shard: &Rc<Shard>, accept_loops: Vec<glommio::Task<()>>) -> ShardSummary {
    let id = shard.id;
    shard.shutdown.fire();
    // Stop accepting: the loops return and drop their listeners.
    for l in accept_loops {
        l.await;
    }
    let grace = shard.server.shutdown_grace;
    crate::debug!(
        "shard {id}: stopped accepting; {} connections finishing (grace {grace:?})",
        shard.active.get()
    );
    if shard.active.get() > 0 {
        future::or(shard.drained.wait(), sleep(grace)).await;
    }
    let mut cut_off = 0;
    if shard.active.get() > 0 {
        cut_off = shard.active.get();
        crate::warn!(
            "shard {id}: grace period ({grace:?}) over; cutting off {cut_off} connections"
        );
        shard.hard_stop.fire();
        future::or(shard.drained.wait(), sleep(HARD_STOP_WAIT)).await;
    }
    // Commits in flight finish; the store syncs and releases its files.
    if let Err(e) = shard.spool.close().await {
        crate::error!("shard {id}: closing the store: {e}");
    }
    crate::log::flush_thread();
    let st = &shard.stats;
    let sp = shard.spool.stats();
    let rc = st.rcpt.get();
    // Always written, whatever the level: the shard's totals and the
    // spool's group-commit batching are what an operator checks after a run.
    crate::log::write(
        crate::log::Level::Info,
        format_args!(
            "shard {id} stopped: connections={} rejected={} messages={} message_bytes={} \
         accept_errors={} cut_off={cut_off} rcpt_accepted={} rcpt_unknown={} \
         rcpt_relay_denied={} rcpt_over_limit={} rcpt_lookup_failed={} spool_records={} fdatasyncs={} \
         commits_per_fdatasync={:.2}",
            st.connections.get(),
            st.rejected.get(),
            st.messages.get(),
            st.message_bytes.get(),
            st.accept_errors.get(),
            rc.accepted,
            rc.unknown,
            rc.relay_denied,
            rc.over_limit,
            rc.lookup_failed,
            sp.records,
            sp.fdatasyncs,
            sp.commits_per_fdatasync(),
        ),
    );
    ShardSummary {
        connections: st.connections.get(),
        rejected: st.rejected.get(),
        messages: st.messages.get(),
        cut_off,
    }
}

enum Slot {
    Permit(StaticPermit),
    /// Over the limit: the connection is turned away, holding this.
    Full(StaticPermit),
    Shutdown,
}

/// What a listener's connections start with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listener {
    /// A TLS handshake (`tls.listen`).
    pub(crate) implicit_tls: bool,
    /// A PROXY header (`server.listen_proxy`; `server.proxy_protocol`
    /// makes every listener expect one).
    pub(crate) proxy: bool,
    /// The submission role (`submission.listen`, `submission.listen_tls`):
    /// STARTTLS and AUTH before MAIL, then mail to any domain.
    pub(crate) submission: bool,
}

/// Accepts on one listener until shutdown. A slot is taken before `accept`:
/// a connection permit, or when the shard is full a permit to turn the
/// connection away with `421 4.3.2` at once (RFC 5321 §3.8; a client over
/// the limit should not sit silent until its greeting timeout). Only when
/// [`MAX_REJECTING`] are being turned away do new connections wait in the
/// kernel queue.
async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, kind: Listener) {
    let implicit_tls = kind.implicit_tls;
    loop {
        let slot = match shard.permits.try_acquire_static_permit(1) {
            Ok(p) => Slot::Permit(p),
            // A freed connection slot wins over turning the client away.
            Err(_) => {
                future::or(
                    async {
                        match shard.permits.acquire_static_permit(1).await {
                            Ok(p) => Slot::Permit(p),
                            Err(_) => Slot::Shutdown,
                        }
                    },
                    future::or(
                        async {
                            match shard.rejecting.acquire_static_permit(1).await {
                                Ok(p) => Slot::Full(p),
                                Err(_) => Slot::Shutdown,
                            }
                        },
                        async {
                            shard.shutdown.wait().await;
                            Slot::Shutdown
                        },
                    ),
                )
                .await
            }
        };
        if matches!(slot, Slot::Shutdown) {
            return;
        }
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                Stats::add(&shard.stats.accept_errors, 1);
                shard
                    .metrics
                    .connections_rejected
                    .inc(ConnRejected::AcceptError);
                let e = std::io::Error::from(e);
                crate::warn!("shard {}: accept failed: {e}", shard.id);
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        let guard = ActiveGuard::new(&shard);
        match slot {
            Slot::Permit(permit) => {
                Stats::add(&shard.stats.connections, 1);
                shard.metrics.connections_accepted.inc();
                glommio::spawn_local(conn::serve(Rc::clone(&shard), stream, permit, guard, kind))
                    .detach();
            }
            Slot::Full(permit) => {
                Stats::add(&shard.stats.rejected, 1);
                shard
                    .metrics
                    .connections_rejected
                    .inc(ConnRejected::TooMany);
                glommio::spawn_local(conn::reject(
                    Rc::clone(&shard),
                    stream,
                    permit,
                    guard,
                    implicit_tls,
                ))
                .detach();
            }
            Slot::Shutdown => unreachable!("returned above"),
        }
    }
}
