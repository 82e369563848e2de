//! DNS lookups for MTA-STS, with the error classes RFC 8461 cares about:
//! "there is nothing" (NXDOMAIN or no records) is different from "we could not
//! find out" (SERVFAIL, timeout), because only the first may end a policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{Edns, Message, MessageType, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::config::Config;

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

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    description: Arc<str>,
    /// The configured name servers (empty: those of /etc/resolv.conf), for
    /// the raw query of [`Dns::authenticated`].
    servers: Arc<[SocketAddr]>,
    timeout: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Dns {
    pub fn from_config(config: &Config) -> Result<Dns, String> {
        let servers = config.nameservers().map_err(|e| e.to_string())?;
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read /etc/resolv.conf: {e}; set dns.nameservers"))?
        } else {
            let ns = servers
                .iter()
                .map(|addr| {
                    let conn = |protocol| {
                        let mut c = ConnectionConfig::new(protocol);
                        c.port = addr.port();
                        c
                    };
                    NameServerConfig::new(
                        addr.ip(),
                        true,
                        vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(ns),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = config.dns.timeout;
        opts.attempts = config.dns.attempts;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Our own caches decide policy lifetimes; hickory's may hold answers
        // for their TTL, which is what a recursive resolver would do anyway.
        opts.cache_size = 1024;
        let description = if servers.is_empty() {
            "name servers from /etc/resolv.conf".to_string()
        } else {
            let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
            format!("name servers {}", list.join(", "))
        };
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
        Ok(Dns {
            resolver,
            description: description.into(),
            servers: servers.into(),
            timeout: config.dns.timeout,
        })
    }

    /// What this resolver talks to, for the start-up log line.
    pub fn describe(&self) -> &str {
        &self.description
    }

    fn fqdn(name: &str) -> Result<Name, DnsError> {
        let absolute = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        Name::from_ascii(&absolute).map_err(|e| DnsError {
            name: name.to_string(),
            reason: format!("not a valid DNS name: {e}"),
        })
    }

    fn classify<T>(name: &str, e: NetError) -> Result<Answer<T>, DnsError> {
        if e.is_nx_domain() {
            Ok(Answer::NoRecords { nxdomain: true })
        } else if e.is_no_records_found() {
            Ok(Answer::NoRecords { nxdomain: false })
        } else {
            Err(DnsError {
                name: name.to_string(),
                reason: e.to_string(),
            })
        }
    }

    /// TXT records at `name`, each as its character-strings joined (RFC 7208
    /// §3.3 style, as RFC 8461 §3.1 requires). CNAMEs are followed by the
    /// resolver.
    pub async fn txt(&self, name: &str) -> Result<Answer<Vec<u8>>, DnsError> {
        let answer = self.rdata(name, RecordType::TXT).await?;
        Ok(Self::map(answer, |d| match d {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect(),
            ),
            _ => None,
        }))
    }

    /// Records of one type at `name`, CNAMEs followed by the resolver and
    /// left out of the answer.
    async fn rdata(&self, name: &str, rtype: RecordType) -> Result<Answer<RData>, DnsError> {
        Ok(self.rdata_with_expiry(name, rtype).await?.0)
    }

    /// Like `rdata`, plus when the answer's TTL runs out (None for a
    /// negative answer).
    async fn rdata_with_expiry(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Answer<RData>, Option<std::time::Instant>), DnsError> {
        let fqdn = Self::fqdn(name)?;
        match self.resolver.lookup(fqdn, rtype).await {
            Ok(lookup) => {
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    Ok((Answer::NoRecords { nxdomain: false }, None))
                } else {
                    Ok((Answer::Records(records), Some(lookup.valid_until())))
                }
            }
            Err(e) => Self::classify(name, e).map(|a| (a, None)),
        }
    }

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

    /// MX records of `domain`, sorted by preference (stable for equal ones).
    pub async fn mx(&self, domain: &str) -> Result<Answer<MxRecord>, DnsError> {
        Ok(self.mx_with_expiry(domain).await?.0)
    }

    /// MX records sorted by preference, and when their TTL runs out.
    pub async fn mx_with_expiry(
        &self,
        domain: &str,
    ) -> Result<(Answer<MxRecord>, Option<std::time::Instant>), DnsError> {
        let (answer, expiry) = self.rdata_with_expiry(domain, RecordType::MX).await?;
        let mut answer = Self::map(answer, |d| match d {
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
        Ok((answer, expiry))
    }

    /// A records of `host`.
    pub async fn a(&self, host: &str) -> Result<Answer<Ipv4Addr>, DnsError> {
        let answer = self.rdata(host, RecordType::A).await?;
        Ok(Self::map(answer, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        }))
    }

    /// AAAA records of `host`.
    pub async fn aaaa(&self, host: &str) -> Result<Answer<Ipv6Addr>, DnsError> {
        let answer = self.rdata(host, RecordType::AAAA).await?;
        Ok(Self::map(answer, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        }))
    }

    /// CAA records at exactly `name` (no climbing; see RFC 8659 §3 for the
    /// tree walk, which the caller does).
    pub async fn caa(&self, name: &str) -> Result<Answer<CaaRecord>, DnsError> {
        let answer = self.rdata(name, RecordType::CAA).await?;
        Ok(Self::map(answer, |d| match d {
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
        let answer = self.rdata(name, RecordType::TLSA).await?;
        Ok(Self::map(answer, |d| match d {
            RData::TLSA(t) => Some(TlsaRecord {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        }))
    }

    /// Whether the first configured name server says the answer for
    /// `(name, rtype)` is DNSSEC-authenticated (the AD bit, RFC 4035 §3.2.3,
    /// asked for with AD and DO set as RFC 6840 §5.7 describes). Only as
    /// trustworthy as the path to that server; used for diagnosis, never for
    /// a policy decision. One UDP exchange, bounded by the DNS timeout.
    pub async fn authenticated(&self, name: &str, rtype: RecordType) -> Result<bool, DnsError> {
        let err = |reason: String| DnsError {
            name: name.to_string(),
            reason,
        };
        let server = match self.servers.first() {
            Some(s) => *s,
            None => {
                let (conf, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| err(format!("cannot read /etc/resolv.conf: {e}")))?;
                let ns = conf
                    .name_servers()
                    .first()
                    .ok_or_else(|| err("no name server in /etc/resolv.conf".into()))?;
                let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
                SocketAddr::new(ns.ip, port)
            }
        };
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.metadata.authentic_data = true;
        query.add_query(Query::query(Self::fqdn(name)?, rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(true);
        query.set_edns(edns);
        let id = query.metadata.id;
        let bytes = query
            .to_vec()
            .map_err(|e| err(format!("cannot encode query: {e}")))?;
        let bind: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let exchange = async {
            let socket = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| err(format!("cannot open a UDP socket: {e}")))?;
            socket
                .send_to(&bytes, server)
                .await
                .map_err(|e| err(format!("cannot send to {server}: {e}")))?;
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, from) = socket
                    .recv_from(&mut buf)
                    .await
                    .map_err(|e| err(format!("no answer from {server}: {e}")))?;
                if from != server {
                    continue;
                }
                let Ok(reply) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                if reply.metadata.id == id && reply.metadata.message_type == MessageType::Response {
                    return Ok(reply.metadata.authentic_data);
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(err(format!(
                "{server} did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// A and AAAA addresses of a host.
    pub async fn ips(&self, host: &str) -> Result<Answer<IpAddr>, DnsError> {
        let fqdn = Self::fqdn(host)?;
        match self.resolver.lookup_ip(fqdn).await {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().collect();
                if ips.is_empty() {
                    Ok(Answer::NoRecords { nxdomain: false })
                } else {
                    Ok(Answer::Records(ips))
                }
            }
            Err(e) => Self::classify(host, e),
        }
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
