//! The two outputs of one [`Report`]: a human report grouped by section with
//! ✓ / ⚠ / ✗ marks, and JSON (schema in the README). Both carry the same
//! findings.

use serde::Serialize;

use super::findings::{
    Counts, Finding, MxFacts, PolicyFacts, PolicySource, Report, Section, Severity, Suggestion,
};

/// The JSON schema identifier; bumped only on incompatible changes.
pub const SCHEMA: &str = "mta-sts-check/1";

/// Sections shown for a report, in order.
pub fn sections(report: &Report) -> Vec<Section> {
    match report.source {
        PolicySource::Published => Section::ALL.to_vec(),
        PolicySource::File | PolicySource::Stdin => vec![Section::Policy, Section::Mx],
    }
}

fn title(report: &Report, section: Section) -> String {
    match section {
        Section::Txt => format!("_mta-sts.{} TXT record", report.domain),
        Section::Policy => match report.source {
            PolicySource::Published => format!("Policy host mta-sts.{}", report.domain),
            PolicySource::File => format!(
                "Policy file {}",
                report.source_path.as_deref().unwrap_or("?")
            ),
            PolicySource::Stdin => "Policy from standard input".to_string(),
        },
        Section::Mx => format!("MX hosts of {}", report.domain),
        Section::Tlsrpt => format!("TLS-RPT (_smtp._tls.{})", report.domain),
    }
}

/// ANSI styling, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn mark(&self, severity: Severity) -> String {
        match severity {
            Severity::Ok => self.paint("32", "✓"),
            Severity::Info => self.paint("36", "•"),
            Severity::Warning => self.paint("33", "⚠"),
            Severity::Error => self.paint("31", "✗"),
        }
    }
}

/// Colour only on a terminal, never with `NO_COLOR` set (no-color.org) or
/// `TERM=dumb`.
pub fn want_color(stdout_is_tty: bool) -> bool {
    stdout_is_tty
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

fn line(style: Style, indent: &str, f: &Finding) -> String {
    format!(
        "{indent}{} {} {}\n",
        style.mark(f.severity),
        f.message,
        style.paint("2", &format!("[{}]", f.code))
    )
}

/// The human report.
pub fn human(report: &Report, style: Style) -> String {
    let mut out = String::new();
    let heading = match report.source {
        PolicySource::Published => format!("mta-sts-check {}", report.domain),
        _ => format!("mta-sts-check {} (policy lint)", report.domain),
    };
    out.push_str(&style.paint("1", &heading));
    out.push('\n');
    let mut n = 0;
    for section in sections(report) {
        n += 1;
        out.push('\n');
        out.push_str(&style.paint("1", &format!("{n}. {}", title(report, section))));
        out.push('\n');
        let in_section: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.section == section)
            .collect();
        if in_section.is_empty() {
            out.push_str("  (nothing checked)\n");
        }
        for f in in_section.iter().filter(|f| f.host.is_none()) {
            out.push_str(&line(style, "  ", f));
        }
        // Per-host groups, in the order hosts first appear.
        let mut hosts: Vec<&str> = Vec::new();
        for f in &in_section {
            if let Some(h) = f.host.as_deref() {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        for h in hosts {
            let pref = report
                .mx_hosts
                .iter()
                .find(|m| m.host == h)
                .map(|m| format!(" (preference {})", m.preference))
                .unwrap_or_default();
            out.push_str(&format!("  {}{pref}\n", style.paint("1", h)));
            for f in in_section.iter().filter(|f| f.host.as_deref() == Some(h)) {
                out.push_str(&line(style, "    ", f));
            }
        }
    }
    n += 1;
    out.push('\n');
    out.push_str(&style.paint("1", &format!("{n}. Verdict")));
    out.push('\n');
    let c = report.counts();
    let mark = match c.exit_code() {
        0 => style.mark(Severity::Ok),
        1 => style.mark(Severity::Warning),
        _ => style.mark(Severity::Error),
    };
    out.push_str(&format!("  {mark} {}\n", report.verdict));

    if report.suggest_requested {
        out.push('\n');
        match &report.suggestion {
            Some(s) => out.push_str(&suggestion_text(report, s, style)),
            None if report.source == PolicySource::Published => out.push_str(&format!(
                "Nothing to suggest: {} already publishes a valid MTA-STS policy and TLS-RPT record.\n",
                report.domain
            )),
            None => out.push_str("Nothing to suggest for a policy lint (--policy-file).\n"),
        }
    }
    out
}

fn suggestion_text(report: &Report, s: &Suggestion, style: Style) -> String {
    let mut out = String::new();
    out.push_str(&style.paint(
        "1",
        &format!("Suggested starting point for {}", report.domain),
    ));
    out.push('\n');
    if s.txt_record.is_some() || s.tlsrpt_record.is_some() {
        out.push_str("  DNS records:\n");
        for r in [&s.txt_record, &s.tlsrpt_record].into_iter().flatten() {
            out.push_str(&format!("    {r}\n"));
        }
    }
    if let (Some(url), Some(body)) = (&s.policy_url, &s.policy) {
        out.push_str(&format!("  Policy, served at {url}:\n"));
        for l in body.lines() {
            out.push_str(&format!("    {l}\n"));
        }
    }
    for note in &s.notes {
        out.push_str(&format!("  Note: {note}\n"));
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema: &'static str,
    tool_version: &'static str,
    domain: &'a str,
    source: PolicySource,
    source_path: Option<&'a str>,
    sections: Vec<Section>,
    exit_code: u8,
    summary: Counts,
    verdict: &'a str,
    policy: Option<&'a PolicyFacts>,
    mx_hosts: &'a [MxFacts],
    smtp_probed: bool,
    tlsrpt_rua: &'a [String],
    findings: &'a [Finding],
    suggestion: Option<&'a Suggestion>,
}

/// The JSON report (pretty-printed, one object).
pub fn json(report: &Report) -> String {
    let summary = report.counts();
    let doc = JsonReport {
        schema: SCHEMA,
        tool_version: env!("CARGO_PKG_VERSION"),
        domain: &report.domain,
        source: report.source,
        source_path: report.source_path.as_deref(),
        sections: sections(report),
        exit_code: summary.exit_code(),
        summary,
        verdict: &report.verdict,
        policy: report.policy.as_ref(),
        mx_hosts: &report.mx_hosts,
        smtp_probed: report.smtp_probed,
        tlsrpt_rua: &report.tlsrpt_rua,
        findings: &report.findings,
        suggestion: report.suggestion.as_ref(),
    };
    // Serialising plain structs of strings and numbers cannot fail; keep a
    // valid document even if it somehow did.
    serde_json::to_string_pretty(&doc)
        .unwrap_or_else(|e| format!("{{\"schema\":\"{SCHEMA}\",\"error\":\"{e}\"}}"))
}
