//! Section 3, DANE on one MX host (informational): DNSSEC-validated TLSA
//! records take precedence over MTA-STS (RFC 8461 §2). One secure lookup
//! and the usability rule of [`crate::dane`], the code the socketmap and
//! the relay decide with.

use super::catalogue as c;
use super::findings::Findings;
use crate::dns::{Answer, Dns};

/// The MX RRset a host came from: whether the resolver validated it
/// (`None`: that could not be asked).
#[derive(Debug, Clone, Copy)]
pub struct MxSet<'a> {
    pub domain: &'a str,
    pub validated: Option<bool>,
}

/// Adds the TLSA findings of `host` (normalised `name`); returns the TLSA
/// records in presentation form.
pub async fn check(
    f: &mut Findings,
    dns: &Dns,
    host: &str,
    name: &str,
    mx_set: &MxSet<'_>,
) -> Vec<String> {
    let tlsa_name = crate::dane::tlsa_name(name);
    match dns.tlsa_secure(&tlsa_name).await {
        Ok((Answer::Records(records), authenticated, _)) => {
            let usable = records.iter().filter(|r| crate::dane::usable(r)).count();
            let finding = if authenticated && usable > 0 && mx_set.validated != Some(true) {
                // RFC 7672 §2.2: only for MX hosts of a validated MX RRset.
                c::dane_tlsa_mx_unvalidated(usable, &tlsa_name, mx_set.domain, mx_set.validated)
            } else if authenticated && usable > 0 {
                c::dane_tlsa(usable, &tlsa_name)
            } else if authenticated {
                c::dane_tlsa_unusable(records.len(), &tlsa_name)
            } else {
                c::dane_tlsa_unvalidated(records.len(), &tlsa_name)
            };
            f.push_host(host, finding);
            records.iter().map(|r| r.to_string()).collect()
        }
        Ok((Answer::NoRecords { .. }, _, _)) => Vec::new(),
        Err(e) => {
            f.push_host(host, c::dane_lookup_failed(&tlsa_name, &e));
            Vec::new()
        }
    }
}
