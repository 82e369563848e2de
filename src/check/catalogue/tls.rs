//! TLS and certificates, of the policy host (section 2) or of an MX host
//! after STARTTLS (section 3): one set of findings, codes `policy-…` or
//! `smtp-…` by [`TlsSide`].

use super::finding;
use crate::check::findings::{Finding, Section, Severity};
use crate::check::wording::expiry_phrase;
use crate::policy::Mode;
use crate::tlsprobe::{CertProblem, LeafInfo};

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
