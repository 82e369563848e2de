//! Delivery planning, pure: which MX hosts of a domain a message may go to,
//! in which order, and under which TLS rule, from the domain's policy
//! answer, its DANE status, its MX hosts and the message's own TLS flags.
//!
//! Nothing here does I/O or logs: what the caller must record (TLS-RPT
//! failures, log lines, metrics) comes back as [`Event`]s, so every rule of
//! RFC 8461 §5, RFC 7672 §2 and RFC 8689 §4.2 that decides where mail may
//! go is unit-tested below without a socket.

use std::sync::Arc;

use crate::dane::{host_rule, hosts_to_try, DomainDane, HostRule};
use crate::dns::{Answer as DnsAnswer, MxRecord, TlsaRecord};
use crate::policy::mx::matches_any;
use crate::policy::MxHosts;
use crate::smtp::status::{
    BAD_SYSTEM, CRYPTO_FAILURE, NULL_MX, PERM_ENCRYPTION_NEEDED, TEMP_ENCRYPTION_NEEDED,
};
use crate::store::StoredPolicy;

/// How TLS is applied to one MX host of a delivery.
#[derive(Debug, Clone)]
pub(super) enum TlsMode {
    Enforce(Arc<StoredPolicy>),
    Testing(Arc<StoredPolicy>),
    /// Policy mode none, or no policy; the label says which.
    Opportunistic(&'static str),
    /// This MX host has DNSSEC-authenticated TLSA records (RFC 7672), which
    /// take precedence over MTA-STS (RFC 8461 §2): TLS required, the chain
    /// must match them, no fallback of any kind.
    Dane(Vec<TlsaRecord>),
}

impl TlsMode {
    pub(super) fn label(&self) -> &'static str {
        match self {
            TlsMode::Enforce(_) => "enforce",
            TlsMode::Testing(_) => "testing",
            TlsMode::Opportunistic(l) => l,
            TlsMode::Dane(_) => "dane",
        }
    }

    /// What a strict mode is called in reasons: `MTA-STS enforce`, `DANE`.
    pub(super) fn name_in_reasons(&self) -> &'static str {
        match self {
            TlsMode::Dane(_) => "DANE",
            _ => "MTA-STS enforce",
        }
    }

    /// No plaintext, no HELO, no fallback.
    pub(super) fn strict(&self) -> bool {
        matches!(self, TlsMode::Enforce(_) | TlsMode::Dane(_))
    }

    pub(super) fn policy(&self) -> Option<&StoredPolicy> {
        match self {
            TlsMode::Enforce(p) | TlsMode::Testing(p) => Some(p),
            TlsMode::Opportunistic(_) | TlsMode::Dane(_) => None,
        }
    }

    /// Everything a session was checked against: two sessions may stand in
    /// for each other only when this is equal. The policy's id and its text
    /// both count (an id is the publisher's promise that the text is the
    /// same, RFC 8461 §3.1, but an attacker-forced refetch could bring a new
    /// text under an old id), and so does every TLSA record.
    pub(super) fn reuse_key(&self, out: &mut String) {
        out.push_str(self.label());
        out.push('\u{1}');
        if let Some(p) = self.policy() {
            out.push_str(&p.id);
            out.push('\u{1}');
            out.push_str(&p.body);
        }
        if let TlsMode::Dane(records) = self {
            for r in records {
                out.push_str(&r.to_string());
                out.push('\u{1}');
            }
        }
    }
}

/// The message's own TLS requests applied to the domain's policy mode.
pub(super) fn message_mode(mode: TlsMode, requiretls: bool, tls_optional: bool) -> TlsMode {
    match mode {
        // RFC 8689 §4.2.1: for a REQUIRETLS message a policy in "testing"
        // mode is applied as if it were "enforce".
        TlsMode::Testing(p) if requiretls => TlsMode::Enforce(p),
        // RFC 8689 §4.2.2: TLS-Required: No asks that the policy not be
        // enforced; the checks are still made, logged and reported,
        // exactly as under "testing". §3: REQUIRETLS wins over it.
        TlsMode::Enforce(p) if tls_optional && !requiretls => TlsMode::Testing(p),
        m => m,
    }
}

/// A result for every recipient of the delivery, decided before any
/// session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    pub permanent: bool,
    pub reason: String,
    pub code: &'static str,
}

impl Verdict {
    fn new(permanent: bool, reason: String, code: &'static str) -> Verdict {
        Verdict {
            permanent,
            reason,
            code,
        }
    }
}

/// The hosts to try from the MX answer, by the one MX-set rule
/// ([`MxHosts`]: RFC 5321 §5.1 implicit MX, RFC 7505 null MX, duplicates
/// dropped in order); a domain that cannot take mail is a verdict.
pub(super) fn mx_hosts(domain: &str, answer: DnsAnswer<MxRecord>) -> Result<Vec<String>, Verdict> {
    match answer.mx_hosts(domain) {
        MxHosts::NoDomain => Err(Verdict::new(
            true,
            format!("domain {domain} does not exist"),
            BAD_SYSTEM,
        )),
        // RFC 7505 §3: a null MX means the domain accepts no mail, whatever
        // else is listed beside it.
        MxHosts::NullMx { .. } => Err(Verdict::new(
            true,
            format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
            NULL_MX,
        )),
        MxHosts::Hosts(hosts) => Ok(hosts),
    }
}

/// The message's side of the plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    pub domain: &'a str,
    pub requiretls: bool,
    pub tls_optional: bool,
    /// The policy could not be had now (backoff, or still being fetched):
    /// a REQUIRETLS message is deferred rather than bounced.
    pub policy_unknown: bool,
}

/// One MX host to try, and its rule.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub host: String,
    pub mode: TlsMode,
}

/// Something the caller must log, count or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// TLS-Required: No: this DANE host's TLSA records are not enforced.
    DaneWaived { host: String },
    /// RFC 7672 §2.1.1: the host is not used (`dnssec-invalid`).
    DnssecInvalid { host: String, why: String },
    /// The host is not listed in the MTA-STS policy (`validation-failure`);
    /// under enforce it is not contacted.
    NotListed { host: String, enforce: bool },
    /// A REQUIRETLS message, and no host is authenticated.
    NoAuthenticatedMx { policy_unknown: bool },
}

#[derive(Debug)]
pub(super) struct Plan {
    pub events: Vec<Event>,
    /// What ruled hosts out, for the reason of a later deferral.
    pub failures: Vec<String>,
    pub outcome: Result<Vec<Candidate>, Verdict>,
}

/// The hosts to try, in order, and the rule of each.
pub(super) fn plan(
    msg: Message<'_>,
    mode: &TlsMode,
    dane: Option<&DomainDane>,
    hosts: Vec<String>,
    max_mx_hosts: usize,
) -> Plan {
    let mut events = Vec::new();
    let mut failures = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    for host in hosts_to_try(hosts, dane) {
        match host_rule(dane, &host) {
            HostRule::Dane(_) if msg.tls_optional && !msg.requiretls => {
                // RFC 8689 §4.2.2: the TLSA records are not enforced.
                events.push(Event::DaneWaived { host: host.clone() });
                candidates.push(Candidate {
                    host,
                    mode: TlsMode::Opportunistic("tls-required-no"),
                });
                continue;
            }
            HostRule::Dane(records) => {
                // DANE wins over MTA-STS for this host, listed or not.
                candidates.push(Candidate {
                    host,
                    mode: TlsMode::Dane(records),
                });
                continue;
            }
            HostRule::MtaSts => {}
            HostRule::Skip(why) => {
                failures.push(format!("{host}: {why}"));
                events.push(Event::DnssecInvalid { host, why });
                continue;
            }
        }
        if let Some(policy) = mode.policy() {
            if !matches_any(&policy.policy.mx, &host) {
                let enforce = matches!(mode, TlsMode::Enforce(_));
                events.push(Event::NotListed {
                    host: host.clone(),
                    enforce,
                });
                if enforce {
                    continue;
                }
            }
        }
        candidates.push(Candidate {
            host,
            mode: mode.clone(),
        });
    }
    let done = |events, failures, outcome| Plan {
        events,
        failures,
        outcome,
    };
    if msg.requiretls {
        // RFC 8689 §4.2.1 items 1-2: only an MX host authenticated by DANE
        // or by an (enforced) MTA-STS policy, which the strict modes are;
        // an opportunistic host is never contacted.
        let before = candidates.len();
        candidates.retain(|c| c.mode.strict());
        if candidates.is_empty() && before > 0 {
            events.push(Event::NoAuthenticatedMx {
                policy_unknown: msg.policy_unknown,
            });
            // X.7.10 "encryption needed" (RFC 5248's registry; RFC 8689
            // registers only 5.7.30, for a hop without the extension):
            // permanent when the domain provably has no policy.
            let verdict = if msg.policy_unknown {
                Verdict::new(
                    false,
                    format!(
                        "REQUIRETLS: the MTA-STS policy of {} cannot be had right now; retried",
                        msg.domain
                    ),
                    TEMP_ENCRYPTION_NEEDED,
                )
            } else {
                Verdict::new(
                    true,
                    format!("REQUIRETLS: {} has no MTA-STS policy and no DANE-authenticated MX host, so the message cannot be delivered with the TLS its sender required", msg.domain),
                    PERM_ENCRYPTION_NEEDED,
                )
            };
            return done(events, failures, Err(verdict));
        }
    }
    candidates.truncate(max_mx_hosts);
    if candidates.is_empty() && !failures.is_empty() {
        let reason = format!("no usable MX host: {}", failures.join("; "));
        return done(
            events,
            failures,
            Err(Verdict::new(false, reason, CRYPTO_FAILURE)),
        );
    }
    if candidates.is_empty() {
        let policy_id = mode.policy().map(|p| p.id.as_str()).unwrap_or("");
        let reason = format!(
            "no MX host of {} is allowed by its MTA-STS policy (enforce, id {policy_id}); mail is held until the MX records or the policy change",
            msg.domain
        );
        return done(
            events,
            failures,
            Err(Verdict::new(false, reason, CRYPTO_FAILURE)),
        );
    }
    done(events, failures, Ok(candidates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::HostDane;
    use crate::policy::Mode;

    fn policy(mode: Mode, mx: &[&str], id: &str) -> Arc<StoredPolicy> {
        let text = format!(
            "version: STSv1\nmode: {}\n{}max_age: 86400\n",
            match mode {
                Mode::Enforce => "enforce",
                Mode::Testing => "testing",
                Mode::None => "none",
            },
            mx.iter().map(|m| format!("mx: {m}\n")).collect::<String>()
        );
        let parsed =
            crate::policy::document::parse_policy(text.as_bytes()).expect("a valid test policy");
        Arc::new(StoredPolicy {
            domain: "example.test".to_string(),
            id: id.to_string(),
            policy: parsed.policy,
            body: text,
            fetched_at: 0,
            source: Default::default(),
        })
    }

    fn enforce(mx: &[&str]) -> TlsMode {
        TlsMode::Enforce(policy(Mode::Enforce, mx, "id1"))
    }

    fn testing(mx: &[&str]) -> TlsMode {
        TlsMode::Testing(policy(Mode::Testing, mx, "id1"))
    }

    fn msg() -> Message<'static> {
        Message {
            domain: "example.test",
            requiretls: false,
            tls_optional: false,
            policy_unknown: false,
        }
    }

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    fn tlsa() -> Vec<TlsaRecord> {
        vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }]
    }

    fn secure(entries: Vec<(&str, HostDane)>) -> DomainDane {
        DomainDane::Secure {
            hosts: entries
                .into_iter()
                .map(|(h, d)| (h.to_string(), d))
                .collect(),
        }
    }

    fn names(p: &Plan) -> Vec<(String, &'static str)> {
        p.outcome
            .as_ref()
            .expect("candidates")
            .iter()
            .map(|c| (c.host.clone(), c.mode.label()))
            .collect()
    }

    fn mx(pref: u16, host: &str) -> MxRecord {
        MxRecord {
            preference: pref,
            exchange: host.to_string(),
        }
    }

    #[test]
    fn enforce_contacts_only_listed_hosts_in_order() {
        // RFC 8461 §4.1: an MX host not matching the policy is not used.
        let p = plan(
            msg(),
            &enforce(&["mx1.example.test", "*.backup.test"]),
            None,
            hosts(&["evil.test", "mx1.example.test", "b.backup.test"]),
            5,
        );
        assert_eq!(
            names(&p),
            vec![
                ("mx1.example.test".to_string(), "enforce"),
                ("b.backup.test".to_string(), "enforce")
            ]
        );
        assert_eq!(
            p.events,
            vec![Event::NotListed {
                host: "evil.test".into(),
                enforce: true
            }]
        );
    }

    #[test]
    fn enforce_with_no_listed_host_holds_the_mail() {
        let p = plan(
            msg(),
            &enforce(&["mx.example.test"]),
            None,
            hosts(&["evil.test"]),
            5,
        );
        let v = p.outcome.expect_err("nothing to try");
        assert!(
            !v.permanent,
            "held, never bounced: the MX records may be fixed"
        );
        assert_eq!(v.code, "4.7.5");
        assert!(v.reason.contains("id id1"), "{}", v.reason);
    }

    #[test]
    fn testing_reports_unlisted_hosts_and_delivers_anyway() {
        // RFC 8461 §5: testing mode reports, but does not refuse delivery.
        let p = plan(
            msg(),
            &testing(&["mx.example.test"]),
            None,
            hosts(&["other.test"]),
            5,
        );
        assert_eq!(names(&p), vec![("other.test".to_string(), "testing")]);
        assert_eq!(
            p.events,
            vec![Event::NotListed {
                host: "other.test".into(),
                enforce: false
            }]
        );
    }

    #[test]
    fn no_policy_is_opportunistic_for_every_host() {
        let p = plan(
            msg(),
            &TlsMode::Opportunistic("no-policy"),
            None,
            hosts(&["a.test", "b.test"]),
            5,
        );
        assert_eq!(
            names(&p),
            vec![
                ("a.test".to_string(), "no-policy"),
                ("b.test".to_string(), "no-policy")
            ]
        );
        assert!(p.events.is_empty());
    }

    #[test]
    fn dane_host_wins_over_an_enforce_policy_that_does_not_list_it() {
        // RFC 8461 §2: DANE takes precedence over MTA-STS for that host.
        let dane = secure(vec![("dane.example.test", HostDane::Tlsa(tlsa()))]);
        let p = plan(
            msg(),
            &enforce(&["mx.example.test"]),
            Some(&dane),
            hosts(&["dane.example.test"]),
            5,
        );
        assert_eq!(names(&p), vec![("dane.example.test".to_string(), "dane")]);
        assert!(p.events.is_empty());
    }

    #[test]
    fn unsigned_mx_answer_cannot_add_a_host_to_a_signed_rrset() {
        // RFC 7672 §2.2.1: the hosts are those of the authenticated RRset.
        let dane = secure(vec![("dane.example.test", HostDane::Tlsa(tlsa()))]);
        let p = plan(
            msg(),
            &TlsMode::Opportunistic("no-policy"),
            Some(&dane),
            hosts(&["forged.test", "dane.example.test"]),
            5,
        );
        assert_eq!(names(&p), vec![("dane.example.test".to_string(), "dane")]);
    }

    #[test]
    fn failed_tlsa_lookup_rules_the_host_out() {
        // RFC 7672 §2.1.1: a host whose TLSA lookup failed is not used.
        let dane = secure(vec![
            (
                "bad.example.test",
                HostDane::Indeterminate("SERVFAIL".into()),
            ),
            ("ok.example.test", HostDane::Tlsa(tlsa())),
        ]);
        let p = plan(
            msg(),
            &TlsMode::Opportunistic("no-policy"),
            Some(&dane),
            hosts(&[]),
            5,
        );
        assert_eq!(names(&p), vec![("ok.example.test".to_string(), "dane")]);
        assert!(
            matches!(&p.events[0], Event::DnssecInvalid { host, .. } if host == "bad.example.test")
        );
        assert_eq!(p.failures.len(), 1);
    }

    #[test]
    fn only_ruled_out_hosts_defer_with_the_reasons() {
        let dane = secure(vec![(
            "bad.example.test",
            HostDane::Indeterminate("timeout".into()),
        )]);
        let p = plan(
            msg(),
            &enforce(&["*.example.test"]),
            Some(&dane),
            hosts(&[]),
            5,
        );
        let v = p.outcome.expect_err("no usable host");
        assert_eq!(v.code, "4.7.5");
        assert!(!v.permanent);
        assert!(
            v.reason
                .contains("bad.example.test: TLSA lookup failed: timeout"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn insecure_dane_host_falls_back_to_the_mta_sts_rule() {
        let dane = secure(vec![(
            "mx.example.test",
            HostDane::None("no TLSA records".into()),
        )]);
        let p = plan(
            msg(),
            &enforce(&["mx.example.test"]),
            Some(&dane),
            hosts(&["mx.example.test"]),
            5,
        );
        assert_eq!(names(&p), vec![("mx.example.test".to_string(), "enforce")]);
    }

    #[test]
    fn requiretls_applies_testing_as_enforce() {
        // RFC 8689 §4.2.1.
        let m = message_mode(testing(&["mx.example.test"]), true, false);
        assert_eq!(m.label(), "enforce");
        let p = plan(
            Message {
                requiretls: true,
                ..msg()
            },
            &m,
            None,
            hosts(&["other.test", "mx.example.test"]),
            5,
        );
        assert_eq!(names(&p), vec![("mx.example.test".to_string(), "enforce")]);
    }

    #[test]
    fn tls_required_no_turns_enforce_into_testing_but_not_under_requiretls() {
        // RFC 8689 §4.2.2, and §3: REQUIRETLS wins.
        assert_eq!(
            message_mode(enforce(&["a"]), false, true).label(),
            "testing"
        );
        assert_eq!(message_mode(enforce(&["a"]), true, true).label(), "enforce");
        assert_eq!(
            message_mode(testing(&["a"]), false, false).label(),
            "testing"
        );
    }

    #[test]
    fn tls_required_no_waives_dane_unless_requiretls() {
        let dane = secure(vec![("dane.example.test", HostDane::Tlsa(tlsa()))]);
        let waived = plan(
            Message {
                tls_optional: true,
                ..msg()
            },
            &TlsMode::Opportunistic("no-policy"),
            Some(&dane),
            hosts(&[]),
            5,
        );
        assert_eq!(
            names(&waived),
            vec![("dane.example.test".to_string(), "tls-required-no")]
        );
        let kept = plan(
            Message {
                tls_optional: true,
                requiretls: true,
                ..msg()
            },
            &TlsMode::Opportunistic("no-policy"),
            Some(&dane),
            hosts(&[]),
            5,
        );
        assert_eq!(
            names(&kept),
            vec![("dane.example.test".to_string(), "dane")]
        );
    }

    #[test]
    fn requiretls_without_any_authenticated_host_bounces_or_defers() {
        let r = Message {
            requiretls: true,
            ..msg()
        };
        let none = TlsMode::Opportunistic("no-policy");
        let v = plan(r, &none, None, hosts(&["mx.test"]), 5)
            .outcome
            .expect_err("refused");
        assert_eq!((v.permanent, v.code), (true, "5.7.10"));
        let unknown = Message {
            policy_unknown: true,
            ..r
        };
        let p = plan(unknown, &none, None, hosts(&["mx.test"]), 5);
        assert_eq!(
            p.events,
            vec![Event::NoAuthenticatedMx {
                policy_unknown: true
            }]
        );
        let v = p.outcome.expect_err("deferred");
        assert_eq!((v.permanent, v.code), (false, "4.7.10"));
    }

    #[test]
    fn at_most_max_mx_hosts_are_tried() {
        let p = plan(
            msg(),
            &TlsMode::Opportunistic("no-policy"),
            None,
            hosts(&["a.test", "b.test", "c.test"]),
            2,
        );
        assert_eq!(names(&p).len(), 2);
    }

    #[test]
    fn mx_answer_rules() {
        // RFC 5321 §5.1: no MX, the domain itself.
        assert_eq!(
            mx_hosts("d.test", DnsAnswer::NoRecords { nxdomain: false }),
            Ok(vec!["d.test".to_string()])
        );
        let gone = mx_hosts("d.test", DnsAnswer::NoRecords { nxdomain: true }).expect_err("nx");
        assert_eq!((gone.permanent, gone.code), (true, "5.1.2"));
        // RFC 7505 §3: a null MX means no mail, whatever else is listed.
        let null = mx_hosts(
            "d.test",
            DnsAnswer::Records(vec![mx(10, "a.test"), mx(0, "")]),
        )
        .expect_err("null MX");
        assert_eq!((null.permanent, null.code), (true, "5.1.10"));
        assert_eq!(
            mx_hosts(
                "d.test",
                DnsAnswer::Records(vec![mx(10, "a.test"), mx(20, "b.test"), mx(30, "a.test")])
            ),
            Ok(hosts(&["a.test", "b.test"]))
        );
    }

    #[test]
    fn reuse_keys_differ_by_mode_policy_text_and_tlsa() {
        let key = |m: &TlsMode| {
            let mut s = String::new();
            m.reuse_key(&mut s);
            s
        };
        let a = enforce(&["mx.test"]);
        assert_eq!(key(&a), key(&a.clone()));
        assert_ne!(key(&a), key(&testing(&["mx.test"])));
        assert_ne!(key(&a), key(&enforce(&["mx.test", "mx2.test"])));
        let other_id = TlsMode::Enforce(policy(Mode::Enforce, &["mx.test"], "id2"));
        assert_ne!(key(&a), key(&other_id));
        let mut records = tlsa();
        let d1 = TlsMode::Dane(records.clone());
        records[0].data[0] = 8;
        assert_ne!(key(&d1), key(&TlsMode::Dane(records)));
        assert_ne!(
            key(&TlsMode::Opportunistic("no-policy")),
            key(&TlsMode::Opportunistic("tls-required-no"))
        );
    }
}
