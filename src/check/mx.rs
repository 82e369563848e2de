//! Section 3, the MX hosts of the domain: the MX answer read by the shared
//! rule [`MxHosts`] (NXDOMAIN, null MX, implicit MX, each host once in
//! preference order), then every host checked at once
//! ([`mx_host`]) and reported in preference order.

use tokio::task::JoinSet;

use super::catalogue as c;
use super::findings::{Findings, MxFacts};
use super::mx_dane::MxSet;
use super::mx_host::{self, MxHost};
use super::progress::Progress;
use super::wording::plural;
use crate::dns::{Answer, Dns, MxRecord, RecordType};
use crate::policy::{normalize_domain, MxHosts, Policy};
use crate::smtp::probe::SmtpProbeConfig;
use crate::tlsprobe::TlsProber;

/// What the MX section is asked about.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub domain: &'a str,
    /// The valid policy, if any.
    pub policy: Option<&'a Policy>,
    /// MTA-STS is published (or a policy file is linted): a null MX then
    /// leaves a policy with nothing to protect.
    pub sts_published: bool,
    /// `None`: `--no-smtp`.
    pub smtp: Option<&'a SmtpProbeConfig>,
}

#[derive(Debug, Default)]
pub struct MxOutcome {
    pub hosts: Vec<MxFacts>,
    /// Normalised hosts for `--suggest` (`None`: unknown).
    pub suggest_hosts: Option<Vec<String>>,
    pub null_mx: bool,
}

/// `hosts` with the preference of their first MX record (the one a sender
/// tries them at).
fn with_preferences(records: &[MxRecord], hosts: Vec<String>) -> Vec<MxHost> {
    hosts
        .into_iter()
        .map(|host| MxHost {
            preference: records
                .iter()
                .find(|r| r.exchange == host)
                .map_or(0, |r| r.preference),
            host,
        })
        .collect()
}

/// The hosts to check, with the findings about the MX answer; `None` when
/// there is none to check (the outcome says why).
async fn hosts(
    f: &mut Findings,
    dns: &Dns,
    scope: &Scope<'_>,
    outcome: &mut MxOutcome,
) -> Option<(Vec<MxHost>, bool)> {
    let domain = scope.domain;
    let answer = match dns.mx(domain).await {
        Ok(answer) => answer,
        Err(e) => {
            f.push(c::mx_lookup_failed(domain, &e));
            return None;
        }
    };
    // An implicit MX needs the name to exist without MX records, which
    // only the answer tells (MxHosts makes both a one-host list).
    let implicit = matches!(answer, Answer::NoRecords { nxdomain: false });
    let hosts = match answer.mx_hosts(domain) {
        MxHosts::NoDomain => {
            f.push(c::mx_domain_missing(domain));
            return None;
        }
        MxHosts::NullMx { alongside } => {
            outcome.null_mx = true;
            if alongside.is_empty() {
                f.push(c::mx_null(domain, scope.sts_published));
                outcome.suggest_hosts = Some(Vec::new());
                return None;
            }
            f.push(c::mx_null_mixed(domain));
            alongside
        }
        MxHosts::Hosts(hosts) if implicit => {
            let (a, aaaa) = tokio::join!(dns.a(domain), dns.aaaa(domain));
            let has_address =
                matches!(a, Ok(Answer::Records(_))) || matches!(aaaa, Ok(Answer::Records(_)));
            if !has_address {
                f.push(c::mx_none(domain));
                outcome.suggest_hosts = Some(Vec::new());
                return None;
            }
            f.push(c::mx_implicit(domain));
            hosts
        }
        MxHosts::Hosts(hosts) => hosts,
    };
    Some((with_preferences(answer.records(), hosts), implicit))
}

pub async fn check(
    f: &mut Findings,
    dns: &Dns,
    prober: &TlsProber,
    progress: &Progress,
    scope: &Scope<'_>,
) -> MxOutcome {
    let domain = scope.domain;
    let mut outcome = MxOutcome::default();
    let Some((hosts, implicit)) = hosts(f, dns, scope, &mut outcome).await else {
        return outcome;
    };
    if !implicit {
        let list: Vec<(u16, &str)> = hosts
            .iter()
            .map(|h| (h.preference, h.host.as_str()))
            .collect();
        f.push(c::mx_records(&list));
    }
    outcome.suggest_hosts = Some(
        hosts
            .iter()
            .filter_map(|h| normalize_domain(&h.host).ok())
            .collect(),
    );
    if scope.smtp.is_none() {
        f.push(c::smtp_skipped());
    }

    progress.step(format!(
        "checking {}",
        plural(hosts.len(), "MX host", "MX hosts")
    ));
    // RFC 7672 §2.2: DANE senders use TLSA records only for MX hosts from a
    // DNSSEC-validated MX RRset (for an implicit MX, the domain's own
    // address records), the rule the relay and socketmap decide with.
    let rtype = if implicit {
        RecordType::A
    } else {
        RecordType::MX
    };
    let mx_validated = dns.authenticated(domain, rtype).await.ok();
    let mut set = JoinSet::new();
    for (i, mx) in hosts.into_iter().enumerate() {
        let dns = dns.clone();
        let prober = prober.clone();
        let policy = scope.policy.cloned();
        let smtp = scope.smtp.cloned();
        let domain = domain.to_string();
        set.spawn(async move {
            let mut hf = Findings::default();
            let mx_set = MxSet {
                domain: &domain,
                validated: mx_validated,
            };
            let facts = mx_host::check(
                &mut hf,
                &dns,
                &prober,
                &mx,
                &mx_set,
                policy.as_ref(),
                smtp.as_ref(),
            )
            .await;
            (i, facts, hf)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(result) => done.push(result),
            Err(e) => f.push(c::mx_check_crashed(&e)),
        }
    }
    done.sort_by_key(|(i, _, _)| *i);
    for (_, facts, hf) in done {
        f.append(hf);
        outcome.hosts.push(facts);
    }
    outcome
}
