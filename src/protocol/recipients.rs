//! Who exists at RCPT time: the per-domain recipient policy and the static
//! recipient map (issue 17). Pure data: the map is parsed from bytes the
//! caller read (`server/recipients.rs` reads the file, shares the result
//! between the shards and swaps it on SIGHUP); the session asks
//! [`RecipientMap::lookup`] for each RCPT.
//!
//! # Policy per domain
//!
//! The map file decides it, so that one file (and one SIGHUP) changes the
//! addresses and the policy together:
//!
//! * a domain named by at least one `user@domain` line is [`Policy::Map`]:
//!   only listed recipients exist (and `postmaster`, RFC 5321 §4.5.1);
//! * an `@domain` line makes the domain [`Policy::CatchAll`] explicitly
//!   (even if users are listed for it too);
//! * an accepted domain the map does not name stays catch-all, as it was
//!   before maps existed. The server logs both lists at start and reload.
//!
//! The other policies, [`Policy::Ldap`] and [`Policy::Verify`], are lookups
//! that complete later, off the shard ([`Remote`]). Settings name their
//! domains (`smtp.recipient_ldap_domains`, `smtp.recipient_verify_domains`)
//! and win over the map file for them. The session answers such a RCPT with
//! an event ([`Event::Lookup`](super::session::Event::Lookup)) instead of a
//! reply; the runtime asks a lookup thread and hands the answer back as a
//! fact (`Session::handle_lookup`, `451 4.3.0` when it fails or times out).
//! The static map never needs that: it answers at once, on the shard.
//!
//! # File syntax
//!
//! One entry per line; blank lines and lines starting with `#` are skipped.
//!
//! ```text
//! # comment
//! alice@example.com            a recipient
//! bob@example.com: b@elsewhere an alias: bob exists (the target is checked, not kept)
//! @catchall.example            every local part exists at this domain
//! ```
//!
//! Aliases decide existence only: the spool keeps the envelope recipient as
//! the client sent it. ringmx is a durable log in front of the delivery
//! system, which owns its alias tables; rewriting here would store a
//! recipient the client never named (breaking DSNs and per-recipient
//! results downstream) and would make an alias to another domain a relay.
//!
//! Lookups fold an extension: `user+tag@d` matches `user+tag@d` if listed,
//! else `user@d` (Postfix's `recipient_delimiter`; every character of the
//! delimiter setting is one, empty disables it). Domains are compared
//! without ASCII case; local parts too unless `ignore_case` is off (RFC 5321
//! §2.4 lets a server treat them case-sensitively).
//!
//! # Representation
//!
//! Millions of entries must load in seconds and stay cheap: every address,
//! normalised, lives in one byte arena (`u16` length, then the bytes); an
//! open-addressing table indexes it, at most half full: one tag byte and
//! one `u32` arena offset per slot. About 26 bytes of arena plus 5 to 10
//! bytes of table per address, three allocations in all, built once and
//! shared read-only by every shard through an `Arc`. A lookup normalises the
//! address into a stack buffer: no allocation per RCPT.

use std::collections::HashMap;
use std::fmt;

use super::command::mailbox_domain;

/// The longest address a map entry or lookup can have: RFC 5321 §4.5.3.1
/// 64 + 1 + 255, as [`mailbox_domain`] bounds it.
const MAX_ADDRESS: usize = 64 + 1 + 255;

/// How a domain decides who exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every local part exists (ringmx's behaviour without a map).
    CatchAll,
    /// Only the listed recipients (and `postmaster`) exist.
    Map,
    /// Whoever the LDAP directory finds (and `postmaster`) exists.
    Ldap,
    /// Whoever the next hop accepts at `RCPT TO` (and `postmaster`) exists.
    Verify,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::CatchAll => "catch-all",
            Policy::Map => "map",
            Policy::Ldap => "ldap",
            Policy::Verify => "verify",
        })
    }
}

/// A policy answered off the shard, by a lookup thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remote {
    /// A search in `smtp.recipient_ldap`.
    Ldap,
    /// A callout to `smtp.recipient_verify_host`.
    Verify,
}

impl Remote {
    /// Its [`Policy`].
    pub fn policy(self) -> Policy {
        match self {
            Remote::Ldap => Policy::Ldap,
            Remote::Verify => Policy::Verify,
        }
    }
}

/// A remote lookup that gave no verdict: the server failed, answered a
/// temporary error, or took longer than `smtp.recipient_lookup_timeout`.
/// The recipient gets `451 4.3.0`, never `250`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupFailed;

/// A recipient lookup's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The recipient exists: `250`.
    Exists,
    /// Nobody by that name at a [`Policy::Map`] domain: `550 5.1.1`.
    Unknown,
}

/// How addresses are normalised, at load and at lookup alike (the map
/// keeps the options it was built with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOptions {
    /// Extension delimiters: each (ASCII) character is one (`+`; empty: none).
    pub delimiter: String,
    /// Compare local parts without ASCII case.
    pub ignore_case: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            delimiter: "+".into(),
            ignore_case: true,
        }
    }
}

/// A line of a map file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct MapError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to write instead.
    pub reason: String,
}

/// The recipients of the map domains, and each named domain's policy; see
/// the module docs.
pub struct RecipientMap {
    /// Every listed address, normalised: `u16` length (LE), then the bytes.
    keys: Box<[u8]>,
    /// Open addressing, linear probing, a power of two long and at most half
    /// full, in two arrays (as hashbrown does): a byte per slot, 0 for
    /// empty, else 0x80 | 7 bits of the hash, and the arena offset of the
    /// slot's key. A lookup for an absent address mostly touches only the
    /// tags (2 MiB for a million addresses: cache-resident, where a table
    /// of full slots would cost a memory miss per RCPT).
    tags: Box<[u8]>,
    offsets: Box<[u32]>,
    /// Lower-case domain -> policy, for the domains the file names.
    domains: HashMap<Box<[u8]>, Policy>,
    /// Distinct addresses in `keys`.
    addresses: usize,
    options: MapOptions,
}

impl fmt::Debug for RecipientMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientMap")
            .field("addresses", &self.addresses)
            .field("domains", &self.domains.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RecipientMap {
    /// Parses a map file's bytes (see the module docs for the syntax).
    ///
    /// # Errors
    /// The first line that is not valid UTF-8, not an address, `@domain`
    /// or `address: target`, or whose alias target is empty; or a file
    /// past 4 GiB of addresses.
    ///
    /// # Example
    /// ```
    /// use ringmx::protocol::recipients::{Lookup, MapOptions, RecipientMap};
    /// let m = RecipientMap::parse(b"alice@example.com\n", MapOptions::default()).unwrap();
    /// assert_eq!(m.lookup("Alice+news@example.com", "example.com"), Lookup::Exists);
    /// assert_eq!(m.lookup("bob@example.com", "example.com"), Lookup::Unknown);
    /// assert_eq!(m.lookup("bob@other.example", "other.example"), Lookup::Exists);
    /// ```
    pub fn parse(text: &[u8], options: MapOptions) -> Result<Self, MapError> {
        let mut keys = Vec::new();
        let mut count = 0usize;
        let mut domains: HashMap<Box<[u8]>, Policy> = HashMap::new();
        let mut buf = [0u8; MAX_ADDRESS];
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let err = |reason: String| MapError { line, reason };
            let s = std::str::from_utf8(raw)
                .map_err(|_| err("not UTF-8: write addresses as UTF-8 text".into()))?
                .trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            let key = match split_alias(s) {
                Some((k, target)) => {
                    if target.trim().is_empty() {
                        return Err(err(format!(
                            "alias {:?} has no target: write `{}: target@domain`, or drop \
                             the colon",
                            k.trim(),
                            k.trim()
                        )));
                    }
                    k.trim()
                }
                None => s,
            };
            if let Some(d) = key.strip_prefix('@') {
                if mailbox_domain(&format!("x@{d}")).is_none() {
                    return Err(err(format!(
                        "{key:?} is not @domain: write @example.com for a catch-all domain"
                    )));
                }
                domains.insert(d.to_ascii_lowercase().into_bytes().into(), Policy::CatchAll);
                continue;
            }
            let Some(domain) = mailbox_domain(key) else {
                return Err(err(format!(
                    "{key:?} is not an address: write user@example.com, \
                     user@example.com: target, or @example.com (comments start with #)"
                )));
            };
            let local = &key[..key.len() - domain.len() - 1];
            let Some(norm) = normalize(local, domain, options.ignore_case, &mut buf) else {
                return Err(err(format!("{key:?} is longer than {MAX_ADDRESS} bytes")));
            };
            if u32::try_from(keys.len() + norm.len() + 2).is_err() {
                return Err(err("the map holds over 4 GiB of addresses: split it".into()));
            }
            keys.extend_from_slice(&(norm.len() as u16).to_le_bytes());
            keys.extend_from_slice(norm);
            count += 1;
            domains
                .entry(domain.to_ascii_lowercase().into_bytes().into())
                .or_insert(Policy::Map);
        }
        let table = (count * 2).next_power_of_two().max(8);
        let mut map = RecipientMap {
            keys: keys.into_boxed_slice(),
            tags: vec![0u8; table].into_boxed_slice(),
            offsets: vec![0u32; table].into_boxed_slice(),
            domains,
            addresses: 0,
            options,
        };
        map.index();
        Ok(map)
    }

    /// Fills the table from the arena, dropping duplicate addresses.
    fn index(&mut self) {
        let mut off = 0;
        while off < self.keys.len() {
            let key = key_at(&self.keys, off);
            let len = key.len();
            if let Err(i) = self.find(key) {
                self.tags[i] = tag(hash(key));
                self.offsets[i] = off as u32;
                self.addresses += 1;
            }
            off += 2 + len;
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline]
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        let h = hash(key);
        let t = tag(h);
        let mask = self.tags.len() - 1;
        let mut i = (h as usize) & mask;
        loop {
            match self.tags[i] {
                0 => return Err(i),
                x if x == t && key_at(&self.keys, self.offsets[i] as usize) == key => return Ok(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.find(key).is_ok()
    }

    /// Whether `to` (an address as the RCPT parser returns it, with its
    /// `domain`; `""` for `<postmaster>`) exists. Allocation-free.
    pub fn lookup(&self, to: &str, domain: &str) -> Lookup {
        if self.policy(domain) == Policy::CatchAll {
            return Lookup::Exists;
        }
        let Some(local) = to
            .len()
            .checked_sub(domain.len() + 1)
            .and_then(|n| to.get(..n))
        else {
            return Lookup::Unknown;
        };
        // RFC 5321 §4.5.1: postmaster exists at every domain we accept.
        if local.eq_ignore_ascii_case("postmaster") {
            return Lookup::Exists;
        }
        let mut buf = [0u8; MAX_ADDRESS];
        let ic = self.options.ignore_case;
        if normalize(local, domain, ic, &mut buf).is_some_and(|k| self.contains(k)) {
            return Lookup::Exists;
        }
        // The base address of `user+ext`: cut at the first delimiter
        // (not at the start: `+x@d` has no base).
        let delims = self.options.delimiter.as_bytes();
        let cut = match delims {
            [] => None,
            [d] => memchr::memchr(*d, local.as_bytes()),
            _ => local.bytes().position(|b| delims.contains(&b)),
        };
        if let Some(cut) = cut.filter(|&c| c > 0 && local.is_char_boundary(c)) {
            if normalize(&local[..cut], domain, ic, &mut buf).is_some_and(|k| self.contains(k)) {
                return Lookup::Exists;
            }
        }
        Lookup::Unknown
    }

    /// The policy of `domain`: what the file says, catch-all otherwise
    /// (and for `""`, `<postmaster>`).
    pub fn policy(&self, domain: &str) -> Policy {
        self.named_policy(domain).unwrap_or(Policy::CatchAll)
    }

    /// The policy the file gives `domain`, if it names it.
    pub fn named_policy(&self, domain: &str) -> Option<Policy> {
        // A handful of domains: compare in place, no hashing or copying.
        if self.domains.len() <= 8 {
            return self
                .domains
                .iter()
                .find(|(d, _)| d.eq_ignore_ascii_case(domain.as_bytes()))
                .map(|(_, p)| *p);
        }
        let mut buf = [0u8; 255];
        let d = buf.get_mut(..domain.len())?;
        d.copy_from_slice(domain.as_bytes());
        d.make_ascii_lowercase();
        self.domains.get(&*d).copied()
    }

    /// Distinct addresses listed.
    pub fn addresses(&self) -> usize {
        self.addresses
    }

    /// The domains the file names with `policy`, sorted (for the start-up
    /// and reload log lines).
    pub fn domains(&self, policy: Policy) -> Vec<String> {
        let mut v: Vec<String> = self
            .domains
            .iter()
            .filter(|(_, p)| **p == policy)
            .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
            .collect();
        v.sort();
        v
    }

    /// Heap bytes held: the arena, the table and the domain index (its
    /// entries, not the hash map's own overhead).
    pub fn memory_bytes(&self) -> usize {
        self.keys.len()
            + self.tags.len() * 5
            + self.domains.keys().map(|d| d.len() + 24).sum::<usize>()
    }

    /// The options the map was built with.
    pub fn options(&self) -> &MapOptions {
        &self.options
    }
}

/// `key: target` at the first colon outside an address literal's
/// brackets (`user@[IPv6:::1]` has colons of its own).
fn split_alias(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0u32;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// `local@domain` with the domain (and, with `ignore_case`, the local part)
/// in ASCII lower case, written into `buf`; `None` if it does not fit.
fn normalize<'b>(
    local: &str,
    domain: &str,
    ignore_case: bool,
    buf: &'b mut [u8; MAX_ADDRESS],
) -> Option<&'b [u8]> {
    let n = local.len() + 1 + domain.len();
    let out = buf.get_mut(..n)?;
    let (l, rest) = out.split_at_mut(local.len());
    l.copy_from_slice(local.as_bytes());
    if ignore_case {
        l.make_ascii_lowercase();
    }
    rest[0] = b'@';
    rest[1..].copy_from_slice(domain.as_bytes());
    rest[1..].make_ascii_lowercase();
    Some(out)
}

/// A slot's tag: full (0x80), and 7 bits of the hash that the index
/// (its low bits) does not use.
fn tag(h: u64) -> u8 {
    0x80 | (h >> 57) as u8
}

/// The key stored at arena offset `off`.
fn key_at(keys: &[u8], off: usize) -> &[u8] {
    let len = u16::from_le_bytes([keys[off], keys[off + 1]]) as usize;
    &keys[off + 2..off + 2 + len]
}

/// FxHash-style multiply-rotate over 8-byte words, then a final mix so the
/// top 32 bits (the slot's tag) and the low bits (the index) both depend on
/// every byte. The map is the operator's: no secret key is needed against
/// crafted collisions in it, and queries cannot change the table.
fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // murmur3's finaliser.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> RecipientMap {
        RecipientMap::parse(text.as_bytes(), MapOptions::default()).unwrap()
    }

    fn look(m: &RecipientMap, to: &str) -> Lookup {
        let domain = to.rsplit_once('@').map_or("", |(_, d)| d);
        m.lookup(to, domain)
    }

    const FILE: &str = "\
# the recipients of example.com
alice@example.com
  Bob@Example.COM  
carol@example.com: carol@mailstore.internal
\t
dave+lists@example.com
ip@[IPv6:2001:db8::1]: ip@example.com
@catchall.example
erin@mixed.example
@mixed.example
";

    #[test]
    fn a_map_file_lists_recipients_aliases_and_catch_all_domains() {
        for ending in ["\n", "\r\n"] {
            let m =
                RecipientMap::parse(FILE.replace('\n', ending).as_bytes(), MapOptions::default())
                    .unwrap();
            assert_eq!(m.addresses(), 6);
            let cases = [
                ("alice@example.com", Lookup::Exists),
                ("ALICE@EXAMPLE.com", Lookup::Exists),
                ("bob@example.com", Lookup::Exists),
                ("carol@example.com", Lookup::Exists),
                ("alice+news@example.com", Lookup::Exists),
                ("alice+@example.com", Lookup::Exists),
                ("dave+lists@example.com", Lookup::Exists),
                ("dave@example.com", Lookup::Unknown),
                ("dave+other@example.com", Lookup::Unknown),
                ("+alice@example.com", Lookup::Unknown),
                ("mallory@example.com", Lookup::Unknown),
                ("alic@example.com", Lookup::Unknown),
                ("postmaster@example.com", Lookup::Exists),
                ("PostMaster@example.com", Lookup::Exists),
                ("postmaster", Lookup::Exists),
                ("ip@[IPv6:2001:db8::1]", Lookup::Exists),
                ("other@[IPv6:2001:db8::1]", Lookup::Unknown),
                ("anyone@catchall.example", Lookup::Exists),
                ("anyone@mixed.example", Lookup::Exists),
                ("anyone@unnamed.example", Lookup::Exists),
                ("\"alice\"@example.com", Lookup::Unknown),
            ];
            for (to, want) in cases {
                assert_eq!(look(&m, to), want, "{to}");
            }
            assert_eq!(
                m.domains(Policy::Map),
                ["[ipv6:2001:db8::1]", "example.com"]
            );
            assert_eq!(
                m.domains(Policy::CatchAll),
                ["catchall.example", "mixed.example"]
            );
        }
    }

    #[test]
    fn case_and_delimiters_follow_the_options() {
        let opts = MapOptions {
            delimiter: "-+".into(),
            ignore_case: false,
        };
        let m = RecipientMap::parse(b"Alice@Example.com\n", opts).unwrap();
        assert_eq!(look(&m, "Alice@EXAMPLE.COM"), Lookup::Exists);
        assert_eq!(look(&m, "alice@example.com"), Lookup::Unknown);
        assert_eq!(look(&m, "Alice-x@example.com"), Lookup::Exists);
        assert_eq!(look(&m, "Alice+x-y@example.com"), Lookup::Exists);
        let m = RecipientMap::parse(
            b"alice@example.com\n",
            MapOptions {
                delimiter: String::new(),
                ignore_case: true,
            },
        )
        .unwrap();
        assert_eq!(look(&m, "alice+x@example.com"), Lookup::Unknown);
    }

    #[test]
    fn bad_lines_are_named_by_number_with_what_to_write() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"ok@example.com\nnobody\n", 2, "is not an address"),
            (b"\n\nuser@\n", 3, "is not an address"),
            (b"user@bad_domain.example\n", 1, "is not an address"),
            (b"a b@example.com\n", 1, "is not an address"),
            (b"@\n", 1, "is not @domain"),
            (b"@-bad.example\n", 1, "is not @domain"),
            (b"alias@example.com:   \n", 1, "has no target"),
            (b"# fine\n\xff@example.com\n", 2, "not UTF-8"),
        ];
        for (text, line, what) in cases {
            let e = RecipientMap::parse(text, MapOptions::default()).unwrap_err();
            assert_eq!(e.line, *line, "{e}");
            assert!(e.reason.contains(what), "{e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
        let long = format!("{}@example.com\n", "a".repeat(400));
        assert_eq!(
            RecipientMap::parse(long.as_bytes(), MapOptions::default())
                .unwrap_err()
                .line,
            1
        );
    }

    #[test]
    fn duplicates_count_once_and_every_entry_of_a_big_map_is_found() {
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("user{i}@big.example\n"));
        }
        text.push_str("user7@big.example\nUSER7@big.example\n");
        let m = map(&text);
        assert_eq!(m.addresses(), 20_000);
        for i in 0..20_000 {
            assert_eq!(
                look(&m, &format!("user{i}@big.example")),
                Lookup::Exists,
                "{i}"
            );
            assert_eq!(
                look(&m, &format!("user{}@big.example", i + 20_000)),
                Lookup::Unknown
            );
        }
        // Arena plus a table at most half full: tens of bytes an address.
        assert!(m.memory_bytes() < 20_000 * 64, "{}", m.memory_bytes());
    }

    proptest::proptest! {
        /// Any bytes: a map or a line-numbered error, never a panic.
        #[test]
        fn parse_never_panics(text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Err(e) = RecipientMap::parse(&text, MapOptions::default()) {
                proptest::prop_assert!(e.line >= 1);
            }
        }

        /// Every address a map lists is found, in any case, with any
        /// extension; lookups of arbitrary strings never panic.
        #[test]
        fn listed_addresses_are_found_and_lookups_never_panic(
            locals in proptest::collection::vec("[a-zA-Z0-9_=]{1,12}", 1..40),
            probe in ".{0,40}",
            probe_domain in ".{0,300}",
        ) {
            let text: String = locals.iter().map(|l| format!("{l}@Example.com\n")).collect();
            let m = RecipientMap::parse(text.as_bytes(), MapOptions::default()).unwrap();
            for l in &locals {
                let upper = format!("{}+TAG@EXAMPLE.COM", l.to_ascii_uppercase());
                proptest::prop_assert_eq!(m.lookup(&upper, "EXAMPLE.COM"), Lookup::Exists);
            }
            let _ = m.lookup(&probe, &probe_domain);
            let _ = m.lookup(&probe, "example.com");
        }
    }

    #[test]
    fn an_empty_map_names_no_domain() {
        let m = map("# nothing yet\n\n");
        assert_eq!(m.addresses(), 0);
        assert_eq!(look(&m, "anyone@example.com"), Lookup::Exists);
    }
}
