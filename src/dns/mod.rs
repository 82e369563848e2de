//! DNS lookups for MTA-STS, with the error classes RFC 8461 cares about:
//! "there is nothing" (NXDOMAIN or no records) is different from "we could not
//! find out" (SERVFAIL, timeout), because only the first may end a policy.
//!
//! [`Dns`] is the handle every user holds. Behind it sits a [`DnsLookup`]:
//! [`hickory::HickoryDns`] in production, the in-memory `memory::ZoneDns`
//! in unit tests, so the rules built on DNS answers (the resolver's caching,
//! DANE precedence) are tested without sockets. The trait is three raw
//! lookups; turning records into [`MxRecord`], [`TlsaRecord`], … is done
//! once, here, whatever answered.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

pub use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::Config;
use crate::policy::MxHosts;

pub mod hickory;
#[cfg(test)]
pub mod memory;

/// A lookup that could not tell whether the data exists.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct DnsError {
    pub name: String,
    pub reason: String,
}

/// The answer to a lookup that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Records(Vec<T>),
    /// NXDOMAIN, or the name exists without records of this type.
    NoRecords {
        nxdomain: bool,
    },
}

impl<T> Answer<T> {
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Records(r) => r,
            Answer::NoRecords { .. } => &[],
        }
    }
}

/// One MX record. `exchange` is in A-label form, lower case, without the
/// trailing dot; the null MX of RFC 7505 (`0 .`) has an empty exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

impl MxRecord {
    /// RFC 7505: "The domain accepts no mail" (exchange is the root, `.`).
    pub fn is_null(&self) -> bool {
        self.exchange.is_empty()
    }
}

impl Answer<MxRecord> {
    /// The hosts this MX answer for `domain` names (see [`MxHosts`]).
    pub fn mx_hosts(&self, domain: &str) -> MxHosts {
        let nxdomain = matches!(self, Answer::NoRecords { nxdomain: true });
        MxHosts::from_lookup(
            domain,
            nxdomain,
            self.records().iter().map(|r| r.exchange.as_str()),
        )
    }
}

/// One CAA record (RFC 8659), value as text (lossy for non-UTF-8 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    pub critical: bool,
    pub tag: String,
    pub value: String,
}

/// One TLSA record (RFC 6698): usage, selector, matching type, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl std::fmt::Display for TlsaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An answer with the validating resolver's DNSSEC verdict.
#[derive(Debug, Clone)]
pub struct Secured {
    pub answer: Answer<RData>,
    /// The AD bit: the resolver validated the answer (or the denial).
    pub authenticated: bool,
    /// Smallest TTL of the records, when there are records.
    pub ttl: Option<u32>,
}

/// A lookup in flight; boxed so that [`DnsLookup`] can be a trait object.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// Where DNS answers come from. Only the raw lookups differ between the
/// real resolver and a test zone; everything [`Dns`] offers is built on
/// these three.
pub trait DnsLookup: Send + Sync + 'static {
    /// What answers, for the start-up log line.
    fn describe(&self) -> &str;

    /// Records of one type at `name`, CNAMEs followed and left out of the
    /// answer, and when the answer's TTL runs out (None for a negative
    /// answer).
    fn records<'a>(
        &'a self,
        name: &'a str,
        rtype: RecordType,
    ) -> Lookup<'a, (Answer<RData>, Option<Instant>)>;

    /// Records of `(name, rtype)` with the validating resolver's verdict
    /// (the AD bit). A bogus answer is an error: a validating resolver
    /// answers SERVFAIL for it.
    fn secure_lookup<'a>(&'a self, name: &'a str, rtype: RecordType) -> Lookup<'a, Secured>;

    /// A and AAAA addresses of a host.
    fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Answer<IpAddr>>;
}

/// The DNS every part of the agent asks: cheap to clone, shared.
#[derive(Clone)]
pub struct Dns {
    backend: Arc<dyn DnsLookup>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl Dns {
    /// The configured name servers (or those of /etc/resolv.conf).
    pub fn from_config(config: &Config) -> Result<Dns, String> {
        Ok(Dns::new(hickory::HickoryDns::from_config(config)?))
    }

    pub fn new(backend: impl DnsLookup) -> Dns {
        Dns {
            backend: Arc::new(backend),
        }
    }

    /// What this resolver talks to, for the start-up log line.
    pub fn describe(&self) -> &str {
        self.backend.describe()
    }

    /// TXT records at `name`, each as its character-strings joined (RFC 7208
    /// §3.3 style, as RFC 8461 §3.1 requires). CNAMEs are followed by the
    /// resolver.
    pub async fn txt(&self, name: &str) -> Result<Answer<Vec<u8>>, DnsError> {
        let answer = self.rdata(name, RecordType::TXT).await?;
        Ok(map(answer, |d| match d {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect(),
            ),
            _ => None,
        }))
    }

    async fn rdata(&self, name: &str, rtype: RecordType) -> Result<Answer<RData>, DnsError> {
        Ok(self.backend.records(name, rtype).await?.0)
    }

    /// MX records in preference order (stable for equal ones), exchange
    /// names in lower-case A-label form without the trailing dot.
    pub fn mx_records(answer: Answer<RData>) -> Answer<MxRecord> {
        let mut answer = map(answer, |d| match d {
            RData::MX(mx) => Some(MxRecord {
                preference: mx.preference,
                exchange: mx
                    .exchange
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            }),
            _ => None,
        });
        if let Answer::Records(r) = &mut answer {
            r.sort_by_key(|m| m.preference);
        }
        answer
    }

    pub fn tlsa_records(answer: Answer<RData>) -> Answer<TlsaRecord> {
        map(answer, |d| match d {
            RData::TLSA(t) => Some(TlsaRecord {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
    }

    /// MX records of `domain`, sorted by preference (stable for equal ones).
    pub async fn mx(&self, domain: &str) -> Result<Answer<MxRecord>, DnsError> {
        Ok(self.mx_with_expiry(domain).await?.0)
    }

    /// MX records sorted by preference, and when their TTL runs out.
    pub async fn mx_with_expiry(
        &self,
        domain: &str,
    ) -> Result<(Answer<MxRecord>, Option<Instant>), DnsError> {
        let (answer, expiry) = self.backend.records(domain, RecordType::MX).await?;
        Ok((Self::mx_records(answer), expiry))
    }

    /// A records of `host`.
    pub async fn a(&self, host: &str) -> Result<Answer<Ipv4Addr>, DnsError> {
        let answer = self.rdata(host, RecordType::A).await?;
        Ok(map(answer, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        }))
    }

    /// AAAA records of `host`.
    pub async fn aaaa(&self, host: &str) -> Result<Answer<Ipv6Addr>, DnsError> {
        let answer = self.rdata(host, RecordType::AAAA).await?;
        Ok(map(answer, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        }))
    }

    /// CAA records at exactly `name` (no climbing; see RFC 8659 §3 for the
    /// tree walk, which the caller does).
    pub async fn caa(&self, name: &str) -> Result<Answer<CaaRecord>, DnsError> {
        let answer = self.rdata(name, RecordType::CAA).await?;
        Ok(map(answer, |d| match d {
            RData::CAA(caa) => Some(CaaRecord {
                critical: caa.issuer_critical,
                tag: caa.tag.clone(),
                value: String::from_utf8_lossy(&caa.value).into_owned(),
            }),
            _ => None,
        }))
    }

    /// TLSA records at `name` (e.g. `_25._tcp.mx.example.com`).
    pub async fn tlsa(&self, name: &str) -> Result<Answer<TlsaRecord>, DnsError> {
        Ok(Self::tlsa_records(
            self.rdata(name, RecordType::TLSA).await?,
        ))
    }

    /// Whether the validating resolver says the answer for `(name, rtype)`
    /// is DNSSEC-authenticated (the AD bit). Used by the diagnosis; see
    /// [`secure_lookup`](Self::secure_lookup).
    pub async fn authenticated(&self, name: &str, rtype: RecordType) -> Result<bool, DnsError> {
        Ok(self.secure_lookup(name, rtype).await?.authenticated)
    }

    /// Records of `(name, rtype)` with the validating resolver's verdict
    /// (see [`hickory::HickoryDns`] for how it is asked and why it is
    /// trusted).
    pub async fn secure_lookup(&self, name: &str, rtype: RecordType) -> Result<Secured, DnsError> {
        self.backend.secure_lookup(name, rtype).await
    }

    /// TLSA records with the validating resolver's verdict.
    pub async fn tlsa_secure(
        &self,
        name: &str,
    ) -> Result<(Answer<TlsaRecord>, bool, Option<u32>), DnsError> {
        let s = self.secure_lookup(name, RecordType::TLSA).await?;
        Ok((Self::tlsa_records(s.answer), s.authenticated, s.ttl))
    }

    /// MX records (preference order) with the validating resolver's verdict.
    pub async fn mx_secure(
        &self,
        domain: &str,
    ) -> Result<(Answer<MxRecord>, bool, Option<u32>), DnsError> {
        let s = self.secure_lookup(domain, RecordType::MX).await?;
        Ok((Self::mx_records(s.answer), s.authenticated, s.ttl))
    }

    /// A and AAAA addresses of a host.
    pub async fn ips(&self, host: &str) -> Result<Answer<IpAddr>, DnsError> {
        self.backend.ips(host).await
    }
}

/// The records `f` recognises; none left is "no records" (a name that
/// exists without records of the type asked for).
fn map<T>(answer: Answer<RData>, f: impl Fn(RData) -> Option<T>) -> Answer<T> {
    match answer {
        Answer::Records(r) => {
            let out: Vec<T> = r.into_iter().filter_map(f).collect();
            if out.is_empty() {
                Answer::NoRecords { nxdomain: false }
            } else {
                Answer::Records(out)
            }
        }
        Answer::NoRecords { nxdomain } => Answer::NoRecords { nxdomain },
    }
}

/// Lets reqwest resolve policy hosts through the same configured name servers
/// as discovery, so tests and split-horizon set-ups see one DNS.
impl reqwest::dns::Resolve for Dns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.clone();
        Box::pin(async move {
            match dns.ips(name.as_str()).await {
                Ok(Answer::Records(ips)) => {
                    let addrs: reqwest::dns::Addrs =
                        Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
                    Ok(addrs)
                }
                Ok(Answer::NoRecords { .. }) => {
                    Err(format!("{}: no A or AAAA records", name.as_str()).into())
                }
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}
