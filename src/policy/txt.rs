//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1), parsed exactly by its
//! ABNF:
//!
//! ```text
//! sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
//! sts-field       = sts-id / sts-extension
//! sts-field-delim = *WSP ";" *WSP
//! sts-version     = %s"v=STSv1"
//! sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
//! sts-extension   = sts-ext-name "=" sts-ext-value
//! ```
//!
//! Whitespace may only surround a `;`, and at most one `;` may end the
//! record: `v=STSv1; id=x ` (space without `;`) and `v=STSv1; id=x;;` are not
//! records of this grammar, so, as for any record that is not one, "senders
//! MUST assume the recipient domain does not implement MTA-STS" (§3.1).

use std::fmt;

/// A parsed `v=STSv1` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// 1–32 letters and digits; a change tells senders to refetch the policy.
    pub id: String,
    /// Extension fields (`name=value`), kept in record order for diagnosis.
    pub extensions: Vec<(String, String)>,
}

/// Why a record that starts with `v=STSv1` is not a valid STS record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtError {
    MissingId,
    BadId(String),
    DuplicateId {
        first: String,
        second: String,
    },
    /// A field that is neither `id=…` nor a well-formed `name=value` extension.
    BadField(String),
    /// Whitespace after the last field without a `;` (`v=STSv1; id=x `).
    TrailingWhitespace,
    /// Two `;` with no field between them (`v=STSv1; id=x;;`).
    EmptyField,
    /// The record's bytes are not UTF-8.
    NotText,
}

impl fmt::Display for TxtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxtError::MissingId => write!(f, "no id= field (RFC 8461 §3.1 requires one)"),
            TxtError::BadId(id) => write!(
                f,
                "id '{id}' is not 1 to 32 letters and digits (RFC 8461 §3.1)"
            ),
            TxtError::DuplicateId { first, second } => {
                write!(f, "two id= fields ('{first}' and '{second}')")
            }
            TxtError::BadField(field) => write!(
                f,
                "field '{field}' is not id=… nor a name=value extension (RFC 8461 §3.1)"
            ),
            TxtError::NotText => write!(f, "record is not valid UTF-8 text"),
            TxtError::TrailingWhitespace => write!(
                f,
                "whitespace after the last field without a ';' (the RFC 8461 §3.1 grammar allows \
                 spaces only around ';')"
            ),
            TxtError::EmptyField => write!(
                f,
                "an empty field (';;'): the RFC 8461 §3.1 grammar allows one ';' between fields \
                 and at most one at the end"
            ),
        }
    }
}

impl std::error::Error for TxtError {}

/// The outcome of reading every TXT record at `_mta-sts.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Exactly one STSv1 record, and it is valid.
    Found(StsRecord),
    /// No record starts with `v=STSv1` (other TXT records are ignored).
    NoRecord,
    /// §3.1: "If multiple TXT records for _mta-sts are returned by the resolver,
    /// records that do not begin with v=STSv1; are discarded. If the number of
    /// resulting records is not one, … senders MUST assume … no policy".
    Multiple(usize),
    /// The one STSv1 record is malformed: treated as no policy.
    Invalid(TxtError),
}

impl Discovery {
    pub fn record(&self) -> Option<&StsRecord> {
        match self {
            Discovery::Found(r) => Some(r),
            _ => None,
        }
    }
}

/// True when a record begins with the `v=STSv1` version field. The version
/// must be followed by a separator or the end, so `v=STSv10` is not one.
pub fn is_sts_record(txt: &str) -> bool {
    match txt.strip_prefix("v=STSv1") {
        Some(rest) => rest.is_empty() || rest.starts_with([';', ' ', '\t']),
        None => false,
    }
}

/// Parses one record; the caller has joined its character-strings (§3.1: a
/// record split over several strings is one record).
pub fn parse_record(txt: &str) -> Result<StsRecord, TxtError> {
    let rest = txt.strip_prefix("v=STSv1").ok_or(TxtError::MissingId)?;
    let mut id: Option<String> = None;
    let mut extensions = Vec::new();
    for field in fields(rest)? {
        let Some((name, value)) = field.split_once('=') else {
            return Err(TxtError::BadField(field.to_string()));
        };
        if name == "id" {
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(TxtError::BadId(value.to_string()));
            }
            if let Some(first) = &id {
                return Err(TxtError::DuplicateId {
                    first: first.clone(),
                    second: value.to_string(),
                });
            }
            id = Some(value.to_string());
        } else if valid_ext_name(name) && valid_ext_value(value) {
            extensions.push((name.to_string(), value.to_string()));
        } else {
            return Err(TxtError::BadField(field.to_string()));
        }
    }
    match id {
        Some(id) => Ok(StsRecord { id, extensions }),
        None => Err(TxtError::MissingId),
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits what follows the version into fields by
/// `1*(delim field) [delim]`, `delim = *WSP ";" *WSP`. A field runs up to
/// the next WSP or `;` (no field value may hold either).
fn fields(mut rest: &str) -> Result<Vec<&str>, TxtError> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let before = rest.trim_start_matches(is_wsp);
        let Some(after) = before.strip_prefix(';') else {
            return Err(match before.split(is_wsp).next() {
                Some(word) if !word.is_empty() => TxtError::BadField(word.to_string()),
                _ => TxtError::TrailingWhitespace,
            });
        };
        let after = after.trim_start_matches(is_wsp);
        if after.is_empty() {
            // The one optional delimiter at the end.
            break;
        }
        if after.starts_with(';') {
            return Err(TxtError::EmptyField);
        }
        let end = after.find(|c| is_wsp(c) || c == ';').unwrap_or(after.len());
        out.push(&after[..end]);
        rest = &after[end..];
    }
    Ok(out)
}

/// The record rewritten in the grammar's form, when only its separators are
/// wrong (stray whitespace, empty fields): the fix a diagnosis can show.
pub fn repaired(txt: &str) -> Option<String> {
    let rest = txt.strip_prefix("v=STSv1")?;
    let parts: Vec<&str> = rest
        .split(';')
        .map(|f| f.trim_matches(is_wsp))
        .filter(|f| !f.is_empty())
        .collect();
    let fixed = format!("v=STSv1; {}", parts.join("; "));
    parse_record(&fixed).ok().map(|_| fixed)
}

/// `sts-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`,
/// the same grammar as the policy file's keys (RFC 8461 §3.2) and TLS-RPT's
/// extension names (RFC 8460 §3).
pub(crate) fn valid_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)`: visible ASCII but `;` and
/// `=` (TLS-RPT's extension values are the same).
pub(crate) fn valid_ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|c| (0x21..=0x7e).contains(&c) && c != b';' && c != b'=')
}

/// The rule RFC 8461 §3.1 and RFC 8460 §3 share: of the TXT records at a
/// name, keep those that start with the version tag (`is_ours`), and there
/// must be exactly one. Non-UTF-8 records cannot start with a tag and are
/// ignored.
pub(crate) enum OneRecord {
    None,
    One(String),
    Many(usize),
}

pub(crate) fn one_record<R, S>(records: R, is_ours: impl Fn(&str) -> bool) -> OneRecord
where
    R: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    let mut found: Vec<String> = Vec::new();
    for raw in records {
        if let Ok(text) = std::str::from_utf8(raw.as_ref()) {
            if is_ours(text) {
                found.push(text.to_string());
            }
        }
    }
    match found.len() {
        0 => OneRecord::None,
        1 => OneRecord::One(found.swap_remove(0)),
        n => OneRecord::Many(n),
    }
}

/// Applies §3.1 to all TXT records found at `_mta-sts.<domain>`. Each item is
/// one record given as its character-strings, which are joined without
/// separator.
pub fn discover<R, S>(records: R) -> Discovery
where
    R: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    match one_record(records, is_sts_record) {
        OneRecord::None => Discovery::NoRecord,
        OneRecord::One(text) => match parse_record(&text) {
            Ok(r) => Discovery::Found(r),
            Err(e) => Discovery::Invalid(e),
        },
        OneRecord::Many(n) => Discovery::Multiple(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(records: &[&str]) -> Discovery {
        discover(records.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn plain_record() {
        let r = parse_record("v=STSv1; id=20160831085700Z").unwrap();
        assert_eq!(r.id, "20160831085700Z");
        assert!(r.extensions.is_empty());
    }

    #[test]
    fn whitespace_around_separators_and_trailing_separator() {
        assert_eq!(parse_record("v=STSv1 ;\tid=abc ; ").unwrap().id, "abc");
        assert_eq!(parse_record("v=STSv1;id=abc;").unwrap().id, "abc");
    }

    /// RFC 8461 §3.1: `sts-text-record = sts-version 1*(sts-field-delim
    /// sts-field) [sts-field-delim]` with `sts-field-delim = *WSP ";" *WSP`:
    /// whitespace only around a `;`, at most one `;` at the end. A record
    /// outside the grammar means "senders MUST assume the recipient domain
    /// does not implement MTA-STS". (Both were accepted before: that was a
    /// tolerance the RFC does not allow.)
    #[test]
    fn records_outside_the_abnf_are_refused() {
        assert_eq!(
            parse_record("v=STSv1; id=x "),
            Err(TxtError::TrailingWhitespace)
        );
        assert_eq!(
            parse_record("v=STSv1; id=x\t"),
            Err(TxtError::TrailingWhitespace)
        );
        assert_eq!(parse_record("v=STSv1; id=x;;"), Err(TxtError::EmptyField));
        assert_eq!(parse_record("v=STSv1;; id=x"), Err(TxtError::EmptyField));
        assert_eq!(
            parse_record("v=STSv1; id=x; ; e=1"),
            Err(TxtError::EmptyField)
        );
        assert_eq!(
            parse_record("v=STSv1 id=x"),
            Err(TxtError::BadField("id=x".into()))
        );
        assert_eq!(
            parse_record("v=STSv1; id=a b"),
            Err(TxtError::BadField("b".into()))
        );
        assert_eq!(
            discover(["v=STSv1; id=x "]),
            Discovery::Invalid(TxtError::TrailingWhitespace)
        );
        // What the grammar does allow.
        for ok in [
            "v=STSv1;id=x",
            "v=STSv1; id=x;",
            "v=STSv1; id=x; ",
            "v=STSv1 ; id=x ;\t",
            "v=STSv1;\tid=x;e=1",
        ] {
            assert_eq!(
                parse_record(ok).map(|r| r.id),
                Ok("x".to_string()),
                "{ok:?}"
            );
        }
    }

    #[test]
    fn separator_mistakes_have_a_repair() {
        assert_eq!(repaired("v=STSv1; id=x "), Some("v=STSv1; id=x".into()));
        assert_eq!(
            repaired("v=STSv1;; id=x;; e=1;;"),
            Some("v=STSv1; id=x; e=1".into())
        );
        assert_eq!(repaired("v=STSv1; id=x-y"), None);
    }

    #[test]
    fn extensions_are_kept() {
        let r = parse_record("v=STSv1; id=1; ext-a=x.y; b_c=1").unwrap();
        assert_eq!(
            r.extensions,
            vec![("ext-a".into(), "x.y".into()), ("b_c".into(), "1".into())]
        );
    }

    #[test]
    fn id_rules() {
        assert_eq!(parse_record("v=STSv1;"), Err(TxtError::MissingId));
        assert_eq!(
            parse_record("v=STSv1; id="),
            Err(TxtError::BadId(String::new()))
        );
        let long = "a".repeat(33);
        assert_eq!(
            parse_record(&format!("v=STSv1; id={long}")),
            Err(TxtError::BadId(long))
        );
        assert!(parse_record(&format!("v=STSv1; id={}", "a".repeat(32))).is_ok());
        assert_eq!(
            parse_record("v=STSv1; id=abc-1"),
            Err(TxtError::BadId("abc-1".into()))
        );
        assert!(matches!(
            parse_record("v=STSv1; id=a; id=b"),
            Err(TxtError::DuplicateId { .. })
        ));
    }

    #[test]
    fn malformed_fields() {
        assert_eq!(
            parse_record("v=STSv1; id=1; junk"),
            Err(TxtError::BadField("junk".into()))
        );
        assert_eq!(
            parse_record("v=STSv1; id=1; -x=1"),
            Err(TxtError::BadField("-x=1".into()))
        );
    }

    #[test]
    fn version_must_come_first_and_exactly() {
        assert_eq!(found(&["id=1; v=STSv1"]), Discovery::NoRecord);
        assert_eq!(found(&["v=STSv10; id=1"]), Discovery::NoRecord);
        assert_eq!(found(&["v=stsv1; id=1"]), Discovery::NoRecord);
        assert_eq!(found(&[" v=STSv1; id=1"]), Discovery::NoRecord);
    }

    #[test]
    fn other_records_are_ignored() {
        let d = found(&["v=spf1 -all", "v=STSv1; id=42", "hello"]);
        assert_eq!(d.record().unwrap().id, "42");
    }

    #[test]
    fn two_sts_records_mean_no_policy() {
        assert_eq!(
            found(&["v=STSv1; id=1", "v=STSv1; id=2"]),
            Discovery::Multiple(2)
        );
    }

    #[test]
    fn invalid_single_record() {
        assert_eq!(found(&["v=STSv1"]), Discovery::Invalid(TxtError::MissingId));
    }

    #[test]
    fn non_utf8_is_ignored() {
        let recs: Vec<&[u8]> = vec![b"\xff\xfe", b"v=STSv1; id=7"];
        assert_eq!(discover(recs).record().unwrap().id, "7");
    }
}
