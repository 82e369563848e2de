//! Section 3: the MX set (through `policy::MxHosts`), policy matching,
//! addresses and DANE of each host, without SMTP probes.

use std::time::Duration;

use super::{codes, only, severity, zone};
use crate::check::findings::{Findings, Severity};
use crate::check::mx::{check, MxOutcome, Scope};
use crate::check::progress::Progress;
use crate::dns::Dns;
use crate::policy::{parse_policy, Policy};
use crate::tlsprobe::TlsProber;

const D: &str = "example.test";

fn policy(mode: &str, mx: &str) -> Policy {
    let body = format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n");
    parse_policy(body.as_bytes()).expect("valid").policy
}

/// The MX section for `D` with `--no-smtp`.
async fn run(dns: &Dns, policy: Option<&Policy>, sts_published: bool) -> (Findings, MxOutcome) {
    let prober = TlsProber::with_roots(
        rustls::RootCertStore::empty(),
        "no trust anchors".into(),
        Duration::from_secs(1),
    );
    let scope = Scope {
        domain: D,
        policy,
        sts_published,
        smtp: None,
    };
    let mut f = Findings::default();
    let outcome = check(&mut f, dns, &prober, &Progress::none(), &scope).await;
    (f, outcome)
}

#[tokio::test]
async fn hosts_in_preference_order_each_once() {
    let (_, dns) = zone(
        "example.test. 300 IN MX 20 mx2.example.test.\n\
         example.test. 300 IN MX 10 mx1.example.test.\n\
         example.test. 300 IN MX 30 mx1.example.test.\n\
         mx1.example.test. 300 IN A 192.0.2.1\n\
         mx1.example.test. 300 IN AAAA 2001:db8::1\n\
         mx2.example.test. 300 IN A 192.0.2.2\n",
    );
    let (f, outcome) = run(&dns, None, false).await;
    assert_eq!(
        only(&f, "mx-records").message,
        "2 MX records: 10 mx1.example.test, 20 mx2.example.test"
    );
    let hosts: Vec<(&str, u16)> = outcome
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.preference))
        .collect();
    assert_eq!(hosts, [("mx1.example.test", 10), ("mx2.example.test", 20)]);
    assert_eq!(outcome.hosts[0].addresses, ["192.0.2.1", "2001:db8::1"]);
    // Only mx2 lacks IPv6, and the finding is about that host.
    assert_eq!(
        only(&f, "mx-no-ipv6").host.as_deref(),
        Some("mx2.example.test")
    );
    assert_eq!(severity(&f, "smtp-skipped"), Severity::Info);
    assert_eq!(
        outcome.suggest_hosts.as_deref(),
        Some(
            &[
                "mx1.example.test".to_string(),
                "mx2.example.test".to_string()
            ][..]
        )
    );
}

#[tokio::test]
async fn a_domain_without_mx_records_is_its_own_implicit_mx() {
    let (_, dns) = zone("example.test. 300 IN A 192.0.2.9\n");
    let (f, outcome) = run(&dns, None, false).await;
    assert_eq!(severity(&f, "mx-implicit"), Severity::Info);
    assert!(!f.has("mx-records"));
    assert_eq!(outcome.hosts.len(), 1);
    assert_eq!(
        (outcome.hosts[0].host.as_str(), outcome.hosts[0].preference),
        (D, 0)
    );
}

#[tokio::test]
async fn an_mx_record_naming_the_domain_itself_is_not_an_implicit_mx() {
    let (_, dns) = zone(
        "example.test. 300 IN MX 5 example.test.\n\
         example.test. 300 IN A 192.0.2.9\n",
    );
    let (f, outcome) = run(&dns, None, false).await;
    assert!(!f.has("mx-implicit"));
    assert_eq!(
        only(&f, "mx-records").message,
        "1 MX record: 5 example.test"
    );
    assert_eq!(outcome.hosts[0].preference, 5);
}

#[tokio::test]
async fn nxdomain_and_no_address_cannot_receive_mail() {
    let (_, dns) = zone("other.test. 300 IN A 192.0.2.1\n");
    let (f, outcome) = run(&dns, None, false).await;
    assert_eq!(codes(&f), ["mx-domain-missing"]);
    assert!(outcome.hosts.is_empty() && outcome.suggest_hosts.is_none());

    // The name exists (it has a TXT record) but neither MX nor address.
    let (_, dns) = zone("example.test. 300 IN TXT \"hello\"\n");
    let (f, outcome) = run(&dns, None, false).await;
    assert_eq!(codes(&f), ["mx-none"]);
    assert_eq!(severity(&f, "mx-none"), Severity::Error);
    assert_eq!(outcome.suggest_hosts, Some(Vec::new()));
}

#[tokio::test]
async fn a_null_mx_weighs_more_when_mta_sts_is_published() {
    let (_, dns) = zone("example.test. 300 IN MX 0 .\n");
    let (f, outcome) = run(&dns, None, true).await;
    assert_eq!(codes(&f), ["mx-null"]);
    assert_eq!(severity(&f, "mx-null"), Severity::Warning);
    assert!(outcome.null_mx && outcome.hosts.is_empty());

    let (f, _) = run(&dns, None, false).await;
    assert_eq!(severity(&f, "mx-null"), Severity::Info);
}

#[tokio::test]
async fn a_null_mx_beside_other_records_is_an_error_and_they_are_checked() {
    let (_, dns) = zone(
        "example.test. 300 IN MX 0 .\n\
         example.test. 300 IN MX 10 mx1.example.test.\n",
    );
    let (f, outcome) = run(&dns, None, false).await;
    assert_eq!(&codes(&f)[..2], ["mx-null-mixed", "mx-records"]);
    assert_eq!(severity(&f, "mx-null-mixed"), Severity::Error);
    assert!(outcome.null_mx);
    assert_eq!(outcome.hosts.len(), 1);
    // mx1 has no address at all.
    assert_eq!(severity(&f, "mx-no-address"), Severity::Error);
}

#[tokio::test]
async fn an_unlisted_mx_is_an_error_under_enforce_and_a_warning_under_testing() {
    let text = "example.test. 300 IN MX 10 mx1.example.test.\n\
                example.test. 300 IN MX 20 backup.other.test.\n\
                mx1.example.test. 300 IN A 192.0.2.1\n\
                backup.other.test. 300 IN A 192.0.2.2\n";
    let (_, dns) = zone(text);
    let enforce = policy("enforce", "*.example.test");
    let (f, outcome) = run(&dns, Some(&enforce), true).await;
    assert_eq!(
        only(&f, "mx-matches").message,
        "matches the policy's mx: *.example.test"
    );
    let unlisted = only(&f, "mx-not-in-policy");
    assert_eq!(unlisted.severity, Severity::Error);
    assert_eq!(unlisted.host.as_deref(), Some("backup.other.test"));
    let matches: Vec<Option<bool>> = outcome.hosts.iter().map(|h| h.matches_policy).collect();
    assert_eq!(matches, [Some(true), Some(false)]);

    let testing = policy("testing", "*.example.test");
    let (f, _) = run(&dns, Some(&testing), true).await;
    assert_eq!(severity(&f, "mx-not-in-policy"), Severity::Warning);
}

const TLSA: &str = "_25._tcp.mx1.example.test. 300 IN TLSA 3 1 1 \
    0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\n";

#[tokio::test]
async fn validated_tlsa_counts_only_under_a_validated_mx_rrset() {
    let (zone, dns) = zone(&format!(
        "example.test. 300 IN MX 10 mx1.example.test.\n\
         mx1.example.test. 300 IN A 192.0.2.1\n{TLSA}"
    ));
    zone.sign("_25._tcp.mx1.example.test");
    let (f, outcome) = run(&dns, None, false).await;
    // RFC 7672 §2.2: DANE senders ignore it while the MX answer is unsigned.
    let unvalidated = only(&f, "dane-tlsa-mx-unvalidated");
    assert_eq!(unvalidated.severity, Severity::Warning);
    assert!(unvalidated
        .message
        .starts_with("1 usable TLSA record at _25._tcp.mx1.example.test, DNSSEC-validated, but"));
    assert_eq!(outcome.hosts[0].tlsa.len(), 1);

    zone.sign(D);
    let (f, _) = run(&dns, None, false).await;
    assert_eq!(severity(&f, "dane-tlsa"), Severity::Info);
    assert!(!f.has("dane-tlsa-mx-unvalidated"));
}

#[tokio::test]
async fn unsigned_tlsa_is_ignored_by_senders() {
    let (_, dns) = zone(&format!(
        "example.test. 300 IN MX 10 mx1.example.test.\n\
         mx1.example.test. 300 IN A 192.0.2.1\n{TLSA}"
    ));
    let (f, _) = run(&dns, None, false).await;
    assert!(only(&f, "dane-tlsa-unvalidated")
        .message
        .starts_with("1 TLSA record at _25._tcp.mx1.example.test, but not DNSSEC-validated"));
}
