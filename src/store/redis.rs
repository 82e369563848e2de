//! The fleet tier: policies shared through Redis (or Valkey), so N agents
//! make one fetch per domain per refresh and see a change at their next
//! lookup. Redis is never trusted to be there: every call has a short
//! deadline, and after a failure Redis is skipped (with backoff) while the
//! local tiers answer. The outage is logged once, and its end once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::trust::{check_shared, Rejection, MAX_SHARED_ENTRY_BYTES};
use super::{unix_now, StoredPolicy};
use crate::config::RedisConfig;
use crate::sync::Recover;

/// Health of the Redis connection, as seen by our calls.
struct Health {
    up: bool,
    /// While down: no call before this.
    next_try: Instant,
    backoff: Duration,
}

pub struct RedisTier {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    lock_ttl: Duration,
    url_for_logs: String,
    health: Mutex<Health>,
    /// Domains whose rejected entry was logged lately (one line a minute).
    rejections_logged: moka::future::Cache<String, ()>,
}

/// What Redis holds for a domain.
#[derive(Debug)]
pub enum Shared {
    Absent,
    Valid(StoredPolicy),
    Rejected(Rejection),
}

/// Redis could not answer in time (or at all); the caller uses local tiers.
#[derive(Debug)]
pub struct Unavailable;

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl RedisTier {
    /// Sets up a lazy connection: Redis being down at start-up is an outage
    /// like any other, not a reason to refuse to start.
    pub fn new(cfg: &RedisConfig, url: &str) -> Result<RedisTier, String> {
        let client = super::redis_client::client(cfg, url)?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client, mgr_cfg)
            .map_err(|e| format!("redis.url {:?}: {e}", redact(url)))?;
        Ok(RedisTier {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            lock_ttl: cfg.lock_ttl,
            url_for_logs: redact(url),
            health: Mutex::new(Health {
                up: true,
                next_try: Instant::now(),
                backoff: MIN_BACKOFF,
            }),
            rejections_logged: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    pub fn describe(&self) -> String {
        format!("redis {}", self.url_for_logs)
    }

    fn policy_key(&self, domain: &str) -> String {
        format!("{}policy:{domain}", self.prefix)
    }

    fn lock_key(&self, domain: &str) -> String {
        format!("{}lock:{domain}", self.prefix)
    }

    /// False while Redis is known down and its retry time has not come.
    fn available(&self) -> bool {
        let h = self.health.locked();
        h.up || Instant::now() >= h.next_try
    }

    /// Records a call's outcome. Returns true when Redis just came back.
    fn record(&self, ok: bool, what: &str) -> bool {
        let mut h = self.health.locked();
        match (h.up, ok) {
            (true, true) => false,
            (false, true) => {
                h.up = true;
                h.backoff = MIN_BACKOFF;
                tracing::info!(redis = %self.url_for_logs, "redis reachable again; sharing policies through it");
                true
            }
            (true, false) => {
                h.up = false;
                h.next_try = Instant::now() + h.backoff;
                tracing::warn!(redis = %self.url_for_logs, error = %what, "redis unavailable; answering from the local tiers until it returns");
                false
            }
            (false, false) => {
                h.backoff = (h.backoff * 2).min(MAX_BACKOFF);
                h.next_try = Instant::now() + h.backoff;
                false
            }
        }
    }

    /// Runs one Redis call under the deadline, keeping the health record.
    /// Returns the value and whether Redis just recovered.
    async fn call<T, F>(&self, f: F) -> Result<(T, bool), Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.available() {
            return Err(Unavailable);
        }
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                let recovered = self.record(true, "");
                Ok((v, recovered))
            }
            Ok(Err(e)) => {
                super::events::events().store_error();
                self.record(false, &e.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                super::events::events().store_error();
                self.record(false, &format!("no answer within {:?}", self.timeout));
                Err(Unavailable)
            }
        }
    }

    /// The shared entry of `domain`, checked as if it came off the network
    /// (see [`super::trust`]). A hostile entry is logged (once a minute per
    /// domain), counted, and reported as [`Shared::Rejected`].
    pub async fn get(&self, domain: &str) -> Result<(Shared, bool), Unavailable> {
        let mut conn = self.conn.clone();
        let key = self.policy_key(domain);
        // GETRANGE bounds what Redis sends back whatever was stored; one
        // byte more than the cap tells "too large" from "exactly the cap".
        let end = MAX_SHARED_ENTRY_BYTES as isize;
        let (raw, recovered): (Result<Vec<u8>, String>, bool) = self
            .call(async move {
                let r: redis::RedisResult<Vec<u8>> = conn.getrange(key, 0, end).await;
                match r {
                    Ok(v) => Ok(Ok(v)),
                    // Something else than a string under our key is a hostile
                    // entry, not an outage.
                    Err(e) if e.code() == Some("WRONGTYPE") => Ok(Err(e.to_string())),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let shared = match raw {
            // GETRANGE answers "" for a missing key.
            Ok(raw) if raw.is_empty() => Shared::Absent,
            Ok(raw) => match check_shared(domain, &raw, unix_now()) {
                Ok(p) => Shared::Valid(p),
                Err(why) => Shared::Rejected(why),
            },
            Err(e) => Shared::Rejected(Rejection::Unreadable(e)),
        };
        if let Shared::Rejected(why) = &shared {
            self.report_rejection(domain, why).await;
        }
        Ok((shared, recovered))
    }

    async fn report_rejection(&self, domain: &str, why: &Rejection) {
        super::events::events().shared_rejected(why.label());
        if self.rejections_logged.contains_key(domain) {
            return;
        }
        self.rejections_logged.insert(domain.to_string(), ()).await;
        // An expired entry is clock drift or a race with Redis' own expiry;
        // anything else was written by someone who is not an agent.
        if let Rejection::Expired = why {
            tracing::debug!(domain, key = %self.policy_key(domain), reason = %why, "expired shared policy ignored");
        } else {
            tracing::warn!(domain, key = %self.policy_key(domain), redis = %self.url_for_logs, reason = %why, "hostile or broken shared policy in redis ignored; using local tiers and our own fetch");
        }
    }

    /// Stores a policy with a Redis expiry equal to its remaining max_age.
    pub async fn put(&self, p: &StoredPolicy) -> Result<bool, Unavailable> {
        let remaining = p.expires_at().saturating_sub(unix_now());
        if remaining == 0 {
            return Ok(false);
        }
        let raw = serde_json::to_vec(p).map_err(|_| Unavailable)?;
        let mut conn = self.conn.clone();
        let key = self.policy_key(&p.domain);
        let (_, recovered): ((), bool) = self
            .call(async move { conn.set_ex(key, raw, remaining).await })
            .await?;
        Ok(recovered)
    }

    pub async fn remove(&self, domain: &str) -> Result<(), Unavailable> {
        let mut conn = self.conn.clone();
        let key = self.policy_key(domain);
        let _: (i64, bool) = self.call(async move { conn.del(key).await }).await?;
        Ok(())
    }

    /// Tries to become the one agent that fetches `domain` now. `Ok(false)`:
    /// another agent holds the lock.
    pub async fn try_lock(&self, domain: &str, token: &str) -> Result<bool, Unavailable> {
        let mut conn = self.conn.clone();
        let key = self.lock_key(domain);
        let ms = self.lock_ttl.as_millis() as u64;
        let token = token.to_string();
        let (set, _): (Option<String>, bool) = self
            .call(async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    pub async fn is_locked(&self, domain: &str) -> Result<bool, Unavailable> {
        let mut conn = self.conn.clone();
        let key = self.lock_key(domain);
        let (n, _): (i64, bool) = self.call(async move { conn.exists(key).await }).await?;
        Ok(n > 0)
    }

    /// Releases the lock if it is still ours (it may have expired and been
    /// taken by another agent meanwhile).
    pub async fn unlock(&self, domain: &str, token: &str) {
        let mut conn = self.conn.clone();
        let key = self.lock_key(domain);
        let token = token.to_string();
        // Compare-and-delete in one step, so we never delete a lock that
        // expired and was taken by another agent meanwhile.
        const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let _ = self
            .call(async move {
                let n: i64 = redis::cmd("EVAL")
                    .arg(UNLOCK)
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .query_async(&mut conn)
                    .await?;
                Ok(n)
            })
            .await;
    }
}

/// Hides a password in a redis:// URL for logs.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
