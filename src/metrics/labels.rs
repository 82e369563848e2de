//! The label sets of the registry's metric families. Their field names and
//! values are the exposition: dashboards and alerts depend on them.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub map: String,
    /// secure, notfound, temp or perm.
    pub answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// memory, disk or redis (the shared fleet store).
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// ok or error.
    pub outcome: String,
    /// The failure class (timeout, tls, redirect, …), "none" on success.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// record, no-record, failure.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// enforce, testing, none, no-policy or dane.
    pub mode: String,
    /// delivered, deferred, bounced or rejected.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyFailureLabels {
    /// enforce, testing, dane or requiretls.
    pub mode: String,
    /// RFC 8460 §4.3 result type, mx-mismatch, or (requiretls)
    /// no-authenticated-mx.
    pub result_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}
