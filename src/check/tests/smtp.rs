//! Section 3, the SMTP probe and TLS findings of one MX host, from probe
//! reports as the prober returns them: how much a TLS problem weighs under
//! each policy mode, and in which order the findings come.

use super::{codes, only, severity};
use crate::check::catalogue::{self, TlsSide};
use crate::check::findings::{Findings, Section, Severity};
use crate::check::mx_smtp;
use crate::policy::Mode;
use crate::smtp::probe::{ProbeFailure, ProbeStage, SmtpProbeReport};
use crate::smtp::reply::Reply;
use crate::tlsprobe::{CertProblem, LeafInfo, TlsReport};

const MX: &str = "mx1.example.test";

fn tls(cert: Result<(), CertProblem>, days_left: i64) -> TlsReport {
    TlsReport {
        server_name: MX.into(),
        version: "TLSv1.3".into(),
        version_ok: true,
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        cert,
        leaf: Some(LeafInfo {
            subject: format!("CN={MX}"),
            issuer: "CN=Test CA".into(),
            dns_names: vec!["other.example.test".into()],
            not_before: 0,
            // 2024-01-01T00:00:00Z
            not_after: 1_704_067_200,
            seconds_left: days_left * 86_400,
            days_left,
        }),
        resumed: false,
    }
}

fn report(tls: Option<TlsReport>, failure: Option<ProbeFailure>) -> SmtpProbeReport {
    SmtpProbeReport {
        host: MX.into(),
        addr: "192.0.2.1:25".parse().expect("addr"),
        banner: Some(Reply {
            code: 220,
            lines: vec![format!("{MX} ESMTP")],
        }),
        ehlo: None,
        starttls_offered: true,
        starttls_reply: None,
        tls,
        ehlo_after_tls: None,
        failure,
    }
}

#[test]
fn a_good_host_is_all_ok_with_its_expiry_date() {
    let r = report(Some(tls(Ok(()), 90)), None);
    let mut f = Findings::default();
    mx_smtp::findings(&mut f, MX, &r, Some(Mode::Enforce), 25);
    assert_eq!(
        codes(&f),
        [
            "smtp-banner",
            "smtp-starttls",
            "smtp-tls",
            "smtp-cert-valid"
        ]
    );
    assert!(f.list().iter().all(|x| x.severity == Severity::Ok
        && x.section == Section::Mx
        && x.host.as_deref() == Some(MX)));
    assert_eq!(
        only(&f, "smtp-cert-valid").message,
        "certificate valid for mx1.example.test, issued by CN=Test CA, expires in 90 days \
         (2024-01-01)"
    );
    assert!(mx_smtp::validated_tls(&r));
}

#[test]
fn a_certificate_soon_to_expire_is_a_warning() {
    let r = report(Some(tls(Ok(()), 3)), None);
    let mut f = Findings::default();
    mx_smtp::findings(&mut f, MX, &r, None, 25);
    assert_eq!(severity(&f, "smtp-cert-expiring"), Severity::Warning);
    assert!(only(&f, "smtp-cert-expiring")
        .message
        .contains("expires in 3 days (2024-01-01)"));
}

#[test]
fn a_wrong_name_is_an_error_under_a_policy_and_a_warning_without() {
    let r = report(Some(tls(Err(CertProblem::NameMismatch), 90)), None);
    for (mode, expected) in [
        (Some(Mode::Enforce), Severity::Error),
        (Some(Mode::Testing), Severity::Error),
        (Some(Mode::None), Severity::Warning),
        (None, Severity::Warning),
    ] {
        let mut f = Findings::default();
        mx_smtp::findings(&mut f, MX, &r, mode, 25);
        let wrong = only(&f, "smtp-cert-wrong-name");
        assert_eq!(wrong.severity, expected, "{mode:?}");
        assert!(wrong.message.contains("(it covers: other.example.test)"));
    }
    assert!(!mx_smtp::validated_tls(&r));
}

#[test]
fn a_failure_after_the_handshake_comes_after_the_tls_details() {
    let failure = ProbeFailure {
        stage: ProbeStage::EhloAfterTls,
        message: "554 no".into(),
        tls_error: None,
    };
    let r = report(Some(tls(Ok(()), 90)), Some(failure));
    let mut f = Findings::default();
    mx_smtp::findings(&mut f, MX, &r, Some(Mode::Enforce), 25);
    assert_eq!(
        codes(&f),
        [
            "smtp-banner",
            "smtp-tls",
            "smtp-cert-valid",
            "smtp-ehlo-failed"
        ]
    );
    assert_eq!(severity(&f, "smtp-ehlo-failed"), Severity::Error);
    assert!(!mx_smtp::validated_tls(&r));
    assert_eq!(
        mx_smtp::facts(&r).error.as_deref(),
        Some("EHLO after STARTTLS: 554 no")
    );
}

#[test]
fn no_starttls_says_what_senders_do_under_each_mode() {
    let mut r = report(None, None);
    r.starttls_offered = false;
    let mut f = Findings::default();
    mx_smtp::findings(&mut f, MX, &r, None, 25);
    let plain = only(&f, "smtp-no-starttls");
    assert_eq!(plain.severity, Severity::Warning);
    assert!(plain.message.contains("mail to it travels unencrypted"));

    let mut f = Findings::default();
    mx_smtp::findings(&mut f, MX, &r, Some(Mode::Enforce), 25);
    assert_eq!(severity(&f, "smtp-no-starttls"), Severity::Error);
}

#[test]
fn a_bad_policy_host_certificate_is_always_an_error() {
    let f = catalogue::cert_rejected(
        TlsSide::PolicyHost,
        "mta-sts.example.test",
        &CertProblem::Untrusted,
        None,
    );
    assert_eq!(
        (f.section, f.severity, f.code),
        (Section::Policy, Severity::Error, "policy-cert-untrusted")
    );
    let f = catalogue::cert_rejected(TlsSide::Mx(None), MX, &CertProblem::Untrusted, None);
    assert_eq!(
        (f.section, f.severity, f.code),
        (Section::Mx, Severity::Warning, "smtp-cert-untrusted")
    );
}
