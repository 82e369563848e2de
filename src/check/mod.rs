//! `mta-sts-check DOMAIN`: the diagnosis an admin runs when mail to a domain
//! is stuck, and a domain owner runs before and after publishing MTA-STS.
//!
//! It reports, in order: the `_mta-sts` TXT record, the policy host and its
//! policy, the MX hosts (DNS, policy match, STARTTLS and certificates over
//! SMTP, DANE TLSA), TLS-RPT, and a one-line verdict. Discovery, fetch,
//! parsing and MX matching are the resolver's own code, so the check and the
//! daemon never disagree about a policy.
//!
//! Layout: [`findings`] (what a finding is), [`run`] (the checks in order),
//! [`render`] (human and JSON output), [`suggest`] (`--suggest`),
//! [`progress`] (the stderr spinner), [`cli`] (options and exit codes, shared
//! by `mta-sts-check` and `mta-sts-agent check`).

pub mod cli;
pub mod findings;
pub mod progress;
pub mod render;
pub mod run;
pub mod suggest;

pub use findings::{Finding, Report, Section, Severity};
