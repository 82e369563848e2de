//! Mail the queue writes itself: bounces and delay warnings (RFC 3464
//! through `dsn`), and the injection of those and of TLS-RPT reports into
//! the queue, on the same durable path as mail from a client.

use super::*;
use crate::sync::Recover;

impl Queue {
    /// Recipient `i` as a DSN reports it.
    pub(super) fn reported(
        &self,
        msg: &Spooled,
        i: usize,
        addr: &str,
        st: &crate::relay::spool::RcptState,
    ) -> FailedRecipient {
        let orcpt = msg
            .envelope
            .rcpt_params(i)
            .orcpt
            .map(|o| (o.addr_type, o.addr));
        if st.status == RcptStatus::Delivered {
            let mx = st.mx.clone().unwrap_or_default();
            return FailedRecipient {
                address: addr.to_string(),
                status: OK.to_string(),
                remote_mta: st.mx.clone(),
                diagnostic: st.reply.clone(),
                reason: format!(
                    "delivered to {mx}, which does not offer delivery status notifications"
                ),
                orcpt,
                relayed: true,
            };
        }
        FailedRecipient {
            address: addr.to_string(),
            status: st.code.clone().unwrap_or_else(|| PERM_OTHER.to_string()),
            remote_mta: st.mx.clone(),
            diagnostic: st.reply.clone(),
            reason: st.reason.clone().unwrap_or_default(),
            orcpt,
            relayed: false,
        }
    }

    /// The spooled message, at most `cap` octets of it.
    pub(super) async fn original(&self, id: &str, cap: usize) -> Result<Vec<u8>, String> {
        let spool = self.inner.spool.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::io::Read;
            let mut buf = Vec::new();
            spool
                .open_body(&id)?
                .take(cap as u64)
                .read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Queues an RFC 3464 report to the message's sender. RFC 8689 §5:
    /// the report on a REQUIRETLS message carries the original's header,
    /// so it is sent under REQUIRETLS too, and RET=FULL is disregarded for
    /// it: the body the sender wanted kept to authenticated TLS hops does
    /// not travel back through whatever path the report takes.
    pub(super) async fn report(
        &self,
        msg: &Spooled,
        recipients: &[FailedRecipient],
        notice: Notice,
    ) -> Result<String, String> {
        let full = notice == Notice::Failure
            && msg.envelope.ret == Some(Ret::Full)
            && !msg.envelope.requiretls;
        // One octet over the cap tells `dsn::build` the message is too big
        // to go back whole.
        let cap = if full {
            dsn::FULL_CAP + 1
        } else {
            64 * 1024 + 1024
        };
        let original = self.original(&msg.envelope.id, cap).await?;
        let expired = recipients.iter().any(|f| f.status.starts_with('4'));
        let text = dsn::build(&Bounce {
            reporting_mta: &self.inner.hostname,
            queue_id: &msg.envelope.id,
            sender: &msg.envelope.sender,
            arrival: msg.envelope.arrival,
            now: unix_now(),
            recipients,
            original: &original,
            expired,
            notice,
            envid: msg.envelope.envid.as_deref(),
            full,
        });
        let flags = Inject {
            requiretls: msg.envelope.requiretls,
            tls_optional: false,
        };
        self.inject_with(
            &msg.envelope.sender,
            format!("DSN for {}", msg.envelope.id),
            text,
            flags,
        )
        .await
    }

    /// Queues the RFC 3464 bounce for `failed` (and the "relayed" successes
    /// reported with it) to the message's sender.
    pub(super) async fn bounce(
        &self,
        msg: &Spooled,
        failed: &[FailedRecipient],
    ) -> Result<(), String> {
        let notice = if failed.iter().all(|f| f.relayed) {
            Notice::Relayed
        } else {
            Notice::Failure
        };
        let bounce_id = self.report(msg, failed, notice).await?;
        let relayed = failed.iter().filter(|f| f.relayed).count();
        let metrics = crate::metrics::metrics();
        if relayed > 0 {
            metrics.relay_dsn_sent("relayed");
        }
        if relayed < failed.len() {
            metrics.relay_dsn_sent("failed");
        }
        tracing::info!(queue_id = %msg.envelope.id, bounce_id = %bounce_id, to = %msg.envelope.sender, failed = failed.len() - relayed, relayed, "bounce queued");
        Ok(())
    }

    /// Queues the one delay DSN (RFC 3461 §4.1 DELAY) of a message for
    /// recipients `rcpts` (envelope indexes).
    pub(super) async fn delay_warning(
        &self,
        id: &str,
        rcpts: &[usize],
        until: u64,
    ) -> Result<(), String> {
        let Some(msg) = self.inner.entries.locked().get(id).map(|e| e.msg.clone()) else {
            return Ok(());
        };
        let reported: Vec<FailedRecipient> = rcpts
            .iter()
            .filter_map(|&i| {
                let addr = msg.envelope.recipients.get(i)?;
                let st = msg.state.rcpts.get(i)?;
                let mut r = self.reported(&msg, i, addr, st);
                // RFC 3463 §3.5 X.4.7: the time this has been waiting.
                if !r.status.starts_with('4') {
                    r.status = EXPIRED.to_string();
                }
                Some(r)
            })
            .collect();
        if reported.is_empty() {
            return Ok(());
        }
        let dsn_id = self
            .report(&msg, &reported, Notice::Delay { until })
            .await?;
        crate::metrics::metrics().relay_dsn_sent("delayed");
        tracing::info!(queue_id = %id, dsn_id = %dsn_id, to = %msg.envelope.sender, delayed = reported.len(), "delay DSN queued (NOTIFY=DELAY)");
        Ok(())
    }

    /// Queues a message the relay itself wrote (a bounce, a TLS-RPT
    /// report) for one recipient, from the null reverse-path, so that it
    /// is never bounced in turn. Durable once this returns its queue id.
    pub async fn inject(&self, to: &str, client: String, text: Vec<u8>) -> Result<String, String> {
        self.inject_with(to, client, text, Inject::default()).await
    }

    /// [`inject`](Self::inject) with the RFC 8689 flags of the envelope.
    pub async fn inject_with(
        &self,
        to: &str,
        client: String,
        text: Vec<u8>,
        flags: Inject,
    ) -> Result<String, String> {
        let envelope = Envelope {
            id: String::new(),
            sender: String::new(),
            recipients: vec![to.to_string()],
            arrival: unix_now(),
            client,
            smtputf8: !to.is_ascii(),
            requiretls: flags.requiretls,
            tls_optional: flags.tls_optional && !flags.requiretls,
            ..Envelope::default()
        };
        let spool = self.inner.spool.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut w = spool.create(envelope)?;
            w.write(&text)?;
            w.commit()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let id = committed.envelope.id.clone();
        self.accept(committed);
        Ok(id)
    }
}

/// Reports get the same durable path as bounces. `TLS-Required: No` in
/// their header alone would change nothing for mail we write ourselves:
/// the queue is told directly, as the relay's session would be.
impl crate::relay::tlsrpt::ReportInjector for Queue {
    fn inject_report<'a>(
        &'a self,
        to: &'a str,
        client: String,
        text: Vec<u8>,
    ) -> crate::relay::tlsrpt::Queued<'a> {
        let flags = Inject {
            tls_optional: true,
            ..Inject::default()
        };
        Box::pin(self.inject_with(to, client, text, flags))
    }
}
