//! Attacker-model tests for DANE and MTA-STS together (RFC 8461 §10): an
//! active attacker sits between the agent and its validating resolver
//! (Unbound over NSD, zones signed at test time). It forges any answer it
//! cannot be caught forging (unsigned, no AD bit), drops DNSSEC queries
//! selectively, and runs MX hosts of its own, with a DNSSEC-signed zone
//! and valid TLSA records of its own. Whatever it does, an enforce
//! domain's mail never reaches a host its policy does not list, never goes
//! in plaintext, and a DANE domain never downgrades.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mta_sts_agent::config::{Config, DaneReply, MapConfig};
use mta_sts_agent::relay::queue::QueueView;
use mta_sts_agent::relay::Relay;
use mta_sts_agent::socketmap::connection::Handler;

use crate::dane::tlsa_3_1_1;
use crate::dane_background::settled;
use crate::harness::{policy, World};
use crate::relay::{ip, message, relay_toml, submit};
use crate::support::dns::RecordType;
use crate::support::dnssec::{self, OnPath, SignedDns, Signing, ZoneSpec};
use crate::support::https::Behavior;
use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};

/// A TLSA record no certificate of the tests matches.
const STRAY_TLSA: &str = "3 1 1 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
const OTHER_TLSA: &str = "3 1 1 ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn zone(name: &str, records: &[String], signing: Signing) -> ZoneSpec {
    let mut r = vec![
        "_mta-sts IN TXT \"v=STSv1; id=a1\"".to_string(),
        "mta-sts IN A 127.0.0.1".to_string(),
    ];
    r.extend_from_slice(records);
    ZoneSpec {
        name: name.to_string(),
        records: r,
        signing,
    }
}

/// The world's config, pointed at `dns` only.
fn config_via(world: &World, dns: SocketAddr, extra: &str) -> Config {
    let text = world
        .config_toml()
        .replace(&world.dns.addr.to_string(), &dns.to_string())
        + extra;
    Config::parse(&text, std::path::Path::new("attacker.toml")).expect("config")
}

struct RunningRelay {
    addr: SocketAddr,
    queue: mta_sts_agent::relay::queue::Queue,
    task: tokio::task::JoinHandle<()>,
}

async fn start_relay(world: &World, config: &Config) -> RunningRelay {
    let relay = Relay::open(config, world.resolver_with(config))
        .await
        .expect("relay");
    let queue = relay.queue.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _stop = stop;
        relay.serve(vec![listener], rx).await;
    });
    RunningRelay { addr, queue, task }
}

/// Waits until the one queued recipient has been tried and deferred.
async fn deferred(queue: &mta_sts_agent::relay::queue::Queue) -> Vec<QueueView> {
    let q = queue.clone();
    crate::harness::eventually(Duration::from_secs(20), || {
        let q = q.clone();
        async move {
            q.list()
                .iter()
                .any(|m| m.recipients.iter().any(|r| r.reason.is_some()))
        }
    })
    .await;
    queue.list()
}

fn socketmap(config: &Config, dane: DaneReply) -> Handler {
    let mut maps = BTreeMap::new();
    maps.insert(
        "postfix".to_string(),
        MapConfig {
            dane,
            ..MapConfig::default()
        },
    );
    Handler {
        resolver: mta_sts_agent::resolver::Resolver::from_config(
            config,
            mta_sts_agent::store::PolicyStore::memory_only(100),
        )
        .expect("resolver"),
        maps,
        idle_timeout: Duration::from_secs(10),
    }
}

/// Issue 11, item 1. The attacker drops the DNSSEC MX query of an enforce
/// domain and forges the plain one to name its own host, which has valid
/// signed TLSA records in the attacker's signed zone. RFC 7672 §2.2.1:
/// TLSA records count only for hosts of an authenticated MX RRset; with
/// the DANE status unknown, MTA-STS applies in full and the host, not in
/// the policy, is never contacted.
#[tokio::test]
async fn forged_mx_with_the_attackers_own_dane_host_gets_no_enforce_mail() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let (port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (IpAddr::V4(ip(141)), SmtpOptions::new("mx1.victim.test")),
            (
                IpAddr::V4(ip(142)),
                SmtpOptions::new("mx.evil.test").cert(SmtpCert::SelfSigned),
            ),
        ],
    )
    .await;
    let evil_tlsa = tlsa_3_1_1(mx[1].certificate().as_ref());
    let dns = SignedDns::start(&[
        zone(
            "victim.test",
            &[
                "@ IN MX 10 mx1.victim.test.".into(),
                "mx1 IN A 127.0.0.141".into(),
            ],
            Signing::Secure,
        ),
        zone(
            "evil.test",
            &[
                "mx IN A 127.0.0.142".into(),
                format!("_25._tcp.mx IN TLSA {evil_tlsa}"),
            ],
            Signing::Secure,
        ),
    ])
    .await;
    let attacker = OnPath::start(dns.addr).await;
    attacker.drop_dnssec("victim.test", RecordType::MX);
    attacker.forge_mx("victim.test", &[(10, "mx.evil.test")]);
    world.hosts.set(
        "mta-sts.victim.test",
        Behavior::Policy(policy("enforce", &["mx1.victim.test"], 86_400)),
    );
    let config = config_via(&world, attacker.addr, &relay_toml(port, ""));
    let relay = start_relay(&world, &config).await;

    let rcpt = "bob@victim.test";
    let msg = message("forged", "alice@sender.test", rcpt, "secret\r\n");
    let reply = submit(relay.addr, "alice@sender.test", &[rcpt], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    let list = deferred(&relay.queue).await;
    relay.task.abort();

    assert!(
        attacker.queries("victim.test", RecordType::MX, true) >= 1,
        "the DNSSEC MX query was asked (and dropped)"
    );
    assert_eq!(
        mx[1].connections(),
        0,
        "the attacker's host was contacted: {:?}",
        mx[1].commands()
    );
    assert!(mx[1].messages().is_empty());
    assert!(
        mx[0].messages().is_empty(),
        "the forged answer named no other host"
    );
    assert_eq!(list.len(), 1, "{list:#?}");
    let reason = list[0].recipients[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("allowed by its MTA-STS policy"), "{reason}");

    // The socketmap gives Postfix the MTA-STS answer, not DANE.
    let h = socketmap(&config, DaneReply::DaneOnly);
    assert_eq!(
        settled(&h, "victim.test").await,
        "OK secure match=mx1.victim.test servername=hostname"
    );
}

/// Issue 11, item 2. A DANE domain with an authenticated MX RRset: the
/// preferred host has valid TLSA but is down, the other host's TLSA RRset
/// is bogus (the attacker cannot make it validate) and it offers no
/// STARTTLS. RFC 7672 §2.1.1: a host whose TLSA lookup fails is not used,
/// so nothing goes in plaintext; the mail waits.
#[tokio::test]
async fn a_dane_domain_never_falls_back_to_plaintext_when_a_tlsa_lookup_fails() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    // mx1 (127.0.0.143) has no listener: connection refused.
    let (port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![(
            IpAddr::V4(ip(144)),
            SmtpOptions::new("mx2.dane2.test").starttls(false),
        )],
    )
    .await;
    let dns = SignedDns::start(&[zone(
        "dane2.test",
        &[
            "@ IN MX 10 mx1.dane2.test.".into(),
            "@ IN MX 20 mx2.dane2.test.".into(),
            "mx1 IN A 127.0.0.143".into(),
            "mx2 IN A 127.0.0.144".into(),
            format!(
                "_25._tcp.mx1 IN TLSA {}",
                tlsa_3_1_1(mx[0].certificate().as_ref())
            ),
            format!("_25._tcp.mx2 IN TLSA {STRAY_TLSA}"),
        ],
        Signing::Tampered {
            from: STRAY_TLSA[6..].to_string(),
            to: OTHER_TLSA[6..].to_string(),
        },
    )])
    .await;
    let attacker = OnPath::start(dns.addr).await;
    world.hosts.set(
        "mta-sts.dane2.test",
        Behavior::Policy(policy("none", &[], 86_400)),
    );
    let config = config_via(&world, attacker.addr, &relay_toml(port, ""));
    let relay = start_relay(&world, &config).await;

    let rcpt = "bob@dane2.test";
    let msg = message("bogus", "alice@sender.test", rcpt, "secret\r\n");
    let reply = submit(relay.addr, "alice@sender.test", &[rcpt], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    let list = deferred(&relay.queue).await;
    relay.task.abort();

    assert!(
        mx[0].messages().is_empty(),
        "sent in plaintext to a host whose TLSA lookup failed"
    );
    assert!(!mx[0].commands().iter().any(|c| c.starts_with("MAIL")));
    assert_eq!(list.len(), 1, "{list:#?}");
    let reason = list[0].recipients[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("mx2.dane2.test: TLSA lookup failed"),
        "{reason}"
    );
}

/// A DANE domain without MTA-STS: the attacker forges the plain MX answer
/// to name its own host (no STARTTLS) and lets the DNSSEC query through.
/// With an authenticated MX RRset, the hosts tried are that RRset's
/// (RFC 7672 §2.2.1): the forged host is never contacted, and the mail
/// goes to the real host, over TLS matching its TLSA records.
#[tokio::test]
async fn a_forged_plain_mx_answer_cannot_add_a_host_to_an_authenticated_mx_rrset() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let (port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (
                IpAddr::V4(ip(147)),
                SmtpOptions::new("mx1.dane3.test").cert(SmtpCert::SelfSigned),
            ),
            (
                IpAddr::V4(ip(148)),
                SmtpOptions::new("mx.evil3.test").starttls(false),
            ),
        ],
    )
    .await;
    let dns = SignedDns::start(&[
        zone(
            "dane3.test",
            &[
                "@ IN MX 10 mx1.dane3.test.".into(),
                "mx1 IN A 127.0.0.147".into(),
                format!(
                    "_25._tcp.mx1 IN TLSA {}",
                    tlsa_3_1_1(mx[0].certificate().as_ref())
                ),
            ],
            Signing::Secure,
        ),
        zone(
            "evil3.test",
            &["mx IN A 127.0.0.148".into()],
            Signing::Insecure,
        ),
    ])
    .await;
    let attacker = OnPath::start(dns.addr).await;
    attacker.forge_mx_plain("dane3.test", &[(5, "mx.evil3.test")]);
    world.hosts.set(
        "mta-sts.dane3.test",
        Behavior::Policy(policy("none", &[], 86_400)),
    );
    let config = config_via(&world, attacker.addr, &relay_toml(port, ""));
    let relay = start_relay(&world, &config).await;

    let rcpt = "bob@dane3.test";
    let msg = message(
        "plainmx",
        "alice@sender.test",
        rcpt,
        "secret
",
    );
    let reply = submit(relay.addr, "alice@sender.test", &[rcpt], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    let q = relay.queue.clone();
    let empty = crate::harness::eventually(Duration::from_secs(20), || {
        let q = q.clone();
        async move { q.is_empty() }
    })
    .await;
    relay.task.abort();
    assert_eq!(
        mx[1].connections(),
        0,
        "the forged host was contacted: {:?}",
        mx[1].commands()
    );
    assert!(empty, "queue: {:#?}", relay.queue.list());
    assert_eq!(mx[0].messages().len(), 1);
    assert!(mx[0].messages()[0].tls);
}

/// The socketmap side of both: Postfix is handed a DANE level only when
/// that is not weaker than the MTA-STS answer. Under `dane` Postfix uses
/// an MX host without usable TLSA (or whose TLSA lookup fails on our side)
/// with opportunistic TLS, so such a domain keeps the MTA-STS answer;
/// `dane-only` never uses those hosts, so it stays.
#[tokio::test]
async fn the_socketmaps_dane_answer_is_never_weaker_than_mta_sts() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let mx_lines = |d: &str| -> Vec<String> {
        vec![
            format!("@ IN MX 10 mx1.{d}."),
            format!("@ IN MX 20 mx2.{d}."),
            "mx1 IN A 127.0.0.145".into(),
            "mx2 IN A 127.0.0.146".into(),
            "_25._tcp.mx1 IN TLSA 3 1 1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .into(),
        ]
    };
    let mut partial = mx_lines("partial.test");
    partial.push("_25._tcp.mx2 IN TXT \"no TLSA here\"".into());
    let mut failing = mx_lines("failing.test");
    failing.push(format!("_25._tcp.mx2 IN TLSA {STRAY_TLSA}"));
    let mut full = mx_lines("full.test");
    full.push(
        "_25._tcp.mx2 IN TLSA 3 1 1 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            .into(),
    );
    let dns = SignedDns::start(&[
        zone("partial.test", &partial, Signing::Secure),
        zone(
            "failing.test",
            &failing,
            Signing::Tampered {
                from: STRAY_TLSA[6..].to_string(),
                to: OTHER_TLSA[6..].to_string(),
            },
        ),
        zone("full.test", &full, Signing::Secure),
    ])
    .await;
    let attacker = OnPath::start(dns.addr).await;
    for d in ["partial.test", "failing.test", "full.test"] {
        world.hosts.set(
            &format!("mta-sts.{d}"),
            Behavior::Policy(policy("enforce", &[&format!("*.{d}")], 86_400)),
        );
    }
    let config = config_via(&world, attacker.addr, "");
    let sts = |d: &str| format!("OK secure match=.{d} servername=hostname");
    for (choice, d, want) in [
        (DaneReply::Dane, "partial.test", sts("partial.test")),
        (DaneReply::Dane, "failing.test", sts("failing.test")),
        (DaneReply::Dane, "full.test", "OK dane".to_string()),
        (DaneReply::Notfound, "partial.test", sts("partial.test")),
        (DaneReply::Notfound, "full.test", "NOTFOUND ".to_string()),
        (
            DaneReply::DaneOnly,
            "partial.test",
            "OK dane-only".to_string(),
        ),
        (
            DaneReply::DaneOnly,
            "failing.test",
            "OK dane-only".to_string(),
        ),
    ] {
        let h = socketmap(&config, choice);
        assert_eq!(settled(&h, d).await, want, "{choice:?} {d}");
    }
}
