//! Recipient lookups off the shards (issue 17): the `ldap` and `verify`
//! policies.
//!
//! A shard never waits on a directory or a next hop. Its connection task
//! asks the [`LookupPool`] (a bounded queue in front of
//! `smtp.recipient_lookup_threads` plain threads) and awaits a
//! [`PendingAnswer`]; the thread that answers wakes the task through
//! glommio's foreign-wake path (the waker queues itself on the shard's
//! executor and writes its eventfd), so the shard sleeps in io_uring as
//! usual meanwhile. The task stops waiting at
//! `smtp.recipient_lookup_timeout` whatever the thread is doing (the
//! session answers `451 4.3.0`); a thread skips queued questions whose
//! asker has given up. A full queue answers `451` at once.
//!
//! * **LDAP**: each thread keeps one connection to `smtp.recipient_ldap`
//!   (ldap3's synchronous client; anonymous bind) and searches
//!   `smtp.recipient_ldap_base` (subtree) with `smtp.recipient_ldap_filter`
//!   (Postfix `ldap_table` `query_filter`: `%s` the address, `%u` the local
//!   part, `%d` the domain, each escaped per RFC 4515; `%%` a percent). Any
//!   entry found means the recipient exists. `user+ext@d` is looked up as
//!   itself, then as `user@d` (`smtp.recipient_delimiter`).
//! * **Verify**: a callout to `smtp.recipient_verify_host`: greeting, EHLO,
//!   `MAIL FROM:<>`, `RCPT TO:<address>`, `QUIT`; no mail is sent. `2xx`:
//!   exists; `5xx`: unknown; anything else (4xx, no connection, a timeout)
//!   fails. Answers go into one cache shared by the threads, so each
//!   address costs the next hop one callout per TTL, not one per shard.
//!
//! Each shard also keeps a [`TtlCache`] of answers in front of the pool
//! (`smtp.recipient_cache_*`): found recipients for the positive TTL,
//! unknown ones for the negative TTL; failures are never cached. Both caches
//! are bounded; the oldest entry goes first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ldap3::{LdapConn, LdapConnSettings, LdapError, Scope, SearchOptions};

use crate::config::SmtpConfig;
use crate::protocol::recipients::{Lookup, LookupFailed, Remote};

/// Questions queued per lookup thread before new ones fail at once.
const QUEUE_PER_THREAD: usize = 256;

/// A remote lookup's result, as the session takes it.
pub type Answer = Result<Lookup, LookupFailed>;

/// The lookup threads and their queue; one per process, shared by the
/// shards.
#[derive(Debug)]
pub struct LookupPool {
    jobs: SyncSender<Job>,
}

#[derive(Debug)]
struct Job {
    remote: Remote,
    address: String,
    reply: Arc<Slot<Answer>>,
}

/// What the lookup threads need, read once from the settings.
#[derive(Debug)]
struct Settings {
    ldap_url: String,
    ldap_base: String,
    ldap_filter: String,
    verify_host: String,
    hostname: String,
    delimiter: String,
    ignore_case: bool,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
}

impl LookupPool {
    /// Starts the threads if any domain has the `ldap` or `verify` policy;
    /// `None` otherwise.
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn start(smtp: &SmtpConfig) -> std::io::Result<Option<Arc<Self>>> {
        if smtp.recipient_ldap_domains.is_empty() && smtp.recipient_verify_domains.is_empty() {
            return Ok(None);
        }
        let threads = smtp.recipient_lookup_threads.max(1);
        let (jobs, rx) = mpsc::sync_channel(threads * QUEUE_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        let settings = Arc::new(Settings {
            ldap_url: smtp.recipient_ldap.clone(),
            ldap_base: smtp.recipient_ldap_base.clone(),
            ldap_filter: smtp.recipient_ldap_filter.clone(),
            verify_host: smtp.recipient_verify_host.clone(),
            hostname: smtp.hostname.clone(),
            delimiter: smtp.recipient_delimiter.clone(),
            ignore_case: smtp.recipient_ignore_case,
            timeout: smtp.recipient_lookup_timeout,
            positive_ttl: smtp.recipient_cache_positive_ttl,
            negative_ttl: smtp.recipient_cache_negative_ttl,
        });
        let verified = Arc::new(Mutex::new(TtlCache::new(smtp.recipient_cache_entries)));
        for i in 0..threads {
            let (rx, settings, verified) = (
                Arc::clone(&rx),
                Arc::clone(&settings),
                Arc::clone(&verified),
            );
            // Detached: each ends when the pool (its queue's sender) is
            // dropped, after at most one lookup timeout.
            std::thread::Builder::new()
                .name(format!("ringmx-lookup{i}"))
                .spawn(move || worker(&rx, &settings, &verified))?;
        }
        Ok(Some(Arc::new(Self { jobs })))
    }

    /// Queues a lookup of `address`; `Err` if the queue is full (the
    /// directory or next hop is not keeping up: answer `451` now).
    pub fn ask(&self, remote: Remote, address: &str) -> Result<PendingAnswer, LookupFailed> {
        let (reply, pending) = PendingAnswer::new();
        let job = Job {
            remote,
            address: address.to_owned(),
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(pending),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(LookupFailed),
        }
    }
}

/// One line about the ldap and verify policies, for the start-up log.
pub fn describe(smtp: &SmtpConfig) -> String {
    let mut parts = Vec::new();
    if !smtp.recipient_ldap_domains.is_empty() {
        parts.push(format!(
            "ldap domains: {} (at {}, base {:?}, filter {:?})",
            smtp.recipient_ldap_domains.join(" "),
            smtp.recipient_ldap,
            smtp.recipient_ldap_base,
            smtp.recipient_ldap_filter,
        ));
    }
    if !smtp.recipient_verify_domains.is_empty() {
        parts.push(format!(
            "verify domains: {} (at {})",
            smtp.recipient_verify_domains.join(" "),
            smtp.recipient_verify_host,
        ));
    }
    parts.push(format!(
        "{} threads, timeout {:?}, cache {} entries for {:?} (found) / {:?} (unknown)",
        smtp.recipient_lookup_threads,
        smtp.recipient_lookup_timeout,
        smtp.recipient_cache_entries,
        smtp.recipient_cache_positive_ttl,
        smtp.recipient_cache_negative_ttl,
    ));
    parts.join("; ")
}

/// A one-shot answer from a plain thread (a lookup, a password check) to
/// a shard task.
#[derive(Debug)]
pub(crate) struct Slot<T>(Mutex<(Option<T>, Option<Waker>)>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Mutex::new((None, None)))
    }
}

impl<T> Slot<T> {
    pub(crate) fn set(&self, answer: T) {
        let waker = {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            g.0 = Some(answer);
            g.1.take()
        };
        // From this (foreign) thread glommio queues the wake-up on the
        // shard's executor and rings its eventfd.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The answer in a `Slot`, awaited on the shard: [`LookupPool::ask`]'s,
/// or a password check's.
#[derive(Debug)]
pub struct PendingAnswer<T = Answer>(Arc<Slot<T>>);

impl<T> PendingAnswer<T> {
    /// A slot for a thread to answer in, and its awaitable end.
    pub(crate) fn new() -> (Arc<Slot<T>>, Self) {
        let slot = Arc::new(Slot::default());
        (Arc::clone(&slot), PendingAnswer(slot))
    }
}

impl<T> Future for PendingAnswer<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut g = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        match g.0.take() {
            Some(a) => Poll::Ready(a),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for PendingAnswer<T> {
    /// Given up on (timed out, hard stop): the thread's answer must not
    /// wake a task that no longer waits for it.
    fn drop(&mut self) {
        let waker = self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).1.take();
        drop(waker);
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, s: &Settings, verified: &Mutex<TtlCache>) {
    let mut ldap: Option<LdapConn> = None;
    loop {
        // One thread at a time waits on the queue; the others on the lock.
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        // The asker timed out and dropped its end: nobody wants this.
        if Arc::strong_count(&job.reply) == 1 {
            continue;
        }
        let answer = match job.remote {
            Remote::Ldap => ldap_lookup(&mut ldap, s, &job.address),
            Remote::Verify => {
                let key = cache_key(Remote::Verify, &job.address, s.ignore_case);
                let now = Instant::now();
                let hit = verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key, now);
                match hit {
                    Some(k) => Ok(k),
                    None => {
                        let a = verify(s, &job.address);
                        if let Ok(k) = a {
                            let ttl = ttl(s.positive_ttl, s.negative_ttl, k);
                            verified.lock().unwrap_or_else(|e| e.into_inner()).insert(
                                key,
                                k,
                                Instant::now() + ttl,
                            );
                        }
                        a
                    }
                }
            }
        };
        job.reply.set(answer);
    }
}

/// How long an answer is cached.
pub(crate) fn ttl(positive: Duration, negative: Duration, k: Lookup) -> Duration {
    match k {
        Lookup::Exists => positive,
        Lookup::Unknown => negative,
    }
}

/// The cache key of an address: the kind of lookup and the address with
/// its domain (and, with `ignore_case`, its local part) in lower case.
pub(crate) fn cache_key(remote: Remote, address: &str, ignore_case: bool) -> String {
    let tag = match remote {
        Remote::Ldap => 'l',
        Remote::Verify => 'v',
    };
    let at = address.rfind('@').unwrap_or(0);
    let (local, domain) = address.split_at(at);
    let mut k = String::with_capacity(address.len() + 1);
    k.push(tag);
    if ignore_case {
        k.push_str(&local.to_ascii_lowercase());
    } else {
        k.push_str(local);
    }
    k.push_str(&domain.to_ascii_lowercase());
    k
}

/// `user+ext@d` and, if it has an extension, `user@d`.
fn candidates<'a>(address: &'a str, delimiter: &str) -> (&'a str, Option<String>) {
    let at = address.rfind('@').unwrap_or(address.len());
    let local = &address[..at];
    let cut = local
        .char_indices()
        .find(|(i, c)| *i > 0 && delimiter.contains(*c))
        .map(|(i, _)| i);
    (
        address,
        cut.map(|c| format!("{}{}", &local[..c], &address[at..])),
    )
}

fn ldap_lookup(conn: &mut Option<LdapConn>, s: &Settings, address: &str) -> Answer {
    let (full, base) = candidates(address, &s.delimiter);
    for a in std::iter::once(full).chain(base.as_deref()) {
        match ldap_search(conn, s, a) {
            Ok(true) => return Ok(Lookup::Exists),
            Ok(false) => {}
            Err(e) => {
                crate::warn!(
                    "recipient lookup: LDAP {} for <{address}> failed: {e}; answering 451",
                    s.ldap_url
                );
                return Err(LookupFailed);
            }
        }
    }
    Ok(Lookup::Unknown)
}

/// Whether the filter for `address` finds an entry. A kept connection that
/// fails is replaced and the search tried once more (the server may have
/// restarted since), unless it timed out (a hung server would only make the
/// retry wait as long again).
fn ldap_search(
    conn: &mut Option<LdapConn>,
    s: &Settings,
    address: &str,
) -> Result<bool, LdapError> {
    let filter = expand_filter(&s.ldap_filter, address);
    loop {
        let fresh = conn.is_none();
        let c = match conn {
            Some(c) => c,
            None => {
                let settings = LdapConnSettings::new().set_conn_timeout(s.timeout);
                conn.insert(LdapConn::with_settings(settings, &s.ldap_url)?)
            }
        };
        let res = c
            .with_search_options(SearchOptions::new().sizelimit(1))
            .with_timeout(s.timeout)
            .search(&s.ldap_base, Scope::Subtree, &filter, vec!["1.1"]);
        match res {
            // 4: sizeLimitExceeded, i.e. more than one entry: found.
            Ok(r) if r.1.rc == 0 || r.1.rc == 4 => return Ok(!r.0.is_empty()),
            Ok(r) => return Err(LdapError::from(r.1)),
            Err(e) => {
                *conn = None;
                if fresh || matches!(e, LdapError::Timeout { .. }) {
                    return Err(e);
                }
            }
        }
    }
}

/// Postfix's `query_filter` expansion: `%s` the address, `%u` its local
/// part, `%d` its domain, each escaped (RFC 4515); `%%` a `%`; any other
/// `%x` is kept as written.
pub(crate) fn expand_filter(filter: &str, address: &str) -> String {
    let at = address.rfind('@').unwrap_or(address.len());
    let (local, domain) = (&address[..at], address.get(at + 1..).unwrap_or(""));
    let mut out = String::with_capacity(filter.len() + address.len());
    let mut chars = filter.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str(&ldap3::ldap_escape(address)),
            Some('u') => out.push_str(&ldap3::ldap_escape(local)),
            Some('d') => out.push_str(&ldap3::ldap_escape(domain)),
            Some('%') => out.push('%'),
            Some(x) => {
                out.push('%');
                out.push(x);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The callout: whether the next hop takes `address` at `RCPT TO`.
fn verify(s: &Settings, address: &str) -> Answer {
    match callout(s, address) {
        Ok(code) if (200..300).contains(&code) => Ok(Lookup::Exists),
        Ok(code) if (500..600).contains(&code) => Ok(Lookup::Unknown),
        Ok(code) => {
            crate::warn!(
                "recipient verify at {} for <{address}>: {code}; answering 451",
                s.verify_host
            );
            Err(LookupFailed)
        }
        Err(e) => {
            crate::warn!(
                "recipient verify at {} for <{address}> failed: {e}; answering 451",
                s.verify_host
            );
            Err(LookupFailed)
        }
    }
}

/// The next hop's reply code to `RCPT TO:<address>`; an error for any
/// failure before it (a refused greeting, EHLO/HELO or `MAIL FROM:<>`
/// included: they say nothing about the recipient).
fn callout(s: &Settings, address: &str) -> Result<u16, String> {
    let deadline = Instant::now() + s.timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    let addr = s
        .verify_host
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("resolves to no address")?;
    let stream = TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut w = stream;
    let read = |r: &mut BufReader<TcpStream>| -> Result<u16, String> {
        r.get_ref()
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        read_reply(r)
    };
    let send = |w: &mut TcpStream, line: &str| -> Result<(), String> {
        w.set_write_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        w.write_all(line.as_bytes()).map_err(|e| e.to_string())
    };
    let expect2 = |what: &str, code: u16| {
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("{what} answered {code}"))
        }
    };
    expect2("the greeting", read(&mut r)?)?;
    send(&mut w, &format!("EHLO {}\r\n", s.hostname))?;
    if !(200..300).contains(&read(&mut r)?) {
        send(&mut w, &format!("HELO {}\r\n", s.hostname))?;
        expect2("HELO", read(&mut r)?)?;
    }
    // RFC 6531: a non-ASCII address needs SMTPUTF8; a hop without it
    // refuses the MAIL, which fails the lookup rather than calling the
    // recipient unknown.
    let utf8 = if address.is_ascii() { "" } else { " SMTPUTF8" };
    send(&mut w, &format!("MAIL FROM:<>{utf8}\r\n"))?;
    expect2("MAIL FROM:<>", read(&mut r)?)?;
    send(&mut w, &format!("RCPT TO:<{address}>\r\n"))?;
    let code = read(&mut r)?;
    // Best effort: the answer is in.
    let _ = send(&mut w, "QUIT\r\n").and_then(|()| read(&mut r));
    Ok(code)
}

/// Longest reply line read from a next hop (RFC 5321 §4.5.3.1.5: 512).
const MAX_REPLY_LINE: u64 = 4096;

/// One (possibly multi-line) SMTP reply's code.
fn read_reply(r: &mut impl BufRead) -> Result<u16, String> {
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        let n = std::io::Read::take(&mut *r, MAX_REPLY_LINE)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        if !line.ends_with('\n') {
            return Err(format!("reply line over {MAX_REPLY_LINE} bytes"));
        }
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: {:?}", line.trim_end()))?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(code);
        }
    }
    Err("reply of over 100 lines".into())
}

/// Answers by key until they expire, at most `cap` of them; when full, the
/// oldest inserted goes first.
#[derive(Debug)]
pub struct TtlCache {
    map: HashMap<String, (Lookup, Instant, u64)>,
    /// Keys in insertion order, with the insertion's number (a key
    /// inserted again has a stale older entry here, skipped on eviction).
    order: VecDeque<(String, u64)>,
    cap: usize,
    seq: u64,
}

impl TtlCache {
    /// An empty cache of at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            seq: 0,
        }
    }

    /// The answer for `key` if it has not expired at `now`.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<Lookup> {
        match self.map.get(key) {
            Some(&(k, until, _)) if now < until => Some(k),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `k` for `key` until `until`.
    pub fn insert(&mut self, key: String, k: Lookup, until: Instant) {
        self.seq += 1;
        self.map.insert(key.clone(), (k, until, self.seq));
        self.order.push_back((key, self.seq));
        while self.map.len() > self.cap || self.order.len() > 2 * self.cap {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.2 == seq) {
                self.map.remove(&old);
            }
        }
    }

    /// Entries held (expired ones included until looked up or evicted).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_expand_like_postfix_with_escaping() {
        assert_eq!(
            expand_filter("(&(mail=%s)(uid=%u)(dc=%d)(x=100%%)(y=%z))", "a*b@ex.com"),
            "(&(mail=a\\2ab@ex.com)(uid=a\\2ab)(dc=ex.com)(x=100%)(y=%z))"
        );
        assert_eq!(
            expand_filter("(mail=%s)%", "x)(uid=*@d"),
            "(mail=x\\29\\28uid=\\2a@d)%"
        );
    }

    #[test]
    fn extensions_fold_to_the_base_address() {
        assert_eq!(candidates("a+b@d", "+"), ("a+b@d", Some("a@d".into())));
        assert_eq!(candidates("a@d", "+"), ("a@d", None));
        assert_eq!(candidates("+a@d", "+"), ("+a@d", None));
        assert_eq!(candidates("a-b+c@d", "+-"), ("a-b+c@d", Some("a@d".into())));
        assert_eq!(candidates("a+b@d", ""), ("a+b@d", None));
    }

    #[test]
    fn cache_keys_fold_case_as_configured() {
        assert_eq!(cache_key(Remote::Ldap, "Al@Ex.COM", true), "lal@ex.com");
        assert_eq!(cache_key(Remote::Verify, "Al@Ex.COM", false), "vAl@ex.com");
    }

    #[test]
    fn the_cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(2);
        c.insert("a".into(), Lookup::Exists, t0 + Duration::from_secs(10));
        assert_eq!(c.get("a", t0), Some(Lookup::Exists));
        assert_eq!(c.get("a", t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty());
        for k in ["a", "b", "a", "c"] {
            c.insert(k.into(), Lookup::Unknown, t0 + Duration::from_secs(10));
        }
        // `b` was the oldest live entry; `a` was refreshed after it.
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b", t0), None);
        assert_eq!(c.get("a", t0), Some(Lookup::Unknown));
        assert_eq!(c.get("c", t0), Some(Lookup::Unknown));
        for i in 0..1000 {
            c.insert("a".into(), Lookup::Exists, t0);
            c.insert(format!("k{i}"), Lookup::Exists, t0);
        }
        assert!(c.len() <= 2 && c.order.len() <= 4);
    }

    #[test]
    fn replies_are_read_to_their_last_line() {
        let mut r = std::io::Cursor::new(b"250-a\r\n250-b\r\n550 5.1.1 no\r\n".to_vec());
        assert_eq!(read_reply(&mut r), Ok(550));
        let mut r = std::io::Cursor::new(b"hello\r\n".to_vec());
        assert!(read_reply(&mut r).is_err());
        let mut r = std::io::Cursor::new(Vec::new());
        assert!(read_reply(&mut r).is_err());
        let mut r = std::io::Cursor::new([b'2'; 10_000].to_vec());
        assert!(read_reply(&mut r).unwrap_err().contains("over 4096 bytes"));
    }
}
