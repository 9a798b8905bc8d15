//! Failed AUTH attempts per client (an IPv4 address or an IPv6 /64),
//! shared by every shard: a small lock-free table of `AtomicU64` words, as
//! the anvil's greeting-pass cache (`server::anvil`), so counting costs a
//! hash and a compare-and-swap.
//!
//! A word is `tag (24 bits) | window end, seconds since start (32) | count
//! (8)`. The window opens at a client's first failure and lasts
//! `submission.auth_failure_window`; at `submission.auth_max_failures`
//! failures within it the client is blocked until it ends. A full table
//! takes over the oldest window among a key's probes: an attacker with many
//! addresses can push an entry out, but each address still gets at most the
//! limit per window while it is in the table.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries in the table: 32 KiB, room for thousands of guessing addresses.
const ENTRIES: usize = 4096;
/// Slots looked at per address.
const PROBES: usize = 4;
/// The most the 32-bit window end can count (136 years of uptime).
const MAX_SECS: u32 = u32::MAX;

/// The per-address failure counts; see the module docs.
#[derive(Debug)]
pub struct AuthFailures {
    words: Box<[AtomicU64]>,
    max: u32,
    window_secs: u32,
    hasher: RandomState,
    epoch: Instant,
}

impl AuthFailures {
    /// A table allowing `max` failures (1..=255 counted; more is 255)
    /// per `window`.
    pub fn new(max: u32, window: Duration) -> AuthFailures {
        AuthFailures {
            words: (0..ENTRIES).map(|_| AtomicU64::new(0)).collect(),
            max: max.clamp(1, 255),
            window_secs: window.as_secs().clamp(1, u64::from(MAX_SECS)) as u32,
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    fn secs(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_secs()).min(u64::from(MAX_SECS)) as u32
    }

    /// The client: an IPv4 address, or the /64 of an IPv6 one (one
    /// subscriber's usual allocation, as the anvil keys clients).
    fn key(&self, ip: IpAddr) -> (u32, usize) {
        let k: (u8, u64) = match ip.to_canonical() {
            IpAddr::V4(a) => (4, u64::from(u32::from(a))),
            IpAddr::V6(a) => (6, (u128::from(a) >> 64) as u64),
        };
        let h = self.hasher.hash_one(k);
        // 24 bits of tag, never 0 (an unused word).
        ((h >> 40) as u32 | 1, h as usize)
    }

    /// Whether `ip` is blocked at `now`: the limit reached within a window
    /// that has not ended.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let (tag, base) = self.key(ip);
        let now_s = self.secs(now);
        (0..PROBES).any(|i| {
            let w = self.words[(base + i) % ENTRIES].load(Ordering::Relaxed);
            let (t, end, count) = split(w);
            t == tag && end > now_s && count >= self.max
        })
    }

    /// Counts one failure of `ip` at `now`; returns true if it is blocked
    /// now (this failure reached the limit, or it already had).
    pub fn fail(&self, ip: IpAddr, now: Instant) -> bool {
        let (tag, base) = self.key(ip);
        let now_s = self.secs(now);
        loop {
            // Its own slot, else a free or expired one, else the one whose
            // window ends first.
            let mut pick = None;
            for i in 0..PROBES {
                let idx = (base + i) % ENTRIES;
                let w = self.words[idx].load(Ordering::Relaxed);
                let (t, end, _) = split(w);
                if t == tag {
                    pick = Some((idx, w, true));
                    break;
                }
                let better = match pick {
                    None => true,
                    Some((_, pw, _)) => end < split(pw).1,
                };
                if better {
                    pick = Some((idx, w, false));
                }
            }
            // PROBES > 0: something was picked.
            let Some((idx, old, own)) = pick else {
                return false;
            };
            let (_, end, count) = split(old);
            let (end, count) = if own && end > now_s {
                (end, count.saturating_add(1).min(255))
            } else {
                (now_s.saturating_add(self.window_secs), 1)
            };
            let new = (u64::from(tag) << 40) | (u64::from(end) << 8) | u64::from(count);
            if self.words[idx]
                .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return count >= self.max;
            }
        }
    }
}

fn split(w: u64) -> (u32, u32, u32) {
    ((w >> 40) as u32, (w >> 8) as u32, (w & 0xff) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_at_the_limit_within_the_window_and_forgets_after() {
        let f = AuthFailures::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(!f.blocked(a, t0));
        assert!(!f.fail(a, t0));
        assert!(!f.fail(a, t0 + Duration::from_secs(10)));
        assert!(!f.blocked(a, t0 + Duration::from_secs(10)));
        assert!(f.fail(a, t0 + Duration::from_secs(20)));
        assert!(f.blocked(a, t0 + Duration::from_secs(59)));
        // Another address is not touched.
        assert!(!f.blocked(ip("192.0.2.2"), t0));
        assert!(!f.blocked(ip("2001:db8::1"), t0));
        // The window (from the first failure) is over: counting starts again.
        let later = t0 + Duration::from_secs(61);
        assert!(!f.blocked(a, later));
        assert!(!f.fail(a, later));
        assert!(!f.blocked(a, later));
    }

    /// One subscriber gets a whole IPv6 /64 (as the anvil keys clients):
    /// counting each address alone would give it 2^64 times the limit.
    #[test]
    fn an_ipv6_64_counts_as_one_client() {
        let f = AuthFailures::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!f.fail(ip("2001:db8:1:2::1"), t0));
        assert!(f.fail(ip("2001:db8:1:2:ffff::9"), t0));
        assert!(f.blocked(ip("2001:db8:1:2::77"), t0));
        // The next /64 is someone else.
        assert!(!f.blocked(ip("2001:db8:1:3::1"), t0));
        // An IPv4 client seen on a dual-stack listener is the same client.
        assert!(!f.fail(ip("192.0.2.9"), t0));
        assert!(f.fail(ip("::ffff:192.0.2.9"), t0));
        assert!(f.blocked(ip("192.0.2.9"), t0));
    }

    /// A server up for longer than the old 24-bit window end (194 days)
    /// still blocks, and still forgets.
    #[test]
    fn the_limit_still_works_after_months_of_uptime() {
        let f = AuthFailures::new(2, Duration::from_secs(60));
        let t = Instant::now() + Duration::from_secs(200 * 86_400);
        let a = ip("192.0.2.1");
        assert!(!f.fail(a, t));
        assert!(f.fail(a, t + Duration::from_secs(1)));
        assert!(f.blocked(a, t + Duration::from_secs(2)));
        assert!(!f.blocked(a, t + Duration::from_secs(61)));
    }

    #[test]
    fn a_full_table_still_counts_each_address() {
        let f = AuthFailures::new(2, Duration::from_secs(600));
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            f.fail(a, t0);
        }
        let a = ip("198.51.100.7");
        assert!(!f.fail(a, t0));
        assert!(f.fail(a, t0));
        assert!(f.blocked(a, t0));
    }
}
