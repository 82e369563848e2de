//! Section 4, TLS-RPT: the `_smtp._tls.<domain>` record (RFC 8460 §3) as a
//! reporter reads it ([`discover_tlsrpt`]), and whether its `rua` URIs can
//! take reports.

use super::catalogue as c;
use super::findings::Findings;
use super::wording::lossy;
use crate::dns::{Answer, Dns};
use crate::policy::tlsrpt::{discover_tlsrpt, is_tlsrpt_record, TlsRptDiscovery};

/// Returns the usable rua URIs and whether TLS-RPT is in working order.
pub async fn check(f: &mut Findings, dns: &Dns, domain: &str) -> (Vec<String>, bool) {
    let name = format!("_smtp._tls.{domain}");
    let records = match dns.txt(&name).await {
        Ok(Answer::Records(r)) => r,
        Ok(Answer::NoRecords { .. }) => {
            f.push(c::tlsrpt_missing_no_txt(&name, domain));
            return (Vec::new(), false);
        }
        Err(e) => {
            f.push(c::tlsrpt_lookup_failed(&name, &e));
            return (Vec::new(), false);
        }
    };
    let near: Vec<String> = records
        .iter()
        .map(|r| lossy(r))
        .filter(|t| {
            !is_tlsrpt_record(t)
                && t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("v=tlsrptv1")
        })
        .collect();
    match discover_tlsrpt(&records) {
        TlsRptDiscovery::Found(record) => {
            let rua: Vec<String> = record.rua.iter().map(|u| u.to_string()).collect();
            if !rua.is_empty() {
                f.push(c::tlsrpt_valid(&name, &rua));
            }
            for (uri, why) in &record.invalid_rua {
                f.push(c::tlsrpt_bad_rua(
                    uri,
                    &name,
                    why,
                    record.rua.is_empty(),
                    domain,
                ));
            }
            if record.rua_fields > 1 {
                f.push(c::tlsrpt_rua_fields(record.rua_fields, &name, &rua));
            }
            let usable = !record.rua.is_empty();
            (rua, usable)
        }
        TlsRptDiscovery::NoRecord => {
            f.push(c::tlsrpt_missing_not_tlsrpt(&name, &near, domain));
            (Vec::new(), false)
        }
        TlsRptDiscovery::Multiple(n) => {
            f.push(c::tlsrpt_multiple(n, &name));
            (Vec::new(), false)
        }
        TlsRptDiscovery::Invalid(e) => {
            f.push(c::tlsrpt_invalid(&name, &e, domain));
            (Vec::new(), false)
        }
    }
}
