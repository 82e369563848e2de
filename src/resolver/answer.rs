//! What a lookup answers, and why a domain has no policy: the vocabulary
//! every face reads the resolver's result in.

use std::sync::Arc;

use crate::policy::{Mode, ResultType};
use crate::store::StoredPolicy;

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A valid policy of any mode; the face decides what each mode means.
    Policy(Arc<StoredPolicy>),
    NoPolicy(NoPolicy),
}

/// Why there is no policy to apply. Every variant means: deliver as if the
/// domain had never published MTA-STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPolicy {
    /// The key is not a domain name (IP literal, `[host]:port`, …); nothing
    /// was looked up.
    NotADomain(String),
    /// The domain publishes no (usable) `_mta-sts` record.
    NoRecord(String),
    /// Discovery or fetch failed recently; retried after a backoff.
    Backoff(Failure),
    /// The first discovery is still running past the lookup deadline.
    Pending,
}

/// Why the last discovery or fetch failed, told apart by what the caller
/// must do with it (mox's sentinels): both mean "deliver as without a
/// policy until the backoff ends", only a fetch failure is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nobody could tell whether the domain publishes a policy: the TXT
    /// lookup failed, or another agent's fetch produced none. Not a
    /// TLS-RPT failure: no policy was ever seen.
    Discovery(String),
    /// A policy is published but could not be had; TLS-RPT reports the
    /// delivery as `result_type` (RFC 8460 §4.3.1).
    Fetch {
        reason: String,
        result_type: ResultType,
    },
}

impl Failure {
    /// The reason, as logged.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Discovery(reason) | Failure::Fetch { reason, .. } => reason,
        }
    }

    /// The RFC 8460 §4.3.1 result type to report, for a fetch failure.
    pub fn result_type(&self) -> Option<ResultType> {
        match self {
            Failure::Discovery(_) => None,
            Failure::Fetch { result_type, .. } => Some(*result_type),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// RFC 8460 §4.3.1: what a failed policy fetch is reported as.
pub fn fetch_result_type(e: &crate::fetch::FetchError) -> ResultType {
    match e {
        crate::fetch::FetchError::Tls(_) => ResultType::StsWebpkiInvalid,
        crate::fetch::FetchError::Invalid(_) => ResultType::StsPolicyInvalid,
        _ => ResultType::StsPolicyFetchError,
    }
}

impl std::fmt::Display for NoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPolicy::NotADomain(why) => write!(f, "not a domain name ({why})"),
            NoPolicy::NoRecord(why) => write!(f, "no policy: {why}"),
            NoPolicy::Backoff(why) => write!(f, "no policy yet, last attempt failed: {why}"),
            NoPolicy::Pending => write!(f, "no policy yet, discovery still running"),
        }
    }
}

/// True when `mode` asks senders to refuse delivery that does not meet the
/// policy (the socketmap may also treat testing so, per map).
pub fn is_enforcing(mode: Mode, testing_as_enforce: bool) -> bool {
    mode == Mode::Enforce || (testing_as_enforce && mode == Mode::Testing)
}
