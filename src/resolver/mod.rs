//! The MTA-STS resolver: discovery, fetch and the caching rules of RFC 8461
//! §3.3 and §5.1, in one place. Every face asks [`Resolver::lookup`] and never
//! applies a caching rule of its own.
//!
//! The rules, in the order a lookup meets them:
//! 1. A valid cached policy (fetched less than max_age ago) is answered at once;
//!    the network is never on that path. At most once per `recheck_interval`
//!    the lookup starts a background re-check of the TXT id.
//! 2. A re-check that finds a new id refetches; a fetch that fails, a TXT
//!    lookup that fails, or a TXT record that vanished keeps the cached policy
//!    until it expires (§3.3, §5.1). A policy older than
//!    `min(refresh_interval, max_age / 2)` is refetched even under the same id,
//!    so a policy in use never expires; a background sweep does the same for
//!    policies nobody looked up lately.
//! 3. A domain known to have no policy, or whose discovery or fetch failed
//!    recently, is answered "no policy" at once (negative TTL, backoff), so a
//!    broken domain is neither hammered nor waited on.
//! 4. Otherwise one discovery+fetch runs per domain however many lookups
//!    arrive; lookups wait for it up to `first_lookup_deadline` and then answer
//!    with what is known. The fetch finishes in the background either way.

mod answer;
pub mod events;
mod mx;
mod refresh;

pub use answer::{fetch_result_type, is_enforcing, Answer, Failure, NoPolicy};
pub use mx::MxSet;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::config::{CacheConfig, Config};
use crate::dns::Dns;
use crate::fetch::{Fetcher, PolicyFetch};
use crate::policy::{discover, normalize_domain, Discovery};
use crate::store::{
    unix_now, Checked, FetchTurn, PolicySource, PolicyStore, StoreError, StoredPolicy,
};
use crate::sync::Recover;
use events::DiscoveryResult;

/// Per-domain memory of the last discovery, kept in RAM only: it is cheap to
/// rebuild, and forgetting it after a restart only causes one early re-check.
#[derive(Debug, Clone)]
struct DomainState {
    /// No discovery for this domain is started from a lookup before this.
    next_attempt: Instant,
    /// Consecutive failures, for exponential backoff.
    failures: u32,
    /// Set when the domain has no valid policy: what to answer until
    /// `next_attempt`.
    negative: Option<NoPolicy>,
}

struct Inner {
    /// Administrator overrides, answered before anything else.
    overrides: HashMap<String, Arc<StoredPolicy>>,
    /// Overridden domains already logged (once per process, not per lookup).
    overrides_logged: Mutex<std::collections::HashSet<String>>,
    dns: Dns,
    fetcher: Arc<dyn PolicyFetch>,
    store: PolicyStore,
    cfg: CacheConfig,
    state: moka::future::Cache<String, DomainState>,
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    mx_sets: moka::future::Cache<String, Arc<MxSet>>,
    mx_refreshing: Mutex<std::collections::HashSet<String>>,
    /// Domains whose weaker shared copy we fetched ourselves lately: one
    /// confirming fetch a minute, however often Redis is rewritten.
    confirming: moka::future::Cache<String, ()>,
    /// DANE status, which takes precedence over MTA-STS (RFC 8461 §2);
    /// carried here so every face shares one cache.
    dane: crate::dane::Dane,
    /// Global cap on running discoveries (`cache.max_discoveries`).
    discoveries: Arc<Semaphore>,
    /// Unix second of the last "cap reached" warning, to log once per burst.
    discoveries_warned: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl Resolver {
    pub fn new(
        dns: Dns,
        fetcher: impl PolicyFetch,
        store: PolicyStore,
        cfg: CacheConfig,
    ) -> Resolver {
        let mx_capacity = cfg.memory_entries;
        let ttl = cfg
            .recheck_interval
            .max(cfg.negative_ttl)
            .max(cfg.failure_backoff_max);
        let state = moka::future::Cache::builder()
            .max_capacity(cfg.memory_entries)
            .time_to_live(ttl)
            .build();
        let dane = crate::dane::Dane::with_background_limit(
            dns.clone(),
            cfg.mx_min_ttl,
            cfg.max_dane_lookups,
        );
        let cfg_max_discoveries = cfg.max_discoveries.max(1);
        Resolver {
            inner: Arc::new(Inner {
                dane,
                overrides: HashMap::new(),
                overrides_logged: Mutex::new(Default::default()),
                dns,
                fetcher: Arc::new(fetcher),
                store,
                cfg,
                state,
                inflight: Mutex::new(HashMap::new()),
                mx_sets: moka::future::Cache::builder()
                    .max_capacity(mx_capacity)
                    .time_to_live(Duration::from_secs(2 * 3600))
                    .build(),
                mx_refreshing: Mutex::new(Default::default()),
                discoveries: Arc::new(Semaphore::new(cfg_max_discoveries)),
                discoveries_warned: std::sync::atomic::AtomicU64::new(0),
                confirming: moka::future::Cache::builder()
                    .max_capacity(mx_capacity)
                    .time_to_live(Duration::from_secs(60))
                    .build(),
            }),
        }
    }

    /// Builds DNS, fetcher and store from the configuration.
    pub fn from_config(config: &Config, store: PolicyStore) -> Result<Resolver, String> {
        let dns = Dns::from_config(config)?;
        let fetcher = Fetcher::new(&config.fetch, &dns)?;
        let overrides = config.override_policies().map_err(|e| e.to_string())?;
        let mut resolver = Resolver::new(dns, fetcher, store, config.cache.clone());
        let inner = Arc::get_mut(&mut resolver.inner).ok_or("resolver already shared")?;
        for (domain, (policy, reason)) in overrides {
            tracing::info!(domain = %domain, mode = %policy.mode, reason = %reason, "override configured");
            let stored = StoredPolicy {
                domain: domain.clone(),
                id: "override".to_string(),
                policy,
                body: String::new(),
                fetched_at: unix_now(),
                source: PolicySource::Override { reason },
            };
            inner.overrides.insert(domain, Arc::new(stored));
        }
        Ok(resolver)
    }

    /// The configured override for `domain`, if any.
    pub fn override_for(&self, domain: &str) -> Option<Arc<StoredPolicy>> {
        let d = normalize_domain(domain).ok()?;
        self.inner.overrides.get(&d).cloned()
    }

    pub fn dns(&self) -> &Dns {
        &self.inner.dns
    }

    pub fn fetcher(&self) -> &dyn PolicyFetch {
        self.inner.fetcher.as_ref()
    }

    pub fn store(&self) -> &PolicyStore {
        &self.inner.store
    }

    /// The policy to apply to mail for `domain`. `Err` only when the local
    /// store fails: then we cannot know whether an enforce policy exists, and
    /// the caller must not deliver as if there were none.
    pub async fn lookup(&self, domain: &str) -> Result<Answer, StoreError> {
        let domain = match normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => return Ok(Answer::NoPolicy(NoPolicy::NotADomain(e.to_string()))),
        };
        if let Some(o) = self.inner.overrides.get(&domain) {
            let first = self.inner.overrides_logged.locked().insert(domain.clone());
            if let PolicySource::Override { reason } = &o.source {
                if first {
                    tracing::info!(domain = %domain, mode = %o.policy.mode, reason = %reason, "override applied instead of the published policy");
                } else {
                    tracing::debug!(domain = %domain, mode = %o.policy.mode, reason = %reason, "override applied");
                }
            }
            events::events().override_applied();
            return Ok(Answer::Policy(o.clone()));
        }
        if !domain.contains('.') {
            return Ok(Answer::NoPolicy(NoPolicy::NotADomain(
                "single-label name".to_string(),
            )));
        }
        self.inner.lookup(&domain).await
    }

    /// The cached policy of `domain`, valid or not, without any network work.
    pub async fn cached(&self, domain: &str) -> Result<Option<Arc<StoredPolicy>>, StoreError> {
        match normalize_domain(domain) {
            Ok(d) => self.inner.store.get(&d).await,
            Err(_) => Ok(None),
        }
    }

    /// Runs discovery and fetch for `domain` now, ignoring intervals and
    /// backoff, and returns the resulting answer.
    pub async fn refresh_now(&self, domain: &str) -> Result<Answer, StoreError> {
        let domain = match normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => return Ok(Answer::NoPolicy(NoPolicy::NotADomain(e.to_string()))),
        };
        self.inner.state.invalidate(&domain).await;
        let mut rx = self.inner.start_refresh_queued(&domain);
        let _ = rx.wait_for(|done| *done).await;
        self.inner.answer_after_refresh(&domain).await
    }

    /// Forgets everything about `domain` (cached policy, negative state).
    pub async fn purge(&self, domain: &str) -> Result<(), StoreError> {
        if let Ok(d) = normalize_domain(domain) {
            self.inner.state.invalidate(&d).await;
            self.inner.store.remove(&d).await?;
        }
        Ok(())
    }

    /// The DANE status of `domain`, waiting at most `first_lookup_deadline`
    /// (None when that passes: the caller keeps its MTA-STS answer).
    pub async fn dane(&self, domain: &str) -> Option<Arc<crate::dane::DomainDane>> {
        tokio::time::timeout(
            self.inner.cfg.first_lookup_deadline,
            self.inner.dane.domain(domain),
        )
        .await
        .ok()
    }

    /// The DANE status of `domain` if already known, never waiting: when it
    /// is not, it is learned in the background and the caller keeps its
    /// MTA-STS answer (the socketmap: both demand authenticated TLS).
    pub async fn dane_known(&self, domain: &str) -> Option<Arc<crate::dane::DomainDane>> {
        self.inner.dane.known(domain).await
    }

    /// [`dane`](Self::dane) and the MX answer it was decided on, within
    /// the same deadline: the relay routes by that answer, so one MX query
    /// per domain and TTL serves both.
    pub async fn dane_and_mx(
        &self,
        domain: &str,
    ) -> Option<(Arc<crate::dane::DomainDane>, crate::dane::DecidedMx)> {
        tokio::time::timeout(
            self.inner.cfg.first_lookup_deadline,
            self.inner.dane.domain_and_mx(domain),
        )
        .await
        .ok()
    }

    /// The shared DANE lookups (per MX host, for the relay).
    pub fn dane_lookups(&self) -> &crate::dane::Dane {
        &self.inner.dane
    }

    /// Runs the proactive refresh sweep forever (RFC 8461 §5.1: keep policies
    /// fresh rather than letting them expire). Spawn it once per daemon.
    pub async fn run_sweeper(self) {
        let mut tick = tokio::time::interval(self.inner.cfg.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.sweep_once().await;
        }
    }

    /// One pass of the sweep: drops expired policies and refreshes those due,
    /// a few at a time so that a restart does not burst onto policy hosts.
    pub async fn sweep_once(&self) {
        let all = match self.inner.store.list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "refresh sweep cannot list the policy store");
                return;
            }
        };
        let now = unix_now();
        let limit = Arc::new(Semaphore::new(8));
        let mut tasks = tokio::task::JoinSet::new();
        for p in all {
            if !p.is_valid_at(now) {
                tracing::info!(domain = %p.domain, id = %p.id, "cached policy expired; removed");
                if let Err(e) = self.inner.store.remove(&p.domain).await {
                    tracing::error!(domain = %p.domain, error = %e, "cannot remove expired policy");
                }
                continue;
            }
            if !self.inner.refresh_due(&p, now) {
                continue;
            }
            let inner = self.inner.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let Ok(_permit) = limit.acquire().await else {
                    return;
                };
                let mut rx = inner.start_refresh_queued(&p.domain);
                let _ = rx.wait_for(|done| *done).await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl Inner {
    async fn lookup(self: &Arc<Self>, domain: &str) -> Result<Answer, StoreError> {
        let now = unix_now();
        let checked = self.store.get_checked(domain).await?;
        if let Some(weakening) = &checked.disputed {
            if let Some(answer) = self
                .confirm_shared(domain, weakening, checked.policy.as_ref())
                .await?
            {
                return Ok(answer);
            }
        }
        match checked.policy {
            Some(p) if p.is_valid_at(now) => {
                self.maintain(domain).await;
                return Ok(Answer::Policy(p));
            }
            // §5.1: an expired policy is no policy. It is left for the sweep
            // to delete (deleting here could race a refresh storing a new
            // one); discovery below may fetch a fresh policy.
            Some(_) | None => {}
        }
        if let Some(st) = self.state.get(domain).await {
            if let Some(neg) = st.negative {
                if Instant::now() < st.next_attempt {
                    return Ok(Answer::NoPolicy(neg));
                }
            }
        }
        let mut rx = self.start_refresh(domain);
        let deadline = self.cfg.first_lookup_deadline;
        if tokio::time::timeout(deadline, rx.wait_for(|done| *done))
            .await
            .is_err()
        {
            tracing::info!(domain, deadline = ?deadline, "discovery still running at the lookup deadline; answering without a policy");
            return Ok(Answer::NoPolicy(NoPolicy::Pending));
        }
        self.answer_after_refresh(domain).await
    }

    /// Redis holds a policy that would weaken ours (or switch protection
    /// off): it is never taken on trust. With a valid local policy we fetch
    /// the domain's policy ourselves, now, and answer with what that leaves
    /// in the store; until it ends (or when it fails) the local policy
    /// stands. Without one, `None`: the usual discovery fetches it.
    async fn confirm_shared(
        self: &Arc<Self>,
        domain: &str,
        weakening: &crate::store::Weakening,
        local: Option<&Arc<StoredPolicy>>,
    ) -> Result<Option<Answer>, StoreError> {
        let local = local.filter(|l| l.is_valid_at(unix_now()));
        if self.confirming.contains_key(domain) {
            return Ok(local.map(|l| Answer::Policy(l.clone())));
        }
        self.confirming.insert(domain.to_string(), ()).await;
        let Some(local) = local else {
            tracing::warn!(domain, reason = %weakening, "shared policy in redis not used without a fetch of our own");
            return Ok(None);
        };
        tracing::warn!(domain, id = %local.id, mode = %local.policy.mode, reason = %weakening, "shared policy in redis would weaken ours; fetching the domain's policy ourselves before using it");
        let mut rx = self.start_refresh_with(domain, true);
        let deadline = self.cfg.first_lookup_deadline;
        if tokio::time::timeout(deadline, rx.wait_for(|done| *done))
            .await
            .is_err()
        {
            return Ok(Some(Answer::Policy(local.clone())));
        }
        self.answer_after_refresh(domain).await.map(Some)
    }

    async fn answer_after_refresh(&self, domain: &str) -> Result<Answer, StoreError> {
        if let Some(p) = self.store.get(domain).await? {
            if p.is_valid_at(unix_now()) {
                return Ok(Answer::Policy(p));
            }
        }
        let neg = self
            .state
            .get(domain)
            .await
            .and_then(|st| st.negative)
            .unwrap_or(NoPolicy::Pending);
        Ok(Answer::NoPolicy(neg))
    }
}

#[cfg(test)]
mod tests;
