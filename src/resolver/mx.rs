//! The current MX set of a domain, for maps that answer Postfix with the
//! MX hosts themselves (`match_current_mx`): cached for the MX TTL, refreshed
//! in the background, one lookup per domain however many ask.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Inner, Resolver};
use crate::policy::MxHosts;
use crate::sync::Recover;

/// A domain's MX hosts as DNS answers them now (RFC 5321 §5.1: preference
/// order, the domain itself when it has no MX records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxSet {
    pub hosts: Vec<String>,
    /// RFC 7505: the domain accepts no mail.
    pub null_mx: bool,
    fresh_until: Instant,
}

#[cfg(test)]
impl MxSet {
    /// An MX set as a lookup would return it, for the reply tests.
    pub(crate) fn for_test(hosts: &[&str], null_mx: bool) -> MxSet {
        MxSet {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            null_mx,
            fresh_until: Instant::now(),
        }
    }
}

impl Resolver {
    /// The current MX hosts of `domain` (normalised), for maps that answer
    /// Postfix with them. Kept for the MX TTL (within `mx_min_ttl` and an
    /// hour); a stale set is answered while a background lookup refreshes
    /// it, and only the first lookup of a domain waits, up to
    /// `first_lookup_deadline`. None when DNS cannot tell.
    pub async fn current_mx(&self, domain: &str) -> Option<Arc<MxSet>> {
        if let Some(set) = self.inner.mx_sets.get(domain).await {
            if Instant::now() >= set.fresh_until {
                let claimed = self.inner.mx_refreshing.locked().insert(domain.to_string());
                if claimed {
                    let inner = self.inner.clone();
                    let d = domain.to_string();
                    tokio::spawn(async move {
                        inner.fetch_mx(&d).await;
                        inner.mx_refreshing.locked().remove(&d);
                    });
                }
            }
            return Some(set);
        }
        tokio::time::timeout(
            self.inner.cfg.first_lookup_deadline,
            self.inner.fetch_mx(domain),
        )
        .await
        .ok()
        .flatten()
    }
}

impl Inner {
    pub(super) async fn fetch_mx(&self, domain: &str) -> Option<Arc<MxSet>> {
        let now = Instant::now();
        let floor = now + self.cfg.mx_min_ttl;
        let ceiling = now + Duration::from_secs(3600);
        let (answer, expiry) = match self.dns.mx_with_expiry(domain).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(domain, error = %e, "MX lookup failed; answering with the policy's patterns");
                return None;
            }
        };
        let (hosts, null_mx) = match answer.mx_hosts(domain) {
            MxHosts::Hosts(hosts) => (hosts, false),
            MxHosts::NullMx { alongside } => (alongside, true),
            // Answered like a domain without MX records: Postfix meets the
            // NXDOMAIN itself when it looks the host up.
            MxHosts::NoDomain => (vec![domain.to_string()], false),
        };
        // A negative answer has no expiry: kept for `mx_min_ttl`.
        let set = MxSet {
            hosts,
            null_mx,
            fresh_until: expiry.unwrap_or(floor).clamp(floor, ceiling),
        };
        let set = Arc::new(set);
        self.mx_sets.insert(domain.to_string(), set.clone()).await;
        Some(set)
    }
}
