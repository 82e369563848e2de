//! What a check run is given: the options from the command line and the
//! I/O handles. Its own module so the sections can take them without
//! depending on the orchestration in [`run`](super::run).

use std::time::Duration;

use crate::dns::Dns;
use crate::fetch::Fetcher;
use crate::smtp::probe::SmtpProbeConfig;
use crate::tlsprobe::TlsProber;

/// The I/O the check uses: the daemon's own DNS and fetcher, and a TLS prober
/// with the fetcher's trust anchors.
#[derive(Clone, Debug)]
pub struct Tools {
    pub dns: Dns,
    pub fetcher: Fetcher,
    pub prober: TlsProber,
}

/// A policy given on the command line instead of the published one.
#[derive(Debug, Clone)]
pub enum PolicyInput {
    File { path: String, body: Vec<u8> },
    Stdin { body: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Normalised (A-labels, lower case, no trailing dot).
    pub domain: String,
    pub policy_input: Option<PolicyInput>,
    /// `None`: `--no-smtp`.
    pub smtp: Option<SmtpProbeConfig>,
    pub https_port: u16,
    pub timeout: Duration,
    pub suggest: bool,
}

/// The check could not run at all (exit status 3).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CannotRun(pub String);
