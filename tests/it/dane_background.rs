//! Issue 13: the socketmap never waits on DNSSEC lookups. When the MTA-STS
//! answer of an enforce domain is ready (a policy just fetched, or cached
//! from before a restart while the DANE cache is empty) it is given at once,
//! and the domain's DANE status is learned in the background, with one set
//! of DNSSEC queries however many lookups arrive. The DANE answer follows
//! once it is known. A hostile or slow resolver can neither pile up
//! background work nor keep a lookup waiting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_sts_agent::config::{Config, DaneReply, MapConfig};
use mta_sts_agent::socketmap::connection::Handler;

use crate::harness::{policy, World};
use crate::relay::ip;
use crate::support::dns::RecordType;

/// DNSSEC answers are this slow in these tests; the STS answer must come
/// well before.
const DNSSEC_DELAY: Duration = Duration::from_millis(1500);
/// "At once": far below the delay, with room for a loaded machine.
const AT_ONCE: Duration = Duration::from_millis(700);

/// The world's config, with a DNS timeout above the DNSSEC delay (so the
/// delayed answers are waited for, not timed out) and `extra` appended.
fn config(world: &World, extra: &str) -> Config {
    let text = world.config_toml().replace(
        "timeout = \"1s\"\nattempts = 1",
        "timeout = \"4s\"\nattempts = 1",
    ) + extra;
    Config::parse(&text, std::path::Path::new("background.toml")).expect("config")
}

/// `domain` with MX hosts mx1/mx2 (127.0.0.`base`, `base+1`), authenticated
/// MX and TLSA answers, and an enforce policy listing both.
fn publish_dane(world: &World, domain: &str, base: u8) {
    let hosts = [format!("mx1.{domain}"), format!("mx2.{domain}")];
    world
        .dns
        .set_mx(domain, &[(10, hosts[0].as_str()), (20, hosts[1].as_str())]);
    world.dns.set_authentic(domain, true);
    for (i, h) in hosts.iter().enumerate() {
        world.dns.set_a(h, &[ip(base + i as u8)]);
        let name = format!("_25._tcp.{h}");
        world.dns.set_tlsa(&name, &[(3, 1, 1, &[0xab; 32])]);
        world.dns.set_authentic(&name, true);
    }
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    world.publish(domain, "b1", &policy("enforce", &names, 86_400));
}

fn handler(world: &World, config: &Config, match_current_mx: bool) -> Arc<Handler> {
    let mut maps = BTreeMap::new();
    maps.insert(
        "postfix".to_string(),
        MapConfig {
            dane: DaneReply::DaneOnly,
            match_current_mx,
            ..MapConfig::default()
        },
    );
    Arc::new(Handler {
        resolver: world.resolver_with(config),
        maps,
        idle_timeout: Duration::from_secs(10),
    })
}

fn sts(domain: &str) -> String {
    format!("OK secure match=mx1.{domain}:mx2.{domain} servername=hostname")
}

/// The socketmap's answer for `domain` once its DANE status is known: the
/// first lookup starts the background lookup, waiting on the shared DANE
/// lookup joins it, and the next lookup answers from what it found.
pub(crate) async fn settled(h: &Handler, domain: &str) -> String {
    let request = format!("postfix {domain}");
    h.answer(request.as_bytes(), "t").await;
    let _ = h.resolver.dane(domain).await;
    h.answer(request.as_bytes(), "t").await
}

/// Asks until the answer is `want` (the DANE status learned), up to `limit`.
pub(crate) async fn until_answer(h: &Handler, domain: &str, want: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let got = h.answer(format!("postfix {domain}").as_bytes(), "t").await;
        if got == want || start.elapsed() > limit {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_first_lookup_answers_mta_sts_at_once_and_dane_once_learned() {
    let world = World::new().await;
    publish_dane(&world, "bg.test", 161);
    world.dns.set_dnssec_delay(DNSSEC_DELAY);
    let h = handler(&world, &config(&world, ""), false);

    let started = Instant::now();
    let first = h.answer(b"postfix bg.test", "t").await;
    let waited = started.elapsed();
    assert_eq!(first, sts("bg.test"));
    assert!(waited < AT_ONCE, "the first lookup waited {waited:?}");
    // More lookups while the DNSSEC answers are held back: all at once,
    // all MTA-STS, none starting DNSSEC queries of its own.
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(h.answer(b"postfix bg.test", "t").await, sts("bg.test"));
        assert!(t.elapsed() < AT_ONCE);
    }
    let learned = until_answer(&h, "bg.test", "OK dane-only", Duration::from_secs(8)).await;
    assert_eq!(learned, "OK dane-only");
    assert_eq!(world.dns.dnssec_queries("bg.test", RecordType::MX), 1);
    for host in ["mx1.bg.test", "mx2.bg.test"] {
        let name = format!("_25._tcp.{host}");
        assert_eq!(
            world.dns.dnssec_queries(&name, RecordType::TLSA),
            1,
            "{host}"
        );
    }
}

/// After a restart the policy is on disk and the DANE cache (memory only)
/// is empty: the MTA-STS answer is ready and is given without waiting.
#[tokio::test]
async fn after_a_restart_a_cached_policy_is_answered_without_waiting_for_dnssec() {
    let world = World::new().await;
    publish_dane(&world, "restart.test", 163);
    let config = config(&world, "");
    {
        let before = handler(&world, &config, false);
        let learned = until_answer(
            &before,
            "restart.test",
            "OK dane-only",
            Duration::from_secs(8),
        )
        .await;
        assert_eq!(learned, "OK dane-only");
    }
    // The store is closed with the last resolver; let its tasks end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    world.dns.set_dnssec_delay(DNSSEC_DELAY);
    world.dns.reset_queries();
    let h = handler(&world, &config, false);
    let started = Instant::now();
    let first = h.answer(b"postfix restart.test", "t").await;
    let waited = started.elapsed();
    assert_eq!(first, sts("restart.test"));
    assert!(waited < AT_ONCE, "the first lookup waited {waited:?}");
    assert_eq!(
        world.fetches("restart.test"),
        1,
        "the policy came from disk"
    );
    let learned = until_answer(&h, "restart.test", "OK dane-only", Duration::from_secs(8)).await;
    assert_eq!(learned, "OK dane-only");
}

/// Issue 13's cold-start budget, counted at the fixture DNS: N concurrent
/// first lookups of one new enforce domain on a `match_current_mx` map make
/// at most 4 queries before their answers (TXT, A and AAAA of the policy
/// host, MX), then one DNSSEC MX query and one TLSA query per MX host.
#[tokio::test]
async fn concurrent_first_lookups_make_four_queries_then_one_set_of_dane_queries() {
    const LOOKUPS: usize = 50;
    let world = World::new().await;
    publish_dane(&world, "cold.test", 165);
    world.dns.set_dnssec_delay(DNSSEC_DELAY);
    let h = handler(&world, &config(&world, ""), true);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..LOOKUPS {
        let h = h.clone();
        set.spawn(async move { h.answer(b"postfix cold.test", "t").await });
    }
    let answers = set.join_all().await;
    assert!(
        answers.iter().all(|a| *a == sts("cold.test")),
        "{answers:?}"
    );
    let (all, dnssec) = world.dns.total_queries();
    let plain = all - dnssec;
    assert!(plain <= 4, "{plain} plain queries before the answers");
    assert_eq!(world.dns.queries("_mta-sts.cold.test", RecordType::TXT), 1);
    assert_eq!(
        world.dns.queries("cold.test", RecordType::MX)
            - world.dns.dnssec_queries("cold.test", RecordType::MX),
        1
    );
    let learned = until_answer(&h, "cold.test", "OK dane-only", Duration::from_secs(8)).await;
    assert_eq!(learned, "OK dane-only");
    assert_eq!(world.dns.dnssec_queries("cold.test", RecordType::MX), 1);
    for host in ["mx1.cold.test", "mx2.cold.test"] {
        let name = format!("_25._tcp.{host}");
        assert_eq!(
            world.dns.dnssec_queries(&name, RecordType::TLSA),
            1,
            "{host}"
        );
    }
    assert_eq!(world.dns.total_queries().1, 3, "DNSSEC queries in all");
}

/// A flood of new enforce domains while the resolver sits on every DNSSEC
/// query: the background lookups running at once stay within
/// `cache.max_dane_lookups`, every lookup still answers at once, and a
/// domain whose lookups never answer is given up on at the DNS timeout and
/// asked again only after `mx_min_ttl`, freeing its slot.
#[tokio::test]
async fn a_resolver_that_stalls_dnssec_can_neither_pile_up_nor_delay_lookups() {
    const DOMAINS: usize = 12;
    const CAP: usize = 4;
    let world = World::new().await;
    let names: Vec<String> = (0..DOMAINS).map(|i| format!("f{i}.flood.test")).collect();
    for n in &names {
        publish_dane(&world, n, 170);
    }
    // A DNS timeout of 1 s; DNSSEC answers never come in time.
    let text = world.config_toml() + &format!("max_dane_lookups = {CAP}\nmx_min_ttl = \"1h\"\n");
    let config = Config::parse(&text, std::path::Path::new("flood.toml")).expect("config");
    let h = handler(&world, &config, false);
    // The policies first, with DANE off for that.
    for n in &names {
        crate::harness::expect_policy(&h.resolver.lookup(n).await.expect("lookup"));
    }
    world.dns.set_dnssec_delay(Duration::from_secs(3600));
    world.dns.reset_queries();

    let started = Instant::now();
    for n in &names {
        assert_eq!(
            h.answer(format!("postfix {n}").as_bytes(), "t").await,
            sts(n)
        );
    }
    assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
    // Let the background lookups send what they would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, dnssec) = world.dns.total_queries();
    assert_eq!(dnssec, CAP, "DNSSEC MX queries while the resolver stalls");

    // Each stalled lookup gives up at the DNS timeout (UDP, no answer), the
    // status is unknown (the MTA-STS answer stays) and kept, the slots free.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in &names {
        assert_eq!(
            h.answer(format!("postfix {n}").as_bytes(), "t").await,
            sts(n)
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in &names {
        assert_eq!(
            h.answer(format!("postfix {n}").as_bytes(), "t").await,
            sts(n)
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in &names {
        assert_eq!(
            h.answer(format!("postfix {n}").as_bytes(), "t").await,
            sts(n)
        );
    }
    for n in &names {
        assert_eq!(
            world.dns.dnssec_queries(n, RecordType::MX),
            1,
            "{n}: asked once, not again before mx_min_ttl"
        );
    }
}
