//! `--suggest`: a ready-to-publish starting point for a domain without
//! (working) MTA-STS: the TXT record with a fresh id, a `mode: testing` policy
//! built from the current MX records, and a TLS-RPT record.

use std::time::SystemTime;

use super::findings::Suggestion;
use crate::policy::{mx::matches_any, parse_policy, MxPattern};

/// `max_age` of the suggested testing policy: one day, so mistakes found
/// while testing are corrected quickly everywhere.
pub const SUGGESTED_MAX_AGE: u32 = 86_400;

/// A fresh policy id: the UTC time as `YYYYMMDDhhmmss` (14 digits, within the
/// 1–32 alphanumerics RFC 8461 §3.1 allows, and increasing over time).
pub fn fresh_id(now: SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::smtp::date::compact(secs)
}

/// `mx:` values for the given MX hosts (already normalised, in preference
/// order). Hosts are listed by name; a wildcard `*.parent` replaces them only
/// when at least two hosts sit exactly one label below the same `parent` and
/// that parent is the domain itself or inside it, so the wildcard admits
/// only names the domain's owner controls (never `*.provider.example`).
pub fn mx_patterns(domain: &str, hosts: &[String]) -> Vec<String> {
    let parent_of = |h: &str| h.split_once('.').map(|(_, p)| p.to_string());
    let own = |p: &str| p == domain || p.ends_with(&format!(".{domain}"));
    let mut out: Vec<String> = Vec::new();
    for host in hosts {
        let pattern = match parent_of(host) {
            Some(parent)
                if own(&parent)
                    && parent.contains('.')
                    && hosts
                        .iter()
                        .filter(|h| parent_of(h).as_deref() == Some(parent.as_str()))
                        .count()
                        >= 2 =>
            {
                format!("*.{parent}")
            }
            _ => host.clone(),
        };
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    out
}

/// The policy body for `patterns`.
pub fn policy_body(patterns: &[String]) -> String {
    let mut body = String::from("version: STSv1\nmode: testing\n");
    for p in patterns {
        body.push_str(&format!("mx: {p}\n"));
    }
    body.push_str(&format!("max_age: {SUGGESTED_MAX_AGE}\n"));
    body
}

pub fn txt_record(domain: &str, id: &str) -> String {
    format!("_mta-sts.{domain}. IN TXT \"v=STSv1; id={id}\"")
}

pub fn tlsrpt_record(domain: &str) -> String {
    format!("_smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\"")
}

/// What to suggest. `mx_hosts`: the current MX hosts (normalised, preference
/// order, no null MX); `None` when they could not be determined.
pub fn suggest(
    domain: &str,
    mx_hosts: Option<&[String]>,
    want_sts: bool,
    want_tlsrpt: bool,
    https_port: u16,
    now: SystemTime,
) -> Suggestion {
    let mut s = Suggestion {
        txt_record: None,
        policy_url: None,
        policy: None,
        tlsrpt_record: None,
        notes: Vec::new(),
    };
    if want_sts {
        match mx_hosts {
            Some(hosts) if !hosts.is_empty() => {
                let patterns = mx_patterns(domain, hosts);
                let body = policy_body(&patterns);
                // Never suggest something our own parser or matcher rejects.
                let sound = match parse_policy(body.as_bytes()) {
                    Ok(p) => hosts.iter().all(|h| matches_any(&p.policy.mx, h)),
                    Err(_) => false,
                } && patterns.iter().all(|p| MxPattern::parse(p).is_ok());
                if sound {
                    s.txt_record = Some(txt_record(domain, &fresh_id(now)));
                    s.policy_url = Some(if https_port == 443 {
                        format!("https://mta-sts.{domain}/.well-known/mta-sts.txt")
                    } else {
                        format!("https://mta-sts.{domain}:{https_port}/.well-known/mta-sts.txt")
                    });
                    s.policy = Some(body);
                    s.notes.push(format!(
                        "serve the policy with status 200, Content-Type text/plain and a \
                         certificate valid for mta-sts.{domain}; publish the TXT record last"
                    ));
                    s.notes.push(
                        "once TLS-RPT reports are clean, change mode to enforce, raise max_age \
                         to 604800 or more and publish a new id"
                            .to_string(),
                    );
                } else {
                    s.notes.push(
                        "no policy suggested: the MX host names cannot be written as mx patterns"
                            .to_string(),
                    );
                }
            }
            Some(_) => s.notes.push(
                "no policy suggested: the domain has no MX host that accepts mail".to_string(),
            ),
            None => s
                .notes
                .push("no policy suggested: the MX records could not be looked up".to_string()),
        }
    }
    if want_tlsrpt {
        s.tlsrpt_record = Some(tlsrpt_record(domain));
        s.notes.push(format!(
            "make sure tlsrpt@{domain} exists, or put your own mailto: or https: URI in rua="
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn id_is_utc_timestamp() {
        let t = UNIX_EPOCH + Duration::from_secs(0);
        assert_eq!(fresh_id(t), "19700101000000");
        // 2024-02-29T12:34:56Z
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(fresh_id(t), "20240229123456");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31T23:59:59Z
        assert_eq!(fresh_id(t), "20991231235959");
    }

    #[test]
    fn single_host_is_exact() {
        assert_eq!(
            mx_patterns("example.test", &hosts(&["mx.example.test"])),
            vec!["mx.example.test"]
        );
    }

    #[test]
    fn own_siblings_become_wildcard() {
        assert_eq!(
            mx_patterns(
                "example.test",
                &hosts(&["mx1.example.test", "mx2.example.test", "backup.other.test"])
            ),
            vec!["*.example.test", "backup.other.test"]
        );
        assert_eq!(
            mx_patterns(
                "example.test",
                &hosts(&["a.mail.example.test", "b.mail.example.test"])
            ),
            vec!["*.mail.example.test"]
        );
    }

    #[test]
    fn provider_siblings_stay_exact() {
        assert_eq!(
            mx_patterns(
                "example.test",
                &hosts(&["mx1.provider.test", "mx2.provider.test"])
            ),
            vec!["mx1.provider.test", "mx2.provider.test"]
        );
    }

    #[test]
    fn suggestion_is_parseable_and_matches() {
        let h = hosts(&["mx1.example.test", "mx2.example.test"]);
        let s = suggest("example.test", Some(&h), true, true, 443, UNIX_EPOCH);
        let body = s.policy.expect("policy");
        let parsed = parse_policy(body.as_bytes()).expect("valid");
        assert!(h.iter().all(|x| parsed.policy.allows_mx(x)));
        assert_eq!(
            s.txt_record.as_deref(),
            Some("_mta-sts.example.test. IN TXT \"v=STSv1; id=19700101000000\"")
        );
        assert!(s.tlsrpt_record.is_some());
        let none = suggest("example.test", Some(&[]), true, false, 443, UNIX_EPOCH);
        assert!(none.policy.is_none() && none.txt_record.is_none());
        assert!(!none.notes.is_empty());
    }
}
