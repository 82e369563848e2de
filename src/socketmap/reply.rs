//! What Postfix is told. The resolver decides which policy applies; this file
//! only renders it in the `smtp_tls_policy_maps` syntax.

use crate::config::MapConfig;
use crate::resolver::{is_enforcing, Answer, MxSet};
use crate::store::{StoreError, StoredPolicy};

use super::MAX_REPLY;

/// Renders the reply to one lookup.
///
/// - enforce (and testing, if the map says so) → `OK secure match=… [servername=hostname]`,
///   the patterns in policy order, deduplicated, `*.x` written `.x` (Postfix's
///   "any subdomain" form; see the README on wildcard depth).
/// - testing, none, no policy → `NOTFOUND `: Postfix uses its default TLS level.
/// - the store failed → `TEMP`: Postfix defers, which is right because we
///   cannot tell whether an enforce policy exists.
pub fn render(answer: &Result<Answer, StoreError>, map: &MapConfig) -> String {
    render_with_mx(answer, map, None)
}

/// [`render`], for maps with `match_current_mx`: given the domain's current
/// MX hosts, `match=` lists those the policy admits (RFC 8461 §4.1, one label
/// per wildcard) rather than the patterns, which Postfix would read as "any
/// depth". When no current MX host is admitted, or the domain has a null MX,
/// the answer is `TEMP` with the reason: under enforce such a domain is
/// undeliverable (§5), and we never fall back to a weaker match.
pub fn render_with_mx(
    answer: &Result<Answer, StoreError>,
    map: &MapConfig,
    current: Option<&MxSet>,
) -> String {
    if let (Ok(Answer::Policy(p)), Some(mx)) = (answer, current) {
        if map.match_current_mx && is_enforcing(p.policy.mode, map.testing_as_enforce) {
            return render_current(p, map, mx);
        }
    }
    let policy = match answer {
        Ok(Answer::Policy(p)) if is_enforcing(p.policy.mode, map.testing_as_enforce) => p,
        Ok(_) => return "NOTFOUND ".to_string(),
        Err(e) => return temp(&e.to_string()),
    };
    // The parser already drops duplicate patterns, but policies also come
    // back from disk and Redis: dedup again. A linear scan is fastest for
    // the usual handful of patterns; a set keeps a policy with thousands of
    // mx lines linear on every lookup.
    let n = policy.policy.mx.len();
    let mut seen: Vec<String> = Vec::with_capacity(n);
    let mut unique = (n > 16).then(|| std::collections::HashSet::with_capacity(n));
    for pattern in &policy.policy.mx {
        let form = pattern.postfix_form();
        let new = match unique.as_mut() {
            Some(set) => set.insert(form.clone()),
            None => !seen.contains(&form),
        };
        if new {
            seen.push(form);
        }
    }
    if seen.is_empty() {
        // The parser rejects such policies; an empty match= would be read by
        // Postfix as "match nothing" or worse, so never send one.
        return temp(&format!("policy of {} has no mx patterns", policy.domain));
    }
    let mut out = format!("OK secure match={}", seen.join(":"));
    if map.servername {
        out.push_str(" servername=hostname");
    }
    if out.len() > MAX_REPLY {
        return temp(&format!(
            "policy of {} is too large for a socketmap reply",
            policy.domain
        ));
    }
    out
}

fn render_current(p: &StoredPolicy, map: &MapConfig, mx: &MxSet) -> String {
    if mx.null_mx {
        return temp(&format!(
            "{} publishes a null MX (RFC 7505): it accepts no mail",
            p.domain
        ));
    }
    let admitted: Vec<&str> = mx
        .hosts
        .iter()
        .filter(|h| p.policy.allows_mx(h))
        .map(String::as_str)
        .collect();
    if admitted.is_empty() {
        let patterns: Vec<String> = p.policy.mx.iter().map(|m| m.to_string()).collect();
        return temp(&format!(
            "no current MX host of {} ({}) matches its MTA-STS policy ({}); deferred, never sent to an unlisted host",
            p.domain,
            mx.hosts.join(" "),
            patterns.join(" ")
        ));
    }
    let mut out = format!("OK secure match={}", admitted.join(":"));
    if map.servername {
        out.push_str(" servername=hostname");
    }
    if out.len() > MAX_REPLY {
        return temp(&format!(
            "MX list of {} is too large for a socketmap reply",
            p.domain
        ));
    }
    out
}

/// A TEMP reply with a reason Postfix can log: one line of printable text.
pub fn temp(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(400)
        .collect();
    format!("TEMP {clean}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::{parse_policy, Mode};
    use crate::resolver::NoPolicy;
    use crate::store::StoredPolicy;

    fn answer(mode: &str, mx: &[&str]) -> Result<Answer, StoreError> {
        let mut body = format!("version: STSv1\nmode: {mode}\nmax_age: 86400\n");
        for m in mx {
            body.push_str(&format!("mx: {m}\n"));
        }
        let policy = parse_policy(body.as_bytes()).unwrap().policy;
        Ok(Answer::Policy(Arc::new(StoredPolicy {
            domain: "example.test".into(),
            id: "1".into(),
            policy,
            body,
            fetched_at: 0,
            source: Default::default(),
        })))
    }

    fn map(testing_as_enforce: bool, servername: bool) -> MapConfig {
        MapConfig {
            testing_as_enforce,
            servername,
            match_current_mx: false,
        }
    }

    #[test]
    fn enforce_gets_secure_with_patterns_in_order() {
        let a = answer(
            "enforce",
            &["mx2.example.test", "*.example.net", "MX2.example.test."],
        );
        assert_eq!(
            render(&a, &map(false, true)),
            "OK secure match=mx2.example.test:.example.net servername=hostname"
        );
        assert_eq!(
            render(&a, &map(false, false)),
            "OK secure match=mx2.example.test:.example.net"
        );
    }

    #[test]
    fn wildcard_and_exact_of_the_same_domain_stay_distinct() {
        let a = answer("enforce", &["*.example.test", "example.test"]);
        assert_eq!(
            render(&a, &map(false, false)),
            "OK secure match=.example.test:example.test"
        );
    }

    #[test]
    fn testing_none_and_no_policy_are_notfound() {
        assert_eq!(
            render(&answer("testing", &["a.test"]), &map(false, true)),
            "NOTFOUND "
        );
        assert_eq!(render(&answer("none", &[]), &map(true, true)), "NOTFOUND ");
        let none: Result<Answer, StoreError> = Ok(Answer::NoPolicy(NoPolicy::Pending));
        assert_eq!(render(&none, &map(true, true)), "NOTFOUND ");
    }

    #[test]
    fn testing_as_enforce_per_map() {
        assert_eq!(
            render(&answer("testing", &["a.test"]), &map(true, false)),
            "OK secure match=a.test"
        );
        assert!(is_enforcing(Mode::Testing, true));
    }

    #[test]
    fn large_policies_from_storage_are_deduplicated_in_order() {
        // Stored policies bypass the parser; duplicates must still not reach
        // Postfix, for small and large (set-based) pattern lists alike.
        for n in [3usize, 40] {
            let mut mx: Vec<_> = (0..n)
                .map(|i| crate::policy::MxPattern::parse(&format!("mx{i}.example.test")).unwrap())
                .collect();
            mx.extend(mx.clone());
            let Ok(Answer::Policy(p)) = answer("enforce", &["x.test"]) else {
                unreachable!()
            };
            let mut p = (*p).clone();
            p.policy.mx = mx;
            let reply = render(&Ok(Answer::Policy(Arc::new(p))), &map(false, false));
            let list = reply.strip_prefix("OK secure match=").unwrap();
            let names: Vec<&str> = list.split(':').collect();
            assert_eq!(names.len(), n, "{reply}");
            assert_eq!(names[0], "mx0.example.test");
            assert_eq!(names[n - 1], format!("mx{}.example.test", n - 1));
        }
    }

    #[test]
    fn store_failure_is_temp_on_one_line() {
        let e: Result<Answer, StoreError> = Err(StoreError("disk\nbroken".into()));
        assert_eq!(
            render(&e, &map(false, true)),
            "TEMP policy store: disk broken"
        );
    }
}
