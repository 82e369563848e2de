//! Section 5, the verdict: one line to paste into a ticket, saying what
//! senders get from the policy, how many MX hosts work, and the first
//! finding to fix.

use super::findings::{Counts, Finding, MxFacts, PolicySource, Severity};
use super::txt::TxtState;
use super::wording::plural;
use crate::policy::ParsedPolicy;

/// What the sections established, as far as the verdict needs it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub domain: &'a str,
    pub source: PolicySource,
    pub txt: &'a TxtState,
    /// The valid policy, if any.
    pub parsed: Option<&'a ParsedPolicy>,
    pub hosts: &'a [MxFacts],
    pub null_mx: bool,
    pub smtp_probed: bool,
}

fn policy_part(o: &Outcome<'_>) -> String {
    match (o.source, o.txt, o.parsed) {
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
    }
}

fn mx_part(o: &Outcome<'_>) -> String {
    let hosts = o.hosts;
    if o.null_mx && hosts.is_empty() {
        "null MX (accepts no mail)".to_string()
    } else if hosts.is_empty() {
        "no usable MX hosts".to_string()
    } else if o.smtp_probed {
        let good = hosts.iter().filter(|h| h.validated_tls).count();
        format!("{good}/{} MX hosts accept validated TLS", hosts.len())
    } else if o.parsed.is_some() {
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
    }
}

/// The verdict line for `o` and all `findings` of the report.
pub fn verdict(o: &Outcome<'_>, findings: &[Finding]) -> String {
    let counts = Counts::of(findings);
    let mut line = format!("{}: {}; {}", o.domain, policy_part(o), mx_part(o));
    if counts.error > 0 || counts.warning > 0 {
        // Errors first: they are what stops mail or the policy.
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
