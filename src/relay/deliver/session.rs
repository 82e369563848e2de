//! Opening one SMTP session with one MX address under its TLS rule: the
//! greeting, EHLO (HELO only where plaintext is allowed), STARTTLS and the
//! certificate verdict. A session that comes out of here has passed every
//! check of its mode; the transaction itself is in `transaction.rs`.

use std::net::IpAddr;
use std::time::Instant;

use tokio::net::TcpStream;

use super::plan::TlsMode;
use super::reuse::{Open, Stream};
use super::{At, Deliverer, NoSession};
use crate::policy::ResultType;
use crate::smtp::status::{BAD_CONNECTION, CRYPTO_FAILURE, NO_ANSWER, TEMP_ENCRYPTION_NEEDED};
use crate::smtp::{Ehlo, SmtpConn, StartTls};
use crate::tlsprobe::CertProblem;

/// How opening a session ended.
pub(super) enum Opened {
    Ready(Open),
    /// Nothing was given to the server: the next address may be tried.
    Next(NoSession),
    /// STARTTLS was offered but TLS could not be set up: why, and our
    /// address on that connection (for TLS-RPT's sending-mta-ip).
    HandshakeFailed(String, Option<IpAddr>),
}

/// RFC 8460 §4.3 result type of a certificate problem.
pub(super) fn cert_result_type(p: &CertProblem) -> ResultType {
    match p {
        CertProblem::Expired | CertProblem::NotYetValid => ResultType::CertificateExpired,
        CertProblem::NameMismatch => ResultType::CertificateHostMismatch,
        CertProblem::Untrusted => ResultType::CertificateNotTrusted,
        CertProblem::Other(_) => ResultType::ValidationFailure,
    }
}

impl Deliverer {
    /// One SMTP session with one address, up to a transaction. `use_tls`:
    /// issue STARTTLS when offered (false only for the plaintext retry).
    pub(super) async fn open(&self, at: At<'_>, use_tls: bool) -> Opened {
        let me = &self.inner;
        let At {
            job,
            mode,
            mx,
            addr,
        } = at;
        if job.requiretls && (!mode.strict() || !use_tls) {
            // deliver() only hands strict modes on; a REQUIRETLS message is
            // never on a path that could be weaker, whatever changes there.
            return Opened::Next(NoSession::new(
                "REQUIRETLS: not an authenticated TLS path",
                TEMP_ENCRYPTION_NEEDED,
            ));
        }
        let next = |this: &Self, why: NoSession| {
            this.log_attempt(
                at,
                "none",
                "deferred",
                why.reply.as_deref().unwrap_or(&why.reason),
            );
            Opened::Next(why)
        };
        let opened = Instant::now();
        let tcp = match tokio::time::timeout(me.cfg.connect_timeout, TcpStream::connect(addr)).await
        {
            Err(_) => return next(self, NoSession::new("connection timed out", NO_ANSWER)),
            Ok(Err(e)) => {
                return next(
                    self,
                    NoSession::new(format!("cannot connect: {e}"), NO_ANSWER),
                )
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let local_ip = tcp.local_addr().ok().map(|a| a.ip());
        let mut conn = SmtpConn::new(Box::new(tcp) as Stream, me.cfg.reply_timeout);
        let greeting = match conn.read_reply().await {
            Ok(r) => r,
            Err(e) => {
                return next(
                    self,
                    NoSession::new(format!("no greeting: {e}"), BAD_CONNECTION),
                )
            }
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
                    Err(e) => {
                        return next(self, NoSession::new(format!("HELO: {e}"), BAD_CONNECTION))
                    }
                }
            }
            Err(e) => return next(self, NoSession::new(format!("EHLO: {e}"), BAD_CONNECTION)),
        };
        let ready = |conn, ehlo, tls: &str| {
            Opened::Ready(Open {
                conn,
                ehlo,
                tls: tls.to_string(),
                host: mx.to_string(),
                addr,
                mode: mode.clone(),
                opened,
                uses: 0,
            })
        };

        if !ehlo.has("STARTTLS") || !use_tls {
            // On the plaintext retry the failed handshake is already counted.
            if use_tls {
                self.checked(
                    at,
                    local_ip,
                    Some((ResultType::StarttlsNotSupported, "STARTTLS not offered")),
                );
            }
            if mode.strict() {
                conn.quit().await;
                let why = format!("STARTTLS not offered ({})", mode.name_in_reasons());
                return next(self, NoSession::new(why, CRYPTO_FAILURE));
            }
            return ready(conn, ehlo, "none");
        }

        let tcp = match conn.starttls().await {
            StartTls::Ready(tcp, _) => tcp,
            StartTls::Refused(r, mut conn) => {
                conn.quit().await;
                return Opened::HandshakeFailed(
                    format!("STARTTLS refused: {}", r.one_line()),
                    local_ip,
                );
            }
            StartTls::Injected(_) => {
                return Opened::HandshakeFailed(
                    "server sent data after 220 to STARTTLS (possible injection)".to_string(),
                    local_ip,
                )
            }
            StartTls::Failed(e) => {
                return Opened::HandshakeFailed(format!("STARTTLS: {e}"), local_ip)
            }
        };
        let (tls, report) = match me.tls.handshake(tcp, mx, &[]).await {
            Ok(ok) => ok,
            Err(e) => {
                self.log_attempt(at, "failed", "deferred", &e.to_string());
                return Opened::HandshakeFailed(format!("TLS handshake failed: {e}"), local_ip);
            }
        };
        // DANE hosts are judged by their TLSA records alone; everyone else
        // by the WebPKI verdict of the handshake (made again on the stored
        // chain when the session was resumed, see `tlsprobe`).
        let failure: Option<(ResultType, String)> = match mode {
            TlsMode::Dane(records) => {
                let chain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                crate::dane::verify_chain(&chain, records, mx)
                    .err()
                    .map(|m| (ResultType::TlsaInvalid, m.to_string()))
            }
            _ => report
                .cert
                .as_ref()
                .err()
                .map(|p| (cert_result_type(p), format!("{p} for {mx}"))),
        };
        let mut conn = SmtpConn::new(Box::new(tls) as Stream, me.cfg.reply_timeout);
        self.checked(
            at,
            local_ip,
            failure.as_ref().map(|(rt, detail)| (*rt, detail.as_str())),
        );
        if let (Some((_, detail)), true) = (&failure, mode.strict()) {
            conn.quit().await;
            let why = NoSession::new(
                format!("{detail} ({})", mode.name_in_reasons()),
                CRYPTO_FAILURE,
            );
            self.log_attempt(at, &report.version, "deferred", &why.reason);
            return Opened::Next(why);
        }
        match conn.ehlo(&me.hostname).await {
            Ok(e) if e.reply.is_positive() => ready(conn, e, &report.version),
            Ok(e) => {
                conn.quit().await;
                let why = NoSession::reply("EHLO after STARTTLS refused", &e.reply);
                self.log_attempt(at, &report.version, "deferred", &why.reason);
                Opened::Next(why)
            }
            Err(e) => {
                let why = NoSession::new(format!("EHLO after STARTTLS: {e}"), BAD_CONNECTION);
                self.log_attempt(at, &report.version, "deferred", &why.reason);
                Opened::Next(why)
            }
        }
    }
}
