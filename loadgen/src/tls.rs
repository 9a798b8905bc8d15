//! TLS for the generator's connections: `--starttls` (RFC 3207) and `--tls`
//! (implicit, port 465 style), with rustls and its `ring` provider.
//!
//! rustls is driven bytes in / bytes out over the same glommio `TcpStream`
//! the plaintext path uses: [`Transport`] reads ciphertext from the socket,
//! feeds it to the [`ClientConnection`] and hands the plaintext to the
//! client's own read buffer, and encrypts each write into one reused buffer
//! that goes out with one `write_all`. So `client.rs` keeps its I/O model
//! (one read into its buffer, one write per pipelined group) and its
//! per-read timeouts, which glommio applies to the socket underneath.
//!
//! The client config is built once per run and shared by every core. Session
//! resumption is off unless `--tls-resume`: each handshake is then a full
//! one, the cost a receiving MX pays for a sender it has not seen.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};
use rustls::{HandshakeKind, SignatureScheme};
use serde::{Deserialize, Serialize};

/// When TLS starts on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// After the greeting and EHLO, with STARTTLS; EHLO is said again inside.
    StartTls,
    /// Right after the TCP connect, before the greeting.
    Implicit,
}

impl TlsMode {
    /// The flag that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            TlsMode::StartTls => "--starttls",
            TlsMode::Implicit => "--tls",
        }
    }
}

/// The TLS flags of a run, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// STARTTLS or implicit.
    pub mode: TlsMode,
    /// `--tls-ca`: PEM file of the CA certificates to trust.
    pub ca: Option<PathBuf>,
    /// `--tls-insecure`: accept any certificate (signatures still checked,
    /// so the handshake costs what a verifying one does, less the chain).
    pub insecure: bool,
    /// The name to send as SNI and to verify the certificate against: a DNS
    /// name, or an IP address (then no SNI is sent, as RFC 6066 §3 says).
    pub server_name: String,
    /// `--tls-resume`: allow session resumption (tickets or ids).
    pub resume: bool,
}

/// TLS as a run uses it: the shared client config and the name to present.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// STARTTLS or implicit.
    pub mode: TlsMode,
    /// Shared by every connection of every core.
    pub config: Arc<ClientConfig>,
    /// SNI and verification name.
    pub server_name: ServerName<'static>,
}

impl TlsSetup {
    /// Builds the client config for `opts`: TLS 1.2 and 1.3, ring provider.
    ///
    /// # Errors
    /// A sentence naming the flag or file at fault and what to do.
    pub fn new(opts: &TlsOptions) -> Result<TlsSetup, String> {
        let flag = opts.mode.flag();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{flag}: the TLS provider refused its defaults: {e}"))?;
        let mut config = match (&opts.ca, opts.insecure) {
            (Some(_), true) => {
                return Err("give --tls-ca FILE or --tls-insecure, not both".into());
            }
            (None, false) => {
                return Err(format!(
                    "{flag} needs --tls-ca FILE (PEM, the CA that signed the server's \
                     certificate) or --tls-insecure (accept any certificate)"
                ));
            }
            (Some(path), false) => builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        if !opts.resume {
            config.resumption = Resumption::disabled();
        }
        let server_name = server_name(&opts.server_name)?;
        Ok(TlsSetup {
            mode: opts.mode,
            config: Arc::new(config),
            server_name,
        })
    }
}

/// `--tls-sni`, or the host part of `--target`.
fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    // `[::1]` as written in HOST:PORT.
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string()).map_err(|_| {
        format!("TLS server name {name:?} is not a DNS name or an IP address; give --tls-sni NAME")
    })
}

/// The certificates of a PEM file as trust anchors.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let bad = |why: String| format!("--tls-ca {}: {why}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in it (expected PEM)".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate is not usable as a CA: {e}")))?;
    }
    Ok(roots)
}

/// `--tls-insecure`: any certificate chain is accepted, but the handshake
/// signatures are verified with the provider's algorithms, so the client's
/// CPU cost stays close to a verifying client's.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Ciphertext read from the socket at a time: one TLS record's worth.
const TLS_READ_BYTES: usize = 18 * 1024;

/// A connection's byte stream: plain TCP, or TLS over it.
pub enum Transport {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS; boxed because a `ClientConnection` is large.
    Tls(Box<TlsStream>),
    /// Gone: a handshake that failed took the socket with it.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

/// rustls over a socket, with the buffers it needs.
pub struct TlsStream {
    stream: TcpStream,
    tls: ClientConnection,
    /// Ciphertext from the socket not yet taken by rustls.
    inbuf: Vec<u8>,
    instart: usize,
    inend: usize,
    /// Ciphertext for the socket, reused for every write.
    outbuf: Vec<u8>,
}

/// How a handshake ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    /// An abbreviated handshake (session resumed).
    pub resumed: bool,
}

impl Transport {
    /// The socket underneath, for timeouts.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(t) => Some(&t.stream),
            Transport::Closed => None,
        }
    }

    /// Starts TLS on a plain transport and completes the handshake.
    ///
    /// # Errors
    /// An I/O error whose text says why the handshake failed (rustls's
    /// reason, e.g. an unknown issuer, with a hint at `--tls-ca`); kind
    /// `InvalidData` for TLS errors, so the caller can tell them from
    /// socket errors.
    pub async fn start_tls(self, setup: &TlsSetup) -> Result<(Transport, Established), io::Error> {
        let stream = match self {
            Transport::Plain(s) => s,
            Transport::Tls(_) => {
                return Err(io::Error::other("TLS is already on for this connection"))
            }
            Transport::Closed => return Err(closed()),
        };
        let tls = ClientConnection::new(setup.config.clone(), setup.server_name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut t = Box::new(TlsStream {
            stream,
            tls,
            inbuf: vec![0; TLS_READ_BYTES],
            instart: 0,
            inend: 0,
            outbuf: Vec::new(),
        });
        t.handshake().await?;
        let resumed = t.tls.handshake_kind() == Some(HandshakeKind::Resumed);
        Ok((Transport::Tls(t), Established { resumed }))
    }

    /// Writes all of `bytes` (encrypted when TLS is on).
    ///
    /// # Errors
    /// The socket's error, or a TLS error (kind `InvalidData`).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.write_all(bytes).await,
            Transport::Tls(t) => {
                t.tls.writer().write_all(bytes)?;
                t.flush().await
            }
            Transport::Closed => Err(closed()),
        }
    }

    /// Says close_notify (TLS only), as a client ending the session cleanly
    /// does after QUIT's reply.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn close_notify(&mut self) -> io::Result<()> {
        match self {
            Transport::Tls(t) => {
                t.tls.send_close_notify();
                t.flush().await
            }
            Transport::Plain(_) | Transport::Closed => Ok(()),
        }
    }

    /// Reads into `buf`; 0 at the end of the stream (a TLS close_notify, or
    /// the peer closing the socket).
    ///
    /// # Errors
    /// The socket's error, or a TLS error (kind `InvalidData`).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf).await,
            Transport::Tls(t) => t.read(buf).await,
            Transport::Closed => Err(closed()),
        }
    }
}

impl TlsStream {
    /// Sends whatever rustls has queued for the peer.
    async fn flush(&mut self) -> io::Result<()> {
        self.outbuf.clear();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.outbuf)?;
        }
        if !self.outbuf.is_empty() {
            self.stream.write_all(&self.outbuf).await?;
        }
        Ok(())
    }

    /// Reads ciphertext from the socket into rustls and processes it.
    /// Returns false at the end of the socket's stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.instart == self.inend {
            let n = self.stream.read(&mut self.inbuf).await?;
            if n == 0 {
                return Ok(false);
            }
            self.instart = 0;
            self.inend = n;
        }
        // rustls takes at most what its own buffer has room for; the rest
        // waits in `inbuf` for the next call.
        let used = self
            .tls
            .read_tls(&mut &self.inbuf[self.instart..self.inend])?;
        self.instart += used;
        if let Err(e) = self.tls.process_new_packets() {
            // Tell the peer why (an alert), then give up on the connection.
            let _ = self.flush().await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                tls_error_text(&e),
            ));
        }
        Ok(true)
    }

    async fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.flush().await?;
            if !self.tls.is_handshaking() {
                break;
            }
            if !self.fill().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ));
            }
        }
        // TLS 1.3: the client's Finished may still be queued.
        self.flush().await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                // No plaintext yet: read more ciphertext.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !self.fill().await? {
                // The socket closed without close_notify: the end, as far as
                // SMTP replies go (the caller counts what it was waiting for).
                return Ok(0);
            }
            // Post-handshake messages (TLS 1.3 tickets, key updates) may want
            // an answer.
            if self.tls.wants_write() {
                self.flush().await?;
            }
        }
    }
}

/// rustls's reason for a failed handshake, with what to do about the common one.
fn tls_error_text(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => format!(
            "TLS: the server's certificate was not accepted ({why:?}); give --tls-ca with \
             the CA that signed it, --tls-sni with the name it is for, or --tls-insecure"
        ),
        other => format!("TLS: {other}"),
    }
}
