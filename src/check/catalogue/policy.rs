//! Section 2: the policy host, its CAA records, the fetch and the policy
//! document (published or `--policy-file`).

use std::net::{IpAddr, SocketAddr};

use super::finding;
use crate::check::findings::{Finding, Section, Severity};
use crate::fetch::FetchError;
use crate::policy::{Mode, PolicyError, MAX_AGE_LIMIT, MAX_POLICY_BYTES};

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
