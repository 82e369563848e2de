//! Section 2, the policy host `mta-sts.<domain>`: its addresses and whether
//! they accept connections, its CAA records, the TLS it offers, then the
//! fetch a sender makes ([`Fetcher::fetch_report`](crate::fetch::Fetcher::fetch_report)).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::catalogue::{self as c, TlsSide};
use super::findings::Findings;
use super::options::{Options, Tools};
use super::progress::Progress;
use super::{caa, policy_doc, tls};
use crate::dns::{Answer, Dns};
use crate::policy::ParsedPolicy;
use crate::tlsprobe::TlsProbeError;

async fn reachable(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The policy host's IPv4 and IPv6 addresses, with their findings; `None`
/// (and the reason as a finding) when it has none. `txt_found`: section 1
/// found a valid record, so a missing host is an error rather than simply
/// nothing published.
pub async fn addresses(
    f: &mut Findings,
    dns: &Dns,
    host: &str,
    domain: &str,
    txt_found: bool,
) -> Option<(Vec<IpAddr>, Vec<IpAddr>)> {
    let (a, aaaa) = tokio::join!(dns.a(host), dns.aaaa(host));
    let mut v4: Vec<IpAddr> = Vec::new();
    let mut v6: Vec<IpAddr> = Vec::new();
    let mut nxdomain = false;
    let mut dns_errors = Vec::new();
    match &a {
        Ok(Answer::Records(ips)) => v4 = ips.iter().map(|ip| IpAddr::V4(*ip)).collect(),
        Ok(Answer::NoRecords { nxdomain: nx }) => nxdomain |= *nx,
        Err(e) => dns_errors.push(e.to_string()),
    }
    match &aaaa {
        Ok(Answer::Records(ips)) => v6 = ips.iter().map(|ip| IpAddr::V6(*ip)).collect(),
        Ok(Answer::NoRecords { nxdomain: nx }) => nxdomain |= *nx,
        Err(e) => dns_errors.push(e.to_string()),
    }
    if v4.is_empty() && v6.is_empty() {
        if !txt_found && dns_errors.is_empty() {
            f.push(c::host_skipped(host));
        } else if !dns_errors.is_empty() {
            f.push(c::host_dns_failed(host, &dns_errors, domain));
        } else if nxdomain {
            f.push(c::host_missing(host));
        } else {
            f.push(c::host_no_address(host));
        }
        return None;
    }
    f.push(c::host_addresses(host, &v4, &v6));
    if v6.is_empty() {
        f.push(c::host_no_ipv6(host));
    }
    if v4.is_empty() {
        f.push(c::host_no_ipv4(host));
    }
    Some((v4, v6))
}

/// Connects to every address at once; returns those that accepted, sorted.
async fn reachability(
    f: &mut Findings,
    host: &str,
    addrs: impl Iterator<Item = SocketAddr>,
    timeout: Duration,
) -> Vec<SocketAddr> {
    let mut checks = JoinSet::new();
    for addr in addrs {
        checks.spawn(async move { (addr, reachable(addr, timeout).await) });
    }
    let mut up: Vec<SocketAddr> = Vec::new();
    let mut down: Vec<SocketAddr> = Vec::new();
    while let Some(joined) = checks.join_next().await {
        if let Ok((addr, ok)) = joined {
            if ok {
                up.push(addr);
            } else {
                down.push(addr);
            }
        }
    }
    up.sort();
    down.sort();
    for v6 in [false, true] {
        let family_down: Vec<String> = down
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| a.to_string())
            .collect();
        if !family_down.is_empty() {
            f.push(c::host_unreachable(host, v6, &family_down));
        }
    }
    up
}

/// The whole section; returns the policy when a valid one was fetched.
pub async fn check(
    f: &mut Findings,
    opts: &Options,
    tools: &Tools,
    progress: &Progress,
    txt_found: bool,
) -> Option<ParsedPolicy> {
    let domain = opts.domain.as_str();
    let host = format!("mta-sts.{domain}");
    progress.step(format!("looking up {host}"));
    let (v4, v6) = addresses(f, &tools.dns, &host, domain, txt_found).await?;

    let port = opts.https_port;
    progress.step(format!("connecting to {host}:{port}"));
    let all = v4
        .iter()
        .chain(v6.iter())
        .map(|ip| SocketAddr::new(*ip, port));
    let up = reachability(f, &host, all, opts.timeout).await;

    progress.step(format!("looking up CAA for {host}"));
    caa::check(f, &tools.dns, &host).await;

    // TLS details with the fetcher's trust anchors.
    // Prefer a reachable address (IPv4 first); else the first one, so the
    // connection error is what gets reported.
    let first = v4.first().or(v6.first()).copied()?;
    let target = up
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| up.first())
        .copied()
        .unwrap_or(SocketAddr::new(first, port));
    progress.step(format!("TLS handshake with {host} at {target}"));
    let tls_failed = match tools.prober.probe_tcp(target, &host, &[b"http/1.1"]).await {
        Ok(report) => tls::findings(f, TlsSide::PolicyHost, None, &host, &report),
        Err(TlsProbeError::TooOld(e)) => {
            f.push(c::policy_tls_old(&host, target, &e));
            true
        }
        Err(e) => {
            f.push(c::policy_tls_failed(&host, target, &e, port));
            true
        }
    };

    progress.step(format!("fetching https://{host}/.well-known/mta-sts.txt"));
    let report = tools.fetcher.fetch_report(domain).await;
    policy_doc::fetch_findings(f, &report, tls_failed, port)
}
