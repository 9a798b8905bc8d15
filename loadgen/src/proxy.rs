//! `--proxy-source IP|CIDR`: loadgen plays the load balancer and opens
//! each connection with a PROXY protocol v2 header, so that a server with
//! PROXY listeners sees many clients where there is one loadgen. Each
//! connection takes the next address of the range, in turn.
//!
//! Owns the address sequence and the header bytes (written by `ppp`'s
//! builder); [`crate::client`] sends them right after connecting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use ppp::v2;

/// Connections given an address so far, over all cores: the next one
/// takes the address after.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Parses `--proxy-source`: a CIDR (`10.0.0.0/16`: its 65,536 addresses)
/// or one address (`192.0.2.1`).
///
/// # Errors
/// A message naming both accepted forms.
pub fn parse_source(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?}: give an IP address or a CIDR such as 10.0.0.0/16"))
}

/// The `n`th address of `net` (wrapping round after its last).
pub fn nth_address(net: IpNet, n: u64) -> IpAddr {
    match net {
        IpNet::V4(v4) => {
            let size = 1u64 << (32 - u32::from(v4.prefix_len()));
            let base = u32::from(v4.network());
            IpAddr::V4(Ipv4Addr::from(base.wrapping_add((n % size) as u32)))
        }
        IpNet::V6(v6) => {
            let host_bits = 128 - u32::from(v6.prefix_len());
            let size = if host_bits >= 64 {
                u64::MAX
            } else {
                1u64 << host_bits
            };
            let base = u128::from(v6.network());
            IpAddr::V6(Ipv6Addr::from(base.wrapping_add(u128::from(n % size))))
        }
    }
}

/// The v2 `PROXY` header for the next connection from `net`, with its
/// local port as the source port and `target` as the destination (the
/// unspecified address of the source's family where the families differ).
pub fn next_header(net: IpNet, local_port: u16, target: SocketAddr) -> Vec<u8> {
    let ip = nth_address(net, NEXT.fetch_add(1, Ordering::Relaxed));
    header(SocketAddr::new(ip, local_port), target)
}

/// The v2 `PROXY` (command) `STREAM` header from `source` to `target`.
pub fn header(source: SocketAddr, target: SocketAddr) -> Vec<u8> {
    let dest = match (source, target) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => target,
        (SocketAddr::V4(_), SocketAddr::V6(_)) => {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, target.port()))
        }
        (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, target.port()))
        }
    };
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (source, dest),
    )
    .build()
    // Building into a Vec cannot fail: its writes are infallible and the
    // addresses' length fits the u16 length field.
    .expect("PROXY v2 header into a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_walk_the_range_and_wrap() {
        let net = parse_source("10.0.0.0/30").unwrap();
        let got: Vec<String> = (0..5).map(|n| nth_address(net, n).to_string()).collect();
        assert_eq!(
            got,
            ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.0"]
        );
        let one = parse_source("192.0.2.7").unwrap();
        assert_eq!(nth_address(one, 9).to_string(), "192.0.2.7");
        let v6 = parse_source("2001:db8::/120").unwrap();
        assert_eq!(nth_address(v6, 257).to_string(), "2001:db8::1");
        assert!(parse_source("10.0.0.0/33").is_err());
        assert!(parse_source("example.com").is_err());
    }

    #[test]
    fn the_header_parses_back_to_its_source() {
        let src: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let h = header(src, "127.0.0.1:2525".parse().unwrap());
        let parsed = v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.len(), h.len());
        match parsed.addresses {
            v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_address.to_string(), "10.1.2.3");
                assert_eq!(a.source_port, 4567);
                assert_eq!(a.destination_port, 2525);
            }
            other => panic!("{other:?}"),
        }
        let h6 = header(
            "[2001:db8::1]:1".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        assert!(matches!(
            v2::Header::try_from(h6.as_slice()).unwrap().addresses,
            v2::Addresses::IPv6(_)
        ));
    }
}
