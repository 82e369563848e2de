//! The policy document served at `/.well-known/mta-sts.txt` (RFC 8461 §3.2).
//!
//! Choices where the RFC is silent (documented in the README):
//! - Keys and values are case-sensitive, as the ABNF's `%s"…"` strings are.
//! - `max_age` above 31557600 is capped to 31557600 rather than rejected: the
//!   owner asked for protection, and a year is the most the RFC allows.
//!
//! Decided by the RFC: §3.2 "If any non-repeated field--i.e., all fields
//! excepting "mx"--is duplicated, all entries except for the first SHALL be
//! ignored." A repeated `version`, `mode` or `max_age` line is skipped, value
//! and all, and listed in [`ParsedPolicy::ignored_duplicates`].
//! - Blank lines are skipped; unknown keys are ignored (§3.2) and reported.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::mx::{MxPattern, MxPatternError};
use super::MAX_AGE_LIMIT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid policy. `mx` keeps the document's order with duplicates removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds, already capped at [`MAX_AGE_LIMIT`].
    pub max_age: u32,
    pub mx: Vec<MxPattern>,
}

impl Policy {
    /// True when `host` is an MX host this policy admits (§4.1).
    pub fn allows_mx(&self, host: &str) -> bool {
        super::mx::matches_any(&self.mx, host)
    }
}

/// A valid policy plus the remarks a diagnosis wants to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPolicy {
    pub policy: Policy,
    /// `(line, remark)`: unknown keys, a capped max_age, ignored duplicates.
    pub notes: Vec<(usize, String)>,
    /// Repeats of a single-valued field, ignored by RFC 8461 §3.2.
    pub ignored_duplicates: Vec<IgnoredDuplicate>,
}

/// A `version`, `mode` or `max_age` line after the first one of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredDuplicate {
    pub key: &'static str,
    pub line: usize,
    pub first_line: usize,
    /// The ignored value, as written.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyErrorKind {
    NotUtf8,
    /// A non-blank line without `key:`.
    NoColon,
    BadKey(String),
    MissingField(&'static str),
    BadVersion(String),
    BadMode(String),
    BadMaxAge(String),
    BadMx {
        value: String,
        reason: MxPatternError,
    },
    /// §3.2: mx is required for enforce and testing.
    NoMx(Mode),
}

/// A rejected policy: which line (1-based) and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub line: Option<usize>,
    pub kind: PolicyErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        match &self.kind {
            PolicyErrorKind::NotUtf8 => write!(f, "policy is not UTF-8 text"),
            PolicyErrorKind::NoColon => write!(f, "expected 'key: value'"),
            PolicyErrorKind::BadKey(k) => write!(f, "'{k}' is not a valid key name"),
            PolicyErrorKind::MissingField(k) => write!(f, "required field '{k}' is missing"),
            PolicyErrorKind::BadVersion(v) => {
                write!(f, "version is '{v}', the only version is 'STSv1'")
            }
            PolicyErrorKind::BadMode(v) => {
                write!(f, "mode is '{v}', expected 'enforce', 'testing' or 'none'")
            }
            PolicyErrorKind::BadMaxAge(v) => {
                write!(f, "max_age is '{v}', expected whole seconds (digits only)")
            }
            PolicyErrorKind::BadMx { value, reason } => {
                write!(f, "mx '{value}' is not a valid pattern: {reason}")
            }
            PolicyErrorKind::NoMx(mode) => write!(
                f,
                "mode is {mode} but there is no mx line; {mode} requires at least one"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

fn err(line: usize, kind: PolicyErrorKind) -> PolicyError {
    PolicyError {
        line: Some(line),
        kind,
    }
}

/// `sts-policy-ext-name`: the same grammar as the TXT record's extension names.
fn valid_key(key: &str) -> bool {
    super::txt::valid_ext_name(key)
}

/// Parses and validates a policy body. Lines end in LF or CRLF.
pub fn parse_policy(body: &[u8]) -> Result<ParsedPolicy, PolicyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        err(line, PolicyErrorKind::NotUtf8)
    })?;

    let mut version: Option<usize> = None;
    let mut mode: Option<(usize, Mode)> = None;
    let mut max_age: Option<(usize, u32)> = None;
    let mut mx: Vec<MxPattern> = Vec::new();
    // Dedup through a set: a 64 KiB policy can carry thousands of mx lines,
    // and a linear search per line would make parsing quadratic.
    let mut seen_mx: std::collections::HashSet<MxPattern> = std::collections::HashSet::new();
    let mut notes = Vec::new();
    let mut ignored_duplicates = Vec::new();

    for (idx, raw) in text.split('\n').enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(err(line_no, PolicyErrorKind::NoColon));
        };
        if !valid_key(key) {
            return Err(err(line_no, PolicyErrorKind::BadKey(key.to_string())));
        }
        let value = value.trim_matches([' ', '\t']);
        // §3.2: of a repeated single-valued field only the first counts; the
        // others are ignored before their value is even looked at.
        let first_line = match key {
            "version" => version,
            "mode" => mode.map(|m| m.0),
            "max_age" => max_age.map(|m| m.0),
            _ => None,
        };
        if let (Some(first_line), Some(key)) = (
            first_line,
            ["version", "mode", "max_age"]
                .into_iter()
                .find(|k| *k == key),
        ) {
            notes.push((
                line_no,
                format!("'{key}' repeated (first on line {first_line}); this line is ignored (RFC 8461 §3.2)"),
            ));
            ignored_duplicates.push(IgnoredDuplicate {
                key,
                line: line_no,
                first_line,
                value: value.to_string(),
            });
            continue;
        }
        match key {
            "version" => {
                if value != "STSv1" {
                    return Err(err(line_no, PolicyErrorKind::BadVersion(value.into())));
                }
                version = Some(line_no);
            }
            "mode" => {
                let m = match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(err(line_no, PolicyErrorKind::BadMode(other.into()))),
                };
                mode = Some((line_no, m));
            }
            "max_age" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(line_no, PolicyErrorKind::BadMaxAge(value.into())));
                }
                // Saturating arithmetic: any number of digits is accepted and
                // capped, never overflowed.
                let n = value.bytes().fold(0u64, |acc, b| {
                    acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
                });
                let capped = n.min(u64::from(MAX_AGE_LIMIT)) as u32;
                if n > u64::from(MAX_AGE_LIMIT) {
                    notes.push((
                        line_no,
                        format!("max_age {value} is above the RFC 8461 limit; capped to {MAX_AGE_LIMIT}"),
                    ));
                }
                max_age = Some((line_no, capped));
            }
            "mx" => {
                let pattern = MxPattern::parse(value).map_err(|reason| {
                    err(
                        line_no,
                        PolicyErrorKind::BadMx {
                            value: value.into(),
                            reason,
                        },
                    )
                })?;
                if seen_mx.insert(pattern.clone()) {
                    mx.push(pattern);
                }
            }
            other => notes.push((line_no, format!("unknown key '{other}' ignored"))),
        }
    }

    let missing = |k| PolicyError {
        line: None,
        kind: PolicyErrorKind::MissingField(k),
    };
    version.ok_or_else(|| missing("version"))?;
    let (_, mode) = mode.ok_or_else(|| missing("mode"))?;
    let (_, max_age) = max_age.ok_or_else(|| missing("max_age"))?;
    if mode != Mode::None && mx.is_empty() {
        return Err(PolicyError {
            line: None,
            kind: PolicyErrorKind::NoMx(mode),
        });
    }
    Ok(ParsedPolicy {
        policy: Policy { mode, max_age, mx },
        notes,
        ignored_duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> ParsedPolicy {
        parse_policy(body.as_bytes()).unwrap_or_else(|e| panic!("{body:?}: {e}"))
    }

    fn bad(body: &str) -> PolicyError {
        parse_policy(body.as_bytes()).expect_err(body)
    }

    const GOOD: &str =
        "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 604800\n";

    #[test]
    fn parses_lf_and_crlf() {
        let p = ok(GOOD).policy;
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(
            p.mx.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            vec!["mx1.example.com", "*.example.net"]
        );
        assert_eq!(ok(&GOOD.replace('\n', "\r\n")).policy, p);
    }

    #[test]
    fn no_trailing_newline_blank_lines_and_spaces() {
        let p =
            ok("version:STSv1\n\nmode:   testing  \nmx:\tmx.example.com\nmax_age: 86400").policy;
        assert_eq!(p.mode, Mode::Testing);
    }

    #[test]
    fn mode_none_needs_no_mx() {
        let p = ok("version: STSv1\nmode: none\nmax_age: 86400\n").policy;
        assert_eq!(p.mode, Mode::None);
        assert!(p.mx.is_empty());
    }

    #[test]
    fn enforce_and_testing_need_mx() {
        for mode in ["enforce", "testing"] {
            let e = bad(&format!("version: STSv1\nmode: {mode}\nmax_age: 86400\n"));
            assert!(matches!(e.kind, PolicyErrorKind::NoMx(_)), "{e}");
        }
        // The typo that made another tool emit an empty match= (nmx instead of mx).
        let e = bad("version: STSv1\nmode: enforce\nnmx: mx.example.com\nmax_age: 86400\n");
        assert!(matches!(e.kind, PolicyErrorKind::NoMx(Mode::Enforce)));
    }

    #[test]
    fn missing_fields_named() {
        assert_eq!(
            bad("mode: none\nmax_age: 1\n").kind,
            PolicyErrorKind::MissingField("version")
        );
        assert_eq!(
            bad("version: STSv1\nmax_age: 1\n").kind,
            PolicyErrorKind::MissingField("mode")
        );
        assert_eq!(
            bad("version: STSv1\nmode: none\n").kind,
            PolicyErrorKind::MissingField("max_age")
        );
    }

    #[test]
    fn bad_values_carry_line_numbers() {
        let e = bad("version: STSv2\nmode: none\nmax_age: 1\n");
        assert_eq!(
            (e.line, e.kind),
            (Some(1), PolicyErrorKind::BadVersion("STSv2".into()))
        );
        let e = bad("version: STSv1\nmode: Enforce\nmax_age: 1\n");
        assert_eq!(
            (e.line, e.kind),
            (Some(2), PolicyErrorKind::BadMode("Enforce".into()))
        );
        for v in ["-1", "1d", "", "+5", "1 2", "0x10"] {
            let e = bad(&format!("version: STSv1\nmode: none\nmax_age: {v}\n"));
            assert_eq!(e.line, Some(3));
            assert!(matches!(e.kind, PolicyErrorKind::BadMaxAge(_)), "{v}: {e}");
        }
        let e = bad("version: STSv1\nmode: enforce\nmax_age: 1\nmx: 192.0.2.1\n");
        assert_eq!(e.line, Some(4));
        assert!(matches!(e.kind, PolicyErrorKind::BadMx { .. }));
        let e = bad("version: STSv1\nmode: enforce\nmax_age: 1\nmx: mx.*.example.com\n");
        assert!(matches!(e.kind, PolicyErrorKind::BadMx { .. }));
        let e = bad("version: STSv1\ngarbage\n");
        assert_eq!((e.line, e.kind), (Some(2), PolicyErrorKind::NoColon));
        let e = bad("version: STSv1\n bad key: x\n");
        assert!(matches!(e.kind, PolicyErrorKind::BadKey(_)));
        assert!(e.to_string().starts_with("line 2: "), "{e}");
    }

    /// RFC 8461 §3.2: "If any non-repeated field--i.e., all fields excepting
    /// "mx"--is duplicated, all entries except for the first SHALL be
    /// ignored." (This test used to assert a rejection: that was wrong.)
    #[test]
    fn duplicates_of_single_keys_keep_the_first_value() {
        let parsed = ok("version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 1\n");
        assert_eq!(parsed.policy.mode, Mode::Enforce);
        assert_eq!(
            parsed.ignored_duplicates,
            vec![IgnoredDuplicate {
                key: "mode",
                line: 3,
                first_line: 2,
                value: "testing".into()
            }]
        );
        let parsed = ok("version: STSv1\nmode: enforce\nmode: enforce\nmx: a.test\nmax_age: 1\n");
        assert_eq!(parsed.policy.mode, Mode::Enforce);
        let parsed = ok("version: STSv1\nmode: none\nmax_age: 1\nmax_age: 2\n");
        assert_eq!(parsed.policy.max_age, 1);
        assert_eq!(parsed.ignored_duplicates[0].key, "max_age");
        let parsed = ok("version: STSv1\nversion: STSv1\nmode: none\nmax_age: 1\n");
        assert_eq!(parsed.ignored_duplicates[0].key, "version");
        // An ignored entry is ignored whole: its value is never judged.
        let parsed = ok("version: STSv1\nversion: STSv9\nmode: enforce\nmode: bogus\nmx: a.test\nmax_age: 86400\nmax_age: soon\n");
        assert_eq!(
            (parsed.policy.mode, parsed.policy.max_age),
            (Mode::Enforce, 86400)
        );
        assert_eq!(parsed.ignored_duplicates.len(), 3);
        assert_eq!(parsed.notes.len(), 3);
        // The first value still has to be valid.
        let e = bad("version: STSv1\nmode: bogus\nmode: enforce\nmx: a.test\nmax_age: 1\n");
        assert_eq!(
            (e.line, e.kind),
            (Some(2), PolicyErrorKind::BadMode("bogus".into()))
        );
    }

    #[test]
    fn repeated_mx_is_deduplicated_in_order() {
        let p =
            ok("version: STSv1\nmode: enforce\nmx: b.test\nmx: a.test\nmx: B.test.\nmax_age: 1\n")
                .policy;
        assert_eq!(
            p.mx.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            vec!["b.test", "a.test"]
        );
    }

    #[test]
    fn max_age_is_capped_not_overflowed() {
        let parsed = ok("version: STSv1\nmode: none\nmax_age: 99999999999999999999999\n");
        assert_eq!(parsed.policy.max_age, MAX_AGE_LIMIT);
        assert_eq!(parsed.notes.len(), 1);
        assert_eq!(
            ok("version: STSv1\nmode: none\nmax_age: 31557600\n")
                .policy
                .max_age,
            MAX_AGE_LIMIT
        );
        assert_eq!(
            ok("version: STSv1\nmode: none\nmax_age: 0\n")
                .policy
                .max_age,
            0
        );
    }

    #[test]
    fn unknown_keys_are_noted_and_ignored() {
        let parsed = ok("version: STSv1\nmode: none\nfoo_bar: 1\nmax_age: 5\n");
        assert_eq!(
            parsed.notes,
            vec![(3, "unknown key 'foo_bar' ignored".to_string())]
        );
    }

    #[test]
    fn case_sensitive_keys() {
        let e = bad("Version: STSv1\nmode: none\nmax_age: 5\n");
        assert_eq!(e.kind, PolicyErrorKind::MissingField("version"));
    }

    #[test]
    fn not_utf8() {
        let e = parse_policy(b"version: STSv1\nmode: \xff\n").unwrap_err();
        assert_eq!((e.line, e.kind), (Some(2), PolicyErrorKind::NotUtf8));
    }

    #[test]
    fn allows_mx() {
        let p = ok(GOOD).policy;
        assert!(p.allows_mx("mx1.example.com"));
        assert!(p.allows_mx("x.example.net"));
        assert!(!p.allows_mx("a.b.example.net"));
    }
}
