//! Listener sockets: one per shard per listen address, built with socket2 and
//! shared between shards by SO_REUSEPORT.
//!
//! Owns: the port-in-use probe, socket options (SO_REUSEPORT, SO_REUSEADDR,
//! IPV6_V6ONLY, TCP_NODELAY, the listen backlog) and port-0 resolution.
//! Leaves to `shard.rs`: handing each socket to its executor
//! (`glommio::net::TcpListener::from_raw_fd`) and accepting.
//!
//! glommio's own `TcpListener::bind` always sets SO_REUSEPORT and fixes the
//! backlog at 1024, hence socket2. SO_REUSEPORT alone would let this process
//! silently share a port with another process of the same user that also set
//! it (a second ringmx, say), splitting the traffic between the two; so before
//! binding, each address is probed with a plain bind (SO_REUSEADDR only,
//! which tolerates TIME_WAIT leftovers of an earlier run but not a listener),
//! and an address that is taken is refused.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::ServerConfig;

/// Why the listen sockets could not be set up; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process holds the address (probed without SO_REUSEPORT).
    #[error("{0} is already in use by another process")]
    InUse(SocketAddr),
    /// The address does not belong to this host.
    #[error("cannot listen on {0}: the address is not available on this host")]
    NotAvailable(SocketAddr),
    /// A privileged port without the privilege.
    #[error("cannot listen on {0}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
    Denied(SocketAddr),
    /// Any other socket error.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The address being set up.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// The sockets of every shard, ready to be handed to their executors.
#[derive(Debug)]
pub struct Bound {
    /// `per_shard[s][i]` listens on `addrs[i]` for shard `s`.
    pub per_shard: Vec<Vec<Socket>>,
    /// The addresses actually bound (port 0 resolved), in `--listen` order.
    pub addrs: Vec<SocketAddr>,
}

/// Probes every address, then binds `shards` SO_REUSEPORT sockets on each.
/// With port 0 the first shard's socket picks the port and the other
/// shards bind that port.
///
/// # Errors
/// The first address that cannot be used, as a [`ListenError`].
pub fn bind_all(
    listen: &[SocketAddr],
    shards: usize,
    cfg: &ServerConfig,
) -> Result<Bound, ListenError> {
    for &addr in listen {
        if addr.port() != 0 {
            probe(addr)?;
        }
    }
    let mut per_shard: Vec<Vec<Socket>> = (0..shards).map(|_| Vec::new()).collect();
    let mut addrs = Vec::with_capacity(listen.len());
    for &want in listen {
        let mut actual = want;
        for sockets in per_shard.iter_mut() {
            let s = bind_one(actual, cfg).map_err(|e| classify(actual, e))?;
            if actual.port() == 0 {
                actual = s
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .ok_or_else(|| classify(want, io::Error::other("no local address")))?;
            }
            sockets.push(s);
        }
        addrs.push(actual);
    }
    Ok(Bound { per_shard, addrs })
}

/// A plain bind, without SO_REUSEPORT: fails with EADDRINUSE if anyone
/// listens on `addr` (or on the wildcard address of its port).
fn probe(addr: SocketAddr) -> Result<(), ListenError> {
    let s = new_socket(addr).map_err(|e| classify(addr, e))?;
    s.set_reuse_address(true).map_err(|e| classify(addr, e))?;
    match s.bind(&SockAddr::from(addr)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(ListenError::InUse(addr)),
        Err(e) => Err(classify(addr, e)),
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 are separate listeners: list both to get both.
        s.set_only_v6(true)?;
    }
    Ok(s)
}

fn bind_one(addr: SocketAddr, cfg: &ServerConfig) -> io::Result<Socket> {
    let s = new_socket(addr)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which
    // saves a setsockopt per connection.
    s.set_nodelay(cfg.tcp_nodelay)?;
    s.bind(&SockAddr::from(addr))?;
    let backlog = i32::try_from(cfg.backlog).unwrap_or(i32::MAX);
    s.listen(backlog)?;
    Ok(s)
}

fn classify(addr: SocketAddr, e: io::Error) -> ListenError {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => ListenError::InUse(addr),
        Some(libc::EADDRNOTAVAIL) => ListenError::NotAvailable(addr),
        Some(libc::EACCES) | Some(libc::EPERM) => ListenError::Denied(addr),
        _ => ListenError::Io { addr, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServerConfig {
        ServerConfig::default()
    }

    #[test]
    fn port_zero_gives_every_shard_the_same_port() {
        let b = bind_all(&["127.0.0.1:0".parse().unwrap()], 3, &cfg()).unwrap();
        let port = b.addrs[0].port();
        assert_ne!(port, 0);
        for s in &b.per_shard {
            assert_eq!(s[0].local_addr().unwrap().as_socket().unwrap().port(), port);
            assert!(s[0].reuse_port().unwrap());
        }
    }

    #[test]
    fn a_port_held_by_a_plain_listener_is_refused() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        let err = bind_all(&[addr], 1, &cfg()).unwrap_err();
        assert!(matches!(err, ListenError::InUse(a) if a == addr), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{addr} is already in use by another process")
        );
    }

    #[test]
    fn a_port_held_by_another_reuseport_listener_is_refused() {
        // What a second ringmx would look like: SO_REUSEPORT, same user.
        let first = bind_all(&["127.0.0.1:0".parse().unwrap()], 1, &cfg()).unwrap();
        let err = bind_all(&first.addrs, 1, &cfg()).unwrap_err();
        assert!(matches!(err, ListenError::InUse(_)), "{err}");
    }

    #[test]
    fn nodelay_follows_the_config() {
        let mut c = cfg();
        c.tcp_nodelay = false;
        let b = bind_all(&["127.0.0.1:0".parse().unwrap()], 1, &c).unwrap();
        assert!(!b.per_shard[0][0].nodelay().unwrap());
    }
}
