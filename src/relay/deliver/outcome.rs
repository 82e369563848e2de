//! Recording what a delivery saw, in one place: the log line per attempt,
//! the TLS-RPT count per session (RFC 8460 §4: sessions, not messages, so a
//! reused session is counted once), and the metrics.

use std::net::IpAddr;

use super::plan::{Event, TlsMode};
use super::{At, Deliverer, Job};
use crate::policy::ResultType;

impl Deliverer {
    pub(super) fn log_attempt(&self, at: At<'_>, tls: &str, result: &str, reply: &str) {
        let At {
            job,
            mode,
            mx,
            addr,
        } = at;
        tracing::info!(
            queue_id = %job.queue_id,
            domain = %job.domain,
            mx = %mx,
            addr = %addr,
            tls = %tls,
            mode = %mode.label(),
            result = %result,
            reply = %reply,
            "delivery attempt"
        );
        crate::metrics::metrics().relay_attempt(mode.label(), result);
    }

    /// The outcome of one MTA-STS or DANE check on a session: counted for
    /// TLS-RPT under the mode's policy type, and a failure logged and
    /// counted in the metrics. Nothing for opportunistic deliveries, which
    /// have no policy to report on.
    pub(super) fn checked(
        &self,
        at: At<'_>,
        local_ip: Option<IpAddr>,
        failure: Option<(ResultType, &str)>,
    ) {
        let At {
            job,
            mode,
            mx,
            addr,
        } = at;
        let result_type = failure.map(|(rt, _)| rt);
        match mode {
            TlsMode::Opportunistic(_) => return,
            TlsMode::Dane(records) => self.inner.tlsrpt.tlsa(
                &job.domain,
                mx,
                records,
                Some(addr.ip()),
                local_ip,
                result_type,
            ),
            _ => self
                .inner
                .tlsrpt
                .sts(mode.policy(), mx, Some(addr.ip()), local_ip, result_type),
        }
        if let Some((result_type, detail)) = failure {
            let outcome = if mode.strict() {
                "message not sent"
            } else {
                "delivering anyway"
            };
            let policy_id = mode.policy().map(|p| p.id.as_str()).unwrap_or("");
            let result_type = result_type.as_str();
            tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %mx, addr = %addr, mode = %mode.label(), policy_id, result_type, detail, outcome, "TLS policy check failed");
            crate::metrics::metrics().relay_policy_failure(mode.label(), result_type);
        }
    }

    /// What planning ruled out or changed, logged, counted and reported.
    pub(super) fn record_plan(&self, job: &Job, mode: &TlsMode, events: &[Event]) {
        let tlsrpt = &self.inner.tlsrpt;
        for event in events {
            match event {
                Event::DaneWaived { host } => {
                    tracing::info!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, "TLS-Required: No: DANE not enforced for this message (opportunistic TLS)");
                }
                Event::DnssecInvalid { host, why } => {
                    tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, reason = %why, result_type = ResultType::DnssecInvalid.as_str(), "MX host ruled out by DNSSEC (RFC 7672 §2.1.1); not used");
                    tlsrpt.tlsa(
                        &job.domain,
                        host,
                        &[],
                        None,
                        None,
                        Some(ResultType::DnssecInvalid),
                    );
                }
                Event::NotListed { host, enforce } => {
                    tlsrpt.sts(
                        mode.policy(),
                        host,
                        None,
                        None,
                        Some(ResultType::ValidationFailure),
                    );
                    let policy_id = mode.policy().map(|p| p.id.as_str()).unwrap_or("");
                    if *enforce {
                        tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, policy_id = %policy_id, result_type = ResultType::ValidationFailure.as_str(), "MX host not listed in the MTA-STS policy; not contacted");
                        crate::metrics::metrics().relay_policy_failure("enforce", "mx-mismatch");
                    } else {
                        tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, policy_id = %policy_id, mode = "testing", "MX host not listed in the MTA-STS policy (testing: delivering anyway)");
                        crate::metrics::metrics().relay_policy_failure("testing", "mx-mismatch");
                    }
                }
                Event::NoAuthenticatedMx { policy_unknown } => {
                    tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, policy_unknown, "REQUIRETLS message: no MX host of the domain is authenticated by MTA-STS or DANE");
                    crate::metrics::metrics()
                        .relay_policy_failure("requiretls", "no-authenticated-mx");
                }
            }
        }
    }
}
