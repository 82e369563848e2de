//! Section 2: the policy host's DNS, its CAA records, the fetch and the
//! policy document.

use std::time::Duration;

use super::{codes, only, severity, zone};
use crate::check::findings::{Findings, Severity};
use crate::check::options::PolicyInput;
use crate::check::{caa, policy_doc, policy_host};
use crate::dns::memory::Fault;
use crate::dns::RecordType;
use crate::fetch::memory::MemoryFetch;
use crate::fetch::{FetchError, FetchReport, PolicyFetch};

const D: &str = "example.test";
const HOST: &str = "mta-sts.example.test";

#[tokio::test]
async fn a_missing_policy_host_is_an_error_only_when_a_policy_is_announced() {
    let (zone, dns) = zone("example.test. 300 IN MX 10 mx.example.test.\n");
    let mut f = Findings::default();
    assert!(policy_host::addresses(&mut f, &dns, HOST, D, true)
        .await
        .is_none());
    assert_eq!(codes(&f), ["host-missing"]);
    assert_eq!(severity(&f, "host-missing"), Severity::Error);

    let mut f = Findings::default();
    policy_host::addresses(&mut f, &dns, HOST, D, false).await;
    assert_eq!(severity(&f, "host-skipped"), Severity::Info);

    zone.fail(HOST, RecordType::AAAA, Fault::ServFail);
    let mut f = Findings::default();
    policy_host::addresses(&mut f, &dns, HOST, D, false).await;
    let failed = only(&f, "host-dns-failed");
    assert!(
        failed.message.contains("answered SERVFAIL"),
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn a_policy_host_without_ipv6_is_a_warning() {
    let (_, dns) = zone("mta-sts.example.test. 300 IN A 192.0.2.7\n");
    let mut f = Findings::default();
    let (v4, v6) = policy_host::addresses(&mut f, &dns, HOST, D, true)
        .await
        .expect("addresses");
    assert_eq!((v4.len(), v6.len()), (1, 0));
    assert_eq!(codes(&f), ["host-addresses", "host-no-ipv6"]);
    assert_eq!(
        only(&f, "host-addresses").message,
        "mta-sts.example.test: A 192.0.2.7"
    );
    assert_eq!(severity(&f, "host-no-ipv6"), Severity::Warning);
}

#[tokio::test]
async fn caa_is_found_by_walking_up_to_the_parent() {
    let (_, dns) = zone(
        "example.test. 300 IN CAA 0 issue \"ca.test; account=42\"\n\
         example.test. 300 IN CAA 0 iodef \"mailto:caa@example.test\"\n",
    );
    let mut f = Findings::default();
    caa::check(&mut f, &dns, HOST).await;
    assert_eq!(
        only(&f, "caa-restricted").message,
        "CAA at example.test governs certificates for mta-sts.example.test: may issue: \
         ca.test; account=42; renewals must come from one of these CAs"
    );

    let (_, dns) = zone("example.test. 300 IN MX 10 mx.example.test.\n");
    let mut f = Findings::default();
    caa::check(&mut f, &dns, HOST).await;
    assert_eq!(codes(&f), ["caa-none"]);
}

/// What the check's fetch report holds for a fetch from `web`.
async fn report(web: &MemoryFetch) -> FetchReport {
    FetchReport {
        url: web.url(D),
        status: Some(200),
        content_type: Some("text/plain".into()),
        body: None,
        elapsed: Duration::ZERO,
        result: web.fetch(D).await,
    }
}

#[tokio::test]
async fn a_fetched_testing_policy_with_a_short_max_age() {
    let web = MemoryFetch::default();
    web.serve(
        D,
        "version: STSv1\nmode: testing\nmx: mx1.example.test\nmax_age: 3600\n",
    );
    let mut f = Findings::default();
    let parsed = policy_doc::fetch_findings(&mut f, &report(&web).await, false, 443)
        .expect("a valid policy");
    assert_eq!(parsed.policy.max_age, 3600);
    assert_eq!(
        codes(&f),
        [
            "policy-fetched",
            "policy-valid",
            "policy-mode-testing",
            "policy-max-age-short"
        ]
    );
    assert_eq!(
        only(&f, "policy-valid").message,
        "policy valid: mode testing, max_age 3600, mx mx1.example.test"
    );
    assert_eq!(severity(&f, "policy-max-age-short"), Severity::Warning);
}

#[tokio::test]
async fn a_failed_fetch_is_an_error_unless_tls_already_said_why() {
    let web = MemoryFetch::default();
    let mut f = Findings::default();
    assert!(policy_doc::fetch_findings(&mut f, &report(&web).await, false, 443).is_none());
    let status = only(&f, "policy-http-status");
    assert_eq!(status.severity, Severity::Error);
    assert!(status.message.contains("answers HTTP 404"));

    web.fail(D, FetchError::Tls("bad certificate".into()));
    let mut f = Findings::default();
    policy_doc::fetch_findings(&mut f, &report(&web).await, true, 443);
    assert_eq!(severity(&f, "policy-not-fetched"), Severity::Info);
    let mut f = Findings::default();
    policy_doc::fetch_findings(&mut f, &report(&web).await, false, 443);
    assert_eq!(severity(&f, "policy-fetch-failed"), Severity::Error);
}

#[test]
fn a_policy_file_with_a_bad_line_quotes_it() {
    let input = PolicyInput::File {
        path: "draft.txt".into(),
        body: b"version: STSv1\nmode: enforce\nmx: mx.*.example.test\nmax_age: 86400\n".to_vec(),
    };
    let mut f = Findings::default();
    assert!(policy_doc::policy_file_section(&mut f, &input).is_none());
    let syntax = only(&f, "policy-syntax");
    assert!(
        syntax
            .message
            .starts_with("draft.txt is not a valid policy: ")
            && syntax
                .message
                .contains(" (the line reads \"mx: mx.*.example.test\"); "),
        "{}",
        syntax.message
    );
}

#[test]
fn a_repeated_mode_is_a_warning_naming_the_line_to_delete() {
    let input = PolicyInput::Stdin {
        body:
            b"version: STSv1\nmode: enforce\nmode: testing\nmx: mx.example.test\nmax_age: 86400\n"
                .to_vec(),
    };
    let mut f = Findings::default();
    let parsed = policy_doc::policy_file_section(&mut f, &input).expect("valid");
    assert_eq!(parsed.policy.mode, crate::policy::Mode::Enforce);
    let duplicate = only(&f, "policy-duplicate-field");
    assert_eq!(duplicate.severity, Severity::Warning);
    assert!(duplicate
        .message
        .starts_with("line 3: 'mode' appears again (first on line 2)"));
    // The parser's own note on that line is not reported a second time.
    assert!(!f.has("policy-unknown-key"));
}
