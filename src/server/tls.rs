//! TLS on SMTP connections: certificates, the shared rustls configuration,
//! and driving one `rustls::ServerConnection` as bytes in / bytes out from
//! the connection task (no tokio, no blocking: every wait is the same
//! glommio read or write `super::conn` uses for plain text).
//!
//! Owns: loading and checking the certificate files (at start: one line and
//! exit 2; on SIGHUP: a bad file is logged and the old one kept), choosing
//! a certificate by SNI, the ticket keys (one rotating `Ticketer` shared by
//! every shard, since SO_REUSEPORT sends a reconnect to any shard), the
//! handshake with its timeout and byte cap, decrypting into the caller's
//! read buffer and encrypting replies, and the TLS counters.
//! Leaves to `super::conn`: when to start TLS (STARTTLS, implicit
//! listeners), the read buffer the scanner reads, logging connections.
//! Leaves to the session: every SMTP rule about STARTTLS.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::conn::{wait_readable, write_bounded, Wake};
use super::shard::Shard;
use crate::config::TlsConfig;
use crate::protocol::trace::TlsTrace;

/// Ciphertext a handshake may read before it is dropped. A ClientHello is
/// well under 2 KiB (a few KiB with post-quantum key shares or a large
/// ticket), the client's Finished and certificate-less flight less.
const HANDSHAKE_MAX_BYTES: usize = 64 * 1024;

/// Ciphertext read per socket read; a TLS record is at most ~16.6 KiB.
const CIPHER_READ_BYTES: usize = 16 * 1024 + 512;

/// What rustls keeps for an idle connection once ours are given back: its
/// record buffer (4 KiB after a read) and its connection state (keys,
/// transcript, queues). `idle_tls_connections_stay_within_their_bound`
/// measured 15.7 KB per idle TLS connection in all, against 3–5 KB
/// without TLS.
pub(crate) const IDLE_TLS_STATE_BYTES: u64 = 12 * 1024;

/// The ciphertext buffer's first size: a ClientHello, a handshake flight
/// or a batch of commands fits; a connection that only talks SMTP
/// commands keeps no more.
const CIPHER_FIRST_BYTES: usize = 4096;

/// Why TLS could not be set up at start; one line each.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// TLS events counted over all shards, read by anyone (metrics) with
/// [`TlsCounters::snapshot`].
#[derive(Debug, Default)]
pub struct TlsCounters {
    handshakes: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    starttls: AtomicU64,
    implicit: AtomicU64,
    pipelined_dropped: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

/// The values of [`TlsCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsCounts {
    /// Handshakes completed (full and resumed).
    pub handshakes: u64,
    /// Of those, resumed from a ticket or session id.
    pub resumed: u64,
    /// Handshakes that failed (bad client, timeout, byte cap, shutdown).
    pub failed: u64,
    /// STARTTLS commands accepted (handshakes begun on plain listeners).
    pub starttls: u64,
    /// Handshakes begun on implicit-TLS listeners.
    pub implicit: u64,
    /// STARTTLS commands with input pipelined behind them (dropped).
    pub pipelined_dropped: u64,
    /// Certificate reloads that took effect.
    pub reloads: u64,
    /// Certificate reloads refused (the old certificates kept).
    pub reload_failures: u64,
}

impl TlsCounters {
    /// The counters now.
    pub fn snapshot(&self) -> TlsCounts {
        TlsCounts {
            handshakes: self.handshakes.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            starttls: self.starttls.load(Relaxed),
            implicit: self.implicit.load(Relaxed),
            pipelined_dropped: self.pipelined_dropped.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            reload_failures: self.reload_failures.load(Relaxed),
        }
    }

    pub(crate) fn note_pipelined_dropped(&self) {
        self.pipelined_dropped.fetch_add(1, Relaxed);
    }
}

/// Everything the shards share for TLS: the rustls configuration (with
/// the certificates behind a swappable resolver and the ticket keys), the
/// handshake timeout and the counters. Built on the main thread.
pub struct Acceptor {
    config: Arc<ServerConfig>,
    certs: Arc<CertStore>,
    handshake_timeout: Duration,
    counters: Arc<TlsCounters>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Loads the certificates of `cfg`; `None` when TLS is off.
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or key, a key that
    /// does not match its certificate, a certificate out of its validity
    /// period: one line naming the file.
    pub fn from_config(cfg: &TlsConfig) -> Result<Option<Arc<Acceptor>>, TlsError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let certs = Arc::new(CertStore {
            current: RwLock::new(Arc::new(Certs::load(cfg, unix_now())?)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        // One rotating ticket key set for the process: every shard's
        // connections use this same config, so a ticket issued on one
        // shard resumes on any other.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError(format!("TLS ticket keys: {e}")))?;
        // One ticket is enough for a client that reconnects one at a time.
        config.send_tls13_tickets = 1;
        Ok(Some(Arc::new(Acceptor {
            config: Arc::new(config),
            certs,
            handshake_timeout: cfg.handshake_timeout,
            counters: Arc::new(TlsCounters::default()),
        })))
    }

    /// The counters (shared; read them with [`TlsCounters::snapshot`]).
    pub fn counters(&self) -> &Arc<TlsCounters> {
        &self.counters
    }

    /// Re-reads the certificate files (SIGHUP): new handshakes use them;
    /// connections already encrypted keep theirs. A bad file is logged and
    /// the certificates in use are kept.
    pub fn reload(&self, cfg: &TlsConfig) {
        match Certs::load(cfg, unix_now()) {
            Ok(c) => {
                let names = c.describe();
                *self
                    .certs
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
                self.counters.reloads.fetch_add(1, Relaxed);
                crate::info!("SIGHUP: TLS certificates reloaded: {names}");
            }
            Err(e) => {
                self.counters.reload_failures.fetch_add(1, Relaxed);
                crate::error!("SIGHUP: TLS certificates not reloaded, keeping the old ones: {e}");
            }
        }
    }

    /// One line about the certificates in use, for the start-up log.
    pub fn describe(&self) -> String {
        self.certs.load().describe()
    }

    /// A server-side TLS state for one connection.
    pub(crate) fn start(&self, implicit: bool) -> Result<TlsConn, rustls::Error> {
        let mut conn = ServerConnection::new(Arc::clone(&self.config))?;
        // Replies are bounded by the connection's own backpressure; rustls
        // must take each batch whole.
        conn.set_buffer_limit(None);
        let c = if implicit {
            &self.counters.implicit
        } else {
            &self.counters.starttls
        };
        c.fetch_add(1, Relaxed);
        Ok(TlsConn {
            conn,
            cin: Vec::new(),
            cin_start: 0,
            cin_end: 0,
            cout: Vec::new(),
            closing: false,
            cut: false,
        })
    }
}

/// The certificates in use: the default and the SNI ones.
struct Certs {
    default: Arc<CertifiedKey>,
    /// Chosen when the client's SNI name is one the certificate is valid for.
    sni: Vec<Arc<CertifiedKey>>,
    /// Files and expiry dates, for the log.
    summary: Vec<String>,
}

impl Certs {
    fn load(cfg: &TlsConfig, now: i64) -> Result<Certs, TlsError> {
        let mut summary = Vec::new();
        let default = Arc::new(load_pair(&cfg.cert, &cfg.key, now, &mut summary)?);
        let mut sni = Vec::with_capacity(cfg.sni.len());
        for c in &cfg.sni {
            sni.push(Arc::new(load_pair(&c.cert, &c.key, now, &mut summary)?));
        }
        Ok(Certs {
            default,
            sni,
            summary,
        })
    }

    fn describe(&self) -> String {
        self.summary.join(", ")
    }

    /// The certificate for SNI `name`: the first SNI certificate valid
    /// for it, else the default.
    fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let found = name.and_then(|n| {
            let n = ServerName::try_from(n).ok()?;
            self.sni.iter().find(|c| valid_for(c, &n)).cloned()
        });
        found.unwrap_or_else(|| Arc::clone(&self.default))
    }
}

/// Whether `c`'s leaf names `name` (its SAN DNS names, wildcards included).
fn valid_for(c: &CertifiedKey, name: &ServerName<'_>) -> bool {
    c.end_entity_cert()
        .ok()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

/// The rustls certificate resolver: reads the current [`Certs`] per
/// handshake, so a reload applies to the next handshake on every shard.
struct CertStore {
    current: RwLock<Arc<Certs>>,
}

impl CertStore {
    fn load(&self) -> Arc<Certs> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.load().choose(hello.server_name()))
    }
}

/// Reads a PEM chain and its key and checks them: a certificate first, a
/// key that signs for it, and `now` within the leaf's validity period.
fn load_pair(
    cert: &Path,
    key: &Path,
    now: i64,
    summary: &mut Vec<String>,
) -> Result<CertifiedKey, TlsError> {
    let cd = cert.display();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("TLS certificate {cd}: {}", pem_reason(&e))))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError(format!(
            "TLS certificate {cd}: no CERTIFICATE in the file (give a PEM chain, leaf first)"
        )));
    };
    let (not_before, not_after) = validity(leaf).ok_or_else(|| {
        TlsError(format!(
            "TLS certificate {cd}: the first certificate is not valid X.509"
        ))
    })?;
    if now > not_after {
        return Err(TlsError(format!(
            "TLS certificate {cd}: expired on {}; renew it",
            crate::civil::rfc5322(not_after)
        )));
    }
    if now < not_before {
        return Err(TlsError(format!(
            "TLS certificate {cd}: not valid before {}",
            crate::civil::rfc5322(not_before)
        )));
    }
    let kd = key.display();
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("TLS key {kd}: {}", pem_reason(&e))))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsError(format!("TLS key {kd}: unusable: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => {}
        // ring cannot say for this key type: the first handshake will.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError(format!(
                "TLS key {kd} does not match certificate {cd}"
            )))
        }
    }
    summary.push(format!(
        "{cd} (valid until {})",
        crate::civil::rfc5322(not_after)
    ));
    Ok(ck)
}

fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of that kind found".into(),
        e => format!("not valid PEM ({e:?})"),
    }
}

/// The leaf's notBefore and notAfter, Unix seconds: a walk down the DER of
/// `Certificate → tbsCertificate → validity` (RFC 5280 §4.1).
fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (tag, cert, _) = der(cert.as_ref())?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer.
    let (tag, _, r) = der(rest)?;
    rest = if tag == 0xA0 { der(r)?.2 } else { r };
    let (_, _, r) = der(rest)?;
    let (_, _, r) = der(r)?;
    let (tag, validity, _) = der(r)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, a, r) = der(validity)?;
    let (t2, b, _) = der(r)?;
    Some((asn1_time(t1, a)?, asn1_time(t2, b)?))
}

/// One DER element: tag, contents, what follows.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, at) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = at.checked_add(len)?;
    Some((tag, b.get(at..end)?, b.get(end..)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, RFC 5280 §4.1.2.5.1) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn asn1_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    // Digits only below: slicing a non-ASCII string by bytes could panic.
    if !s.is_ascii() {
        return None;
    }
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let days = crate::civil::days_from_civil(year, n(0)?, n(2)?);
    Some(days * 86400 + i64::from(n(4)?) * 3600 + i64::from(n(6)?) * 60 + i64::from(n(8)?))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One connection's TLS: rustls's state plus the ciphertext read from the
/// socket and not yet handed to it (`cin[cin_start..cin_end]`), and the
/// ciphertext of the last sealed batch of replies.
pub(crate) struct TlsConn {
    conn: ServerConnection,
    cin: Vec<u8>,
    cin_start: usize,
    cin_end: usize,
    cout: Vec<u8>,
    /// [`TlsConn::close`] was called.
    closing: bool,
    /// A write of this connection's ciphertext did not complete (timed
    /// out, stopped, failed): the stream may end mid-record, so nothing
    /// more is sent.
    pub(crate) cut: bool,
}

impl TlsConn {
    /// Room to read ciphertext into: [`CIPHER_FIRST_BYTES`] at first (a
    /// handshake flight, a command batch), [`CIPHER_READ_BYTES`] once a
    /// read fills what there is (bulk data), as the plaintext read buffer
    /// grows. rustls keeps a partial record itself, so any size works.
    fn cin_spare(&mut self) -> &mut [u8] {
        if self.cin_start == self.cin_end {
            self.cin_start = 0;
            self.cin_end = 0;
        }
        if self.cin.is_empty() {
            self.cin = vec![0; CIPHER_FIRST_BYTES];
        } else if self.cin_end == self.cin.len() && self.cin.len() < CIPHER_READ_BYTES {
            self.cin.resize(CIPHER_READ_BYTES, 0);
        }
        &mut self.cin[self.cin_end..]
    }

    /// Gives the ciphertext buffer back while the connection idles (none
    /// unread): what an idle TLS connection keeps is rustls's own state.
    pub(crate) fn release(&mut self) -> usize {
        if self.cin_start < self.cin_end {
            return 0;
        }
        let n = self.cin.capacity();
        self.cin = Vec::new();
        self.cout = Vec::new();
        self.cin_start = 0;
        self.cin_end = 0;
        n
    }

    /// Ciphertext already read from the socket before TLS started (what
    /// followed a PROXY header in the same read): rustls gets it before
    /// anything read later.
    pub(crate) fn preload(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.cin_spare().len() < bytes.len() {
            self.cin.resize(self.cin_end + bytes.len(), 0);
        }
        self.cin[self.cin_end..self.cin_end + bytes.len()].copy_from_slice(bytes);
        self.cin_end += bytes.len();
    }

    /// Hands buffered ciphertext to rustls: every whole record buffered,
    /// until `want` bytes of plaintext wait or rustls's plaintext buffer is
    /// full. Taking all of a read at once matters: a client that pipelines
    /// (RFC 2920) sends several records in one segment, and the replies to
    /// all of them must leave in one write, as they do without TLS; one
    /// record per pass would cost a reply write per record. Called only
    /// with ciphertext buffered and no plaintext waiting in rustls, so it
    /// always takes some: an error otherwise, never a caller spinning on
    /// it.
    fn feed(&mut self, want: usize) -> Result<(), rustls::Error> {
        let before = self.cin_start;
        while self.cin_start < self.cin_end {
            let mut rd = &self.cin[self.cin_start..self.cin_end];
            let n = match self.conn.read_tls(&mut rd) {
                Ok(n) => n,
                // Its plaintext buffer is full: read that first.
                Err(_) if self.cin_start > before => break,
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            };
            self.cin_start += n;
            let st = self.conn.process_new_packets()?;
            if n == 0 || st.plaintext_bytes_to_read() >= want || st.peer_has_closed() {
                break;
            }
        }
        if self.cin_start == before {
            return Err(rustls::Error::General("TLS input not accepted".into()));
        }
        Ok(())
    }

    /// Encrypts `plain` (replies) and returns the ciphertext to write,
    /// with whatever else rustls has to send (tickets, alerts).
    pub(crate) fn seal(&mut self, plain: &[u8]) -> io::Result<&[u8]> {
        if !plain.is_empty() {
            self.conn.writer().write_all(plain)?;
        }
        if std::mem::take(&mut self.closing) {
            self.conn.send_close_notify();
        }
        self.cout.clear();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.cout)?;
        }
        Ok(&self.cout)
    }

    /// The next [`TlsConn::seal`] ends with a close_notify alert, after
    /// the replies it seals (rustls drops data written after one).
    pub(crate) fn close(&mut self) {
        self.closing = true;
    }

    /// Version and cipher, for `Received:` and the spool (after the
    /// handshake).
    pub(crate) fn trace(&self) -> Option<TlsTrace> {
        let version = match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        };
        let suite = self.conn.negotiated_cipher_suite()?.suite();
        let name = suite.as_str().unwrap_or("unknown");
        // IANA names: rustls says TLS13_AES_256_GCM_SHA384 for TLS 1.3's
        // TLS_AES_256_GCM_SHA384 (as Postfix and OpenSSL write it).
        let cipher = match name {
            "TLS13_AES_256_GCM_SHA384" => "TLS_AES_256_GCM_SHA384",
            "TLS13_AES_128_GCM_SHA256" => "TLS_AES_128_GCM_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256" => "TLS_CHACHA20_POLY1305_SHA256",
            n => n,
        };
        let bits = if cipher.contains("AES_128") { 128 } else { 256 };
        Some(TlsTrace {
            version,
            cipher,
            bits,
        })
    }

    /// The SNI name the client asked for, if any.
    /// The handshake resumed a session (a ticket) instead of a full one.
    pub(crate) fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    pub(crate) fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }
}

/// Runs the handshake to its end, bounded by the handshake timeout, the
/// byte cap, shutdown and the hard stop; counts and returns why it failed.
pub(super) async fn handshake(
    stream: &mut TcpStream,
    tls: &mut TlsConn,
    shard: &Shard,
    acceptor: &Acceptor,
) -> Result<(), String> {
    let r = drive_handshake(stream, tls, shard, acceptor.handshake_timeout).await;
    let c = &acceptor.counters;
    match &r {
        Ok(()) => {
            c.handshakes.fetch_add(1, Relaxed);
            if tls.conn.handshake_kind() == Some(HandshakeKind::Resumed) {
                c.resumed.fetch_add(1, Relaxed);
            }
        }
        Err(_) => {
            c.failed.fetch_add(1, Relaxed);
        }
    }
    r
}

async fn drive_handshake(
    stream: &mut TcpStream,
    tls: &mut TlsConn,
    shard: &Shard,
    timeout: Duration,
) -> Result<(), String> {
    let until = Instant::now() + timeout;
    let mut read = 0usize;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        // TLS 1.3 ends with the client's Finished: what rustls has left to
        // send is the session ticket, which can go out with the reply to
        // the client's first command (one write and one wake-up of the
        // client fewer per connection). TLS 1.2's server Finished comes
        // after the client's and must go now: the client waits for it.
        if !tls.conn.is_handshaking()
            && tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
        {
            return Ok(());
        }
        if tls.conn.wants_write() {
            let bytes = tls.seal(&[]).map_err(|e| format!("encrypting: {e}"))?;
            write_bounded(stream, bytes, left, shard, true)
                .await
                .map_err(|e| match e {
                    None => "timed out writing to the client".to_string(),
                    Some(k) => format!("write failed: {k:?}"),
                })?;
        }
        if !tls.conn.is_handshaking() {
            return Ok(());
        }
        if tls.cin_start < tls.cin_end {
            // Handshake messages, then any records behind them.
            if let Err(e) = tls.feed(1) {
                // Best effort: tell the client why (the alert rustls queued).
                if let Ok(bytes) = tls.seal(&[]) {
                    let _ = write_bounded(stream, bytes, left, shard, true).await;
                }
                return Err(e.to_string());
            }
            continue;
        }
        if left.is_zero() {
            return Err(format!("timed out after {timeout:?}"));
        }
        match wait_readable(stream, tls.cin_spare(), left, shard, true).await {
            Wake::Data(n) => {
                read += n;
                if read > HANDSHAKE_MAX_BYTES {
                    return Err(format!(
                        "client sent over {HANDSHAKE_MAX_BYTES} bytes without completing it"
                    ));
                }
                tls.cin_end += n;
            }
            Wake::Eof => return Err("client closed the connection".into()),
            Wake::Error(e) => return Err(format!("read failed: {e}")),
            Wake::Timer => return Err(format!("timed out after {timeout:?}")),
            Wake::Shutdown | Wake::HardStop => return Err("server shutting down".into()),
            Wake::Stuck => return Err("no room to read".into()),
        }
    }
}

/// Waits for plaintext: decrypted bytes go into `spare` (the connection's
/// read buffer), as a plain read would put them. Ciphertext is read as
/// needed, with the same bounds as a plain read. What rustls has to send
/// meanwhile (a session ticket, a key update) waits for the next reply's
/// write: an SMTP server answers every command, so it never waits long,
/// and each costs no write of its own. Alerts for bad input are written
/// here, before the connection closes.
pub(super) async fn read_plain(
    stream: &mut TcpStream,
    tls: &mut TlsConn,
    spare: &mut [u8],
    limit: Duration,
    shard: &Shard,
    watch_shutdown: bool,
) -> Wake {
    // The clock is read once per call on the common path (plaintext from
    // the first socket read); a record that takes several reads is
    // bounded by `limit` from that first read's start.
    let start = Instant::now();
    let mut waited = false;
    loop {
        match tls.conn.reader().read(spare) {
            // The client's close_notify.
            Ok(0) => return Wake::Eof,
            Ok(n) => return Wake::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Wake::Error(e),
        }
        if tls.cin_start < tls.cin_end {
            let left = limit.saturating_sub(start.elapsed());
            if let Err(e) = tls.feed(spare.len()) {
                crate::info!(
                    "tls error peer={} shard={}: {e}",
                    stream
                        .peer_addr()
                        .map_or_else(|_| "-".to_string(), |a| a.to_string()),
                    shard.id
                );
                if let Ok(bytes) = tls.seal(&[]) {
                    let _ = write_bounded(stream, bytes, left, shard, true).await;
                }
                return Wake::Error(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            continue;
        }
        let left = match waited {
            false => limit,
            true => limit.saturating_sub(start.elapsed()),
        };
        if left.is_zero() {
            return Wake::Timer;
        }
        waited = true;
        match wait_readable(stream, tls.cin_spare(), left, shard, watch_shutdown).await {
            Wake::Data(n) => tls.cin_end += n,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_read_as_unix_seconds() {
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, b"20261129134442Z"), Some(1_795_959_882));
        assert_eq!(asn1_time(0x18, b"2026112913444Z"), None);
        assert_eq!(asn1_time(0x17, b"700101000000"), None);
        // Not ASCII: a bad time, not a panic slicing inside a character.
        assert_eq!(asn1_time(0x17, "1\u{e9}101000000Z".as_bytes()), None);
        assert_eq!(asn1_time(0x18, "2\u{e9}61129134442Z".as_bytes()), None);
    }

    #[test]
    fn der_lengths_short_and_long() {
        assert_eq!(der(&[0x30, 1, 5, 9]), Some((0x30, &[5u8][..], &[9u8][..])));
        let mut long = vec![0x04, 0x81, 200];
        long.extend(std::iter::repeat_n(7u8, 200));
        assert_eq!(
            der(&long).map(|(_, v, r)| (v.len(), r.len())),
            Some((200, 0))
        );
        assert_eq!(der(&[0x04, 0x81]), None);
        assert_eq!(der(&[0x04, 5, 1]), None);
    }
}
