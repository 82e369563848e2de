//! Issue 13: DANE lookups are coalesced. However many lookups of a new
//! enforce domain arrive at once, the fixture DNS sees one MX query and one
//! TLSA query per MX host, from the socketmap and from the relay alike.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mta_sts_agent::config::{Config, DaneReply, MapConfig};
use mta_sts_agent::relay::Relay;
use mta_sts_agent::socketmap::connection::Handler;

use crate::dane::tlsa_3_1_1;
use crate::dane_background::until_answer;
use crate::harness::{policy, World};
use crate::relay::{ip, message, relay_toml, submit};
use crate::support::dns::RecordType;
use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};

const LOOKUPS: usize = 50;

/// Publishes `domain` with MX hosts `hosts` (at 127.0.0.x), each with
/// secure TLSA records, the MX and TLSA answers marked authenticated.
fn publish_dane(world: &World, domain: &str, hosts: &[(&str, u8, String)]) {
    let mx: Vec<(u16, &str)> = hosts
        .iter()
        .enumerate()
        .map(|(i, (h, _, _))| (10 * (i as u16 + 1), *h))
        .collect();
    world.dns.set_mx(domain, &mx);
    world.dns.set_authentic(domain, true);
    for (h, last, tlsa) in hosts {
        world.dns.set_a(h, &[ip(*last)]);
        let fields: Vec<&str> = tlsa.split(' ').collect();
        let data: Vec<u8> = (0..fields[3].len() / 2)
            .map(|i| u8::from_str_radix(&fields[3][2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let name = format!("_25._tcp.{h}");
        world.dns.set_tlsa(&name, &[(3, 1, 1, &data)]);
        world.dns.set_authentic(&name, true);
    }
    let names: Vec<&str> = hosts.iter().map(|(h, _, _)| *h).collect();
    world.publish(domain, "c1", &policy("enforce", &names, 86_400));
}

#[tokio::test]
async fn concurrent_first_socketmap_lookups_share_one_set_of_dane_queries() {
    let world = World::new().await;
    let h = socketmap_for_co(&world, false);
    let answers = ask_at_once(&h).await;
    // The MTA-STS answer is ready first: the DANE status is learned in the
    // background (crate::dane_background), then answered.
    let sts = "OK secure match=mx1.co.test:mx2.co.test servername=hostname";
    assert!(answers.iter().all(|a| a == sts), "{answers:?}");
    let learned = until_answer(&h, "co.test", "OK dane-only", Duration::from_secs(8)).await;
    assert_eq!(learned, "OK dane-only");
    assert_eq!(world.dns.queries("co.test", RecordType::MX), 1);
    for h in ["mx1.co.test", "mx2.co.test"] {
        assert_eq!(
            world
                .dns
                .queries(&format!("_25._tcp.{h}"), RecordType::TLSA),
            1,
            "{h}"
        );
    }
}

/// A domain whose MX records are unsigned, on a map with
/// `match_current_mx`: one DNSSEC MX query for the DANE status (no TLSA
/// query at all, RFC 7672 §2.2.1), and one plain query for the current MX
/// set, however many lookups arrive.
#[tokio::test]
async fn concurrent_first_lookups_share_the_current_mx_query_too() {
    let world = World::new().await;
    let h = socketmap_for_co(&world, true);
    world.dns.set_authentic("co.test", false);
    let answers = ask_at_once(&h).await;
    let want = "OK secure match=mx1.co.test:mx2.co.test servername=hostname";
    assert!(answers.iter().all(|a| a == want), "{answers:?}");
    // The background DANE lookup has sent its query once this returns.
    let _ = h.resolver.dane("co.test").await;
    assert_eq!(world.dns.queries("co.test", RecordType::MX), 2);
    for h in ["mx1.co.test", "mx2.co.test"] {
        assert_eq!(
            world
                .dns
                .queries(&format!("_25._tcp.{h}"), RecordType::TLSA),
            0,
            "{h}"
        );
    }
}

/// `co.test`: two MX hosts with authenticated TLSA, an enforce policy.
fn socketmap_for_co(world: &World, match_current_mx: bool) -> Arc<Handler> {
    let tlsa = format!("3 1 1 {}", "ab".repeat(32));
    publish_dane(
        world,
        "co.test",
        &[
            ("mx1.co.test", 151, tlsa.clone()),
            ("mx2.co.test", 152, tlsa),
        ],
    );
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
        resolver: world.resolver(),
        maps,
        idle_timeout: Duration::from_secs(10),
    })
}

async fn ask_at_once(h: &Arc<Handler>) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..LOOKUPS {
        let h = h.clone();
        set.spawn(async move { h.answer(b"postfix co.test", "t").await });
    }
    set.join_all().await
}

#[tokio::test]
async fn concurrent_relay_deliveries_share_one_mx_query_and_one_tlsa_query() {
    let world = World::new().await;
    // The relay routes by the MX answer only while its TTL lasts.
    world.dns.set_ttl(300);
    let (port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![(
            IpAddr::V4(ip(153)),
            SmtpOptions::new("mx1.corelay.test").cert(SmtpCert::SelfSigned),
        )],
    )
    .await;
    let tlsa = tlsa_3_1_1(mx[0].certificate().as_ref());
    publish_dane(&world, "corelay.test", &[("mx1.corelay.test", 153, tlsa)]);
    let text = format!("{}{}", world.config_toml(), relay_toml(port, ""));
    let config = Config::parse(&text, std::path::Path::new("coalesce.toml")).expect("config");
    let relay = Relay::open(&config, world.resolver_with(&config))
        .await
        .expect("relay");
    let queue = relay.queue.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(relay.serve(vec![listener], rx));

    const MESSAGES: usize = 10;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..MESSAGES {
        set.spawn(async move {
            let rcpt = "bob@corelay.test";
            let msg = message(&format!("c{i}"), "alice@sender.test", rcpt, "hi\r\n");
            submit(addr, "alice@sender.test", &[rcpt], &msg).await.code
        });
    }
    assert!(set.join_all().await.iter().all(|c| *c == 250));
    let mut delivered = false;
    for _ in 0..200 {
        if mx[0].messages().len() == MESSAGES {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    assert!(delivered, "queue: {:#?}", queue.list());
    assert!(mx[0].messages().iter().all(|m| m.tls));
    assert_eq!(world.dns.queries("corelay.test", RecordType::MX), 1);
    assert_eq!(
        world
            .dns
            .queries("_25._tcp.mx1.corelay.test", RecordType::TLSA),
        1
    );
}
