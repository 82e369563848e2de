//! `mta-sts-check DOMAIN`: the diagnosis an admin runs when mail to a domain
//! is stuck, and a domain owner runs before and after publishing MTA-STS.
//!
//! It reports, in order: the `_mta-sts` TXT record, the policy host and its
//! policy, the MX hosts (DNS, policy match, STARTTLS and certificates over
//! SMTP, DANE TLSA), TLS-RPT, and a one-line verdict. Discovery, fetch,
//! parsing and MX matching are the resolver's own code, so the check and the
//! daemon never disagree about a policy.
//!
//! Layout: [`options`] (what a run is given), [`findings`] (what a finding
//! is), [`catalogue`] (every finding code with its severity and message),
//! [`run`] (the sections in order), one module per section: [`txt`];
//! [`policy_host`] with [`caa`], [`tls`] and [`policy_doc`]; [`mx`] with
//! [`mx_host`], [`mx_dane`] and [`mx_smtp`]; [`tlsrpt`]; [`verdict`]. Then
//! [`render`] (human and JSON output), [`suggest`] (`--suggest`),
//! [`progress`] (the stderr spinner), [`cli`] (options and exit codes,
//! shared by `mta-sts-check` and `mta-sts-agent check`), [`wording`]
//! (shared phrasing; dates come from `smtp::date`). The sections' unit tests,
//! on the in-memory DNS and policy host, are in `tests/`.

pub mod caa;
pub mod catalogue;
pub mod cli;
pub mod findings;
pub mod mx;
pub mod mx_dane;
pub mod mx_host;
pub mod mx_smtp;
pub mod options;
pub mod policy_doc;
pub mod policy_host;
pub mod progress;
pub mod render;
pub mod run;
pub mod suggest;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod tlsrpt;
pub mod txt;
pub mod verdict;
pub mod wording;

pub use findings::{Finding, Report, Section, Severity};
