//! DNS lookups for MTA-STS, with the error classes RFC 8461 cares about:
//! "there is nothing" (NXDOMAIN or no records) is different from "we could not
//! find out" (SERVFAIL, timeout), because only the first may end a policy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
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

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    description: Arc<str>,
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
        let fqdn = Self::fqdn(name)?;
        match self.resolver.txt_lookup(fqdn).await {
            Ok(lookup) => {
                let records: Vec<Vec<u8>> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .flat_map(|s| s.iter().copied())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    Ok(Answer::NoRecords { nxdomain: false })
                } else {
                    Ok(Answer::Records(records))
                }
            }
            Err(e) => Self::classify(name, e),
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
