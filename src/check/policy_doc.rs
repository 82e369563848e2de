//! Section 2, the policy itself: what the fetch of the published policy
//! saw, what a valid policy document means for senders, and the
//! `--policy-file` lint (the same parser, [`crate::policy::parse_policy`]).

use super::catalogue as c;
use super::findings::Findings;
use super::options::PolicyInput;
use super::wording::lossy;
use crate::fetch::{FetchError, FetchReport};
use crate::policy::{parse_policy, ParsedPolicy, MAX_POLICY_BYTES};

/// `max_age` below this many seconds (one day) is a warning.
pub const SHORT_MAX_AGE: u32 = 86_400;

/// Line `line` (1-based) of a policy body, as it can be quoted.
fn policy_line(body: &[u8], line: usize) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.split('\n')
        .nth(line.checked_sub(1)?)
        .map(|l| lossy(l.trim_end_matches('\r').as_bytes()))
}

/// Findings for the fetch; returns the parsed policy when it is valid.
/// `tls_failed`: the TLS probe of the policy host already reported a
/// problem; `port`: the policy host's HTTPS port.
pub fn fetch_findings(
    f: &mut Findings,
    report: &FetchReport,
    tls_failed: bool,
    port: u16,
) -> Option<ParsedPolicy> {
    match &report.result {
        Ok(fetched) => {
            f.push(c::policy_fetched(
                &report.url,
                report.status,
                report.content_type.as_deref(),
                fetched.body.len(),
            ));
            document_findings(f, &fetched.parsed);
            Some(fetched.parsed.clone())
        }
        Err(e) => {
            let line = match e {
                FetchError::Invalid(pe) => pe
                    .line
                    .zip(report.body.as_deref())
                    .and_then(|(line, body)| policy_line(body, line)),
                _ => None,
            };
            f.push(c::policy_fetch_failed(
                &report.url,
                e,
                tls_failed,
                port,
                line.as_deref(),
            ));
            None
        }
    }
}

/// Findings about a valid policy document.
pub fn document_findings(f: &mut Findings, parsed: &ParsedPolicy) {
    let p = &parsed.policy;
    let mx: Vec<String> = p.mx.iter().map(|m| m.to_string()).collect();
    f.push(c::policy_valid(p.mode, p.max_age, &mx));
    f.push(c::policy_mode(p.mode));
    if p.max_age < SHORT_MAX_AGE {
        f.push(c::policy_max_age_short(p.max_age));
    }
    for d in &parsed.ignored_duplicates {
        f.push(c::policy_duplicate_field(
            d.line,
            d.key,
            d.first_line,
            &d.value,
        ));
    }
    for (line, note) in &parsed.notes {
        // The duplicate's own finding says it better.
        if parsed.ignored_duplicates.iter().any(|d| d.line == *line) {
            continue;
        }
        f.push(c::policy_note(*line, note));
    }
}

/// `--policy-file`: the policy section for a file or standard input.
pub fn policy_file_section(f: &mut Findings, input: &PolicyInput) -> Option<ParsedPolicy> {
    let (label, body) = match input {
        PolicyInput::File { path, body } => (path.clone(), body),
        PolicyInput::Stdin { body } => ("standard input".to_string(), body),
    };
    if body.len() > MAX_POLICY_BYTES {
        f.push(c::policy_file_too_large(&label));
        return None;
    }
    match parse_policy(body) {
        Ok(parsed) => {
            document_findings(f, &parsed);
            Some(parsed)
        }
        Err(pe) => {
            let line = pe.line.and_then(|line| policy_line(body, line));
            f.push(c::policy_file_syntax(&label, &pe, line.as_deref()));
            None
        }
    }
}
