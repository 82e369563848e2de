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
    let tlsa = format!("3 1 1 {}", "ab".repeat(32));
    publish_dane(
        &world,
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
            ..MapConfig::default()
        },
    );
    let h = Arc::new(Handler {
        resolver: world.resolver(),
        maps,
        idle_timeout: Duration::from_secs(10),
    });
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..LOOKUPS {
        let h = h.clone();
        set.spawn(async move { h.answer(b"postfix co.test", "t").await });
    }
    let answers = set.join_all().await;
    assert!(answers.iter().all(|a| a == "OK dane-only"), "{answers:?}");
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

#[tokio::test]
async fn concurrent_relay_deliveries_share_one_mx_query_and_one_tlsa_query() {
    let world = World::new().await;
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
