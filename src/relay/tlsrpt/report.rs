//! The RFC 8460 §4 aggregate report: JSON (§4.4 field names), gzip
//! compressed for sending (§5.1: `application/tlsrpt+gzip`).

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::record::{day_name, DomainDay};
use crate::smtp::date::rfc3339;

/// One report (RFC 8460 §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    /// RFC 3339 date-time, `YYYY-MM-DDT00:00:00Z`.
    pub start_datetime: String,
    /// `YYYY-MM-DDT23:59:59Z` of the same day.
    pub end_datetime: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: PolicyDesc,
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyDesc {
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    pub policy_domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total_successful_session_count: u64,
    pub total_failure_session_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    pub result_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    pub failed_session_count: u64,
}

/// Who writes the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// Our host name: `TLS-Report-Submitter`, the report-id's domain and
    /// the first part of the attachment's file name.
    pub hostname: String,
    pub organization_name: String,
    pub contact_info: String,
}

/// The deterministic report id of (day, domain): the same report sent twice
/// is recognisably the same.
pub fn report_id(day: u64, domain: &str, hostname: &str) -> String {
    format!("{}_{domain}@{hostname}", day_name(day))
}

/// First and last second of `day` (Unix seconds).
pub fn day_bounds(day: u64) -> (u64, u64) {
    let start = day.saturating_mul(86_400);
    (start, start.saturating_add(86_399))
}

/// Builds the report of `domain` for `day` from its counts.
pub fn build(day: u64, domain: &str, counts: &DomainDay, who: &Submitter) -> Report {
    let (start, end) = day_bounds(day);
    Report {
        organization_name: who.organization_name.clone(),
        date_range: DateRange {
            start_datetime: rfc3339(start),
            end_datetime: rfc3339(end),
        },
        contact_info: who.contact_info.clone(),
        report_id: report_id(day, domain, &who.hostname),
        policies: counts
            .policies
            .iter()
            .map(|p| PolicyReport {
                policy: PolicyDesc {
                    policy_type: p.policy_type.clone(),
                    policy_string: p.policy_string.clone(),
                    policy_domain: domain.to_string(),
                    mx_host: p.mx_host.clone(),
                },
                summary: Summary {
                    total_successful_session_count: p.success,
                    total_failure_session_count: p.failure_total(),
                },
                failure_details: p
                    .failures
                    .iter()
                    .map(|f| FailureDetail {
                        result_type: f.result_type.clone(),
                        sending_mta_ip: f.sending_mta_ip.map(|ip| ip.to_string()),
                        receiving_mx_hostname: f.receiving_mx_hostname.clone(),
                        receiving_ip: f.receiving_ip.map(|ip| ip.to_string()),
                        failed_session_count: f.count,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The report as JSON, gzip compressed.
pub fn gzip_json(report: &Report) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&json)?;
    enc.finish()
}
