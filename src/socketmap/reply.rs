//! What Postfix is told. The resolver decides which policy applies; this file
//! only renders it in the `smtp_tls_policy_maps` syntax.

use crate::config::{DaneReply, MapConfig};
use crate::policy::{normalize_domain, Policy};
use crate::resolver::{is_enforcing, Answer, MxSet};
use crate::store::{PolicySource, StoreError, StoredPolicy};

use super::MAX_REPLY;

/// Renders the reply to one lookup.
///
/// - enforce (and testing, if the map says so) → `OK secure match=… [servername=hostname]`,
///   the patterns in policy order, deduplicated, `*.x` written `.x` (Postfix's
///   "any subdomain" form; see the README on wildcard depth).
/// - testing, none, no policy → `NOTFOUND `: Postfix uses its default TLS level.
/// - the store failed → `TEMP`: Postfix defers, which is right because we
///   cannot tell whether an enforce policy exists.
/// - maps with `tlsrpt`: enforce replies carry Postfix's TLSRPT attributes,
///   see [`tlsrpt_attributes`]; every other reply is unchanged.
pub fn render(answer: &Result<Answer, StoreError>, map: &MapConfig) -> String {
    render_with_mx(answer, map, None)
}

/// The answer for an enforce domain protected by DANE (RFC 8461 §2: DANE
/// wins over MTA-STS), per the map's `dane` setting; None for `off`.
/// Postfix then looks up and checks the TLSA records itself, which needs
/// `smtp_dns_support_level = dnssec` and a validating resolver.
pub fn render_dane(map: &MapConfig) -> Option<String> {
    match map.dane {
        DaneReply::DaneOnly => Some("OK dane-only".to_string()),
        DaneReply::Dane => Some("OK dane".to_string()),
        DaneReply::Notfound => Some("NOTFOUND ".to_string()),
        DaneReply::Off => None,
    }
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
    // mx lines linear on every lookup. Patterns are compared and written in
    // place, not copied: this runs on every lookup.
    let n = policy.policy.mx.len();
    let mut seen: Vec<(bool, &str)> = Vec::with_capacity(n.min(16));
    let mut unique = (n > 16).then(|| std::collections::HashSet::with_capacity(n));
    let room: usize = policy.policy.mx.iter().map(|p| p.parts().1.len() + 2).sum();
    let mut out = String::with_capacity(48 + room);
    out.push_str("OK secure match=");
    let mut written = 0usize;
    for pattern in &policy.policy.mx {
        let form = pattern.parts();
        let new = match unique.as_mut() {
            Some(set) => set.insert(form),
            None if seen.contains(&form) => false,
            None => {
                seen.push(form);
                true
            }
        };
        if new {
            if written > 0 {
                out.push(':');
            }
            if form.0 {
                out.push('.');
            }
            out.push_str(form.1);
            written += 1;
        }
    }
    if written == 0 {
        // The parser rejects such policies; an empty match= would be read by
        // Postfix as "match nothing" or worse, so never send one.
        return temp(&format!("policy of {} has no mx patterns", policy.domain));
    }
    if map.servername {
        out.push_str(" servername=hostname");
    }
    if out.len() > MAX_REPLY {
        return temp(&format!(
            "policy of {} is too large for a socketmap reply",
            policy.domain
        ));
    }
    with_tlsrpt(out, policy, map)
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
    with_tlsrpt(out, p, map)
}

// ---------------------------------------------------------------------------
// Postfix TLSRPT attributes (maps with `tlsrpt = true`). Every rule about them
// lives here. Sources (Postfix source tree, github.com/vdukhovni/postfix):
//
// - README_FILES/TLSRPT_README, "MTA-STS Support via smtp_tls_policy_maps":
//   the plugin answers "the usual security level and matching requirements,
//   plus" `policy_type=sts|no-policy-found`, `policy_domain=name`,
//   `policy_ttl=time`, `{ policy_string = value }` once per policy line
//   ("Specify { name = value } when a value may contain whitespace"),
//   `mx_host_pattern=pattern` once per `mx:` line, and
//   `policy_failure=sts-policy-fetch-error|sts-policy-invalid|
//   sts-webpki-invalid|validation-failure`. "Postfix 3.10 and later will
//   accept these attributes … even if TLSRPT support is disabled"; "it is an
//   error to specify these attributes for a non-STS policy".
// - src/smtp/smtp.h: the names (EXT_POLICY_TTL "policy_ttl", EXT_POLICY_TYPE
//   "policy_type", EXT_POLICY_DOMAIN "policy_domain", EXT_POLICY_STRING
//   "policy_string", EXT_MX_HOST_PATTERN "mx_host_pattern",
//   EXT_POLICY_FAILURE "policy_failure").
// - src/smtp/smtp_tls_policy.c, tls_policy_lookup_one(): the reply is split
//   with mystrtokq(&policy, CHARS_COMMA_SP, CHARS_BRACE), i.e. on runs of
//   ", \t\r\n" outside balanced "{}"; a token starting with "{" is unwrapped
//   by extpar(.., CHARS_BRACE, EXTPAR_FLAG_STRIP | EXTPAR_FLAG_NORMAL_WS)
//   (text after the closing brace is an error); then split_nameval() cuts
//   at the first "=" and trims whitespace around name and value. An unknown
//   name, a repeated single-instance attribute, an invalid policy_type or
//   policy_failure, or a policy_domain that fails valid_hostname() makes the
//   whole policy invalid: Postfix defers the mail ("4.7.5 client TLS
//   configuration problem"). Postfix before 3.10 knows none of these names
//   and rejects every such reply the same way: hence the option, off by
//   default.
// - src/smtp/smtp_tlsrpt.c, smtp_tlsrpt_set_ext_policy(): for policy_type=sts
//   Postfix dereferences its policy_string and mx_host_pattern lists without
//   a null check, so both are always sent, at least one of each.
//
// Decisions:
// - Only enforce replies (and testing ones on testing_as_enforce maps) carry
//   the attributes. A testing policy could only be reported with a level of
//   our choosing (`may …`), which would override the administrator's own
//   smtp_tls_security_level (say `dane` or `encrypt`): it stays NOTFOUND.
// - No policy_failure, ever. TLSRPT_README: it "forces MTA-STS policy
//   enforcement to fail with the indicated error", i.e. Postfix would refuse
//   delivery. For a domain whose policy could not be fetched (and that has
//   none cached) RFC 8461 §5 says deliver as without a policy, so that stays
//   NOTFOUND; there is no failure reply that leaves the security level alone.
// - No policy_ttl: Postfix's per-process cache of the reply is short-lived
//   already, and our answer may change whenever the policy is refreshed.
// - Administrator overrides get no attributes: they are not the domain's
//   policy, and its TLS-RPT reports must not describe them as such.
// - mx_host_pattern is the policy's own form (`*.example.net`, not Postfix's
//   `.example.net`), all patterns of the policy even on match_current_mx maps.
// - policy_string: one per non-empty line of the policy as served, CR
//   stripped; each character Postfix could not carry verbatim inside
//   `{ policy_string = … }` is replaced (ASCII controls by a space, since
//   Postfix normalises whitespace anyway; "{", "}" and non-ASCII by "?"),
//   runs of spaces are collapsed and the ends trimmed (split_nameval trims),
//   so each value round-trips exactly and no line can open or close a brace,
//   start another attribute or cut the reply. A stored policy without its
//   text gets the lines rebuilt from the parsed policy.
// - If anything cannot be rendered, or the reply would exceed Postfix's
//   100000-byte socketmap reply limit, the reply goes out without the
//   attributes: the security level never depends on reporting.
// ---------------------------------------------------------------------------

/// Appends the TLSRPT attributes to an enforce reply when the map asks for
/// them and they fit.
fn with_tlsrpt(mut reply: String, p: &StoredPolicy, map: &MapConfig) -> String {
    if !map.tlsrpt {
        return reply;
    }
    match tlsrpt_attributes(p, MAX_REPLY.saturating_sub(reply.len())) {
        Some(attributes) => reply.push_str(&attributes),
        None => tracing::debug!(
            domain = %p.domain,
            "TLSRPT attributes left out of the reply (override, unrenderable or too large)"
        ),
    }
    reply
}

/// The TLSRPT attributes for `p`, each preceded by a space, or `None` when
/// they cannot be rendered safely or would be longer than `room` bytes. See
/// the rules above.
pub fn tlsrpt_attributes(p: &StoredPolicy, room: usize) -> Option<String> {
    if !matches!(p.source, PolicySource::Fetched) {
        return None;
    }
    // Postfix checks policy_domain with valid_hostname(); ours is stricter.
    let domain = normalize_domain(&p.domain).ok()?;
    let mut out = format!(
        " policy_type={} policy_domain={domain}",
        crate::policy::PolicyType::Sts
    );
    // Deduplicated like match= (stored policies bypass the parser).
    let mut seen = std::collections::HashSet::with_capacity(p.policy.mx.len());
    for pattern in &p.policy.mx {
        if !seen.insert(pattern) {
            continue;
        }
        let form = pattern.to_string();
        if !form
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'))
        {
            return None;
        }
        out.push_str(" mx_host_pattern=");
        out.push_str(&form);
        if out.len() > room {
            return None;
        }
    }
    if seen.is_empty() {
        return None;
    }
    let mut lines = policy_strings(&p.body);
    if lines.is_empty() {
        lines = rebuilt_policy_strings(&p.policy);
    }
    for line in lines {
        out.push_str(" { policy_string = ");
        out.push_str(&line);
        out.push_str(" }");
        if out.len() > room {
            return None;
        }
    }
    Some(out)
}

/// The `policy_string` values of a policy text: one per non-empty line,
/// made safe inside `{ policy_string = … }` (see the rules above).
pub fn policy_strings(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| {
            let mut value = String::with_capacity(line.len());
            for c in line.chars() {
                let c = match c {
                    '{' | '}' => '?',
                    ' '..='~' => c,
                    c if c.is_ascii_control() => ' ',
                    _ => '?',
                };
                if c == ' ' && (value.is_empty() || value.ends_with(' ')) {
                    continue;
                }
                value.push(c);
            }
            if value.ends_with(' ') {
                value.pop();
            }
            (!value.is_empty()).then_some(value)
        })
        .collect()
}

/// Policy lines for a stored policy whose text was not kept.
fn rebuilt_policy_strings(policy: &Policy) -> Vec<String> {
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", policy.mode),
    ];
    lines.extend(policy.mx.iter().map(|m| format!("mx: {m}")));
    lines.push(format!("max_age: {}", policy.max_age));
    lines
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
    use crate::resolver::{Failure, NoPolicy};
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
            tlsrpt: false,
            dane: Default::default(),
        }
    }

    fn tlsrpt_map(servername: bool) -> MapConfig {
        MapConfig {
            tlsrpt: true,
            dane: Default::default(),
            ..map(false, servername)
        }
    }

    /// A fetched enforce policy of `domain` with exactly this text.
    fn with_body(domain: &str, body: &str) -> Result<Answer, StoreError> {
        let policy = parse_policy(body.as_bytes()).unwrap().policy;
        Ok(Answer::Policy(Arc::new(StoredPolicy {
            domain: domain.into(),
            id: "1".into(),
            policy,
            body: body.into(),
            fetched_at: 0,
            source: Default::default(),
        })))
    }

    const TWO_PATTERNS: &str =
        "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmx: *.example.net\nmax_age: 86400\n";
    const TWO_PATTERNS_TLSRPT: &str = " policy_type=sts policy_domain=example.test \
        mx_host_pattern=mx1.example.test mx_host_pattern=*.example.net \
        { policy_string = version: STSv1 } { policy_string = mode: enforce } \
        { policy_string = mx: mx1.example.test } { policy_string = mx: *.example.net } \
        { policy_string = max_age: 86400 }";

    #[test]
    fn tlsrpt_enforce_with_two_patterns_and_servername_on_or_off() {
        let a = with_body("example.test", TWO_PATTERNS);
        assert_eq!(
            render(&a, &tlsrpt_map(true)),
            format!(
                "OK secure match=mx1.example.test:.example.net servername=hostname{TWO_PATTERNS_TLSRPT}"
            )
        );
        assert_eq!(
            render(&a, &tlsrpt_map(false)),
            format!("OK secure match=mx1.example.test:.example.net{TWO_PATTERNS_TLSRPT}")
        );
        // Off (the default): the reply Postfix < 3.10 accepts, unchanged.
        assert!(!MapConfig::default().tlsrpt);
        assert_eq!(
            render(&a, &MapConfig::default()),
            "OK secure match=mx1.example.test:.example.net servername=hostname"
        );
    }

    #[test]
    fn tlsrpt_with_match_current_mx_keeps_the_policy_patterns() {
        let a = with_body("example.test", TWO_PATTERNS);
        let m = MapConfig {
            match_current_mx: true,
            ..tlsrpt_map(true)
        };
        let mx = MxSet::for_test(
            &["a.b.example.net", "mx2.example.net", "mx1.example.test"],
            false,
        );
        assert_eq!(
            render_with_mx(&a, &m, Some(&mx)),
            format!(
                "OK secure match=mx2.example.net:mx1.example.test servername=hostname{TWO_PATTERNS_TLSRPT}"
            )
        );
        // A deferral stays a bare TEMP.
        let none = MxSet::for_test(&["a.b.example.net"], false);
        assert!(render_with_mx(&a, &m, Some(&none)).starts_with("TEMP no current MX host"));
        let null = MxSet::for_test(&[], true);
        assert!(render_with_mx(&a, &m, Some(&null))
            .starts_with("TEMP example.test publishes a null MX"));
    }

    #[test]
    fn tlsrpt_only_on_enforced_replies() {
        let m = tlsrpt_map(true);
        assert_eq!(render(&answer("testing", &["a.test"]), &m), "NOTFOUND ");
        assert_eq!(render(&answer("none", &[]), &m), "NOTFOUND ");
        // A failed fetch without a cached policy: deliver as without MTA-STS
        // (RFC 8461 §5); a policy_failure would make Postfix refuse delivery.
        for why in [
            NoPolicy::Backoff(Failure::Fetch {
                reason: "policy fetch failed: HTTP 500".into(),
                result_type: crate::policy::ResultType::StsPolicyFetchError,
            }),
            NoPolicy::Backoff(Failure::Discovery("TXT lookup failed".into())),
            NoPolicy::NoRecord("NXDOMAIN".into()),
            NoPolicy::Pending,
        ] {
            assert_eq!(render(&Ok(Answer::NoPolicy(why)), &m), "NOTFOUND ");
        }
        let e: Result<Answer, StoreError> = Err(StoreError::Unavailable("disk".into()));
        assert_eq!(render(&e, &m), "TEMP policy store: disk");
        // testing_as_enforce: enforced, so reported, with the policy's own mode.
        let strict = MapConfig {
            testing_as_enforce: true,
            ..tlsrpt_map(false)
        };
        assert_eq!(
            render(&answer("testing", &["a.test"]), &strict),
            "OK secure match=a.test policy_type=sts policy_domain=example.test \
             mx_host_pattern=a.test { policy_string = version: STSv1 } \
             { policy_string = mode: testing } { policy_string = max_age: 86400 } \
             { policy_string = mx: a.test }"
        );
    }

    #[test]
    fn tlsrpt_policy_lines_cannot_inject_attributes() {
        let body = "version: STSv1\r\n\
                    mode: enforce\r\n\
                    \r\n\
                    mx: mx1.example.test\r\n\
                    x-close: } match=.evil.test {\r\n\
                    x-open: { policy_failure = sts-webpki-invalid\n\
                    x-list: a, b=c,,d\n\
                    x-ctl: a\tb\x00c\rd\x7fe\x0bf\n\
                    x-utf8: b\u{fc}cher \u{a0}\u{2028}x\n\
                    x-pad:   spaced   out  \t\n\
                    max_age: 86400";
        let reply = render(&with_body("example.test", body), &tlsrpt_map(false));
        assert_eq!(
            reply,
            "OK secure match=mx1.example.test policy_type=sts policy_domain=example.test \
             mx_host_pattern=mx1.example.test { policy_string = version: STSv1 } \
             { policy_string = mode: enforce } { policy_string = mx: mx1.example.test } \
             { policy_string = x-close: ? match=.evil.test ? } \
             { policy_string = x-open: ? policy_failure = sts-webpki-invalid } \
             { policy_string = x-list: a, b=c,,d } { policy_string = x-ctl: a b c d e f } \
             { policy_string = x-utf8: b?cher ??x } { policy_string = x-pad: spaced out } \
             { policy_string = max_age: 86400 }"
        );
        // Structure: one brace pair per policy line, nothing else braced,
        // and the reply is one line of printable ASCII.
        let lines = policy_strings(body);
        assert_eq!(lines.len(), 10);
        assert_eq!(reply.matches('{').count(), lines.len());
        assert_eq!(reply.matches('}').count(), lines.len());
        assert!(
            reply.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "{reply:?}"
        );
        // Text the parser refuses can still come back from a store.
        assert_eq!(policy_strings(" \t a: b\x0c\n\r\n\x00"), ["a: b"]);
        for line in &lines {
            assert_eq!(line.trim(), line);
            assert!(
                !line.contains("  ") && !line.contains(['{', '}']),
                "{line:?}"
            );
        }
    }

    #[test]
    fn tlsrpt_left_out_when_too_large_or_not_the_domains_policy() {
        // 64 KiB of policy text becomes ~170 KB of attributes: over
        // Postfix's 100000-byte reply limit, so the plain reply goes out.
        let mut body =
            String::from("version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 86400\n");
        while body.len() < 65_536 {
            body.push_str("x: y\n");
        }
        let reply = render(&with_body("example.test", &body), &tlsrpt_map(true));
        assert_eq!(
            reply,
            "OK secure match=mx1.example.test servername=hostname"
        );

        // Exactly at the limit: everything; one more line: nothing.
        let head = "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 86400\n";
        let base = render(&with_body("example.test", head), &tlsrpt_map(true));
        let extra = " { policy_string = x: y }".len();
        let fit = (MAX_REPLY - base.len()) / extra;
        let pad = MAX_REPLY - base.len() - fit * extra;
        // Pad the first line so that the reply is exactly MAX_REPLY bytes.
        let body = format!(
            "x: {}\n{head}{}",
            "y".repeat(pad + 1),
            "x: y\n".repeat(fit - 1)
        );
        let full = render(&with_body("example.test", &body), &tlsrpt_map(true));
        assert_eq!(full.len(), MAX_REPLY);
        assert!(full.ends_with("{ policy_string = x: y }"));
        let over = render(
            &with_body("example.test", &format!("{body}x: y\n")),
            &tlsrpt_map(true),
        );
        assert_eq!(over, "OK secure match=mx1.example.test servername=hostname");

        // An administrator's override is not the domain's policy.
        let Ok(Answer::Policy(p)) = with_body("example.test", TWO_PATTERNS) else {
            unreachable!()
        };
        let mut o = (*p).clone();
        o.source = crate::store::PolicySource::Override {
            reason: "pinned".into(),
        };
        assert_eq!(
            render(&Ok(Answer::Policy(Arc::new(o))), &tlsrpt_map(false)),
            "OK secure match=mx1.example.test:.example.net"
        );
    }

    #[test]
    fn tlsrpt_rebuilds_the_lines_of_a_policy_stored_without_its_text() {
        let Ok(Answer::Policy(p)) = with_body("example.test", TWO_PATTERNS) else {
            unreachable!()
        };
        let mut bare = (*p).clone();
        bare.body = " \r\n\n".into();
        assert_eq!(
            render(&Ok(Answer::Policy(Arc::new(bare))), &tlsrpt_map(false)),
            format!("OK secure match=mx1.example.test:.example.net{TWO_PATTERNS_TLSRPT}")
        );
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
        let e: Result<Answer, StoreError> = Err(StoreError::Unavailable("disk\nbroken".into()));
        assert_eq!(
            render(&e, &map(false, true)),
            "TEMP policy store: disk broken"
        );
    }
}
