//! How DANE and MTA-STS combine for one MX host, and when the socketmap may
//! hand a domain to Postfix's DANE: the one place both faces take it from.
//!
//! The attacker of RFC 8461 §10 controls every DNS answer that is not
//! DNSSEC-validated. So TLSA records count only for hosts named by an
//! authenticated MX RRset (RFC 7672 §2.2.1): for any other host, however
//! valid its own signed TLSA records, MTA-STS applies in full. And a host of
//! an authenticated MX RRset whose TLSA lookup failed is not used at all
//! (RFC 7672 §2.1.1), rather than being left to a weaker rule.

use super::{DomainDane, HostDane};
use crate::dns::TlsaRecord;

/// What governs delivery to one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// DANE (RFC 8461 §2: it takes precedence): TLS required, the chain
    /// must match these records, the MTA-STS `mx` patterns do not apply.
    Dane(Vec<TlsaRecord>),
    /// The domain's MTA-STS policy (or its absence) governs, in full.
    MtaSts,
    /// Not to be contacted, for this reason.
    Skip(String),
}

/// The rule for `host`, given its domain's DANE status (`None`: not known
/// in time, the same as a failed lookup).
pub fn host_rule(domain: Option<&DomainDane>, host: &str) -> HostRule {
    let Some(DomainDane::Secure { hosts }) = domain else {
        // Insecure or unknown MX RRset: no TLSA record is looked at, so a
        // forged MX answer cannot bring its own DANE host past the policy.
        return HostRule::MtaSts;
    };
    match hosts.iter().find(|(h, _)| h.eq_ignore_ascii_case(host)) {
        Some((_, HostDane::Tlsa(records))) => HostRule::Dane(records.clone()),
        Some((_, HostDane::None(_))) => HostRule::MtaSts,
        Some((_, HostDane::Indeterminate(why))) => {
            HostRule::Skip(format!("TLSA lookup failed: {why}"))
        }
        // Only an unauthenticated answer can have named it.
        None => HostRule::Skip(format!(
            "{host} is not in the DNSSEC-authenticated MX RRset"
        )),
    }
}

/// The MX hosts to try, in order, given those of the ordinary lookup. With
/// an authenticated MX RRset they are its hosts (RFC 7672 §2.2.1), so an
/// unsigned answer that disagrees with it cannot add one.
pub fn hosts_to_try(looked_up: Vec<String>, domain: Option<&DomainDane>) -> Vec<String> {
    match domain.and_then(DomainDane::hosts) {
        Some(secure) if !secure.is_empty() => secure.iter().map(|(h, _)| h.clone()).collect(),
        _ => looked_up,
    }
}

/// Whether the socketmap may answer with a DANE level instead of the
/// MTA-STS `secure` answer. `uncovered_fall_back`: under that answer
/// Postfix uses an MX host without usable TLSA with opportunistic TLS
/// (level `dane`, or Postfix's own level after `NOTFOUND`); `dane-only`
/// never uses such a host. The DANE answer must never be weaker than the
/// MTA-STS one, so a falling-back answer needs every host covered.
pub fn socketmap_may_defer_to_dane(domain: Option<&DomainDane>, uncovered_fall_back: bool) -> bool {
    match domain {
        Some(d) if d.applies() => !uncovered_fall_back || d.covers_every_host(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa() -> Vec<TlsaRecord> {
        vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }]
    }

    fn secure(hosts: &[(&str, HostDane)]) -> DomainDane {
        DomainDane::Secure {
            hosts: hosts
                .iter()
                .map(|(h, s)| (h.to_string(), s.clone()))
                .collect(),
        }
    }

    #[test]
    fn tlsa_counts_only_for_hosts_of_an_authenticated_mx_rrset() {
        // RFC 7672 §2.2.1: an insecure or failed MX lookup means no DANE,
        // for every host, whatever TLSA its own zone publishes.
        for d in [
            None,
            Some(DomainDane::NotApplicable("insecure".into())),
            Some(DomainDane::Indeterminate("timeout".into())),
        ] {
            assert_eq!(host_rule(d.as_ref(), "mx.evil.test"), HostRule::MtaSts);
        }
        let d = secure(&[("mx1.dane.test", HostDane::Tlsa(tlsa()))]);
        assert_eq!(host_rule(Some(&d), "MX1.dane.test"), HostRule::Dane(tlsa()));
        assert!(matches!(
            host_rule(Some(&d), "mx.evil.test"),
            HostRule::Skip(_)
        ));
    }

    #[test]
    fn a_failed_tlsa_lookup_rules_the_host_out_never_down_to_mta_sts() {
        // RFC 7672 §2.1.1, also when another host is covered.
        let d = secure(&[
            ("mx1.dane.test", HostDane::Tlsa(tlsa())),
            ("mx2.dane.test", HostDane::Indeterminate("SERVFAIL".into())),
            ("mx3.dane.test", HostDane::None("no TLSA".into())),
        ]);
        assert!(
            matches!(host_rule(Some(&d), "mx2.dane.test"), HostRule::Skip(why) if why.contains("SERVFAIL"))
        );
        assert_eq!(host_rule(Some(&d), "mx3.dane.test"), HostRule::MtaSts);
        let all_failed = secure(&[("mx1.dane.test", HostDane::Indeterminate("bogus".into()))]);
        assert!(!all_failed.applies());
        assert!(matches!(
            host_rule(Some(&all_failed), "mx1.dane.test"),
            HostRule::Skip(_)
        ));
    }

    #[test]
    fn an_authenticated_mx_rrset_decides_which_hosts_are_tried() {
        let forged = vec!["mx.evil.test".to_string()];
        let d = secure(&[
            ("mx1.dane.test", HostDane::Tlsa(tlsa())),
            ("mx2.dane.test", HostDane::None("no TLSA".into())),
        ]);
        assert_eq!(
            hosts_to_try(forged.clone(), Some(&d)),
            ["mx1.dane.test", "mx2.dane.test"]
        );
        for other in [
            None,
            Some(DomainDane::NotApplicable("insecure".into())),
            Some(DomainDane::Indeterminate("timeout".into())),
        ] {
            assert_eq!(hosts_to_try(forged.clone(), other.as_ref()), forged);
        }
    }

    #[test]
    fn the_socketmap_defers_to_dane_only_when_that_is_not_weaker() {
        let full = secure(&[
            ("mx1.dane.test", HostDane::Tlsa(tlsa())),
            ("mx2.dane.test", HostDane::Tlsa(tlsa())),
        ]);
        let partial = secure(&[
            ("mx1.dane.test", HostDane::Tlsa(tlsa())),
            ("mx2.dane.test", HostDane::None("no TLSA".into())),
        ]);
        let failed = secure(&[
            ("mx1.dane.test", HostDane::Tlsa(tlsa())),
            ("mx2.dane.test", HostDane::Indeterminate("SERVFAIL".into())),
        ]);
        for fall_back in [false, true] {
            assert!(socketmap_may_defer_to_dane(Some(&full), fall_back));
            assert!(!socketmap_may_defer_to_dane(None, fall_back));
            assert!(!socketmap_may_defer_to_dane(
                Some(&DomainDane::Indeterminate("x".into())),
                fall_back
            ));
        }
        // dane-only never uses mx2, so it is not weaker than MTA-STS there.
        assert!(socketmap_may_defer_to_dane(Some(&partial), false));
        assert!(socketmap_may_defer_to_dane(Some(&failed), false));
        // `dane` would send to mx2 with opportunistic TLS: not allowed.
        assert!(!socketmap_may_defer_to_dane(Some(&partial), true));
        assert!(!socketmap_may_defer_to_dane(Some(&failed), true));
    }
}
