//! The queue manager: which (message, domain) deliveries are due, at most
//! `max_deliveries` at once, one per domain of a message at a time; the
//! retry schedule and lifetime; bounces; and the admin view (list, flush,
//! delete).
//!
//! Every change to a message's delivery state is written to the spool
//! before anything else happens, so a restart resumes exactly: a recipient
//! that accepted the message is never sent it again, and only a delivery
//! that was in flight at a crash can be repeated. For a message delivered
//! to every recipient with nothing to report, the removal from the spool is
//! that record (see `remove_delivered`). Submodules: `view` (the admin
//! listing), `notify` (bounces, delay warnings and injected reports).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use super::command::Ret;
use super::deliver::{retry_delay, Deliverer, Job, RcptResult};
use super::dsn::{self, Bounce, FailedRecipient, Notice};
use super::spool::{summary, Envelope, LoadError, RcptStatus, Spool, Spooled};
use crate::config::RelayConfig;
use crate::smtp::status::{EXPIRED, OK, PERM_OTHER};
use crate::store::unix_now;
use crate::sync::Recover;

mod notify;
mod view;

pub use view::{QueueView, RcptView};

/// The domain part of a recipient, as the queue groups deliveries by it.
pub fn rcpt_domain(rcpt: &str) -> String {
    match rcpt.rsplit_once('@') {
        Some((_, d)) => crate::policy::normalize_domain(d).unwrap_or_else(|_| d.to_lowercase()),
        None => String::new(),
    }
}

struct Entry {
    msg: Spooled,
    /// Domains with a delivery in flight.
    busy: HashSet<String>,
    /// Every recipient is final; the bounce and removal are under way. The
    /// entry stays listed until the message is gone, so the queue is never
    /// seen empty while a bounce is still being queued.
    finishing: bool,
    /// The bounce is queued: a removal that failed and is retried must not
    /// queue it again.
    bounced: bool,
    /// Unix seconds before which a failed removal is not retried.
    retry_finish: u64,
    /// Serialises this message's state writes, so its file never goes back
    /// to an older state. One lock per message, not one for the queue: the
    /// fsyncs of different messages then overlap instead of queuing up
    /// behind each other.
    persist: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn new(msg: Spooled) -> Entry {
        Entry {
            msg,
            busy: HashSet::new(),
            finishing: false,
            bounced: false,
            retry_finish: 0,
            persist: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

impl Entry {
    fn pending_domains(&self) -> BTreeMap<String, Vec<(usize, String)>> {
        let mut out: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        for (i, rcpt) in self.msg.envelope.recipients.iter().enumerate() {
            if self.msg.state.rcpts.get(i).map(|r| r.status) == Some(RcptStatus::Pending) {
                out.entry(rcpt_domain(rcpt))
                    .or_default()
                    .push((i, rcpt.clone()));
            }
        }
        out
    }

    fn is_final(&self) -> bool {
        self.busy.is_empty()
            && self
                .msg
                .state
                .rcpts
                .iter()
                .all(|r| r.status != RcptStatus::Pending)
    }
}

/// How a message the relay writes itself is to be delivered (RFC 8689).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inject {
    /// Under REQUIRETLS (a report on a REQUIRETLS message).
    pub requiretls: bool,
    /// As if it carried an honoured `TLS-Required: No` (TLS-RPT reports).
    pub tls_optional: bool,
}

#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    deliverer: Deliverer,
    cfg: RelayConfig,
    hostname: String,
    entries: Mutex<BTreeMap<String, Entry>>,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Messages on disk that could not be read (an I/O error, not a
    /// malformed file), loaded again every [`RELOAD_EVERY`].
    unloaded: Mutex<Vec<String>>,
}

/// How often messages that could not be read are tried again, and how
/// long a failed removal waits.
const RELOAD_EVERY: u64 = 5;

impl Queue {
    /// Message `id`'s state-write lock, or `None` once it left the queue.
    fn persist_lock(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.inner
            .entries
            .locked()
            .get(id)
            .map(|e| Arc::clone(&e.persist))
    }
}

impl Queue {
    /// Loads every message in the spool; deliveries start with [`run`](Self::run).
    /// A spool directory that cannot be listed is an error: the queue in it
    /// would otherwise be silently never delivered.
    pub async fn open(
        spool: Spool,
        deliverer: Deliverer,
        cfg: RelayConfig,
        hostname: String,
    ) -> std::io::Result<Queue> {
        let loader = spool.clone();
        let loaded = tokio::task::spawn_blocking(move || loader.load_all())
            .await
            .map_err(std::io::Error::other)??;
        if !loaded.messages.is_empty() || !loaded.retry.is_empty() {
            tracing::info!(
                messages = loaded.messages.len(),
                unreadable = loaded.retry.len(),
                spool = %spool.dir().display(),
                "queue loaded from the spool; resuming delivery"
            );
        }
        let entries = loaded
            .messages
            .into_iter()
            .map(|m| (m.envelope.id.clone(), Entry::new(m)))
            .collect();
        let slots = Arc::new(Semaphore::new(cfg.max_deliveries));
        Ok(Queue {
            inner: Arc::new(Inner {
                spool,
                deliverer,
                cfg,
                hostname,
                entries: Mutex::new(entries),
                wake: Notify::new(),
                slots,
                unloaded: Mutex::new(loaded.retry),
            }),
        })
    }

    /// Tries again to load the messages an I/O error kept out of the queue.
    async fn reload(&self) {
        let ids = std::mem::take(&mut *self.inner.unloaded.locked());
        if ids.is_empty() {
            return;
        }
        let spool = self.inner.spool.clone();
        let retry = ids.clone();
        let results = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| {
                    let r = spool.load(&id);
                    if let Err(LoadError::Malformed(why)) = &r {
                        spool.set_aside(&id, why);
                    }
                    (id, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(results) = results else {
            // The loader itself failed: keep every id for the next round.
            self.inner.unloaded.locked().extend(retry);
            return;
        };
        let mut still = Vec::new();
        for (id, r) in results {
            match r {
                Ok(msg) => {
                    tracing::info!(queue_id = %id, "queued message readable again; delivery resumes");
                    self.inner
                        .entries
                        .locked()
                        .entry(id)
                        .or_insert_with(|| Entry::new(msg));
                }
                // Gone, or set aside (and logged) above.
                Err(LoadError::Gone) | Err(LoadError::Malformed(_)) => {}
                Err(LoadError::Io(e)) => {
                    tracing::warn!(queue_id = %id, error = %e, "queued message still unreadable; tried again later");
                    still.push(id);
                }
            }
        }
        self.inner.unloaded.locked().extend(still);
        self.inner.wake.notify_one();
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn len(&self) -> usize {
        self.inner.entries.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands a freshly committed message to the scheduler.
    pub fn accept(&self, msg: Spooled) {
        crate::metrics::metrics().relay_received.inc();
        self.inner
            .entries
            .locked()
            .insert(msg.envelope.id.clone(), Entry::new(msg));
        self.inner.wake.notify_one();
    }

    pub fn list(&self) -> Vec<QueueView> {
        self.inner
            .entries
            .locked()
            .values()
            .map(|e| QueueView::of(&e.msg))
            .collect()
    }

    /// Makes every pending delivery (of `id`, or of all messages) due now.
    /// Returns how many messages were affected.
    pub fn flush(&self, id: Option<&str>) -> usize {
        let mut n = 0;
        {
            let mut entries = self.inner.entries.locked();
            for (eid, e) in entries.iter_mut() {
                if id.is_some_and(|id| id != eid) {
                    continue;
                }
                n += 1;
                for d in e.msg.state.domains.values_mut() {
                    d.next_attempt = 0;
                }
            }
        }
        self.inner.wake.notify_one();
        n
    }

    /// Deletes `id` from the queue and the spool, without a bounce. A
    /// delivery in flight finishes but its result is dropped.
    pub async fn delete(&self, id: &str) -> Result<bool, String> {
        let removed = self.inner.entries.locked().remove(id);
        if let Some(entry) = removed {
            let spool = self.inner.spool.clone();
            let id2 = id.to_string();
            // A save in flight finishes first, so the removal is the last write.
            let _guard = entry.persist.lock().await;
            tokio::task::spawn_blocking(move || spool.remove(&id2))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot remove {id} from the spool: {e}"))?;
            tracing::info!(queue_id = %id, "message deleted by the administrator");
            return Ok(true);
        }
        Ok(false)
    }

    /// Schedules deliveries until `shutdown`. Deliveries in flight at
    /// shutdown are abandoned; their recipients stay pending in the spool.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_reload = 0;
        loop {
            if unix_now() >= last_reload + RELOAD_EVERY {
                last_reload = unix_now();
                self.reload().await;
            }
            self.start_due();
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn start_due(&self) {
        let now = unix_now();
        let mut jobs = Vec::new();
        let mut finished = Vec::new();
        {
            let mut entries = self.inner.entries.locked();
            for (id, e) in entries.iter_mut() {
                if e.finishing || e.retry_finish > now {
                    continue;
                }
                if e.is_final() {
                    e.finishing = true;
                    finished.push(id.clone());
                    continue;
                }
                // Every wake scans the whole queue for finished messages,
                // but grouping recipients allocates: with no free delivery
                // slot there is nothing to start, so skip it. Under load
                // this keeps a wake O(queue) cheap checks instead of
                // O(queue) allocations, once per completed delivery.
                if self.inner.slots.available_permits() == 0 {
                    continue;
                }
                for (domain, rcpts) in e.pending_domains() {
                    if e.busy.contains(&domain) {
                        continue;
                    }
                    let due = e
                        .msg
                        .state
                        .domains
                        .get(&domain)
                        .map(|d| d.next_attempt <= now)
                        .unwrap_or(true);
                    if !due {
                        continue;
                    }
                    let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
                        break;
                    };
                    e.busy.insert(domain.clone());
                    let env = &e.msg.envelope;
                    jobs.push((
                        permit,
                        Job {
                            queue_id: id.clone(),
                            domain,
                            sender: env.sender.clone(),
                            rcpts,
                            size: e.msg.size,
                            smtputf8: env.smtputf8,
                            ret: env.ret,
                            envid: env.envid.clone(),
                            rcpt_params: env.rcpt_params.clone(),
                            requiretls: env.requiretls,
                            tls_optional: env.tls_optional,
                        },
                    ));
                }
            }
            crate::metrics::metrics()
                .relay_queue
                .set(entries.len() as i64);
        }
        for id in finished {
            let q = self.clone();
            tokio::spawn(async move { q.finish(&id).await });
        }
        for (permit, job) in jobs {
            let q = self.clone();
            tokio::spawn(async move {
                let results = q.inner.deliverer.deliver(&job).await;
                q.complete(&job, results).await;
                drop(permit);
                q.inner.wake.notify_one();
            });
        }
    }

    /// Records a delivery's results, durably, and schedules what is left.
    async fn complete(&self, job: &Job, results: Vec<(usize, RcptResult)>) {
        let Some(persist) = self.persist_lock(&job.queue_id) else {
            return; // deleted meanwhile
        };
        let _guard = persist.lock().await;
        let now = unix_now();
        // Recipients owed a delay DSN now, and when the queue gives up.
        let mut delayed: Vec<usize> = Vec::new();
        let mut delay_until = 0;
        let state = {
            let mut entries = self.inner.entries.locked();
            let Some(e) = entries.get_mut(&job.queue_id) else {
                return; // deleted meanwhile
            };
            e.busy.remove(&job.domain);
            let arrival = e.msg.envelope.arrival;
            let envelope = &e.msg.envelope;
            let sender_is_null = envelope.sender.is_empty();
            let notify_of = |i: usize| envelope.rcpt_params(i).effective_notify();
            let state = &mut e.msg.state;
            let mut deferred = false;
            for (i, r) in results {
                let Some(st) = state.rcpts.get_mut(i) else {
                    continue;
                };
                match r {
                    // Only a summary is kept (in memory as on disk): a
                    // remote reply may be 100 lines of 1000 octets.
                    RcptResult::Delivered { mx, reply, dsn } => {
                        // RFC 3461 §6.2.6.2 (c): a hop without DSN ends
                        // the reporting chain, so a success DSN is owed
                        // now, "relayed"; a hop with DSN reports itself.
                        st.relayed = !dsn && !sender_is_null && notify_of(i).success;
                        st.status = RcptStatus::Delivered;
                        st.mx = Some(summary(&mx));
                        st.reply = Some(summary(&reply));
                        st.reason = None;
                    }
                    RcptResult::Failed {
                        permanent,
                        mx,
                        reply,
                        reason,
                        code,
                    } => {
                        st.mx = mx.as_deref().map(summary);
                        st.reply = reply.as_deref().map(summary);
                        st.reason = Some(summary(&reason));
                        st.code = Some(summary(&code));
                        if permanent {
                            st.status = RcptStatus::Failed;
                        } else {
                            deferred = true;
                        }
                    }
                }
            }
            if deferred {
                let expiry = arrival.saturating_add(self.inner.cfg.queue_lifetime.as_secs());
                let sched = state.domains.entry(job.domain.clone()).or_default();
                sched.attempts += 1;
                if now >= expiry {
                    let lifetime = humantime::format_duration(self.inner.cfg.queue_lifetime);
                    for (i, _) in &job.rcpts {
                        if let Some(st) = state.rcpts.get_mut(*i) {
                            if st.status == RcptStatus::Pending {
                                st.status = RcptStatus::Failed;
                                let last = st.reason.take().unwrap_or_default();
                                st.reason = Some(summary(&format!(
                                    "undeliverable for the queue lifetime ({lifetime}); last error: {last}"
                                )));
                                if !st.code.as_deref().is_some_and(|c| c.starts_with('4')) {
                                    st.code = Some(EXPIRED.to_string());
                                }
                            }
                        }
                    }
                    state.domains.remove(&job.domain);
                    tracing::warn!(queue_id = %job.queue_id, domain = %job.domain, "queue lifetime expired; recipients bounced");
                } else {
                    let wait = retry_delay(&self.inner.cfg.retry_schedule, sched.attempts);
                    sched.next_attempt = now.saturating_add(wait.as_secs().max(1)).min(expiry);
                    let warn_after = self.inner.cfg.delay_warning_after.as_secs();
                    if warn_after > 0
                        && !state.delay_warned
                        && !sender_is_null
                        && now >= arrival.saturating_add(warn_after)
                    {
                        delayed = (0..state.rcpts.len())
                            .filter(|&i| {
                                state.rcpts.get(i).map(|r| r.status) == Some(RcptStatus::Pending)
                                    && notify_of(i).delay
                            })
                            .collect();
                        delay_until = expiry;
                    }
                }
            } else {
                state.domains.remove(&job.domain);
            }
            // Every recipient delivered and no DSN owed: removing the
            // message is the whole record of it (see below).
            let done = e.busy.is_empty()
                && state
                    .rcpts
                    .iter()
                    .all(|r| r.status == RcptStatus::Delivered && !r.relayed);
            (state.clone(), done)
        };
        let (mut state, done) = state;
        if done && self.remove_delivered(&job.queue_id).await {
            return;
        }
        if !delayed.is_empty() {
            // Queued before the flag is saved: a crash in between repeats
            // the warning, never loses it.
            match self
                .delay_warning(&job.queue_id, &delayed, delay_until)
                .await
            {
                Ok(()) => {
                    state.delay_warned = true;
                    if let Some(e) = self.inner.entries.locked().get_mut(&job.queue_id) {
                        e.msg.state.delay_warned = true;
                    }
                }
                Err(err) => {
                    tracing::error!(queue_id = %job.queue_id, error = %err, "cannot queue the delay DSN; tried again at the next attempt");
                }
            }
        }
        let spool = self.inner.spool.clone();
        let id = job.queue_id.clone();
        let saved = tokio::task::spawn_blocking(move || spool.save_state(&id, &state)).await;
        if !matches!(saved, Ok(Ok(()))) {
            // The delivery happened; only the record of it failed. The next
            // save or a restart may repeat it: a duplicate, never a loss.
            tracing::error!(queue_id = %job.queue_id, "cannot save the queue state; a restart may repeat this delivery");
        }
    }

    /// Removes `id`'s files from the spool (message, then state), off the
    /// async threads: the fsync may take milliseconds.
    async fn remove_from_spool(&self, id: &str) -> Result<(), String> {
        let spool = self.inner.spool.clone();
        let id = id.to_string();
        match tokio::task::spawn_blocking(move || spool.remove(&id)).await {
            Ok(done) => done.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Removes a message whose every recipient was delivered with nothing
    /// to report, instead of first saving that state and then removing it:
    /// the removal (unlink, then fsync of `messages/`) is as durable a
    /// record of the delivery as the state file, and costs one fsync
    /// instead of three. A crash before it completes leaves the message
    /// pending on disk, delivered again at the next start: the same
    /// in-flight window as a crash before the state is saved. When the
    /// removal fails, false: the caller saves the state and the usual
    /// finish retries the removal.
    async fn remove_delivered(&self, id: &str) -> bool {
        match self.remove_from_spool(id).await {
            Ok(()) => {
                let count = self
                    .inner
                    .entries
                    .locked()
                    .remove(id)
                    .map(|e| e.msg.state.rcpts.len())
                    .unwrap_or(0);
                tracing::info!(queue_id = %id, delivered = count, failed = 0, "message done; removed from the queue");
                true
            }
            Err(error) => {
                tracing::warn!(queue_id = %id, error = %error, "cannot remove a delivered message from the spool; saving its state instead");
                false
            }
        }
    }

    /// Bounces what failed (never for a bounce) and removes a message whose
    /// recipients are all final. A
    /// crash between queuing the bounce and removing the message sends the
    /// bounce twice: at least once, as for any delivery.
    async fn finish(&self, id: &str) {
        let Some(persist) = self.persist_lock(id) else {
            return; // deleted meanwhile
        };
        let _guard = persist.lock().await;
        let (msg, bounced) = match self.inner.entries.locked().get(id) {
            Some(e) => (e.msg.clone(), e.bounced),
            None => return, // deleted meanwhile
        };
        let failed_count = msg
            .state
            .rcpts
            .iter()
            .filter(|st| st.status == RcptStatus::Failed)
            .count();
        // RFC 3461 §4.1: a failure is reported only to a sender who did not
        // say NOTIFY=NEVER (or a list without FAILURE); successes owed to
        // NOTIFY=SUCCESS past a hop without DSN go in the same report.
        let failed: Vec<FailedRecipient> = msg
            .envelope
            .recipients
            .iter()
            .zip(&msg.state.rcpts)
            .enumerate()
            .filter(|(i, (_, st))| {
                let notify = msg.envelope.rcpt_params(*i).effective_notify();
                (st.status == RcptStatus::Failed && notify.failure)
                    || (st.status == RcptStatus::Delivered && st.relayed)
            })
            .map(|(i, (addr, st))| self.reported(&msg, i, addr, st))
            .collect();
        let delivered = msg.state.rcpts.len() - failed_count;
        if failed_count > 0 && failed.iter().all(|f| f.relayed) {
            tracing::info!(queue_id = %id, failed = failed_count, "failed recipients asked for no failure DSN (NOTIFY); none sent");
        }
        if !failed.is_empty() && !bounced {
            if msg.envelope.sender.is_empty() {
                // RFC 5321 §6.1: never bounce a bounce.
                tracing::error!(queue_id = %id, failed = failed.len(), "bounce undeliverable; dropped (a bounce is never bounced)");
            } else if let Err(e) = self.bounce(&msg, &failed).await {
                // Keep the message: the bounce is retried on the next scan.
                tracing::error!(queue_id = %id, error = %e, "cannot queue the bounce; will retry");
                if let Some(e) = self.inner.entries.locked().get_mut(id) {
                    e.finishing = false;
                    e.retry_finish = unix_now() + RELOAD_EVERY;
                }
                return;
            }
            if let Some(e) = self.inner.entries.locked().get_mut(id) {
                e.bounced = true;
            }
        }
        match self.remove_from_spool(id).await {
            Ok(()) => {
                self.inner.entries.locked().remove(id);
                tracing::info!(queue_id = %id, delivered, failed = failed.len(), "message done; removed from the queue");
            }
            // Left listed and tried again later (a read-only or failing
            // disk may come back); the bounce is not queued twice.
            Err(error) => {
                tracing::error!(queue_id = %id, error = %error, "cannot remove a finished message from the spool; will retry");
                if let Some(e) = self.inner.entries.locked().get_mut(id) {
                    e.finishing = false;
                    e.retry_finish = unix_now() + RELOAD_EVERY;
                }
            }
        }
    }
}
