//! Discovery and fetch in the background: one refresh per domain however
//! many lookups ask (the in-flight map and its guard), the global cap on
//! discoveries, backoff after failures, and the §3.3/§5.1 rules for what a
//! failed re-check leaves cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::*;
use crate::sync::Recover;

/// Removes a domain's in-flight marker even if its refresh task panics, so a
/// bug can never wedge a domain into "refresh already running" forever.
struct InflightGuard {
    inner: Arc<Inner>,
    domain: String,
    tx: watch::Sender<bool>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut map = self.inner.inflight.locked();
        map.remove(&self.domain);
        drop(map);
        let _ = self.tx.send(true);
    }
}

impl Inner {
    /// Starts a background re-check for a domain with a valid cached policy if
    /// its next check is due. Never waits.
    pub(super) async fn maintain(self: &Arc<Self>, domain: &str) {
        let (due, failures) = match self.state.get(domain).await {
            Some(st) => (Instant::now() >= st.next_attempt, st.failures),
            None => (true, 0),
        };
        if due {
            // Claim the slot first, so a burst of lookups starts one check;
            // the refresh sets the real next time when it ends.
            self.set_state(domain, self.cfg.recheck_interval, failures, None)
                .await;
            let _ = self.start_refresh(domain);
        }
    }

    pub(super) fn refresh_due(&self, p: &StoredPolicy, now: u64) -> bool {
        let half = u64::from(p.policy.max_age) / 2;
        let every = self.cfg.refresh_interval.as_secs().min(half);
        now >= p.fetched_at.saturating_add(every)
    }

    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let d = self.cfg.failure_backoff_min.saturating_mul(1u32 << exp);
        d.min(self.cfg.failure_backoff_max)
    }

    pub(super) async fn set_state(
        &self,
        domain: &str,
        wait: Duration,
        failures: u32,
        negative: Option<NoPolicy>,
    ) {
        self.state
            .insert(
                domain.to_string(),
                DomainState {
                    next_attempt: Instant::now() + wait,
                    failures,
                    negative,
                },
            )
            .await;
    }

    /// Joins the running discovery+fetch of `domain` or starts one. The
    /// receiver turns `true` when it has finished. At the global cap none is
    /// started and the receiver is already `true`: the caller answers with
    /// what it knows, at once, and a later lookup tries again.
    pub(super) fn start_refresh(self: &Arc<Self>, domain: &str) -> watch::Receiver<bool> {
        self.launch_refresh(domain, false, false)
    }

    /// Like [`Inner::start_refresh`], but at the cap the refresh waits for a
    /// free place instead of being skipped (admin refresh, sweep).
    pub(super) fn start_refresh_queued(self: &Arc<Self>, domain: &str) -> watch::Receiver<bool> {
        self.launch_refresh(domain, true, false)
    }

    /// `force`: fetch the policy even when the TXT id is unchanged and it is
    /// not due, without waiting for the fleet (to check a shared copy). At
    /// the cap it is skipped like any lookup's: the local policy stays.
    pub(super) fn start_refresh_with(
        self: &Arc<Self>,
        domain: &str,
        force: bool,
    ) -> watch::Receiver<bool> {
        self.launch_refresh(domain, false, force)
    }

    pub(super) fn launch_refresh(
        self: &Arc<Self>,
        domain: &str,
        queued: bool,
        force: bool,
    ) -> watch::Receiver<bool> {
        let mut map = self.inflight.locked();
        if let Some(rx) = map.get(domain) {
            return rx.clone();
        }
        let permit = match self.discoveries.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if queued => None,
            Err(_) => {
                drop(map);
                self.discovery_skipped(domain);
                return watch::channel(true).1;
            }
        };
        let (tx, rx) = watch::channel(false);
        map.insert(domain.to_string(), rx.clone());
        drop(map);
        let guard = InflightGuard {
            inner: self.clone(),
            domain: domain.to_string(),
            tx,
        };
        tokio::spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => match guard.inner.discoveries.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            guard.inner.refresh(&guard.domain, force).await;
            drop(guard);
        });
        rx
    }

    pub(super) fn discovery_skipped(&self, domain: &str) {
        use std::sync::atomic::Ordering;
        events::events().discovery(DiscoveryResult::Skipped);
        let now = unix_now();
        let last = self.discoveries_warned.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .discoveries_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(domain, limit = self.cfg.max_discoveries, "too many discoveries running; this lookup answers without one (raise cache.max_discoveries?)");
        }
    }

    /// Discovery, and a fetch when the id is new or the policy is due for
    /// renewal. Applies the keep-the-cached-policy rules on every failure.
    pub(super) async fn refresh(&self, domain: &str, force: bool) {
        let now = unix_now();
        let cached = match self.store.get(domain).await {
            Ok(p) => p.filter(|p| p.is_valid_at(now)),
            Err(e) => {
                tracing::error!(domain, error = %e, "cannot read the policy store; discovery skipped");
                return;
            }
        };
        let failures = self.state.get(domain).await.map_or(0, |s| s.failures);
        let txt_name = format!("_mta-sts.{domain}");

        let m = events::events();
        let discovery = match self.dns.txt(&txt_name).await {
            Ok(answer) => {
                let d = discover(answer.records());
                m.discovery(if d.record().is_some() {
                    DiscoveryResult::Record
                } else {
                    DiscoveryResult::NoRecord
                });
                d
            }
            Err(e) => {
                m.discovery(DiscoveryResult::Failure);
                let reason = format!("TXT lookup of {txt_name} failed: {}", e.reason);
                let failure = Failure::Discovery(reason);
                self.failed(domain, cached.as_deref(), failures, failure)
                    .await;
                return;
            }
        };
        let record = match discovery {
            Discovery::Found(r) => r,
            other => {
                let why = match other {
                    Discovery::Multiple(n) => format!(
                        "{n} v=STSv1 records at {txt_name} (RFC 8461 §3.1 requires exactly one)"
                    ),
                    Discovery::Invalid(e) => format!("invalid record at {txt_name}: {e}"),
                    _ => format!("no v=STSv1 record at {txt_name}"),
                };
                match cached {
                    Some(c) => {
                        // §3.1/§5.1: the cached policy stays until it expires;
                        // removing the record does not remove the promise.
                        tracing::info!(domain, id = %c.id, mode = %c.policy.mode, reason = %why, "TXT record gone or unusable; keeping cached policy until it expires");
                        self.set_state(domain, self.cfg.recheck_interval, 0, None)
                            .await;
                    }
                    None => {
                        tracing::debug!(domain, reason = %why, "no MTA-STS policy");
                        self.set_state(
                            domain,
                            self.cfg.negative_ttl,
                            0,
                            Some(NoPolicy::NoRecord(why)),
                        )
                        .await;
                    }
                }
                return;
            }
        };

        if let Some(c) = &cached {
            if !force && c.id == record.id && !self.refresh_due(c, now) {
                self.set_state(domain, self.cfg.recheck_interval, 0, None)
                    .await;
                return;
            }
        }

        // In a fleet sharing Redis, one agent fetches and the others take its
        // result from the shared store.
        let turn = match force {
            true => FetchTurn::Solo,
            false => self.store.begin_fetch(domain).await,
        };
        if let FetchTurn::Theirs = turn {
            match self.wait_for_peer(domain, &record.id, now).await {
                Ok(p) => {
                    tracing::debug!(domain, id = %p.id, "policy fetched by another agent");
                    self.set_state(domain, self.cfg.recheck_interval, 0, None)
                        .await;
                    return;
                }
                // What the peer stored would weaken ours: see for ourselves.
                Err(true) => {}
                Err(false) => {
                    let failure =
                        Failure::Discovery("another agent's fetch produced no policy".to_string());
                    self.failed(domain, cached.as_deref(), failures, failure)
                        .await;
                    return;
                }
            }
        }
        let fetched = self.fetcher.fetch(domain).await;
        self.finish_fetch(domain, &record.id, cached.as_deref(), failures, fetched)
            .await;
        self.store.end_fetch(domain, &turn).await;
    }

    /// Waits while another agent holds the fetch lock for a policy under
    /// `id` fetched at or after `since` to appear in the shared store.
    /// `Err(true)`: the shared store holds a policy that must be confirmed
    /// by our own fetch.
    pub(super) async fn wait_for_peer(
        &self,
        domain: &str,
        id: &str,
        since: u64,
    ) -> Result<Arc<StoredPolicy>, bool> {
        let deadline = Instant::now() + self.fetcher_deadline();
        loop {
            if let Ok(c) = self.store.get_checked(domain).await {
                if c.disputed.is_some() {
                    return Err(true);
                }
                if let Some(p) = c.policy {
                    if p.id == id && p.fetched_at >= since && p.is_valid_at(unix_now()) {
                        return Ok(p);
                    }
                }
            }
            if Instant::now() >= deadline || !self.store.fetch_in_progress_elsewhere(domain).await {
                // One last look: the peer may have stored and unlocked
                // between our two calls.
                return match self.store.get_checked(domain).await {
                    Ok(c) if c.disputed.is_some() => Err(true),
                    Ok(Checked {
                        policy: Some(p), ..
                    }) if p.id == id && p.fetched_at >= since => Ok(p),
                    _ => Err(false),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) fn fetcher_deadline(&self) -> Duration {
        self.fetcher.timeout() + Duration::from_secs(1)
    }

    pub(super) async fn finish_fetch(
        &self,
        domain: &str,
        id: &str,
        cached: Option<&StoredPolicy>,
        failures: u32,
        fetched: Result<crate::fetch::FetchedPolicy, crate::fetch::FetchError>,
    ) {
        events::events().fetch(fetched.as_ref().err().map(|e| e.class()));
        match fetched {
            Ok(fetched) => {
                let policy = fetched.parsed.policy;
                for (line, note) in &fetched.parsed.notes {
                    tracing::info!(domain, line, note = %note, "policy remark");
                }
                let stored = StoredPolicy {
                    domain: domain.to_string(),
                    id: id.to_string(),
                    policy,
                    body: fetched.body,
                    fetched_at: unix_now(),
                    source: PolicySource::Fetched,
                };
                let mx: Vec<String> = stored.policy.mx.iter().map(|m| m.to_string()).collect();
                match &cached {
                    None => {
                        tracing::info!(domain, id = %stored.id, mode = %stored.policy.mode, max_age = stored.policy.max_age, mx = %mx.join(" "), "policy fetched")
                    }
                    Some(old) if old.id != stored.id || old.policy != stored.policy => {
                        tracing::info!(
                            domain,
                            old_id = %old.id,
                            id = %stored.id,
                            old_mode = %old.policy.mode,
                            mode = %stored.policy.mode,
                            max_age = stored.policy.max_age,
                            mx = %mx.join(" "),
                            "policy changed"
                        )
                    }
                    Some(_) => tracing::debug!(domain, id = %stored.id, "policy renewed"),
                }
                let usable = stored.is_valid_at(unix_now());
                if let Err(e) = self.store.put(stored).await {
                    tracing::error!(domain, error = %e, "cannot store fetched policy");
                }
                if usable {
                    self.set_state(domain, self.cfg.recheck_interval, 0, None)
                        .await;
                } else {
                    // max_age 0: nothing to cache; do not refetch on every lookup.
                    self.set_state(
                        domain,
                        self.cfg.negative_ttl,
                        0,
                        Some(NoPolicy::NoRecord("policy has max_age 0".to_string())),
                    )
                    .await;
                }
            }
            Err(e) => {
                let reason = format!("policy fetch from {} failed: {e}", self.fetcher.url(domain));
                tracing::warn!(domain, id = %id, class = e.class(), "{reason}");
                let failure = Failure::Fetch {
                    reason,
                    result_type: fetch_result_type(&e),
                };
                self.failed(domain, cached, failures, failure).await;
            }
        }
    }

    /// A discovery or fetch failed. With a valid cached policy we keep it and
    /// retry after a backoff (§3.3); without one the domain is answered
    /// "no policy" until the backoff ends — a failure is never a reason to
    /// delay mail.
    pub(super) async fn failed(
        &self,
        domain: &str,
        cached: Option<&StoredPolicy>,
        failures: u32,
        reason: Failure,
    ) {
        let failures = failures.saturating_add(1);
        let wait = self.backoff(failures);
        match cached {
            Some(c) => {
                tracing::warn!(domain, id = %c.id, mode = %c.policy.mode, retry_in = ?wait, reason = %reason, "refresh failed; keeping cached policy");
                self.set_state(domain, wait, failures, None).await;
            }
            None => {
                tracing::warn!(domain, retry_in = ?wait, reason = %reason, "MTA-STS discovery failed; no policy applied until retry");
                self.set_state(domain, wait, failures, Some(NoPolicy::Backoff(reason)))
                    .await;
            }
        }
    }
}
