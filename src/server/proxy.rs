//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): a load
//! balancer in front of ringmx writes one header with the client's real
//! address before the client's first byte. This module decides, once per
//! connection and before the greeting, which address the connection is
//! from: `client_address` is the one place that yields it, whether the
//! listeners expect the header (`server.proxy_protocol`) or not.
//!
//! Owns: the trust check on the socket's peer (`server.trusted_proxy`), the
//! header deadline (`server.proxy_header_timeout`), auto-detecting v1/v2
//! ([`parse`], sans-IO; the `ppp` crate reads the bytes), refusing a second
//! header ([`starts_header`]) and the reason each refusal is logged with.
//! Leaves to `super::conn`: the read buffer (the bytes after the header
//! stay in it, unconsumed, for the session: SMTP pipelined behind the
//! header is answered once, never parsed as part of it) and closing a
//! refused connection without a greeting.
//!
//! Rules, as Postfix's `smtpd_upstream_proxy_protocol`: on such a listener
//! every connection must come from a trusted proxy and start with exactly
//! one header, complete within the timeout; anything else is closed without
//! a greeting. v2 `LOCAL` (the balancer's health check) and v1 `UNKNOWN`
//! keep the socket's address; TLVs are never read (skipped by the header's
//! length); an IPv4-mapped IPv6 address is shown as IPv4.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use ipnet::IpNet;
use ppp::{v1, v2, PartialResult};

use super::conn::{wait_readable, ReadBuf, Wake};
use super::shard::Shard;

/// The first bytes of a v1 header. A second header is recognised by these
/// or by [`v2::PROTOCOL_PREFIX`].
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// What [`parse`] found at the start of a connection's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header, not all of it read yet: read more.
    Partial,
    /// A whole header of `len` bytes. `source`: the client's address it
    /// carries; `None` where the header says to use the socket's (v2
    /// `LOCAL`, v1 `UNKNOWN`, a v2 address family other than IPv4/IPv6).
    Header {
        /// Bytes the header takes, TLVs included.
        len: usize,
        /// The real client, canonical ([`canonical`]).
        source: Option<SocketAddr>,
    },
}

/// Why a connection on a PROXY listener was closed without a greeting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The socket's peer is not in `server.trusted_proxy`: it may not say
    /// who the client is.
    #[error("{0} is not a trusted proxy: add it to --trusted-proxy, or connect through the proxy")]
    Untrusted(IpAddr),
    /// Not a PROXY header, or a broken one.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// A second header right after the first (a client behind the proxy
    /// trying to choose its own address).
    #[error("a second PROXY header follows the first")]
    Second,
    /// The header did not arrive whole in time.
    #[error("no complete PROXY header within {0:?} (server.proxy_header_timeout)")]
    Timeout(Duration),
    /// A v2 header longer than the read buffer.
    #[error("PROXY header longer than the {0}-byte read buffer (server.read_buffer_bytes)")]
    TooLong(usize),
    /// The peer closed before the header was whole.
    #[error("closed before a complete PROXY header")]
    Closed,
    /// Reading the header failed.
    #[error("reading the PROXY header failed: {0:?}")]
    Read(io::ErrorKind),
    /// The server is shutting down.
    #[error("server shutting down")]
    Shutdown,
}

impl ProxyError {
    /// A short name for the connection's log line (`outcome=proxy-<name>`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ProxyError::Untrusted(_) => "untrusted",
            ProxyError::Malformed(_) => "malformed",
            ProxyError::Second => "second-header",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::TooLong(_) => "too-long",
            ProxyError::Closed => "closed",
            ProxyError::Read(_) => "read-error",
            ProxyError::Shutdown => "shutdown",
        }
    }
}

/// Parses the header at the start of `input`, v1 or v2 by its first byte
/// (`P` or `\r`). Bytes after the header are not looked at.
///
/// # Errors
/// [`ProxyError::Malformed`]: `input` cannot become a valid header, with
/// the parser's reason.
///
/// # Example
/// ```
/// use ringmx::server::proxy::{parse, Parsed};
/// let got = parse(b"PROXY TCP4 192.0.2.1 198.51.100.1 4000 25\r\nEHLO x\r\n").unwrap();
/// assert_eq!(got, Parsed::Header { len: 43, source: Some("192.0.2.1:4000".parse().unwrap()) });
/// assert_eq!(parse(b"PROXY TCP4 192.0").unwrap(), Parsed::Partial);
/// ```
pub fn parse(input: &[u8]) -> Result<Parsed, ProxyError> {
    match input.first() {
        None => Ok(Parsed::Partial),
        Some(b'\r') => parse_v2(input),
        Some(_) => parse_v1(input),
    }
}

/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX_BYTES: usize = 107;

fn parse_v1(input: &[u8]) -> Result<Parsed, ProxyError> {
    let n = input.len().min(V1_SIGNATURE.len());
    if input[..n] != V1_SIGNATURE[..n] {
        return Err(ProxyError::Malformed(
            "neither a v1 (\"PROXY \") nor a v2 header".into(),
        ));
    }
    // ppp is given whole lines only: it takes a line cut between CR and
    // LF for a bad last field, not for a partial header.
    let Some(lf) = memchr::memchr(b'\n', input) else {
        if input.len() >= V1_MAX_BYTES {
            return Err(ProxyError::Malformed(format!(
                "v1: no line end within {V1_MAX_BYTES} bytes"
            )));
        }
        return Ok(Parsed::Partial);
    };
    let r = v1::Header::try_from(&input[..=lf]);
    if r.is_incomplete() {
        return Err(ProxyError::Malformed("v1: a field is missing".into()));
    }
    let h = r.map_err(|e| ProxyError::Malformed(format!("v1: {e}")))?;
    let source = match h.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    };
    Ok(Parsed::Header {
        len: h.header.len(),
        source: source.map(canonical),
    })
}

fn parse_v2(input: &[u8]) -> Result<Parsed, ProxyError> {
    let r = v2::Header::try_from(input);
    if r.is_incomplete() {
        return Ok(Parsed::Partial);
    }
    let h = r.map_err(|e| ProxyError::Malformed(format!("v2: {e}")))?;
    let source = match h.command {
        // A connection the balancer made itself (health check).
        v2::Command::Local => None,
        v2::Command::Proxy => {
            if h.protocol == v2::Protocol::Datagram {
                return Err(ProxyError::Malformed(
                    "v2: a datagram (UDP) header on a TCP connection".into(),
                ));
            }
            match h.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                // The spec: unknown or unix families use the socket's.
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            }
        }
    };
    Ok(Parsed::Header {
        len: h.len(),
        source: source.map(canonical),
    })
}

/// Whether `rest`, the input after a header, starts another one: `Some`
/// when that can be told, `None` when `rest` is a proper prefix of a
/// header's signature (read more to know). Nothing after the header is
/// `Some(false)`: an SMTP client waits for the greeting.
pub fn starts_header(rest: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for sig in [V1_SIGNATURE, v2::PROTOCOL_PREFIX] {
        let n = rest.len().min(sig.len());
        if rest[..n] == sig[..n] {
            if n == sig.len() {
                return Some(true);
            }
            undecided |= n > 0;
        }
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack socket
/// or a v6 header gives an IPv4 client) as the IPv4 address it is, so logs,
/// limits and the spool name one client one way.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Whether `ip` may send a PROXY header.
pub fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = canonical(SocketAddr::new(ip, 0)).ip();
    proxies.iter().any(|n| n.contains(&ip))
}

/// Who a connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Peer {
    /// The real client: the PROXY header's source, else the socket's peer
    /// (canonical). What logs, limits, `Received:` and the spool use.
    pub client: Option<SocketAddr>,
    /// The proxy's address, when a header named another client.
    pub via: Option<SocketAddr>,
    /// Bytes read so far (the header and whatever followed it).
    pub bytes_in: u64,
}

/// A refused connection: why, and what its log line needs.
#[derive(Debug)]
pub(super) struct Refused {
    pub error: ProxyError,
    /// The socket's peer (canonical).
    pub peer: Option<SocketAddr>,
    pub bytes_in: u64,
}

/// The real client address of a freshly accepted connection: the socket's
/// peer, or on a PROXY listener (`proxy_listener`: `server.listen_proxy`; or any
/// with `server.proxy_protocol`) the one the PROXY header
/// gives (read here, into `rbuf`, which keeps whatever follows the header).
/// The one place the connection's address is decided: everything after it
/// (per-client limits included) uses [`Peer::client`].
///
/// # Errors
/// [`Refused`]: close the connection without a greeting; the reason is
/// already logged.
pub(super) async fn client_address(
    shard: &Shard,
    stream: &mut TcpStream,
    rbuf: &mut ReadBuf,
    proxy_listener: bool,
) -> Result<Peer, Refused> {
    let socket = stream.peer_addr().ok().map(canonical);
    let cfg = &shard.server;
    if !(proxy_listener || cfg.proxy_protocol) {
        return Ok(Peer {
            client: socket,
            via: None,
            bytes_in: 0,
        });
    }
    let mut bytes_in = 0;
    let r = read_header(shard, stream, rbuf, socket, &mut bytes_in).await;
    match r {
        Ok(client) => Ok(Peer {
            client: client.or(socket),
            via: client.and(socket),
            bytes_in,
        }),
        Err(error) => {
            crate::info!(
                "shard {}: PROXY: closing {} without a greeting: {error}",
                shard.id,
                socket.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            );
            Err(Refused {
                error,
                peer: socket,
                bytes_in,
            })
        }
    }
}

/// Checks trust, then reads until one whole header and enough after it to
/// know it is not followed by a second; consumes the header from `rbuf`.
/// `Ok(None)`: the header says to use the socket's address.
async fn read_header(
    shard: &Shard,
    stream: &mut TcpStream,
    rbuf: &mut ReadBuf,
    socket: Option<SocketAddr>,
    bytes_in: &mut u64,
) -> Result<Option<SocketAddr>, ProxyError> {
    let cfg = &shard.server;
    match socket {
        Some(a) if trusted(a.ip(), &cfg.trusted_proxy) => {}
        Some(a) => return Err(ProxyError::Untrusted(a.ip())),
        // No peer address (the socket is already gone): nothing to trust.
        None => return Err(ProxyError::Closed),
    }
    let timeout = cfg.proxy_header_timeout;
    let until = Instant::now() + timeout;
    let size = cfg.read_buffer_bytes;
    let mut header: Option<(usize, Option<SocketAddr>)> = None;
    loop {
        let data = rbuf.data();
        match header {
            None => {
                if let Parsed::Header { len, source } = parse(data)? {
                    header = Some((len, source));
                    continue;
                }
            }
            Some((len, source)) => match starts_header(&data[len..]) {
                Some(true) => return Err(ProxyError::Second),
                Some(false) => {
                    rbuf.consume(len);
                    return Ok(source);
                }
                None => {}
            },
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProxyError::Timeout(timeout));
        }
        let spare = rbuf.spare(size);
        if spare.is_empty() {
            return Err(ProxyError::TooLong(size));
        }
        match wait_readable(stream, spare, left, shard, true).await {
            Wake::Data(n) => {
                rbuf.filled(n);
                *bytes_in += n as u64;
            }
            Wake::Eof => return Err(ProxyError::Closed),
            Wake::Error(e) => return Err(ProxyError::Read(e.kind())),
            // Checked at the top of the loop.
            Wake::Timer => {}
            Wake::Shutdown | Wake::HardStop => return Err(ProxyError::Shutdown),
            Wake::Stuck => return Err(ProxyError::TooLong(size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(cmd: u8, fam: u8, addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&((addr.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlvs);
        h
    }

    /// 192.0.2.1:4000 -> 198.51.100.1:25.
    const V4_ADDR: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 1, 0x0f, 0xa0, 0, 25];

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1_and_v2_give_the_source_and_their_length() {
        let v1 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 25\r\n";
        assert_eq!(
            parse(v1).unwrap(),
            Parsed::Header {
                len: v1.len(),
                source: addr("[2001:db8::1]:4000")
            }
        );
        let v2 = v2_header(1, 0x11, &V4_ADDR, &[]);
        assert_eq!(
            parse(&v2).unwrap(),
            Parsed::Header {
                len: 28,
                source: addr("192.0.2.1:4000")
            }
        );
    }

    #[test]
    fn every_proper_prefix_is_partial_and_the_tail_is_not_read() {
        let mut v2 = v2_header(1, 0x11, &V4_ADDR, &[]);
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 4000 25\r\n".to_vec();
        for h in [&v1, &v2] {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]).unwrap(), Parsed::Partial, "cut at {cut}");
            }
        }
        let len = v2.len();
        v2.extend_from_slice(b"EHLO x\r\n");
        assert!(matches!(parse(&v2).unwrap(), Parsed::Header { len: l, .. } if l == len));
    }

    #[test]
    fn local_unknown_and_unix_use_the_socket_address() {
        let local = v2_header(0, 0x11, &V4_ADDR, &[]);
        let unspec = v2_header(1, 0x00, &[], &[]);
        let unix = v2_header(1, 0x31, &[0; 216], &[]);
        for h in [&local, &unspec, &unix] {
            assert_eq!(
                parse(h).unwrap(),
                Parsed::Header {
                    len: h.len(),
                    source: None
                }
            );
        }
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown).unwrap(),
            Parsed::Header {
                len: unknown.len(),
                source: None
            }
        );
    }

    #[test]
    fn tlvs_are_skipped_even_broken_ones() {
        // An ALPN TLV, then one whose length runs past the header's end.
        let tlvs = [0x01, 0, 4, b's', b'm', b't', b'p', 0xee, 0x40, 0x00];
        let h = v2_header(1, 0x11, &V4_ADDR, &tlvs);
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Header {
                len: h.len(),
                source: addr("192.0.2.1:4000")
            }
        );
    }

    #[test]
    fn ipv4_mapped_sources_are_shown_as_ipv4() {
        let v1 = b"PROXY TCP6 ::ffff:192.0.2.9 ::ffff:198.51.100.1 4000 25\r\n";
        assert!(matches!(
            parse(v1).unwrap(),
            Parsed::Header { source: Some(a), .. } if a == "192.0.2.9:4000".parse().unwrap()
        ));
        let mut addr6 = [0u8; 36];
        addr6[10] = 0xff;
        addr6[11] = 0xff;
        addr6[12..16].copy_from_slice(&[192, 0, 2, 9]);
        addr6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let v2 = v2_header(1, 0x21, &addr6, &[]);
        assert!(matches!(
            parse(&v2).unwrap(),
            Parsed::Header { source: Some(a), .. } if a == "192.0.2.9:4000".parse().unwrap()
        ));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            b"EHLO client.example\r\n".to_vec(),
            b"PROXY TCP4 192.0.2.1 198.51.100.1 4000\r\n".to_vec(),
            b"PROXY TCP4 300.0.2.1 198.51.100.1 4000 25\r\n".to_vec(),
            b"PROXY TCP9 192.0.2.1 198.51.100.1 4000 25\r\n".to_vec(),
            // No CRLF within v1's 107 bytes.
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
            // Version 1 in a v2 header, an unknown command, a family, UDP.
            {
                let mut h = v2_header(1, 0x11, &V4_ADDR, &[]);
                h[12] = 0x11;
                h
            },
            v2_header(2, 0x11, &V4_ADDR, &[]),
            v2_header(1, 0x41, &V4_ADDR, &[]),
            v2_header(1, 0x12, &V4_ADDR, &[]),
            // Shorter than its family's addresses.
            v2_header(1, 0x21, &V4_ADDR, &[]),
            b"\r\n\r\nEHLO x\r\n\r\n\r\n\r\n".to_vec(),
        ];
        for c in cases {
            let r = parse(&c);
            assert!(
                matches!(r, Err(ProxyError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(&c)
            );
        }
    }

    #[test]
    fn a_second_header_is_seen_from_its_first_bytes() {
        let v2 = v2_header(1, 0x11, &V4_ADDR, &[]);
        assert_eq!(starts_header(b""), Some(false));
        assert_eq!(starts_header(b"EHLO x\r\n"), Some(false));
        assert_eq!(starts_header(b"PROXY TCP4 "), Some(true));
        assert_eq!(starts_header(&v2), Some(true));
        for cut in 1..V1_SIGNATURE.len() {
            assert_eq!(starts_header(&V1_SIGNATURE[..cut]), None);
        }
        for cut in 1..v2::PROTOCOL_PREFIX.len() {
            assert_eq!(starts_header(&v2[..cut]), None);
        }
        assert_eq!(starts_header(b"PROXIMITY"), Some(false));
    }

    #[test]
    fn trust_is_by_cidr_and_mapped_addresses_match_ipv4_nets() {
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        assert!(trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("2001:db8::7".parse().unwrap(), &nets));
        assert!(!trusted("11.0.0.1".parse().unwrap(), &nets));
        assert!(!trusted("127.0.0.1".parse().unwrap(), &[]));
    }
}
