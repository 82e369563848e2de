//! The RFC 8460 vocabularies a TLS-RPT report is written in: the result
//! type of a failed session (§4.3) and the type of the policy it was
//! delivered under (§4.4). One home for the names, so the relay's reports,
//! its logs, its metrics and the socketmap cannot spell one differently.
//! The text of each name is what goes on the wire and into the logs and
//! must never change.

use std::fmt;

/// RFC 8460 §4.3 `result-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultType {
    // §4.3.1 negotiation failures.
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    // §4.3.2 policy failures, MTA-STS.
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
    // §4.3.2 policy failures, DANE.
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
        }
    }
}

impl fmt::Display for ResultType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 8460 §4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    /// An MTA-STS policy.
    Sts,
    /// DANE TLSA records.
    Tlsa,
    /// Neither: the session was made without a policy.
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

impl fmt::Display for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_rfc_8460s() {
        let all = [
            ResultType::StarttlsNotSupported,
            ResultType::CertificateHostMismatch,
            ResultType::CertificateExpired,
            ResultType::CertificateNotTrusted,
            ResultType::ValidationFailure,
            ResultType::StsPolicyFetchError,
            ResultType::StsPolicyInvalid,
            ResultType::StsWebpkiInvalid,
            ResultType::TlsaInvalid,
            ResultType::DnssecInvalid,
            ResultType::DaneRequired,
        ];
        let names: Vec<String> = all.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            names,
            [
                "starttls-not-supported",
                "certificate-host-mismatch",
                "certificate-expired",
                "certificate-not-trusted",
                "validation-failure",
                "sts-policy-fetch-error",
                "sts-policy-invalid",
                "sts-webpki-invalid",
                "tlsa-invalid",
                "dnssec-invalid",
                "dane-required",
            ]
        );
        assert_eq!(
            [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound].map(PolicyType::as_str),
            ["sts", "tlsa", "no-policy-found"]
        );
    }
}
