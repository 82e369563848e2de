//! Section 5: the one-line verdict.

use crate::check::catalogue;
use crate::check::findings::{Finding, MxFacts, PolicySource};
use crate::check::txt::TxtState;
use crate::check::verdict::{verdict, Outcome};
use crate::policy::{parse_policy, ParsedPolicy};

fn enforce() -> ParsedPolicy {
    parse_policy(b"version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 604800\n")
        .expect("valid")
}

fn host(name: &str, matches: Option<bool>, validated_tls: bool) -> MxFacts {
    MxFacts {
        host: name.into(),
        preference: 10,
        addresses: vec!["192.0.2.1".into()],
        matches_policy: matches,
        smtp: None,
        tlsa: Vec::new(),
        validated_tls,
    }
}

fn outcome<'a>(
    txt: &'a TxtState,
    parsed: Option<&'a ParsedPolicy>,
    hosts: &'a [MxFacts],
    smtp_probed: bool,
) -> Outcome<'a> {
    Outcome {
        domain: "example.test",
        source: PolicySource::Published,
        txt,
        parsed,
        hosts,
        null_mx: false,
        smtp_probed,
    }
}

#[test]
fn names_the_policy_the_working_hosts_and_the_first_error() {
    let txt = TxtState::Found("1".into());
    let parsed = enforce();
    let hosts = [
        host("mx1.example.test", Some(true), true),
        host("mx2.example.test", Some(true), false),
    ];
    // The warning comes first in the report, but an error is named first.
    let findings: Vec<Finding> = vec![
        catalogue::host_no_ipv6("mta-sts.example.test"),
        catalogue::smtp_no_starttls(
            "mx2.example.test",
            "192.0.2.2:25".parse().expect("addr"),
            Some(crate::policy::Mode::Enforce),
        ),
    ];
    assert_eq!(
        verdict(&outcome(&txt, Some(&parsed), &hosts, true), &findings),
        "example.test: enforce policy valid; 1/2 MX hosts accept validated TLS; \
         1 error, 1 warning (first: smtp-no-starttls)"
    );
}

#[test]
fn without_smtp_probes_it_counts_policy_matches() {
    let txt = TxtState::Found("1".into());
    let parsed = enforce();
    let hosts = [
        host("mx1.example.test", Some(true), false),
        host("backup.other.test", Some(false), false),
    ];
    assert_eq!(
        verdict(&outcome(&txt, Some(&parsed), &hosts, false), &[]),
        "example.test: enforce policy valid; 1/2 MX hosts match the policy (SMTP not probed)"
    );
}

#[test]
fn says_what_is_missing() {
    let missing = TxtState::Missing;
    let mut o = outcome(&missing, None, &[], false);
    o.null_mx = true;
    assert_eq!(
        verdict(&o, &[]),
        "example.test: no MTA-STS (no _mta-sts TXT record); null MX (accepts no mail)"
    );

    let parsed = enforce();
    let hosts = [host("mx1.example.test", Some(true), false)];
    assert_eq!(
        verdict(&outcome(&missing, Some(&parsed), &hosts, false), &[]),
        "example.test: enforce policy served but not announced (no valid _mta-sts TXT \
         record); 1/1 MX hosts match the policy (SMTP not probed)"
    );

    let broken = TxtState::Broken;
    let mut o = outcome(&broken, None, &[], false);
    o.source = PolicySource::File;
    assert_eq!(
        verdict(&o, &[]),
        "example.test: policy file invalid; no usable MX hosts"
    );
}
