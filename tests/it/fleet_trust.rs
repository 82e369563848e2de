//! Redis is not trusted: whoever can write to it must not be able to weaken
//! any agent of the fleet. Each hostile entry is written into a real Redis
//! and must leave enforcement intact on an agent that already had the
//! domain's enforce policy and on one that had none (that one fetches it).

use mta_sts_agent::policy::parse_policy;
use mta_sts_agent::resolver::Resolver;
use mta_sts_agent::store::{unix_now, PolicySource, StoredPolicy};
use std::time::Duration;

use redis::AsyncCommands;

use crate::fleet::{agent, agent_config};
use crate::harness::{eventually, expect_policy, policy, World};
use crate::support::redis::{redis_available, RedisServer};

const KEY: &str = "mta-sts:policy:victim.test";

fn entry(domain: &str, id: &str, body: &str, fetched_at: u64) -> StoredPolicy {
    StoredPolicy {
        domain: domain.to_string(),
        id: id.to_string(),
        policy: parse_policy(body.as_bytes()).expect("test policy").policy,
        body: body.to_string(),
        fetched_at,
        source: PolicySource::Fetched,
    }
}

async fn plant(redis: &RedisServer, hostile: &StoredPolicy) {
    let mut conn = redis.conn().await;
    let raw = serde_json::to_vec(hostile).unwrap();
    let _: () = conn.set_ex(KEY, raw, 86400).await.unwrap();
}

async fn assert_enforced(r: &Resolver, who: &str) {
    let answer = r.lookup("victim.test").await.unwrap();
    let p = expect_policy(&answer);
    assert_eq!(p.policy.mode.as_str(), "enforce", "{who}: mode");
    assert!(p.policy.allows_mx("mx.victim.test"), "{who}: real MX");
    assert!(!p.policy.allows_mx("mx.evil.test"), "{who}: attacker's MX");
}

/// Plants `hostile` before each agent's lookup and checks the agent that
/// had the policy and, with `fresh_agent`, one that had none.
async fn hostile_entry_changes_nothing(fresh_agent: bool, hostile: impl Fn(u64) -> StoredPolicy) {
    let redis = RedisServer::start();
    let w = World::new().await;
    w.publish(
        "victim.test",
        "1",
        &policy("enforce", &["mx.victim.test"], 86400),
    );
    let a = agent(&agent_config(&w, "a", &redis));
    assert_enforced(&a, "a before").await;
    assert_eq!(w.fetches("victim.test"), 1);

    plant(&redis, &hostile(unix_now())).await;
    assert_enforced(&a, "agent with the policy").await;
    // A second lookup right away: the hostile copy is gone from Redis (our
    // own copy replaced it) or is still not used.
    assert_enforced(&a, "agent with the policy, again").await;

    // The agent put the real policy back for the rest of the fleet.
    assert!(
        eventually(Duration::from_secs(5), || async {
            shared_is_real(&redis).await
        })
        .await,
        "the hostile entry was not replaced"
    );
    if !fresh_agent {
        return;
    }
    plant(&redis, &hostile(unix_now())).await;
    let fetches_before = w.fetches("victim.test");
    let b = agent(&agent_config(&w, "b", &redis));
    assert_enforced(&b, "agent without a policy").await;
    assert_eq!(
        w.fetches("victim.test"),
        fetches_before + 1,
        "the agent without a policy fetched it itself"
    );

    assert!(
        shared_is_real(&redis).await,
        "the fleet's copy is real again"
    );
}

async fn shared_is_real(redis: &RedisServer) -> bool {
    let mut conn = redis.conn().await;
    let raw: Vec<u8> = conn.get(KEY).await.unwrap_or_default();
    match serde_json::from_slice::<StoredPolicy>(&raw) {
        Ok(p) => {
            p.domain == "victim.test"
                && p.policy.mode.as_str() == "enforce"
                && p.policy.allows_mx("mx.victim.test")
                && !p.policy.allows_mx("mx.evil.test")
                && p.fetched_at <= unix_now()
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mode_none_entry_leaves_enforcement_intact() {
    if !redis_available() {
        return;
    }
    // Well-formed, under the right key, with a newer fetch time: only its
    // mode is an attack.
    hostile_entry_changes_nothing(true, |now| {
        entry("victim.test", "2", &policy("none", &[], 86400), now + 60)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_domains_policy_under_the_key_is_ignored() {
    if !redis_available() {
        return;
    }
    hostile_entry_changes_nothing(true, |now| {
        entry(
            "evil.test",
            "1",
            &policy("enforce", &["mx.evil.test"], 86400),
            now,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_at_in_the_future_is_ignored() {
    if !redis_available() {
        return;
    }
    // A year ahead would outlive every refresh of the real policy.
    hostile_entry_changes_nothing(true, |now| {
        entry(
            "victim.test",
            "1",
            &policy("testing", &["mx.evil.test"], 86400),
            now + 365 * 86400,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforce_entry_with_the_attackers_mx_is_not_taken_on_trust() {
    if !redis_available() {
        return;
    }
    // Only the agent that holds the real policy can tell: for one that has
    // never seen the domain, a well-formed enforce policy is what sharing is
    // for (README: lock Redis down).
    hostile_entry_changes_nothing(false, |now| {
        entry(
            "victim.test",
            "2",
            &policy("enforce", &["mx.evil.test"], 86400),
            now + 60,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stated_fields_that_disagree_with_the_text_are_ignored() {
    if !redis_available() {
        return;
    }
    hostile_entry_changes_nothing(true, |now| {
        let mut e = entry(
            "victim.test",
            "1",
            &policy("enforce", &["mx.victim.test"], 86400),
            now + 60,
        );
        e.policy = parse_policy(policy("none", &[], 86400).as_bytes())
            .unwrap()
            .policy;
        e
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_values_cost_nothing() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let w = World::new().await;
    w.publish(
        "victim.test",
        "1",
        &policy("enforce", &["mx.victim.test"], 86400),
    );
    let a = agent(&agent_config(&w, "a", &redis));
    assert_enforced(&a, "a before").await;
    let mut conn = redis.conn().await;
    // 8 MiB under the key: read back at most the entry cap.
    let huge = vec![b'{'; 8 << 20];
    let _: () = conn.set(KEY, huge).await.unwrap();
    assert_enforced(&a, "huge value").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            shared_is_real(&redis).await
        })
        .await,
        "the huge entry was not replaced"
    );
    // Not even a string: a hash under the key is a hostile entry, not an
    // outage of Redis.
    let _: () = conn.del(KEY).await.unwrap();
    let _: () = conn.hset(KEY, "mode", "none").await.unwrap();
    assert_enforced(&a, "hash under the key").await;
    let b = agent(&agent_config(&w, "b", &redis));
    assert_enforced(&b, "agent without a policy, hash under the key").await;
}
