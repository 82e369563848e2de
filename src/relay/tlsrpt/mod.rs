//! TLS-RPT (RFC 8460) for the relay: every delivery session under an
//! MTA-STS policy (enforce or testing) is counted per policy domain and UTC
//! day ([`record`]); once a day the previous days' counts become one
//! aggregate report per domain ([`report`]) for each domain that publishes
//! `_smtp._tls` with `rua=`, sent gzip-compressed by HTTPS POST or by mail
//! through the relay's own queue ([`send`]).
//!
//! Durability and idempotency, per (domain, day):
//! - Counts are flushed every `flush_interval` and at shutdown; a crash
//!   loses at most one interval of counts.
//! - A report is generated once: it is written (gzip bytes and the `rua`
//!   URIs still to serve) to its own file under
//!   `<state_dir>/tlsrpt/reports/` ([`state`]) before its counts are
//!   removed, and a (domain, day) kept there is never generated again. Each
//!   URI is crossed off once it took the report (2xx answer, or the message
//!   is in the queue's spool); the entry is marked done when none is left.
//!   A restart therefore resumes where it stopped; only a crash between a
//!   send and the next write of that report's file can send that one URI
//!   the report twice, with the same report-id.
//! - None of this state can stop the relay from starting: a file that
//!   cannot be used is set aside and logged, and the state is capped
//!   (`relay.tlsrpt.max_reports`, and per-day caps on the counts).
//! - A URI that failed (network error, non-2xx) is retried by the next
//!   daily run (and at start-up) until the report is `retry_days` old, then
//!   dropped with a log line. So is a `_smtp._tls` lookup that fails with a
//!   DNS error. A domain without a valid TLS-RPT record has its day's
//!   counts dropped.
//! - Sessions under an administrator's override policy are not counted:
//!   the domain never published that policy.

#[cfg(test)]
mod counting_tests;
pub mod destination;
pub mod inject;
pub mod record;
pub mod report;
pub mod send;
pub mod state;

pub use inject::{Queued, ReportInjector};

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, TlsRptConfig};
use crate::dns::{Answer as DnsAnswer, Dns};
use crate::policy::tlsrpt::{
    discover_tlsrpt, parse_rua_uri, PolicyType, ResultType, RuaUri, TlsRptDiscovery,
};
use crate::relay::dkim::DkimSigner;
use crate::store::{unix_now, PolicySource, StoredPolicy};

use crate::sync::Recover;
use record::{Book, CountsDir, DomainDay, Session};
use report::{Report, Submitter};
use state::ReportsDir;

/// Done reports are kept this many days (so a stale
/// counts file restored from a backup cannot produce a second report).
const KEEP_DONE_DAYS: u64 = 60;

/// One report being delivered (the content of its state file; `gz` is
/// left empty in memory and read from the file when it is sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportState {
    pub day: u64,
    pub domain: String,
    pub report_id: String,
    /// The gzipped JSON, base64; emptied once done.
    #[serde(default)]
    pub gz: String,
    /// `rua` URIs that have not taken the report yet.
    pub pending: Vec<String>,
    pub done: bool,
}

/// What one daily run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Reports generated.
    pub generated: usize,
    /// (domain, day) whose counts were dropped: no TLS-RPT record.
    pub no_record: usize,
    pub posted: usize,
    pub mailed: usize,
    /// URI sends that failed (retried by the next run).
    pub failed: usize,
    /// Reports given up after `retry_days`.
    pub expired: usize,
}

/// Cheap to clone; the relay's deliverer records through it.
#[derive(Clone)]
pub struct Tlsrpt {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TlsRptConfig,
    who: Submitter,
    from: String,
    dir: PathBuf,
    counts: CountsDir,
    book: Mutex<Book>,
    /// One flush at a time, so a file never goes back to older counts.
    flushing: Mutex<()>,
    /// The delivery state of generated reports (gzip bytes on disk only);
    /// also serialises runs.
    reports: tokio::sync::Mutex<Vec<ReportState>>,
    reports_dir: Arc<ReportsDir>,
    dns: Dns,
    client: reqwest::Client,
    /// Signs mailed reports (`dkim_key_file`).
    dkim: Option<DkimSigner>,
}

enum Rua {
    Uris(Vec<String>),
    /// Nothing to report to, and why.
    None(String),
    Temporary(String),
}

impl Tlsrpt {
    /// Opens `<state_dir>/tlsrpt/`, loading unreported counts and the state
    /// of reports being delivered.
    pub fn open(config: &Config, hostname: &str, dns: &Dns) -> Result<Tlsrpt, String> {
        let cfg = config.relay.tlsrpt.clone();
        let dir = config.state_dir().join("tlsrpt");
        // TLS-RPT state never keeps the relay (or the socketmap) from
        // starting: what cannot be read is set aside and logged.
        let counts = CountsDir::open_or_log(&dir.join("counts"));
        let days = counts.load();
        let reports_dir = ReportsDir::open(&dir);
        let reports = reports_dir.load(&dir.join("reports.json"), cfg.max_reports.max(1));
        let from = cfg
            .report_from
            .clone()
            .unwrap_or_else(|| format!("tlsrpt-noreply@{hostname}"));
        let who = Submitter {
            hostname: hostname.to_string(),
            organization_name: cfg
                .organization_name
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            contact_info: cfg.contact_info.clone().unwrap_or_else(|| from.clone()),
        };
        let client = send::https_client(
            &config.fetch,
            dns,
            cfg.post_timeout,
            cfg.allow_private_destinations,
        )?;
        let dkim = load_dkim(&cfg, &from)?;
        Ok(Tlsrpt {
            inner: Arc::new(Inner {
                cfg,
                who,
                from,
                dir,
                counts,
                book: Mutex::new(Book {
                    days,
                    ..Default::default()
                }),
                flushing: Mutex::new(()),
                reports: tokio::sync::Mutex::new(reports),
                reports_dir: Arc::new(reports_dir),
                dns: dns.clone(),
                client,
                dkim,
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.cfg.enabled
    }

    /// Records one session under an MTA-STS policy (`None`: no policy or
    /// mode none, nothing is recorded). `result_type` None: TLS was
    /// negotiated and the certificate validated; else the RFC 8460 §4.3
    /// result type of the failure.
    pub fn sts(
        &self,
        policy: Option<&StoredPolicy>,
        mx: &str,
        receiving_ip: Option<IpAddr>,
        sending_ip: Option<IpAddr>,
        result_type: Option<ResultType>,
    ) {
        let Some(p) = policy else {
            return;
        };
        if !self.enabled() || matches!(p.source, PolicySource::Override { .. }) {
            return;
        }
        let lines: Vec<String> = p
            .body
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect();
        let mx_host: Vec<String> = p.policy.mx.iter().map(|m| m.to_string()).collect();
        self.record(
            unix_now() / 86_400,
            &Session {
                policy_type: PolicyType::Sts,
                policy_domain: &p.domain,
                policy_string: &lines,
                mx_host: &mx_host,
                result_type,
                sending_mta_ip: sending_ip,
                receiving_mx_hostname: Some(mx),
                receiving_ip,
            },
        );
    }

    /// Records a delivery to `domain` that went ahead without its MTA-STS
    /// policy because the policy could not be had (`sts-policy-fetch-error`,
    /// `sts-policy-invalid`, `sts-webpki-invalid`, RFC 8460 §4.3.1): no
    /// policy text, no MX host.
    pub fn sts_failure(&self, domain: &str, result_type: ResultType) {
        self.record(
            unix_now() / 86_400,
            &Session {
                policy_type: PolicyType::Sts,
                policy_domain: domain,
                policy_string: &[],
                mx_host: &[],
                result_type: Some(result_type),
                sending_mta_ip: None,
                receiving_mx_hostname: None,
                receiving_ip: None,
            },
        );
    }

    /// Records one session with an MX host protected by DANE (RFC 8460
    /// §4.4 policy type `tlsa`: the policy is the host's TLSA RRset). The
    /// policy domain is the recipient domain, whose `_smtp._tls` record
    /// says where the report goes. `records` empty: the TLSA lookup itself
    /// failed (`dnssec-invalid`).
    pub fn tlsa(
        &self,
        domain: &str,
        mx: &str,
        records: &[crate::dns::TlsaRecord],
        receiving_ip: Option<IpAddr>,
        sending_ip: Option<IpAddr>,
        result_type: Option<ResultType>,
    ) {
        let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        self.record(
            unix_now() / 86_400,
            &Session {
                policy_type: PolicyType::Tlsa,
                policy_domain: domain,
                policy_string: &lines,
                mx_host: &[],
                result_type,
                sending_mta_ip: sending_ip,
                receiving_mx_hostname: Some(mx),
                receiving_ip,
            },
        );
    }

    /// Records one session on `day` (days since 1970-01-01, UTC).
    pub fn record(&self, day: u64, session: &Session<'_>) {
        if self.enabled() {
            self.inner.book.locked().add(day, session);
        }
    }

    /// The counts of `domain` on `day` not yet reported.
    pub fn counts(&self, day: u64, domain: &str) -> Option<DomainDay> {
        self.inner
            .book
            .locked()
            .days
            .get(&day)
            .and_then(|m| m.get(domain))
            .cloned()
    }

    /// The report `domain` would get for `day` from the current counts.
    pub fn report(&self, day: u64, domain: &str) -> Option<Report> {
        let counts = self.counts(day, domain)?;
        Some(report::build(day, domain, &counts, &self.inner.who))
    }

    /// Where the files are: `<state_dir>/tlsrpt`.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    /// Writes the changed days' counts to disk (blocking).
    pub fn flush_blocking(&self) -> std::io::Result<()> {
        let _one = self.inner.flushing.locked();
        let work = self.inner.book.locked().take_dirty();
        let mut result = Ok(());
        for (day, map) in work {
            if let Err(e) = self.inner.counts.store(day, &map) {
                // Written at the next flush.
                self.inner.book.locked().dirty.insert(day);
                result = Err(e);
            }
        }
        result
    }

    pub async fn flush(&self) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.flush_blocking()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(dir = %self.inner.dir.display(), error = %e, "cannot write TLS-RPT counts; retrying at the next flush")
            }
            Err(e) => tracing::error!(error = %e, "TLS-RPT flush task failed"),
        }
    }

    /// The delivery state of generated reports.
    pub async fn report_states(&self) -> Vec<ReportState> {
        self.inner.reports.lock().await.clone()
    }

    /// Writes one report's state: only that report's file.
    async fn save_report(&self, r: &ReportState) -> std::io::Result<()> {
        let dir = self.inner.reports_dir.clone();
        let r = r.clone();
        tokio::task::spawn_blocking(move || dir.save(&r))
            .await
            .map_err(std::io::Error::other)?
    }

    /// One report's full state from its file (the gzip bytes live there).
    async fn read_report(&self, day: u64, domain: &str) -> std::io::Result<ReportState> {
        let dir = self.inner.reports_dir.clone();
        let domain = domain.to_string();
        tokio::task::spawn_blocking(move || dir.read(day, &domain))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn remove_report(&self, day: u64, domain: &str) {
        let dir = self.inner.reports_dir.clone();
        let name = domain.to_string();
        let done = tokio::task::spawn_blocking(move || dir.remove(day, &name)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(domain = %domain, day = %record::day_name(day), error = %e, "cannot remove an old TLS-RPT report file");
        }
    }

    /// Makes room for one more report under `max_reports`: the oldest done
    /// reports go first. False when every kept report is still pending.
    async fn make_room(&self, reports: &mut Vec<ReportState>) -> bool {
        let max = self.inner.cfg.max_reports.max(1);
        while reports.len() >= max {
            let oldest_done = reports
                .iter()
                .enumerate()
                .filter(|(_, r)| r.done)
                .min_by_key(|(_, r)| r.day)
                .map(|(i, _)| i);
            let Some(i) = oldest_done else {
                return false;
            };
            let r = reports.remove(i);
            self.remove_report(r.day, &r.domain).await;
        }
        true
    }

    async fn rua(&self, domain: &str) -> Rua {
        let name = format!("_smtp._tls.{domain}");
        match self.inner.dns.txt(&name).await {
            Err(e) => Rua::Temporary(e.to_string()),
            Ok(DnsAnswer::NoRecords { .. }) => Rua::None("no TXT record".into()),
            Ok(DnsAnswer::Records(records)) => match discover_tlsrpt(records) {
                TlsRptDiscovery::Found(r) if !r.rua.is_empty() => {
                    Rua::Uris(r.rua.iter().map(|u| u.as_str().to_string()).collect())
                }
                TlsRptDiscovery::Found(_) => Rua::None("no usable rua= URI".into()),
                TlsRptDiscovery::NoRecord => Rua::None("no v=TLSRPTv1 record".into()),
                TlsRptDiscovery::Multiple(n) => {
                    Rua::None(format!("{n} v=TLSRPTv1 records (RFC 8460 §3: none used)"))
                }
                TlsRptDiscovery::Invalid(e) => Rua::None(format!("invalid record: {e}")),
            },
        }
    }

    /// The daily job for `today` (days since 1970-01-01, UTC): reports every
    /// earlier day not yet reported, and retries reports whose URIs failed.
    /// Running it twice sends nothing twice.
    pub async fn run_reports(&self, today: u64, queue: &dyn ReportInjector) -> RunSummary {
        let mut summary = RunSummary::default();
        let mut reports = self.inner.reports.lock().await;
        let retry_days = self.inner.cfg.retry_days;

        // 1. Generate.
        let due: Vec<(u64, String, DomainDay)> = self
            .inner
            .book
            .locked()
            .days
            .range(..today)
            .flat_map(|(day, m)| m.iter().map(|(d, c)| (*day, d.clone(), c.clone())))
            .collect();
        for (day, domain, counts) in due {
            if reports.iter().any(|r| r.day == day && r.domain == domain) {
                // Generated before a crash that kept the counts file.
                self.inner.book.locked().remove(day, &domain);
                continue;
            }
            let uris = match self.rua(&domain).await {
                Rua::Temporary(e) => {
                    if today > day.saturating_add(retry_days) {
                        tracing::warn!(domain = %domain, day = %record::day_name(day), error = %e, "TLS-RPT record still not resolvable; counts of that day dropped");
                        self.inner.book.locked().remove(day, &domain);
                    } else {
                        tracing::warn!(domain = %domain, day = %record::day_name(day), error = %e, "cannot look up the TLS-RPT record; retrying at the next run");
                    }
                    continue;
                }
                Rua::None(why) => {
                    tracing::info!(domain = %domain, day = %record::day_name(day), reason = %why, "no TLS-RPT record; counts of that day dropped");
                    summary.no_record += 1;
                    self.inner.book.locked().remove(day, &domain);
                    continue;
                }
                Rua::Uris(u) => u,
            };
            let report = report::build(day, &domain, &counts, &self.inner.who);
            let gz = match report::gzip_json(&report) {
                Ok(gz) => gz,
                Err(e) => {
                    tracing::error!(domain = %domain, error = %e, "cannot compress the TLS-RPT report");
                    continue;
                }
            };
            if !self.make_room(&mut reports).await {
                tracing::error!(domain = %domain, day = %record::day_name(day), max_reports = self.inner.cfg.max_reports, "TLS-RPT report state full of undelivered reports (relay.tlsrpt.max_reports); counts of that day dropped");
                summary.expired += 1;
                self.inner.book.locked().remove(day, &domain);
                continue;
            }
            let mut entry = ReportState {
                day,
                domain: domain.clone(),
                report_id: report.report_id.clone(),
                gz: STANDARD.encode(&gz),
                pending: uris,
                done: false,
            };
            // The report is durable before its counts go.
            match self.save_report(&entry).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                    tracing::error!(domain = %domain, day = %record::day_name(day), error = %e, "TLS-RPT report too large to keep; counts of that day dropped");
                    summary.expired += 1;
                    self.inner.book.locked().remove(day, &domain);
                    continue;
                }
                Err(e) => {
                    tracing::error!(domain = %domain, error = %e, "cannot save the TLS-RPT report state; retrying at the next run");
                    continue;
                }
            }
            entry.gz.clear();
            reports.push(entry);
            summary.generated += 1;
            tracing::info!(domain = %domain, day = %record::day_name(day), report_id = %report.report_id, "TLS-RPT report generated");
            self.inner.book.locked().remove(day, &domain);
        }
        self.flush().await;

        // 2. Deliver what is pending.
        for i in 0..reports.len() {
            let Some(r) = reports.get(i).filter(|r| !r.done).cloned() else {
                continue;
            };
            let mut still = Vec::new();
            let stored = self.read_report(r.day, &r.domain).await;
            let b64 = match &stored {
                Ok(full) if full.report_id == r.report_id => full.gz.clone(),
                _ => String::new(),
            };
            let gz = match STANDARD.decode(b64.as_bytes()) {
                Ok(gz) if !gz.is_empty() => gz,
                _ => {
                    let why = match stored {
                        Err(e) => e.to_string(),
                        Ok(_) => "no report in the file".to_string(),
                    };
                    tracing::error!(domain = %r.domain, report_id = %r.report_id, error = %why, "stored TLS-RPT report is damaged; dropped");
                    if let Some(entry) = reports.get_mut(i) {
                        entry.done = true;
                        entry.pending.clear();
                        let entry = entry.clone();
                        if let Err(e) = self.save_report(&entry).await {
                            tracing::error!(error = %e, "cannot save the TLS-RPT report state");
                        }
                    }
                    summary.expired += 1;
                    continue;
                }
            };
            for uri in &r.pending {
                match self.send_one(&r, uri, &gz, queue).await {
                    Ok(Sent::Posted) => summary.posted += 1,
                    Ok(Sent::Mailed) => summary.mailed += 1,
                    Ok(Sent::Unusable) => {}
                    Err(()) => {
                        summary.failed += 1;
                        still.push(uri.clone());
                    }
                }
            }
            let Some(entry) = reports.get_mut(i) else {
                continue;
            };
            if still.is_empty() {
                entry.done = true;
            } else if today > r.day.saturating_add(retry_days) {
                tracing::warn!(domain = %r.domain, report_id = %r.report_id, uris = ?still, "TLS-RPT report not accepted within relay.tlsrpt.retry_days; dropped");
                summary.expired += 1;
                entry.done = true;
            }
            entry.pending = still;
            let mut on_disk = entry.clone();
            if !on_disk.done {
                on_disk.gz = b64;
            }
            if let Err(e) = self.save_report(&on_disk).await {
                tracing::error!(error = %e, "cannot save the TLS-RPT report state; a restart may send a report again");
            }
        }

        // 3. Forget old done entries.
        let mut kept = Vec::with_capacity(reports.len());
        for r in reports.drain(..) {
            if r.done && r.day.saturating_add(KEEP_DONE_DAYS) < today {
                self.remove_report(r.day, &r.domain).await;
            } else {
                kept.push(r);
            }
        }
        *reports = kept;
        summary
    }

    async fn send_one(
        &self,
        r: &ReportState,
        uri: &str,
        gz: &[u8],
        queue: &dyn ReportInjector,
    ) -> Result<Sent, ()> {
        match parse_rua_uri(uri) {
            Err(e) => {
                tracing::warn!(domain = %r.domain, uri = %uri, error = %e, "unusable TLS-RPT URI skipped");
                Ok(Sent::Unusable)
            }
            Ok(RuaUri::Https { .. }) => match send::post(
                &self.inner.client,
                uri,
                gz,
                self.inner.cfg.allow_private_destinations,
            )
            .await
            {
                Ok(status) => {
                    tracing::info!(domain = %r.domain, report_id = %r.report_id, uri = %uri, status, "TLS-RPT report posted");
                    Ok(Sent::Posted)
                }
                Err(e) => {
                    tracing::warn!(domain = %r.domain, report_id = %r.report_id, uri = %uri, error = %e, "TLS-RPT report POST failed; retrying at the next run");
                    Err(())
                }
            },
            Ok(RuaUri::Mailto { address, .. }) => {
                if !send::plain_address(&address) {
                    tracing::warn!(domain = %r.domain, uri = %uri, "TLS-RPT mailto: address unusable in an envelope; skipped");
                    return Ok(Sent::Unusable);
                }
                let mail = send::Mail {
                    from: &self.inner.from,
                    to: &address,
                    domain: &r.domain,
                    submitter: &self.inner.who.hostname,
                    report_id: &r.report_id,
                    day: r.day,
                    now: unix_now(),
                    gz,
                    dkim: self.inner.dkim.as_ref(),
                };
                match send::queue_mail(queue, &mail).await {
                    Ok(id) => {
                        tracing::info!(domain = %r.domain, report_id = %r.report_id, to = %address, queue_id = %id, "TLS-RPT report queued for mail");
                        Ok(Sent::Mailed)
                    }
                    Err(e) => {
                        tracing::error!(domain = %r.domain, report_id = %r.report_id, error = %e, "cannot queue the TLS-RPT report; retrying at the next run");
                        Err(())
                    }
                }
            }
        }
    }

    /// Flushes every `flush_interval` and runs the daily job once per UTC
    /// day, `send_delay` after midnight (and at start-up once that time has
    /// passed); flushes once more at `shutdown`.
    pub async fn run(
        self,
        queue: impl ReportInjector + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if !self.enabled() {
            return;
        }
        let mut last_run: Option<u64> = None;
        let delay = self.inner.cfg.send_delay.as_secs();
        loop {
            let now = unix_now();
            let today = now / 86_400;
            if last_run != Some(today) && now % 86_400 >= delay {
                let s = self.run_reports(today, &queue).await;
                if s != RunSummary::default() {
                    tracing::info!(
                        generated = s.generated,
                        posted = s.posted,
                        mailed = s.mailed,
                        failed = s.failed,
                        no_record = s.no_record,
                        expired = s.expired,
                        "TLS-RPT daily run done"
                    );
                }
                last_run = Some(today);
            }
            self.flush().await;
            tokio::select! {
                _ = tokio::time::sleep(self.inner.cfg.flush_interval.max(Duration::from_secs(1))) => {}
                _ = shutdown.changed() => {
                    self.flush().await;
                    return;
                }
            }
        }
    }
}

/// The DKIM signer of `dkim_key_file`, `d=` defaulting to the domain of
/// the reports' `From:` (`from`); a bad key is a start-up error.
fn load_dkim(cfg: &TlsRptConfig, from: &str) -> Result<Option<DkimSigner>, String> {
    let (Some(path), Some(selector)) = (&cfg.dkim_key_file, &cfg.dkim_selector) else {
        return Ok(None);
    };
    let domain = match &cfg.dkim_domain {
        Some(d) => d.clone(),
        None => match from.rsplit_once('@') {
            Some((_, d)) if !d.is_empty() => d.to_string(),
            _ => {
                return Err(format!(
                    "relay.tlsrpt.dkim_domain: report_from {from:?} has no domain; set dkim_domain"
                ))
            }
        },
    };
    let signer = DkimSigner::load(path, &domain, selector)
        .map_err(|e| format!("relay.tlsrpt.dkim_key_file: {e}"))?;
    tracing::info!(
        algorithm = signer.algorithm(),
        dns_name = %signer.dns_name(),
        txt = %signer.dns_record(),
        "TLS-RPT reports are DKIM-signed; the public key must be published at dns_name"
    );
    Ok(Some(signer))
}

enum Sent {
    Posted,
    Mailed,
    /// The URI can never work; not retried.
    Unusable,
}
