//! The findings of one completed TLS handshake (version, certificate and
//! its expiry), the same for the policy host and for an MX host after
//! STARTTLS; [`TlsSide`] says whose it was, which names the codes and
//! sets the severity of a bad certificate.

use super::catalogue::{self as c, TlsSide};
use super::findings::Findings;
use crate::tlsprobe::TlsReport;

/// Certificates expiring sooner than this many days are a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Adds the findings of `report` (a handshake with `name`), each about
/// `host` when given; returns true when the certificate or the version is
/// unacceptable.
pub fn findings(
    f: &mut Findings,
    side: TlsSide,
    host: Option<&str>,
    name: &str,
    report: &TlsReport,
) -> bool {
    let mut push = |finding| match host {
        Some(h) => f.push_host(h, finding),
        None => f.push(finding),
    };
    let mut failed = false;
    if report.version_ok {
        push(c::tls_ok(side, &report.version, &report.cipher));
    } else {
        failed = true;
        push(c::tls_old_negotiated(side, name, &report.version));
    }
    let leaf = report.leaf.as_ref();
    match &report.cert {
        Ok(()) => {
            let issuer = leaf.map(|l| l.issuer.clone()).unwrap_or_default();
            push(c::cert_valid(side, name, &issuer, leaf));
            if let Some(leaf) = leaf {
                if leaf.seconds_left < EXPIRY_WARNING_DAYS * 86_400 {
                    push(c::cert_expiring(side, name, leaf));
                }
            }
        }
        Err(problem) => {
            failed = true;
            push(c::cert_rejected(side, name, problem, leaf));
        }
    }
    failed
}
