//! DANE for SMTP (RFC 7672), which takes precedence over MTA-STS (RFC 8461
//! §2): whether a domain's MX hosts are protected by DNSSEC-authenticated
//! TLSA records, and whether a server's certificate chain matches them.
//!
//! Authenticity is the AD bit of the configured resolver, as in Postfix
//! (see [`Dns::secure_lookup`]): the resolver must validate and be trusted.
//! What each DNSSEC outcome means:
//! - **secure** MX RRset: DANE is decided per host of *that* RRset
//!   ([`DomainDane::Secure`]); how each host is then treated is
//!   [`precedence`]'s one rule.
//! - **insecure** MX RRset (no AD bit): DANE does not apply and MTA-STS
//!   rules alone (RFC 7672 §2.2.1). TLSA records are never looked up for
//!   hosts named by an unauthenticated answer, whatever they say.
//! - **bogus or failed** MX lookup (SERVFAIL, timeout): we cannot tell
//!   ([`DomainDane::Indeterminate`]); no TLSA record is used and MTA-STS
//!   applies in full, pattern check included. Nothing is ever weakened by it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::dns::{Answer, Dns, MxRecord, TlsaRecord};
use crate::policy::MxHosts;
use crate::sync::Recover;

pub mod events;
#[cfg(test)]
mod lookup_tests;
pub mod precedence;
pub use precedence::{host_rule, hosts_to_try, HostRule};

/// RFC 7672 §3.1: only DANE-TA(2) and DANE-EE(3) are usable for SMTP; the
/// PKIX usages 0 and 1 are not. Selector full cert(0) or SPKI(1); matching
/// exact(0), SHA2-256(1) or SHA2-512(2).
pub fn usable(r: &TlsaRecord) -> bool {
    matches!(r.usage, 2 | 3) && matches!(r.selector, 0 | 1) && matches!(r.matching, 0..=2)
}

/// DANE status of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// Secure, usable TLSA records: the certificate must match them.
    Tlsa(Vec<TlsaRecord>),
    /// No secure usable TLSA records: DANE does not cover this host.
    None(String),
    /// The lookup failed or was bogus.
    Indeterminate(String),
}

/// DANE status of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainDane {
    /// The MX RRset is DNSSEC-authenticated (RFC 7672 §2.2.1): every host
    /// of it, in preference order, with its own TLSA status. Only these
    /// hosts may ever be governed by TLSA records.
    Secure { hosts: Vec<(String, HostDane)> },
    /// The MX RRset is not authenticated (or the domain does not exist).
    NotApplicable(String),
    /// The DNSSEC MX lookup failed: DANE status unknown.
    Indeterminate(String),
}

impl DomainDane {
    /// DANE governs at least one MX host: it has secure, usable TLSA.
    pub fn applies(&self) -> bool {
        self.hosts()
            .is_some_and(|h| h.iter().any(|(_, s)| matches!(s, HostDane::Tlsa(_))))
    }

    /// Every host of the secure MX RRset has secure, usable TLSA records,
    /// so no host of the domain is left to opportunistic TLS by DANE.
    pub fn covers_every_host(&self) -> bool {
        self.hosts()
            .is_some_and(|h| !h.is_empty() && h.iter().all(|(_, s)| matches!(s, HostDane::Tlsa(_))))
    }

    /// The hosts of the authenticated MX RRset, when there is one.
    pub fn hosts(&self) -> Option<&[(String, HostDane)]> {
        match self {
            DomainDane::Secure { hosts } => Some(hosts),
            _ => None,
        }
    }
}

/// The TLSA lookup name of an SMTP server (RFC 7672 §2.3).
pub fn tlsa_name(host: &str) -> String {
    format!("_25._tcp.{host}")
}

/// The MX answer a DANE status was decided on, while its DNS TTL lasts;
/// None when the DNSSEC MX lookup failed or the TTL ran out.
pub type DecidedMx = Option<Arc<Answer<MxRecord>>>;

/// One cached DANE status.
#[derive(Clone)]
struct Entry {
    status: Arc<DomainDane>,
    mx: DecidedMx,
    until: Instant,
    /// The MX answer's own DNS TTL: routing never uses it longer.
    mx_until: Instant,
}

/// What one lookup of a domain found.
struct Found {
    status: DomainDane,
    /// The smallest TTL involved (None: keep for `min_ttl`).
    ttl: Option<u32>,
    /// The MX answer and its TTL, unless the MX lookup failed.
    mx: Option<(Answer<MxRecord>, Option<u32>)>,
}

impl Entry {
    fn decided(self) -> (Arc<DomainDane>, DecidedMx) {
        let mx = self.mx.filter(|_| Instant::now() < self.mx_until);
        (self.status, mx)
    }
}

/// Background DANE lookups (see [`Dane::known`]) running at once when the
/// configuration does not say (`cache.max_dane_lookups`).
pub const DEFAULT_BACKGROUND_LOOKUPS: usize = crate::config::DEFAULT_MAX_DANE_LOOKUPS;

/// MX hosts of one authenticated MX RRset whose TLSA records are looked up.
/// A zone may sign thousands; past this the rest are treated as hosts whose
/// TLSA lookup failed (not used, RFC 7672 §2.1.1), which is never weaker.
pub const MAX_TLSA_HOSTS: usize = 32;

/// The longest one domain's DANE lookups may take, whatever the resolver
/// does (each exchange is bounded by the DNS timeout already; this also
/// bounds the sum). Past it the status is unknown, kept for `min_ttl`.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);

/// Looks up and caches DANE status; shared by every face.
#[derive(Clone)]
pub struct Dane {
    dns: Dns,
    domains: moka::future::Cache<String, Entry>,
    /// Domains with a background lookup running (one per domain).
    refreshing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Slots for background lookups, over all domains: a flood of new
    /// enforce domains (or a resolver that answers slowly) cannot pile up
    /// DNS work; past it a lookup keeps its MTA-STS answer and a later one
    /// starts the lookup.
    background: Arc<tokio::sync::Semaphore>,
    min_ttl: Duration,
}

impl std::fmt::Debug for Dane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dane").finish_non_exhaustive()
    }
}

/// Releases a domain's background claim even if its lookup panics.
struct Claim {
    refreshing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    domain: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.refreshing.locked().remove(&self.domain);
    }
}

impl Dane {
    pub fn new(dns: Dns, min_ttl: Duration) -> Dane {
        Dane::with_background_limit(dns, min_ttl, DEFAULT_BACKGROUND_LOOKUPS)
    }

    /// `background`: background lookups running at once (at least one).
    pub fn with_background_limit(dns: Dns, min_ttl: Duration, background: usize) -> Dane {
        Dane {
            dns,
            domains: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(2 * 3600))
                .build(),
            refreshing: Arc::default(),
            background: Arc::new(tokio::sync::Semaphore::new(background.max(1))),
            min_ttl,
        }
    }

    /// TLSA status of one MX host.
    pub async fn host(&self, host: &str) -> (HostDane, Option<u32>) {
        match self.dns.tlsa_secure(&tlsa_name(host)).await {
            Err(e) => (HostDane::Indeterminate(e.to_string()), None),
            Ok((_, false, _)) => (
                HostDane::None(format!("{} is not DNSSEC-authenticated", tlsa_name(host))),
                None,
            ),
            Ok((Answer::NoRecords { .. }, true, _)) => (
                HostDane::None(format!("no TLSA records at {}", tlsa_name(host))),
                None,
            ),
            Ok((Answer::Records(records), true, ttl)) => {
                let usable: Vec<TlsaRecord> = records.into_iter().filter(usable).collect();
                if usable.is_empty() {
                    (
                        HostDane::None(format!("no usable TLSA records at {}", tlsa_name(host))),
                        ttl,
                    )
                } else {
                    (HostDane::Tlsa(usable), ttl)
                }
            }
        }
    }

    /// DANE status of `domain`, kept for the smallest TTL involved (within
    /// `min_ttl` and an hour). A stale status is answered at once while a
    /// background lookup refreshes it, so only the first lookup of a domain
    /// waits on DNS.
    pub async fn domain(&self, domain: &str) -> Arc<DomainDane> {
        self.domain_and_mx(domain).await.0
    }

    /// The DANE status of `domain` if it is known, never waiting on DNS:
    /// when it is not, one background lookup is started (shared with any
    /// other lookup of the domain, within the background limit) and the
    /// caller answers without DANE. For the socketmap, whose MTA-STS answer
    /// already demands authenticated TLS: DANE can only make it differ once
    /// the status is known (issue 13: a cold start waited on DNSSEC).
    pub async fn known(&self, domain: &str) -> Option<Arc<DomainDane>> {
        if let Some(e) = self.domains.get(domain).await {
            if Instant::now() >= e.until {
                self.in_background(domain, true);
            }
            return Some(e.status);
        }
        self.in_background(domain, false);
        None
    }

    /// [`domain`](Self::domain), and the MX answer it was decided on, so
    /// that the relay routes by the same answer without asking again.
    pub async fn domain_and_mx(&self, domain: &str) -> (Arc<DomainDane>, DecidedMx) {
        if let Some(e) = self.domains.get(domain).await {
            if Instant::now() >= e.until {
                self.in_background(domain, true);
            }
            return e.decided();
        }
        // Concurrent first lookups of one domain share one set of DNS
        // queries: moka runs one init per key and the others wait for it
        // (issue 13: a cold start asked each MX and TLSA RRset ~50 times).
        let e = self
            .domains
            .get_with_by_ref(domain, self.lookup_entry(domain))
            .await;
        e.decided()
    }

    /// Starts one background lookup of `domain` unless one is running or
    /// every slot is taken. `stale`: replace the cached status; otherwise
    /// fill the cache through the same init a waiting lookup would join.
    fn in_background(&self, domain: &str, stale: bool) {
        let Ok(permit) = self.background.clone().try_acquire_owned() else {
            events::events().background_skipped();
            return;
        };
        let claimed = self.refreshing.locked().insert(domain.to_string());
        if !claimed {
            return;
        }
        let claim = Claim {
            refreshing: self.refreshing.clone(),
            domain: domain.to_string(),
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let name = &claim.domain;
            if stale {
                let fresh = me.lookup_entry(name).await;
                me.domains.insert(name.clone(), fresh).await;
            } else {
                me.domains
                    .get_with_by_ref(name.as_str(), me.lookup_entry(name))
                    .await;
            }
            drop(claim);
        });
    }

    async fn lookup_entry(&self, domain: &str) -> Entry {
        let Found { status, ttl, mx } =
            match tokio::time::timeout(LOOKUP_DEADLINE, self.lookup_domain(domain)).await {
                Ok(found) => found,
                Err(_) => Found {
                    status: DomainDane::Indeterminate(format!(
                        "DNSSEC lookups not done within {LOOKUP_DEADLINE:?}"
                    )),
                    ttl: None,
                    mx: None,
                },
            };
        if let DomainDane::Indeterminate(why) = &status {
            tracing::warn!(domain, reason = %why, "DNSSEC MX lookup failed: DANE status unknown; no TLSA record is used and the MTA-STS policy applies in full");
        }
        if let Some(hosts) = status.hosts() {
            for (host, s) in hosts {
                if let HostDane::Indeterminate(why) = s {
                    tracing::warn!(domain, mx = %host, reason = %why, "TLSA lookup failed for a host of an authenticated MX RRset: that host is not used (RFC 7672 §2.1.1)");
                }
            }
        }
        let keep = Duration::from_secs(u64::from(ttl.unwrap_or(0)))
            .clamp(self.min_ttl, Duration::from_secs(3600));
        // Failures are kept too (for min_ttl), so a domain whose DNSSEC
        // lookups time out does not slow every lookup down.
        let now = Instant::now();
        let mx_until =
            now + Duration::from_secs(u64::from(mx.as_ref().and_then(|m| m.1).unwrap_or(0)));
        Entry {
            status: Arc::new(status),
            mx: mx.map(|m| Arc::new(m.0)),
            until: now + keep,
            mx_until,
        }
    }

    async fn lookup_domain(&self, domain: &str) -> Found {
        let (answer, secure, mx_ttl) = match self.dns.mx_secure(domain).await {
            Err(e) => {
                return Found {
                    status: DomainDane::Indeterminate(format!("MX lookup: {e}")),
                    ttl: None,
                    mx: None,
                }
            }
            Ok(a) => a,
        };
        if !secure {
            return Found {
                status: DomainDane::NotApplicable(format!(
                    "the MX records of {domain} are not DNSSEC-authenticated"
                )),
                ttl: mx_ttl,
                mx: Some((answer, mx_ttl)),
            };
        }
        let hosts: Vec<String> = match answer.mx_hosts(domain) {
            // RFC 7672 §2.2.1: no MX, the domain itself is the host.
            MxHosts::Hosts(hosts) => hosts,
            // A null MX names no host to protect; any beside it (RFC 7505
            // forbids them) are still judged by their own TLSA records.
            MxHosts::NullMx { alongside } => alongside,
            MxHosts::NoDomain => {
                return Found {
                    status: DomainDane::NotApplicable(format!("{domain} does not exist")),
                    ttl: None,
                    mx: Some((answer, None)),
                }
            }
        };
        // The hosts' TLSA lookups run together: a slow resolver costs one
        // DNS timeout, not one per host.
        let mut lookups = tokio::task::JoinSet::new();
        for (i, h) in hosts.iter().take(MAX_TLSA_HOSTS).enumerate() {
            let (me, h) = (self.clone(), h.clone());
            lookups.spawn(async move { (i, me.host(&h).await) });
        }
        let mut results: Vec<(HostDane, Option<u32>)> = hosts
            .iter()
            .map(|_| {
                let why = format!("not looked up: more than {MAX_TLSA_HOSTS} MX hosts");
                (HostDane::Indeterminate(why), None)
            })
            .collect();
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((i, r)) => results[i] = r,
                Err(e) => tracing::error!(domain, error = %e, "TLSA lookup task failed"),
            }
        }
        let mut ttl = mx_ttl;
        let mut failed = false;
        let mut statuses = Vec::with_capacity(hosts.len());
        for (host, (status, t)) in hosts.into_iter().zip(results) {
            if let Some(t) = t {
                ttl = Some(ttl.map_or(t, |x| x.min(t)));
            }
            failed |= matches!(status, HostDane::Indeterminate(_));
            statuses.push((host, status));
        }
        // A failed TLSA lookup is retried after min_ttl, not kept for the
        // TTL of the records that did answer.
        let ttl = if failed { None } else { ttl };
        Found {
            status: DomainDane::Secure { hosts: statuses },
            ttl,
            mx: Some((answer, mx_ttl)),
        }
    }
}

/// Why a chain does not match a host's TLSA records (RFC 8460 §4.3:
/// `tlsa-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DaneMismatch(pub String);

fn digest(data: &[u8], matching: u8) -> Option<Vec<u8>> {
    match matching {
        0 => Some(data.to_vec()),
        1 => Some(
            ring::digest::digest(&ring::digest::SHA256, data)
                .as_ref()
                .to_vec(),
        ),
        2 => Some(
            ring::digest::digest(&ring::digest::SHA512, data)
                .as_ref()
                .to_vec(),
        ),
        _ => None,
    }
}

/// Does `cert` match `r` (selector and matching type applied)?
fn cert_matches(cert: &[u8], r: &TlsaRecord) -> bool {
    let selected: Vec<u8> = match r.selector {
        0 => cert.to_vec(),
        1 => match x509_parser::parse_x509_certificate(cert) {
            Ok((_, c)) => c.tbs_certificate.subject_pki.raw.to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    digest(&selected, r.matching).is_some_and(|d| d == r.data)
}

/// RFC 7672 §3.1: DANE-EE(3) matches the leaf alone, ignoring names and
/// dates (§3.1.1); DANE-TA(2) names a trust anchor in the chain, under
/// which the leaf must chain and be valid for `host` (§3.1.2, §3.2).
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    records: &[TlsaRecord],
    host: &str,
) -> Result<(), DaneMismatch> {
    let Some(leaf) = chain.first() else {
        return Err(DaneMismatch("no certificate presented".into()));
    };
    if records
        .iter()
        .filter(|r| r.usage == 3)
        .any(|r| cert_matches(leaf.as_ref(), r))
    {
        return Ok(());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for r in records.iter().filter(|r| r.usage == 2) {
        for ta in chain.iter().filter(|c| cert_matches(c.as_ref(), r)) {
            let mut roots = RootCertStore::empty();
            if roots.add(ta.clone().into_owned()).is_err() {
                continue;
            }
            let Ok(verifier) =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
            else {
                continue;
            };
            let Ok(name) = ServerName::try_from(host.to_string()) else {
                return Err(DaneMismatch(format!("{host} is not a valid server name")));
            };
            let intermediates: Vec<CertificateDer<'_>> = chain.iter().skip(1).cloned().collect();
            if verifier
                .verify_server_cert(leaf, &intermediates, &name, &[], UnixTime::now())
                .is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(DaneMismatch(format!(
        "the certificate chain of {host} matches none of its {} TLSA records",
        records.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> TlsaRecord {
        TlsaRecord {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn only_dane_usages_are_usable() {
        assert!(usable(&rec(3, 1, 1, vec![1])));
        assert!(usable(&rec(2, 0, 2, vec![1])));
        assert!(!usable(&rec(1, 1, 1, vec![1])));
        assert!(!usable(&rec(0, 1, 1, vec![1])));
        assert!(!usable(&rec(3, 2, 1, vec![1])));
        assert!(!usable(&rec(3, 1, 3, vec![1])));
    }

    #[test]
    fn garbage_chains_never_match() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let r = rec(3, 1, 1, vec![0; 32]);
        assert!(verify_chain(
            std::slice::from_ref(&junk),
            std::slice::from_ref(&r),
            "mx.test"
        )
        .is_err());
        assert!(verify_chain(&[], &[r], "mx.test").is_err());
        // Full-certificate exact match works on any bytes.
        let exact = rec(3, 0, 0, junk.as_ref().to_vec());
        assert!(verify_chain(&[junk], &[exact], "mx.test").is_ok());
    }
}
