//! Section 1: the `_mta-sts.<domain>` TXT record, as a sender discovers it
//! ([`crate::policy::discover`]), plus what else is published at that name
//! and whether the answer is DNSSEC-validated (for information only).

use super::catalogue::{self as c, NotSts};
use super::findings::Findings;
use super::options::CannotRun;
use super::wording::lossy;
use crate::dns::{Answer, Dns, RecordType};
use crate::policy::txt::{is_sts_record, repaired, TxtError};
use crate::policy::{discover, Discovery};

/// What section 1 established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtState {
    /// One valid record, with its id.
    Found(String),
    Missing,
    /// Records that senders treat as no policy (several, or invalid).
    Broken,
    LookupFailed,
}

pub async fn check(f: &mut Findings, dns: &Dns, domain: &str) -> Result<TxtState, CannotRun> {
    let name = format!("_mta-sts.{domain}");
    let records = match dns.txt(&name).await {
        Ok(Answer::Records(r)) => r,
        Ok(Answer::NoRecords { .. }) => {
            f.push(c::txt_missing_no_txt(&name, domain));
            return Ok(TxtState::Missing);
        }
        Err(e) => {
            // Is it this name, or is our resolver dead?
            if dns.txt(".").await.is_err() {
                return Err(CannotRun(format!(
                    "the DNS resolver does not answer ({}): {e}; use --dns-server",
                    dns.describe()
                )));
            }
            f.push(c::txt_lookup_failed(&name, &e, domain));
            return Ok(TxtState::LookupFailed);
        }
    };

    let mut spf = 0;
    let mut near_miss: Vec<String> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for raw in &records {
        let text = lossy(raw);
        if std::str::from_utf8(raw).is_ok_and(is_sts_record) {
            continue;
        }
        let trimmed = text.trim_start();
        if trimmed.to_ascii_lowercase().starts_with("v=spf1") {
            spf += 1;
        } else if trimmed.to_ascii_lowercase().starts_with("v=stsv1") {
            near_miss.push(text);
        } else {
            others.push(text);
        }
    }
    if spf > 0 {
        f.push(c::txt_spf(&name, domain));
    }
    for text in &near_miss {
        f.push(c::txt_not_sts(text, &name));
    }
    if !others.is_empty() {
        f.push(c::txt_other(&name, &others));
    }

    let state = match discover(&records) {
        Discovery::Found(record) => {
            f.push(c::txt_valid(&name, &record.id));
            if !record.extensions.is_empty() {
                let fields: Vec<String> = record
                    .extensions
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                f.push(c::txt_extensions(&fields));
            }
            TxtState::Found(record.id)
        }
        Discovery::NoRecord => {
            let why = if spf > 0 {
                NotSts::Spf
            } else if !near_miss.is_empty() {
                NotSts::NearMiss
            } else {
                NotSts::Other
            };
            f.push(c::txt_missing_not_sts(&name, why));
            TxtState::Missing
        }
        Discovery::Multiple(n) => {
            f.push(c::txt_multiple(n, &name));
            TxtState::Broken
        }
        Discovery::Invalid(e @ (TxtError::TrailingWhitespace | TxtError::EmptyField)) => {
            let text = records
                .iter()
                .filter_map(|r| std::str::from_utf8(r).ok())
                .find(|t| is_sts_record(t))
                .unwrap_or_default();
            f.push(c::txt_grammar(text, &name, &e, repaired(text).as_deref()));
            TxtState::Broken
        }
        Discovery::Invalid(e) => {
            f.push(c::txt_invalid(&name, &e));
            TxtState::Broken
        }
    };

    match dns.authenticated(&name, RecordType::TXT).await {
        Ok(true) => f.push(c::txt_dnssec(&name)),
        Ok(false) => f.push(c::txt_no_dnssec(&name)),
        Err(e) => f.push(c::txt_dnssec_unknown(&name, &e)),
    }
    Ok(state)
}
