//! Section 3, the SMTP probe of one MX host: banner, EHLO, STARTTLS and
//! the TLS behind it. It never sends mail. How much a TLS problem weighs
//! depends on the policy's mode ([`catalogue::mx_tls_severity`](super::catalogue::mx_tls_severity)).

use super::catalogue::{self as c, TlsSide};
use super::findings::{Findings, SmtpFacts};
use super::tls;
use crate::policy::Mode;
use crate::smtp::probe::{ProbeStage, SmtpProbeReport};

/// Adds the findings of `report` for `host`; `port`: the probed port.
pub fn findings(
    f: &mut Findings,
    host: &str,
    report: &SmtpProbeReport,
    mode: Option<Mode>,
    port: u16,
) {
    let addr = report.addr;
    let side = TlsSide::Mx(mode);
    if let Some(banner) = &report.banner {
        if banner.code == 220 {
            f.push_host(host, c::smtp_banner(addr, &banner.one_line()));
        }
    }
    if let Some(failure) = &report.failure {
        let stopped = c::smtp_probe_failed(host, addr, failure, port, mode);
        // A failure after a completed handshake: report the TLS details first.
        if failure.stage == ProbeStage::EhloAfterTls {
            if let Some(tls) = &report.tls {
                tls::findings(f, side, Some(host), host, tls);
            }
        }
        f.push_host(host, stopped);
        return;
    }
    if !report.starttls_offered {
        f.push_host(host, c::smtp_no_starttls(host, addr, mode));
        return;
    }
    f.push_host(host, c::smtp_starttls(host));
    if let Some(tls) = &report.tls {
        tls::findings(f, side, Some(host), host, tls);
    }
}

/// True when the host accepted STARTTLS with TLS 1.2 or later and a
/// certificate valid for its name, all the way through.
pub fn validated_tls(report: &SmtpProbeReport) -> bool {
    report.failure.is_none()
        && report
            .tls
            .as_ref()
            .is_some_and(|t| t.version_ok && t.cert.is_ok())
}

/// What the JSON report carries of the probe.
pub fn facts(report: &SmtpProbeReport) -> SmtpFacts {
    SmtpFacts {
        address: report.addr.to_string(),
        banner: report.banner.as_ref().map(|b| b.one_line()),
        starttls: report.starttls_offered,
        tls_version: report.tls.as_ref().map(|t| t.version.clone()),
        cipher: report.tls.as_ref().map(|t| t.cipher.clone()),
        cert_valid: report.tls.as_ref().map(|t| t.cert.is_ok()),
        cert_days_left: report
            .tls
            .as_ref()
            .and_then(|t| t.leaf.as_ref())
            .map(|l| l.days_left),
        error: report
            .failure
            .as_ref()
            .map(|e| format!("{}: {}", e.stage.as_str(), e.message)),
    }
}
