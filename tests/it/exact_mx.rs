//! Maps with `match_current_mx`: Postfix gets the domain's current MX hosts
//! that the policy admits (one label per wildcard, RFC 8461 §4.1) instead of
//! patterns it would read as "any depth"; a domain none of whose MX hosts is
//! admitted is deferred, never matched more loosely.

use std::time::Duration;

use mta_sts_agent::config::MapConfig;

use crate::harness::{eventually, policy, World};
use crate::socketmap::{config_listening, lookup, Server};
use crate::support::dns::RecordType;

async fn server(w: &World) -> Server {
    let mut config = config_listening(w, &["127.0.0.1:0"]);
    config.cache.mx_min_ttl = Duration::ZERO;
    config.socketmap.maps.insert(
        "exact".to_string(),
        MapConfig {
            testing_as_enforce: false,
            servername: true,
            match_current_mx: true,
            tlsrpt: false,
            dane: Default::default(),
        },
    );
    Server::start(w, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_current_mx_hosts_the_policy_admits_are_listed() {
    let w = World::new().await;
    w.publish(
        "deep.test",
        "1",
        &policy("enforce", &["*.deep.test"], 86400),
    );
    w.dns.set_mx(
        "deep.test",
        &[
            (10, "a.b.deep.test"),
            (20, "mx2.deep.test"),
            (30, "mx1.deep.test"),
        ],
    );
    let s = server(&w).await;
    // Two labels deep is not admitted by *.deep.test; preference order kept.
    assert_eq!(
        lookup(s.addr(), "exact", "deep.test").await,
        "OK secure match=mx2.deep.test:mx1.deep.test servername=hostname"
    );
    // The default map still answers with the pattern (Postfix's any-depth form).
    assert_eq!(
        lookup(s.addr(), "postfix", "deep.test").await,
        "OK secure match=.deep.test servername=hostname"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admitted_mx_is_deferred_not_loosened() {
    let w = World::new().await;
    w.publish(
        "none.test",
        "1",
        &policy("enforce", &["*.none.test"], 86400),
    );
    w.dns.set_mx(
        "none.test",
        &[(10, "a.b.none.test"), (20, "mail.elsewhere.test")],
    );
    w.publish(
        "nullmx.test",
        "1",
        &policy("enforce", &["mx.nullmx.test"], 86400),
    );
    w.dns.set_mx("nullmx.test", &[(0, ".")]);
    let s = server(&w).await;
    let reply = lookup(s.addr(), "exact", "none.test").await;
    assert!(
        reply.starts_with("TEMP no current MX host of none.test"),
        "{reply}"
    );
    assert!(
        reply.contains("a.b.none.test") && reply.contains("*.none.test"),
        "{reply}"
    );
    let reply = lookup(s.addr(), "exact", "nullmx.test").await;
    assert!(
        reply.starts_with("TEMP") && reply.contains("null MX"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_mx_and_other_modes() {
    let w = World::new().await;
    // No MX records: the domain itself is the mail host (RFC 5321 §5.1).
    w.publish("bare.test", "1", &policy("enforce", &["bare.test"], 86400));
    w.publish(
        "trial.test",
        "1",
        &policy("testing", &["mx.trial.test"], 86400),
    );
    let s = server(&w).await;
    assert_eq!(
        lookup(s.addr(), "exact", "bare.test").await,
        "OK secure match=bare.test servername=hostname"
    );
    // Testing and no-policy domains need no MX lookup at all.
    assert_eq!(lookup(s.addr(), "exact", "trial.test").await, "NOTFOUND ");
    assert_eq!(
        lookup(s.addr(), "exact", "nopolicy.test").await,
        "NOTFOUND "
    );
    assert_eq!(w.dns.queries("trial.test", RecordType::MX), 0);
    assert_eq!(w.dns.queries("nopolicy.test", RecordType::MX), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_mx_set_is_seen_after_its_ttl() {
    let w = World::new().await;
    w.publish(
        "moved.test",
        "1",
        &policy("enforce", &["*.moved.test"], 86400),
    );
    w.dns.set_mx("moved.test", &[(10, "old.moved.test")]);
    let s = server(&w).await;
    assert_eq!(
        lookup(s.addr(), "exact", "moved.test").await,
        "OK secure match=old.moved.test servername=hostname"
    );
    // TTL 0 (fixture default) and mx_min_ttl 0: the next lookups refresh the
    // set in the background and then answer with the new host.
    w.dns.set_mx("moved.test", &[(10, "new.moved.test")]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            lookup(s.addr(), "exact", "moved.test").await
                == "OK secure match=new.moved.test servername=hostname"
        })
        .await
    );
}
