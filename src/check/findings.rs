//! What the check found: findings with a severity, a stable code and a message
//! that says what to fix, plus the facts the JSON report carries.

use serde::Serialize;

/// How bad a finding is. Ordered: `Ok < Info < Warning < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Checked and fine.
    Ok,
    /// Worth knowing; nothing to fix.
    Info,
    /// Works, but should be fixed.
    Warning,
    /// Broken: senders will not get (or not apply) the policy, or mail fails.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// The report's sections, in output order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// 1. `_mta-sts.<domain>` TXT.
    Txt,
    /// 2. Policy host `mta-sts.<domain>` and the policy document (or the
    ///    `--policy-file`).
    Policy,
    /// 3. MX hosts.
    Mx,
    /// 4. `_smtp._tls.<domain>` TLS-RPT.
    Tlsrpt,
}

impl Section {
    pub const ALL: [Section; 4] = [Section::Txt, Section::Policy, Section::Mx, Section::Tlsrpt];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::Txt => "txt",
            Section::Policy => "policy",
            Section::Mx => "mx",
            Section::Tlsrpt => "tlsrpt",
        }
    }
}

/// One observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub section: Section,
    pub severity: Severity,
    /// Stable kebab-case identifier (listed in the README); scripts match on it.
    pub code: &'static str,
    /// One line for a person: what was found and what to do about it.
    pub message: String,
    /// The host the finding is about (an MX host), if any.
    pub host: Option<String>,
}

/// Findings collected in order.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    list: Vec<Finding>,
}

impl Findings {
    /// Adds a finding from the [`catalogue`](super::catalogue).
    pub fn push(&mut self, finding: Finding) {
        self.list.push(finding);
    }

    /// Adds a finding about one MX host.
    pub fn push_host(&mut self, host: &str, finding: Finding) {
        self.list.push(Finding {
            host: Some(host.to_string()),
            ..finding
        });
    }

    /// Appends `other`'s findings, in their order.
    pub fn append(&mut self, other: Findings) {
        self.list.extend(other.list);
    }

    pub fn list(&self) -> &[Finding] {
        &self.list
    }

    pub fn into_vec(self) -> Vec<Finding> {
        self.list
    }

    /// Only the tests ask: the sections know what they found without
    /// searching the list.
    #[cfg(test)]
    pub fn has(&self, code: &str) -> bool {
        self.list.iter().any(|f| f.code == code)
    }
}

/// Counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub error: usize,
    pub warning: usize,
    pub info: usize,
    pub ok: usize,
}

impl Counts {
    pub fn of(findings: &[Finding]) -> Counts {
        let mut c = Counts::default();
        for f in findings {
            match f.severity {
                Severity::Error => c.error += 1,
                Severity::Warning => c.warning += 1,
                Severity::Info => c.info += 1,
                Severity::Ok => c.ok += 1,
            }
        }
        c
    }

    /// 0 nothing to fix, 1 warnings only, 2 errors.
    pub fn exit_code(&self) -> u8 {
        if self.error > 0 {
            2
        } else if self.warning > 0 {
            1
        } else {
            0
        }
    }
}

/// Where the policy under test came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicySource {
    /// Discovered and fetched as a sender would.
    Published,
    /// `--policy-file FILE`.
    File,
    /// `--policy-file -`.
    Stdin,
}

/// The policy as the check understood it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyFacts {
    /// The TXT id (published policies only).
    pub id: Option<String>,
    pub mode: String,
    pub max_age: u32,
    pub mx: Vec<String>,
}

/// What the SMTP probe saw on one MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmtpFacts {
    /// The address probed, `ip:port`.
    pub address: String,
    pub banner: Option<String>,
    pub starttls: bool,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    /// True when the certificate chain is valid for the MX host name.
    pub cert_valid: Option<bool>,
    pub cert_days_left: Option<i64>,
    /// Where the probe stopped, if it did not finish.
    pub error: Option<String>,
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxFacts {
    pub host: String,
    pub preference: u16,
    pub addresses: Vec<String>,
    /// `None` without a policy.
    pub matches_policy: Option<bool>,
    /// `None` with `--no-smtp` or when the host has no address.
    pub smtp: Option<SmtpFacts>,
    /// TLSA records at `_25._tcp.<host>`, presentation format.
    pub tlsa: Vec<String>,
    /// True when the host accepted STARTTLS with a certificate valid for
    /// its name (TLS 1.2 or later).
    pub validated_tls: bool,
}

/// A ready-to-publish starting point (`--suggest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// `_mta-sts.<domain>. IN TXT "…"` line, when MTA-STS is missing or broken.
    pub txt_record: Option<String>,
    /// Where the policy must be served.
    pub policy_url: Option<String>,
    /// The policy body.
    pub policy: Option<String>,
    /// `_smtp._tls.<domain>. IN TXT "…"` line, when TLS-RPT is missing or broken.
    pub tlsrpt_record: Option<String>,
    /// Remarks (why a part is missing, what to do next).
    pub notes: Vec<String>,
}

/// The whole result, rendered as text or JSON.
#[derive(Debug, Clone)]
pub struct Report {
    pub domain: String,
    pub source: PolicySource,
    /// The policy file's path (for `--policy-file FILE`).
    pub source_path: Option<String>,
    pub findings: Vec<Finding>,
    pub policy: Option<PolicyFacts>,
    pub mx_hosts: Vec<MxFacts>,
    /// Usable TLS-RPT reporting URIs.
    pub tlsrpt_rua: Vec<String>,
    pub smtp_probed: bool,
    pub verdict: String,
    pub suggestion: Option<Suggestion>,
    /// Set when `--suggest` was given (so "nothing to suggest" can be said).
    pub suggest_requested: bool,
}

impl Report {
    pub fn counts(&self) -> Counts {
        Counts::of(&self.findings)
    }

    pub fn exit_code(&self) -> u8 {
        self.counts().exit_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(severity: Severity, code: &'static str) -> Finding {
        Finding {
            section: Section::Mx,
            severity,
            code,
            message: code.to_string(),
            host: None,
        }
    }

    #[test]
    fn exit_codes() {
        let mut f = Findings::default();
        assert_eq!(Counts::of(f.list()).exit_code(), 0);
        f.push(at(Severity::Info, "x"));
        f.push(at(Severity::Ok, "y"));
        assert_eq!(Counts::of(f.list()).exit_code(), 0);
        f.push(at(Severity::Warning, "z"));
        assert_eq!(Counts::of(f.list()).exit_code(), 1);
        f.push_host("mx.test", at(Severity::Error, "e"));
        assert_eq!(Counts::of(f.list()).exit_code(), 2);
        assert_eq!(f.list()[3].host.as_deref(), Some("mx.test"));
    }

    #[test]
    fn severities_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&Severity::Warning).unwrap(),
            "\"warning\""
        );
        assert_eq!(
            serde_json::to_string(&Section::Tlsrpt).unwrap(),
            "\"tlsrpt\""
        );
    }
}
