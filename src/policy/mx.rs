//! MX host patterns and matching (RFC 8461 §3.2 `mx:` values, §4.1 matching),
//! and the set of hosts a domain's MX answer names (RFC 5321 §5.1, RFC 7505).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::domain::{normalize_domain, DomainError};

/// One `mx:` value of a policy: an exact host name or `*.` plus a domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxPattern {
    wildcard: bool,
    /// A-label form, lower case, no trailing dot.
    domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPatternError {
    /// `*` anywhere but as the whole left-most label (§3.2: `["*."] Domain`).
    MisplacedWildcard,
    BadName(DomainError),
}

impl fmt::Display for MxPatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MxPatternError::MisplacedWildcard => write!(
                f,
                "a wildcard is only allowed as the whole left-most label, as in '*.example.com'"
            ),
            MxPatternError::BadName(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MxPatternError {}

impl MxPattern {
    pub fn parse(value: &str) -> Result<MxPattern, MxPatternError> {
        let (wildcard, rest) = match value.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        if rest.contains('*') {
            return Err(MxPatternError::MisplacedWildcard);
        }
        let domain = normalize_domain(rest).map_err(MxPatternError::BadName)?;
        Ok(MxPattern { wildcard, domain })
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The domain part in A-label form (without the `*.`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// §4.1: case-insensitive, trailing dot ignored, IDNs as A-labels, and
    /// `*.example.com` matches exactly one additional left-most label.
    pub fn matches(&self, host: &str) -> bool {
        match normalize_domain(host) {
            Ok(host) => self.matches_normalized(&host),
            Err(_) => false,
        }
    }

    /// Like [`matches`](Self::matches) for a host already in [`normalize_domain`] form.
    pub fn matches_normalized(&self, host: &str) -> bool {
        if !self.wildcard {
            return host == self.domain;
        }
        match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest == self.domain,
            None => false,
        }
    }

    /// (is `*.` wildcard, domain): the pattern without copying it.
    pub fn parts(&self) -> (bool, &str) {
        (self.wildcard, &self.domain)
    }

    /// Postfix's `match=` syntax: a leading dot means "any subdomain".
    pub fn postfix_form(&self) -> String {
        if self.wildcard {
            format!(".{}", self.domain)
        } else {
            self.domain.clone()
        }
    }
}

/// True when any pattern of a policy admits `host`.
pub fn matches_any(patterns: &[MxPattern], host: &str) -> bool {
    match normalize_domain(host) {
        Ok(host) => patterns.iter().any(|p| p.matches_normalized(&host)),
        Err(_) => false,
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.domain)
        } else {
            f.write_str(&self.domain)
        }
    }
}

impl FromStr for MxPattern {
    type Err = MxPatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MxPattern::parse(s)
    }
}

impl Serialize for MxPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MxPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MxPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The hosts mail for a domain goes to, as its MX answer says. The one
/// reading of an MX answer: the resolver's MX sets, DANE, the relay and the
/// check all take it from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxHosts {
    /// NXDOMAIN: the domain does not exist.
    NoDomain,
    /// RFC 7505: a null MX (`0 .`), the domain accepts no mail. §3 forbids
    /// other MX records beside it; any found anyway are in `alongside`
    /// (deduplicated, in order), for those that report or look past it.
    NullMx { alongside: Vec<String> },
    /// The hosts in preference order, each once. A domain that exists
    /// without MX records is its own host (implicit MX, RFC 5321 §5.1).
    Hosts(Vec<String>),
}

impl MxHosts {
    /// `exchanges`: the exchange names of the MX records in preference
    /// order, the null MX as an empty name; `nxdomain` when there are none
    /// because the domain does not exist.
    pub fn from_lookup<'a>(
        domain: &str,
        nxdomain: bool,
        exchanges: impl IntoIterator<Item = &'a str>,
    ) -> MxHosts {
        let mut hosts: Vec<String> = Vec::new();
        let mut null_mx = false;
        let mut any = false;
        for exchange in exchanges {
            any = true;
            if exchange.is_empty() {
                null_mx = true;
            } else if !hosts.iter().any(|h| h == exchange) {
                hosts.push(exchange.to_string());
            }
        }
        match (any, nxdomain, null_mx) {
            (false, true, _) => MxHosts::NoDomain,
            (false, false, _) => MxHosts::Hosts(vec![domain.to_string()]),
            (true, _, true) => MxHosts::NullMx { alongside: hosts },
            (true, _, false) => MxHosts::Hosts(hosts),
        }
    }
}

#[cfg(test)]
mod mx_hosts_tests {
    use super::MxHosts;

    fn hosts(v: &[&str]) -> MxHosts {
        MxHosts::Hosts(v.iter().map(|h| h.to_string()).collect())
    }

    #[test]
    fn a_domain_without_mx_records_is_its_own_host() {
        // RFC 5321 §5.1: implicit MX.
        assert_eq!(
            MxHosts::from_lookup("example.test", false, []),
            hosts(&["example.test"])
        );
    }

    #[test]
    fn nxdomain_is_no_domain_not_an_implicit_mx() {
        assert_eq!(
            MxHosts::from_lookup("gone.test", true, []),
            MxHosts::NoDomain
        );
    }

    #[test]
    fn hosts_keep_preference_order_and_appear_once() {
        // RFC 5321 §5.1: the same host at two preferences is tried once,
        // at the first.
        let got = MxHosts::from_lookup(
            "example.test",
            false,
            ["mx1.example.test", "mx2.example.test", "mx1.example.test"],
        );
        assert_eq!(got, hosts(&["mx1.example.test", "mx2.example.test"]));
    }

    #[test]
    fn a_null_mx_means_no_mail_even_beside_other_records() {
        // RFC 7505 §3: "0 ." alone is a null MX; other records beside it
        // are an error of the zone and do not make it accept mail.
        assert_eq!(
            MxHosts::from_lookup("nomail.test", false, [""]),
            MxHosts::NullMx { alongside: vec![] }
        );
        assert_eq!(
            MxHosts::from_lookup(
                "broken.test",
                false,
                ["mx.broken.test", "", "mx.broken.test"]
            ),
            MxHosts::NullMx {
                alongside: vec!["mx.broken.test".to_string()]
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> MxPattern {
        MxPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_match_ignores_case_and_trailing_dot() {
        assert!(p("mx1.example.com").matches("MX1.example.com."));
        assert!(p("MX1.Example.com.").matches("mx1.example.com"));
        assert!(!p("mx1.example.com").matches("mx2.example.com"));
        assert!(!p("mx1.example.com").matches("a.mx1.example.com"));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let w = p("*.example.com");
        assert!(w.matches("mx1.example.com"));
        assert!(w.matches("MX1.EXAMPLE.COM."));
        assert!(!w.matches("example.com"), "the bare domain is not a match");
        assert!(
            !w.matches("a.b.example.com"),
            "two labels deep is not a match"
        );
        assert!(!w.matches("mx1.example.com.evil.test"));
        assert!(!w.matches("mx1-example.com"));
    }

    #[test]
    fn idn_compared_as_a_labels() {
        assert!(p("mx.bücher.example").matches("mx.xn--bcher-kva.example"));
        assert!(p("*.xn--bcher-kva.example").matches("mx.BÜCHER.example"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(
            MxPattern::parse("mx*.example.com"),
            Err(MxPatternError::MisplacedWildcard)
        );
        assert_eq!(
            MxPattern::parse("*.*.example.com"),
            Err(MxPatternError::MisplacedWildcard)
        );
        assert_eq!(
            MxPattern::parse("a.*.example.com"),
            Err(MxPatternError::MisplacedWildcard)
        );
        assert_eq!(
            MxPattern::parse("*example.com"),
            Err(MxPatternError::MisplacedWildcard)
        );
        assert!(matches!(
            MxPattern::parse("192.0.2.25"),
            Err(MxPatternError::BadName(_))
        ));
        assert!(matches!(
            MxPattern::parse("*."),
            Err(MxPatternError::BadName(_))
        ));
        assert!(matches!(
            MxPattern::parse(""),
            Err(MxPatternError::BadName(_))
        ));
    }

    #[test]
    fn postfix_and_display_forms() {
        assert_eq!(p("*.Example.com").postfix_form(), ".example.com");
        assert_eq!(p("*.Example.com").to_string(), "*.example.com");
        assert_eq!(p("mx.example.com").postfix_form(), "mx.example.com");
    }

    #[test]
    fn matches_any_uses_every_pattern() {
        let pats = vec![p("mx1.example.com"), p("*.backup.example.net")];
        assert!(matches_any(&pats, "mx1.example.com"));
        assert!(matches_any(&pats, "b1.backup.example.net"));
        assert!(!matches_any(&pats, "mx2.example.com"));
        assert!(!matches_any(&pats, "[192.0.2.1]"));
    }
}
