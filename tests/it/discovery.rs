//! RFC 8461 §3.1 discovery through the resolver, against the fixture DNS: which
//! TXT answers mean a policy, which mean none, and which mean "try later".

use std::net::Ipv4Addr;

use mta_sts_agent::resolver::NoPolicy;

use crate::harness::{expect_no_policy, expect_policy, policy, World};
use crate::support::dns::{Fault, RecordType};
use crate::support::https::Behavior;

fn enforce(domain: &str) -> String {
    policy("enforce", &[&format!("mx.{domain}")], 86400)
}

/// Publishes the policy host but lets the test write the TXT records.
fn host_only(w: &World, domain: &str) {
    w.dns
        .set_a(&format!("mta-sts.{domain}"), &[Ipv4Addr::LOCALHOST]);
    w.hosts.set(
        &format!("mta-sts.{domain}"),
        Behavior::Policy(enforce(domain)),
    );
}

#[tokio::test]
async fn record_split_over_several_strings_is_joined() {
    let w = World::new().await;
    host_only(&w, "split.test");
    w.dns
        .set_txt("_mta-sts.split.test", &[&["v=STSv1; i", "d=2024", "0101"]]);
    let r = w.resolver();
    let a = r.lookup("split.test").await.unwrap();
    assert_eq!(expect_policy(&a).id, "20240101");
}

#[tokio::test]
async fn whitespace_and_extensions_are_accepted_and_other_txt_ignored() {
    let w = World::new().await;
    host_only(&w, "ws.test");
    w.dns.set_txt(
        "_mta-sts.ws.test",
        &[
            &["v=spf1 -all"],
            &["v=STSv1 ;\tid=abc ; ext=1 ;"],
            &["hello"],
        ],
    );
    let a = w.resolver().lookup("ws.test").await.unwrap();
    assert_eq!(expect_policy(&a).id, "abc");
}

#[tokio::test]
async fn unusable_records_mean_no_policy_and_no_fetch() {
    let cases: &[(&str, &[&[&str]])] = &[
        ("spf.test", &[&["v=spf1 include:_spf.example -all"]]),
        ("two.test", &[&["v=STSv1; id=1"], &["v=STSv1; id=2"]]),
        ("notfirst.test", &[&["id=1; v=STSv1"]]),
        ("badid.test", &[&["v=STSv1; id=not-alnum!"]]),
        (
            "longid.test",
            &[&["v=STSv1; id=123456789012345678901234567890123"]],
        ),
        ("noid.test", &[&["v=STSv1;"]]),
        // RFC 8461 §3.1's ABNF: WSP only around ';', at most one ';' at the end.
        ("trailingwsp.test", &[&["v=STSv1; id=1 "]]),
        ("emptyfield.test", &[&["v=STSv1; id=1;;"]]),
        ("version.test", &[&["v=STSv10; id=1"]]),
    ];
    let w = World::new().await;
    let r = w.resolver();
    for (domain, records) in cases {
        host_only(&w, domain);
        w.dns.set_txt(&format!("_mta-sts.{domain}"), records);
        let a = r.lookup(domain).await.unwrap();
        assert!(
            matches!(expect_no_policy(&a), NoPolicy::NoRecord(_)),
            "{domain}: {a:?}"
        );
        assert_eq!(
            w.fetches(domain),
            0,
            "{domain}: fetched despite an unusable record"
        );
    }
}

#[tokio::test]
async fn nxdomain_and_nodata_mean_no_policy() {
    let w = World::new().await;
    let r = w.resolver();
    let a = r.lookup("nothing.test").await.unwrap();
    assert!(
        matches!(expect_no_policy(&a), NoPolicy::NoRecord(_)),
        "{a:?}"
    );
    // The name exists with another type only (NODATA).
    w.dns.set_a("_mta-sts.nodata.test", &[Ipv4Addr::LOCALHOST]);
    let a = r.lookup("nodata.test").await.unwrap();
    assert!(
        matches!(expect_no_policy(&a), NoPolicy::NoRecord(_)),
        "{a:?}"
    );
}

#[tokio::test]
async fn cname_is_followed() {
    let w = World::new().await;
    host_only(&w, "alias.test");
    w.dns
        .set_cname("_mta-sts.alias.test", "_mta-sts.provider.test");
    w.dns
        .set_txt("_mta-sts.provider.test", &[&["v=STSv1; id=viacname"]]);
    let a = w.resolver().lookup("alias.test").await.unwrap();
    let p = expect_policy(&a);
    assert_eq!(p.id, "viacname");
    // The policy still comes from mta-sts.<the recipient domain>.
    assert_eq!(w.fetches("alias.test"), 1);
}

#[tokio::test]
async fn servfail_is_a_temporary_failure_not_no_record() {
    let w = World::new().await;
    host_only(&w, "broken.test");
    w.dns.set_txt("_mta-sts.broken.test", &[&["v=STSv1; id=1"]]);
    w.dns
        .set_fault("_mta-sts.broken.test", Some(Fault::ServFail));
    let a = w.resolver().lookup("broken.test").await.unwrap();
    assert!(
        matches!(expect_no_policy(&a), NoPolicy::Backoff(_)),
        "{a:?}"
    );
    assert_eq!(w.fetches("broken.test"), 0);
}

#[tokio::test]
async fn dns_timeout_is_a_temporary_failure() {
    let w = World::new().await;
    w.dns.set_fault("_mta-sts.slow.test", Some(Fault::Drop));
    let a = w.resolver().lookup("slow.test").await.unwrap();
    assert!(
        matches!(expect_no_policy(&a), NoPolicy::Backoff(_)),
        "{a:?}"
    );
}

#[tokio::test]
async fn idn_domains_are_looked_up_in_a_label_form() {
    let w = World::new().await;
    let ace = "xn--bcher-kva.test";
    w.publish(ace, "idn", &policy("enforce", &["mx.bücher.test"], 600));
    let a = w.resolver().lookup("BÜCHER.test.").await.unwrap();
    let p = expect_policy(&a);
    assert_eq!(p.domain, ace);
    assert!(p.policy.allows_mx("mx.xn--bcher-kva.test"));
    assert!(w.dns.queries(&format!("_mta-sts.{ace}"), RecordType::TXT) >= 1);
}
