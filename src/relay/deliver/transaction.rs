//! One mail transaction over an open session: MAIL, RCPT per recipient,
//! DATA and the dot-stuffed body (RFC 5321 §3.3, §4.5.2), with the
//! message's DSN (RFC 3461), SMTPUTF8 (RFC 6531) and REQUIRETLS (RFC 8689)
//! parameters.

use tokio::io::AsyncBufReadExt;

use super::reuse::{Open, Stream};
use super::{At, Attempt, Deliverer, NoSession, RcptResult};
use crate::smtp::status::{
    BAD_CONNECTION, NON_ASCII_ADDRESS, PERM_OTHER, REQUIRETLS_NEEDED, TEMP_OTHER,
};
use crate::smtp::{Reply, SmtpConn, SmtpError};

/// Whether the session may carry another transaction afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// The server took the message: the session is back in its initial
    /// state (RFC 5321 §4.1.4) and may carry the next one.
    Reusable,
    /// Closed, or in no state to be used again.
    Closed,
}

impl Deliverer {
    /// MAIL, RCPT per recipient, DATA and the body. Per-recipient replies
    /// are kept: one refused recipient does not fail the others.
    pub(super) async fn transaction(&self, session: &mut Open, at: At<'_>) -> (Attempt, After) {
        let me = &self.inner;
        let Open {
            conn, ehlo, tls, ..
        } = session;
        let tls = tls.as_str();
        let closed = |a: Attempt| (a, After::Closed);
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
                    .and_then(|r| crate::smtp::status::enhanced_status(&r.lines.join(" ")))
                    .unwrap_or_else(|| code.to_string()),
            };

        // RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server
        // without it.
        if job.smtputf8 && !ehlo.has("SMTPUTF8") {
            conn.quit().await;
            log("bounced", "server does not support SMTPUTF8");
            return closed(Attempt::Done(
                job.rcpts
                    .iter()
                    .map(|(i, _)| {
                        (
                            *i,
                            failed(
                                true,
                                None,
                                "the message needs SMTPUTF8, which the server does not offer",
                                NON_ASCII_ADDRESS,
                            ),
                        )
                    })
                    .collect(),
            ));
        }
        // RFC 8689 §4.2.1 item 3: the next hop must offer REQUIRETLS (only
        // ever reached over authenticated TLS, see `session`).
        if job.requiretls && !ehlo.has("REQUIRETLS") {
            conn.quit().await;
            let why = NoSession::new(format!("{mx} does not offer REQUIRETLS"), REQUIRETLS_NEEDED);
            log("deferred", &why.reason);
            return closed(Attempt::Next(why));
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
                let why = NoSession::new(format!("MAIL FROM: {e}"), BAD_CONNECTION);
                log("deferred", &why.reason);
                return closed(Attempt::Next(why));
            }
        };
        if reply.is_permanent() {
            conn.quit().await;
            log("bounced", &reply.one_line());
            let reason = "the remote server refused the sender";
            return closed(Attempt::Done(
                job.rcpts
                    .iter()
                    .map(|(i, _)| (*i, failed(true, Some(&reply), reason, PERM_OTHER)))
                    .collect(),
            ));
        }
        if !reply.is_positive() {
            conn.quit().await;
            let why = NoSession::reply("MAIL FROM refused", &reply);
            log("deferred", &why.reason);
            return closed(Attempt::Next(why));
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
                    results.push((*i, failed(r.is_permanent(), Some(&r), reason, TEMP_OTHER)));
                }
                Err(e) => {
                    // The session broke mid-transaction: everyone not yet
                    // answered is deferred.
                    let reason = format!("connection lost at RCPT: {e}");
                    log("deferred", &reason);
                    for (j, _) in &job.rcpts {
                        if !results.iter().any(|(k, _)| k == j) {
                            results.push((*j, failed(false, None, &reason, BAD_CONNECTION)));
                        }
                    }
                    return closed(Attempt::Done(results));
                }
            }
        }
        if accepted.is_empty() {
            conn.quit().await;
            log("rejected", "every recipient refused");
            return closed(Attempt::Done(results));
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
                    failed(r.is_permanent(), Some(&r), reason, TEMP_OTHER),
                );
                return closed(Attempt::Done(results));
            }
            Err(e) => {
                let reason = format!("DATA: {e}");
                log("deferred", &reason);
                rest(&mut results, failed(false, None, &reason, BAD_CONNECTION));
                return closed(Attempt::Done(results));
            }
        }
        if let Err(e) = self.send_body(conn, &job.queue_id).await {
            let reason = format!("sending the message failed: {e}");
            log("deferred", &reason);
            rest(&mut results, failed(false, None, &reason, BAD_CONNECTION));
            return closed(Attempt::Done(results));
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
                (Attempt::Done(results), After::Reusable)
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
                    failed(r.is_permanent(), Some(&r), reason, TEMP_OTHER),
                );
                // Only a session that just took a message is kept: one
                // that refused it may be refusing everything on it (a
                // server's limits are often per session), and a retry must
                // meet the server afresh.
                conn.quit().await;
                (Attempt::Done(results), After::Closed)
            }
            // The server may have taken the message: retrying can make a
            // duplicate, which RFC 5321 §6.1 prefers to a loss.
            Err(e) => {
                let reason = format!("no reply after the message was sent: {e}");
                log("deferred", &reason);
                rest(&mut results, failed(false, None, &reason, BAD_CONNECTION));
                (Attempt::Done(results), After::Closed)
            }
        }
    }

    /// Streams the spooled message, dot-stuffed (RFC 5321 §4.5.2), then
    /// the end-of-data line.
    async fn send_body(&self, conn: &mut SmtpConn<Stream>, queue_id: &str) -> Result<(), String> {
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
