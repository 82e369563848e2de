//! A fleet of agents sharing a real Redis: one fetch per domain across the
//! fleet, changes seen everywhere at the next lookup, Redis expiry = max_age,
//! and a Redis outage that costs nothing but sharing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mta_sts_agent::config::Config;
use mta_sts_agent::daemon::open_store;
use mta_sts_agent::resolver::{Answer, Resolver};
use redis::AsyncCommands;

use crate::daemon::{daemon_config, free_port, write_file, Daemon};
use crate::harness::{eventually, expect_policy, policy, World};
use crate::socketmap::lookup;
use crate::support::dns::RecordType;
use crate::support::redis::{redis_available, RedisServer};

pub(crate) fn agent_config(w: &World, name: &str, redis: &RedisServer) -> Config {
    let mut cfg = w.config();
    cfg.state_dir = Some(w.dir.path().join(name));
    cfg.redis.url = Some(redis.url());
    cfg.cache.recheck_interval = Duration::ZERO;
    cfg
}

pub(crate) fn agent(cfg: &Config) -> Resolver {
    let store = open_store(cfg, false).expect("store");
    Resolver::from_config(cfg, store).expect("resolver")
}

async fn id_of(r: &Resolver, domain: &str) -> Option<String> {
    match r.lookup(domain).await.unwrap() {
        Answer::Policy(p) => Some(p.id.clone()),
        Answer::NoPolicy(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_make_one_fetch() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let w = World::new().await;
    w.publish(
        "fleet.test",
        "1",
        &policy("enforce", &["mx.fleet.test"], 86400),
    );
    let a = agent(&agent_config(&w, "a", &redis));
    let b = agent(&agent_config(&w, "b", &redis));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { r.lookup("fleet.test").await.unwrap() });
    }
    while let Some(answer) = tasks.join_next().await {
        expect_policy(&answer.unwrap());
    }
    assert_eq!(
        w.fetches("fleet.test"),
        1,
        "one HTTPS fetch across the fleet"
    );

    // A third agent joining later takes the policy from Redis: no fetch.
    let c = agent(&agent_config(&w, "c", &redis));
    assert_eq!(id_of(&c, "fleet.test").await.as_deref(), Some("1"));
    assert_eq!(w.fetches("fleet.test"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stored_by_one_agent_is_seen_by_all_at_the_next_lookup() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let w = World::new().await;
    w.publish(
        "change.test",
        "1",
        &policy("enforce", &["mx1.change.test"], 86400),
    );
    let mut cfg_b = agent_config(&w, "b", &redis);
    cfg_b.cache.recheck_interval = Duration::from_secs(3600);
    let a = agent(&agent_config(&w, "a", &redis));
    let b = agent(&cfg_b);
    assert_eq!(id_of(&a, "change.test").await.as_deref(), Some("1"));
    assert_eq!(id_of(&b, "change.test").await.as_deref(), Some("1"));

    w.publish(
        "change.test",
        "2",
        &policy("enforce", &["mx2.change.test"], 86400),
    );
    let fetches_before = w.fetches("change.test");
    a.refresh_now("change.test").await.unwrap();
    // B sees the change at its next lookup. Other MX patterns are a change
    // a Redis writer could forge, so B confirms it with a fetch of its own
    // before using it (README "Sharing policies").
    let answer = b.lookup("change.test").await.unwrap();
    let p = expect_policy(&answer);
    assert_eq!(p.id, "2");
    assert!(p.policy.allows_mx("mx2.change.test"));
    assert_eq!(
        w.fetches("change.test"),
        fetches_before + 2,
        "A fetched, B confirmed"
    );

    // A change that weakens nothing (a new id, a longer max_age) is taken
    // from Redis as it is: B re-checks TXT only hourly and does not fetch.
    w.publish(
        "change.test",
        "3",
        &policy("enforce", &["mx2.change.test"], 172800),
    );
    a.refresh_now("change.test").await.unwrap();
    let fetches_before = w.fetches("change.test");
    let txt_before = w.dns.queries("_mta-sts.change.test", RecordType::TXT);
    let answer = b.lookup("change.test").await.unwrap();
    let p = expect_policy(&answer);
    assert_eq!(p.id, "3");
    assert!(p.policy.allows_mx("mx2.change.test"));
    assert_eq!(w.fetches("change.test"), fetches_before, "only A fetched");
    assert_eq!(
        w.dns.queries("_mta-sts.change.test", RecordType::TXT),
        txt_before
    );
}

#[tokio::test]
async fn redis_expiry_matches_max_age() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let w = World::new().await;
    w.publish("ttl.test", "1", &policy("enforce", &["mx.ttl.test"], 86400));
    w.publish(
        "short.test",
        "1",
        &policy("testing", &["mx.short.test"], 600),
    );
    let a = agent(&agent_config(&w, "a", &redis));
    expect_policy(&a.lookup("ttl.test").await.unwrap());
    expect_policy(&a.lookup("short.test").await.unwrap());
    let mut conn = redis.conn().await;
    let ttl: i64 = conn.ttl("mta-sts:policy:ttl.test").await.unwrap();
    assert!((86395..=86400).contains(&ttl), "ttl {ttl}");
    let ttl: i64 = conn.ttl("mta-sts:policy:short.test").await.unwrap();
    assert!((595..=600).contains(&ttl), "ttl {ttl}");
    let locks: Vec<String> = conn.keys("mta-sts:lock:*").await.unwrap();
    assert!(locks.is_empty(), "fetch locks are released: {locks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_tiers_and_recovers() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    let w = World::new().await;
    w.publish(
        "kept.test",
        "1",
        &policy("enforce", &["mx.kept.test"], 86400),
    );
    let mut cfg = agent_config(&w, "a", &redis);
    cfg.cache.recheck_interval = Duration::from_secs(3600);
    let a = agent(&cfg);
    expect_policy(&a.lookup("kept.test").await.unwrap());

    redis.kill();
    // Lookups keep being answered from the local tiers, none waiting on
    // Redis beyond its deadline (250 ms); after the first failure Redis is
    // skipped entirely.
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(id_of(&a, "kept.test").await.as_deref(), Some("1"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A new domain is fetched by this agent alone while Redis is away.
    w.publish("new.test", "1", &policy("enforce", &["mx.new.test"], 86400));
    assert_eq!(id_of(&a, "new.test").await.as_deref(), Some("1"));

    // Redis returns, empty. The agent catches up: its policies are shared again.
    redis.restart();
    let mut conn = redis.conn().await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let a = a.clone();
            let mut conn = conn.clone();
            async move {
                let _ = a.lookup("kept.test").await;
                let n: i64 = conn.exists("mta-sts:policy:new.test").await.unwrap_or(0);
                n == 1
            }
        })
        .await,
        "local policies were not pushed back to Redis"
    );
    let n: i64 = conn.exists("mta-sts:policy:kept.test").await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_logs_a_redis_outage_once() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    let w = World::new().await;
    w.publish(
        "logged.test",
        "1",
        &policy("enforce", &["mx.logged.test"], 86400),
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = format!(
        "{}\n[redis]\nurl = \"{}\"\ntimeout = \"200ms\"\n",
        daemon_config(&w, port),
        redis.url()
    );
    let config = write_file(w.dir.path(), "agent.toml", &text);
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    assert!(lookup(addr, "postfix", "logged.test")
        .await
        .starts_with("OK secure"));
    redis.kill();
    for _ in 0..20 {
        assert!(lookup(addr, "postfix", "logged.test")
            .await
            .starts_with("OK secure"));
    }
    redis.restart();
    assert!(
        eventually(Duration::from_secs(40), || {
            let log = daemon.log_text();
            async move {
                let _ = lookup(addr, "postfix", "logged.test").await;
                log.contains("redis reachable again")
            }
        })
        .await,
        "recovery not logged: {}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert_eq!(log.matches("redis unavailable").count(), 1, "{log}");
    daemon.stop().await;
}
