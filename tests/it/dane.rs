//! DANE takes precedence over MTA-STS (RFC 8461 §2), with real DNSSEC:
//! zones signed at test time, served by NSD, validated by Unbound, which is
//! the resolver the agent is configured with.

use std::collections::BTreeMap;
use std::time::Duration;

use mta_sts_agent::config::{Config, DaneReply, MapConfig};
use mta_sts_agent::socketmap::connection::Handler;

use crate::dane_background::settled;
use crate::harness::{policy, World};
use crate::support::dnssec::{self, SignedDns, Signing, ZoneSpec};
use crate::support::https::Behavior;

/// Zone lines for a domain with an enforce policy for `mx1.<domain>` at
/// 127.0.0.`last`, and the given TLSA record for it.
fn zone(name: &str, last: u8, tlsa: &str, signing: Signing) -> ZoneSpec {
    ZoneSpec {
        name: name.to_string(),
        records: vec![
            format!("@ IN MX 10 mx1.{name}."),
            format!("mx1 IN A 127.0.0.{last}"),
            format!("_25._tcp.mx1 IN TLSA {tlsa}"),
            "_mta-sts IN TXT \"v=STSv1; id=d1\"".to_string(),
            "mta-sts IN A 127.0.0.1".to_string(),
        ],
        signing,
    }
}

/// TLSA `3 1 1`: SHA-256 of the certificate's public key (DANE-EE).
pub(crate) fn tlsa_3_1_1(cert: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert).expect("parse certificate");
    let digest = ring::digest::digest(&ring::digest::SHA256, c.tbs_certificate.subject_pki.raw);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("3 1 1 {hex}")
}

/// Secure, insecure, bogus (the TLSA record changed after signing) and
/// secure-but-unusable (PKIX usage) domains, MX hosts at 127.0.0.71-74.
fn four_zones() -> Vec<ZoneSpec> {
    vec![
        zone("secure.test", 71, ANY_TLSA, Signing::Secure),
        zone("insecure.test", 72, ANY_TLSA, Signing::Insecure),
        zone(
            "bogus.test",
            73,
            ANY_TLSA,
            Signing::Tampered {
                from: ANY_TLSA[6..].to_string(),
                to: OTHER_TLSA[6..].to_string(),
            },
        ),
        zone(
            "pkix.test",
            74,
            "1 1 1 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
            Signing::Secure,
        ),
    ]
}

const ANY_TLSA: &str = "3 1 1 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
const OTHER_TLSA: &str = "3 1 1 ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// The world's config with the validating resolver as the only DNS.
pub(crate) fn config_with(world: &World, dns: &SignedDns, extra: &str) -> Config {
    let text = world
        .config_toml()
        .replace(&world.dns.addr.to_string(), &dns.addr.to_string())
        + extra;
    Config::parse(&text, std::path::Path::new("dane.toml")).expect("config")
}

fn handler(config: &Config, dane: DaneReply) -> Handler {
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

#[tokio::test]
async fn socketmap_lets_dane_win_over_mta_sts_only_when_dnssec_says_so() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let dns = SignedDns::start(&four_zones()).await;
    for d in ["secure.test", "insecure.test", "bogus.test", "pkix.test"] {
        world.hosts.set(
            &format!("mta-sts.{d}"),
            Behavior::Policy(policy("enforce", &[&format!("mx1.{d}")], 86_400)),
        );
    }
    let config = config_with(&world, &dns, "");
    let h = handler(&config, DaneReply::DaneOnly);

    // Secure MX and TLSA: DANE wins.
    assert_eq!(settled(&h, "secure.test").await, "OK dane-only");
    // Insecure zone: the MTA-STS answer, unchanged.
    assert_eq!(
        settled(&h, "insecure.test").await,
        "OK secure match=mx1.insecure.test servername=hostname"
    );
    // Bogus TLSA signature: the resolver answers SERVFAIL, DANE status is
    // unknown, and the answer stays MTA-STS's validated TLS (never weaker).
    assert_eq!(
        settled(&h, "bogus.test").await,
        "OK secure match=mx1.bogus.test servername=hostname"
    );
    // Unusable TLSA (PKIX-EE) in a signed zone: DANE does not apply.
    assert_eq!(
        settled(&h, "pkix.test").await,
        "OK secure match=mx1.pkix.test servername=hostname"
    );
    // What the shared DANE lookups concluded, per case.
    use mta_sts_agent::dane::{DomainDane, HostDane};
    let status = |d: &'static str| {
        let r = h.resolver.clone();
        async move { r.dane(d).await.expect("within the deadline") }
    };
    assert!(status("secure.test").await.applies());
    assert!(matches!(
        *status("insecure.test").await,
        DomainDane::NotApplicable(_)
    ));
    // Bogus TLSA in a signed zone: the MX RRset is authenticated and its
    // one host's TLSA status is unknown (that host is then not used).
    let bogus = status("bogus.test").await;
    assert!(
        matches!(bogus.hosts(), Some([(h, HostDane::Indeterminate(_))]) if h == "mx1.bogus.test"),
        "{bogus:?}"
    );
    assert!(!bogus.applies());
    // Unusable TLSA: authenticated MX RRset, no DANE for its host.
    let pkix = status("pkix.test").await;
    assert!(
        matches!(pkix.hosts(), Some([(h, HostDane::None(_))]) if h == "mx1.pkix.test"),
        "{pkix:?}"
    );
    assert!(!pkix.applies());
    drop(h);

    // The per-map choices.
    for (choice, want) in [
        (DaneReply::Dane, "OK dane"),
        (DaneReply::Notfound, "NOTFOUND "),
        (
            DaneReply::Off,
            "OK secure match=mx1.secure.test servername=hostname",
        ),
    ] {
        let h = handler(&config, choice);
        assert_eq!(settled(&h, "secure.test").await, want, "{choice:?}");
    }
}

#[test]
fn dane_map_option_parses() {
    let c = Config::parse(
        "[socketmap.maps.postfix]\ndane = \"notfound\"\n[socketmap.maps.other]\n",
        std::path::Path::new("t.toml"),
    )
    .expect("config");
    assert_eq!(c.socketmap.maps["postfix"].dane, DaneReply::Notfound);
    assert_eq!(c.socketmap.maps["other"].dane, DaneReply::DaneOnly);
    let err = Config::parse(
        "[socketmap.maps.postfix]\ndane = \"maybe\"\n",
        std::path::Path::new("t.toml"),
    )
    .expect_err("bad value")
    .to_string();
    assert!(err.contains("dane-only"), "{err}");
}

#[tokio::test]
async fn relay_verifies_dane_ee_certificates_against_tlsa_and_never_falls_back() {
    use crate::relay::{ip, message, relay_toml, submit};
    use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};
    use mta_sts_agent::relay::Relay;
    use std::net::IpAddr;

    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    // Self-signed certificates: WebPKI would refuse both; DANE-EE decides.
    let (port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (
                IpAddr::V4(ip(81)),
                SmtpOptions::new("mx1.daneok.test").cert(SmtpCert::SelfSigned),
            ),
            (
                IpAddr::V4(ip(82)),
                SmtpOptions::new("mx1.danebad.test").cert(SmtpCert::SelfSigned),
            ),
            (
                IpAddr::V4(ip(83)),
                SmtpOptions::new("mx1.daneplain.test").starttls(false),
            ),
        ],
    )
    .await;
    let good = tlsa_3_1_1(mx[0].certificate().as_ref());
    let dns = SignedDns::start(&[
        zone("daneok.test", 81, &good, Signing::Secure),
        zone("danebad.test", 82, OTHER_TLSA, Signing::Secure),
        zone("daneplain.test", 83, &good, Signing::Secure),
    ])
    .await;
    // daneok.test also has an enforce policy that does not list its MX:
    // DANE takes precedence for a host with TLSA records.
    world.hosts.set(
        "mta-sts.daneok.test",
        Behavior::Policy(policy("enforce", &["other.daneok.test"], 86_400)),
    );
    for d in ["danebad.test", "daneplain.test"] {
        world.hosts.set(
            &format!("mta-sts.{d}"),
            Behavior::Policy(policy("none", &[], 86_400)),
        );
    }
    let config = config_with(&world, &dns, &relay_toml(port, ""));
    let resolver = world.resolver_with(&config);
    let relay = Relay::open(&config, resolver).await.expect("relay");
    let queue = relay.queue.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(relay.serve(vec![listener], rx));

    for (id, rcpt) in [
        ("ok", "bob@daneok.test"),
        ("bad", "bob@danebad.test"),
        ("plain", "bob@daneplain.test"),
    ] {
        let msg = message(id, "alice@sender.test", rcpt, "hi\r\n");
        let reply = submit(addr, "alice@sender.test", &[rcpt], &msg).await;
        assert_eq!(reply.code, 250, "{reply}");
    }
    let q = queue.clone();
    let settled = crate::harness::eventually(Duration::from_secs(20), || {
        let q = q.clone();
        async move {
            let list = q.list();
            list.len() == 2
                && list.iter().all(|m| {
                    m.recipients[0]
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains("DANE"))
                })
        }
    })
    .await;
    let list = queue.list();
    task.abort();
    assert!(settled, "queue: {list:#?}");
    // Matching TLSA: delivered over TLS despite the self-signed certificate
    // and the MTA-STS pattern that does not list the host.
    assert_eq!(mx[0].messages().len(), 1);
    assert!(mx[0].messages()[0].tls);
    // Mismatching TLSA: deferred after the handshake, nothing sent.
    assert!(mx[1].tls_handshakes() >= 1);
    assert!(mx[1].messages().is_empty());
    assert!(!mx[1].commands().iter().any(|c| c.starts_with("MAIL")));
    // TLSA but no STARTTLS: deferred, never plaintext (the MTA-STS policy
    // of this domain is `none`).
    assert!(mx[2].messages().is_empty());
    let reasons: Vec<String> = list
        .iter()
        .filter_map(|m| m.recipients[0].reason.clone())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("matches none of its 1 TLSA records")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("STARTTLS not offered (DANE)")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn check_reports_dane_per_mx_with_the_same_rule() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let dns = SignedDns::start(&four_zones()).await;
    for (domain, code) in [
        ("secure.test", "dane-tlsa"),
        ("insecure.test", "dane-tlsa-unvalidated"),
        ("bogus.test", "dane-lookup-failed"),
        ("pkix.test", "dane-tlsa-unusable"),
    ] {
        world.hosts.set(
            &format!("mta-sts.{domain}"),
            Behavior::Policy(policy("enforce", &[&format!("mx1.{domain}")], 86_400)),
        );
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-check"))
            .args([
                "--dns-server",
                &dns.addr.to_string(),
                "--https-port",
                &world.hosts.addr.port().to_string(),
                "--ca-file",
                &world.ca_path.display().to_string(),
                "--ca-file-only",
                "--timeout",
                "2s",
                "--json",
                domain,
            ])
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("run mta-sts-check");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{domain}: {e} (exit {:?})\nstdout:\n{}\nstderr:\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let found = j["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["code"].as_str().is_some_and(|c| c.starts_with("dane-")))
            .cloned();
        let found = found.unwrap_or_else(|| panic!("{domain}: no dane finding in {j:#}"));
        assert_eq!(found["code"], code, "{domain}: {found:#}");
        assert_eq!(found["host"], format!("mx1.{domain}"), "{found:#}");
    }
}

/// Validated TLSA for a host in a signed zone is not DANE for a domain whose
/// MX records are unsigned (RFC 7672 §2.2): the check says so instead of
/// telling the owner that senders use DANE.
#[tokio::test]
async fn check_says_tlsa_does_not_count_under_an_unsigned_mx_rrset() {
    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let zones = vec![
        ZoneSpec {
            name: "plainmx.test".to_string(),
            records: vec![
                "@ IN MX 10 mx1.signedhost.test.".to_string(),
                "_mta-sts IN TXT \"v=STSv1; id=d1\"".to_string(),
                "mta-sts IN A 127.0.0.1".to_string(),
            ],
            signing: Signing::Insecure,
        },
        ZoneSpec {
            name: "signedhost.test".to_string(),
            records: vec![
                "mx1 IN A 127.0.0.75".to_string(),
                format!("_25._tcp.mx1 IN TLSA {ANY_TLSA}"),
            ],
            signing: Signing::Secure,
        },
    ];
    let dns = SignedDns::start(&zones).await;
    world.hosts.set(
        "mta-sts.plainmx.test",
        Behavior::Policy(policy("enforce", &["mx1.signedhost.test"], 86_400)),
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-check"))
        .args([
            "--dns-server",
            &dns.addr.to_string(),
            "--https-port",
            &world.hosts.addr.port().to_string(),
            "--ca-file",
            &world.ca_path.display().to_string(),
            "--ca-file-only",
            "--timeout",
            "2s",
            "--no-smtp",
            "--json",
            "plainmx.test",
        ])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run mta-sts-check");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let dane: Vec<&serde_json::Value> = j["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"].as_str().is_some_and(|c| c.starts_with("dane-")))
        .collect();
    assert_eq!(dane.len(), 1, "{dane:#?}");
    assert_eq!(dane[0]["code"], "dane-tlsa-mx-unvalidated", "{:#}", dane[0]);
    assert_eq!(dane[0]["severity"], "warning", "{:#}", dane[0]);
    assert_eq!(dane[0]["host"], "mx1.signedhost.test", "{:#}", dane[0]);
}

/// TLSA `usage selector 1 hex(SHA-256)` for the full certificate (selector 0).
fn tlsa_record(usage: u8, selector: u8, der: &[u8]) -> mta_sts_agent::dns::TlsaRecord {
    let data = if selector == 0 {
        der.to_vec()
    } else {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("parse");
        c.tbs_certificate.subject_pki.raw.to_vec()
    };
    mta_sts_agent::dns::TlsaRecord {
        usage,
        selector,
        matching: 1,
        data: ring::digest::digest(&ring::digest::SHA256, &data)
            .as_ref()
            .to_vec(),
    }
}

#[test]
fn dane_ta_and_ee_follow_rfc_7672_section_3() {
    use mta_sts_agent::dane::verify_chain;
    crate::support::install_crypto();
    let ca = crate::support::ca::TestCa::new();
    let ca_der = ca.cert_der();
    let leaf = ca.issue(&["mx1.ta.test"]).chain[0].clone();
    let expired = ca.issue_expired(&["mx1.ta.test"]).chain[0].clone();
    let ta = tlsa_record(2, 0, ca_der.as_ref());

    // DANE-TA: the anchor is in the chain and the leaf is valid under it
    // for the MX name.
    let chain = [leaf.clone(), ca_der.clone()];
    assert_eq!(
        verify_chain(&chain, std::slice::from_ref(&ta), "mx1.ta.test"),
        Ok(())
    );
    // ... but not for another name, not expired, and not when the server
    // leaves the anchor out of its chain.
    assert!(verify_chain(&chain, std::slice::from_ref(&ta), "mx2.ta.test").is_err());
    assert!(verify_chain(
        &[expired.clone(), ca_der.clone()],
        std::slice::from_ref(&ta),
        "mx1.ta.test"
    )
    .is_err());
    assert!(verify_chain(
        std::slice::from_ref(&leaf),
        std::slice::from_ref(&ta),
        "mx1.ta.test"
    )
    .is_err());
    // A TA record for another CA does not match.
    let other = crate::support::ca::TestCa::new();
    let other_ta = tlsa_record(2, 1, other.cert_der().as_ref());
    assert!(verify_chain(&chain, &[other_ta], "mx1.ta.test").is_err());

    // DANE-EE: the leaf's key alone; name and dates do not matter.
    let ee = tlsa_record(3, 1, expired.as_ref());
    assert_eq!(
        verify_chain(
            std::slice::from_ref(&expired),
            std::slice::from_ref(&ee),
            "any.name.test"
        ),
        Ok(())
    );
    assert!(verify_chain(&[leaf], &[ee], "mx1.ta.test").is_err());
}

/// RFC 8689 §4.2.1: a DANE-authenticated MX is good enough for REQUIRETLS
/// even where the MTA-STS policy is `none`; and `TLS-Required: No` (§5)
/// waives DANE, so a host whose TLSA records do not match still gets the
/// message, over opportunistic TLS.
#[tokio::test]
async fn relay_requiretls_accepts_dane_and_tls_required_no_waives_it() {
    use crate::relay::{ip, message, relay_toml, submit};
    use crate::relay_requiretls::{relay_cert, submit_tls};
    use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};
    use mta_sts_agent::relay::Relay;
    use std::net::IpAddr;

    if !dnssec::available() {
        return;
    }
    let world = World::new().await;
    let (port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (
                IpAddr::V4(ip(84)),
                SmtpOptions::new("mx1.danert.test")
                    .cert(SmtpCert::SelfSigned)
                    .requiretls(true),
            ),
            (
                IpAddr::V4(ip(85)),
                SmtpOptions::new("mx1.danewaive.test").cert(SmtpCert::SelfSigned),
            ),
        ],
    )
    .await;
    let good = tlsa_3_1_1(mx[0].certificate().as_ref());
    let dns = SignedDns::start(&[
        zone("danert.test", 84, &good, Signing::Secure),
        zone("danewaive.test", 85, OTHER_TLSA, Signing::Secure),
    ])
    .await;
    for d in ["danert.test", "danewaive.test"] {
        world.hosts.set(
            &format!("mta-sts.{d}"),
            Behavior::Policy(policy("none", &[], 86_400)),
        );
    }
    let cert = relay_cert();
    let config = config_with(&world, &dns, &relay_toml(port, &cert.extra));
    let resolver = world.resolver_with(&config);
    let relay = Relay::open(&config, resolver).await.expect("relay");
    let queue = relay.queue.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(relay.serve(vec![listener], rx));

    let msg = message("dane-rt", "alice@sender.test", "bob@danert.test", "x\r\n");
    let reply = submit_tls(
        addr,
        &cert.ca,
        "MAIL FROM:<alice@sender.test> REQUIRETLS",
        &["RCPT TO:<bob@danert.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let msg = format!(
        "TLS-Required: No\r\n{}",
        message(
            "dane-no",
            "alice@sender.test",
            "bob@danewaive.test",
            "x\r\n"
        )
    );
    let reply = submit(addr, "alice@sender.test", &["bob@danewaive.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    let q = queue.clone();
    let done = crate::harness::eventually(Duration::from_secs(20), || {
        let q = q.clone();
        async move { q.is_empty() }
    })
    .await;
    let list = queue.list();
    task.abort();
    assert!(done, "queue: {list:#?}");
    let got = mx[0].messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert!(
        got[0].mail_line.ends_with(" REQUIRETLS"),
        "{}",
        got[0].mail_line
    );
    assert_eq!(
        mx[1].messages().len(),
        1,
        "TLS-Required: No did not waive DANE"
    );
}
