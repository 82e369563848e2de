//! DANE status and precedence (RFC 7672 §2.1-2.2, RFC 8461 §2) on the
//! in-memory DNS: which DNSSEC outcome leads to which rule per host.

use std::time::Duration;

use super::*;
use crate::dns::memory::{Fault, ZoneDns};
use crate::dns::RecordType;

const D: &str = "dane.test";
const HASH: &str = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1";

/// dane.test: two MX hosts, mx1 with a DANE-EE record, mx2 without TLSA.
/// Nothing is signed until a test signs it.
fn zone() -> ZoneDns {
    ZoneDns::from_zone(&format!(
        "dane.test. 300 IN MX 10 mx1.dane.test.\n\
         dane.test. 300 IN MX 20 mx2.dane.test.\n\
         _25._tcp.mx1.dane.test. 120 IN TLSA 3 1 1 {HASH}\n\
         mx2.dane.test. 300 IN A 192.0.2.2\n"
    ))
}

fn sign(zone: &ZoneDns, names: &[&str]) {
    for n in names {
        zone.sign(n);
    }
}

/// The MX RRset and both hosts' TLSA names are signed.
fn signed_zone() -> ZoneDns {
    let z = zone();
    sign(&z, &[D, "_25._tcp.mx1.dane.test", "_25._tcp.mx2.dane.test"]);
    z
}

fn dane(zone: &ZoneDns) -> Dane {
    Dane::new(Dns::new(zone.clone()), Duration::from_secs(30))
}

fn host<'a>(status: &'a DomainDane, name: &str) -> &'a HostDane {
    match status
        .hosts()
        .and_then(|h| h.iter().find(|(n, _)| n == name))
    {
        Some((_, s)) => s,
        None => panic!("{name} not in {status:?}"),
    }
}

#[tokio::test]
async fn a_signed_mx_rrset_with_signed_tlsa_is_dane_for_that_host() {
    let status = dane(&signed_zone()).domain(D).await;
    assert!(matches!(host(&status, "mx1.dane.test"), HostDane::Tlsa(r) if r.len() == 1));
    assert!(matches!(
        host_rule(Some(&status), "mx1.dane.test"),
        HostRule::Dane(_)
    ));
    assert!(status.applies());
}

#[tokio::test]
async fn a_host_without_tlsa_under_a_signed_mx_rrset_stays_under_mta_sts() {
    // RFC 7672 §2.2: a signed denial of TLSA leaves the host to MTA-STS.
    let status = dane(&signed_zone()).domain(D).await;
    assert!(
        matches!(host(&status, "mx2.dane.test"), HostDane::None(why) if why.contains("no TLSA records"))
    );
    assert_eq!(host_rule(Some(&status), "mx2.dane.test"), HostRule::MtaSts);
    assert!(!status.covers_every_host());
}

#[tokio::test]
async fn an_unsigned_mx_rrset_means_no_dane_and_no_tlsa_lookup() {
    // RFC 7672 §2.2.1: TLSA records of hosts named by an insecure answer
    // are never looked at, however well signed they are.
    let z = zone();
    sign(&z, &["_25._tcp.mx1.dane.test"]);
    let status = dane(&z).domain(D).await;
    assert!(matches!(&*status, DomainDane::NotApplicable(_)));
    assert_eq!(z.queries("_25._tcp.mx1.dane.test", RecordType::TLSA), 0);
    assert_eq!(host_rule(Some(&status), "mx1.dane.test"), HostRule::MtaSts);
}

#[tokio::test]
async fn a_bogus_or_failed_mx_lookup_is_indeterminate_and_weakens_nothing() {
    // RFC 7672 §2.1.1: the status is unknown; MTA-STS applies in full.
    for fault in [None, Some(Fault::ServFail), Some(Fault::Timeout)] {
        let z = signed_zone();
        match fault {
            None => z.bogus(D),
            Some(f) => z.fail(D, RecordType::MX, f),
        }
        let status = dane(&z).domain(D).await;
        assert!(
            matches!(&*status, DomainDane::Indeterminate(_)),
            "{fault:?}"
        );
        assert_eq!(host_rule(Some(&status), "mx1.dane.test"), HostRule::MtaSts);
        assert_eq!(z.queries("_25._tcp.mx1.dane.test", RecordType::TLSA), 0);
    }
}

#[tokio::test]
async fn an_unsigned_tlsa_answer_is_no_dane_for_that_host() {
    let z = zone();
    sign(&z, &[D]);
    let status = dane(&z).domain(D).await;
    assert!(
        matches!(host(&status, "mx1.dane.test"), HostDane::None(why) if why.contains("not DNSSEC-authenticated"))
    );
    assert!(!status.applies());
}

#[tokio::test]
async fn a_failed_tlsa_lookup_takes_the_host_out() {
    // RFC 7672 §2.1.1: a host of a secure MX RRset whose TLSA lookup
    // fails or is bogus is not used, never downgraded to MTA-STS.
    for bogus in [false, true] {
        let z = signed_zone();
        if bogus {
            z.bogus("_25._tcp.mx1.dane.test");
        } else {
            z.fail("_25._tcp.mx1.dane.test", RecordType::TLSA, Fault::ServFail);
        }
        let status = dane(&z).domain(D).await;
        assert!(matches!(
            host(&status, "mx1.dane.test"),
            HostDane::Indeterminate(_)
        ));
        assert!(matches!(
            host_rule(Some(&status), "mx1.dane.test"),
            HostRule::Skip(_)
        ));
        assert_eq!(host_rule(Some(&status), "mx2.dane.test"), HostRule::MtaSts);
    }
}

#[tokio::test]
async fn only_usable_tlsa_records_count() {
    // RFC 7672 §3.1: PKIX-TA(0) and PKIX-EE(1) are not for SMTP.
    let z = signed_zone();
    z.load(&format!(
        "_25._tcp.mx1.dane.test. 120 IN TLSA 1 1 1 {HASH}\n\
         _25._tcp.mx2.dane.test. 120 IN TLSA 0 0 1 {HASH}\n\
         _25._tcp.mx2.dane.test. 120 IN TLSA 2 0 1 {HASH}\n"
    ));
    let status = dane(&z).domain(D).await;
    assert!(
        matches!(host(&status, "mx1.dane.test"), HostDane::None(why) if why.contains("no usable"))
    );
    let HostDane::Tlsa(records) = host(&status, "mx2.dane.test") else {
        panic!("mx2 has a usable DANE-TA record");
    };
    assert_eq!(records.iter().map(|r| r.usage).collect::<Vec<_>>(), [2]);
}

#[tokio::test]
async fn a_signed_domain_without_mx_records_is_its_own_host() {
    // RFC 7672 §2.2.1 with RFC 5321 §5.1's implicit MX.
    let z = ZoneDns::from_zone(&format!(
        "solo.test. 300 IN A 192.0.2.9\n_25._tcp.solo.test. 120 IN TLSA 3 1 1 {HASH}\n"
    ));
    sign(&z, &["solo.test", "_25._tcp.solo.test"]);
    let status = dane(&z).domain("solo.test").await;
    assert!(matches!(host(&status, "solo.test"), HostDane::Tlsa(_)));
    // A signed NXDOMAIN: nothing to protect.
    z.sign("gone.test");
    let missing = dane(&z).domain("gone.test").await;
    assert!(matches!(&*missing, DomainDane::NotApplicable(why) if why.contains("does not exist")));
}

#[tokio::test]
async fn hosts_come_in_preference_order_once_and_a_null_mx_names_none() {
    let z = ZoneDns::from_zone(
        "dup.test. 300 IN MX 20 b.dup.test.\n\
         dup.test. 300 IN MX 10 a.dup.test.\n\
         dup.test. 300 IN MX 30 A.dup.test.\n\
         nomail.test. 300 IN MX 0 .\n",
    );
    sign(&z, &["dup.test", "nomail.test"]);
    let d = dane(&z);
    let dup = d.domain("dup.test").await;
    let names: Vec<&str> = dup
        .hosts()
        .expect("secure")
        .iter()
        .map(|(h, _)| h.as_str())
        .collect();
    assert_eq!(names, ["a.dup.test", "b.dup.test"]);
    let none = d.domain("nomail.test").await;
    assert_eq!(none.hosts().map(<[_]>::len), Some(0));
    assert!(!none.applies());
}

#[tokio::test]
async fn only_the_first_hosts_of_a_huge_rrset_are_looked_up() {
    // MAX_TLSA_HOSTS: the rest count as failed lookups (never weaker).
    let mut text = String::new();
    for i in 0..MAX_TLSA_HOSTS + 3 {
        text.push_str(&format!("big.test. 300 IN MX {i} mx{i}.big.test.\n"));
    }
    let z = ZoneDns::from_zone(&text);
    z.sign("big.test");
    let status = dane(&z).domain("big.test").await;
    let hosts = status.hosts().expect("secure");
    assert_eq!(hosts.len(), MAX_TLSA_HOSTS + 3);
    let last = format!("mx{}.big.test", MAX_TLSA_HOSTS);
    assert!(
        matches!(host(&status, &last), HostDane::Indeterminate(why) if why.contains("not looked up"))
    );
    assert_eq!(z.queries(&format!("_25._tcp.{last}"), RecordType::TLSA), 0);
    assert_eq!(z.queries("_25._tcp.mx0.big.test", RecordType::TLSA), 1);
}

#[tokio::test]
async fn concurrent_first_lookups_share_one_set_of_queries_and_then_the_cache() {
    // Issue 13: a cold start asked each MX and TLSA RRset ~50 times.
    let z = signed_zone();
    z.delay(D, Duration::from_millis(50));
    let d = dane(&z);
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let d = d.clone();
        lookups.spawn(async move { d.domain(D).await });
    }
    while let Some(done) = lookups.join_next().await {
        assert!(done.expect("task").applies());
    }
    d.domain(D).await;
    assert_eq!(z.queries(D, RecordType::MX), 1);
    assert_eq!(z.queries("_25._tcp.mx1.dane.test", RecordType::TLSA), 1);
    assert_eq!(z.queries("_25._tcp.mx2.dane.test", RecordType::TLSA), 1);
}

#[tokio::test]
async fn known_never_waits_and_learns_in_the_background() {
    let z = signed_zone();
    z.delay(D, Duration::from_millis(50));
    let d = dane(&z);
    assert!(d.known(D).await.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(d.known(D).await.is_some_and(|s| s.applies()));
    assert_eq!(z.queries(D, RecordType::MX), 1);
}

#[tokio::test]
async fn past_the_background_limit_a_lookup_starts_nothing() {
    let z = signed_zone();
    z.load("other.test. 300 IN MX 10 mx.other.test.\n");
    z.delay(D, Duration::from_millis(100));
    let d = Dane::with_background_limit(Dns::new(z.clone()), Duration::from_secs(30), 1);
    assert!(d.known(D).await.is_none());
    assert!(d.known("other.test").await.is_none());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(z.queries("other.test", RecordType::MX), 0);
    assert!(d.known(D).await.is_some());
}

#[tokio::test]
async fn the_decided_mx_answer_is_handed_on_signed_or_not() {
    // The relay routes by the MX answer DANE was decided on: no second
    // query, and an unsigned answer is still the answer to route by.
    for signed in [true, false] {
        let z = if signed { signed_zone() } else { zone() };
        let (_, mx) = dane(&z).domain_and_mx(D).await;
        let mx = mx.expect("decided MX answer");
        let hosts = mx.mx_hosts(D);
        assert_eq!(
            hosts,
            MxHosts::Hosts(vec!["mx1.dane.test".into(), "mx2.dane.test".into()])
        );
    }
    let z = signed_zone();
    z.fail(D, RecordType::MX, Fault::ServFail);
    assert!(dane(&z).domain_and_mx(D).await.1.is_none());
}

#[tokio::test]
async fn a_forged_mx_answer_cannot_add_a_host_to_a_signed_rrset() {
    // RFC 8461 §10's attacker controls unsigned answers; with a secure MX
    // RRset, the hosts tried are its own (RFC 7672 §2.2.1).
    let status = dane(&signed_zone()).domain(D).await;
    let tried = hosts_to_try(vec!["mx.evil.test".to_string()], Some(&status));
    assert_eq!(tried, ["mx1.dane.test", "mx2.dane.test"]);
    assert!(matches!(
        host_rule(Some(&status), "mx.evil.test"),
        HostRule::Skip(_)
    ));
}
