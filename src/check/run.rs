//! The checks, in report order. Discovery, fetch, parsing and MX matching are
//! the resolver's own ([`crate::policy::discover`], [`Fetcher::fetch_report`],
//! [`crate::policy::parse_policy`], [`MxPattern::matches`]), so the check
//! and the daemon cannot disagree about a domain's policy.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::findings::{
    Findings, MxFacts, PolicyFacts, PolicySource, Report, Section, Severity, SmtpFacts,
};
use super::progress::Progress;
use super::suggest;
use crate::dns::{Answer, Dns, MxRecord};
use crate::fetch::{FetchError, FetchReport, Fetcher};
use crate::policy::tlsrpt::{discover_tlsrpt, is_tlsrpt_record, TlsRptDiscovery};
use crate::policy::txt::{is_sts_record, repaired, TxtError};
use crate::policy::{
    discover, normalize_domain, parse_policy, Discovery, Mode, MxPattern, ParsedPolicy, Policy,
    MAX_AGE_LIMIT, MAX_POLICY_BYTES,
};
use crate::smtp::probe::{probe, ProbeStage, SmtpProbeConfig, SmtpProbeReport};
use crate::tlsprobe::{CertProblem, LeafInfo, TlsProbeError, TlsProber, TlsReport};

/// Certificates expiring sooner than this many days are a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;
/// `max_age` below this many seconds (one day) is a warning.
pub const SHORT_MAX_AGE: u32 = 86_400;

/// The I/O the check uses: the daemon's own DNS and fetcher, and a TLS prober
/// with the fetcher's trust anchors.
#[derive(Clone, Debug)]
pub struct Tools {
    pub dns: Dns,
    pub fetcher: Fetcher,
    pub prober: TlsProber,
}

/// A policy given on the command line instead of the published one.
#[derive(Debug, Clone)]
pub enum PolicyInput {
    File { path: String, body: Vec<u8> },
    Stdin { body: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Normalised (A-labels, lower case, no trailing dot).
    pub domain: String,
    pub policy_input: Option<PolicyInput>,
    /// `None`: `--no-smtp`.
    pub smtp: Option<SmtpProbeConfig>,
    pub https_port: u16,
    pub timeout: Duration,
    pub suggest: bool,
}

/// The check could not run at all (exit status 3).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CannotRun(pub String);

/// What section 1 established.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TxtState {
    Found(String),
    Missing,
    Broken,
    LookupFailed,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `YYYY-MM-DD` of a Unix time.
fn iso_date(unix: i64) -> String {
    let id = suggest::fresh_id(
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0)),
    );
    format!("{}-{}-{}", &id[0..4], &id[4..6], &id[6..8])
}

fn expiry_phrase(leaf: &LeafInfo) -> String {
    let date = iso_date(leaf.not_after);
    let days = leaf.days_left.unsigned_abs() as usize;
    match (leaf.seconds_left < 0, days) {
        (true, 0) => format!("expired less than a day ago ({date})"),
        (true, d) => format!("expired {} ago ({date})", plural(d, "day", "days")),
        (false, 0) => format!("expires within a day ({date})"),
        (false, d) => format!("expires in {} ({date})", plural(d, "day", "days")),
    }
}

fn lossy(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &text[..cut])
    } else {
        text.into_owned()
    }
}

/// Runs every check for `opts.domain`.
pub async fn run(opts: &Options, tools: &Tools, progress: &Progress) -> Result<Report, CannotRun> {
    let mut f = Findings::default();
    let domain = opts.domain.as_str();
    let (source, source_path) = match &opts.policy_input {
        None => (PolicySource::Published, None),
        Some(PolicyInput::File { path, .. }) => (PolicySource::File, Some(path.clone())),
        Some(PolicyInput::Stdin { .. }) => (PolicySource::Stdin, None),
    };

    let mut txt_state = TxtState::Missing;
    let parsed: Option<ParsedPolicy>;
    match &opts.policy_input {
        None => {
            progress.step(format!("looking up _mta-sts.{domain} TXT"));
            txt_state = txt_section(&mut f, tools, domain).await?;
            parsed = policy_host_section(&mut f, opts, tools, progress, &txt_state).await;
        }
        Some(input) => {
            parsed = policy_file_section(&mut f, input);
        }
    }
    let policy = parsed.as_ref().map(|p| &p.policy);
    let sts_published =
        matches!(txt_state, TxtState::Found(_)) || source != PolicySource::Published;

    progress.step(format!("looking up MX records of {domain}"));
    let mx = mx_section(&mut f, opts, tools, progress, policy, sts_published).await;

    let mut tlsrpt_rua = Vec::new();
    let mut tlsrpt_ok = true;
    if source == PolicySource::Published {
        progress.step(format!("looking up _smtp._tls.{domain} TXT"));
        (tlsrpt_rua, tlsrpt_ok) = tlsrpt_section(&mut f, tools, domain).await;
    }

    let policy_facts = parsed.as_ref().map(|p| PolicyFacts {
        id: match &txt_state {
            TxtState::Found(id) => Some(id.clone()),
            _ => None,
        },
        mode: p.policy.mode.to_string(),
        max_age: p.policy.max_age,
        mx: p.policy.mx.iter().map(|m| m.to_string()).collect(),
    });

    let suggestion = if opts.suggest && source == PolicySource::Published {
        let sts_ok = matches!(txt_state, TxtState::Found(_)) && parsed.is_some();
        if sts_ok && tlsrpt_ok {
            None
        } else {
            Some(suggest::suggest(
                domain,
                mx.suggest_hosts.as_deref(),
                !sts_ok,
                !tlsrpt_ok,
                opts.https_port,
                SystemTime::now(),
            ))
        }
    } else {
        None
    };

    let findings = f.into_vec();
    let verdict = verdict(
        domain,
        source,
        &txt_state,
        parsed.as_ref(),
        &mx.hosts,
        mx.null_mx,
        opts.smtp.is_some(),
        &findings,
    );
    Ok(Report {
        domain: domain.to_string(),
        source,
        source_path,
        findings,
        policy: policy_facts,
        mx_hosts: mx.hosts,
        tlsrpt_rua,
        smtp_probed: opts.smtp.is_some(),
        verdict,
        suggestion,
        suggest_requested: opts.suggest,
    })
}

// ---------------------------------------------------------------------------
// 1. _mta-sts TXT

async fn txt_section(f: &mut Findings, tools: &Tools, domain: &str) -> Result<TxtState, CannotRun> {
    const S: Section = Section::Txt;
    let name = format!("_mta-sts.{domain}");
    let records = match tools.dns.txt(&name).await {
        Ok(Answer::Records(r)) => r,
        Ok(Answer::NoRecords { .. }) => {
            f.push(
                S,
                Severity::Error,
                "txt-missing",
                format!(
                    "no TXT record at {name}: senders see no MTA-STS policy for {domain}; \
                     publish \"v=STSv1; id=…\" there (--suggest prints one)"
                ),
            );
            return Ok(TxtState::Missing);
        }
        Err(e) => {
            // Is it this name, or is our resolver dead?
            if tools.dns.txt(".").await.is_err() {
                return Err(CannotRun(format!(
                    "the DNS resolver does not answer ({}): {e}; use --dns-server",
                    tools.dns.describe()
                )));
            }
            f.push(
                S,
                Severity::Error,
                "txt-lookup-failed",
                format!(
                    "cannot look up TXT {name}: {e}; senders cannot discover the policy either \
                     (they keep a cached one, new senders get none) — fix the DNS servers of {domain}"
                ),
            );
            return Ok(TxtState::LookupFailed);
        }
    };

    let mut spf = 0;
    let mut near_miss: Vec<String> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for raw in &records {
        let text = lossy(raw);
        if std::str::from_utf8(raw).is_ok_and(is_sts_record) {
            continue;
        }
        let trimmed = text.trim_start();
        if trimmed.to_ascii_lowercase().starts_with("v=spf1") {
            spf += 1;
        } else if trimmed.to_ascii_lowercase().starts_with("v=stsv1") {
            near_miss.push(text);
        } else {
            others.push(text);
        }
    }
    if spf > 0 {
        f.push(
            S,
            Severity::Warning,
            "txt-spf",
            format!(
                "an SPF record (v=spf1) is published at {name}; SPF belongs at {domain} itself \
                 (often a wildcard or copied zone entry) — remove it from {name}"
            ),
        );
    }
    for text in &near_miss {
        f.push(
            S,
            Severity::Error,
            "txt-not-sts",
            format!(
                "TXT record \"{text}\" at {name} is not a valid STSv1 record: it must start with \
                 exactly \"v=STSv1\" (case-sensitive, no leading space), then \"; id=…\""
            ),
        );
    }
    if !others.is_empty() {
        f.push(
            S,
            Severity::Info,
            "txt-other",
            format!(
                "{} at {name} ignored by senders: {}",
                plural(others.len(), "other TXT record", "other TXT records"),
                others
                    .iter()
                    .map(|t| format!("\"{t}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }

    let state = match discover(&records) {
        Discovery::Found(record) => {
            f.push(
                S,
                Severity::Ok,
                "txt-valid",
                format!("one STSv1 record at {name}, id {}", record.id),
            );
            if !record.extensions.is_empty() {
                let ext: Vec<String> = record
                    .extensions
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                f.push(
                    S,
                    Severity::Info,
                    "txt-extensions",
                    format!("extension fields ignored by senders: {}", ext.join("; ")),
                );
            }
            TxtState::Found(record.id)
        }
        Discovery::NoRecord => {
            let why = if spf > 0 {
                "the TXT records there are not STSv1 records (one is SPF)".to_string()
            } else if !near_miss.is_empty() {
                "the record there is not a valid STSv1 record (see above)".to_string()
            } else {
                "the TXT records there are not STSv1 records".to_string()
            };
            f.push(
                S,
                Severity::Error,
                "txt-missing",
                format!(
                    "no STSv1 record at {name}: {why}; senders see no MTA-STS policy — publish \
                     \"v=STSv1; id=…\" there (--suggest prints one)"
                ),
            );
            TxtState::Missing
        }
        Discovery::Multiple(n) => {
            f.push(
                S,
                Severity::Error,
                "txt-multiple",
                format!(
                    "{n} STSv1 records at {name}: senders treat this as no policy at all \
                     (RFC 8461 §3.1) — keep exactly one"
                ),
            );
            TxtState::Broken
        }
        Discovery::Invalid(e @ (TxtError::TrailingWhitespace | TxtError::EmptyField)) => {
            let text = records
                .iter()
                .filter_map(|r| std::str::from_utf8(r).ok())
                .find(|t| is_sts_record(t))
                .unwrap_or_default();
            let fix = match repaired(text) {
                Some(fixed) => format!("publish it as \"{fixed}\""),
                None => "write it as \"v=STSv1; id=<1 to 32 letters or digits>\"".to_string(),
            };
            f.push(
                S,
                Severity::Error,
                "txt-grammar",
                format!(
                    "the STSv1 record \"{text}\" at {name} is outside the RFC 8461 §3.1 grammar: \
                     {e}; senders that follow the RFC (this agent among them) ignore it and see no \
                     MTA-STS policy, while lenient ones accept it — {fix}"
                ),
            );
            TxtState::Broken
        }
        Discovery::Invalid(e) => {
            f.push(
                S,
                Severity::Error,
                "txt-invalid",
                format!(
                    "the STSv1 record at {name} is invalid: {e}; senders treat this as no policy \
                     — write it as \"v=STSv1; id=<1 to 32 letters or digits>\""
                ),
            );
            TxtState::Broken
        }
    };

    match tools
        .dns
        .authenticated(&name, hickory_resolver::proto::rr::RecordType::TXT)
        .await
    {
        Ok(true) => f.push(
            S,
            Severity::Info,
            "txt-dnssec",
            format!("the answer for {name} is DNSSEC-validated (AD bit from the resolver)"),
        ),
        Ok(false) => f.push(
            S,
            Severity::Info,
            "txt-no-dnssec",
            format!(
                "the answer for {name} is not DNSSEC-validated; MTA-STS does not need DNSSEC \
                 (the policy is authenticated by HTTPS)"
            ),
        ),
        Err(e) => f.push(
            S,
            Severity::Info,
            "txt-dnssec-unknown",
            format!("could not ask the resolver about DNSSEC for {name}: {e}"),
        ),
    }
    Ok(state)
}

// ---------------------------------------------------------------------------
// 2. Policy host and policy

async fn reachable(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn policy_host_section(
    f: &mut Findings,
    opts: &Options,
    tools: &Tools,
    progress: &Progress,
    txt: &TxtState,
) -> Option<ParsedPolicy> {
    const S: Section = Section::Policy;
    let domain = opts.domain.as_str();
    let host = format!("mta-sts.{domain}");
    progress.step(format!("looking up {host}"));
    let (a, aaaa) = tokio::join!(tools.dns.a(&host), tools.dns.aaaa(&host));
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
    let missing_txt = !matches!(txt, TxtState::Found(_));
    if v4.is_empty() && v6.is_empty() {
        if missing_txt && dns_errors.is_empty() {
            f.push(
                S,
                Severity::Info,
                "host-skipped",
                format!("{host} does not exist either: nothing to fetch"),
            );
        } else if !dns_errors.is_empty() {
            f.push(
                S,
                Severity::Error,
                "host-dns-failed",
                format!(
                    "cannot look up {host}: {}; senders cannot fetch the policy — fix the DNS \
                     servers of {domain}",
                    dns_errors.join("; ")
                ),
            );
        } else if nxdomain {
            f.push(
                S,
                Severity::Error,
                "host-missing",
                format!(
                    "{host} does not exist (NXDOMAIN): senders cannot fetch the policy — publish \
                     A and AAAA records for {host} pointing at a web server that serves it"
                ),
            );
        } else {
            f.push(
                S,
                Severity::Error,
                "host-no-address",
                format!(
                    "{host} has no A or AAAA record: senders cannot fetch the policy — publish \
                     its addresses"
                ),
            );
        }
        return None;
    }

    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut shown = Vec::new();
    if !v4.is_empty() {
        shown.push(format!("A {}", list(&v4)));
    }
    if !v6.is_empty() {
        shown.push(format!("AAAA {}", list(&v6)));
    }
    f.push(
        S,
        Severity::Ok,
        "host-addresses",
        format!("{host}: {}", shown.join("; ")),
    );
    if v6.is_empty() {
        f.push(
            S,
            Severity::Warning,
            "host-no-ipv6",
            format!(
                "{host} has no AAAA record: IPv6-only senders cannot fetch the policy — \
                 serve it over IPv6 too and publish the AAAA record"
            ),
        );
    }
    if v4.is_empty() {
        f.push(
            S,
            Severity::Warning,
            "host-no-ipv4",
            format!(
                "{host} has no A record: IPv4-only senders (most of them) cannot fetch the \
                 policy — publish an A record"
            ),
        );
    }

    progress.step(format!("connecting to {host}:{}", opts.https_port));
    let port = opts.https_port;
    let mut checks = JoinSet::new();
    for ip in v4.iter().chain(v6.iter()) {
        let addr = SocketAddr::new(*ip, port);
        let timeout = opts.timeout;
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
    for (family, is_v6, code) in [
        ("IPv4", false, "host-ipv4-unreachable"),
        ("IPv6", true, "host-ipv6-unreachable"),
    ] {
        let fam_down: Vec<String> = down
            .iter()
            .filter(|a| a.is_ipv6() == is_v6)
            .map(|a| a.to_string())
            .collect();
        if !fam_down.is_empty() {
            f.push(
                S,
                Severity::Warning,
                code,
                format!(
                    "{host} does not accept connections over {family} at {}: senders using \
                     {family} cannot fetch the policy — fix the web server or remove the record",
                    fam_down.join(", ")
                ),
            );
        }
    }

    // CAA: which CAs may issue the policy host's certificate (RFC 8659 tree walk).
    progress.step(format!("looking up CAA for {host}"));
    caa_findings(f, tools, &host).await;

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
        Ok(report) => tls_findings(f, S, None, &host, &report, Severity::Error, "policy"),
        Err(TlsProbeError::TooOld(e)) => {
            f.push(
                S,
                Severity::Error,
                "policy-tls-old",
                format!(
                    "{host} at {target} offers no TLS version from 1.2 up ({e}): senders refuse \
                     older TLS — enable TLS 1.2 and 1.3 on the web server"
                ),
            );
            true
        }
        Err(e) => {
            f.push(
                S,
                Severity::Error,
                "policy-tls-failed",
                format!(
                    "no TLS with {host} at {target}: {e} — the web server must answer HTTPS for \
                     {host} on port {port} with a certificate for that name"
                ),
            );
            true
        }
    };

    progress.step(format!("fetching https://{host}/.well-known/mta-sts.txt"));
    let report = tools.fetcher.fetch_report(domain).await;
    fetch_findings(f, &report, tls_failed, port)
}

async fn caa_findings(f: &mut Findings, tools: &Tools, host: &str) {
    const S: Section = Section::Policy;
    let labels: Vec<&str> = host.split('.').collect();
    // host, its parent, …, down to the registrable part (never the TLD alone).
    for start in 0..labels.len().saturating_sub(1) {
        let name = labels[start..].join(".");
        match tools.dns.caa(&name).await {
            Ok(Answer::Records(records)) => {
                let issuers: Vec<String> = records
                    .iter()
                    .filter(|r| r.tag.eq_ignore_ascii_case("issue"))
                    .map(|r| {
                        let v = r.value.trim();
                        let (ca, params) = v.split_once(';').unwrap_or((v, ""));
                        let ca = ca.trim().trim_end_matches('.');
                        if ca.is_empty() {
                            "(no CA)".to_string()
                        } else if params.trim().is_empty() {
                            ca.to_string()
                        } else {
                            format!("{ca};{params}")
                        }
                    })
                    .collect();
                let text = if issuers.is_empty() {
                    "no 'issue' property, so any CA may issue".to_string()
                } else {
                    format!("may issue: {}", issuers.join(", "))
                };
                f.push(
                    S,
                    Severity::Info,
                    "caa-restricted",
                    format!(
                        "CAA at {name} governs certificates for {host}: {text}; renewals must \
                         come from one of these CAs"
                    ),
                );
                return;
            }
            Ok(Answer::NoRecords { .. }) => continue,
            Err(e) => {
                f.push(
                    S,
                    Severity::Info,
                    "caa-lookup-failed",
                    format!("could not look up CAA at {name}: {e}"),
                );
                return;
            }
        }
    }
    f.push(
        S,
        Severity::Info,
        "caa-none",
        format!(
            "no CAA records for {host} or its parents: any public CA may issue its certificate"
        ),
    );
}

/// Findings for a completed TLS handshake; returns true when the certificate
/// or version is unacceptable. `prefix` names the codes (`policy`/`smtp`).
fn tls_findings(
    f: &mut Findings,
    section: Section,
    host_field: Option<&str>,
    name: &str,
    report: &TlsReport,
    cert_severity: Severity,
    prefix: &str,
) -> bool {
    let push = |f: &mut Findings, sev, code: &'static str, msg: String| match host_field {
        Some(h) => f.push_host(section, h, sev, code, msg),
        None => f.push(section, sev, code, msg),
    };
    let policy = prefix == "policy";
    let mut failed = false;
    if report.version_ok {
        push(
            f,
            Severity::Ok,
            if policy { "policy-tls" } else { "smtp-tls" },
            format!("{}, cipher {}", report.version, report.cipher),
        );
    } else {
        failed = true;
        push(
            f,
            Severity::Error,
            if policy {
                "policy-tls-old"
            } else {
                "smtp-tls-old"
            },
            format!(
                "negotiated {} with {name}: below TLS 1.2, which senders refuse — enable TLS 1.2 \
                 and 1.3",
                report.version
            ),
        );
    }
    let covers = report
        .leaf
        .as_ref()
        .map(|l| {
            if l.dns_names.is_empty() {
                "no DNS names".to_string()
            } else {
                l.dns_names.join(", ")
            }
        })
        .unwrap_or_else(|| "unknown names".to_string());
    let expiry = report.leaf.as_ref().map(expiry_phrase);
    let issuer = report
        .leaf
        .as_ref()
        .map(|l| l.issuer.clone())
        .unwrap_or_default();
    let senders = if policy {
        "senders refuse to fetch the policy, so it is not applied"
    } else {
        "senders enforcing MTA-STS refuse to deliver to this host"
    };
    match &report.cert {
        Ok(()) => {
            push(
                f,
                Severity::Ok,
                if policy {
                    "policy-cert-valid"
                } else {
                    "smtp-cert-valid"
                },
                format!(
                    "certificate valid for {name}, issued by {issuer}, {}",
                    expiry.clone().unwrap_or_else(|| "expiry unknown".into())
                ),
            );
            if let Some(leaf) = &report.leaf {
                if leaf.seconds_left < EXPIRY_WARNING_DAYS * 86_400 {
                    push(
                        f,
                        Severity::Warning,
                        if policy {
                            "policy-cert-expiring"
                        } else {
                            "smtp-cert-expiring"
                        },
                        format!(
                            "certificate for {name} {}: renew it now (automate renewal)",
                            expiry_phrase(leaf)
                        ),
                    );
                }
            }
        }
        Err(problem) => {
            failed = true;
            let (code, text) = match problem {
                CertProblem::Expired => (
                    if policy {
                        "policy-cert-expired"
                    } else {
                        "smtp-cert-expired"
                    },
                    format!(
                        "certificate for {name} {}: {senders} — renew it",
                        expiry.clone().unwrap_or_else(|| "has expired".into())
                    ),
                ),
                CertProblem::NotYetValid => (
                    if policy {
                        "policy-cert-invalid"
                    } else {
                        "smtp-cert-invalid"
                    },
                    format!(
                        "certificate for {name} is not valid yet: {senders} — check the server's \
                         clock and the certificate dates"
                    ),
                ),
                CertProblem::NameMismatch => (
                    if policy {
                        "policy-cert-wrong-name"
                    } else {
                        "smtp-cert-wrong-name"
                    },
                    format!(
                        "certificate is not valid for {name} (it covers: {covers}): {senders} — \
                         install a certificate whose subjectAltName includes {name}"
                    ),
                ),
                CertProblem::Untrusted => (
                    if policy {
                        "policy-cert-untrusted"
                    } else {
                        "smtp-cert-untrusted"
                    },
                    format!(
                        "certificate for {name} is self-signed or from an untrusted CA (issuer: \
                         {issuer}): {senders} — use a certificate from a public CA"
                    ),
                ),
                CertProblem::Other(e) => (
                    if policy {
                        "policy-cert-invalid"
                    } else {
                        "smtp-cert-invalid"
                    },
                    format!("certificate for {name} rejected ({e}): {senders} — replace it"),
                ),
            };
            push(f, cert_severity, code, text);
        }
    }
    failed
}

fn policy_line(body: &[u8], line: usize) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.split('\n')
        .nth(line.checked_sub(1)?)
        .map(|l| lossy(l.trim_end_matches('\r').as_bytes()))
}

/// Findings for the fetch; returns the parsed policy when it is valid.
fn fetch_findings(
    f: &mut Findings,
    report: &FetchReport,
    tls_failed: bool,
    port: u16,
) -> Option<ParsedPolicy> {
    const S: Section = Section::Policy;
    let url = &report.url;
    match &report.result {
        Ok(fetched) => {
            f.push(
                S,
                Severity::Ok,
                "policy-fetched",
                format!(
                    "{url}: HTTP {}, Content-Type {}, {} bytes",
                    report.status.unwrap_or(200),
                    report.content_type.as_deref().unwrap_or("?"),
                    fetched.body.len(),
                ),
            );
            document_findings(f, &fetched.parsed);
            Some(fetched.parsed.clone())
        }
        Err(e) => {
            let (code, msg) = match e {
                FetchError::Redirect { status, location } => (
                    "policy-redirect",
                    format!(
                        "{url} answers HTTP {status} redirecting to {location}: senders never follow \
                         redirects (RFC 8461 §3.3), so they get no policy — serve the policy itself \
                         at {url} with status 200"
                    ),
                ),
                FetchError::Status(status) => (
                    "policy-http-status",
                    format!(
                        "{url} answers HTTP {status}: senders accept only 200 — serve the policy \
                         file at exactly /.well-known/mta-sts.txt"
                    ),
                ),
                FetchError::ContentType(ct) => (
                    "policy-content-type",
                    format!(
                        "{url} is served as {}: senders require text/plain — set the Content-Type \
                         of mta-sts.txt to text/plain",
                        ct.as_deref().map(|c| format!("'{c}'")).unwrap_or_else(|| "no Content-Type".into())
                    ),
                ),
                FetchError::TooLarge { limit } => (
                    "policy-too-large",
                    format!(
                        "{url} is larger than {limit} bytes: senders stop reading and reject it — \
                         serve only the policy"
                    ),
                ),
                FetchError::Timeout(d, _) => (
                    "policy-timeout",
                    format!(
                        "{url} did not answer completely within {d:?}: senders give up too — make \
                         the web server answer promptly"
                    ),
                ),
                FetchError::Tls(_) | FetchError::Connect(_) if tls_failed => (
                    "policy-not-fetched",
                    "the policy was not fetched because of the TLS problem above".to_string(),
                ),
                FetchError::Tls(t) => (
                    "policy-fetch-failed",
                    format!("fetching {url} failed in TLS: {t}"),
                ),
                FetchError::Dns(t) | FetchError::Connect(t) => (
                    "policy-connect-failed",
                    format!(
                        "cannot connect to fetch {url}: {t} — the web server for the policy host \
                         must be reachable on port {port}"
                    ),
                ),
                FetchError::Body(t) => (
                    "policy-fetch-failed",
                    format!("reading {url} failed: {t} — check the web server"),
                ),
                FetchError::Invalid(pe) => {
                    let shown = pe
                        .line
                        .zip(report.body.as_deref())
                        .and_then(|(line, body)| policy_line(body, line))
                        .map(|l| format!(" (the line reads \"{l}\")"))
                        .unwrap_or_default();
                    (
                        "policy-syntax",
                        format!(
                            "the policy at {url} is invalid: {pe}{shown}; senders treat an invalid \
                             policy as none — correct it"
                        ),
                    )
                }
            };
            let severity = if code == "policy-not-fetched" {
                Severity::Info
            } else {
                Severity::Error
            };
            f.push(S, severity, code, msg);
            None
        }
    }
}

/// Findings about a valid policy document.
fn document_findings(f: &mut Findings, parsed: &ParsedPolicy) {
    const S: Section = Section::Policy;
    let p = &parsed.policy;
    let mx: Vec<String> = p.mx.iter().map(|m| m.to_string()).collect();
    f.push(
        S,
        Severity::Ok,
        "policy-valid",
        format!(
            "policy valid: mode {}, max_age {}, mx {}",
            p.mode,
            p.max_age,
            if mx.is_empty() {
                "(none)".to_string()
            } else {
                mx.join(", ")
            }
        ),
    );
    match p.mode {
        Mode::Enforce => f.push(
            S,
            Severity::Ok,
            "policy-mode-enforce",
            "mode enforce: senders deliver only to listed MX hosts over TLS with a valid \
             certificate, and hold mail otherwise",
        ),
        Mode::Testing => f.push(
            S,
            Severity::Info,
            "policy-mode-testing",
            "mode testing: senders deliver even when TLS or MX checks fail and only report \
             failures via TLS-RPT; switch to enforce once reports are clean",
        ),
        Mode::None => f.push(
            S,
            Severity::Warning,
            "policy-mode-none",
            "mode none: senders treat the domain as having no policy (used to withdraw \
             MTA-STS); if you did not mean to withdraw it, set mode testing or enforce",
        ),
    }
    if p.max_age < SHORT_MAX_AGE {
        f.push(
            S,
            Severity::Warning,
            "policy-max-age-short",
            format!(
                "max_age {} s is under one day: the policy protects little between fetches and a \
                 blocked fetch soon leaves senders without it — use 604800 (a week) or more",
                p.max_age
            ),
        );
    }
    for d in &parsed.ignored_duplicates {
        f.push(
            S,
            Severity::Warning,
            "policy-duplicate-field",
            format!(
                "line {}: '{}' appears again (first on line {}); senders use the first value and \
                 ignore this line (RFC 8461 §3.2), and stricter or older ones may reject the whole \
                 policy — delete line {} (its value '{}' has no effect)",
                d.line, d.key, d.first_line, d.line, d.value
            ),
        );
    }
    for (line, note) in &parsed.notes {
        if parsed.ignored_duplicates.iter().any(|d| d.line == *line) {
            continue;
        }
        let (code, sev) = if note.contains("capped") {
            ("policy-max-age-capped", Severity::Info)
        } else {
            ("policy-unknown-key", Severity::Info)
        };
        let text = if code == "policy-max-age-capped" {
            format!("line {line}: {note} (RFC 8461 §3.2 allows at most {MAX_AGE_LIMIT} s)")
        } else {
            format!("line {line}: {note}; senders ignore it — remove it unless it is intended")
        };
        f.push(S, sev, code, text);
    }
}

fn policy_file_section(f: &mut Findings, input: &PolicyInput) -> Option<ParsedPolicy> {
    const S: Section = Section::Policy;
    let (label, body) = match input {
        PolicyInput::File { path, body } => (path.clone(), body),
        PolicyInput::Stdin { body } => ("standard input".to_string(), body),
    };
    if body.len() > MAX_POLICY_BYTES {
        f.push(
            S,
            Severity::Error,
            "policy-too-large",
            format!(
                "{label} is larger than {MAX_POLICY_BYTES} bytes: senders reject it — serve only \
                 the policy"
            ),
        );
        return None;
    }
    match parse_policy(body) {
        Ok(parsed) => {
            document_findings(f, &parsed);
            Some(parsed)
        }
        Err(pe) => {
            let shown = pe
                .line
                .and_then(|line| policy_line(body, line))
                .map(|l| format!(" (the line reads \"{l}\")"))
                .unwrap_or_default();
            f.push(
                S,
                Severity::Error,
                "policy-syntax",
                format!(
                    "{label} is not a valid policy: {pe}{shown}; senders would treat it as none — \
                     correct it before publishing"
                ),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------
// 3. MX hosts

struct MxOutcome {
    hosts: Vec<MxFacts>,
    /// Normalised hosts for `--suggest` (`None`: unknown).
    suggest_hosts: Option<Vec<String>>,
    null_mx: bool,
}

/// Severity of TLS problems on MX hosts: errors when a policy asks for TLS.
fn tls_severity(policy: Option<&Policy>) -> Severity {
    match policy.map(|p| p.mode) {
        Some(Mode::Enforce) | Some(Mode::Testing) => Severity::Error,
        _ => Severity::Warning,
    }
}

async fn mx_section(
    f: &mut Findings,
    opts: &Options,
    tools: &Tools,
    progress: &Progress,
    policy: Option<&Policy>,
    sts_published: bool,
) -> MxOutcome {
    const S: Section = Section::Mx;
    let domain = opts.domain.as_str();
    let mut outcome = MxOutcome {
        hosts: Vec::new(),
        suggest_hosts: None,
        null_mx: false,
    };
    let records: Vec<MxRecord> = match tools.dns.mx(domain).await {
        Err(e) => {
            f.push(
                S,
                Severity::Error,
                "mx-lookup-failed",
                format!("cannot look up the MX records of {domain}: {e} — fix its DNS servers"),
            );
            return outcome;
        }
        Ok(Answer::NoRecords { nxdomain: true }) => {
            f.push(
                S,
                Severity::Error,
                "mx-domain-missing",
                format!("{domain} does not exist (NXDOMAIN): it cannot receive mail"),
            );
            return outcome;
        }
        Ok(Answer::NoRecords { .. }) => {
            let (a, aaaa) = tokio::join!(tools.dns.a(domain), tools.dns.aaaa(domain));
            let has_address =
                matches!(a, Ok(Answer::Records(_))) || matches!(aaaa, Ok(Answer::Records(_)));
            if has_address {
                f.push(
                    S,
                    Severity::Info,
                    "mx-implicit",
                    format!(
                        "{domain} has no MX records: senders deliver to {domain} itself (implicit \
                         MX, RFC 5321 §5.1), so a policy must list mx: {domain}; publishing an MX \
                         record is clearer"
                    ),
                );
                vec![MxRecord {
                    preference: 0,
                    exchange: domain.to_string(),
                }]
            } else {
                f.push(
                    S,
                    Severity::Error,
                    "mx-none",
                    format!(
                        "{domain} has no MX records and no address: it cannot receive mail — \
                         publish MX records"
                    ),
                );
                outcome.suggest_hosts = Some(Vec::new());
                return outcome;
            }
        }
        Ok(Answer::Records(r)) => r,
    };

    let nulls = records.iter().filter(|m| m.is_null()).count();
    if nulls > 0 {
        outcome.null_mx = true;
        if nulls == records.len() {
            let (sev, tail) = if sts_published {
                (
                    Severity::Warning,
                    "yet it publishes MTA-STS, which has nothing to protect — remove the MTA-STS \
                     records, or replace the null MX with real MX records if the domain should \
                     receive mail",
                )
            } else {
                (Severity::Info, "MTA-STS has nothing to protect here")
            };
            f.push(
                S,
                sev,
                "mx-null",
                format!(
                    "{domain} has a null MX (RFC 7505): it declares that it accepts no mail; {tail}"
                ),
            );
            outcome.suggest_hosts = Some(Vec::new());
            return outcome;
        }
        f.push(
            S,
            Severity::Error,
            "mx-null-mixed",
            format!(
                "{domain} has a null MX (RFC 7505) next to other MX records: senders may bounce \
                 mail — remove the null MX (\"0 .\") or the other records"
            ),
        );
    }
    let mut hosts: Vec<MxRecord> = Vec::new();
    for r in records.into_iter().filter(|m| !m.is_null()) {
        if !hosts.iter().any(|h| h.exchange == r.exchange) {
            hosts.push(r);
        }
    }
    if !f.has("mx-implicit") {
        let list: Vec<String> = hosts
            .iter()
            .map(|h| format!("{} {}", h.preference, h.exchange))
            .collect();
        f.push(
            S,
            Severity::Ok,
            "mx-records",
            format!(
                "{}: {}",
                plural(hosts.len(), "MX record", "MX records"),
                list.join(", ")
            ),
        );
    }
    outcome.suggest_hosts = Some(
        hosts
            .iter()
            .filter_map(|h| normalize_domain(&h.exchange).ok())
            .collect(),
    );
    if opts.smtp.is_none() {
        f.push(
            S,
            Severity::Info,
            "smtp-skipped",
            "SMTP probes skipped (--no-smtp): STARTTLS and certificates of the MX hosts were not \
             checked",
        );
    }

    progress.step(format!(
        "checking {}",
        plural(hosts.len(), "MX host", "MX hosts")
    ));
    // RFC 7672 §2.2: DANE senders use TLSA records only for MX hosts from a
    // DNSSEC-validated MX RRset (for an implicit MX, the domain's own
    // address records), the rule the relay and socketmap decide with.
    let rtype = if f.has("mx-implicit") {
        hickory_resolver::proto::rr::RecordType::A
    } else {
        hickory_resolver::proto::rr::RecordType::MX
    };
    let mx_validated = tools.dns.authenticated(domain, rtype).await.ok();
    let mut set = JoinSet::new();
    for (i, mx) in hosts.iter().enumerate() {
        let tools = tools.clone();
        let mx = mx.clone();
        let policy = policy.cloned();
        let smtp = opts.smtp.clone();
        let domain = domain.to_string();
        set.spawn(async move {
            let mut hf = Findings::default();
            let mx_set = MxSet {
                domain: &domain,
                validated: mx_validated,
            };
            let facts = check_mx_host(
                &mut hf,
                &tools,
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
            Err(e) => f.push(
                S,
                Severity::Error,
                "mx-check-crashed",
                format!("checking an MX host failed internally: {e}"),
            ),
        }
    }
    done.sort_by_key(|(i, _, _)| *i);
    for (_, facts, hf) in done {
        for finding in hf.into_vec() {
            match finding.host {
                Some(h) => f.push_host(
                    finding.section,
                    &h,
                    finding.severity,
                    finding.code,
                    finding.message,
                ),
                None => f.push(
                    finding.section,
                    finding.severity,
                    finding.code,
                    finding.message,
                ),
            }
        }
        outcome.hosts.push(facts);
    }
    outcome
}

/// The MX RRset a host came from: whether the resolver validated it
/// (`None`: that could not be asked).
struct MxSet<'a> {
    domain: &'a str,
    validated: Option<bool>,
}

async fn check_mx_host(
    f: &mut Findings,
    tools: &Tools,
    mx: &MxRecord,
    mx_set: &MxSet<'_>,
    policy: Option<&Policy>,
    smtp: Option<&SmtpProbeConfig>,
) -> MxFacts {
    const S: Section = Section::Mx;
    let host = mx.exchange.as_str();
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
            f.push_host(
                S,
                host,
                Severity::Error,
                "mx-bad-name",
                format!("MX target '{host}' is not a valid host name ({e}): correct the MX record"),
            );
            return facts;
        }
    };

    if let Some(p) = policy {
        let matched: Option<&MxPattern> = p.mx.iter().find(|pat| pat.matches(&name));
        facts.matches_policy = Some(matched.is_some());
        match (matched, p.mode) {
            (Some(pat), _) => f.push_host(
                S,
                host,
                Severity::Ok,
                "mx-matches",
                format!("matches the policy's mx: {pat}"),
            ),
            (None, Mode::None) => {}
            (None, mode) => {
                let listed: Vec<String> = p.mx.iter().map(|m| m.to_string()).collect();
                let (sev, effect) = if mode == Mode::Enforce {
                    (
                        Severity::Error,
                        "senders enforcing the policy will not deliver to it",
                    )
                } else {
                    (
                        Severity::Warning,
                        "under enforce, senders would not deliver to it (in testing they report it)",
                    )
                };
                f.push_host(
                    S,
                    host,
                    sev,
                    "mx-not-in-policy",
                    format!(
                        "{host} is not matched by the policy (mx: {}): {effect} — add \
                         'mx: {host}' to the policy and publish a new id, or correct the MX record",
                        listed.join(", ")
                    ),
                );
            }
        }
    }

    let (a, aaaa) = tokio::join!(tools.dns.a(&name), tools.dns.aaaa(&name));
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
    facts.addresses = ips.iter().map(|ip| ip.to_string()).collect();
    if ips.is_empty() {
        if errors.is_empty() {
            f.push_host(
                S,
                host,
                Severity::Error,
                "mx-no-address",
                format!("{host} has no A or AAAA record: senders cannot deliver to it — publish its address or remove the MX record"),
            );
        } else {
            f.push_host(
                S,
                host,
                Severity::Error,
                "mx-dns-failed",
                format!(
                    "cannot look up the address of {host}: {} — fix its DNS",
                    errors.join("; ")
                ),
            );
        }
    } else {
        f.push_host(
            S,
            host,
            Severity::Ok,
            "mx-addresses",
            format!("addresses {}", facts.addresses.join(", ")),
        );
        if !has_v6 {
            f.push_host(
                S,
                host,
                Severity::Info,
                "mx-no-ipv6",
                format!("{host} has no AAAA record: it is not reachable over IPv6"),
            );
        }
    }

    // DANE (informational): DNSSEC-validated TLSA takes precedence over
    // MTA-STS. One secure lookup and the usability rule of crate::dane, the
    // code the socketmap and the relay decide with.
    let tlsa_name = crate::dane::tlsa_name(&name);
    match tools.dns.tlsa_secure(&tlsa_name).await {
        Ok((Answer::Records(records), authenticated, _)) => {
            facts.tlsa = records.iter().map(|r| r.to_string()).collect();
            let usable = records.iter().filter(|r| crate::dane::usable(r)).count();
            let domain = mx_set.domain;
            if authenticated && usable > 0 && mx_set.validated != Some(true) {
                let why = match mx_set.validated {
                    Some(_) => format!(
                        "the MX records of {domain} are not DNSSEC-validated, and DANE senders use                          TLSA records only for MX hosts of a validated MX RRset (RFC 7672 §2.2),                          so they do not use DANE for {domain} — sign the zone of {domain}"
                    ),
                    None => format!(
                        "the resolver could not say whether the MX records of {domain} are                          DNSSEC-validated; DANE senders use these TLSA records only if they are                          (RFC 7672 §2.2)"
                    ),
                };
                f.push_host(
                    S,
                    host,
                    Severity::Warning,
                    "dane-tlsa-mx-unvalidated",
                    format!(
                        "{} at {tlsa_name}, DNSSEC-validated, but {why}",
                        plural(usable, "usable TLSA record", "usable TLSA records")
                    ),
                );
            } else if authenticated && usable > 0 {
                f.push_host(
                    S,
                    host,
                    Severity::Info,
                    "dane-tlsa",
                    format!(
                        "{} at {tlsa_name}, DNSSEC-validated: DANE-capable senders use DANE \
                         instead of MTA-STS for this host (RFC 8461 §2) — keep the TLSA records \
                         in step with the certificate",
                        plural(usable, "usable TLSA record", "usable TLSA records")
                    ),
                );
            } else if authenticated {
                f.push_host(
                    S,
                    host,
                    Severity::Info,
                    "dane-tlsa-unusable",
                    format!(
                        "{} at {tlsa_name}, DNSSEC-validated, but none usable for SMTP: only \
                         DANE-TA(2) and DANE-EE(3) with selector 0/1 and matching type 0-2 count \
                         (RFC 7672 §3.1), so senders ignore them",
                        plural(records.len(), "TLSA record", "TLSA records")
                    ),
                );
            } else {
                f.push_host(
                    S,
                    host,
                    Severity::Info,
                    "dane-tlsa-unvalidated",
                    format!(
                        "{} at {tlsa_name}, but not DNSSEC-validated by the resolver: senders \
                         ignore them (DANE needs a signed zone)",
                        plural(records.len(), "TLSA record", "TLSA records")
                    ),
                );
            }
        }
        Ok((Answer::NoRecords { .. }, _, _)) => {}
        Err(e) => f.push_host(
            S,
            host,
            Severity::Info,
            "dane-lookup-failed",
            format!(
                "could not look up TLSA at {tlsa_name}: {e} (a validating resolver answers a \
                 bogus DNSSEC signature this way; DANE senders then defer mail to this host)"
            ),
        ),
    }

    let Some(smtp) = smtp else {
        return facts;
    };
    let Some(ip) = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
    else {
        return facts;
    };
    let report = probe(&name, ip, smtp, &tools.prober).await;
    smtp_findings(f, host, &report, policy, smtp.port);
    facts.validated_tls = report.failure.is_none()
        && report
            .tls
            .as_ref()
            .is_some_and(|t| t.version_ok && t.cert.is_ok());
    facts.smtp = Some(SmtpFacts {
        address: report.addr.to_string(),
        banner: report.banner.as_ref().map(|b| b.one_line()),
        starttls: report.starttls_offered,
        tls_version: report.tls.as_ref().map(|t| t.version.clone()),
        cipher: report.tls.as_ref().map(|t| t.cipher.clone()),
        cert_valid: report.tls.as_ref().map(|t| t.cert.is_ok()),
        cert_days_left: report
            .tls
            .as_ref()
            .and_then(|t| t.leaf.as_ref())
            .map(|l| l.days_left),
        error: report
            .failure
            .as_ref()
            .map(|e| format!("{}: {}", e.stage.as_str(), e.message)),
    });
    facts
}

fn smtp_findings(
    f: &mut Findings,
    host: &str,
    report: &SmtpProbeReport,
    policy: Option<&Policy>,
    port: u16,
) {
    const S: Section = Section::Mx;
    let addr = report.addr;
    let tls_sev = tls_severity(policy);
    if let Some(banner) = &report.banner {
        if banner.code == 220 {
            f.push_host(
                S,
                host,
                Severity::Ok,
                "smtp-banner",
                format!("{addr} greets: {}", banner.one_line()),
            );
        }
    }
    if let Some(failure) = &report.failure {
        let (sev, code, msg) = match failure.stage {
            ProbeStage::Connect => (
                Severity::Error,
                "smtp-connect-failed",
                format!(
                    "cannot connect to {host} at {addr}: {} — if outbound port {port} is blocked \
                     where you run this check, re-run with --no-smtp",
                    failure.message
                ),
            ),
            ProbeStage::Banner => (
                Severity::Error,
                "smtp-banner-failed",
                format!(
                    "{host} at {addr} did not greet properly: {} — the mail server must answer \
                     with 220",
                    failure.message
                ),
            ),
            ProbeStage::Ehlo | ProbeStage::EhloAfterTls => (
                Severity::Error,
                "smtp-ehlo-failed",
                format!(
                    "{host} at {addr}: {} — the mail server must accept EHLO",
                    failure.message
                ),
            ),
            ProbeStage::StartTls => (
                tls_sev,
                "smtp-starttls-failed",
                format!(
                    "{host} at {addr} offers STARTTLS but it fails: {} — fix the mail server's \
                     TLS set-up",
                    failure.message
                ),
            ),
            ProbeStage::Handshake => match &failure.tls_error {
                Some(TlsProbeError::TooOld(e)) => (
                    tls_sev,
                    "smtp-tls-old",
                    format!(
                        "{host} at {addr} offers no TLS version from 1.2 up ({e}): senders \
                         enforcing MTA-STS refuse older TLS — enable TLS 1.2 and 1.3"
                    ),
                ),
                _ => (
                    tls_sev,
                    "smtp-tls-failed",
                    format!(
                        "TLS handshake with {host} at {addr} after STARTTLS failed: {} — fix the \
                         mail server's TLS set-up",
                        failure.message
                    ),
                ),
            },
        };
        if failure.stage != ProbeStage::EhloAfterTls {
            f.push_host(S, host, sev, code, msg);
            return;
        }
        // A failure after a completed handshake: report the TLS details first.
        if let Some(tls) = &report.tls {
            tls_findings(f, S, Some(host), host, tls, tls_sev, "smtp");
        }
        f.push_host(S, host, sev, code, msg);
        return;
    }
    if !report.starttls_offered {
        let effect = match policy.map(|p| p.mode) {
            Some(Mode::Enforce) => "senders enforcing the policy will not deliver to it",
            Some(Mode::Testing) => "under enforce, senders would not deliver to it",
            _ => "mail to it travels unencrypted",
        };
        f.push_host(
            S,
            host,
            tls_sev,
            "smtp-no-starttls",
            format!(
                "{host} at {addr} does not offer STARTTLS in its EHLO reply: {effect} — enable \
                 STARTTLS with a certificate valid for {host}"
            ),
        );
        return;
    }
    f.push_host(
        S,
        host,
        Severity::Ok,
        "smtp-starttls",
        format!("{host} offers STARTTLS"),
    );
    if let Some(tls) = &report.tls {
        tls_findings(f, S, Some(host), host, tls, tls_sev, "smtp");
    }
}

// ---------------------------------------------------------------------------
// 4. TLS-RPT

/// Returns the usable rua URIs and whether TLS-RPT is in working order.
async fn tlsrpt_section(f: &mut Findings, tools: &Tools, domain: &str) -> (Vec<String>, bool) {
    const S: Section = Section::Tlsrpt;
    let name = format!("_smtp._tls.{domain}");
    let example = format!("\"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\"");
    let records = match tools.dns.txt(&name).await {
        Ok(Answer::Records(r)) => r,
        Ok(Answer::NoRecords { .. }) => {
            f.push(
                S,
                Severity::Warning,
                "tlsrpt-missing",
                format!(
                    "no TLS-RPT record at {name}: you will never hear about senders' TLS or \
                     policy failures — publish {example} there"
                ),
            );
            return (Vec::new(), false);
        }
        Err(e) => {
            f.push(
                S,
                Severity::Warning,
                "tlsrpt-lookup-failed",
                format!("cannot look up TXT {name}: {e}; reporters cannot find it either"),
            );
            return (Vec::new(), false);
        }
    };
    let near: Vec<String> = records
        .iter()
        .map(|r| lossy(r))
        .filter(|t| {
            !is_tlsrpt_record(t)
                && t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("v=tlsrptv1")
        })
        .collect();
    match discover_tlsrpt(&records) {
        TlsRptDiscovery::Found(record) => {
            let rua: Vec<String> = record.rua.iter().map(|u| u.to_string()).collect();
            if !rua.is_empty() {
                f.push(
                    S,
                    Severity::Ok,
                    "tlsrpt-valid",
                    format!("TLS-RPT record at {name}: reports go to {}", rua.join(", ")),
                );
            }
            for (uri, why) in &record.invalid_rua {
                let tail = if record.rua.is_empty() {
                    " — no report can be delivered"
                } else {
                    ""
                };
                f.push(
                    S,
                    Severity::Error,
                    "tlsrpt-bad-rua",
                    format!(
                        "rua URI '{uri}' at {name} is unusable: {why}{tail}; write it as \
                         mailto:user@{domain} or https://host/path"
                    ),
                );
            }
            if record.rua_fields > 1 {
                f.push(
                    S,
                    Severity::Warning,
                    "tlsrpt-rua-fields",
                    format!(
                        "{} rua= fields at {name}: RFC 8460 §3 allows this and reporters that \
                         follow it send to every URI, but some read only one field or drop the \
                         record — list every URI in one field: rua={}",
                        record.rua_fields,
                        rua.join(",")
                    ),
                );
            }
            let usable = !record.rua.is_empty();
            (rua, usable)
        }
        TlsRptDiscovery::NoRecord => {
            let why = if near.is_empty() {
                "none of the TXT records there starts with v=TLSRPTv1".to_string()
            } else {
                format!(
                    "\"{}\" must start with exactly \"v=TLSRPTv1\" (case-sensitive)",
                    near.join("\", \"")
                )
            };
            f.push(
                S,
                Severity::Warning,
                "tlsrpt-missing",
                format!(
                    "no TLS-RPT record at {name} ({why}): you will never hear about senders' TLS \
                     or policy failures — publish {example} there"
                ),
            );
            (Vec::new(), false)
        }
        TlsRptDiscovery::Multiple(n) => {
            f.push(
                S,
                Severity::Error,
                "tlsrpt-multiple",
                format!(
                    "{n} TLS-RPT records at {name}: reporters then send no reports (RFC 8460 §3) \
                     — keep exactly one, listing every URI in its rua="
                ),
            );
            (Vec::new(), false)
        }
        TlsRptDiscovery::Invalid(e) => {
            f.push(
                S,
                Severity::Error,
                "tlsrpt-invalid",
                format!("the TLS-RPT record at {name} is invalid: {e} — publish {example}"),
            );
            (Vec::new(), false)
        }
    }
}

// ---------------------------------------------------------------------------
// 5. Verdict

#[allow(clippy::too_many_arguments)]
fn verdict(
    domain: &str,
    source: PolicySource,
    txt: &TxtState,
    parsed: Option<&ParsedPolicy>,
    hosts: &[MxFacts],
    null_mx: bool,
    smtp: bool,
    findings: &[super::findings::Finding],
) -> String {
    let counts = super::findings::Counts::of(findings);
    let policy_part = match (source, txt, parsed) {
        (PolicySource::Published, TxtState::Found(_), Some(p)) => {
            format!("{} policy valid", p.policy.mode)
        }
        (PolicySource::Published, TxtState::Missing, None) => {
            "no MTA-STS (no _mta-sts TXT record)".to_string()
        }
        (PolicySource::Published, TxtState::Missing, Some(p)) => format!(
            "{} policy served but not announced (no valid _mta-sts TXT record)",
            p.policy.mode
        ),
        (PolicySource::Published, TxtState::Found(_), None) => {
            "MTA-STS announced but no valid policy could be fetched".to_string()
        }
        (PolicySource::Published, _, _) => "MTA-STS broken (TXT record unusable)".to_string(),
        (_, _, Some(p)) => format!("policy file valid ({} mode)", p.policy.mode),
        (_, _, None) => "policy file invalid".to_string(),
    };
    let mx_part = if null_mx && hosts.is_empty() {
        "null MX (accepts no mail)".to_string()
    } else if hosts.is_empty() {
        "no usable MX hosts".to_string()
    } else if smtp {
        let good = hosts.iter().filter(|h| h.validated_tls).count();
        format!("{good}/{} MX hosts accept validated TLS", hosts.len())
    } else if parsed.is_some() {
        let good = hosts
            .iter()
            .filter(|h| h.matches_policy == Some(true))
            .count();
        format!(
            "{good}/{} MX hosts match the policy (SMTP not probed)",
            hosts.len()
        )
    } else {
        format!(
            "{} (SMTP not probed)",
            plural(hosts.len(), "MX host", "MX hosts")
        )
    };
    let mut line = format!("{domain}: {policy_part}; {mx_part}");
    if counts.error > 0 || counts.warning > 0 {
        let first = findings
            .iter()
            .filter(|x| x.severity == Severity::Error)
            .chain(findings.iter().filter(|x| x.severity == Severity::Warning))
            .map(|x| x.code)
            .next()
            .unwrap_or("");
        line.push_str(&format!(
            "; {}, {} (first: {first})",
            plural(counts.error, "error", "errors"),
            plural(counts.warning, "warning", "warnings")
        ));
    }
    line
}
