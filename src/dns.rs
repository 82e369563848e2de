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
use hickory_resolver::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
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

    /// MX records in preference order (stable for equal ones), exchange
    /// names in lower-case A-label form without the trailing dot.
    pub fn mx_records(answer: Answer<RData>) -> Answer<MxRecord> {
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
        answer
    }

    pub fn tlsa_records(answer: Answer<RData>) -> Answer<TlsaRecord> {
        Self::map(answer, |d| match d {
            RData::TLSA(t) => Some(TlsaRecord {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
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
        Ok((Self::mx_records(answer), expiry))
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
        Ok(Self::tlsa_records(
            self.rdata(name, RecordType::TLSA).await?,
        ))
    }

    /// Whether the first configured name server says the answer for
    /// `(name, rtype)` is DNSSEC-authenticated (the AD bit). Used by the
    /// diagnosis; see [`secure_lookup`](Self::secure_lookup).
    pub async fn authenticated(&self, name: &str, rtype: RecordType) -> Result<bool, DnsError> {
        Ok(self.secure_lookup(name, rtype).await?.authenticated)
    }

    /// The name servers asked by [`secure_lookup`](Self::secure_lookup):
    /// the configured ones, else those of /etc/resolv.conf (read once).
    fn secure_servers(&self) -> Result<Vec<SocketAddr>, String> {
        if !self.servers.is_empty() {
            return Ok(self.servers.to_vec());
        }
        static SYSTEM: std::sync::OnceLock<Result<Vec<SocketAddr>, String>> =
            std::sync::OnceLock::new();
        SYSTEM.get_or_init(Self::system_servers).clone()
    }

    fn system_servers() -> Result<Vec<SocketAddr>, String> {
        let (conf, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?;
        let out: Vec<SocketAddr> = conf
            .name_servers()
            .iter()
            .map(|ns| SocketAddr::new(ns.ip, ns.connections.first().map(|c| c.port).unwrap_or(53)))
            .collect();
        if out.is_empty() {
            return Err("no name server in /etc/resolv.conf".into());
        }
        Ok(out)
    }

    /// Records of `(name, rtype)` with the validating resolver's verdict:
    /// the AD bit (RFC 4035 §3.2.3), asked for with AD and DO set as RFC
    /// 6840 §5.7 describes. This trusts the resolver as Postfix does
    /// (`smtp_dns_support_level = dnssec`): it must be a validating
    /// resolver on a trusted path, normally on the same host. A bogus
    /// answer comes back from such a resolver as SERVFAIL, an error here.
    /// UDP first, TCP when the answer is truncated; the configured servers
    /// in order; each exchange bounded by the DNS timeout.
    pub async fn secure_lookup(&self, name: &str, rtype: RecordType) -> Result<Secured, DnsError> {
        let err = |reason: String| DnsError {
            name: name.to_string(),
            reason,
        };
        let servers = self.secure_servers().map_err(err)?;
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
        let mut last = err("no name server answered".to_string());
        for server in servers {
            let mut reply =
                tokio::time::timeout(self.timeout, udp_exchange(&bytes, id, server)).await;
            if let Ok(Ok(r)) = &reply {
                if r.metadata.truncation {
                    reply =
                        tokio::time::timeout(self.timeout, tcp_exchange(&bytes, id, server)).await;
                }
            }
            let reply = match reply {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    last = err(format!("{server}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = err(format!("{server} did not answer within {:?}", self.timeout));
                    continue;
                }
            };
            let authenticated = reply.metadata.authentic_data;
            let code = reply.metadata.response_code;
            let answer = if code == ResponseCode::NXDomain {
                Answer::NoRecords { nxdomain: true }
            } else if code == ResponseCode::NoError {
                let records: Vec<&hickory_resolver::proto::rr::Record> = reply
                    .answers
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                let ttl = records.iter().map(|r| r.ttl).min();
                if records.is_empty() {
                    Answer::NoRecords { nxdomain: false }
                } else {
                    return Ok(Secured {
                        answer: Answer::Records(records.iter().map(|r| r.data.clone()).collect()),
                        authenticated,
                        ttl,
                    });
                }
            } else {
                // SERVFAIL from a validating resolver: bogus, or it could
                // not validate. Either way nobody can tell.
                return Err(err(format!("{server} answered {code}")));
            };
            return Ok(Secured {
                answer,
                authenticated,
                ttl: None,
            });
        }
        Err(last)
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

/// An answer with the validating resolver's DNSSEC verdict.
#[derive(Debug, Clone)]
pub struct Secured {
    pub answer: Answer<RData>,
    /// The AD bit: the resolver validated the answer (or the denial).
    pub authenticated: bool,
    /// Smallest TTL of the records, when there are records.
    pub ttl: Option<u32>,
}

async fn udp_exchange(bytes: &[u8], id: u16, server: SocketAddr) -> Result<Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    socket
        .send_to(bytes, server)
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        if from != server {
            continue;
        }
        let Ok(reply) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if reply.metadata.id == id && reply.metadata.message_type == MessageType::Response {
            return Ok(reply);
        }
    }
}

/// RFC 1035 §4.2.2: two-byte length, then the message.
async fn tcp_exchange(bytes: &[u8], id: u16, server: SocketAddr) -> Result<Message, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("cannot connect over TCP: {e}"))?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&buf).map_err(|e| format!("malformed answer: {e}"))?;
    if reply.metadata.id != id {
        return Err("answer for another query".to_string());
    }
    Ok(reply)
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
