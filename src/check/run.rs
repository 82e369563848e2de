//! The checks, in report order: each section is its own module (`txt`,
//! `policy_host`/`policy_doc`, `mx`, `tlsrpt`, `verdict`), and what each
//! finding says is in [`catalogue`](super::catalogue). Discovery, fetch,
//! parsing and MX matching are the resolver's own
//! ([`crate::policy::discover`], [`Fetcher::fetch_report`](crate::fetch::Fetcher::fetch_report),
//! [`crate::policy::parse_policy`], [`crate::policy::MxPattern::matches`]),
//! so the check and the daemon cannot disagree about a domain's policy.

use std::time::SystemTime;

use super::findings::{Findings, PolicyFacts, PolicySource, Report};
use super::mx::{self, Scope};
use super::progress::Progress;
use super::txt::{self, TxtState};
use super::verdict::{self, Outcome};
use super::{policy_doc, policy_host, suggest, tlsrpt};
use crate::policy::ParsedPolicy;

pub use super::options::{CannotRun, Options, PolicyInput, Tools};

/// Runs every check for `opts.domain`.
pub async fn run(opts: &Options, tools: &Tools, progress: &Progress) -> Result<Report, CannotRun> {
    let mut f = Findings::default();
    let domain = opts.domain.as_str();
    let (source, source_path) = match &opts.policy_input {
        None => (PolicySource::Published, None),
        Some(PolicyInput::File { path, .. }) => (PolicySource::File, Some(path.clone())),
        Some(PolicyInput::Stdin { .. }) => (PolicySource::Stdin, None),
    };

    let mut txt_state = TxtState::Missing;
    let parsed: Option<ParsedPolicy> = match &opts.policy_input {
        None => {
            progress.step(format!("looking up _mta-sts.{domain} TXT"));
            txt_state = txt::check(&mut f, &tools.dns, domain).await?;
            let txt_found = matches!(txt_state, TxtState::Found(_));
            policy_host::check(&mut f, opts, tools, progress, txt_found).await
        }
        Some(input) => policy_doc::policy_file_section(&mut f, input),
    };
    let sts_published =
        matches!(txt_state, TxtState::Found(_)) || source != PolicySource::Published;

    progress.step(format!("looking up MX records of {domain}"));
    let scope = Scope {
        domain,
        policy: parsed.as_ref().map(|p| &p.policy),
        sts_published,
        smtp: opts.smtp.as_ref(),
    };
    let mx = mx::check(&mut f, &tools.dns, &tools.prober, progress, &scope).await;

    let mut tlsrpt_rua = Vec::new();
    let mut tlsrpt_ok = true;
    if source == PolicySource::Published {
        progress.step(format!("looking up _smtp._tls.{domain} TXT"));
        (tlsrpt_rua, tlsrpt_ok) = tlsrpt::check(&mut f, &tools.dns, domain).await;
    }

    let policy_facts = parsed.as_ref().map(|p| PolicyFacts {
        id: match &txt_state {
            TxtState::Found(id) => Some(id.clone()),
            _ => None,
        },
        mode: p.policy.mode.to_string(),
        max_age: p.policy.max_age,
        mx: p.policy.mx.iter().map(|m| m.to_string()).collect(),
    });

    let suggestion = if opts.suggest && source == PolicySource::Published {
        let sts_ok = matches!(txt_state, TxtState::Found(_)) && parsed.is_some();
        if sts_ok && tlsrpt_ok {
            None
        } else {
            Some(suggest::suggest(
                domain,
                mx.suggest_hosts.as_deref(),
                !sts_ok,
                !tlsrpt_ok,
                opts.https_port,
                SystemTime::now(),
            ))
        }
    } else {
        None
    };

    let findings = f.into_vec();
    let verdict = verdict::verdict(
        &Outcome {
            domain,
            source,
            txt: &txt_state,
            parsed: parsed.as_ref(),
            hosts: &mx.hosts,
            null_mx: mx.null_mx,
            smtp_probed: opts.smtp.is_some(),
        },
        &findings,
    );
    Ok(Report {
        domain: domain.to_string(),
        source,
        source_path,
        findings,
        policy: policy_facts,
        mx_hosts: mx.hosts,
        tlsrpt_rua,
        smtp_probed: opts.smtp.is_some(),
        verdict,
        suggestion,
        suggest_requested: opts.suggest,
    })
}
