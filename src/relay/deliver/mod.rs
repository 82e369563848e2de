//! Delivery of one message to one recipient domain: MX lookup (RFC 5321
//! §5.1), the domain's MTA-STS policy from the shared resolver, and an SMTP
//! session per MX address until one takes the message.
//!
//! What each policy mode means here (RFC 8461 §5):
//! - **enforce**: only MX hosts matching the policy's patterns are
//!   contacted; STARTTLS is required and the certificate must validate for
//!   the MX host name (also sent as SNI). Nothing but `QUIT` is ever sent
//!   over a session that failed this, and when no host passes, the
//!   recipients are deferred: never sent in plaintext, never to another host.
//! - **testing**: the same checks are made and every failure is logged and
//!   counted, but delivery goes on as it would without a policy.
//! - **none** or no policy: opportunistic TLS, like Postfix's `may`: TLS
//!   when offered, any certificate, plaintext after a failed handshake.
//!
//! The steps, one file each: [`plan`] (pure: policy × MX × DANE × the
//! message's flags → the hosts to try and their rule), `session` (connect,
//! EHLO, STARTTLS, the certificate verdict), `transaction` (MAIL, RCPT,
//! DATA), [`reuse`] (idle sessions kept for the next message to the same
//! destination) and `outcome` (logs, TLS-RPT, metrics).

mod outcome;
mod plan;
mod reuse;
mod session;
mod transaction;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::command::{RcptParams, Ret};
use super::spool::Spool;
use crate::config::RelayConfig;
use crate::policy::{Mode, ResultType};
use crate::resolver::{Answer, Failure, NoPolicy, Resolver};
use crate::smtp::status::{
    DIRECTORY_FAILURE, NO_ANSWER, PERM_OTHER, REQUIRETLS_NEEDED, TEMP_MAIL_SYSTEM, TEMP_OTHER,
    TEMP_SECURITY,
};
use crate::smtp::Reply;
use crate::tlsprobe::TlsProber;
use plan::{Candidate, TlsMode, Verdict};
use reuse::{Connections, Open};
use session::Opened;
use transaction::After;

/// One delivery job: the still-pending recipients of one message at one
/// domain.
#[derive(Debug, Clone)]
pub struct Job {
    pub queue_id: String,
    pub domain: String,
    pub sender: String,
    /// (index in the envelope, address).
    pub rcpts: Vec<(usize, String)>,
    pub size: u64,
    pub smtputf8: bool,
    /// `RET=` and `ENVID=` of the message, passed on to a next hop that
    /// offers DSN (RFC 3461 §5.2.1).
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// NOTIFY and ORCPT per envelope recipient (index as in `rcpts`).
    pub rcpt_params: Vec<RcptParams>,
    /// RFC 8689 §4.2.1: only an authenticated MX, over validated TLS,
    /// offering REQUIRETLS.
    pub requiretls: bool,
    /// RFC 8689 §4.2.2 `TLS-Required: No` (honoured at receipt): the domain's
    /// MTA-STS and DANE policies are not enforced.
    pub tls_optional: bool,
}

/// What became of one recipient in this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Delivered {
        mx: String,
        reply: String,
        /// The next hop offered DSN and was given NOTIFY/ORCPT: it, not
        /// we, reports further (RFC 3461 §5.2.2).
        dsn: bool,
    },
    Failed {
        /// 5xx, or a rule that retrying cannot change (null MX, …).
        permanent: bool,
        mx: Option<String>,
        reply: Option<String>,
        reason: String,
        /// Enhanced status code for a bounce.
        code: String,
    },
}

/// A session that ended before any recipient was given to the server:
/// the next address may be tried.
#[derive(Debug, Clone)]
struct NoSession {
    reason: String,
    reply: Option<String>,
    code: &'static str,
}

impl NoSession {
    fn new(reason: impl Into<String>, code: &'static str) -> NoSession {
        NoSession {
            reason: reason.into(),
            reply: None,
            code,
        }
    }

    fn reply(reason: impl Into<String>, reply: &Reply) -> NoSession {
        NoSession {
            reason: reason.into(),
            reply: Some(reply.one_line()),
            code: if reply.is_permanent() {
                PERM_OTHER
            } else {
                TEMP_OTHER
            },
        }
    }
}

enum Attempt {
    /// The transaction ran; every job recipient has a result.
    Done(Vec<(usize, RcptResult)>),
    Next(NoSession),
}

/// Where an attempt goes: for log lines.
#[derive(Clone, Copy)]
struct At<'a> {
    job: &'a Job,
    mode: &'a TlsMode,
    mx: &'a str,
    addr: SocketAddr,
}

/// Idle sessions kept at most per delivery slot: each delivery can leave
/// one behind, and a burst to many domains must not pile up connections.
const IDLE_PER_SLOT: usize = 1;

#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Resolver,
    tls: TlsProber,
    cfg: RelayConfig,
    hostname: String,
    spool: Spool,
    tlsrpt: super::tlsrpt::Tlsrpt,
    connections: Connections,
}

fn for_all(job: &Job, permanent: bool, reason: String, code: &str) -> Vec<(usize, RcptResult)> {
    for_all_with_reply(job, permanent, reason, code, None)
}

/// Every recipient of `job` failed alike, with the remote reply that
/// decided it when there is one.
fn for_all_with_reply(
    job: &Job,
    permanent: bool,
    reason: String,
    code: &str,
    reply: Option<String>,
) -> Vec<(usize, RcptResult)> {
    job.rcpts
        .iter()
        .map(|(i, _)| {
            (
                *i,
                RcptResult::Failed {
                    permanent,
                    mx: None,
                    reply: reply.clone(),
                    reason: reason.clone(),
                    code: code.to_string(),
                },
            )
        })
        .collect()
}

impl Verdict {
    fn for_all(self, job: &Job) -> Vec<(usize, RcptResult)> {
        for_all(job, self.permanent, self.reason, self.code)
    }
}

impl Deliverer {
    /// `tls` holds the trust anchors MX certificates are checked against:
    /// the same as the policy fetcher's, so one `fetch.ca_file` serves both.
    pub fn new(
        resolver: Resolver,
        tls: TlsProber,
        cfg: RelayConfig,
        hostname: String,
        spool: Spool,
        tlsrpt: super::tlsrpt::Tlsrpt,
    ) -> Deliverer {
        let connections = Connections::new(
            cfg.connection_cache_time,
            cfg.connection_reuse_time,
            cfg.max_deliveries.saturating_mul(IDLE_PER_SLOT),
        );
        Deliverer {
            inner: Arc::new(Inner {
                resolver,
                tls,
                cfg,
                hostname,
                spool,
                tlsrpt,
                connections,
            }),
        }
    }

    /// Idle sessions kept for reuse right now.
    pub fn idle_sessions(&self) -> usize {
        self.inner.connections.idle_count()
    }

    /// The policy mode for the domain, or the results when the policy store
    /// cannot say (deferred: an enforce policy may exist). The flag is set
    /// when the policy cannot be had now (a REQUIRETLS message is deferred,
    /// not bounced, as the domain may well have one).
    async fn policy_mode(&self, job: &Job) -> Result<(TlsMode, bool), Vec<(usize, RcptResult)>> {
        let me = &self.inner;
        let mut policy_unknown = false;
        let mode = match me.resolver.lookup(&job.domain).await {
            Err(e) => {
                tracing::error!(queue_id = %job.queue_id, domain = %job.domain, error = %e, "policy store unavailable; delivery deferred");
                return Err(for_all(
                    job,
                    false,
                    format!("policy store unavailable: {e}"),
                    TEMP_MAIL_SYSTEM,
                ));
            }
            Ok(Answer::Policy(p)) => match p.policy.mode {
                Mode::Enforce => TlsMode::Enforce(p),
                Mode::Testing => TlsMode::Testing(p),
                Mode::None => TlsMode::Opportunistic("none"),
            },
            Ok(Answer::NoPolicy(why)) => {
                if let NoPolicy::Backoff(Failure::Fetch {
                    result_type: rt, ..
                }) = &why
                {
                    me.tlsrpt.sts_failure(&job.domain, *rt);
                }
                policy_unknown = matches!(why, NoPolicy::Backoff(_) | NoPolicy::Pending);
                TlsMode::Opportunistic("no-policy")
            }
        };
        Ok((
            plan::message_mode(mode, job.requiretls, job.tls_optional),
            policy_unknown,
        ))
    }

    /// Tries every qualifying MX address in order until one session runs a
    /// transaction; the result has one entry per job recipient.
    pub async fn deliver(&self, job: &Job) -> Vec<(usize, RcptResult)> {
        let me = &self.inner;
        let (mode, policy_unknown) = match self.policy_mode(job).await {
            Ok(m) => m,
            Err(results) => return results,
        };
        let (dane, decided_mx) = match me.resolver.dane_and_mx(&job.domain).await {
            Some((d, mx)) => (Some(d), mx),
            None => (None, None),
        };
        // The MX answer DANE was decided on, when there is one: the same
        // records, and no second query per delivery.
        let looked_up = match decided_mx {
            Some(mx) => Ok((*mx).clone()),
            None => me.resolver.dns().mx(&job.domain).await,
        };
        let hosts = match looked_up {
            Err(e) => {
                tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, error = %e, "MX lookup failed; delivery deferred");
                return for_all(
                    job,
                    false,
                    format!("MX lookup failed: {e}"),
                    DIRECTORY_FAILURE,
                );
            }
            Ok(answer) => match plan::mx_hosts(&job.domain, answer) {
                Ok(hosts) => hosts,
                Err(verdict) => return verdict.for_all(job),
            },
        };
        let message = plan::Message {
            domain: &job.domain,
            requiretls: job.requiretls,
            tls_optional: job.tls_optional,
            policy_unknown,
        };
        let plan = plan::plan(message, &mode, dane.as_deref(), hosts, me.cfg.max_mx_hosts);
        self.record_plan(job, &mode, &plan.events);
        let mut failures = plan.failures;
        let candidates = match plan.outcome {
            Ok(c) => c,
            Err(verdict) => return verdict.for_all(job),
        };
        let key = reuse::key(&job.domain, job.requiretls, job.tls_optional, &candidates);
        if let Some(results) = self.reuse(job, &key, &mut failures).await {
            return results;
        }
        self.fresh(job, &mode, &candidates, &key, failures).await
    }

    /// Delivers over an idle session of the same destination, when there
    /// is one that still answers; `None` when a new session is needed.
    async fn reuse(
        &self,
        job: &Job,
        key: &str,
        failures: &mut Vec<String>,
    ) -> Option<Vec<(usize, RcptResult)>> {
        let me = &self.inner;
        // A stale session costs one RSET; after two, open a new one.
        for _ in 0..2 {
            let mut session = me.connections.take(key)?;
            // RSET proves the session is alive and resets any state (RFC
            // 5321 §4.1.1.5), with Postfix's smtp_rset_timeout bound.
            session
                .conn
                .set_timeout(me.cfg.reply_timeout.min(RSET_TIMEOUT));
            let alive = matches!(session.conn.command("RSET").await, Ok(r) if r.code == 250);
            session.conn.set_timeout(me.cfg.reply_timeout);
            if !alive {
                tracing::debug!(queue_id = %job.queue_id, domain = %job.domain, mx = %session.host, "cached session no longer usable; opening a new one");
                me.connections.close_now(session).await;
                continue;
            }
            if job.requiretls && session.tls == "none" {
                // The key makes this impossible; never rely on it alone.
                me.connections.close_now(session).await;
                return None;
            }
            session.uses += 1;
            tracing::debug!(queue_id = %job.queue_id, domain = %job.domain, mx = %session.host, uses = session.uses, "reusing a cached session");
            let (host, addr, mode) = (session.host.clone(), session.addr, session.mode.clone());
            let at = At {
                job,
                mode: &mode,
                mx: &host,
                addr,
            };
            match self.run(session, at, key).await {
                Attempt::Done(results) => return Some(results),
                Attempt::Next(why) => {
                    failures.push(format!("{host}[{}]: {}", addr.ip(), why.reason));
                }
            }
        }
        None
    }

    /// New sessions, host by host and address by address.
    async fn fresh(
        &self,
        job: &Job,
        mode: &TlsMode,
        candidates: &[Candidate],
        key: &str,
        mut failures: Vec<String>,
    ) -> Vec<(usize, RcptResult)> {
        let me = &self.inner;
        let mut last = NoSession::new("no MX address could be tried", NO_ANSWER);
        // Sessions tried, and how many of them ended on a missing REQUIRETLS.
        let (mut tried, mut lacked_requiretls) = (0usize, 0usize);
        for Candidate {
            host,
            mode: host_mode,
        } in candidates
        {
            let addrs = self.addresses(host).await;
            if addrs.is_empty() {
                failures.push(format!("{host}: no address"));
                last = NoSession::new(
                    format!("{host}: no IPv4 or IPv6 address"),
                    DIRECTORY_FAILURE,
                );
                continue;
            }
            for ip in addrs {
                let addr = SocketAddr::new(ip, me.cfg.delivery_port);
                match self.attempt(job, host_mode, host, addr, key).await {
                    Attempt::Done(results) => return results,
                    Attempt::Next(why) => {
                        tried += 1;
                        if why.code == REQUIRETLS_NEEDED {
                            lacked_requiretls += 1;
                        }
                        match &why.reply {
                            Some(reply) => {
                                failures.push(format!("{host}[{ip}]: {}: {reply}", why.reason))
                            }
                            None => failures.push(format!("{host}[{ip}]: {}", why.reason)),
                        }
                        last = why;
                    }
                }
            }
        }
        // RFC 8689 §4.2.1 item 3 and its 5.7.30 (registered in §7): every
        // host reached over authenticated TLS lacked REQUIRETLS, which a
        // retry will not fix.
        if job.requiretls && lacked_requiretls > 0 && lacked_requiretls == tried {
            return for_all(
                job,
                true,
                format!("REQUIRETLS: {}", failures.join("; ")),
                REQUIRETLS_NEEDED,
            );
        }
        let reason = match mode {
            TlsMode::Enforce(p) => format!(
                "no MX host of {} passed MTA-STS enforcement (policy id {}); held, never sent without validated TLS: {}",
                job.domain,
                p.id,
                failures.join("; ")
            ),
            _ => format!("all MX hosts failed: {}", failures.join("; ")),
        };
        let code = last.code.replacen('5', "4", 1);
        for_all_with_reply(job, false, reason, &code, last.reply.clone())
    }

    /// IPv4 then IPv6 addresses of an MX host, at most
    /// `max_addresses_per_host`.
    async fn addresses(&self, host: &str) -> Vec<IpAddr> {
        let dns = self.inner.resolver.dns();
        let (v4, v6) = tokio::join!(dns.a(host), dns.aaaa(host));
        let mut out: Vec<IpAddr> = Vec::new();
        if let Ok(a) = v4 {
            out.extend(a.records().iter().map(|ip| IpAddr::V4(*ip)));
        }
        if let Ok(a) = v6 {
            out.extend(a.records().iter().map(|ip| IpAddr::V6(*ip)));
        }
        out.truncate(self.inner.cfg.max_addresses_per_host);
        out
    }

    /// A new session with one address, then the transaction.
    async fn attempt(
        &self,
        job: &Job,
        mode: &TlsMode,
        mx: &str,
        addr: SocketAddr,
        key: &str,
    ) -> Attempt {
        let at = At {
            job,
            mode,
            mx,
            addr,
        };
        let session = match self.open(at, true).await {
            Opened::Ready(s) => s,
            Opened::Next(why) => return Attempt::Next(why),
            Opened::HandshakeFailed(why, local) => {
                self.checked(at, local, Some((ResultType::ValidationFailure, &why)));
                // Opportunistic and testing deliveries retry in plaintext
                // after a failed handshake, as Postfix does; enforce never.
                if mode.strict() {
                    return Attempt::Next(NoSession::new(why, TEMP_SECURITY));
                }
                match self.open(at, false).await {
                    Opened::Ready(s) => s,
                    Opened::Next(why) => return Attempt::Next(why),
                    Opened::HandshakeFailed(why, _) => {
                        return Attempt::Next(NoSession::new(why, TEMP_SECURITY))
                    }
                }
            }
        };
        self.run(session, at, key).await
    }

    /// One transaction over `session`, which is then kept for the next
    /// delivery with the same key when it is still usable.
    async fn run(&self, mut session: Open, at: At<'_>, key: &str) -> Attempt {
        let (attempt, after) = self.transaction(&mut session, at).await;
        if after == After::Reusable {
            self.inner.connections.put(key.to_string(), session);
        }
        attempt
    }
}

/// Postfix's `smtp_rset_timeout` default: how long a cached session gets
/// to prove it is alive.
const RSET_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits between attempts: `schedule[attempts - 1]`, the last repeating.
pub fn retry_delay(schedule: &[Duration], attempts: u32) -> Duration {
    let i = (attempts.max(1) - 1) as usize;
    schedule
        .get(i)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_repeats_its_last_wait() {
        let s = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(retry_delay(&s, 1), Duration::from_secs(1));
        assert_eq!(retry_delay(&s, 2), Duration::from_secs(5));
        assert_eq!(retry_delay(&s, 9), Duration::from_secs(5));
        assert_eq!(retry_delay(&s, 0), Duration::from_secs(1));
    }

    #[test]
    fn cert_problems_map_to_tlsrpt_result_types() {
        use crate::tlsprobe::CertProblem;
        use session::cert_result_type;
        assert_eq!(
            cert_result_type(&CertProblem::NameMismatch).as_str(),
            "certificate-host-mismatch"
        );
        assert_eq!(
            cert_result_type(&CertProblem::Expired).as_str(),
            "certificate-expired"
        );
        assert_eq!(
            cert_result_type(&CertProblem::Untrusted).as_str(),
            "certificate-not-trusted"
        );
    }
}
