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

pub mod events;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::config::{CacheConfig, Config};
use crate::dns::Dns;
use crate::fetch::{Fetcher, PolicyFetch};
use crate::policy::{discover, normalize_domain, Discovery, Mode, MxHosts, ResultType};
use crate::store::{
    unix_now, Checked, FetchTurn, PolicySource, PolicyStore, StoreError, StoredPolicy,
};
use events::DiscoveryResult;

/// A domain's MX hosts as DNS answers them now (RFC 5321 §5.1: preference
/// order, the domain itself when it has no MX records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxSet {
    pub hosts: Vec<String>,
    /// RFC 7505: the domain accepts no mail.
    pub null_mx: bool,
    fresh_until: Instant,
}

#[cfg(test)]
impl MxSet {
    /// An MX set as a lookup would return it, for the reply tests.
    pub(crate) fn for_test(hosts: &[&str], null_mx: bool) -> MxSet {
        MxSet {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            null_mx,
            fresh_until: Instant::now(),
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A valid policy of any mode; the face decides what each mode means.
    Policy(Arc<StoredPolicy>),
    NoPolicy(NoPolicy),
}

/// Why there is no policy to apply. Every variant means: deliver as if the
/// domain had never published MTA-STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPolicy {
    /// The key is not a domain name (IP literal, `[host]:port`, …); nothing
    /// was looked up.
    NotADomain(String),
    /// The domain publishes no (usable) `_mta-sts` record.
    NoRecord(String),
    /// Discovery or fetch failed recently; retried after a backoff.
    Backoff(Failure),
    /// The first discovery is still running past the lookup deadline.
    Pending,
}

/// Why the last discovery or fetch failed, told apart by what the caller
/// must do with it (mox's sentinels): both mean "deliver as without a
/// policy until the backoff ends", only a fetch failure is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nobody could tell whether the domain publishes a policy: the TXT
    /// lookup failed, or another agent's fetch produced none. Not a
    /// TLS-RPT failure: no policy was ever seen.
    Discovery(String),
    /// A policy is published but could not be had; TLS-RPT reports the
    /// delivery as `result_type` (RFC 8460 §4.3.1).
    Fetch {
        reason: String,
        result_type: ResultType,
    },
}

impl Failure {
    /// The reason, as logged.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Discovery(reason) | Failure::Fetch { reason, .. } => reason,
        }
    }

    /// The RFC 8460 §4.3.1 result type to report, for a fetch failure.
    pub fn result_type(&self) -> Option<ResultType> {
        match self {
            Failure::Discovery(_) => None,
            Failure::Fetch { result_type, .. } => Some(*result_type),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// RFC 8460 §4.3.1: what a failed policy fetch is reported as.
pub fn fetch_result_type(e: &crate::fetch::FetchError) -> ResultType {
    match e {
        crate::fetch::FetchError::Tls(_) => ResultType::StsWebpkiInvalid,
        crate::fetch::FetchError::Invalid(_) => ResultType::StsPolicyInvalid,
        _ => ResultType::StsPolicyFetchError,
    }
}

impl std::fmt::Display for NoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPolicy::NotADomain(why) => write!(f, "not a domain name ({why})"),
            NoPolicy::NoRecord(why) => write!(f, "no policy: {why}"),
            NoPolicy::Backoff(why) => write!(f, "no policy yet, last attempt failed: {why}"),
            NoPolicy::Pending => write!(f, "no policy yet, discovery still running"),
        }
    }
}

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

/// Removes a domain's in-flight marker even if its refresh task panics, so a
/// bug can never wedge a domain into "refresh already running" forever.
struct InflightGuard {
    inner: Arc<Inner>,
    domain: String,
    tx: watch::Sender<bool>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(&self.domain);
        drop(map);
        let _ = self.tx.send(true);
    }
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
            let first = self
                .inner
                .overrides_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(domain.clone());
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

    /// The current MX hosts of `domain` (normalised), for maps that answer
    /// Postfix with them. Kept for the MX TTL (within `mx_min_ttl` and an
    /// hour); a stale set is answered while a background lookup refreshes
    /// it, and only the first lookup of a domain waits, up to
    /// `first_lookup_deadline`. None when DNS cannot tell.
    pub async fn current_mx(&self, domain: &str) -> Option<Arc<MxSet>> {
        if let Some(set) = self.inner.mx_sets.get(domain).await {
            if Instant::now() >= set.fresh_until {
                let claimed = self
                    .inner
                    .mx_refreshing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(domain.to_string());
                if claimed {
                    let inner = self.inner.clone();
                    let d = domain.to_string();
                    tokio::spawn(async move {
                        inner.fetch_mx(&d).await;
                        inner
                            .mx_refreshing
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&d);
                    });
                }
            }
            return Some(set);
        }
        tokio::time::timeout(
            self.inner.cfg.first_lookup_deadline,
            self.inner.fetch_mx(domain),
        )
        .await
        .ok()
        .flatten()
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

    async fn fetch_mx(&self, domain: &str) -> Option<Arc<MxSet>> {
        let now = Instant::now();
        let floor = now + self.cfg.mx_min_ttl;
        let ceiling = now + Duration::from_secs(3600);
        let (answer, expiry) = match self.dns.mx_with_expiry(domain).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(domain, error = %e, "MX lookup failed; answering with the policy's patterns");
                return None;
            }
        };
        let (hosts, null_mx) = match answer.mx_hosts(domain) {
            MxHosts::Hosts(hosts) => (hosts, false),
            MxHosts::NullMx { alongside } => (alongside, true),
            // Answered like a domain without MX records: Postfix meets the
            // NXDOMAIN itself when it looks the host up.
            MxHosts::NoDomain => (vec![domain.to_string()], false),
        };
        // A negative answer has no expiry: kept for `mx_min_ttl`.
        let set = MxSet {
            hosts,
            null_mx,
            fresh_until: expiry.unwrap_or(floor).clamp(floor, ceiling),
        };
        let set = Arc::new(set);
        self.mx_sets.insert(domain.to_string(), set.clone()).await;
        Some(set)
    }

    /// Starts a background re-check for a domain with a valid cached policy if
    /// its next check is due. Never waits.
    async fn maintain(self: &Arc<Self>, domain: &str) {
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

    fn refresh_due(&self, p: &StoredPolicy, now: u64) -> bool {
        let half = u64::from(p.policy.max_age) / 2;
        let every = self.cfg.refresh_interval.as_secs().min(half);
        now >= p.fetched_at.saturating_add(every)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let d = self.cfg.failure_backoff_min.saturating_mul(1u32 << exp);
        d.min(self.cfg.failure_backoff_max)
    }

    async fn set_state(
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
    fn start_refresh(self: &Arc<Self>, domain: &str) -> watch::Receiver<bool> {
        self.launch_refresh(domain, false, false)
    }

    /// Like [`Inner::start_refresh`], but at the cap the refresh waits for a
    /// free place instead of being skipped (admin refresh, sweep).
    fn start_refresh_queued(self: &Arc<Self>, domain: &str) -> watch::Receiver<bool> {
        self.launch_refresh(domain, true, false)
    }

    /// `force`: fetch the policy even when the TXT id is unchanged and it is
    /// not due, without waiting for the fleet (to check a shared copy). At
    /// the cap it is skipped like any lookup's: the local policy stays.
    fn start_refresh_with(self: &Arc<Self>, domain: &str, force: bool) -> watch::Receiver<bool> {
        self.launch_refresh(domain, false, force)
    }

    fn launch_refresh(
        self: &Arc<Self>,
        domain: &str,
        queued: bool,
        force: bool,
    ) -> watch::Receiver<bool> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
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

    fn discovery_skipped(&self, domain: &str) {
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
    async fn refresh(&self, domain: &str, force: bool) {
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
    async fn wait_for_peer(
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

    fn fetcher_deadline(&self) -> Duration {
        self.fetcher.timeout() + Duration::from_secs(1)
    }

    async fn finish_fetch(
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
    async fn failed(
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

/// True when `mode` asks senders to refuse delivery that does not meet the
/// policy (the socketmap may also treat testing so, per map).
pub fn is_enforcing(mode: Mode, testing_as_enforce: bool) -> bool {
    mode == Mode::Enforce || (testing_as_enforce && mode == Mode::Testing)
}

#[cfg(test)]
mod tests;
