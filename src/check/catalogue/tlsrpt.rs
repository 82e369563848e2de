//! Section 4: the TLS-RPT record.

use super::finding;
use crate::check::findings::{Finding, Section, Severity};

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
