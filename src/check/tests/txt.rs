//! Section 1: what senders make of the `_mta-sts` TXT records.

use super::{codes, only, severity, txt_records, zone};
use crate::check::findings::{Findings, Severity};
use crate::check::txt::{check, TxtState};
use crate::dns::memory::Fault;
use crate::dns::RecordType;

const D: &str = "example.test";
const NAME: &str = "_mta-sts.example.test";

fn records(txt: &[&str]) -> String {
    txt_records("_mta-sts.example.test", txt)
}

#[tokio::test]
async fn one_valid_record_is_found_with_its_id() {
    let (_, dns) = zone(&records(&["v=STSv1; id=20240101"]));
    let mut f = Findings::default();
    let state = check(&mut f, &dns, D).await.expect("runs");
    assert_eq!(state, TxtState::Found("20240101".into()));
    assert_eq!(codes(&f), ["txt-valid", "txt-no-dnssec"]);
    assert_eq!(
        only(&f, "txt-valid").message,
        "one STSv1 record at _mta-sts.example.test, id 20240101"
    );
}

#[tokio::test]
async fn a_signed_answer_is_reported_as_validated() {
    let (zone, dns) = zone(&records(&["v=STSv1; id=1"]));
    zone.sign(NAME);
    let mut f = Findings::default();
    check(&mut f, &dns, D).await.expect("runs");
    assert_eq!(severity(&f, "txt-dnssec"), Severity::Info);
    assert!(!f.has("txt-no-dnssec"));
}

#[tokio::test]
async fn no_record_is_an_error_that_points_at_suggest() {
    let (_, dns) = zone("example.test. 300 IN MX 10 mx.example.test.\n");
    let mut f = Findings::default();
    assert_eq!(
        check(&mut f, &dns, D).await.expect("runs"),
        TxtState::Missing
    );
    assert_eq!(codes(&f), ["txt-missing"]);
    let missing = only(&f, "txt-missing");
    assert_eq!(missing.severity, Severity::Error);
    assert!(missing.message.contains("(--suggest prints one)"));
}

#[tokio::test]
async fn spf_and_near_misses_are_named_and_no_policy_is_seen() {
    let (_, dns) = zone(&records(&["v=spf1 -all", "V=STSv1; id=1", "hello"]));
    let mut f = Findings::default();
    let state = check(&mut f, &dns, D).await.expect("runs");
    assert_eq!(state, TxtState::Missing);
    assert_eq!(
        &codes(&f)[..4],
        ["txt-spf", "txt-not-sts", "txt-other", "txt-missing"]
    );
    assert_eq!(severity(&f, "txt-spf"), Severity::Warning);
    assert!(only(&f, "txt-not-sts")
        .message
        .contains("\"V=STSv1; id=1\""));
    assert!(only(&f, "txt-missing").message.contains("(one is SPF)"));
    assert_eq!(
        only(&f, "txt-other").message,
        "1 other TXT record at _mta-sts.example.test ignored by senders: \"hello\""
    );
}

#[tokio::test]
async fn two_records_are_no_policy_at_all() {
    let (_, dns) = zone(&records(&["v=STSv1; id=1", "v=STSv1; id=2"]));
    let mut f = Findings::default();
    assert_eq!(
        check(&mut f, &dns, D).await.expect("runs"),
        TxtState::Broken
    );
    assert!(only(&f, "txt-multiple")
        .message
        .starts_with("2 STSv1 records"));
}

#[tokio::test]
async fn a_record_outside_the_grammar_gets_its_repaired_form() {
    let (_, dns) = zone(&records(&["v=STSv1; id=x "]));
    let mut f = Findings::default();
    assert_eq!(
        check(&mut f, &dns, D).await.expect("runs"),
        TxtState::Broken
    );
    let grammar = only(&f, "txt-grammar");
    assert_eq!(grammar.severity, Severity::Error);
    assert!(
        grammar.message.ends_with("publish it as \"v=STSv1; id=x\""),
        "{}",
        grammar.message
    );
}

#[tokio::test]
async fn a_failing_name_is_a_finding_but_a_dead_resolver_stops_the_check() {
    let (zone, dns) = zone(&records(&["v=STSv1; id=1"]));
    zone.fail(NAME, RecordType::TXT, Fault::ServFail);
    let mut f = Findings::default();
    assert_eq!(
        check(&mut f, &dns, D).await.expect("runs"),
        TxtState::LookupFailed
    );
    assert_eq!(codes(&f), ["txt-lookup-failed"]);

    zone.fail(".", RecordType::TXT, Fault::Timeout);
    let mut f = Findings::default();
    let err = check(&mut f, &dns, D).await.expect_err("resolver is dead");
    assert!(err.0.contains("use --dns-server"), "{}", err.0);
    assert!(f.list().is_empty());
}
