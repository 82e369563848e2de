//! Section 2, CAA: which CAs may issue the policy host's certificate,
//! found by the RFC 8659 tree walk (the host, then each parent), so a
//! renewal from another CA does not silently break the policy fetch.

use super::catalogue as c;
use super::findings::Findings;
use crate::dns::{Answer, CaaRecord, Dns};

/// How an `issue` property is shown: the CA, with its parameters if any.
fn issuer(record: &CaaRecord) -> String {
    let v = record.value.trim();
    let (ca, params) = v.split_once(';').unwrap_or((v, ""));
    let ca = ca.trim().trim_end_matches('.');
    if ca.is_empty() {
        "(no CA)".to_string()
    } else if params.trim().is_empty() {
        ca.to_string()
    } else {
        format!("{ca};{params}")
    }
}

pub async fn check(f: &mut Findings, dns: &Dns, host: &str) {
    let labels: Vec<&str> = host.split('.').collect();
    // host, its parent, …, down to the registrable part (never the TLD alone).
    for start in 0..labels.len().saturating_sub(1) {
        let name = labels[start..].join(".");
        match dns.caa(&name).await {
            Ok(Answer::Records(records)) => {
                let issuers: Vec<String> = records
                    .iter()
                    .filter(|r| r.tag.eq_ignore_ascii_case("issue"))
                    .map(issuer)
                    .collect();
                f.push(c::caa_restricted(&name, host, &issuers));
                return;
            }
            Ok(Answer::NoRecords { .. }) => continue,
            Err(e) => {
                f.push(c::caa_lookup_failed(&name, &e));
                return;
            }
        }
    }
    f.push(c::caa_none(host));
}
