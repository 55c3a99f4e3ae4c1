//! Who is calling: the client address behind trusted proxies (`X-Forwarded-For`), and CIDR lists.

pub use crate::config::cidr::{Cidr, CidrError};
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// Whether `ip` lies in any of `nets` (an IPv4-mapped IPv6 address counts as its IPv4 address).
pub fn contains(nets: &[Cidr], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.0.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The TCP peer of a connection, put into every request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy (or the left-most when all are). An
/// entry that is not an IP address ends the walk: the proxy that added it is the client.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !contains(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for(headers).rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if contains(trusted, ip) => client = canonical(ip),
            Ok(ip) => return canonical(ip),
            Err(_) => return client,
        }
    }
    client
}

/// Every `X-Forwarded-For` entry, in order (several headers count as one list).
fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        let n = nets(&["10.1.2.3/8", "192.0.2.7", "2001:db8::/32", "::1"]);
        assert_eq!(n[0].to_string(), "10.0.0.0/8");
        assert!(contains(&n, ip("10.9.9.9")));
        assert!(contains(&n, ip("192.0.2.7")));
        assert!(!contains(&n, ip("192.0.2.8")));
        assert!(contains(&n, ip("2001:db8::5")));
        assert!(
            contains(&n, ip("::ffff:10.0.0.1")),
            "v4-mapped counts as v4"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn the_header_is_ignored_from_an_untrusted_peer() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_ip(ip("203.0.113.9"), &xff("192.0.2.1"), &trusted);
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = xff("192.0.2.66, 198.51.100.4, 10.0.0.2");
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.4"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("10.0.0.3, 10.0.0.2"), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("1.2.3.4, junk, 10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }
}
