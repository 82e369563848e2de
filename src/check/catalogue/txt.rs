//! Section 1: the `_mta-sts` TXT record.

use super::finding;
use crate::check::findings::{Finding, Section, Severity};
use crate::check::wording::plural;

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
