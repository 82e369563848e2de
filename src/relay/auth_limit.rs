//! Brakes on password guessing (RFC 4954 §15 asks servers to resist
//! dictionary attacks): a per-address failure limit with a doubling
//! back-off, and a cap on password checks running at once so that AUTH
//! floods cannot take every CPU from delivery.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::client_limit::client_key;
use crate::sync::Recover;

/// Longest back-off, and how long an address must stay quiet (no failure)
/// before its failures are forgotten.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Addresses remembered at most; past it the quietest are forgotten first,
/// so a spray from many addresses costs bounded memory.
pub const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed AUTH attempts by client address (an IPv6 /64 counts as one,
/// see [`client_key`]). Pure: the caller gives the time.
#[derive(Debug)]
pub struct FailureLimit {
    max_failures: u32,
    backoff: Duration,
    by_ip: HashMap<IpAddr, Failures>,
}

impl FailureLimit {
    pub fn new(max_failures: u32, backoff: Duration) -> FailureLimit {
        FailureLimit {
            max_failures: max_failures.max(1),
            backoff,
            by_ip: HashMap::new(),
        }
    }

    fn lockout(&self, f: &Failures) -> Duration {
        if f.count < self.max_failures {
            return Duration::ZERO;
        }
        let doublings = (f.count - self.max_failures).min(20);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(MAX_BACKOFF)
    }

    /// `Err(wait)` while `ip` must wait before it may try again.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = client_key(ip);
        let Some(f) = self.by_ip.get(&ip).copied() else {
            return Ok(());
        };
        let since = now.saturating_duration_since(f.last);
        let lockout = self.lockout(&f);
        if since >= lockout.max(MAX_BACKOFF) {
            self.by_ip.remove(&ip);
            return Ok(());
        }
        if since < lockout {
            return Err(lockout - since);
        }
        Ok(())
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let ip = client_key(ip);
        if self.by_ip.len() >= MAX_TRACKED && !self.by_ip.contains_key(&ip) {
            self.forget_quietest(now);
        }
        let f = self.by_ip.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    fn forget_quietest(&mut self, now: Instant) {
        self.by_ip
            .retain(|_, f| now.saturating_duration_since(f.last) < MAX_BACKOFF);
        if self.by_ip.len() >= MAX_TRACKED {
            let oldest = self
                .by_ip
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.by_ip.remove(&ip);
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.by_ip.len()
    }
}

/// What every session's AUTH shares: the failure limit and the slots for
/// password checks.
#[derive(Clone)]
pub struct AuthGate {
    failures: Arc<Mutex<FailureLimit>>,
    checks: Arc<Semaphore>,
}

impl AuthGate {
    pub fn new(max_failures: u32, backoff: Duration, max_parallel: usize) -> AuthGate {
        AuthGate {
            failures: Arc::new(Mutex::new(FailureLimit::new(max_failures, backoff))),
            checks: Arc::new(Semaphore::new(max_parallel.max(1))),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureLimit> {
        self.failures.locked()
    }

    /// `Err(wait)` while `ip` is backing off.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.failures().check(ip, Instant::now())
    }

    pub fn failed(&self, ip: IpAddr) {
        self.failures().failed(ip, Instant::now())
    }

    /// Runs `verify` on the blocking pool once a check slot is free, or
    /// `None` if none frees up before `deadline`.
    pub async fn run<F>(&self, deadline: tokio::time::Instant, verify: F) -> Option<bool>
    where
        F: FnOnce() -> bool + Send + 'static,
    {
        let permit = tokio::time::timeout_at(deadline, self.checks.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let ok = tokio::task::spawn_blocking(move || {
            let ok = verify();
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn an_address_over_the_limit_backs_off_doubling() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = FailureLimit::new(3, s(10));
        for _ in 0..2 {
            l.failed(ip(1), t0);
            assert_eq!(l.check(ip(1), t0), Ok(()));
        }
        l.failed(ip(1), t0);
        assert_eq!(l.check(ip(1), t0), Err(s(10)));
        assert_eq!(l.check(ip(1), t0 + s(4)), Err(s(6)));
        assert_eq!(
            l.check(ip(2), t0),
            Ok(()),
            "other addresses are not affected"
        );
        assert_eq!(l.check(ip(1), t0 + s(10)), Ok(()));
        // The next failure waits twice as long, then four times.
        l.failed(ip(1), t0 + s(10));
        assert_eq!(l.check(ip(1), t0 + s(10)), Err(s(20)));
        l.failed(ip(1), t0 + s(30));
        assert_eq!(l.check(ip(1), t0 + s(30)), Err(s(40)));
        // Capped at an hour, and forgotten after an hour of quiet.
        for _ in 0..40 {
            l.failed(ip(1), t0 + s(100));
        }
        assert_eq!(l.check(ip(1), t0 + s(100)), Err(MAX_BACKOFF));
        assert_eq!(l.check(ip(1), t0 + s(100) + MAX_BACKOFF), Ok(()));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn memory_stays_bounded_under_a_spray_of_addresses() {
        let t0 = Instant::now();
        let mut l = FailureLimit::new(1, Duration::from_secs(60));
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.failed(ip, t0 + Duration::from_millis(i as u64));
        }
        assert!(l.tracked() <= MAX_TRACKED);
        // The newest offender is still held back.
        let last = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_TRACKED as u32 + 499,
        ));
        assert!(l.check(last, t0 + Duration::from_secs(1)).is_err());
    }
}
