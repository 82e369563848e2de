//! Where policies live between fetches: an in-memory tier (moka) in front of a
//! crash-safe embedded store (redb), so a restart or `kill -9` never forgets a
//! policy and never reopens the downgrade window.
//!
//! The store only keeps what it is given; when a policy is valid, stale or due
//! for refresh is decided by the resolver alone.

pub mod embedded;
mod error;
pub mod events;
pub mod recovery;
pub mod redis;
mod redis_client;
pub mod trust;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::sync::Recover;

pub use self::redis::{RedisTier, Shared};
pub use embedded::Embedded;
pub use error::StoreError;
pub use trust::Weakening;

/// Stored times are wall-clock times because they must mean the same after
/// a restart.
pub use crate::clock::unix_now;

/// A policy as cached: what was fetched, under which TXT id, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub domain: String,
    /// The `_mta-sts` TXT id the policy was fetched under.
    pub id: String,
    pub policy: Policy,
    /// The document exactly as served (diagnosis, `policy show`, TLS-RPT).
    pub body: String,
    /// When the policy was last fetched successfully (Unix seconds).
    pub fetched_at: u64,
    /// Fetched from the domain, or an administrator's override from config.
    #[serde(default)]
    pub source: PolicySource,
}

/// Where a policy came from. Overrides are never stored; they are made from
/// the configuration on each lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum PolicySource {
    #[default]
    Fetched,
    Override {
        reason: String,
    },
}

impl StoredPolicy {
    /// RFC 8461 §3.2/§5.1: a policy is valid for max_age seconds from its fetch.
    pub fn expires_at(&self) -> u64 {
        self.fetched_at
            .saturating_add(u64::from(self.policy.max_age))
    }

    pub fn is_valid_at(&self, now: u64) -> bool {
        now < self.expires_at()
    }
}

/// Two tiers: memory over an optional persistent backend. The memory tier
/// also remembers "not on disk" so that repeated lookups of domains without
/// a policy do not touch the disk.
#[derive(Clone)]
pub struct PolicyStore {
    memory: moka::future::Cache<String, Option<Arc<StoredPolicy>>>,
    disk: Option<Arc<Embedded>>,
    redis: Option<Arc<RedisTier>>,
    /// Domains whose policy is in memory but not on disk (a write failed).
    unsaved: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// A read of the store, with a shared copy that is waiting for confirmation.
#[derive(Debug, Default)]
pub struct Checked {
    pub policy: Option<Arc<StoredPolicy>>,
    /// Redis holds a well-formed policy that would weaken `policy` (or
    /// switch protection off): it is used only once a fetch of our own says
    /// the same.
    pub disputed: Option<Weakening>,
}

/// Who fetches a domain's policy now (see [`PolicyStore::begin_fetch`]).
#[derive(Debug)]
pub enum FetchTurn {
    /// No shared store: fetch.
    Solo,
    /// We hold the fleet's lock for this domain: fetch, then `end_fetch`.
    Mine(String),
    /// Another agent is fetching it: wait for its result in the shared store.
    Theirs,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = match &self.redis {
            Some(r) => format!(" + {}", r.describe()),
            None => String::new(),
        };
        match &self.disk {
            Some(d) => write!(f, "PolicyStore(memory + {}{shared})", d.path().display()),
            None => write!(f, "PolicyStore(memory only{shared})"),
        }
    }
}

impl PolicyStore {
    /// Memory over the embedded store in `dir` (created if missing).
    pub fn open(dir: &Path, memory_entries: u64) -> Result<PolicyStore, StoreError> {
        let disk = Embedded::open(dir)?;
        Ok(PolicyStore {
            memory: moka::future::Cache::new(memory_entries),
            disk: Some(Arc::new(disk)),
            redis: None,
            unsaved: Default::default(),
        })
    }

    /// Memory only: policies are forgotten on restart.
    pub fn memory_only(memory_entries: u64) -> PolicyStore {
        PolicyStore {
            memory: moka::future::Cache::new(memory_entries),
            disk: None,
            redis: None,
            unsaved: Default::default(),
        }
    }

    /// Shares policies through Redis, with this store as the local fallback.
    pub fn with_redis(mut self, redis: RedisTier) -> PolicyStore {
        self.redis = Some(Arc::new(redis));
        self
    }

    /// True while the disk tier waits to be reopened after a failed write
    /// (policies are then kept in memory).
    pub fn disk_failed(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| d.failed())
    }

    pub fn describe(&self) -> String {
        format!("{self:?}")
    }

    /// The policy of `domain`. With Redis up, a shared copy that passes the
    /// checks of [`trust`] wins unless the local one is newer or would be
    /// weakened by it, so a change stored by any agent is seen here at the
    /// next lookup; with Redis slow or down, the local tiers answer.
    pub async fn get(&self, domain: &str) -> Result<Option<Arc<StoredPolicy>>, StoreError> {
        Ok(self.get_checked(domain).await?.policy)
    }

    /// Like [`get`](Self::get), and says when Redis holds a policy that
    /// would weaken the answer: the caller confirms it with a fetch of its
    /// own before anything weaker is used.
    pub async fn get_checked(&self, domain: &str) -> Result<Checked, StoreError> {
        let local_only = |policy| Checked {
            policy,
            disputed: None,
        };
        let Some(redis) = &self.redis else {
            return self.get_local(domain).await.map(local_only);
        };
        let Ok((shared, recovered)) = redis.get(domain).await else {
            return self.get_local(domain).await.map(local_only);
        };
        if recovered {
            self.spawn_catch_up();
        }
        let local = self.get_local(domain).await?;
        let now = unix_now();
        let shared = match shared {
            Shared::Absent => return Ok(local_only(local)),
            Shared::Rejected(_) => {
                // Put our own copy back, so the rest of the fleet stops
                // reading the bad one (within Redis' deadline, like any call).
                if let Some(l) = local.as_ref().filter(|l| l.is_valid_at(now)) {
                    let _ = redis.put(l).await;
                }
                return Ok(local_only(local));
            }
            Shared::Valid(s) => s,
        };
        match &local {
            Some(l) if l.fetched_at > shared.fetched_at || **l == shared => Ok(local_only(local)),
            _ => {
                if let Some(w) = trust::weakens(local.as_deref(), &shared, now) {
                    return Ok(Checked {
                        policy: local,
                        disputed: Some(w),
                    });
                }
                events::events().cache_hit(events::Tier::Redis);
                Ok(local_only(Some(self.put_local(shared).await?)))
            }
        }
    }

    async fn get_local(&self, domain: &str) -> Result<Option<Arc<StoredPolicy>>, StoreError> {
        let m = events::events();
        // A remembered absence counts as no hit: the caller goes on to discovery.
        if let Some(hit) = self.memory.get(domain).await {
            if hit.is_some() {
                m.cache_hit(events::Tier::Memory);
            }
            return Ok(hit);
        }
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let disk = disk.clone();
        let key = domain.to_string();
        self.memory
            .try_get_with(domain.to_string(), async move {
                let found = blocking(move || disk.get(&key))
                    .await
                    .map(|p| p.map(Arc::new));
                match &found {
                    Ok(Some(_)) => m.cache_hit(events::Tier::Disk),
                    Ok(None) => {}
                    Err(_) => {
                        m.store_error();
                    }
                }
                found
            })
            .await
            .map_err(|e: Arc<StoreError>| (*e).clone())
    }

    /// Writes through to disk before the memory tier, so what a lookup sees
    /// is always what a restart will see.
    pub async fn put(&self, policy: StoredPolicy) -> Result<Arc<StoredPolicy>, StoreError> {
        let policy = self.put_local(policy).await?;
        if let Some(redis) = &self.redis {
            if let Ok(true) = redis.put(&policy).await {
                self.spawn_catch_up();
            }
        }
        Ok(policy)
    }

    /// A policy the disk cannot take (full, failing, read-only) is still
    /// used: it stays in the memory tier, and is written once the store
    /// has been reopened. Only a restart in between forgets it.
    async fn put_local(&self, policy: StoredPolicy) -> Result<Arc<StoredPolicy>, StoreError> {
        let policy = Arc::new(policy);
        if let Some(disk) = &self.disk {
            let d = disk.clone();
            let p = policy.clone();
            match blocking(move || d.put(&p)).await {
                Ok(()) => self.saved(&policy.domain),
                Err(e) => {
                    events::events().store_error();
                    tracing::warn!(domain = %policy.domain, error = %e, "policy kept in memory only until the store can be written");
                    self.unsaved_insert(&policy.domain);
                }
            }
        }
        self.memory
            .insert(policy.domain.clone(), Some(policy.clone()))
            .await;
        Ok(policy)
    }

    fn unsaved_insert(&self, domain: &str) {
        let mut u = self.unsaved.locked();
        // Bounded like the memory tier the policies live in.
        if (u.len() as u64) < self.memory.policy().max_capacity().unwrap_or(u64::MAX) {
            u.insert(domain.to_string());
        }
    }

    /// A write went through: the disk is back, so write what it missed.
    fn saved(&self, domain: &str) {
        let pending: Vec<String> = {
            let mut u = self.unsaved.locked();
            u.remove(domain);
            u.drain().collect()
        };
        if pending.is_empty() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut written = 0usize;
            for domain in pending {
                let Some(Some(p)) = store.memory.get(&domain).await else {
                    continue;
                };
                let Some(disk) = store.disk.clone() else {
                    return;
                };
                let d = domain.clone();
                if blocking(move || disk.put(&p)).await.is_err() {
                    store.unsaved_insert(&d);
                } else {
                    written += 1;
                }
            }
            tracing::info!(
                written,
                "policies kept in memory during a store failure are written"
            );
        });
    }

    pub async fn remove(&self, domain: &str) -> Result<(), StoreError> {
        self.unsaved.locked().remove(domain);
        if let Some(redis) = &self.redis {
            let _ = redis.remove(domain).await;
        }
        if let Some(disk) = &self.disk {
            let disk = disk.clone();
            let key = domain.to_string();
            blocking(move || disk.remove(&key)).await?;
            self.memory.insert(domain.to_string(), None).await;
        } else {
            self.memory.invalidate(domain).await;
        }
        Ok(())
    }

    /// Every stored policy (from disk when there is one).
    pub async fn list(&self) -> Result<Vec<Arc<StoredPolicy>>, StoreError> {
        match &self.disk {
            Some(disk) => {
                let disk = disk.clone();
                let all = blocking(move || disk.list()).await?;
                let mut all: Vec<Arc<StoredPolicy>> = all.into_iter().map(Arc::new).collect();
                let unsaved: Vec<String> = {
                    let u = self.unsaved.locked();
                    u.iter().cloned().collect()
                };
                for domain in unsaved {
                    if let Some(Some(p)) = self.memory.get(&domain).await {
                        all.retain(|q| q.domain != domain);
                        all.push(p);
                    }
                }
                Ok(all)
            }
            None => Ok(self.memory.iter().filter_map(|(_, v)| v).collect()),
        }
    }
}

impl PolicyStore {
    /// Decides which agent of a fleet fetches `domain` now.
    pub async fn begin_fetch(&self, domain: &str) -> FetchTurn {
        let Some(redis) = &self.redis else {
            return FetchTurn::Solo;
        };
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        match redis.try_lock(domain, &token).await {
            Ok(true) => FetchTurn::Mine(token),
            Ok(false) => FetchTurn::Theirs,
            // Redis down: every agent fends for itself, as without Redis.
            Err(_) => FetchTurn::Solo,
        }
    }

    pub async fn end_fetch(&self, domain: &str, turn: &FetchTurn) {
        if let (Some(redis), FetchTurn::Mine(token)) = (&self.redis, turn) {
            redis.unlock(domain, token).await;
        }
    }

    /// Whether another agent still holds `domain`'s fetch lock (false when
    /// Redis cannot tell).
    pub async fn fetch_in_progress_elsewhere(&self, domain: &str) -> bool {
        match &self.redis {
            Some(redis) => redis.is_locked(domain).await.unwrap_or(false),
            None => false,
        }
    }

    /// After an outage, pushes local policies Redis lacks (or has older).
    fn spawn_catch_up(&self) {
        let (Some(redis), true) = (
            self.redis.clone(),
            self.disk.is_some() || self.redis.is_some(),
        ) else {
            return;
        };
        let store = self.clone();
        tokio::spawn(async move {
            let Ok(local) = store.list().await else {
                return;
            };
            let now = unix_now();
            let mut pushed = 0;
            for p in local.iter().filter(|p| p.is_valid_at(now)) {
                let newer = match redis.get(&p.domain).await {
                    Ok((Shared::Valid(shared), _)) => p.fetched_at > shared.fetched_at,
                    Ok(_) => true,
                    Err(_) => return,
                };
                if newer && redis.put(p).await.is_ok() {
                    pushed += 1;
                }
            }
            tracing::info!(pushed, "redis caught up with the local store");
        });
    }
}

/// redb does blocking file I/O (fsync on commit); keep it off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, MxPattern};

    fn sample(domain: &str, id: &str) -> StoredPolicy {
        StoredPolicy {
            domain: domain.to_string(),
            id: id.to_string(),
            policy: Policy {
                mode: Mode::Enforce,
                max_age: 86400,
                mx: vec![MxPattern::parse("*.example.test").unwrap()],
            },
            body: "version: STSv1\n".to_string(),
            fetched_at: 1_000,
            source: PolicySource::Fetched,
        }
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = PolicyStore::open(dir.path(), 10).unwrap();
            assert!(store.get("a.test").await.unwrap().is_none());
            store.put(sample("a.test", "1")).await.unwrap();
            store.put(sample("b.test", "2")).await.unwrap();
            store.remove("b.test").await.unwrap();
            assert_eq!(store.get("a.test").await.unwrap().unwrap().id, "1");
        }
        let store = PolicyStore::open(dir.path(), 10).unwrap();
        assert_eq!(
            *store.get("a.test").await.unwrap().unwrap(),
            sample("a.test", "1")
        );
        assert!(store.get("b.test").await.unwrap().is_none());
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn memory_only_forgets_nothing_while_running() {
        let store = PolicyStore::memory_only(10);
        store.put(sample("a.test", "1")).await.unwrap();
        assert_eq!(store.get("a.test").await.unwrap().unwrap().id, "1");
        assert_eq!(store.list().await.unwrap().len(), 1);
        store.remove("a.test").await.unwrap();
        assert!(store.get("a.test").await.unwrap().is_none());
    }

    #[test]
    fn validity_window() {
        let p = sample("a.test", "1");
        assert!(p.is_valid_at(1_000));
        assert!(p.is_valid_at(87_399));
        assert!(!p.is_valid_at(87_400));
    }
}
