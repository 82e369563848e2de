//! How far a policy read from the shared store (Redis) is believed.
//!
//! Whoever can write to Redis is not the domain owner, so a shared entry is
//! checked as if it had come off the network: it must be the policy of the
//! domain it is stored under, its text must parse with the same parser a
//! fetch uses and say what the entry claims, and its times must be sane.
//! Even a well-formed entry is only a shortcut for news that cannot hurt:
//! one that would weaken what this agent holds (or switch protection off
//! for a domain it knows nothing about) is confirmed by a fetch of our own
//! before it is used.

use std::collections::BTreeSet;
use std::fmt;

use super::{PolicySource, StoredPolicy};
use crate::policy::{parse_policy, Mode, MAX_POLICY_BYTES};

/// The largest serialized entry read from Redis. A 64 KiB policy body can
/// grow up to six times when JSON-escaped; anything larger was not written
/// by an agent.
pub const MAX_SHARED_ENTRY_BYTES: usize = 6 * MAX_POLICY_BYTES + 16 * 1024;

/// How far in the future a shared `fetched_at` may be: clock skew between
/// the agents of a fleet, not a way to outlive max_age.
pub const FUTURE_SKEW_SECS: u64 = 300;

/// Why a shared entry is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TooLarge(usize),
    Unreadable(String),
    /// The entry names another domain than its key.
    WrongDomain(String),
    /// Overrides are local configuration; none is ever shared.
    NotFetched,
    BadId(String),
    BadBody(String),
    /// The body parses to another policy than the entry states.
    PolicyMismatch,
    FromTheFuture {
        fetched_at: u64,
        now: u64,
    },
    Expired,
}

impl Rejection {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too-large",
            Rejection::Unreadable(_) => "unreadable",
            Rejection::WrongDomain(_) => "wrong-domain",
            Rejection::NotFetched => "not-fetched",
            Rejection::BadId(_) => "bad-id",
            Rejection::BadBody(_) => "bad-body",
            Rejection::PolicyMismatch => "policy-mismatch",
            Rejection::FromTheFuture { .. } => "future-fetched-at",
            Rejection::Expired => "expired",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooLarge(n) => write!(
                f,
                "entry is larger than {MAX_SHARED_ENTRY_BYTES} bytes ({n} read)"
            ),
            Rejection::Unreadable(e) => write!(f, "entry is not a stored policy: {e}"),
            Rejection::WrongDomain(d) => write!(f, "entry is the policy of {d:?}"),
            Rejection::NotFetched => write!(f, "entry claims to be an override"),
            Rejection::BadId(id) => write!(
                f,
                "id {id:?} is not 1 to 32 letters and digits (RFC 8461 §3.1)"
            ),
            Rejection::BadBody(e) => write!(f, "policy text does not parse: {e}"),
            Rejection::PolicyMismatch => {
                write!(f, "policy fields differ from what the policy text says")
            }
            Rejection::FromTheFuture { fetched_at, now } => write!(
                f,
                "fetched_at {fetched_at} is {} s ahead of this host's clock",
                fetched_at - now
            ),
            Rejection::Expired => write!(f, "max_age has run out"),
        }
    }
}

/// Checks one raw Redis value stored under `key_domain` (normalised). The
/// policy returned is the one parsed from the body, never the stated one.
pub fn check_shared(key_domain: &str, raw: &[u8], now: u64) -> Result<StoredPolicy, Rejection> {
    if raw.len() > MAX_SHARED_ENTRY_BYTES {
        return Err(Rejection::TooLarge(raw.len()));
    }
    let entry: StoredPolicy =
        serde_json::from_slice(raw).map_err(|e| Rejection::Unreadable(e.to_string()))?;
    if entry.domain != key_domain {
        return Err(Rejection::WrongDomain(entry.domain));
    }
    if entry.source != PolicySource::Fetched {
        return Err(Rejection::NotFetched);
    }
    // §3.1: id is 1*32(ALPHA / DIGIT).
    if entry.id.is_empty()
        || entry.id.len() > 32
        || !entry.id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Rejection::BadId(entry.id));
    }
    if entry.body.len() > MAX_POLICY_BYTES {
        return Err(Rejection::BadBody(format!(
            "longer than {MAX_POLICY_BYTES} bytes"
        )));
    }
    let parsed = parse_policy(entry.body.as_bytes())
        .map_err(|e| Rejection::BadBody(e.to_string()))?
        .policy;
    if parsed != entry.policy {
        return Err(Rejection::PolicyMismatch);
    }
    if entry.fetched_at > now.saturating_add(FUTURE_SKEW_SECS) {
        return Err(Rejection::FromTheFuture {
            fetched_at: entry.fetched_at,
            now,
        });
    }
    if !entry.is_valid_at(now) {
        return Err(Rejection::Expired);
    }
    Ok(StoredPolicy {
        policy: parsed,
        ..entry
    })
}

/// How a shared policy would weaken what this agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weakening {
    /// A lower mode: enforce → testing or none, testing → none.
    Mode { from: Mode, to: Mode },
    /// Another set of MX patterns (fewer, more or different): an attacker's
    /// host slipped in, or a listed one dropped so mail bounces.
    MxPatterns,
    /// It runs out before the local copy would (a shorter downgrade-free window).
    ExpiresSooner,
    /// `mode: none` for a domain without a valid local policy: taking it would
    /// keep this agent from discovering the domain's real policy.
    SwitchesOff,
}

impl fmt::Display for Weakening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Weakening::Mode { from, to } => write!(f, "mode {from} would become {to}"),
            Weakening::MxPatterns => write!(f, "the mx patterns differ"),
            Weakening::ExpiresSooner => write!(f, "it expires before the local copy"),
            Weakening::SwitchesOff => write!(f, "mode none for a domain with no local policy"),
        }
    }
}

fn strength(mode: Mode) -> u8 {
    match mode {
        Mode::None => 0,
        Mode::Testing => 1,
        Mode::Enforce => 2,
    }
}

/// The one definition of "weaker": `Some` when adopting `shared` in place
/// of `local` (this agent's copy, if still valid at `now`) could lower
/// protection, so it must be confirmed by a fetch first.
pub fn weakens(local: Option<&StoredPolicy>, shared: &StoredPolicy, now: u64) -> Option<Weakening> {
    let Some(local) = local.filter(|l| l.is_valid_at(now)) else {
        return (shared.policy.mode == Mode::None).then_some(Weakening::SwitchesOff);
    };
    let (from, to) = (local.policy.mode, shared.policy.mode);
    if strength(to) < strength(from) {
        return Some(Weakening::Mode { from, to });
    }
    if from != Mode::None {
        let mine: BTreeSet<String> = local.policy.mx.iter().map(|m| m.to_string()).collect();
        let theirs: BTreeSet<String> = shared.policy.mx.iter().map(|m| m.to_string()).collect();
        if mine != theirs {
            return Some(Weakening::MxPatterns);
        }
    }
    if shared.expires_at() < local.expires_at() {
        return Some(Weakening::ExpiresSooner);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn body(mode: &str, mx: &[&str], max_age: u32) -> String {
        let mut b = format!("version: STSv1\nmode: {mode}\n");
        for m in mx {
            b.push_str(&format!("mx: {m}\n"));
        }
        b.push_str(&format!("max_age: {max_age}\n"));
        b
    }

    fn entry(domain: &str, mode: &str, mx: &[&str], max_age: u32, fetched_at: u64) -> StoredPolicy {
        let body = body(mode, mx, max_age);
        StoredPolicy {
            domain: domain.to_string(),
            id: "20260101".to_string(),
            policy: parse_policy(body.as_bytes()).unwrap().policy,
            body,
            fetched_at,
            source: PolicySource::Fetched,
        }
    }

    fn raw(p: &StoredPolicy) -> Vec<u8> {
        serde_json::to_vec(p).unwrap()
    }

    #[test]
    fn a_sound_entry_is_accepted() {
        let p = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW - 10);
        assert_eq!(check_shared("a.test", &raw(&p), NOW), Ok(p));
    }

    #[test]
    fn another_domains_policy_is_rejected() {
        let p = entry("evil.test", "enforce", &["mx.evil.test"], 86400, NOW);
        assert_eq!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::WrongDomain("evil.test".into()))
        );
    }

    #[test]
    fn stated_fields_must_match_the_text() {
        let mut p = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW);
        p.policy.mode = Mode::None;
        assert_eq!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::PolicyMismatch)
        );
        let mut p = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW);
        p.body = "version: STSv1\nmode: enforce\nmax_age: 1\n".into();
        assert!(matches!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::BadBody(_))
        ));
    }

    #[test]
    fn times_must_be_sane() {
        let p = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW + 3600);
        assert!(matches!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::FromTheFuture { .. })
        ));
        let p = entry(
            "a.test",
            "enforce",
            &["mx.a.test"],
            86400,
            NOW + FUTURE_SKEW_SECS,
        );
        assert!(check_shared("a.test", &raw(&p), NOW).is_ok(), "small skew");
        let p = entry("a.test", "enforce", &["mx.a.test"], 600, NOW - 600);
        assert_eq!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn overrides_ids_and_size_are_checked() {
        let mut p = entry("a.test", "none", &[], 86400, NOW);
        p.source = PolicySource::Override { reason: "x".into() };
        assert_eq!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::NotFetched)
        );
        let mut p = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW);
        p.id = "not valid!".into();
        assert!(matches!(
            check_shared("a.test", &raw(&p), NOW),
            Err(Rejection::BadId(_))
        ));
        let big = vec![b' '; MAX_SHARED_ENTRY_BYTES + 1];
        assert!(matches!(
            check_shared("a.test", &big, NOW),
            Err(Rejection::TooLarge(_))
        ));
        assert!(matches!(
            check_shared("a.test", b"\x00garbage", NOW),
            Err(Rejection::Unreadable(_))
        ));
    }

    #[test]
    fn lower_modes_weaken() {
        let local = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW - 100);
        for (mode, mx) in [("testing", &["mx.a.test"][..]), ("none", &[][..])] {
            let shared = entry("a.test", mode, mx, 86400, NOW);
            assert!(
                matches!(
                    weakens(Some(&local), &shared, NOW),
                    Some(Weakening::Mode { .. })
                ),
                "{mode}"
            );
        }
        let local = entry("a.test", "testing", &["mx.a.test"], 86400, NOW - 100);
        let shared = entry("a.test", "none", &[], 86400, NOW);
        assert!(weakens(Some(&local), &shared, NOW).is_some());
    }

    #[test]
    fn any_other_mx_set_weakens() {
        let local = entry(
            "a.test",
            "enforce",
            &["mx1.a.test", "*.b.a.test"],
            86400,
            NOW - 100,
        );
        for mx in [
            &["mx1.a.test"][..],
            &["mx1.a.test", "*.b.a.test", "evil.test"][..],
            &["evil.test", "*.b.a.test"][..],
        ] {
            let shared = entry("a.test", "enforce", mx, 86400, NOW);
            assert_eq!(
                weakens(Some(&local), &shared, NOW),
                Some(Weakening::MxPatterns),
                "{mx:?}"
            );
        }
        // Order is not meaning.
        let shared = entry(
            "a.test",
            "enforce",
            &["*.b.a.test", "mx1.a.test"],
            86400,
            NOW,
        );
        assert_eq!(weakens(Some(&local), &shared, NOW), None);
    }

    #[test]
    fn renewals_and_stronger_policies_do_not_weaken() {
        let local = entry("a.test", "testing", &["mx.a.test"], 86400, NOW - 100);
        let renewed = entry("a.test", "testing", &["mx.a.test"], 86400, NOW);
        assert_eq!(weakens(Some(&local), &renewed, NOW), None);
        let stronger = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW);
        assert_eq!(weakens(Some(&local), &stronger, NOW), None);
        let none = entry("a.test", "none", &[], 86400, NOW - 100);
        let on = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW);
        assert_eq!(weakens(Some(&none), &on, NOW), None);
    }

    #[test]
    fn a_shorter_life_weakens() {
        let local = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW - 100);
        let shared = entry("a.test", "enforce", &["mx.a.test"], 600, NOW);
        assert_eq!(
            weakens(Some(&local), &shared, NOW),
            Some(Weakening::ExpiresSooner)
        );
    }

    #[test]
    fn without_a_local_policy_only_none_needs_confirming() {
        let shared = entry("a.test", "none", &[], 86400, NOW);
        assert_eq!(weakens(None, &shared, NOW), Some(Weakening::SwitchesOff));
        let expired = entry("a.test", "enforce", &["mx.a.test"], 600, NOW - 700);
        assert_eq!(
            weakens(Some(&expired), &shared, NOW),
            Some(Weakening::SwitchesOff)
        );
        let shared = entry("a.test", "enforce", &["mx.a.test"], 86400, NOW);
        assert_eq!(weakens(None, &shared, NOW), None);
    }
}
