//! Every finding the check can report, each defined once: its stable code,
//! its section, its severity (or the rule that picks it) and its message.
//! The sections only decide which finding applies and pass the facts, so the
//! wording and the severities (the README's code table, which scripts and
//! tickets rely on) are in one place and cannot drift apart per call site.
//!
//! Grouped in report order: `_mta-sts` TXT, policy host and policy, MX hosts
//! (DNS, DANE, SMTP), TLS-RPT. The TLS and certificate findings are shared
//! by the policy host and the MX hosts ([`TlsSide`]).

use std::net::{IpAddr, SocketAddr};

use super::findings::{Finding, Section, Severity};
use super::wording::{expiry_phrase, plural};
use crate::fetch::FetchError;
use crate::policy::{Mode, PolicyError, MAX_AGE_LIMIT, MAX_POLICY_BYTES};
use crate::smtp::probe::{ProbeFailure, ProbeStage};
use crate::tlsprobe::{CertProblem, LeafInfo, TlsProbeError};

fn finding(section: Section, severity: Severity, code: &'static str, message: String) -> Finding {
    Finding {
        section,
        severity,
        code,
        message,
        host: None,
    }
}

// ---------------------------------------------------------------------------
// 1. _mta-sts TXT

const TXT: Section = Section::Txt;

pub fn txt_missing_no_txt(name: &str, domain: &str) -> Finding {
    finding(
        TXT,
        Severity::Error,
        "txt-missing",
        format!(
            "no TXT record at {name}: senders see no MTA-STS policy for {domain}; \
             publish \"v=STSv1; id=…\" there (--suggest prints one)"
        ),
    )
}

/// Why TXT records at `_mta-sts` hold no STSv1 record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSts {
    /// One of them is SPF.
    Spf,
    /// One looks like STSv1 but is not (already reported as `txt-not-sts`).
    NearMiss,
    Other,
}

pub fn txt_missing_not_sts(name: &str, why: NotSts) -> Finding {
    let why = match why {
        NotSts::Spf => "the TXT records there are not STSv1 records (one is SPF)",
        NotSts::NearMiss => "the record there is not a valid STSv1 record (see above)",
        NotSts::Other => "the TXT records there are not STSv1 records",
    };
    finding(
        TXT,
        Severity::Error,
        "txt-missing",
        format!(
            "no STSv1 record at {name}: {why}; senders see no MTA-STS policy — publish \
             \"v=STSv1; id=…\" there (--suggest prints one)"
        ),
    )
}

pub fn txt_lookup_failed(name: &str, error: &dyn std::fmt::Display, domain: &str) -> Finding {
    finding(
        TXT,
        Severity::Error,
        "txt-lookup-failed",
        format!(
            "cannot look up TXT {name}: {error}; senders cannot discover the policy either \
             (they keep a cached one, new senders get none) — fix the DNS servers of {domain}"
        ),
    )
}

pub fn txt_spf(name: &str, domain: &str) -> Finding {
    finding(
        TXT,
        Severity::Warning,
        "txt-spf",
        format!(
            "an SPF record (v=spf1) is published at {name}; SPF belongs at {domain} itself \
             (often a wildcard or copied zone entry) — remove it from {name}"
        ),
    )
}

pub fn txt_not_sts(text: &str, name: &str) -> Finding {
    finding(
        TXT,
        Severity::Error,
        "txt-not-sts",
        format!(
            "TXT record \"{text}\" at {name} is not a valid STSv1 record: it must start with \
             exactly \"v=STSv1\" (case-sensitive, no leading space), then \"; id=…\""
        ),
    )
}

pub fn txt_other(name: &str, others: &[String]) -> Finding {
    finding(
        TXT,
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
    )
}

pub fn txt_valid(name: &str, id: &str) -> Finding {
    finding(
        TXT,
        Severity::Ok,
        "txt-valid",
        format!("one STSv1 record at {name}, id {id}"),
    )
}

/// `fields`: the extension fields as `key=value`.
pub fn txt_extensions(fields: &[String]) -> Finding {
    finding(
        TXT,
        Severity::Info,
        "txt-extensions",
        format!("extension fields ignored by senders: {}", fields.join("; ")),
    )
}

pub fn txt_multiple(n: usize, name: &str) -> Finding {
    finding(
        TXT,
        Severity::Error,
        "txt-multiple",
        format!(
            "{n} STSv1 records at {name}: senders treat this as no policy at all \
             (RFC 8461 §3.1) — keep exactly one"
        ),
    )
}

/// `repaired`: the record rewritten inside the grammar, when it can be.
pub fn txt_grammar(
    text: &str,
    name: &str,
    error: &dyn std::fmt::Display,
    repaired: Option<&str>,
) -> Finding {
    let fix = match repaired {
        Some(fixed) => format!("publish it as \"{fixed}\""),
        None => "write it as \"v=STSv1; id=<1 to 32 letters or digits>\"".to_string(),
    };
    finding(
        TXT,
        Severity::Error,
        "txt-grammar",
        format!(
            "the STSv1 record \"{text}\" at {name} is outside the RFC 8461 §3.1 grammar: \
             {error}; senders that follow the RFC (this agent among them) ignore it and see no \
             MTA-STS policy, while lenient ones accept it — {fix}"
        ),
    )
}

pub fn txt_invalid(name: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        TXT,
        Severity::Error,
        "txt-invalid",
        format!(
            "the STSv1 record at {name} is invalid: {error}; senders treat this as no policy \
             — write it as \"v=STSv1; id=<1 to 32 letters or digits>\""
        ),
    )
}

pub fn txt_dnssec(name: &str) -> Finding {
    finding(
        TXT,
        Severity::Info,
        "txt-dnssec",
        format!("the answer for {name} is DNSSEC-validated (AD bit from the resolver)"),
    )
}

pub fn txt_no_dnssec(name: &str) -> Finding {
    finding(
        TXT,
        Severity::Info,
        "txt-no-dnssec",
        format!(
            "the answer for {name} is not DNSSEC-validated; MTA-STS does not need DNSSEC \
             (the policy is authenticated by HTTPS)"
        ),
    )
}

pub fn txt_dnssec_unknown(name: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        TXT,
        Severity::Info,
        "txt-dnssec-unknown",
        format!("could not ask the resolver about DNSSEC for {name}: {error}"),
    )
}

// ---------------------------------------------------------------------------
// 2. Policy host and policy

const POLICY: Section = Section::Policy;

pub fn host_skipped(host: &str) -> Finding {
    finding(
        POLICY,
        Severity::Info,
        "host-skipped",
        format!("{host} does not exist either: nothing to fetch"),
    )
}

pub fn host_dns_failed(host: &str, errors: &[String], domain: &str) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "host-dns-failed",
        format!(
            "cannot look up {host}: {}; senders cannot fetch the policy — fix the DNS \
             servers of {domain}",
            errors.join("; ")
        ),
    )
}

pub fn host_missing(host: &str) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "host-missing",
        format!(
            "{host} does not exist (NXDOMAIN): senders cannot fetch the policy — publish \
             A and AAAA records for {host} pointing at a web server that serves it"
        ),
    )
}

pub fn host_no_address(host: &str) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "host-no-address",
        format!(
            "{host} has no A or AAAA record: senders cannot fetch the policy — publish \
             its addresses"
        ),
    )
}

pub fn host_addresses(host: &str, v4: &[IpAddr], v6: &[IpAddr]) -> Finding {
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut shown = Vec::new();
    if !v4.is_empty() {
        shown.push(format!("A {}", list(v4)));
    }
    if !v6.is_empty() {
        shown.push(format!("AAAA {}", list(v6)));
    }
    finding(
        POLICY,
        Severity::Ok,
        "host-addresses",
        format!("{host}: {}", shown.join("; ")),
    )
}

pub fn host_no_ipv6(host: &str) -> Finding {
    finding(
        POLICY,
        Severity::Warning,
        "host-no-ipv6",
        format!(
            "{host} has no AAAA record: IPv6-only senders cannot fetch the policy — \
             serve it over IPv6 too and publish the AAAA record"
        ),
    )
}

pub fn host_no_ipv4(host: &str) -> Finding {
    finding(
        POLICY,
        Severity::Warning,
        "host-no-ipv4",
        format!(
            "{host} has no A record: IPv4-only senders (most of them) cannot fetch the \
             policy — publish an A record"
        ),
    )
}

/// `down`: the addresses of one family (IPv6 when `v6`) that refused or
/// ignored a connection.
pub fn host_unreachable(host: &str, v6: bool, down: &[String]) -> Finding {
    let (family, code) = if v6 {
        ("IPv6", "host-ipv6-unreachable")
    } else {
        ("IPv4", "host-ipv4-unreachable")
    };
    finding(
        POLICY,
        Severity::Warning,
        code,
        format!(
            "{host} does not accept connections over {family} at {}: senders using \
             {family} cannot fetch the policy — fix the web server or remove the record",
            down.join(", ")
        ),
    )
}

/// `issuers`: the CAs of the `issue` properties, as shown.
pub fn caa_restricted(name: &str, host: &str, issuers: &[String]) -> Finding {
    let text = if issuers.is_empty() {
        "no 'issue' property, so any CA may issue".to_string()
    } else {
        format!("may issue: {}", issuers.join(", "))
    };
    finding(
        POLICY,
        Severity::Info,
        "caa-restricted",
        format!(
            "CAA at {name} governs certificates for {host}: {text}; renewals must \
             come from one of these CAs"
        ),
    )
}

pub fn caa_lookup_failed(name: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        POLICY,
        Severity::Info,
        "caa-lookup-failed",
        format!("could not look up CAA at {name}: {error}"),
    )
}

pub fn caa_none(host: &str) -> Finding {
    finding(
        POLICY,
        Severity::Info,
        "caa-none",
        format!(
            "no CAA records for {host} or its parents: any public CA may issue its certificate"
        ),
    )
}

/// The policy host's own TLS probe found no acceptable TLS version.
pub fn policy_tls_old(host: &str, target: SocketAddr, error: &str) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "policy-tls-old",
        format!(
            "{host} at {target} offers no TLS version from 1.2 up ({error}): senders refuse \
             older TLS — enable TLS 1.2 and 1.3 on the web server"
        ),
    )
}

pub fn policy_tls_failed(
    host: &str,
    target: SocketAddr,
    error: &dyn std::fmt::Display,
    port: u16,
) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "policy-tls-failed",
        format!(
            "no TLS with {host} at {target}: {error} — the web server must answer HTTPS for \
             {host} on port {port} with a certificate for that name"
        ),
    )
}

pub fn policy_fetched(
    url: &str,
    status: Option<u16>,
    content_type: Option<&str>,
    bytes: usize,
) -> Finding {
    finding(
        POLICY,
        Severity::Ok,
        "policy-fetched",
        format!(
            "{url}: HTTP {}, Content-Type {}, {} bytes",
            status.unwrap_or(200),
            content_type.unwrap_or("?"),
            bytes,
        ),
    )
}

/// A failed fetch of the published policy. `tls_failed`: the TLS probe
/// already reported why, so a TLS or connection error says only that;
/// `line`: the offending line of an invalid policy, as shown.
pub fn policy_fetch_failed(
    url: &str,
    error: &FetchError,
    tls_failed: bool,
    port: u16,
    line: Option<&str>,
) -> Finding {
    let (severity, code, message) = match error {
        FetchError::Redirect { status, location } => (
            Severity::Error,
            "policy-redirect",
            format!(
                "{url} answers HTTP {status} redirecting to {location}: senders never follow \
                 redirects (RFC 8461 §3.3), so they get no policy — serve the policy itself \
                 at {url} with status 200"
            ),
        ),
        FetchError::Status(status) => (
            Severity::Error,
            "policy-http-status",
            format!(
                "{url} answers HTTP {status}: senders accept only 200 — serve the policy \
                 file at exactly /.well-known/mta-sts.txt"
            ),
        ),
        FetchError::ContentType(ct) => (
            Severity::Error,
            "policy-content-type",
            format!(
                "{url} is served as {}: senders require text/plain — set the Content-Type \
                 of mta-sts.txt to text/plain",
                ct.as_deref()
                    .map(|c| format!("'{c}'"))
                    .unwrap_or_else(|| "no Content-Type".into())
            ),
        ),
        FetchError::TooLarge { limit } => (
            Severity::Error,
            "policy-too-large",
            format!(
                "{url} is larger than {limit} bytes: senders stop reading and reject it — \
                 serve only the policy"
            ),
        ),
        FetchError::Timeout(d, _) => (
            Severity::Error,
            "policy-timeout",
            format!(
                "{url} did not answer completely within {d:?}: senders give up too — make \
                 the web server answer promptly"
            ),
        ),
        FetchError::Tls(_) | FetchError::Connect(_) if tls_failed => (
            Severity::Info,
            "policy-not-fetched",
            "the policy was not fetched because of the TLS problem above".to_string(),
        ),
        FetchError::Tls(t) => (
            Severity::Error,
            "policy-fetch-failed",
            format!("fetching {url} failed in TLS: {t}"),
        ),
        FetchError::Dns(t) | FetchError::Connect(t) => (
            Severity::Error,
            "policy-connect-failed",
            format!(
                "cannot connect to fetch {url}: {t} — the web server for the policy host \
                 must be reachable on port {port}"
            ),
        ),
        FetchError::Body(t) => (
            Severity::Error,
            "policy-fetch-failed",
            format!("reading {url} failed: {t} — check the web server"),
        ),
        FetchError::Invalid(pe) => (
            Severity::Error,
            "policy-syntax",
            format!(
                "the policy at {url} is invalid: {pe}{}; senders treat an invalid \
                 policy as none — correct it",
                line_shown(line)
            ),
        ),
    };
    finding(POLICY, severity, code, message)
}

fn line_shown(line: Option<&str>) -> String {
    line.map(|l| format!(" (the line reads \"{l}\")"))
        .unwrap_or_default()
}

/// A `--policy-file` (or standard input, `label`) over the size limit.
pub fn policy_file_too_large(label: &str) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "policy-too-large",
        format!(
            "{label} is larger than {MAX_POLICY_BYTES} bytes: senders reject it — serve only \
             the policy"
        ),
    )
}

pub fn policy_file_syntax(label: &str, error: &PolicyError, line: Option<&str>) -> Finding {
    finding(
        POLICY,
        Severity::Error,
        "policy-syntax",
        format!(
            "{label} is not a valid policy: {error}{}; senders would treat it as none — \
             correct it before publishing",
            line_shown(line)
        ),
    )
}

pub fn policy_valid(mode: Mode, max_age: u32, mx: &[String]) -> Finding {
    finding(
        POLICY,
        Severity::Ok,
        "policy-valid",
        format!(
            "policy valid: mode {mode}, max_age {max_age}, mx {}",
            if mx.is_empty() {
                "(none)".to_string()
            } else {
                mx.join(", ")
            }
        ),
    )
}

/// What the policy's mode means for senders.
pub fn policy_mode(mode: Mode) -> Finding {
    let (severity, code, message) = match mode {
        Mode::Enforce => (
            Severity::Ok,
            "policy-mode-enforce",
            "mode enforce: senders deliver only to listed MX hosts over TLS with a valid \
             certificate, and hold mail otherwise",
        ),
        Mode::Testing => (
            Severity::Info,
            "policy-mode-testing",
            "mode testing: senders deliver even when TLS or MX checks fail and only report \
             failures via TLS-RPT; switch to enforce once reports are clean",
        ),
        Mode::None => (
            Severity::Warning,
            "policy-mode-none",
            "mode none: senders treat the domain as having no policy (used to withdraw \
             MTA-STS); if you did not mean to withdraw it, set mode testing or enforce",
        ),
    };
    finding(POLICY, severity, code, message.to_string())
}

pub fn policy_max_age_short(max_age: u32) -> Finding {
    finding(
        POLICY,
        Severity::Warning,
        "policy-max-age-short",
        format!(
            "max_age {max_age} s is under one day: the policy protects little between fetches \
             and a blocked fetch soon leaves senders without it — use 604800 (a week) or more"
        ),
    )
}

/// A repeated `version`/`mode`/`max_age` line, which RFC 8461 §3.2 ignores.
pub fn policy_duplicate_field(line: usize, key: &str, first_line: usize, value: &str) -> Finding {
    finding(
        POLICY,
        Severity::Warning,
        "policy-duplicate-field",
        format!(
            "line {line}: '{key}' appears again (first on line {first_line}); senders use the \
             first value and ignore this line (RFC 8461 §3.2), and stricter or older ones may \
             reject the whole policy — delete line {line} (its value '{value}' has no effect)"
        ),
    )
}

/// A parser remark on one line: a capped `max_age` or an unknown key.
pub fn policy_note(line: usize, note: &str) -> Finding {
    if note.contains("capped") {
        finding(
            POLICY,
            Severity::Info,
            "policy-max-age-capped",
            format!("line {line}: {note} (RFC 8461 §3.2 allows at most {MAX_AGE_LIMIT} s)"),
        )
    } else {
        finding(
            POLICY,
            Severity::Info,
            "policy-unknown-key",
            format!("line {line}: {note}; senders ignore it — remove it unless it is intended"),
        )
    }
}

// ---------------------------------------------------------------------------
// TLS and certificates, of the policy host or an MX host

/// Whose TLS a finding is about: the codes are `policy-…` or `smtp-…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    PolicyHost,
    /// An MX host, under the policy's mode (`None`: no policy).
    Mx(Option<Mode>),
}

impl TlsSide {
    fn section(self) -> Section {
        match self {
            TlsSide::PolicyHost => Section::Policy,
            TlsSide::Mx(_) => Section::Mx,
        }
    }

    fn code(self, policy: &'static str, smtp: &'static str) -> &'static str {
        match self {
            TlsSide::PolicyHost => policy,
            TlsSide::Mx(_) => smtp,
        }
    }

    /// A bad certificate stops the policy from being fetched at all; on an
    /// MX host it matters as much as the policy asks for TLS.
    fn cert_severity(self) -> Severity {
        match self {
            TlsSide::PolicyHost => Severity::Error,
            TlsSide::Mx(mode) => mx_tls_severity(mode),
        }
    }

    fn senders(self) -> &'static str {
        match self {
            TlsSide::PolicyHost => "senders refuse to fetch the policy, so it is not applied",
            TlsSide::Mx(_) => "senders enforcing MTA-STS refuse to deliver to this host",
        }
    }
}

/// TLS problems on MX hosts are errors when a policy asks for TLS
/// (testing exists to find exactly these), else warnings.
pub fn mx_tls_severity(mode: Option<Mode>) -> Severity {
    match mode {
        Some(Mode::Enforce) | Some(Mode::Testing) => Severity::Error,
        _ => Severity::Warning,
    }
}

fn tls_finding(side: TlsSide, severity: Severity, code: &'static str, message: String) -> Finding {
    finding(side.section(), severity, code, message)
}

pub fn tls_ok(side: TlsSide, version: &str, cipher: &str) -> Finding {
    tls_finding(
        side,
        Severity::Ok,
        side.code("policy-tls", "smtp-tls"),
        format!("{version}, cipher {cipher}"),
    )
}

/// A completed handshake that negotiated a version below TLS 1.2.
pub fn tls_old_negotiated(side: TlsSide, name: &str, version: &str) -> Finding {
    tls_finding(
        side,
        Severity::Error,
        side.code("policy-tls-old", "smtp-tls-old"),
        format!(
            "negotiated {version} with {name}: below TLS 1.2, which senders refuse — enable TLS 1.2 \
             and 1.3"
        ),
    )
}

pub fn cert_valid(side: TlsSide, name: &str, issuer: &str, leaf: Option<&LeafInfo>) -> Finding {
    tls_finding(
        side,
        Severity::Ok,
        side.code("policy-cert-valid", "smtp-cert-valid"),
        format!(
            "certificate valid for {name}, issued by {issuer}, {}",
            leaf.map(expiry_phrase)
                .unwrap_or_else(|| "expiry unknown".into())
        ),
    )
}

pub fn cert_expiring(side: TlsSide, name: &str, leaf: &LeafInfo) -> Finding {
    tls_finding(
        side,
        Severity::Warning,
        side.code("policy-cert-expiring", "smtp-cert-expiring"),
        format!(
            "certificate for {name} {}: renew it now (automate renewal)",
            expiry_phrase(leaf)
        ),
    )
}

/// A certificate the chain check rejected. `leaf`: what the certificate
/// says, when it could be read.
pub fn cert_rejected(
    side: TlsSide,
    name: &str,
    problem: &CertProblem,
    leaf: Option<&LeafInfo>,
) -> Finding {
    let covers = leaf
        .map(|l| {
            if l.dns_names.is_empty() {
                "no DNS names".to_string()
            } else {
                l.dns_names.join(", ")
            }
        })
        .unwrap_or_else(|| "unknown names".to_string());
    let issuer = leaf.map(|l| l.issuer.clone()).unwrap_or_default();
    let senders = side.senders();
    let (code, message) = match problem {
        CertProblem::Expired => (
            side.code("policy-cert-expired", "smtp-cert-expired"),
            format!(
                "certificate for {name} {}: {senders} — renew it",
                leaf.map(expiry_phrase)
                    .unwrap_or_else(|| "has expired".into())
            ),
        ),
        CertProblem::NotYetValid => (
            side.code("policy-cert-invalid", "smtp-cert-invalid"),
            format!(
                "certificate for {name} is not valid yet: {senders} — check the server's \
                 clock and the certificate dates"
            ),
        ),
        CertProblem::NameMismatch => (
            side.code("policy-cert-wrong-name", "smtp-cert-wrong-name"),
            format!(
                "certificate is not valid for {name} (it covers: {covers}): {senders} — \
                 install a certificate whose subjectAltName includes {name}"
            ),
        ),
        CertProblem::Untrusted => (
            side.code("policy-cert-untrusted", "smtp-cert-untrusted"),
            format!(
                "certificate for {name} is self-signed or from an untrusted CA (issuer: \
                 {issuer}): {senders} — use a certificate from a public CA"
            ),
        ),
        CertProblem::Other(e) => (
            side.code("policy-cert-invalid", "smtp-cert-invalid"),
            format!("certificate for {name} rejected ({e}): {senders} — replace it"),
        ),
    };
    tls_finding(side, side.cert_severity(), code, message)
}

// ---------------------------------------------------------------------------
// 3. MX hosts

const MX: Section = Section::Mx;

pub fn mx_lookup_failed(domain: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-lookup-failed",
        format!("cannot look up the MX records of {domain}: {error} — fix its DNS servers"),
    )
}

pub fn mx_domain_missing(domain: &str) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-domain-missing",
        format!("{domain} does not exist (NXDOMAIN): it cannot receive mail"),
    )
}

pub fn mx_implicit(domain: &str) -> Finding {
    finding(
        MX,
        Severity::Info,
        "mx-implicit",
        format!(
            "{domain} has no MX records: senders deliver to {domain} itself (implicit \
             MX, RFC 5321 §5.1), so a policy must list mx: {domain}; publishing an MX \
             record is clearer"
        ),
    )
}

pub fn mx_none(domain: &str) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-none",
        format!(
            "{domain} has no MX records and no address: it cannot receive mail — \
             publish MX records"
        ),
    )
}

/// A null MX alone. With MTA-STS published there is a policy protecting
/// nothing, which is worth fixing; without, it is just how things are.
pub fn mx_null(domain: &str, sts_published: bool) -> Finding {
    let (severity, tail) = if sts_published {
        (
            Severity::Warning,
            "yet it publishes MTA-STS, which has nothing to protect — remove the MTA-STS \
             records, or replace the null MX with real MX records if the domain should \
             receive mail",
        )
    } else {
        (Severity::Info, "MTA-STS has nothing to protect here")
    };
    finding(
        MX,
        severity,
        "mx-null",
        format!("{domain} has a null MX (RFC 7505): it declares that it accepts no mail; {tail}"),
    )
}

pub fn mx_null_mixed(domain: &str) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-null-mixed",
        format!(
            "{domain} has a null MX (RFC 7505) next to other MX records: senders may bounce \
             mail — remove the null MX (\"0 .\") or the other records"
        ),
    )
}

/// `records`: (preference, host) in preference order, each host once.
pub fn mx_records(records: &[(u16, &str)]) -> Finding {
    let list: Vec<String> = records
        .iter()
        .map(|(preference, host)| format!("{preference} {host}"))
        .collect();
    finding(
        MX,
        Severity::Ok,
        "mx-records",
        format!(
            "{}: {}",
            plural(records.len(), "MX record", "MX records"),
            list.join(", ")
        ),
    )
}

pub fn smtp_skipped() -> Finding {
    finding(
        MX,
        Severity::Info,
        "smtp-skipped",
        "SMTP probes skipped (--no-smtp): STARTTLS and certificates of the MX hosts were not \
         checked"
            .to_string(),
    )
}

pub fn mx_check_crashed(error: &dyn std::fmt::Display) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-check-crashed",
        format!("checking an MX host failed internally: {error}"),
    )
}

pub fn mx_bad_name(host: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-bad-name",
        format!("MX target '{host}' is not a valid host name ({error}): correct the MX record"),
    )
}

pub fn mx_matches(pattern: &dyn std::fmt::Display) -> Finding {
    finding(
        MX,
        Severity::Ok,
        "mx-matches",
        format!("matches the policy's mx: {pattern}"),
    )
}

/// An MX host no `mx:` pattern admits, under an `enforce` or `testing`
/// policy (`mode`): senders refuse it under enforce, only report it under
/// testing.
pub fn mx_not_in_policy(host: &str, mode: Mode, listed: &[String]) -> Finding {
    let (severity, effect) = if mode == Mode::Enforce {
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
    finding(
        MX,
        severity,
        "mx-not-in-policy",
        format!(
            "{host} is not matched by the policy (mx: {}): {effect} — add \
             'mx: {host}' to the policy and publish a new id, or correct the MX record",
            listed.join(", ")
        ),
    )
}

pub fn mx_no_address(host: &str) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-no-address",
        format!("{host} has no A or AAAA record: senders cannot deliver to it — publish its address or remove the MX record"),
    )
}

pub fn mx_dns_failed(host: &str, errors: &[String]) -> Finding {
    finding(
        MX,
        Severity::Error,
        "mx-dns-failed",
        format!(
            "cannot look up the address of {host}: {} — fix its DNS",
            errors.join("; ")
        ),
    )
}

pub fn mx_addresses(addresses: &[String]) -> Finding {
    finding(
        MX,
        Severity::Ok,
        "mx-addresses",
        format!("addresses {}", addresses.join(", ")),
    )
}

pub fn mx_no_ipv6(host: &str) -> Finding {
    finding(
        MX,
        Severity::Info,
        "mx-no-ipv6",
        format!("{host} has no AAAA record: it is not reachable over IPv6"),
    )
}

/// Usable, validated TLSA records that DANE senders still ignore, because
/// the MX RRset they came from is not validated (`mx_validated`: `None`
/// when the resolver could not be asked). RFC 7672 §2.2.
pub fn dane_tlsa_mx_unvalidated(
    usable: usize,
    tlsa_name: &str,
    domain: &str,
    mx_validated: Option<bool>,
) -> Finding {
    let why = match mx_validated {
        Some(_) => format!(
            "the MX records of {domain} are not DNSSEC-validated, and DANE senders use                          TLSA records only for MX hosts of a validated MX RRset (RFC 7672 §2.2),                          so they do not use DANE for {domain} — sign the zone of {domain}"
        ),
        None => format!(
            "the resolver could not say whether the MX records of {domain} are                          DNSSEC-validated; DANE senders use these TLSA records only if they are                          (RFC 7672 §2.2)"
        ),
    };
    finding(
        MX,
        Severity::Warning,
        "dane-tlsa-mx-unvalidated",
        format!(
            "{} at {tlsa_name}, DNSSEC-validated, but {why}",
            plural(usable, "usable TLSA record", "usable TLSA records")
        ),
    )
}

pub fn dane_tlsa(usable: usize, tlsa_name: &str) -> Finding {
    finding(
        MX,
        Severity::Info,
        "dane-tlsa",
        format!(
            "{} at {tlsa_name}, DNSSEC-validated: DANE-capable senders use DANE \
             instead of MTA-STS for this host (RFC 8461 §2) — keep the TLSA records \
             in step with the certificate",
            plural(usable, "usable TLSA record", "usable TLSA records")
        ),
    )
}

pub fn dane_tlsa_unusable(records: usize, tlsa_name: &str) -> Finding {
    finding(
        MX,
        Severity::Info,
        "dane-tlsa-unusable",
        format!(
            "{} at {tlsa_name}, DNSSEC-validated, but none usable for SMTP: only \
             DANE-TA(2) and DANE-EE(3) with selector 0/1 and matching type 0-2 count \
             (RFC 7672 §3.1), so senders ignore them",
            plural(records, "TLSA record", "TLSA records")
        ),
    )
}

pub fn dane_tlsa_unvalidated(records: usize, tlsa_name: &str) -> Finding {
    finding(
        MX,
        Severity::Info,
        "dane-tlsa-unvalidated",
        format!(
            "{} at {tlsa_name}, but not DNSSEC-validated by the resolver: senders \
             ignore them (DANE needs a signed zone)",
            plural(records, "TLSA record", "TLSA records")
        ),
    )
}

pub fn dane_lookup_failed(tlsa_name: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        MX,
        Severity::Info,
        "dane-lookup-failed",
        format!(
            "could not look up TLSA at {tlsa_name}: {error} (a validating resolver answers a \
             bogus DNSSEC signature this way; DANE senders then defer mail to this host)"
        ),
    )
}

pub fn smtp_banner(addr: SocketAddr, banner: &str) -> Finding {
    finding(
        MX,
        Severity::Ok,
        "smtp-banner",
        format!("{addr} greets: {banner}"),
    )
}

/// Where the SMTP probe of `host` at `addr` stopped. `port`: the probed
/// port (blocked outbound more often than not); `mode`: the policy's.
pub fn smtp_probe_failed(
    host: &str,
    addr: SocketAddr,
    failure: &ProbeFailure,
    port: u16,
    mode: Option<Mode>,
) -> Finding {
    let tls_severity = mx_tls_severity(mode);
    let (severity, code, message) = match failure.stage {
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
            tls_severity,
            "smtp-starttls-failed",
            format!(
                "{host} at {addr} offers STARTTLS but it fails: {} — fix the mail server's \
                 TLS set-up",
                failure.message
            ),
        ),
        ProbeStage::Handshake => match &failure.tls_error {
            Some(TlsProbeError::TooOld(e)) => (
                tls_severity,
                "smtp-tls-old",
                format!(
                    "{host} at {addr} offers no TLS version from 1.2 up ({e}): senders \
                     enforcing MTA-STS refuse older TLS — enable TLS 1.2 and 1.3"
                ),
            ),
            _ => (
                tls_severity,
                "smtp-tls-failed",
                format!(
                    "TLS handshake with {host} at {addr} after STARTTLS failed: {} — fix the \
                     mail server's TLS set-up",
                    failure.message
                ),
            ),
        },
    };
    finding(MX, severity, code, message)
}

pub fn smtp_no_starttls(host: &str, addr: SocketAddr, mode: Option<Mode>) -> Finding {
    let effect = match mode {
        Some(Mode::Enforce) => "senders enforcing the policy will not deliver to it",
        Some(Mode::Testing) => "under enforce, senders would not deliver to it",
        _ => "mail to it travels unencrypted",
    };
    finding(
        MX,
        mx_tls_severity(mode),
        "smtp-no-starttls",
        format!(
            "{host} at {addr} does not offer STARTTLS in its EHLO reply: {effect} — enable \
             STARTTLS with a certificate valid for {host}"
        ),
    )
}

pub fn smtp_starttls(host: &str) -> Finding {
    finding(
        MX,
        Severity::Ok,
        "smtp-starttls",
        format!("{host} offers STARTTLS"),
    )
}

// ---------------------------------------------------------------------------
// 4. TLS-RPT

const TLSRPT: Section = Section::Tlsrpt;

fn tlsrpt_example(domain: &str) -> String {
    format!("\"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\"")
}

pub fn tlsrpt_missing_no_txt(name: &str, domain: &str) -> Finding {
    let example = tlsrpt_example(domain);
    finding(
        TLSRPT,
        Severity::Warning,
        "tlsrpt-missing",
        format!(
            "no TLS-RPT record at {name}: you will never hear about senders' TLS or \
             policy failures — publish {example} there"
        ),
    )
}

/// TXT records at `_smtp._tls` but none is TLS-RPT. `near`: those that
/// look like one but do not start exactly right.
pub fn tlsrpt_missing_not_tlsrpt(name: &str, near: &[String], domain: &str) -> Finding {
    let example = tlsrpt_example(domain);
    let why = if near.is_empty() {
        "none of the TXT records there starts with v=TLSRPTv1".to_string()
    } else {
        format!(
            "\"{}\" must start with exactly \"v=TLSRPTv1\" (case-sensitive)",
            near.join("\", \"")
        )
    };
    finding(
        TLSRPT,
        Severity::Warning,
        "tlsrpt-missing",
        format!(
            "no TLS-RPT record at {name} ({why}): you will never hear about senders' TLS \
             or policy failures — publish {example} there"
        ),
    )
}

pub fn tlsrpt_lookup_failed(name: &str, error: &dyn std::fmt::Display) -> Finding {
    finding(
        TLSRPT,
        Severity::Warning,
        "tlsrpt-lookup-failed",
        format!("cannot look up TXT {name}: {error}; reporters cannot find it either"),
    )
}

pub fn tlsrpt_valid(name: &str, rua: &[String]) -> Finding {
    finding(
        TLSRPT,
        Severity::Ok,
        "tlsrpt-valid",
        format!("TLS-RPT record at {name}: reports go to {}", rua.join(", ")),
    )
}

/// `none_usable`: no other URI of the record can take reports either.
pub fn tlsrpt_bad_rua(
    uri: &str,
    name: &str,
    why: &dyn std::fmt::Display,
    none_usable: bool,
    domain: &str,
) -> Finding {
    let tail = if none_usable {
        " — no report can be delivered"
    } else {
        ""
    };
    finding(
        TLSRPT,
        Severity::Error,
        "tlsrpt-bad-rua",
        format!(
            "rua URI '{uri}' at {name} is unusable: {why}{tail}; write it as \
             mailto:user@{domain} or https://host/path"
        ),
    )
}

pub fn tlsrpt_rua_fields(fields: usize, name: &str, rua: &[String]) -> Finding {
    finding(
        TLSRPT,
        Severity::Warning,
        "tlsrpt-rua-fields",
        format!(
            "{fields} rua= fields at {name}: RFC 8460 §3 allows this and reporters that \
             follow it send to every URI, but some read only one field or drop the \
             record — list every URI in one field: rua={}",
            rua.join(",")
        ),
    )
}

pub fn tlsrpt_multiple(n: usize, name: &str) -> Finding {
    finding(
        TLSRPT,
        Severity::Error,
        "tlsrpt-multiple",
        format!(
            "{n} TLS-RPT records at {name}: reporters then send no reports (RFC 8460 §3) \
             — keep exactly one, listing every URI in its rua="
        ),
    )
}

pub fn tlsrpt_invalid(name: &str, error: &dyn std::fmt::Display, domain: &str) -> Finding {
    let example = tlsrpt_example(domain);
    finding(
        TLSRPT,
        Severity::Error,
        "tlsrpt-invalid",
        format!("the TLS-RPT record at {name} is invalid: {error} — publish {example}"),
    )
}
