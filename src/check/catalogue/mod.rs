//! Every finding the check can report, each defined once: its stable code,
//! its section, its severity (or the rule that picks it) and its message.
//! The sections only decide which finding applies and pass the facts, so the
//! wording and the severities (the README's code table, which scripts and
//! tickets rely on) are in one place and cannot drift apart per call site.
//!
//! One file per report section: [`txt`], [`policy`], [`mx`] (DNS, DANE,
//! SMTP), [`tlsrpt`]; the TLS and certificate findings in [`tls`] are
//! shared by the policy host and the MX hosts ([`TlsSide`]). Everything is
//! re-exported here, so a section names a finding `catalogue::txt_valid`.

use super::findings::{Finding, Section, Severity};

pub mod mx;
pub mod policy;
pub mod tls;
pub mod tlsrpt;
pub mod txt;

pub use mx::*;
pub use policy::*;
pub use tls::*;
pub use tlsrpt::*;
pub use txt::*;

fn finding(section: Section, severity: Severity, code: &'static str, message: String) -> Finding {
    Finding {
        section,
        severity,
        code,
        message,
        host: None,
    }
}
