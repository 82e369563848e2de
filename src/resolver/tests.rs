//! The resolver's rules (RFC 8461 §3.3, §5.1) on the in-memory DNS and
//! policy host: no sockets, milliseconds each.

use std::time::Duration;

use super::*;
use crate::dns::memory::{Fault, ZoneDns};
use crate::dns::RecordType;
use crate::fetch::memory::MemoryFetch;
use crate::fetch::FetchError;
use crate::policy::{parse_policy, Mode};

const D: &str = "example.test";
const TXT: &str = "_mta-sts.example.test";

fn body(mode: &str, max_age: u32) -> String {
    format!("version: STSv1\nmode: {mode}\nmx: mx1.example.test\nmax_age: {max_age}\n")
}

fn txt(id: &str) -> String {
    format!("_mta-sts.example.test. 300 IN TXT \"v=STSv1; id={id}\"\n")
}

/// Settings that keep every background re-check out of the way unless a
/// test asks for one.
fn settings() -> CacheConfig {
    CacheConfig {
        first_lookup_deadline: Duration::from_secs(5),
        recheck_interval: Duration::from_secs(3600),
        failure_backoff_min: Duration::from_secs(60),
        failure_backoff_max: Duration::from_secs(3600),
        ..CacheConfig::default()
    }
}

struct World {
    zone: ZoneDns,
    web: MemoryFetch,
    resolver: Resolver,
}

/// example.test publishes id 1 and an enforce policy.
fn world_with(cfg: CacheConfig) -> World {
    let zone = ZoneDns::from_zone(&format!(
        "{}example.test. 300 IN MX 10 mx1.example.test.\n",
        txt("1")
    ));
    let web = MemoryFetch::default();
    web.serve(D, &body("enforce", 86_400));
    let resolver = Resolver::new(
        Dns::new(zone.clone()),
        web.clone(),
        PolicyStore::memory_only(100),
        cfg,
    );
    World {
        zone,
        web,
        resolver,
    }
}

fn world() -> World {
    world_with(settings())
}

fn policy_id(answer: &Answer) -> Option<&str> {
    match answer {
        Answer::Policy(p) => Some(p.id.as_str()),
        Answer::NoPolicy(_) => None,
    }
}

fn no_policy(answer: Answer) -> NoPolicy {
    match answer {
        Answer::NoPolicy(why) => why,
        Answer::Policy(p) => panic!("expected no policy, got {p:?}"),
    }
}

async fn lookup(w: &World) -> Answer {
    w.resolver.lookup(D).await.expect("store")
}

/// Puts a policy fetched `age` seconds ago into the store.
async fn cached(w: &World, id: &str, max_age: u32, age: u64) {
    let parsed = parse_policy(body("enforce", max_age).as_bytes()).expect("policy");
    let stored = StoredPolicy {
        domain: D.to_string(),
        id: id.to_string(),
        policy: parsed.policy,
        body: body("enforce", max_age),
        fetched_at: unix_now() - age,
        source: PolicySource::Fetched,
    };
    w.resolver.store().put(stored).await.expect("put");
}

#[tokio::test]
async fn a_cached_policy_is_answered_without_any_network_work() {
    // §5.1 / rule 1: within recheck_interval, no TXT query and no fetch.
    let w = world();
    assert_eq!(policy_id(&lookup(&w).await), Some("1"));
    for _ in 0..5 {
        assert_eq!(policy_id(&lookup(&w).await), Some("1"));
    }
    assert_eq!(w.zone.queries(TXT, RecordType::TXT), 1);
    assert_eq!(w.web.fetches(D), 1);
}

#[tokio::test]
async fn an_unchanged_id_is_not_refetched() {
    // §3.3: a sender checks the TXT id and fetches only when it changed.
    let w = world();
    lookup(&w).await;
    let again = w.resolver.refresh_now(D).await.expect("store");
    assert_eq!(policy_id(&again), Some("1"));
    assert_eq!(w.zone.queries(TXT, RecordType::TXT), 2);
    assert_eq!(w.web.fetches(D), 1);
}

#[tokio::test]
async fn a_changed_id_is_refetched_and_replaces_the_policy() {
    let w = world();
    lookup(&w).await;
    w.zone.load(&txt("2"));
    w.web.serve(D, &body("testing", 86_400));
    let answer = w.resolver.refresh_now(D).await.expect("store");
    let Answer::Policy(p) = answer else {
        panic!("no policy after the refetch");
    };
    assert_eq!((p.id.as_str(), p.policy.mode), ("2", Mode::Testing));
    assert_eq!(w.web.fetches(D), 2);
}

#[tokio::test]
async fn a_vanished_txt_record_keeps_the_cached_policy() {
    // §5.1: removing the record does not remove the promise; the cached
    // policy stays until it expires.
    let w = world();
    lookup(&w).await;
    w.zone.remove(TXT, RecordType::TXT);
    let answer = w.resolver.refresh_now(D).await.expect("store");
    assert_eq!(policy_id(&answer), Some("1"));
    assert_eq!(policy_id(&lookup(&w).await), Some("1"));
}

#[tokio::test]
async fn a_failed_txt_lookup_keeps_the_cached_policy() {
    // §5.1: "we could not find out" never ends a policy.
    let w = world();
    lookup(&w).await;
    w.zone.fail(TXT, RecordType::TXT, Fault::ServFail);
    let answer = w.resolver.refresh_now(D).await.expect("store");
    assert_eq!(policy_id(&answer), Some("1"));
}

#[tokio::test]
async fn a_failed_fetch_under_a_new_id_keeps_the_cached_policy() {
    // §3.3: a failed refresh leaves the valid cached policy in force.
    let w = world();
    lookup(&w).await;
    w.zone.load(&txt("2"));
    w.web
        .fail(D, FetchError::Connect("connection refused".to_string()));
    let answer = w.resolver.refresh_now(D).await.expect("store");
    assert_eq!(policy_id(&answer), Some("1"));
    assert_eq!(w.web.fetches(D), 2);
}

#[tokio::test]
async fn a_policy_due_for_renewal_is_refetched_under_the_same_id() {
    // Rule 2: past min(refresh_interval, max_age / 2) the policy is
    // fetched again even though the id is unchanged, so it never expires
    // while in use.
    let w = world();
    cached(&w, "1", 1000, 501).await;
    let answer = w.resolver.refresh_now(D).await.expect("store");
    assert_eq!(w.web.fetches(D), 1);
    let Answer::Policy(p) = answer else {
        panic!("no policy after the renewal");
    };
    assert_eq!(p.policy.max_age, 86_400);
    // One not yet due is left alone.
    let fresh = world();
    cached(&fresh, "1", 1000, 10).await;
    fresh.resolver.refresh_now(D).await.expect("store");
    assert_eq!(fresh.web.fetches(D), 0);
}

#[tokio::test]
async fn an_expired_policy_is_no_policy() {
    // §5.1: past max_age the policy is gone, whatever the cache holds; with
    // no record published the domain has none.
    let w = world();
    w.zone.remove(TXT, RecordType::TXT);
    cached(&w, "1", 100, 101).await;
    assert!(matches!(no_policy(lookup(&w).await), NoPolicy::NoRecord(_)));
}

#[tokio::test]
async fn a_domain_without_a_record_has_no_policy_and_is_not_asked_again_at_once() {
    // Rule 3: the negative answer is remembered for negative_ttl.
    let w = world();
    w.zone.remove(TXT, RecordType::TXT);
    let why = no_policy(lookup(&w).await);
    assert!(matches!(&why, NoPolicy::NoRecord(r) if r.contains("no v=STSv1 record")));
    no_policy(lookup(&w).await);
    assert_eq!(w.zone.queries(TXT, RecordType::TXT), 1);
    assert_eq!(w.web.fetches(D), 0);
}

#[tokio::test]
async fn two_records_are_no_policy() {
    // §3.1: exactly one v=STSv1 record, or the domain has no policy.
    let w = world();
    w.zone.load(
        "_mta-sts.example.test. 300 IN TXT \"v=STSv1; id=1\"\n\
         _mta-sts.example.test. 300 IN TXT \"v=STSv1; id=2\"\n",
    );
    let why = no_policy(lookup(&w).await);
    assert!(matches!(&why, NoPolicy::NoRecord(r) if r.contains("requires exactly one")));
    assert_eq!(w.web.fetches(D), 0);
}

#[tokio::test]
async fn a_dns_failure_without_a_cached_policy_backs_off() {
    // Rule 3: a broken domain is answered "no policy" during the backoff,
    // neither hammered nor waited on; DNS trouble has no TLS-RPT type.
    let w = world();
    w.zone.fail(TXT, RecordType::TXT, Fault::Timeout);
    let why = no_policy(lookup(&w).await);
    let NoPolicy::Backoff(failure) = &why else {
        panic!("expected a backoff, got {why:?}");
    };
    assert!(matches!(failure, Failure::Discovery(_)));
    assert_eq!(failure.result_type(), None);
    assert!(failure
        .reason()
        .contains("TXT lookup of _mta-sts.example.test failed"));
    w.zone.heal(TXT, RecordType::TXT);
    assert!(matches!(no_policy(lookup(&w).await), NoPolicy::Backoff(_)));
    assert_eq!(w.zone.queries(TXT, RecordType::TXT), 1);
}

#[tokio::test]
async fn a_failed_fetch_is_reported_with_its_rfc_8460_result_type() {
    // RFC 8460 §4.3.1.3: a policy that cannot be fetched, whose host fails
    // WebPKI, or that does not parse, each has its own result type.
    let cases = [
        (
            FetchError::Connect("refused".to_string()),
            "sts-policy-fetch-error",
        ),
        (
            FetchError::Tls("bad certificate".to_string()),
            "sts-webpki-invalid",
        ),
    ];
    for (error, expected) in cases {
        let w = world();
        w.web.fail(D, error);
        let NoPolicy::Backoff(failure) = no_policy(lookup(&w).await) else {
            panic!("expected a backoff");
        };
        assert_eq!(failure.result_type().map(|r| r.as_str()), Some(expected));
    }
    let w = world();
    w.web.serve(D, "version: STSv1\nmode: sometimes\n");
    let NoPolicy::Backoff(failure) = no_policy(lookup(&w).await) else {
        panic!("expected a backoff");
    };
    assert_eq!(
        failure.result_type().map(|r| r.as_str()),
        Some("sts-policy-invalid")
    );
}

#[test]
fn fetch_errors_map_to_result_types() {
    let invalid = parse_policy(b"mode: enforce\n").expect_err("no version");
    assert_eq!(
        fetch_result_type(&FetchError::Invalid(invalid)).as_str(),
        "sts-policy-invalid"
    );
    assert_eq!(
        fetch_result_type(&FetchError::Status(404)).as_str(),
        "sts-policy-fetch-error"
    );
    assert_eq!(
        fetch_result_type(&FetchError::Timeout(Duration::from_secs(1), D.to_string())).as_str(),
        "sts-policy-fetch-error"
    );
}

#[tokio::test]
async fn backoff_doubles_from_its_minimum_up_to_its_maximum() {
    let w = world();
    let inner = &w.resolver.inner;
    assert_eq!(inner.backoff(1), Duration::from_secs(60));
    assert_eq!(inner.backoff(2), Duration::from_secs(120));
    assert_eq!(inner.backoff(4), Duration::from_secs(480));
    assert_eq!(inner.backoff(7), Duration::from_secs(3600));
    assert_eq!(inner.backoff(u32::MAX), Duration::from_secs(3600));
}

#[tokio::test]
async fn concurrent_first_lookups_share_one_discovery() {
    // Rule 4: however many lookups arrive, one TXT query and one fetch.
    let w = world();
    w.zone.delay(TXT, Duration::from_millis(100));
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let r = w.resolver.clone();
        lookups.spawn(async move { r.lookup(D).await });
    }
    while let Some(done) = lookups.join_next().await {
        let answer = done.expect("task").expect("store");
        assert_eq!(policy_id(&answer), Some("1"));
    }
    assert_eq!(w.zone.queries(TXT, RecordType::TXT), 1);
    assert_eq!(w.web.fetches(D), 1);
}

#[tokio::test]
async fn a_slow_discovery_answers_pending_at_the_deadline_and_finishes_behind() {
    // Rule 4: lookups wait at most first_lookup_deadline; the fetch goes on.
    let w = world_with(CacheConfig {
        first_lookup_deadline: Duration::from_millis(20),
        ..settings()
    });
    w.web.delay(Duration::from_millis(150));
    assert_eq!(no_policy(lookup(&w).await), NoPolicy::Pending);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(policy_id(&lookup(&w).await), Some("1"));
    assert_eq!(w.web.fetches(D), 1);
}

#[tokio::test]
async fn past_the_discovery_cap_a_new_domain_answers_at_once_without_one() {
    // cache.max_discoveries: a flood of keys cannot pile up DNS work.
    let w = world_with(CacheConfig {
        max_discoveries: 1,
        ..settings()
    });
    w.zone.delay(TXT, Duration::from_millis(200));
    let r = w.resolver.clone();
    let first = tokio::spawn(async move { r.lookup(D).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let other = w.resolver.lookup("other.test").await.expect("store");
    assert_eq!(no_policy(other), NoPolicy::Pending);
    assert_eq!(w.zone.queries("_mta-sts.other.test", RecordType::TXT), 0);
    let first = first.await.expect("task").expect("store");
    assert_eq!(policy_id(&first), Some("1"));
}

#[tokio::test]
async fn a_policy_with_max_age_zero_is_not_kept_nor_refetched_on_every_lookup() {
    let w = world();
    w.web.serve(D, &body("enforce", 0));
    let why = no_policy(lookup(&w).await);
    assert!(matches!(&why, NoPolicy::NoRecord(r) if r.contains("max_age 0")));
    no_policy(lookup(&w).await);
    assert_eq!(w.web.fetches(D), 1);
}

#[tokio::test]
async fn keys_that_are_not_domains_are_never_looked_up() {
    let w = world();
    for key in ["[192.0.2.1]", "localhost", "a..b"] {
        let why = no_policy(w.resolver.lookup(key).await.expect("store"));
        assert!(matches!(why, NoPolicy::NotADomain(_)), "{key}: {why:?}");
    }
    assert_eq!(w.zone.queries("_mta-sts.localhost", RecordType::TXT), 0);
}

#[tokio::test]
async fn the_mx_set_is_cached_and_read_as_rfc_5321_and_7505_say() {
    let w = world();
    w.zone.load(
        "nomx.test. 300 IN A 192.0.2.7\n\
         nomail.test. 300 IN MX 0 .\n\
         dup.test. 300 IN MX 10 mx.dup.test.\n\
         dup.test. 300 IN MX 20 MX.dup.test.\n",
    );
    let set = w.resolver.current_mx(D).await.expect("mx");
    assert_eq!(set.hosts, ["mx1.example.test"]);
    w.resolver.current_mx(D).await.expect("mx");
    assert_eq!(w.zone.queries(D, RecordType::MX), 1);
    let implicit = w.resolver.current_mx("nomx.test").await.expect("mx");
    assert_eq!(implicit.hosts, ["nomx.test"]);
    assert!(!implicit.null_mx);
    assert!(
        w.resolver
            .current_mx("nomail.test")
            .await
            .expect("mx")
            .null_mx
    );
    let dup = w.resolver.current_mx("dup.test").await.expect("mx");
    assert_eq!(dup.hosts, ["mx.dup.test"]);
    // DNS that cannot tell is no set: the caller uses the policy's patterns.
    w.zone.fail("broken.test", RecordType::MX, Fault::ServFail);
    assert!(w.resolver.current_mx("broken.test").await.is_none());
}

#[tokio::test]
async fn the_sweep_drops_expired_policies_and_renews_those_due() {
    // §5.1: policies are kept fresh rather than left to expire.
    let w = world();
    cached(&w, "1", 1000, 600).await;
    let stale = StoredPolicy {
        domain: "old.test".to_string(),
        fetched_at: unix_now() - 200,
        ..(*w.resolver.cached(D).await.expect("store").expect("policy")).clone()
    };
    let stale = StoredPolicy {
        policy: crate::policy::Policy {
            max_age: 100,
            ..stale.policy
        },
        ..stale
    };
    w.resolver.store().put(stale).await.expect("put");
    w.resolver.sweep_once().await;
    assert!(w
        .resolver
        .cached("old.test")
        .await
        .expect("store")
        .is_none());
    assert_eq!(w.web.fetches(D), 1);
    let renewed = w.resolver.cached(D).await.expect("store").expect("policy");
    assert_eq!(renewed.policy.max_age, 86_400);
}
