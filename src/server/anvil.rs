//! Per-client limits across all shards (Postfix's anvil) and the pass cache
//! of the greeting wait: the only state the shards share about clients.
//!
//! Owns: one fixed-size table of atomic counters per client key (the IPv4
//! address, or the /64 of an IPv6 one), read and written by every shard
//! without a lock: open connections, and new connections, MAIL commands and
//! accepted RCPTs per minute; the exemption of `server.trusted_network`; the
//! counts of what was refused, per reason ([`AnvilStats`]). And a second,
//! smaller table: the clients that waited for the greeting
//! (`server.greet_wait`) and until when they may skip it.
//! Leaves to `super::conn`: the replies (`421 4.7.0` for a connection,
//! `452 4.7.1` through the session for MAIL and RCPT) and the closing; to
//! `super::pregreet`: the greeting wait itself.
//!
//! # The table
//!
//! `server.client_table_entries` slots (a power of two) of 32 bytes: a head
//! word, the client key's 40-bit hash and its open connections (24 bits),
//! and per rate a word with the start of its one-minute window (seconds)
//! and the count in it (Postfix's anvil also counts in fixed windows of
//! its time unit). A client's slot is one of `PROBES` neighbours of its
//! hash (linear probing). Every change is one compare-and-swap on one
//! word, so a shard never waits for another beyond a retried CAS.
//!
//! No sweeper: a slot is free again once it holds no connection and all its
//! windows are over a minute old, and the next new client whose probes pass
//! it takes it over with one CAS on the head word (which fails if a
//! connection of the old client arrived meanwhile). Memory is the table,
//! fixed at start. A new client that finds all its probes held by live
//! clients is let through unlimited and counted in
//! [`AnvilStats::table_full`]: failing open keeps a full table from refusing
//! legitimate mail, and the count says when to raise the setting.
//!
//! Rate words change only while their client holds a connection in the
//! slot, so a slot cannot change hands under a connection that uses it.
//! Two first connections of one client at the same instant on two shards
//! race for the same free slot; the loser retries and finds the winner's.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use crate::config::ServerConfig;

/// Slots a client key may sit in, from its hash on: 16 slots of 32 bytes
/// are eight cache lines, read once per new connection.
pub(crate) const PROBES: usize = 16;

/// The window of the per-minute rates, seconds.
const WINDOW_SECS: u32 = 60;

/// The low bits of a head word count the client's open connections.
const CONN_BITS: u32 = 24;
const CONN_MASK: u64 = (1 << CONN_BITS) - 1;

/// Slots of the pass cache a client key may sit in.
const PASS_PROBES: usize = 8;

/// Bytes per client of both tables (limits and pass cache), for the docs and
/// the memory bound.
pub const BYTES_PER_CLIENT: usize = std::mem::size_of::<Slot>() + 8;

/// The per-minute rates a slot counts.
#[derive(Debug, Clone, Copy)]
enum Rate {
    Connection = 0,
    Message = 1,
    Recipient = 2,
}

/// One client's counters; see the module docs.
#[repr(align(32))]
#[derive(Default)]
struct Slot {
    /// Key hash (upper 40 bits, never 0) | open connections (lower 24).
    /// 0: never used.
    head: AtomicU64,
    /// Per [`Rate`]: window start in seconds since the table's epoch (upper
    /// 32 bits, at least 1) | count in that window (lower 32). 0: never.
    rates: [AtomicU64; 3],
}

/// Why a new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// server.max_connections_per_ip are open.
    TooManyConnections,
    /// server.max_connection_rate_per_ip this minute.
    ConnectionRate,
}

impl Refused {
    /// For the connection's log line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::TooManyConnections => "too-many-connections-per-ip",
            Refused::ConnectionRate => "connection-rate-per-ip",
        }
    }
}

/// What the per-client checks refused, since start, over all shards.
/// Relaxed atomics: each is written only when something is refused (or a
/// client passes the greeting wait), so they cost the hot path nothing.
/// For the logs now, and for the metrics endpoint.
#[derive(Debug, Default)]
pub struct AnvilStats {
    /// Connections refused over server.max_connections_per_ip.
    pub connections_over_limit: AtomicU64,
    /// Connections refused over server.max_connection_rate_per_ip.
    pub connection_rate: AtomicU64,
    /// MAIL commands refused over server.max_message_rate_per_ip.
    pub message_rate: AtomicU64,
    /// RCPT commands refused over server.max_recipient_rate_per_ip.
    pub recipient_rate: AtomicU64,
    /// New clients let through unlimited: every probe held by a live client.
    pub table_full: AtomicU64,
    /// Clients that talked before the greeting (server.greet_wait) and
    /// were closed with `521`: with an HTTP request...
    pub pregreet_http: AtomicU64,
    /// ... with a line ended by a bare LF ...
    pub pregreet_bare_lf: AtomicU64,
    /// ... with anything else.
    pub pregreet_other: AtomicU64,
    /// Clients that waited for the greeting (and were remembered).
    pub greet_passed: AtomicU64,
    /// Connections that skipped the wait: their client passed it lately.
    pub greet_cached: AtomicU64,
}

impl AnvilStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, named, for a log line.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "over_conn_limit={} over_conn_rate={} over_msg_rate={} over_rcpt_rate={} \
             table_full={} pregreet_http={} pregreet_bare_lf={} pregreet_other={} \
             greet_passed={} greet_cached={}",
            g(&self.connections_over_limit),
            g(&self.connection_rate),
            g(&self.message_rate),
            g(&self.recipient_rate),
            g(&self.table_full),
            g(&self.pregreet_http),
            g(&self.pregreet_bare_lf),
            g(&self.pregreet_other),
            g(&self.greet_passed),
            g(&self.greet_cached),
        )
    }
}

/// The limits, from the settings; 0: off.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: u32,
    rates: [u32; 3],
}

/// The per-client state every shard shares; see the module docs.
pub struct Anvil {
    slots: Box<[Slot]>,
    /// Pass cache: key hash (upper 32 bits) | pass expiry in seconds since
    /// `epoch` (lower 32); 0: empty.
    passed: Box<[AtomicU64]>,
    mask: usize,
    limits: Limits,
    /// Some limit is on: otherwise the table is never touched.
    limiting: bool,
    trusted: Vec<IpNet>,
    pass_ttl_secs: u32,
    /// Seeded per process: a client cannot aim its addresses at one
    /// cluster of slots.
    hasher: RandomState,
    epoch: Instant,
    /// What was refused, per reason.
    pub stats: AnvilStats,
}

impl std::fmt::Debug for Anvil {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anvil")
            .field("slots", &self.slots.len())
            .field("limits", &self.limits)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl Anvil {
    /// The tables for `cfg`, all zero (pages the kernel maps on first use).
    pub fn new(cfg: &ServerConfig) -> Self {
        // Config::validate bounds it by MAX_CLIENT_TABLE_ENTRIES.
        let n = cfg.client_table_entries.max(PROBES).next_power_of_two();
        let limits = Limits {
            connections: cfg.max_connections_per_ip,
            rates: [
                cfg.max_connection_rate_per_ip,
                cfg.max_message_rate_per_ip,
                cfg.max_recipient_rate_per_ip,
            ],
        };
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            passed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
            limiting: limits.connections > 0 || limits.rates.iter().any(|&r| r > 0),
            limits,
            trusted: cfg.trusted_network.clone(),
            pass_ttl_secs: u32::try_from(cfg.greet_pass_ttl.as_secs()).unwrap_or(u32::MAX),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            stats: AnvilStats::default(),
        }
    }

    /// `ip` is in server.trusted_network: no limits, no greeting wait.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// A new connection from `ip` at `now`: counted, or refused over
    /// server.max_connections_per_ip or server.max_connection_rate_per_ip.
    /// The ticket holds the connection's place until dropped.
    ///
    /// # Errors
    /// Why the connection is refused; nothing is counted then.
    pub(crate) fn connect(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refused> {
        let mut ticket = Ticket {
            anvil: Arc::clone(self),
            slot: None,
        };
        if !self.limiting || self.is_trusted(ip) {
            return Ok(ticket);
        }
        let hash = self.hash(ip);
        let key = hash << CONN_BITS;
        let now_s = self.secs(now);
        let base = hash as usize;
        // Retried only when a CAS lost to a change of the same slot.
        for _ in 0..8 {
            let mut free = None;
            let mut found = None;
            for i in 0..PROBES {
                let idx = (base + i) & self.mask;
                let head = self.slots[idx].head.load(Ordering::Acquire);
                if head & !CONN_MASK == key {
                    found = Some((idx, head));
                    break;
                }
                if free.is_none() && self.reusable(&self.slots[idx], head, now_s) {
                    free = Some((idx, head));
                }
            }
            let (idx, head, new) = match (found, free) {
                (Some((idx, head)), _) => {
                    let open = head & CONN_MASK;
                    if open == CONN_MASK
                        || (self.limits.connections > 0
                            && open >= u64::from(self.limits.connections))
                    {
                        AnvilStats::bump(&self.stats.connections_over_limit);
                        return Err(Refused::TooManyConnections);
                    }
                    (idx, head, head + 1)
                }
                (None, Some((idx, head))) => (idx, head, key | 1),
                (None, None) => {
                    AnvilStats::bump(&self.stats.table_full);
                    return Ok(ticket);
                }
            };
            let slot = &self.slots[idx];
            if slot
                .head
                .compare_exchange(head, new, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            ticket.slot = Some(idx);
            if !self.take(slot, Rate::Connection, now_s) {
                AnvilStats::bump(&self.stats.connection_rate);
                // Dropping the ticket gives the connection back.
                return Err(Refused::ConnectionRate);
            }
            return Ok(ticket);
        }
        // Eight lost CAS rounds in a row: a storm on this very slot; let it
        // through rather than spin.
        AnvilStats::bump(&self.stats.table_full);
        Ok(ticket)
    }

    /// A free slot: never used, or no connection and every window over.
    fn reusable(&self, slot: &Slot, head: u64, now_s: u32) -> bool {
        head == 0
            || (head & CONN_MASK == 0
                && slot
                    .rates
                    .iter()
                    .all(|r| Self::window_over(r.load(Ordering::Relaxed), now_s)))
    }

    fn window_over(word: u64, now_s: u32) -> bool {
        let start = (word >> 32) as u32;
        word == 0 || now_s.saturating_sub(start) >= WINDOW_SECS
    }

    /// Counts one event of `rate` in the slot's window; false (nothing
    /// counted) if the window already holds the limit.
    fn take(&self, slot: &Slot, rate: Rate, now_s: u32) -> bool {
        let limit = self.limits.rates[rate as usize];
        if limit == 0 {
            return true;
        }
        let word = &slot.rates[rate as usize];
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let next = if Self::window_over(cur, now_s) {
                (u64::from(now_s) << 32) | 1
            } else if (cur as u32) >= limit {
                return false;
            } else {
                cur + 1
            };
            match word.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Seconds since the table's epoch, from 1 (0 marks an unused word).
    fn secs(&self, now: Instant) -> u32 {
        let s = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(s).unwrap_or(u32::MAX - 1) + 1
    }

    /// The client key's 40-bit hash, never 0: the IPv4 address, or the /64
    /// of an IPv6 one (one subscriber's usual allocation).
    fn hash(&self, ip: IpAddr) -> u64 {
        let k: (u8, u64) = match ip.to_canonical() {
            IpAddr::V4(a) => (4, u64::from(u32::from(a))),
            IpAddr::V6(a) => (6, (u128::from(a) >> 64) as u64),
        };
        let h = self.hasher.hash_one(k) >> (64 - 40);
        h.max(1)
    }

    /// `ip` waited for the greeting less than server.greet_pass_ttl ago.
    pub fn greet_passed(&self, ip: IpAddr, now: Instant) -> bool {
        let (tag, base) = self.pass_key(ip);
        let now_s = self.secs(now);
        (0..PASS_PROBES).any(|i| {
            let w = self.passed[(base + i) & self.mask].load(Ordering::Relaxed);
            (w >> 32) as u32 == tag && (w as u32) > now_s
        })
    }

    /// Remembers that `ip` waited for the greeting, for server.greet_pass_ttl:
    /// in its own entry, else an empty or expired one, else the first
    /// probe's (a cache: a client pushed out only waits again).
    pub fn greet_pass(&self, ip: IpAddr, now: Instant) {
        let (tag, base) = self.pass_key(ip);
        let now_s = self.secs(now);
        let until = now_s.saturating_add(self.pass_ttl_secs);
        let word = (u64::from(tag) << 32) | u64::from(until);
        let mut target = base & self.mask;
        let mut have_free = false;
        for i in 0..PASS_PROBES {
            let idx = (base + i) & self.mask;
            let w = self.passed[idx].load(Ordering::Relaxed);
            if (w >> 32) as u32 == tag {
                target = idx;
                break;
            }
            if !have_free && (w as u32) <= now_s {
                target = idx;
                have_free = true;
            }
        }
        self.passed[target].store(word, Ordering::Relaxed);
        AnvilStats::bump(&self.stats.greet_passed);
    }

    /// The pass cache's 32-bit tag (never 0) and first probe.
    fn pass_key(&self, ip: IpAddr) -> (u32, usize) {
        let h = self.hash(ip);
        ((h as u32).max(1), (h >> 8) as usize)
    }
}

/// One connection's place in its client's slot; dropping it gives the place
/// back. Also checks the client's message and recipient rates.
pub(crate) struct Ticket {
    anvil: Arc<Anvil>,
    /// `None`: not counted (trusted, no limit on, or the table was full).
    slot: Option<usize>,
}

impl Ticket {
    /// One more MAIL from this client at `now`, if under
    /// server.max_message_rate_per_ip.
    pub(crate) fn message(&self, now: Instant) -> bool {
        self.rate(Rate::Message, now, &self.anvil.stats.message_rate)
    }

    /// One more accepted RCPT from this client at `now`, if under
    /// server.max_recipient_rate_per_ip.
    pub(crate) fn recipient(&self, now: Instant) -> bool {
        self.rate(Rate::Recipient, now, &self.anvil.stats.recipient_rate)
    }

    /// Whether the message or recipient rates are limited for this client
    /// (else the session need not ask).
    pub(crate) fn limits_rates(&self) -> bool {
        let r = &self.anvil.limits.rates;
        self.slot.is_some() && (r[Rate::Message as usize] > 0 || r[Rate::Recipient as usize] > 0)
    }

    fn rate(&self, rate: Rate, now: Instant, refused: &AtomicU64) -> bool {
        let Some(idx) = self.slot else { return true };
        let a = &self.anvil;
        let ok = a.take(&a.slots[idx], rate, a.secs(now));
        if !ok {
            AnvilStats::bump(refused);
        }
        ok
    }
}

impl crate::protocol::rates::ClientRates for Ticket {
    fn admit_message(&self, now: Instant) -> bool {
        self.message(now)
    }

    fn admit_recipient(&self, now: Instant) -> bool {
        self.recipient(now)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(idx) = self.slot {
            // This ticket's own connection is counted there: no underflow.
            self.anvil.slots[idx].head.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("slot", &self.slot).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn anvil(f: impl FnOnce(&mut ServerConfig)) -> Arc<Anvil> {
        let mut c = ServerConfig::default();
        f(&mut c);
        Arc::new(Anvil::new(&c))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_ip_are_limited_and_given_back() {
        let a = anvil(|c| c.max_connections_per_ip = 3);
        let now = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| a.connect(ip("10.0.0.1"), now).unwrap())
            .collect();
        assert_eq!(
            a.connect(ip("10.0.0.1"), now).unwrap_err(),
            Refused::TooManyConnections
        );
        // Another client is not affected.
        assert!(a.connect(ip("10.0.0.2"), now).is_ok());
        drop(held);
        assert!(a.connect(ip("10.0.0.1"), now).is_ok());
        assert_eq!(a.stats.connections_over_limit.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let a = anvil(|c| c.max_connections_per_ip = 1);
        let now = Instant::now();
        let _t = a.connect(ip("2001:db8:1:2::1"), now).unwrap();
        assert!(a.connect(ip("2001:db8:1:2:ffff::9"), now).is_err());
        assert!(a.connect(ip("2001:db8:1:3::1"), now).is_ok());
        let _v4 = a.connect(ip("192.0.2.7"), now).unwrap();
        assert!(a.connect(ip("::ffff:192.0.2.7"), now).is_err());
    }

    #[test]
    fn rates_count_in_one_minute_windows() {
        let a = anvil(|c| {
            c.max_connections_per_ip = 0;
            c.max_connection_rate_per_ip = 2;
            c.max_message_rate_per_ip = 3;
        });
        let t0 = Instant::now();
        let t = a.connect(ip("10.0.0.1"), t0).unwrap();
        let _u = a.connect(ip("10.0.0.1"), t0).unwrap();
        assert_eq!(
            a.connect(ip("10.0.0.1"), t0).unwrap_err(),
            Refused::ConnectionRate
        );
        assert!((0..3).all(|_| t.message(t0)));
        assert!(!t.message(t0 + Duration::from_secs(59)));
        // A new window a minute after the first event.
        assert!(t.message(t0 + Duration::from_secs(61)));
        assert!(a
            .connect(ip("10.0.0.1"), t0 + Duration::from_secs(61))
            .is_ok());
        assert_eq!(a.stats.message_rate.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.connection_rate.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn trusted_networks_are_exempt() {
        let a = anvil(|c| {
            c.max_connections_per_ip = 1;
            c.trusted_network = vec!["127.0.0.0/8".parse().unwrap()];
        });
        let now = Instant::now();
        let _t = a.connect(ip("127.0.0.1"), now).unwrap();
        assert!(a.connect(ip("127.0.0.1"), now).is_ok());
        assert!(a.is_trusted(ip("::ffff:127.0.0.9")));
        let _u = a.connect(ip("10.0.0.1"), now).unwrap();
        assert!(a.connect(ip("10.0.0.1"), now).is_err());
    }

    #[test]
    fn a_full_table_reuses_idle_slots_and_otherwise_fails_open() {
        let a = anvil(|c| {
            c.max_connections_per_ip = 1;
            c.client_table_entries = PROBES;
        });
        let now = Instant::now();
        // Every slot held by a live client: the next new one is not limited.
        let held: Vec<_> = (0..PROBES as u32)
            .map(|i| a.connect(IpAddr::from(i.to_be_bytes()), now).unwrap())
            .collect();
        let extra = ip("10.9.9.9");
        let _x = a.connect(extra, now).unwrap();
        let _y = a.connect(extra, now).unwrap();
        assert_eq!(a.stats.table_full.load(Ordering::Relaxed), 2);
        // Once they are gone, their slots serve new clients, limited again.
        drop(held);
        let _z = a.connect(ip("10.8.8.8"), now).unwrap();
        assert!(a.connect(ip("10.8.8.8"), now).is_err());
    }

    #[test]
    fn a_slot_with_a_live_window_is_not_taken_over() {
        let a = anvil(|c| {
            c.max_connections_per_ip = 0;
            c.max_connection_rate_per_ip = 1;
            c.client_table_entries = PROBES;
        });
        let now = Instant::now();
        for i in 0..PROBES as u32 {
            drop(a.connect(IpAddr::from(i.to_be_bytes()), now).unwrap());
        }
        // All closed, but their windows still count: nobody reuses them.
        assert!(a.connect(ip("10.9.9.9"), now).is_ok());
        assert_eq!(a.stats.table_full.load(Ordering::Relaxed), 1);
        // Each old client still meets its own rate.
        assert!(a.connect(IpAddr::from(3u32.to_be_bytes()), now).is_err());
    }

    #[test]
    fn the_pass_cache_remembers_for_its_ttl() {
        let a = anvil(|c| c.greet_pass_ttl = Duration::from_secs(100));
        let t0 = Instant::now();
        assert!(!a.greet_passed(ip("10.0.0.1"), t0));
        a.greet_pass(ip("10.0.0.1"), t0);
        assert!(a.greet_passed(ip("10.0.0.1"), t0 + Duration::from_secs(50)));
        assert!(!a.greet_passed(ip("10.0.0.2"), t0));
        assert!(!a.greet_passed(ip("10.0.0.1"), t0 + Duration::from_secs(101)));
    }
}
