//! The caching and refresh rules (RFC 8461 §3.3, §5.1) end to end: real DNS,
//! real HTTPS, a persistent store, and the clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_sts_agent::config::Config;
use mta_sts_agent::policy::Mode;
use mta_sts_agent::resolver::{Answer, NoPolicy, Resolver};

use crate::harness::{eventually, expect_no_policy, expect_policy, policy, World};
use crate::support::dns::{Fault, RecordType};
use crate::support::https::Behavior;

/// Re-check the TXT id on every lookup, so tests see background work at once.
fn eager(w: &World) -> Config {
    let mut cfg = w.config();
    cfg.cache.recheck_interval = Duration::ZERO;
    cfg
}

async fn id_of(r: &Resolver, domain: &str) -> Option<(String, Mode)> {
    match r.lookup(domain).await.unwrap() {
        Answer::Policy(p) => Some((p.id.clone(), p.policy.mode)),
        Answer::NoPolicy(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_a_new_domain_make_one_fetch() {
    let w = World::new().await;
    w.publish(
        "herd.test",
        "1",
        &policy("enforce", &["mx.herd.test"], 86400),
    );
    let r = w.resolver();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let r = r.clone();
        tasks.spawn(async move { r.lookup("herd.test").await.unwrap() });
    }
    let mut policies = 0;
    while let Some(a) = tasks.join_next().await {
        if matches!(a.unwrap(), Answer::Policy(_)) {
            policies += 1;
        }
    }
    assert_eq!(
        policies, 200,
        "every waiting lookup gets the fetched policy"
    );
    assert_eq!(w.fetches("herd.test"), 1);
    assert_eq!(w.dns.queries("_mta-sts.herd.test", RecordType::TXT), 1);
}

#[tokio::test]
async fn cached_policy_is_answered_without_network() {
    let w = World::new().await;
    w.publish(
        "cached.test",
        "1",
        &policy("enforce", &["mx.cached.test"], 86400),
    );
    let r = w.resolver();
    expect_policy(&r.lookup("cached.test").await.unwrap());
    // Break everything: the cached answer must not notice.
    w.dns.set_fault("_mta-sts.cached.test", Some(Fault::Drop));
    w.hosts.set("mta-sts.cached.test", Behavior::Hang);
    for _ in 0..50 {
        let a = r.lookup("cached.test").await.unwrap();
        assert_eq!(expect_policy(&a).id, "1");
    }
    // recheck_interval is 1h: no re-check was even started.
    assert_eq!(w.dns.queries("_mta-sts.cached.test", RecordType::TXT), 1);
    assert_eq!(w.fetches("cached.test"), 1);
}

#[tokio::test]
async fn new_txt_id_triggers_refetch() {
    let w = World::new().await;
    w.publish(
        "change.test",
        "1",
        &policy("enforce", &["mx1.change.test"], 86400),
    );
    let r = w.resolver_with(&eager(&w));
    assert_eq!(
        id_of(&r, "change.test").await,
        Some(("1".into(), Mode::Enforce))
    );
    w.publish(
        "change.test",
        "2",
        &policy("enforce", &["mx2.change.test"], 86400),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            id_of(&r, "change.test").await == Some(("2".into(), Mode::Enforce))
        })
        .await,
        "the new id was never picked up"
    );
    let a = r.lookup("change.test").await.unwrap();
    assert!(expect_policy(&a).policy.allows_mx("mx2.change.test"));
    assert!(!expect_policy(&a).policy.allows_mx("mx1.change.test"));
}

#[tokio::test]
async fn same_id_is_not_refetched() {
    let w = World::new().await;
    w.publish(
        "same.test",
        "1",
        &policy("enforce", &["mx.same.test"], 86400),
    );
    let r = w.resolver_with(&eager(&w));
    for _ in 0..5 {
        expect_policy(&r.lookup("same.test").await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        w.dns.queries("_mta-sts.same.test", RecordType::TXT) >= 3,
        "id was re-checked"
    );
    assert_eq!(w.fetches("same.test"), 1, "unchanged id must not refetch");
}

#[tokio::test]
async fn failed_refetch_keeps_the_cached_policy() {
    let w = World::new().await;
    w.publish(
        "keep.test",
        "1",
        &policy("enforce", &["mx.keep.test"], 86400),
    );
    let r = w.resolver_with(&eager(&w));
    expect_policy(&r.lookup("keep.test").await.unwrap());
    // New id, but the policy host is broken.
    w.set_id("keep.test", "2");
    w.hosts.set(
        "mta-sts.keep.test",
        Behavior::Response {
            status: 500,
            content_type: Some("text/plain".into()),
            extra_headers: vec![],
            body: b"oops".to_vec(),
            content_length: true,
        },
    );
    expect_policy(&r.lookup("keep.test").await.unwrap());
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.fetches("keep.test") >= 2
        })
        .await,
        "the refetch was never attempted"
    );
    for _ in 0..5 {
        let a = r.lookup("keep.test").await.unwrap();
        let p = expect_policy(&a);
        assert_eq!((p.id.as_str(), p.policy.mode), ("1", Mode::Enforce));
    }
    // The failure backs off: the flood of lookups above did not hammer the host.
    assert_eq!(w.fetches("keep.test"), 2);
}

#[tokio::test]
async fn invalid_new_policy_keeps_the_cached_one() {
    let w = World::new().await;
    w.publish(
        "inval.test",
        "1",
        &policy("enforce", &["mx.inval.test"], 86400),
    );
    let r = w.resolver_with(&eager(&w));
    expect_policy(&r.lookup("inval.test").await.unwrap());
    w.publish(
        "inval.test",
        "2",
        "version: STSv1\nmode: enforce\nmax_age: 86400\n",
    );
    r.lookup("inval.test").await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            w.fetches("inval.test") >= 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        id_of(&r, "inval.test").await,
        Some(("1".into(), Mode::Enforce))
    );
}

#[tokio::test]
async fn removed_or_failing_txt_record_keeps_the_cached_policy() {
    let w = World::new().await;
    w.publish(
        "gone.test",
        "1",
        &policy("enforce", &["mx.gone.test"], 86400),
    );
    let r = w.resolver_with(&eager(&w));
    expect_policy(&r.lookup("gone.test").await.unwrap());

    w.dns.remove("_mta-sts.gone.test");
    let before = w.dns.queries("_mta-sts.gone.test", RecordType::TXT);
    for _ in 0..5 {
        assert_eq!(
            id_of(&r, "gone.test").await,
            Some(("1".into(), Mode::Enforce))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        w.dns.queries("_mta-sts.gone.test", RecordType::TXT) > before,
        "TXT was re-checked"
    );

    w.dns.set_txt("_mta-sts.gone.test", &[&["v=STSv1; id=1"]]);
    w.dns.set_fault("_mta-sts.gone.test", Some(Fault::ServFail));
    for _ in 0..5 {
        assert_eq!(
            id_of(&r, "gone.test").await,
            Some(("1".into(), Mode::Enforce))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.fetches("gone.test"), 1);
}

#[tokio::test]
async fn mode_none_with_new_id_replaces_enforce() {
    let w = World::new().await;
    w.publish(
        "retire.test",
        "1",
        &policy("enforce", &["mx.retire.test"], 86400),
    );
    let r = w.resolver_with(&eager(&w));
    expect_policy(&r.lookup("retire.test").await.unwrap());
    w.publish("retire.test", "2", &policy("none", &[], 86400));
    assert!(
        eventually(Duration::from_secs(5), || async {
            id_of(&r, "retire.test").await == Some(("2".into(), Mode::None))
        })
        .await
    );
}

#[tokio::test]
async fn broken_domain_is_backed_off_not_hammered() {
    let w = World::new().await;
    w.publish(
        "down.test",
        "1",
        &policy("enforce", &["mx.down.test"], 86400),
    );
    w.hosts.remove("mta-sts.down.test");
    let r = w.resolver();
    let a = r.lookup("down.test").await.unwrap();
    assert!(
        matches!(expect_no_policy(&a), NoPolicy::Backoff(_)),
        "{a:?}"
    );
    // The host comes back, but we are within the backoff: answered at once,
    // from memory, with no new attempt.
    w.hosts.set(
        "mta-sts.down.test",
        Behavior::Policy(policy("enforce", &["mx.down.test"], 60)),
    );
    let txt_before = w.dns.queries("_mta-sts.down.test", RecordType::TXT);
    for _ in 0..100 {
        let a = r.lookup("down.test").await.unwrap();
        assert!(matches!(expect_no_policy(&a), NoPolicy::Backoff(_)));
    }
    assert_eq!(
        w.dns.queries("_mta-sts.down.test", RecordType::TXT),
        txt_before
    );
    assert_eq!(w.fetches("down.test"), 0);
    // An operator's forced refresh ignores the backoff.
    let a = r.refresh_now("down.test").await.unwrap();
    assert_eq!(expect_policy(&a).id, "1");
}

#[tokio::test]
async fn backoff_ends_and_domain_is_retried() {
    let w = World::new().await;
    let mut cfg = w.config();
    cfg.cache.failure_backoff_min = Duration::from_millis(300);
    cfg.cache.failure_backoff_max = Duration::from_millis(300);
    let r = w.resolver_with(&cfg);
    w.publish(
        "retry.test",
        "1",
        &policy("enforce", &["mx.retry.test"], 86400),
    );
    w.dns
        .set_fault("_mta-sts.retry.test", Some(Fault::ServFail));
    expect_no_policy(&r.lookup("retry.test").await.unwrap());
    w.dns.set_fault("_mta-sts.retry.test", None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        id_of(&r, "retry.test").await,
        Some(("1".into(), Mode::Enforce))
    );
}

#[tokio::test]
async fn first_lookup_waits_only_up_to_the_deadline() {
    let w = World::new().await;
    w.publish("hang.test", "1", "unused");
    w.hosts.set("mta-sts.hang.test", Behavior::Hang);
    let mut cfg = w.config();
    cfg.cache.first_lookup_deadline = Duration::from_millis(300);
    cfg.fetch.timeout = Duration::from_secs(3);
    let r = w.resolver_with(&cfg);
    let started = Instant::now();
    let a = r.lookup("hang.test").await.unwrap();
    assert_eq!(*expect_no_policy(&a), NoPolicy::Pending);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A second lookup joins the same running fetch rather than starting one.
    r.lookup("hang.test").await.unwrap();
    assert_eq!(w.fetches("hang.test"), 1);
}

#[tokio::test]
async fn slow_first_fetch_is_used_once_it_lands() {
    let w = World::new().await;
    let body = policy("enforce", &["mx.late.test"], 86400);
    w.publish("late.test", "1", &body);
    w.hosts.set(
        "mta-sts.late.test",
        Behavior::Trickle {
            body: body.into_bytes(),
            interval: Duration::from_millis(5),
        },
    );
    let mut cfg = w.config();
    cfg.cache.first_lookup_deadline = Duration::from_millis(100);
    let r = w.resolver_with(&cfg);
    assert_eq!(
        *expect_no_policy(&r.lookup("late.test").await.unwrap()),
        NoPolicy::Pending
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            id_of(&r, "late.test").await.is_some()
        })
        .await,
        "the background fetch never landed"
    );
}

#[tokio::test]
async fn policy_expires_after_max_age() {
    let w = World::new().await;
    w.publish("short.test", "1", &policy("enforce", &["mx.short.test"], 1));
    let r = w.resolver();
    let a = r.lookup("short.test").await.unwrap();
    assert_eq!(expect_policy(&a).policy.max_age, 1);
    // The policy host and the TXT record go away; once max_age has passed the
    // policy no longer applies.
    w.hosts.remove("mta-sts.short.test");
    w.dns.remove("_mta-sts.short.test");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let a = r.lookup("short.test").await.unwrap();
    assert!(
        matches!(expect_no_policy(&a), NoPolicy::NoRecord(_)),
        "{a:?}"
    );
}

#[tokio::test]
async fn policy_in_use_is_refreshed_before_it_expires() {
    let w = World::new().await;
    // max_age 4: due for refresh at half its life.
    w.publish("renew.test", "1", &policy("enforce", &["mx.renew.test"], 4));
    let r = w.resolver_with(&eager(&w));
    let first = expect_policy(&r.lookup("renew.test").await.unwrap()).fetched_at;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    r.lookup("renew.test").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            matches!(r.cached("renew.test").await, Ok(Some(p)) if p.fetched_at > first)
        })
        .await,
        "the policy was not renewed"
    );
    assert_eq!(w.fetches("renew.test"), 2);
}

#[tokio::test]
async fn sweep_refreshes_idle_policies_and_drops_expired_ones() {
    // Stored times are whole seconds, so the waits below are chosen to hold
    // wherever in a second the test starts: after 1.1 s the 1 s policy has
    // surely expired, and the 3 s one is surely still valid and past half
    // its life (due for refresh).
    let w = World::new().await;
    w.publish("idle.test", "1", &policy("enforce", &["mx.idle.test"], 3));
    w.publish("dead.test", "1", &policy("enforce", &["mx.dead.test"], 1));
    let r = w.resolver();
    expect_policy(&r.lookup("idle.test").await.unwrap());
    expect_policy(&r.lookup("dead.test").await.unwrap());
    w.hosts.remove("mta-sts.dead.test");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.sweep_once().await;
    assert_eq!(
        w.fetches("idle.test"),
        2,
        "due policy refreshed without any lookup"
    );
    assert!(
        r.cached("dead.test").await.unwrap().is_none(),
        "expired policy removed"
    );
    assert!(r.cached("idle.test").await.unwrap().is_some());
}

#[tokio::test]
async fn purge_forgets_a_policy() {
    let w = World::new().await;
    w.publish(
        "purge.test",
        "1",
        &policy("enforce", &["mx.purge.test"], 86400),
    );
    let r = w.resolver();
    expect_policy(&r.lookup("purge.test").await.unwrap());
    r.purge("purge.test").await.unwrap();
    assert!(r.cached("purge.test").await.unwrap().is_none());
    expect_policy(&r.lookup("purge.test").await.unwrap());
    assert_eq!(w.fetches("purge.test"), 2);
}

#[tokio::test]
async fn policy_survives_a_new_resolver_on_the_same_store() {
    let w = World::new().await;
    w.publish(
        "disk.test",
        "1",
        &policy("enforce", &["mx.disk.test"], 86400),
    );
    {
        let r = w.resolver();
        expect_policy(&r.lookup("disk.test").await.unwrap());
    }
    // Give the dropped store's blocking tasks a moment to release the file.
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.hosts.remove("mta-sts.disk.test");
    w.dns.set_fault("_mta-sts.disk.test", Some(Fault::ServFail));
    let r = w.resolver();
    let a = r.lookup("disk.test").await.unwrap();
    assert_eq!(expect_policy(&a).id, "1");
    assert_eq!(w.fetches("disk.test"), 1);
}

#[tokio::test]
async fn non_domains_cause_no_network_work() {
    let w = World::new().await;
    let r = Arc::new(w.resolver());
    for key in [
        "[192.0.2.1]",
        "[mx.example.test]:25",
        ".parent.test",
        "192.0.2.1",
        "2001:db8::1",
        "localhost",
        "",
    ] {
        let a = r.lookup(key).await.unwrap();
        assert!(
            matches!(expect_no_policy(&a), NoPolicy::NotADomain(_)),
            "{key}: {a:?}"
        );
    }
    assert_eq!(w.dns.queries("_mta-sts.localhost", RecordType::TXT), 0);
    assert_eq!(w.dns.queries("_mta-sts.parent.test", RecordType::TXT), 0);
}
