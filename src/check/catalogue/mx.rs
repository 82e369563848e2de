//! Section 3: the MX set, each MX host's addresses and policy match, its
//! DANE TLSA records and its SMTP probe.

use std::net::SocketAddr;

use super::finding;
use super::tls::mx_tls_severity;
use crate::check::findings::{Finding, Section, Severity};
use crate::check::wording::plural;
use crate::policy::Mode;
use crate::smtp::probe::{ProbeFailure, ProbeStage};
use crate::tlsprobe::TlsProbeError;

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
