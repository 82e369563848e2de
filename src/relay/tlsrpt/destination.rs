//! Where a report POST may go. The `rua=` URI comes from a DNS answer that
//! anyone on the path can forge, so without a check it could make the relay
//! POST to the administrator's internal services (a cheap SSRF). Only
//! globally reachable unicast addresses are used, unless
//! `relay.tlsrpt.allow_private_destinations` says otherwise; the check is
//! on the addresses the HTTP client actually connects to (it resolves
//! through [`PublicOnly`]), not on the name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::IpNet;
use crate::dns::{Answer, Dns};

/// True for an address a report may be POSTed to: not in any of the
/// IANA special-purpose ranges that are not globally reachable (RFC 6890
/// and its registries), nor multicast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// `ip` lies in `net/len`: the one CIDR rule of the relay (`IpNet`, as
/// for `relay.allowed_networks`).
fn in_net(ip: IpAddr, net: IpAddr, len: u32) -> bool {
    u8::try_from(len)
        .ok()
        .and_then(|len| IpNet::new(net, len))
        .is_some_and(|n| n.contains(ip))
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    in_net(IpAddr::V4(ip), IpAddr::V4(Ipv4Addr::from(net)), len)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const NOT_GLOBAL: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // RFC 1918
        ([100, 64, 0, 0], 10),   // RFC 6598 shared address space (CGNAT)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local
        ([172, 16, 0, 0], 12),   // RFC 1918
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 31, 196, 0], 24), // AS112-v4
        ([192, 52, 193, 0], 24), // AMT
        ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // RFC 1918
        ([192, 175, 48, 0], 24), // direct delegation AS112
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast
    ];
    !NOT_GLOBAL.iter().any(|(net, len)| in_v4(ip, *net, *len))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    in_net(IpAddr::V6(ip), IpAddr::V6(net), len)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let bits = u128::from(ip);
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        // RFC 6052 NAT64 well-known prefix.
        return is_public_v4(Ipv4Addr::from((bits & 0xffff_ffff) as u32));
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        // 6to4: the IPv4 address follows the prefix.
        return is_public_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    // Only 2000::/3 is global unicast; that excludes ::, ::1, fc00::/7
    // (ULA), fe80::/10 (link-local), ff00::/8 (multicast), 100::/64
    // (discard) and 64:ff9b:1::/48 (local NAT64) at once.
    if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return false;
    }
    const NOT_GLOBAL: &[(Ipv6Addr, u32)] = &[
        // IETF protocol assignments (Teredo, ORCHID, benchmarking…).
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
        // Documentation (RFC 3849, RFC 9637).
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    ];
    !NOT_GLOBAL.iter().any(|(net, len)| in_v6(ip, *net, *len))
}

/// The addresses of `addrs` a POST may use, or why none.
pub fn filter(host: &str, addrs: Vec<IpAddr>, allow_private: bool) -> Result<Vec<IpAddr>, String> {
    if allow_private {
        return Ok(addrs);
    }
    let (public, refused): (Vec<IpAddr>, Vec<IpAddr>) =
        addrs.into_iter().partition(|ip| is_public(*ip));
    if public.is_empty() {
        let list: Vec<String> = refused.iter().map(|ip| ip.to_string()).collect();
        return Err(format!(
            "{host} resolves only to non-public addresses ({}): refused, a forged DNS answer \
             must not make the relay POST into the local network \
             (relay.tlsrpt.allow_private_destinations = true allows it)",
            list.join(", ")
        ));
    }
    Ok(public)
}

/// The HTTP client's resolver: our DNS, minus the refused addresses.
#[derive(Clone)]
pub struct PublicOnly {
    pub dns: Dns,
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let me = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let ips = match me.dns.ips(&host).await {
                Ok(Answer::Records(ips)) => ips,
                Ok(Answer::NoRecords { .. }) => {
                    return Err(format!("{host}: no A or AAAA records").into())
                }
                Err(e) => return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            };
            let ips = filter(&host, ips, me.allow_private)?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn only_global_unicast_is_public() {
        for s in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "193.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2a00:1450::1",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn filter_keeps_public_and_explains_a_refusal() {
        let got = filter("r.test", vec![ip("127.0.0.1"), ip("8.8.8.8")], false).unwrap();
        assert_eq!(got, vec![ip("8.8.8.8")]);
        let e = filter("r.test", vec![ip("10.0.0.1")], false).unwrap_err();
        assert!(
            e.contains("r.test")
                && e.contains("10.0.0.1")
                && e.contains("allow_private_destinations"),
            "{e}"
        );
        assert_eq!(
            filter("r.test", vec![ip("10.0.0.1")], true).unwrap(),
            vec![ip("10.0.0.1")]
        );
    }
}
