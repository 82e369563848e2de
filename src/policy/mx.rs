//! MX host patterns and matching (RFC 8461 §3.2 `mx:` values, §4.1 matching).

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
