//! TLS-RPT counting (RFC 8460 §4.3-4.4): what a session adds to which
//! policy of which day, what the report says, and the `_smtp._tls` lookup
//! on the in-memory DNS.

use std::net::IpAddr;

use super::*;
use crate::dns::memory::{Fault, ZoneDns};
use crate::dns::{RecordType, TlsaRecord};
use crate::policy::parse_policy;

const D: &str = "example.test";
const BODY: &str = "version: STSv1\r\nmode: enforce\r\n\r\nmx: mx1.example.test\r\nmx: *.backup.example.test\r\nmax_age: 86400\r\n";

struct World {
    dir: tempfile::TempDir,
    zone: ZoneDns,
    tlsrpt: Tlsrpt,
}

fn config(dir: &tempfile::TempDir, enabled: bool) -> Config {
    let mut config = Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    config.relay.tlsrpt.enabled = enabled;
    config
}

fn world_with(enabled: bool) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&dir, enabled);
    let zone = ZoneDns::from_zone(
        "_smtp._tls.example.test. 300 IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.test\"\n",
    );
    let tlsrpt = Tlsrpt::open(&config, "relay.test", &Dns::new(zone.clone())).expect("open");
    World { dir, zone, tlsrpt }
}

fn world() -> World {
    world_with(true)
}

fn policy(source: PolicySource) -> StoredPolicy {
    StoredPolicy {
        domain: D.to_string(),
        id: "1".to_string(),
        policy: parse_policy(BODY.as_bytes()).expect("policy").policy,
        body: BODY.to_string(),
        fetched_at: unix_now(),
        source,
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn today() -> u64 {
    unix_now() / 86_400
}

fn only_policy(w: &World) -> record::PolicyCounts {
    let day = w.tlsrpt.counts(today(), D).expect("counted today");
    assert_eq!(day.policies.len(), 1, "{day:?}");
    day.policies[0].clone()
}

#[tokio::test]
async fn a_session_under_a_policy_is_counted_with_its_text_and_patterns() {
    // RFC 8460 §4.4: policy-string is the policy's lines, mx-host its
    // patterns; empty lines and CRs are not part of either.
    let w = world();
    let p = policy(PolicySource::Fetched);
    w.tlsrpt
        .sts(Some(&p), "mx1.example.test", ip("192.0.2.1"), None, None);
    let counts = only_policy(&w);
    assert_eq!(counts.policy_type, "sts");
    assert_eq!(
        counts.policy_string,
        [
            "version: STSv1",
            "mode: enforce",
            "mx: mx1.example.test",
            "mx: *.backup.example.test",
            "max_age: 86400"
        ]
    );
    assert_eq!(
        counts.mx_host,
        ["mx1.example.test", "*.backup.example.test"]
    );
    assert_eq!((counts.success, counts.failure_total()), (1, 0));
}

#[tokio::test]
async fn failures_are_grouped_by_result_type_and_receiving_mx() {
    // RFC 8460 §4.3: one failure-details entry per result type, sending
    // IP, receiving host and receiving IP.
    let w = world();
    let p = policy(PolicySource::Fetched);
    let send = ip("198.51.100.9");
    for _ in 0..3 {
        w.tlsrpt.sts(
            Some(&p),
            "mx1.example.test",
            ip("192.0.2.1"),
            send,
            Some(ResultType::CertificateExpired),
        );
    }
    w.tlsrpt.sts(
        Some(&p),
        "mx2.example.test",
        ip("192.0.2.2"),
        send,
        Some(ResultType::CertificateExpired),
    );
    w.tlsrpt.sts(
        Some(&p),
        "mx1.example.test",
        ip("192.0.2.1"),
        send,
        Some(ResultType::StarttlsNotSupported),
    );
    w.tlsrpt
        .sts(Some(&p), "mx1.example.test", ip("192.0.2.1"), send, None);
    let counts = only_policy(&w);
    assert_eq!(counts.success, 1);
    assert_eq!(counts.failure_total(), 5);
    let groups: Vec<(&str, Option<&str>, u64)> = counts
        .failures
        .iter()
        .map(|f| {
            (
                f.result_type.as_str(),
                f.receiving_mx_hostname.as_deref(),
                f.count,
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("certificate-expired", Some("mx1.example.test"), 3),
            ("certificate-expired", Some("mx2.example.test"), 1),
            ("starttls-not-supported", Some("mx1.example.test"), 1),
        ]
    );
    assert!(counts.failures.iter().all(|f| f.sending_mta_ip == send));
}

#[tokio::test]
async fn without_a_policy_nothing_is_counted() {
    let w = world();
    w.tlsrpt
        .sts(None, "mx1.example.test", ip("192.0.2.1"), None, None);
    assert!(w.tlsrpt.counts(today(), D).is_none());
}

#[tokio::test]
async fn sessions_under_an_override_are_not_counted() {
    // The domain never published that policy: nothing to report to it.
    let w = world();
    let p = policy(PolicySource::Override {
        reason: "broken certificate".to_string(),
    });
    w.tlsrpt.sts(
        Some(&p),
        "mx1.example.test",
        None,
        None,
        Some(ResultType::CertificateExpired),
    );
    assert!(w.tlsrpt.counts(today(), D).is_none());
}

#[tokio::test]
async fn a_disabled_tlsrpt_counts_nothing() {
    let w = world_with(false);
    let p = policy(PolicySource::Fetched);
    w.tlsrpt.sts(Some(&p), "mx1.example.test", None, None, None);
    w.tlsrpt.sts_failure(D, ResultType::StsPolicyFetchError);
    w.tlsrpt.tlsa(
        D,
        "mx1.example.test",
        &[],
        None,
        None,
        Some(ResultType::DnssecInvalid),
    );
    assert!(w.tlsrpt.counts(today(), D).is_none());
}

#[tokio::test]
async fn a_policy_that_could_not_be_had_is_a_failure_without_policy_text() {
    // RFC 8460 §4.3.1: sts-policy-fetch-error and friends are counted
    // against the domain with no policy-string and no MX host.
    let w = world();
    w.tlsrpt.sts_failure(D, ResultType::StsPolicyFetchError);
    w.tlsrpt.sts_failure(D, ResultType::StsPolicyFetchError);
    w.tlsrpt.sts_failure(D, ResultType::StsWebpkiInvalid);
    let counts = only_policy(&w);
    assert!(counts.policy_string.is_empty() && counts.mx_host.is_empty());
    assert_eq!(counts.failure_total(), 3);
    assert_eq!(counts.failures.len(), 2);
    assert!(counts
        .failures
        .iter()
        .all(|f| f.receiving_mx_hostname.is_none()));
}

#[tokio::test]
async fn dane_sessions_are_a_tlsa_policy_of_their_own() {
    // RFC 8460 §4.4: policy-type tlsa, the policy being the TLSA RRset.
    let w = world();
    let p = policy(PolicySource::Fetched);
    let records = [TlsaRecord {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![0xab, 0xcd],
    }];
    w.tlsrpt.sts(Some(&p), "mx1.example.test", None, None, None);
    w.tlsrpt
        .tlsa(D, "mx1.example.test", &records, None, None, None);
    w.tlsrpt.tlsa(
        D,
        "mx1.example.test",
        &records,
        None,
        None,
        Some(ResultType::TlsaInvalid),
    );
    let day = w.tlsrpt.counts(today(), D).expect("counted");
    let tlsa = day
        .policies
        .iter()
        .find(|p| p.policy_type == "tlsa")
        .expect("a tlsa policy");
    assert_eq!(tlsa.policy_string, ["3 1 1 abcd"]);
    assert_eq!((tlsa.success, tlsa.failure_total()), (1, 1));
    assert_eq!(day.policies.len(), 2);
}

#[tokio::test]
async fn a_policy_changed_during_the_day_is_a_second_policy() {
    let w = world();
    let p = policy(PolicySource::Fetched);
    let mut changed = policy(PolicySource::Fetched);
    changed.body = BODY.replace("enforce", "testing");
    w.tlsrpt.sts(Some(&p), "mx1.example.test", None, None, None);
    w.tlsrpt
        .sts(Some(&changed), "mx1.example.test", None, None, None);
    w.tlsrpt
        .sts(Some(&changed), "mx1.example.test", None, None, None);
    let day = w.tlsrpt.counts(today(), D).expect("counted");
    let successes: Vec<u64> = day.policies.iter().map(|p| p.success).collect();
    assert_eq!(successes, [1, 2]);
}

#[tokio::test]
async fn each_utc_day_is_counted_and_reported_apart() {
    // RFC 8460 §4.1: a report covers one UTC day, 00:00:00 to 23:59:59.
    let w = world();
    let session = |rt| Session {
        policy_type: PolicyType::Sts,
        policy_domain: D,
        policy_string: &[],
        mx_host: &[],
        result_type: rt,
        sending_mta_ip: None,
        receiving_mx_hostname: Some("mx1.example.test"),
        receiving_ip: None,
    };
    w.tlsrpt.record(20_000, &session(None));
    w.tlsrpt
        .record(20_001, &session(Some(ResultType::ValidationFailure)));
    w.tlsrpt.record(20_001, &session(None));
    let first = w.tlsrpt.report(20_000, D).expect("report");
    assert_eq!(first.date_range.start_datetime, "2024-10-04T00:00:00Z");
    assert_eq!(first.date_range.end_datetime, "2024-10-04T23:59:59Z");
    assert_eq!(first.policies[0].summary.total_successful_session_count, 1);
    assert_eq!(first.policies[0].summary.total_failure_session_count, 0);
    let second = w.tlsrpt.report(20_001, D).expect("report");
    assert_eq!(second.policies[0].summary.total_failure_session_count, 1);
    assert_eq!(
        second.policies[0].failure_details[0].result_type,
        "validation-failure"
    );
    assert_eq!(second.report_id, "2024-10-05_example.test@relay.test");
    assert!(w.tlsrpt.report(20_002, D).is_none());
}

#[tokio::test]
async fn counts_flushed_to_disk_survive_a_restart() {
    let w = world();
    let p = policy(PolicySource::Fetched);
    w.tlsrpt.sts(
        Some(&p),
        "mx1.example.test",
        None,
        None,
        Some(ResultType::CertificateExpired),
    );
    w.tlsrpt.sts(Some(&p), "mx1.example.test", None, None, None);
    w.tlsrpt.flush_blocking().expect("flush");
    let again = Tlsrpt::open(
        &config(&w.dir, true),
        "relay.test",
        &Dns::new(w.zone.clone()),
    )
    .expect("reopen");
    assert_eq!(again.counts(today(), D), w.tlsrpt.counts(today(), D));
}

#[tokio::test]
async fn the_report_lists_failure_details_as_rfc_8460_names_them() {
    let w = world();
    let p = policy(PolicySource::Fetched);
    w.tlsrpt.sts(
        Some(&p),
        "mx1.example.test",
        ip("192.0.2.1"),
        ip("198.51.100.9"),
        Some(ResultType::CertificateHostMismatch),
    );
    let report = w.tlsrpt.report(today(), D).expect("report");
    let json = serde_json::to_value(&report).expect("json");
    let detail = &json["policies"][0]["failure-details"][0];
    assert_eq!(detail["result-type"], "certificate-host-mismatch");
    assert_eq!(detail["sending-mta-ip"], "198.51.100.9");
    assert_eq!(detail["receiving-mx-hostname"], "mx1.example.test");
    assert_eq!(detail["receiving-ip"], "192.0.2.1");
    assert_eq!(detail["failed-session-count"], 1);
    assert_eq!(json["policies"][0]["policy"]["policy-domain"], D);
    assert_eq!(json["organization-name"], "relay.test");
}

#[tokio::test]
async fn where_a_report_goes_is_read_from_the_smtp_tls_record() {
    // RFC 8460 §3: exactly one v=TLSRPTv1 record with rua= URIs.
    let w = world();
    assert!(matches!(w.tlsrpt.rua(D).await, Rua::Uris(u) if u == ["mailto:tlsrpt@example.test"]));
    assert!(matches!(w.tlsrpt.rua("none.test").await, Rua::None(_)));
    w.zone.load(
        "_smtp._tls.two.test. 300 IN TXT \"v=TLSRPTv1; rua=mailto:a@two.test\"\n\
         _smtp._tls.two.test. 300 IN TXT \"v=TLSRPTv1; rua=mailto:b@two.test\"\n",
    );
    assert!(
        matches!(w.tlsrpt.rua("two.test").await, Rua::None(why) if why.contains("2 v=TLSRPTv1 records"))
    );
    // A DNS failure is retried later, not taken as "no record".
    w.zone
        .fail("_smtp._tls.example.test", RecordType::TXT, Fault::ServFail);
    assert!(matches!(w.tlsrpt.rua(D).await, Rua::Temporary(_)));
}

#[tokio::test]
async fn failures_past_the_group_cap_stay_in_the_report_s_total() {
    // RFC 8460 §4.4: failure-details need not list every session, but
    // total-failure-session-count counts them all.
    let w = world();
    let p = policy(PolicySource::Fetched);
    let hosts: Vec<String> = (0..record::MAX_FAILURE_GROUPS + 6)
        .map(|i| format!("mx{i}.example.test"))
        .collect();
    for h in &hosts {
        w.tlsrpt
            .sts(Some(&p), h, None, None, Some(ResultType::ValidationFailure));
    }
    let report = w.tlsrpt.report(today(), D).expect("report");
    let policy = &report.policies[0];
    assert_eq!(policy.failure_details.len(), record::MAX_FAILURE_GROUPS);
    assert_eq!(
        policy.summary.total_failure_session_count,
        hosts.len() as u64
    );
}
