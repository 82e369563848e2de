//! Section 4: the TLS-RPT record as a reporter reads it.

use super::{codes, only, severity, txt_records, zone};
use crate::check::findings::{Findings, Severity};
use crate::check::tlsrpt::check;

const D: &str = "example.test";

fn records(txt: &[&str]) -> String {
    txt_records("_smtp._tls.example.test", txt)
}

#[tokio::test]
async fn a_valid_record_lists_where_reports_go() {
    let (_, dns) = zone(&records(&["v=TLSRPTv1; rua=mailto:tlsrpt@example.test"]));
    let mut f = Findings::default();
    let (rua, ok) = check(&mut f, &dns, D).await;
    assert!(ok);
    assert_eq!(rua, ["mailto:tlsrpt@example.test"]);
    assert_eq!(codes(&f), ["tlsrpt-valid"]);
}

#[tokio::test]
async fn several_rua_fields_work_but_get_a_warning_with_the_one_field() {
    let (_, dns) = zone(&records(&[
        "v=TLSRPTv1; rua=mailto:a@example.test; rua=https://r.example.test/x",
    ]));
    let mut f = Findings::default();
    let (rua, ok) = check(&mut f, &dns, D).await;
    assert!(ok);
    assert_eq!(rua.len(), 2);
    let fields = only(&f, "tlsrpt-rua-fields");
    assert_eq!(fields.severity, Severity::Warning);
    assert!(fields
        .message
        .ends_with("rua=mailto:a@example.test,https://r.example.test/x"));
}

#[tokio::test]
async fn a_missing_or_misspelt_record_is_a_warning() {
    let (_, dns) = zone("example.test. 300 IN MX 10 mx.example.test.\n");
    let mut f = Findings::default();
    assert_eq!(check(&mut f, &dns, D).await, (Vec::new(), false));
    assert_eq!(severity(&f, "tlsrpt-missing"), Severity::Warning);

    let (_, dns) = zone(&records(&["v=tlsrptv1; rua=mailto:a@example.test"]));
    let mut f = Findings::default();
    check(&mut f, &dns, D).await;
    assert!(only(&f, "tlsrpt-missing")
        .message
        .contains("must start with exactly \"v=TLSRPTv1\""));
}

#[tokio::test]
async fn two_records_mean_no_reports() {
    let (_, dns) = zone(&records(&[
        "v=TLSRPTv1; rua=mailto:a@example.test",
        "v=TLSRPTv1; rua=mailto:b@example.test",
    ]));
    let mut f = Findings::default();
    assert_eq!(check(&mut f, &dns, D).await, (Vec::new(), false));
    assert_eq!(severity(&f, "tlsrpt-multiple"), Severity::Error);
}
