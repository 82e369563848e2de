//! Section 3, one MX host: its name, whether the policy admits it
//! ([`MxPattern::matches`], the daemon's own matching), its addresses,
//! then DANE ([`mx_dane`]) and the SMTP probe ([`mx_smtp`]).

use std::net::IpAddr;

use super::catalogue as c;
use super::findings::{Findings, MxFacts};
use super::mx_dane::{self, MxSet};
use super::mx_smtp;
use crate::dns::{Answer, Dns};
use crate::policy::{normalize_domain, Mode, MxPattern, Policy};
use crate::smtp::probe::{probe, SmtpProbeConfig};
use crate::tlsprobe::TlsProber;

/// The MX host under test.
#[derive(Debug, Clone)]
pub struct MxHost {
    /// As the MX record names it.
    pub host: String,
    pub preference: u16,
}

fn policy_match(f: &mut Findings, host: &str, name: &str, policy: &Policy) -> bool {
    let matched: Option<&MxPattern> = policy.mx.iter().find(|pat| pat.matches(name));
    match (matched, policy.mode) {
        (Some(pattern), _) => f.push_host(host, c::mx_matches(pattern)),
        // A withdrawn policy restricts nothing.
        (None, Mode::None) => {}
        (None, mode) => {
            let listed: Vec<String> = policy.mx.iter().map(|m| m.to_string()).collect();
            f.push_host(host, c::mx_not_in_policy(host, mode, &listed));
        }
    }
    matched.is_some()
}

/// The host's addresses (IPv4 first), with their findings.
async fn addresses(f: &mut Findings, dns: &Dns, host: &str, name: &str) -> Vec<IpAddr> {
    let (a, aaaa) = tokio::join!(dns.a(name), dns.aaaa(name));
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut errors = Vec::new();
    let mut has_v6 = false;
    match a {
        Ok(Answer::Records(r)) => ips.extend(r.into_iter().map(IpAddr::V4)),
        Ok(_) => {}
        Err(e) => errors.push(e.to_string()),
    }
    match aaaa {
        Ok(Answer::Records(r)) => {
            has_v6 = true;
            ips.extend(r.into_iter().map(IpAddr::V6));
        }
        Ok(_) => {}
        Err(e) => errors.push(e.to_string()),
    }
    let shown: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    if ips.is_empty() {
        if errors.is_empty() {
            f.push_host(host, c::mx_no_address(host));
        } else {
            f.push_host(host, c::mx_dns_failed(host, &errors));
        }
    } else {
        f.push_host(host, c::mx_addresses(&shown));
        if !has_v6 {
            f.push_host(host, c::mx_no_ipv6(host));
        }
    }
    ips
}

pub async fn check(
    f: &mut Findings,
    dns: &Dns,
    prober: &TlsProber,
    mx: &MxHost,
    mx_set: &MxSet<'_>,
    policy: Option<&Policy>,
    smtp: Option<&SmtpProbeConfig>,
) -> MxFacts {
    let host = mx.host.as_str();
    let mut facts = MxFacts {
        host: host.to_string(),
        preference: mx.preference,
        addresses: Vec::new(),
        matches_policy: None,
        smtp: None,
        tlsa: Vec::new(),
        validated_tls: false,
    };
    let name = match normalize_domain(host) {
        Ok(n) => n,
        Err(e) => {
            f.push_host(host, c::mx_bad_name(host, &e));
            return facts;
        }
    };
    if let Some(p) = policy {
        facts.matches_policy = Some(policy_match(f, host, &name, p));
    }
    let ips = addresses(f, dns, host, &name).await;
    facts.addresses = ips.iter().map(|ip| ip.to_string()).collect();
    facts.tlsa = mx_dane::check(f, dns, host, &name, mx_set).await;

    let Some(smtp) = smtp else {
        return facts;
    };
    // One address per host, IPv4 first: port 25 over IPv6 is often
    // unrouted where the check runs.
    let Some(ip) = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
    else {
        return facts;
    };
    let report = probe(&name, ip, smtp, prober).await;
    mx_smtp::findings(f, host, &report, policy.map(|p| p.mode), smtp.port);
    facts.validated_tls = mx_smtp::validated_tls(&report);
    facts.smtp = Some(mx_smtp::facts(&report));
    facts
}
