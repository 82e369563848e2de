//! The diagnostic probe of one MX host: connect, banner, EHLO, STARTTLS
//! offered?, STARTTLS, the TLS handshake (through [`crate::tlsprobe`], so the
//! certificate is judged with the fetcher's trust anchors), EHLO again over
//! TLS, QUIT. No mail is sent.
//!
//! Every step is bounded by the probe timeout, and the whole probe by three
//! times that, so a tarpitting server cannot hold the check.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::client::{SmtpConn, SmtpError, StartTls};
use super::reply::Reply;
use crate::tlsprobe::{TlsProbeError, TlsProber, TlsReport};

#[derive(Debug, Clone)]
pub struct SmtpProbeConfig {
    /// Port to probe; 25 except in tests and odd set-ups.
    pub port: u16,
    /// Bound on each step (connect, each reply, the TLS handshake).
    pub timeout: Duration,
    /// The name sent in EHLO.
    pub ehlo_name: String,
}

/// Where the probe was when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStage {
    Connect,
    Banner,
    Ehlo,
    StartTls,
    Handshake,
    EhloAfterTls,
}

impl ProbeStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStage::Connect => "connect",
            ProbeStage::Banner => "banner",
            ProbeStage::Ehlo => "EHLO",
            ProbeStage::StartTls => "STARTTLS",
            ProbeStage::Handshake => "TLS handshake",
            ProbeStage::EhloAfterTls => "EHLO after STARTTLS",
        }
    }
}

/// Why the probe stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub stage: ProbeStage,
    pub message: String,
    /// The TLS probe's own error, when the handshake failed.
    pub tls_error: Option<TlsProbeError>,
}

/// Everything the probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpProbeReport {
    pub host: String,
    pub addr: SocketAddr,
    pub banner: Option<Reply>,
    pub ehlo: Option<Reply>,
    pub starttls_offered: bool,
    pub starttls_reply: Option<Reply>,
    pub tls: Option<TlsReport>,
    pub ehlo_after_tls: Option<Reply>,
    /// `None` when the probe got through the whole dialogue.
    pub failure: Option<ProbeFailure>,
}

impl SmtpProbeReport {
    fn fail(&mut self, stage: ProbeStage, message: impl Into<String>) {
        self.failure = Some(ProbeFailure {
            stage,
            message: message.into(),
            tls_error: None,
        });
    }
}

fn describe(e: &SmtpError) -> String {
    e.to_string()
}

/// Probes `host` (the MX name, used for SNI and certificate checks) at `ip`.
pub async fn probe(
    host: &str,
    ip: std::net::IpAddr,
    config: &SmtpProbeConfig,
    prober: &TlsProber,
) -> SmtpProbeReport {
    let addr = SocketAddr::new(ip, config.port);
    let mut report = SmtpProbeReport {
        host: host.to_string(),
        addr,
        banner: None,
        ehlo: None,
        starttls_offered: false,
        starttls_reply: None,
        tls: None,
        ehlo_after_tls: None,
        failure: None,
    };
    let overall = config.timeout.saturating_mul(3);
    let mut stage = ProbeStage::Connect;
    let run = run(&mut report, &mut stage, config, prober);
    if tokio::time::timeout(overall, run).await.is_err() {
        report.fail(
            stage,
            format!(
                "the probe did not finish within {overall:?} (stopped at {})",
                stage.as_str()
            ),
        );
    }
    report
}

async fn run(
    report: &mut SmtpProbeReport,
    stage: &mut ProbeStage,
    config: &SmtpProbeConfig,
    prober: &TlsProber,
) {
    let addr = report.addr;
    let host = report.host.clone();
    let host = host.as_str();
    let tcp = match tokio::time::timeout(config.timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return report.fail(
                ProbeStage::Connect,
                format!("no connection to {addr} within {:?}", config.timeout),
            )
        }
        Ok(Err(e)) => return report.fail(ProbeStage::Connect, format!("{addr}: {e}")),
        Ok(Ok(tcp)) => tcp,
    };
    let mut conn = SmtpConn::new(tcp, config.timeout);

    *stage = ProbeStage::Banner;
    let banner = match conn.read_reply().await {
        Ok(r) => r,
        Err(e) => return report.fail(ProbeStage::Banner, describe(&e)),
    };
    let banner_ok = banner.code == 220;
    report.banner = Some(banner.clone());
    if !banner_ok {
        conn.quit().await;
        return report.fail(
            ProbeStage::Banner,
            format!("greeting is '{}', not 220", banner.one_line()),
        );
    }

    *stage = ProbeStage::Ehlo;
    let ehlo = match conn.ehlo(&config.ehlo_name).await {
        Ok(e) => e,
        Err(e) => return report.fail(ProbeStage::Ehlo, describe(&e)),
    };
    report.ehlo = Some(ehlo.reply.clone());
    if !ehlo.reply.is_positive() {
        conn.quit().await;
        return report.fail(
            ProbeStage::Ehlo,
            format!("EHLO rejected: {}", ehlo.reply.one_line()),
        );
    }
    report.starttls_offered = ehlo.has("STARTTLS");
    if !report.starttls_offered {
        conn.quit().await;
        return;
    }

    *stage = ProbeStage::StartTls;
    let tcp = match conn.starttls().await {
        StartTls::Ready(tcp, reply) => {
            report.starttls_reply = Some(reply);
            tcp
        }
        StartTls::Refused(reply, mut conn) => {
            report.starttls_reply = Some(reply.clone());
            conn.quit().await;
            return report.fail(
                ProbeStage::StartTls,
                format!("STARTTLS refused: {}", reply.one_line()),
            );
        }
        StartTls::Injected(reply) => {
            report.starttls_reply = Some(reply);
            return report.fail(
                ProbeStage::StartTls,
                "the server sent data after its STARTTLS reply, before the TLS handshake \
                 (a command-injection flaw, CVE-2011-0411 style)",
            );
        }
        StartTls::Failed(e) => return report.fail(ProbeStage::StartTls, describe(&e)),
    };

    *stage = ProbeStage::Handshake;
    let (tls, tls_report) = match prober.handshake(tcp, host, &[]).await {
        Ok(done) => done,
        Err(e) => {
            report.failure = Some(ProbeFailure {
                stage: ProbeStage::Handshake,
                message: e.to_string(),
                tls_error: Some(e),
            });
            return;
        }
    };
    report.tls = Some(tls_report);

    *stage = ProbeStage::EhloAfterTls;
    let mut conn = SmtpConn::new(tls, config.timeout);
    match conn.ehlo(&config.ehlo_name).await {
        Ok(e) => {
            let positive = e.reply.is_positive();
            report.ehlo_after_tls = Some(e.reply.clone());
            if !positive {
                report.fail(
                    ProbeStage::EhloAfterTls,
                    format!("EHLO over TLS rejected: {}", e.reply.one_line()),
                );
            }
        }
        Err(e) => return report.fail(ProbeStage::EhloAfterTls, describe(&e)),
    }
    conn.quit().await;
}
