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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::command::{RcptParams, Ret};
use super::spool::Spool;
use crate::config::RelayConfig;
use crate::dane::{host_rule, hosts_to_try, HostRule};
use crate::dns::Answer as DnsAnswer;
use crate::policy::mx::matches_any;
use crate::policy::Mode;
use crate::resolver::{Answer, Failure, NoPolicy, Resolver};
use crate::smtp::{Ehlo, Reply, SmtpConn, SmtpError};
use crate::store::StoredPolicy;
use crate::tlsprobe::{CertProblem, TlsProber};

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

/// How TLS is applied to a delivery.
#[derive(Debug, Clone)]
enum TlsMode {
    Enforce(Arc<StoredPolicy>),
    Testing(Arc<StoredPolicy>),
    /// Policy mode none, or no policy; the label says which.
    Opportunistic(&'static str),
    /// This MX host has DNSSEC-authenticated TLSA records (RFC 7672), which
    /// take precedence over MTA-STS (RFC 8461 §2): TLS required, the chain
    /// must match them, no fallback of any kind.
    Dane(Vec<crate::dns::TlsaRecord>),
}

impl TlsMode {
    fn label(&self) -> &'static str {
        match self {
            TlsMode::Enforce(_) => "enforce",
            TlsMode::Testing(_) => "testing",
            TlsMode::Opportunistic(l) => l,
            TlsMode::Dane(_) => "dane",
        }
    }

    /// What a strict mode is called in reasons: `MTA-STS enforce`, `DANE`.
    fn what(&self) -> &'static str {
        match self {
            TlsMode::Dane(_) => "DANE",
            _ => "MTA-STS enforce",
        }
    }

    /// No plaintext, no HELO, no fallback.
    fn strict(&self) -> bool {
        matches!(self, TlsMode::Enforce(_) | TlsMode::Dane(_))
    }

    fn policy(&self) -> Option<&StoredPolicy> {
        match self {
            TlsMode::Enforce(p) | TlsMode::Testing(p) => Some(p),
            TlsMode::Opportunistic(_) | TlsMode::Dane(_) => None,
        }
    }
}

/// RFC 8460 §4.3 result type of a TLS failure, used in logs and metrics
/// (and the input of TLS-RPT reports).
fn cert_result_type(p: &CertProblem) -> &'static str {
    match p {
        CertProblem::Expired | CertProblem::NotYetValid => "certificate-expired",
        CertProblem::NameMismatch => "certificate-host-mismatch",
        CertProblem::Untrusted => "certificate-not-trusted",
        CertProblem::Other(_) => "validation-failure",
    }
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
                "5.0.0"
            } else {
                "4.0.0"
            },
        }
    }
}

enum Attempt {
    /// The transaction ran; every job recipient has a result.
    Done(Vec<(usize, RcptResult)>),
    Next(NoSession),
}

/// Plain TCP, or TLS after STARTTLS.
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

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
        Deliverer {
            inner: Arc::new(Inner {
                resolver,
                tls,
                cfg,
                hostname,
                spool,
                tlsrpt,
            }),
        }
    }

    /// Tries every qualifying MX address in order until one session runs a
    /// transaction; the result has one entry per job recipient.
    pub async fn deliver(&self, job: &Job) -> Vec<(usize, RcptResult)> {
        let me = &self.inner;
        let all = |permanent: bool, reason: String, code: &str| -> Vec<(usize, RcptResult)> {
            job.rcpts
                .iter()
                .map(|(i, _)| {
                    (
                        *i,
                        RcptResult::Failed {
                            permanent,
                            mx: None,
                            reply: None,
                            reason: reason.clone(),
                            code: code.to_string(),
                        },
                    )
                })
                .collect()
        };
        // A REQUIRETLS message to a domain whose policy cannot be known
        // right now is deferred, not bounced: it may well have one.
        let mut policy_unknown = false;
        let mode = match me.resolver.lookup(&job.domain).await {
            // Without the store we cannot know whether an enforce policy
            // exists: deferring is the only safe answer.
            Err(e) => {
                tracing::error!(queue_id = %job.queue_id, domain = %job.domain, error = %e, "policy store unavailable; delivery deferred");
                return all(false, format!("policy store unavailable: {e}"), "4.3.0");
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
                    me.tlsrpt.sts_failure(&job.domain, rt);
                }
                policy_unknown = matches!(why, NoPolicy::Backoff(_) | NoPolicy::Pending);
                TlsMode::Opportunistic("no-policy")
            }
        };
        let mode = match mode {
            // RFC 8689 §4.2.1: for a REQUIRETLS message a policy in
            // "testing" mode is applied as if it were "enforce".
            TlsMode::Testing(p) if job.requiretls => TlsMode::Enforce(p),
            // RFC 8689 §4.2.2: TLS-Required: No asks that the policy not be
            // enforced; the checks are still made, logged and reported,
            // exactly as under "testing". §3: REQUIRETLS wins over it.
            TlsMode::Enforce(p) if job.tls_optional && !job.requiretls => TlsMode::Testing(p),
            m => m,
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
                return all(false, format!("MX lookup failed: {e}"), "4.4.3");
            }
            Ok(DnsAnswer::NoRecords { nxdomain: true }) => {
                return all(
                    true,
                    format!("domain {} does not exist", job.domain),
                    "5.1.2",
                );
            }
            // RFC 5321 §5.1: no MX records, the domain itself is the host.
            Ok(DnsAnswer::NoRecords { nxdomain: false }) => vec![job.domain.clone()],
            Ok(DnsAnswer::Records(records)) => {
                // RFC 7505 §3: a null MX means the domain accepts no mail.
                if records.iter().any(|r| r.is_null()) {
                    return all(
                        true,
                        format!("domain {} accepts no mail (null MX, RFC 7505)", job.domain),
                        "5.1.10",
                    );
                }
                let mut hosts: Vec<String> = Vec::new();
                for r in records {
                    if !hosts.contains(&r.exchange) {
                        hosts.push(r.exchange);
                    }
                }
                hosts
            }
        };

        let hosts = hosts_to_try(hosts, dane.as_deref());
        let mut failures: Vec<String> = Vec::new();
        let mut candidates: Vec<(String, TlsMode)> = Vec::new();
        for host in hosts {
            match host_rule(dane.as_deref(), &host) {
                HostRule::Dane(_) if job.tls_optional && !job.requiretls => {
                    // RFC 8689 §4.2.2: the TLSA records are not enforced.
                    tracing::info!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, "TLS-Required: No: DANE not enforced for this message (opportunistic TLS)");
                    candidates.push((host, TlsMode::Opportunistic("tls-required-no")));
                    continue;
                }
                HostRule::Dane(records) => {
                    // DANE wins over MTA-STS for this host, listed or not.
                    candidates.push((host, TlsMode::Dane(records)));
                    continue;
                }
                HostRule::MtaSts => {}
                HostRule::Skip(why) => {
                    tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, reason = %why, result_type = "dnssec-invalid", "MX host ruled out by DNSSEC (RFC 7672 §2.1.1); not used");
                    me.tlsrpt
                        .tlsa(&job.domain, &host, &[], None, None, Some("dnssec-invalid"));
                    failures.push(format!("{host}: {why}"));
                    continue;
                }
            }
            if let Some(policy) = mode.policy() {
                if !matches_any(&policy.policy.mx, &host) {
                    me.tlsrpt
                        .sts(mode.policy(), &host, None, None, Some("validation-failure"));
                    if let TlsMode::Enforce(_) = mode {
                        tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, policy_id = %policy.id, result_type = "validation-failure", "MX host not listed in the MTA-STS policy; not contacted");
                        crate::metrics::metrics().relay_policy_failure("enforce", "mx-mismatch");
                        continue;
                    }
                    tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %host, policy_id = %policy.id, mode = "testing", "MX host not listed in the MTA-STS policy (testing: delivering anyway)");
                    crate::metrics::metrics().relay_policy_failure("testing", "mx-mismatch");
                }
            }
            candidates.push((host, mode.clone()));
        }
        if job.requiretls {
            // RFC 8689 §4.2.1 items 1-2: only an MX host authenticated by
            // DANE or by an (enforced) MTA-STS policy, which the strict
            // modes are; an opportunistic host is never contacted.
            let before = candidates.len();
            candidates.retain(|(_, m)| m.strict());
            if candidates.is_empty() && before > 0 {
                tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, policy_unknown, "REQUIRETLS message: no MX host of the domain is authenticated by MTA-STS or DANE");
                crate::metrics::metrics().relay_policy_failure("requiretls", "no-authenticated-mx");
                // X.7.10 "encryption needed" (RFC 5248's registry; RFC 8689
                // registers only 5.7.30, for a hop without the extension):
                // permanent when the domain provably has no policy.
                return if policy_unknown {
                    all(
                        false,
                        format!(
                            "REQUIRETLS: the MTA-STS policy of {} cannot be had right now; retried",
                            job.domain
                        ),
                        "4.7.10",
                    )
                } else {
                    all(
                        true,
                        format!("REQUIRETLS: {} has no MTA-STS policy and no DANE-authenticated MX host, so the message cannot be delivered with the TLS its sender required", job.domain),
                        "5.7.10",
                    )
                };
            }
        }
        candidates.truncate(me.cfg.max_mx_hosts);
        if candidates.is_empty() && !failures.is_empty() {
            return all(
                false,
                format!("no usable MX host: {}", failures.join("; ")),
                "4.7.5",
            );
        }
        if candidates.is_empty() {
            let policy_id = mode.policy().map(|p| p.id.as_str()).unwrap_or("");
            return all(
                false,
                format!(
                    "no MX host of {} is allowed by its MTA-STS policy (enforce, id {policy_id}); mail is held until the MX records or the policy change",
                    job.domain
                ),
                "4.7.5",
            );
        }

        let mut last = NoSession::new("no MX address could be tried", "4.4.1");
        // Sessions tried, and how many of them ended on a missing REQUIRETLS.
        let (mut tried, mut lacked_requiretls) = (0usize, 0usize);
        for (host, host_mode) in &candidates {
            let addrs = self.addresses(host).await;
            if addrs.is_empty() {
                failures.push(format!("{host}: no address"));
                last = NoSession::new(format!("{host}: no IPv4 or IPv6 address"), "4.4.3");
                continue;
            }
            for ip in addrs {
                let addr = SocketAddr::new(ip, me.cfg.delivery_port);
                match self.attempt(job, host_mode, host, addr).await {
                    Attempt::Done(results) => return results,
                    Attempt::Next(why) => {
                        tried += 1;
                        if why.code == "5.7.30" {
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
        // RFC 8689 §4.2.1 item 3 and its 5.7.30 (registered in §7): every host reached over
        // authenticated TLS lacked REQUIRETLS, which a retry will not fix.
        if job.requiretls && lacked_requiretls > 0 && lacked_requiretls == tried {
            return job
                .rcpts
                .iter()
                .map(|(i, _)| {
                    (
                        *i,
                        RcptResult::Failed {
                            permanent: true,
                            mx: None,
                            reply: None,
                            reason: format!("REQUIRETLS: {}", failures.join("; ")),
                            code: "5.7.30".to_string(),
                        },
                    )
                })
                .collect();
        }
        let reason = match &mode {
            TlsMode::Enforce(p) => format!(
                "no MX host of {} passed MTA-STS enforcement (policy id {}); held, never sent without validated TLS: {}",
                job.domain,
                p.id,
                failures.join("; ")
            ),
            _ => format!("all MX hosts failed: {}", failures.join("; ")),
        };
        job.rcpts
            .iter()
            .map(|(i, _)| {
                (
                    *i,
                    RcptResult::Failed {
                        permanent: false,
                        mx: None,
                        reply: last.reply.clone(),
                        reason: reason.clone(),
                        code: last.code.replacen('5', "4", 1),
                    },
                )
            })
            .collect()
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

    fn log_attempt(&self, at: At<'_>, tls: &str, result: &str, reply: &str) {
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

    /// The outcome of one MTA-STS or DANE check on a session, in one place:
    /// counted for TLS-RPT under the mode's policy type, and a failure
    /// logged and counted in the metrics. Nothing for opportunistic
    /// deliveries, which have no policy to report on.
    fn checked(&self, at: At<'_>, local_ip: Option<IpAddr>, failure: Option<(&str, &str)>) {
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
            tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, mx = %mx, addr = %addr, mode = %mode.label(), policy_id, result_type, detail, outcome, "TLS policy check failed");
            crate::metrics::metrics().relay_policy_failure(mode.label(), result_type);
        }
    }

    async fn attempt(&self, job: &Job, mode: &TlsMode, mx: &str, addr: SocketAddr) -> Attempt {
        let outcome = self.session(job, mode, mx, addr, true).await;
        if let SessionEnd::HandshakeFailed(why, local) = &outcome {
            let at = At {
                job,
                mode,
                mx,
                addr,
            };
            self.checked(at, *local, Some(("validation-failure", why)));
        }
        match outcome {
            // Opportunistic and testing deliveries retry in plaintext after
            // a failed handshake, as Postfix does; enforce never does.
            SessionEnd::HandshakeFailed(_, _) if !mode.strict() => {
                match self.session(job, mode, mx, addr, false).await {
                    SessionEnd::Attempt(a) => a,
                    SessionEnd::HandshakeFailed(why, _) => {
                        Attempt::Next(NoSession::new(why, "4.7.0"))
                    }
                }
            }
            SessionEnd::HandshakeFailed(why, _) => Attempt::Next(NoSession::new(why, "4.7.0")),
            SessionEnd::Attempt(a) => a,
        }
    }

    /// One SMTP session with one address. `use_tls`: issue STARTTLS when
    /// offered (false only for the plaintext retry).
    async fn session(
        &self,
        job: &Job,
        mode: &TlsMode,
        mx: &str,
        addr: SocketAddr,
        use_tls: bool,
    ) -> SessionEnd {
        let me = &self.inner;
        let at = At {
            job,
            mode,
            mx,
            addr,
        };
        if job.requiretls && (!mode.strict() || !use_tls) {
            // deliver() only hands strict modes on; a REQUIRETLS message is
            // never on a path that could be weaker, whatever changes there.
            return SessionEnd::Attempt(Attempt::Next(NoSession::new(
                "REQUIRETLS: not an authenticated TLS path",
                "4.7.10",
            )));
        }
        let next = |this: &Self, why: NoSession| {
            this.log_attempt(
                at,
                "none",
                "deferred",
                why.reply.as_deref().unwrap_or(&why.reason),
            );
            SessionEnd::Attempt(Attempt::Next(why))
        };
        let tcp = match tokio::time::timeout(me.cfg.connect_timeout, TcpStream::connect(addr)).await
        {
            Err(_) => return next(self, NoSession::new("connection timed out", "4.4.1")),
            Ok(Err(e)) => {
                return next(
                    self,
                    NoSession::new(format!("cannot connect: {e}"), "4.4.1"),
                )
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let local_ip = tcp.local_addr().ok().map(|a| a.ip());
        let mut conn = SmtpConn::new(tcp, me.cfg.reply_timeout);
        let greeting = match conn.read_reply().await {
            Ok(r) => r,
            Err(e) => return next(self, NoSession::new(format!("no greeting: {e}"), "4.4.2")),
        };
        if greeting.code != 220 {
            conn.quit().await;
            return next(self, NoSession::reply("greeting refused", &greeting));
        }
        let ehlo = match conn.ehlo(&me.hostname).await {
            Ok(e) if e.reply.is_positive() => e,
            Ok(e) => {
                // RFC 5321 §3.2: fall back to HELO, which cannot offer
                // STARTTLS, so never under enforce.
                if mode.strict() {
                    conn.quit().await;
                    return next(self, NoSession::reply("EHLO refused", &e.reply));
                }
                match conn.command(&format!("HELO {}", me.hostname)).await {
                    Ok(r) if r.is_positive() => Ehlo {
                        reply: r,
                        extensions: Vec::new(),
                    },
                    Ok(r) => {
                        conn.quit().await;
                        return next(self, NoSession::reply("HELO refused", &r));
                    }
                    Err(e) => return next(self, NoSession::new(format!("HELO: {e}"), "4.4.2")),
                }
            }
            Err(e) => return next(self, NoSession::new(format!("EHLO: {e}"), "4.4.2")),
        };

        if !ehlo.has("STARTTLS") || !use_tls {
            // On the plaintext retry the failed handshake is already counted.
            if use_tls {
                self.checked(
                    at,
                    local_ip,
                    Some(("starttls-not-supported", "STARTTLS not offered")),
                );
            }
            if mode.strict() {
                conn.quit().await;
                let why = format!("STARTTLS not offered ({})", mode.what());
                return next(self, NoSession::new(why, "4.7.5"));
            }
            let a = self.transaction(&mut conn, &ehlo, at, "none").await;
            return SessionEnd::Attempt(a);
        }

        match conn.command("STARTTLS").await {
            Ok(r) if r.code == 220 => {}
            Ok(r) => {
                conn.quit().await;
                return SessionEnd::HandshakeFailed(
                    format!("STARTTLS refused: {}", r.one_line()),
                    local_ip,
                );
            }
            Err(e) => return SessionEnd::HandshakeFailed(format!("STARTTLS: {e}"), local_ip),
        }
        // Bytes the server sent after its 220 would be read as if they came
        // over TLS (CVE-2011-0411 and kin): refuse.
        if conn.has_buffered() {
            return SessionEnd::HandshakeFailed(
                "server sent data after 220 to STARTTLS (possible injection)".to_string(),
                local_ip,
            );
        }
        let (tcp, _) = conn.into_parts();
        let (tls, report) = match me.tls.handshake(tcp, mx, &[]).await {
            Ok(ok) => ok,
            Err(e) => {
                self.log_attempt(at, "failed", "deferred", &e.to_string());
                return SessionEnd::HandshakeFailed(format!("TLS handshake failed: {e}"), local_ip);
            }
        };
        let mut conn: SmtpConn<Tls> = SmtpConn::new(tls, me.cfg.reply_timeout);
        // DANE hosts are judged by their TLSA records alone; everyone else
        // by the WebPKI verdict of the handshake.
        let failure: Option<(&str, String)> = match mode {
            TlsMode::Dane(records) => {
                let chain = conn
                    .get_ref()
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                crate::dane::verify_chain(&chain, records, mx)
                    .err()
                    .map(|m| ("tlsa-invalid", m.to_string()))
            }
            _ => report
                .cert
                .as_ref()
                .err()
                .map(|p| (cert_result_type(p), format!("{p} for {mx}"))),
        };
        self.checked(
            at,
            local_ip,
            failure.as_ref().map(|(rt, detail)| (*rt, detail.as_str())),
        );
        if let (Some((_, detail)), true) = (&failure, mode.strict()) {
            conn.quit().await;
            let why = NoSession::new(format!("{detail} ({})", mode.what()), "4.7.5");
            self.log_attempt(at, &report.version, "deferred", &why.reason);
            return SessionEnd::Attempt(Attempt::Next(why));
        }
        let ehlo = match conn.ehlo(&me.hostname).await {
            Ok(e) if e.reply.is_positive() => e,
            Ok(e) => {
                conn.quit().await;
                let why = NoSession::reply("EHLO after STARTTLS refused", &e.reply);
                self.log_attempt(at, &report.version, "deferred", &why.reason);
                return SessionEnd::Attempt(Attempt::Next(why));
            }
            Err(e) => {
                let why = NoSession::new(format!("EHLO after STARTTLS: {e}"), "4.4.2");
                self.log_attempt(at, &report.version, "deferred", &why.reason);
                return SessionEnd::Attempt(Attempt::Next(why));
            }
        };
        let a = self
            .transaction(&mut conn, &ehlo, at, &report.version)
            .await;
        SessionEnd::Attempt(a)
    }

    /// MAIL, RCPT per recipient, DATA and the body. Per-recipient replies
    /// are kept: one refused recipient does not fail the others.
    async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut SmtpConn<S>,
        ehlo: &Ehlo,
        at: At<'_>,
        tls: &str,
    ) -> Attempt {
        let me = &self.inner;
        let At { job, mx, .. } = at;
        let log = |result: &str, reply: &str| {
            self.log_attempt(at, tls, result, reply);
        };
        let failed =
            |permanent: bool, reply: Option<&Reply>, reason: &str, code: &str| RcptResult::Failed {
                permanent,
                mx: Some(mx.to_string()),
                reply: reply.map(|r| r.one_line()),
                reason: reason.to_string(),
                code: reply
                    .and_then(|r| crate::relay::dsn::enhanced_status(&r.lines.join(" ")))
                    .unwrap_or_else(|| code.to_string()),
            };

        // RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server
        // without it.
        if job.smtputf8 && !ehlo.has("SMTPUTF8") {
            conn.quit().await;
            log("bounced", "server does not support SMTPUTF8");
            return Attempt::Done(
                job.rcpts
                    .iter()
                    .map(|(i, _)| {
                        (
                            *i,
                            failed(
                                true,
                                None,
                                "the message needs SMTPUTF8, which the server does not offer",
                                "5.6.7",
                            ),
                        )
                    })
                    .collect(),
            );
        }
        // RFC 8689 §4.2.1 item 3: the next hop must offer REQUIRETLS (only
        // ever reached over authenticated TLS, see `session`).
        if job.requiretls && !ehlo.has("REQUIRETLS") {
            conn.quit().await;
            let why = NoSession::new(format!("{mx} does not offer REQUIRETLS"), "5.7.30");
            log("deferred", &why.reason);
            return Attempt::Next(why);
        }
        // RFC 3461 §5.2.1: the parameters go on when the next hop offers
        // DSN, and only then (it would refuse them otherwise).
        let dsn = ehlo.has("DSN");
        let mut mail = format!("MAIL FROM:<{}>", job.sender);
        if ehlo.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", job.size));
        }
        // RFC 6152 §3: BODY=8BITMIME says the body may contain 8-bit data.
        // Declared whenever the server takes it, so mail whose client
        // forgot to declare its 8-bit content is still sent correctly.
        if ehlo.has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if job.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if job.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        if dsn {
            if let Some(ret) = job.ret {
                mail.push_str(&format!(" RET={}", ret.keyword()));
            }
            if let Some(envid) = &job.envid {
                mail.push_str(&format!(" ENVID={}", crate::smtp::xtext::encode(envid)));
            }
        }
        let reply = match conn.command(&mail).await {
            Ok(r) => r,
            Err(e) => {
                let why = NoSession::new(format!("MAIL FROM: {e}"), "4.4.2");
                log("deferred", &why.reason);
                return Attempt::Next(why);
            }
        };
        if reply.is_permanent() {
            conn.quit().await;
            log("bounced", &reply.one_line());
            let reason = "the remote server refused the sender";
            return Attempt::Done(
                job.rcpts
                    .iter()
                    .map(|(i, _)| (*i, failed(true, Some(&reply), reason, "5.0.0")))
                    .collect(),
            );
        }
        if !reply.is_positive() {
            conn.quit().await;
            let why = NoSession::reply("MAIL FROM refused", &reply);
            log("deferred", &why.reason);
            return Attempt::Next(why);
        }

        let mut results: Vec<(usize, RcptResult)> = Vec::new();
        let mut accepted: Vec<usize> = Vec::new();
        for (i, rcpt) in &job.rcpts {
            let mut line = format!("RCPT TO:<{rcpt}>");
            if dsn {
                let p = job.rcpt_params.get(*i).cloned().unwrap_or_default();
                if let Some(n) = p.notify {
                    line.push_str(&format!(" NOTIFY={}", n.keyword()));
                }
                if let Some(o) = &p.orcpt {
                    line.push_str(&format!(" ORCPT={}", o.encoded()));
                }
            }
            match conn.command(&line).await {
                Ok(r) if r.is_positive() => accepted.push(*i),
                Ok(r) => {
                    let reason = "the remote server refused the recipient";
                    results.push((*i, failed(r.is_permanent(), Some(&r), reason, "4.0.0")));
                }
                Err(e) => {
                    // The session broke mid-transaction: everyone not yet
                    // answered is deferred.
                    let reason = format!("connection lost at RCPT: {e}");
                    log("deferred", &reason);
                    for (j, _) in &job.rcpts {
                        if !results.iter().any(|(k, _)| k == j) {
                            results.push((*j, failed(false, None, &reason, "4.4.2")));
                        }
                    }
                    return Attempt::Done(results);
                }
            }
        }
        if accepted.is_empty() {
            conn.quit().await;
            log("rejected", "every recipient refused");
            return Attempt::Done(results);
        }
        let rest = |results: &mut Vec<(usize, RcptResult)>, r: RcptResult| {
            for i in &accepted {
                results.push((*i, r.clone()));
            }
        };
        match conn.command("DATA").await {
            Ok(r) if r.code == 354 => {}
            Ok(r) => {
                conn.quit().await;
                log("deferred", &r.one_line());
                let reason = "the remote server refused DATA";
                rest(
                    &mut results,
                    failed(r.is_permanent(), Some(&r), reason, "4.0.0"),
                );
                return Attempt::Done(results);
            }
            Err(e) => {
                let reason = format!("DATA: {e}");
                log("deferred", &reason);
                rest(&mut results, failed(false, None, &reason, "4.4.2"));
                return Attempt::Done(results);
            }
        }
        if let Err(e) = self.send_body(conn, &job.queue_id).await {
            let reason = format!("sending the message failed: {e}");
            log("deferred", &reason);
            rest(&mut results, failed(false, None, &reason, "4.4.2"));
            return Attempt::Done(results);
        }
        conn.set_timeout(me.cfg.data_timeout);
        let end = conn.read_reply().await;
        conn.set_timeout(me.cfg.reply_timeout);
        match end {
            Ok(r) if r.is_positive() => {
                log("delivered", &r.one_line());
                rest(
                    &mut results,
                    RcptResult::Delivered {
                        mx: mx.to_string(),
                        reply: r.one_line(),
                        dsn,
                    },
                );
                conn.quit().await;
            }
            Ok(r) => {
                log(
                    if r.is_permanent() {
                        "bounced"
                    } else {
                        "deferred"
                    },
                    &r.one_line(),
                );
                let reason = "the remote server refused the message";
                rest(
                    &mut results,
                    failed(r.is_permanent(), Some(&r), reason, "4.0.0"),
                );
                conn.quit().await;
            }
            // The server may have taken the message: retrying can make a
            // duplicate, which RFC 5321 §6.1 prefers to a loss.
            Err(e) => {
                let reason = format!("no reply after the message was sent: {e}");
                log("deferred", &reason);
                rest(&mut results, failed(false, None, &reason, "4.4.2"));
            }
        }
        Attempt::Done(results)
    }

    /// Streams the spooled message, dot-stuffed (RFC 5321 §4.5.2), then
    /// the end-of-data line.
    async fn send_body<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut SmtpConn<S>,
        queue_id: &str,
    ) -> Result<(), String> {
        let spool = self.inner.spool.clone();
        let id = queue_id.to_string();
        let body = tokio::task::spawn_blocking(move || spool.open_body(&id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the queued message: {e}"))?;
        let file = tokio::fs::File::from_std(body.into_inner());
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, file);
        let mut out: Vec<u8> = Vec::with_capacity(136 * 1024);
        // Bare CR/LF go out as CRLF and every line's leading dot is
        // stuffed: no receiver can see an end of data before ours.
        let mut stuffer = crate::smtp::dotstuff::DotStuffer::new();
        loop {
            let chunk = reader
                .fill_buf()
                .await
                .map_err(|e| format!("cannot read the queued message: {e}"))?;
            if chunk.is_empty() {
                break;
            }
            stuffer.encode(chunk, &mut out);
            let n = chunk.len();
            reader.consume(n);
            if out.len() >= 64 * 1024 {
                conn.write_raw(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
        }
        stuffer.finish(&mut out);
        conn.write_raw(&out)
            .await
            .map_err(|e: SmtpError| e.to_string())
    }
}

/// Where an attempt goes: for log lines.
#[derive(Clone, Copy)]
struct At<'a> {
    job: &'a Job,
    mode: &'a TlsMode,
    mx: &'a str,
    addr: SocketAddr,
}

enum SessionEnd {
    Attempt(Attempt),
    /// STARTTLS was offered but TLS could not be set up: why, and our
    /// address on that connection (for TLS-RPT's sending-mta-ip).
    HandshakeFailed(String, Option<IpAddr>),
}

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
        assert_eq!(
            cert_result_type(&CertProblem::NameMismatch),
            "certificate-host-mismatch"
        );
        assert_eq!(
            cert_result_type(&CertProblem::Expired),
            "certificate-expired"
        );
        assert_eq!(
            cert_result_type(&CertProblem::Untrusted),
            "certificate-not-trusted"
        );
    }
}
