//! A locked-down Redis: a password (`requirepass`), an ACL user that may
//! only touch the agent's key prefix and commands, and TLS (`rediss://`)
//! with a CA made at test time. Each against a real `redis-server`.

use std::time::Duration;

use mta_sts_agent::config::Config;
use redis::AsyncCommands;

use crate::fleet::agent;
use crate::harness::{expect_policy, policy, World};
use crate::support::redis::{redis_available, RedisServer};

fn config_with_url(w: &World, name: &str, url: String) -> Config {
    let mut cfg = w.config();
    cfg.state_dir = Some(w.dir.path().join(name));
    cfg.redis.url = Some(url);
    cfg.cache.recheck_interval = Duration::ZERO;
    cfg
}

async fn admin_conn(url: String) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis as admin")
}

/// Two agents over `url` share one fetch of a fresh domain; the policy is
/// then in Redis (read through `admin`).
async fn fleet_shares_through(w: &World, domain: &str, url: &str, admin: String) {
    w.publish(
        domain,
        "1",
        &policy("enforce", &[&format!("mx.{domain}")], 86400),
    );
    let a = agent(&config_with_url(w, &format!("{domain}-a"), url.to_string()));
    let b = agent(&config_with_url(w, &format!("{domain}-b"), url.to_string()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        let d = domain.to_string();
        tasks.spawn(async move { r.lookup(&d).await.unwrap() });
    }
    while let Some(answer) = tasks.join_next().await {
        expect_policy(&answer.unwrap());
    }
    assert_eq!(w.fetches(domain), 1, "one fetch across the fleet via {url}");
    let mut conn = admin_conn(admin).await;
    let n: i64 = conn
        .exists(format!("mta-sts:policy:{domain}"))
        .await
        .unwrap();
    assert_eq!(n, 1, "policy shared through Redis");
    let locks: Vec<String> = conn.keys("mta-sts:lock:*").await.unwrap();
    assert!(locks.is_empty(), "locks released: {locks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_authenticates() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let w = World::new().await;
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    fleet_shares_through(&w, "auth.test", &url, url.clone()).await;

    // A wrong password is an outage like any other: the agent answers from
    // its own fetch and writes nothing.
    w.publish(
        "wrong.test",
        "1",
        &policy("enforce", &["mx.wrong.test"], 86400),
    );
    let bad = format!("redis://:wrong@127.0.0.1:{}/0", redis.port);
    let c = agent(&config_with_url(&w, "c", bad));
    expect_policy(&c.lookup("wrong.test").await.unwrap());
    let mut conn = admin_conn(url).await;
    let n: i64 = conn.exists("mta-sts:policy:wrong.test").await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_the_prefix_is_enough() {
    if !redis_available() {
        return;
    }
    // The ACL the README recommends (Redis 7.0 syntax); anything the agent
    // needs beyond it would fail the fleet (both agents would fetch).
    let redis = RedisServer::start_with(&[
        "--user",
        "default",
        "off",
        "--user",
        "mta-sts",
        "on",
        ">fleet-pw",
        "~mta-sts:*",
        "resetchannels",
        "-@all",
        "+ping",
        "+hello",
        "+auth",
        "+select",
        "+get",
        "+getrange",
        "+set",
        "+setex",
        "+del",
        "+exists",
        "+eval",
        "--user",
        "admin",
        "on",
        ">admin-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let w = World::new().await;
    let url = format!("redis://mta-sts:fleet-pw@127.0.0.1:{}/0", redis.port);
    let admin = format!("redis://admin:admin-pw@127.0.0.1:{}/0", redis.port);
    fleet_shares_through(&w, "acl.test", &url, admin).await;

    // The agent's user cannot reach other keys.
    let mut conn = admin_conn(url).await;
    let r: redis::RedisResult<()> = conn.set("other:key", "x").await;
    assert!(r.is_err(), "ACL limits the user to its prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    if !redis_available() {
        return;
    }
    let w = World::new().await;
    let tls = w.dir.path().join("redis-tls");
    std::fs::create_dir_all(&tls).unwrap();
    let (cert, key) = w.ca.issue(&["127.0.0.1"]).write_pem(&tls, "redis");
    let ca = w.ca_path.display().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let redis = RedisServer::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let with_ca = |name: &str| {
        let mut cfg = config_with_url(&w, name, url.clone());
        cfg.redis.ca_file = Some(w.ca_path.clone());
        cfg
    };
    w.publish("tls.test", "1", &policy("enforce", &["mx.tls.test"], 86400));
    let a = agent(&with_ca("a"));
    let b = agent(&with_ca("b"));
    expect_policy(&a.lookup("tls.test").await.unwrap());
    expect_policy(&b.lookup("tls.test").await.unwrap());
    assert_eq!(w.fetches("tls.test"), 1, "shared over TLS");

    // Without the CA the server is not trusted: no sharing, still answers.
    let c = agent(&config_with_url(&w, "c", url.clone()));
    expect_policy(&c.lookup("tls.test").await.unwrap());
    assert_eq!(w.fetches("tls.test"), 2, "an untrusted Redis is not used");

    // Plain text to the TLS port is refused by the server.
    let plain = format!("redis://127.0.0.1:{}/0", redis.port);
    let d = agent(&config_with_url(&w, "d", plain));
    expect_policy(&d.lookup("tls.test").await.unwrap());
    assert_eq!(w.fetches("tls.test"), 3);
}
