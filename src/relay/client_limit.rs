//! Connections per client address: one host, however many sockets it
//! opens, holds at most `relay.max_connections_per_client` session slots,
//! so it cannot lock every other client out.

use crate::sync::Recover;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The unit a limit counts: an IPv4 address, or an IPv6 /64 (one site
/// usually holds a whole /64, so counting single IPv6 addresses would let
/// one host open millions of "clients").
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

/// Open connections by client address.
#[derive(Clone)]
pub struct ClientLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its address until dropped.
pub struct ClientPermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ClientLimit {
    pub fn new(max: usize) -> ClientLimit {
        ClientLimit {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A permit for one more connection from `ip`, unless it has `max`.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<ClientPermit> {
        let ip = client_key(ip);
        let mut open = self.open.locked();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientPermit {
            ip,
            open: self.open.clone(),
        })
    }

    /// Connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.locked();
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut open = self.open.locked();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            // An address with no connection costs no memory.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_capped_and_released() {
        let limit = ClientLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let p1 = limit.try_acquire(a);
        let p2 = limit.try_acquire(a);
        assert!(p1.is_some() && p2.is_some());
        assert!(limit.try_acquire(a).is_none());
        assert!(
            limit.try_acquire(b).is_some(),
            "another address is not affected"
        );
        drop(p1);
        assert_eq!(limit.open(a), 1);
        assert!(limit.try_acquire(a).is_some());
        drop(p2);
        assert_eq!(limit.open.lock().map(|m| m.len()).unwrap_or(9), 0);
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_client() {
        let limit = ClientLimit::new(1);
        let parse = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let held = limit.try_acquire(parse("2001:db8:1:2::1"));
        assert!(held.is_some());
        assert!(limit.try_acquire(parse("2001:db8:1:2:ffff::9")).is_none());
        assert!(limit.try_acquire(parse("2001:db8:1:3::1")).is_some());
        let v4 = limit.try_acquire(parse("::ffff:192.0.2.7"));
        assert!(v4.is_some());
        assert!(limit.try_acquire(parse("192.0.2.7")).is_none());
    }
}
