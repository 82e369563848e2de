//! `mta-sts-agent setup`: configure a mail server to ask this agent.
//!
//! - `plan`: what to change in Postfix's main.cf and why, pure.
//! - `postfix`: runs Postfix's own tools (postconf, postmap) to read the
//!   settings, apply the plan and check the result.

pub mod plan;
pub mod postfix;
