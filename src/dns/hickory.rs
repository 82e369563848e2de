//! The real DNS: hickory's resolver for ordinary lookups, and a raw query
//! with AD and DO set for the DNSSEC verdict of the validating resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

use super::{Answer, DnsError, DnsLookup, Lookup, Secured};
use crate::config::Config;

/// The configured name servers (or those of /etc/resolv.conf), through
/// hickory.
#[derive(Clone)]
pub struct HickoryDns {
    resolver: TokioResolver,
    description: Arc<str>,
    /// The configured name servers (empty: those of /etc/resolv.conf), for
    /// the raw query of [`HickoryDns::secure`].
    servers: Arc<[SocketAddr]>,
    timeout: Duration,
}

impl HickoryDns {
    pub fn from_config(config: &Config) -> Result<HickoryDns, String> {
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
        Ok(HickoryDns {
            resolver,
            description: description.into(),
            servers: servers.into(),
            timeout: config.dns.timeout,
        })
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

    /// Records of one type at `name`, CNAMEs followed by the resolver and
    /// left out of the answer, and when the answer's TTL runs out (None for
    /// a negative answer).
    async fn lookup_records(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Answer<RData>, Option<Instant>), DnsError> {
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

    /// The name servers asked by [`secure`](Self::secure):
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
    async fn secure(&self, name: &str, rtype: RecordType) -> Result<Secured, DnsError> {
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

    /// A and AAAA addresses of a host.
    async fn addresses(&self, host: &str) -> Result<Answer<IpAddr>, DnsError> {
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

impl DnsLookup for HickoryDns {
    fn describe(&self) -> &str {
        &self.description
    }

    fn records<'a>(
        &'a self,
        name: &'a str,
        rtype: RecordType,
    ) -> Lookup<'a, (Answer<RData>, Option<Instant>)> {
        Box::pin(self.lookup_records(name, rtype))
    }

    fn secure_lookup<'a>(&'a self, name: &'a str, rtype: RecordType) -> Lookup<'a, Secured> {
        Box::pin(self.secure(name, rtype))
    }

    fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Answer<IpAddr>> {
        Box::pin(self.addresses(host))
    }
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
