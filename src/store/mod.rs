//! Where policies live between fetches: an in-memory tier (moka) in front of a
//! crash-safe embedded store (redb), so a restart or `kill -9` never forgets a
//! policy and never reopens the downgrade window.
//!
//! The store only keeps what it is given; when a policy is valid, stale or due
//! for refresh is decided by the resolver alone.

pub mod embedded;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

pub use embedded::Embedded;

/// Seconds since the Unix epoch. Stored times are wall-clock times because
/// they must mean the same after a restart.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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

#[derive(Debug, Clone, thiserror::Error)]
#[error("policy store: {0}")]
pub struct StoreError(pub String);

/// Two tiers: memory over an optional persistent backend. The memory tier
/// also remembers "not on disk" so that repeated lookups of domains without
/// a policy do not touch the disk.
#[derive(Clone)]
pub struct PolicyStore {
    memory: moka::future::Cache<String, Option<Arc<StoredPolicy>>>,
    disk: Option<Arc<Embedded>>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.disk {
            Some(d) => write!(f, "PolicyStore(memory + {})", d.path().display()),
            None => f.write_str("PolicyStore(memory only)"),
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
        })
    }

    /// Memory only: policies are forgotten on restart.
    pub fn memory_only(memory_entries: u64) -> PolicyStore {
        PolicyStore {
            memory: moka::future::Cache::new(memory_entries),
            disk: None,
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.disk.is_some()
    }

    pub fn describe(&self) -> String {
        format!("{self:?}")
    }

    pub async fn get(&self, domain: &str) -> Result<Option<Arc<StoredPolicy>>, StoreError> {
        let Some(disk) = &self.disk else {
            return Ok(self.memory.get(domain).await.flatten());
        };
        let disk = disk.clone();
        let key = domain.to_string();
        self.memory
            .try_get_with(domain.to_string(), async move {
                blocking(move || disk.get(&key))
                    .await
                    .map(|p| p.map(Arc::new))
            })
            .await
            .map_err(|e: Arc<StoreError>| (*e).clone())
    }

    /// Writes through to disk before the memory tier, so what a lookup sees
    /// is always what a restart will see.
    pub async fn put(&self, policy: StoredPolicy) -> Result<Arc<StoredPolicy>, StoreError> {
        let policy = Arc::new(policy);
        if let Some(disk) = &self.disk {
            let disk = disk.clone();
            let p = policy.clone();
            blocking(move || disk.put(&p)).await?;
        }
        self.memory
            .insert(policy.domain.clone(), Some(policy.clone()))
            .await;
        Ok(policy)
    }

    pub async fn remove(&self, domain: &str) -> Result<(), StoreError> {
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
                Ok(all.into_iter().map(Arc::new).collect())
            }
            None => Ok(self.memory.iter().filter_map(|(_, v)| v).collect()),
        }
    }
}

/// redb does blocking file I/O (fsync on commit); keep it off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
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
