//! The `_smtp._tls.<domain>` TLS-RPT record (RFC 8460 §3): where a domain
//! wants reports about TLS failures of mail sent to it.
//!
//! ```text
//! tlsrpt-record    = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//! field-delim      = *WSP ";" *WSP
//! tlsrpt-field     = tlsrpt-rua / tlsrpt-extension   ; rua is required
//! tlsrpt-version   = %s"v=TLSRPTv1"
//! tlsrpt-rua       = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//! tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
//! ```
//!
//! Choices where the RFC is silent:
//! - A malformed URI in `rua=` does not invalidate the record: it is listed in
//!   [`TlsRptRecord::invalid_rua`] and the well-formed ones are kept, so a
//!   reporter still reaches the addresses that work. A record whose `rua`
//!   holds no usable URI is still returned (with an empty `rua`); callers
//!   decide (the check reports it as an error).
//! - Only `mailto:` and `https:` are defined by RFC 8460 §3; other schemes
//!   are listed as invalid.
//!
//! Decided by the RFC: the grammar's `1*(field-delim tlsrpt-field)` admits
//! several `rua=` fields, and §3 says "Parsers MUST accept TXT records which
//! are syntactically valid". Each `rua` names where the domain wants its
//! reports ("the Policy Domain can specify a comma-separated list of URIs"),
//! so the URIs of all `rua` fields form one list, in record order, without
//! repeats: a reporter sends to every one, as for a single field.

use std::fmt;

pub use super::tlsrpt_types::{PolicyType, ResultType};

use super::domain::normalize_domain;
use super::txt::{valid_ext_name, valid_ext_value};

/// One reporting URI of `rua=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuaUri {
    /// `mailto:` URI: reports are mailed to `address` (percent-decoded).
    Mailto { uri: String, address: String },
    /// `https:` URI: reports are POSTed to `uri`.
    Https { uri: String, host: String },
}

impl RuaUri {
    /// The URI as written in the record.
    pub fn as_str(&self) -> &str {
        match self {
            RuaUri::Mailto { uri, .. } | RuaUri::Https { uri, .. } => uri,
        }
    }
}

impl fmt::Display for RuaUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one `rua=` URI is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuaError {
    /// Neither `mailto:` nor `https:`.
    UnsupportedScheme(String),
    /// No scheme at all (`reports@example.com` instead of `mailto:reports@…`).
    NoScheme,
    /// `mailto:` without a `local@domain` address.
    BadMailbox(String),
    /// `https:` without a valid host.
    BadHttpsUrl(String),
    /// Characters that must be percent-encoded (space, `,`, `!`, controls).
    BadCharacter(char),
}

impl fmt::Display for RuaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuaError::UnsupportedScheme(s) => write!(
                f,
                "scheme '{s}:' is not supported; RFC 8460 defines only mailto: and https:"
            ),
            RuaError::NoScheme => write!(
                f,
                "no URI scheme; write 'mailto:' before an address or use an https:// URL"
            ),
            RuaError::BadMailbox(why) => write!(f, "not a valid mailto: address ({why})"),
            RuaError::BadHttpsUrl(why) => write!(f, "not a valid https: URL ({why})"),
            RuaError::BadCharacter(c) => {
                write!(f, "character {c:?} must be percent-encoded in a URI")
            }
        }
    }
}

impl std::error::Error for RuaError {}

/// A parsed `v=TLSRPTv1` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// The usable reporting URIs, in record order.
    pub rua: Vec<RuaUri>,
    /// URIs of `rua=` that cannot be used, with the reason.
    pub invalid_rua: Vec<(String, RuaError)>,
    /// Extension fields (`name=value`), ignored by senders.
    pub extensions: Vec<(String, String)>,
    /// How many `rua=` fields the record has (their URIs are merged).
    pub rua_fields: usize,
}

/// Why a record starting with `v=TLSRPTv1` is not a valid TLS-RPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRptError {
    /// RFC 8460 §3: the `rua` field is required.
    MissingRua,
    /// `rua=` with nothing after it.
    EmptyRua,
    /// A field that is neither `rua=…` nor a `name=value` extension.
    BadField(String),
}

impl fmt::Display for TlsRptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsRptError::MissingRua => write!(f, "no rua= field (RFC 8460 §3 requires one)"),
            TlsRptError::EmptyRua => write!(f, "rua= lists no URI"),
            TlsRptError::BadField(field) => write!(
                f,
                "field '{field}' is neither rua=… nor a name=value extension (RFC 8460 §3)"
            ),
        }
    }
}

impl std::error::Error for TlsRptError {}

/// The outcome of reading every TXT record at `_smtp._tls.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRptDiscovery {
    Found(TlsRptRecord),
    /// No record starts with `v=TLSRPTv1`.
    NoRecord,
    /// §3: "If the number of resulting records is not one, senders MUST
    /// assume the recipient domain does not implement TLSRPT."
    Multiple(usize),
    Invalid(TlsRptError),
}

/// True when a record begins with the `v=TLSRPTv1` version field, followed by
/// a separator or the end.
pub fn is_tlsrpt_record(txt: &str) -> bool {
    match txt.strip_prefix("v=TLSRPTv1") {
        Some(rest) => rest.is_empty() || rest.starts_with([';', ' ', '\t']),
        None => false,
    }
}

/// Decodes `%XX` escapes; `None` on a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses one URI of `rua=`.
pub fn parse_rua_uri(uri: &str) -> Result<RuaUri, RuaError> {
    if let Some(c) = uri
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || c == ',' || c == '!' || !c.is_ascii())
    {
        return Err(RuaError::BadCharacter(c));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(RuaError::NoScheme);
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(RuaError::NoScheme);
    }
    if scheme.eq_ignore_ascii_case("mailto") {
        let to = rest.split('?').next().unwrap_or("");
        let address =
            percent_decode(to).ok_or_else(|| RuaError::BadMailbox("bad %-escape".into()))?;
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Err(RuaError::BadMailbox(format!("'{address}' has no '@'")));
        };
        if local.is_empty() {
            return Err(RuaError::BadMailbox("empty local part".into()));
        }
        if local.contains('@') && !local.starts_with('"') {
            return Err(RuaError::BadMailbox(format!(
                "'{address}' has more than one '@'"
            )));
        }
        normalize_domain(domain)
            .map_err(|e| RuaError::BadMailbox(format!("domain '{domain}': {e}")))?;
        if !domain.contains('.') {
            return Err(RuaError::BadMailbox(format!(
                "domain '{domain}' is a single label"
            )));
        }
        Ok(RuaUri::Mailto {
            uri: uri.to_string(),
            address,
        })
    } else if scheme.eq_ignore_ascii_case("https") {
        let Some(after) = rest.strip_prefix("//") else {
            return Err(RuaError::BadHttpsUrl("expected 'https://host/…'".into()));
        };
        let authority = after.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(RuaError::BadHttpsUrl(
                "credentials in the URL are not allowed".into(),
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((ip, port)) => {
                    ip.parse::<std::net::Ipv6Addr>()
                        .map_err(|_| RuaError::BadHttpsUrl(format!("'[{ip}]' is not IPv6")))?;
                    (ip.to_string(), port.strip_prefix(':'))
                }
                None => return Err(RuaError::BadHttpsUrl("unclosed '['".into())),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if let Some(port) = port {
            if port.is_empty() || port.parse::<u16>().is_err() {
                return Err(RuaError::BadHttpsUrl(format!("port '{port}' is not valid")));
            }
        }
        if host.is_empty() {
            return Err(RuaError::BadHttpsUrl("no host".into()));
        }
        if !authority.starts_with('[') && host.parse::<std::net::Ipv4Addr>().is_err() {
            normalize_domain(&host)
                .map_err(|e| RuaError::BadHttpsUrl(format!("host '{host}': {e}")))?;
        }
        Ok(RuaUri::Https {
            uri: uri.to_string(),
            host,
        })
    } else {
        Err(RuaError::UnsupportedScheme(scheme.to_string()))
    }
}

/// Parses one record; the caller has joined its character-strings (§3: "as
/// if those strings are concatenated together without adding spaces").
pub fn parse_tlsrpt_record(txt: &str) -> Result<TlsRptRecord, TlsRptError> {
    let rest = txt
        .strip_prefix("v=TLSRPTv1")
        .ok_or(TlsRptError::MissingRua)?;
    let mut rua_fields = 0;
    let mut rua: Vec<RuaUri> = Vec::new();
    let mut invalid_rua = Vec::new();
    let mut extensions = Vec::new();
    for field in rest.split(';') {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            continue;
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(TlsRptError::BadField(field.to_string()));
        };
        if name == "rua" {
            rua_fields += 1;
            let uris: Vec<&str> = value
                .split(',')
                .map(|u| u.trim_matches([' ', '\t']))
                .filter(|u| !u.is_empty())
                .collect();
            if uris.is_empty() {
                return Err(TlsRptError::EmptyRua);
            }
            for uri in uris {
                match parse_rua_uri(uri) {
                    Ok(u) if rua.contains(&u) => {}
                    Ok(u) => rua.push(u),
                    Err(e) => invalid_rua.push((uri.to_string(), e)),
                }
            }
        } else if valid_ext_name(name) && valid_ext_value(value) {
            extensions.push((name.to_string(), value.to_string()));
        } else {
            return Err(TlsRptError::BadField(field.to_string()));
        }
    }
    if rua_fields == 0 {
        return Err(TlsRptError::MissingRua);
    }
    Ok(TlsRptRecord {
        rua,
        invalid_rua,
        extensions,
        rua_fields,
    })
}

/// Applies §3 to all TXT records at `_smtp._tls.<domain>`, each given as its
/// character-strings joined.
pub fn discover_tlsrpt<R, S>(records: R) -> TlsRptDiscovery
where
    R: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    use super::txt::{one_record, OneRecord};
    match one_record(records, is_tlsrpt_record) {
        OneRecord::None => TlsRptDiscovery::NoRecord,
        OneRecord::One(text) => match parse_tlsrpt_record(&text) {
            Ok(r) => TlsRptDiscovery::Found(r),
            Err(e) => TlsRptDiscovery::Invalid(e),
        },
        OneRecord::Many(n) => TlsRptDiscovery::Multiple(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples() {
        let r = parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:reports@example.com").unwrap();
        assert_eq!(
            r.rua,
            vec![RuaUri::Mailto {
                uri: "mailto:reports@example.com".into(),
                address: "reports@example.com".into()
            }]
        );
        let r =
            parse_tlsrpt_record("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt").unwrap();
        assert!(matches!(&r.rua[0], RuaUri::Https { host, .. } if host == "reporting.example.com"));
        let r = parse_tlsrpt_record(
            "v=TLSRPTv1; rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrpt",
        )
        .unwrap();
        assert_eq!(r.rua.len(), 2);
        assert!(r.invalid_rua.is_empty());
    }

    #[test]
    fn whitespace_trailing_separator_and_extensions() {
        let r = parse_tlsrpt_record(
            "v=TLSRPTv1 ;\trua=mailto:a@b.example , https://c.example:8443/x ; ext-1=y;",
        )
        .unwrap();
        assert_eq!(r.rua.len(), 2);
        assert_eq!(r.extensions, vec![("ext-1".into(), "y".into())]);
    }

    /// RFC 8460 §3: `tlsrpt-record = tlsrpt-version 1*(field-delim
    /// tlsrpt-field) [field-delim]` admits two `rua` fields, and "Parsers
    /// MUST accept TXT records which are syntactically valid". (This was
    /// rejected as DuplicateRua before: a correction, not a tolerance.)
    #[test]
    fn several_rua_fields_are_one_list() {
        let r = parse_tlsrpt_record(
            "v=TLSRPTv1; rua=mailto:a@b.test; rua=https://r.b.test/x,mailto:a@b.test",
        )
        .expect("two rua fields are valid");
        assert_eq!(
            r.rua.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
            vec!["mailto:a@b.test", "https://r.b.test/x"]
        );
        assert_eq!(r.rua_fields, 2);
        let r = parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:a@b.test").unwrap();
        assert_eq!(r.rua_fields, 1);
        // An empty second rua is still an error, as an empty first one is.
        assert_eq!(
            parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:a@b.test; rua="),
            Err(TlsRptError::EmptyRua)
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            parse_tlsrpt_record("v=TLSRPTv1;"),
            Err(TlsRptError::MissingRua)
        );
        assert_eq!(
            parse_tlsrpt_record("v=TLSRPTv1; rua="),
            Err(TlsRptError::EmptyRua)
        );
        assert_eq!(
            parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:a@b.test; junk"),
            Err(TlsRptError::BadField("junk".into()))
        );
    }

    #[test]
    fn malformed_uris_are_listed_not_fatal() {
        let r = parse_tlsrpt_record(
            "v=TLSRPTv1; rua=reports@example.com,mailto:ok@example.com,ftp://x.example/,mailto:nobody",
        )
        .unwrap();
        assert_eq!(r.rua.len(), 1);
        let reasons: Vec<&RuaError> = r.invalid_rua.iter().map(|(_, e)| e).collect();
        assert!(matches!(reasons[0], RuaError::NoScheme), "{reasons:?}");
        assert!(matches!(reasons[1], RuaError::UnsupportedScheme(s) if s == "ftp"));
        assert!(matches!(reasons[2], RuaError::BadMailbox(_)));
    }

    #[test]
    fn uri_rules() {
        assert!(parse_rua_uri("mailto:tls%2Breports@example.com").is_ok());
        assert!(matches!(
            parse_rua_uri("mailto:tls+reports@example.com"),
            Ok(RuaUri::Mailto { address, .. }) if address == "tls+reports@example.com"
        ));
        assert!(parse_rua_uri("MAILTO:a@example.com?subject=x").is_ok());
        assert!(matches!(
            parse_rua_uri("mailto:@example.com"),
            Err(RuaError::BadMailbox(_))
        ));
        assert!(matches!(
            parse_rua_uri("mailto:a@exa mple.com"),
            Err(RuaError::BadCharacter(' '))
        ));
        assert!(matches!(
            parse_rua_uri("mailto:a@bad_domain.example"),
            Err(RuaError::BadMailbox(_))
        ));
        assert!(matches!(
            parse_rua_uri("mailto:a@%zz"),
            Err(RuaError::BadMailbox(_))
        ));
        assert!(matches!(
            parse_rua_uri("mailto:a!b@example.com"),
            Err(RuaError::BadCharacter('!'))
        ));
        assert!(parse_rua_uri("https://[2001:db8::1]:443/r").is_ok());
        assert!(parse_rua_uri("https://192.0.2.1/r").is_ok());
        assert!(matches!(
            parse_rua_uri("https:/x.example"),
            Err(RuaError::BadHttpsUrl(_))
        ));
        assert!(matches!(
            parse_rua_uri("https://"),
            Err(RuaError::BadHttpsUrl(_))
        ));
        assert!(matches!(
            parse_rua_uri("https://x.example:99999/"),
            Err(RuaError::BadHttpsUrl(_))
        ));
        assert!(matches!(
            parse_rua_uri("https://user@x.example/"),
            Err(RuaError::BadHttpsUrl(_))
        ));
        assert!(matches!(
            parse_rua_uri("http://x.example/"),
            Err(RuaError::UnsupportedScheme(_))
        ));
        assert!(matches!(parse_rua_uri(":x"), Err(RuaError::NoScheme)));
        assert!(matches!(
            parse_rua_uri("mailto:é@example.com"),
            Err(RuaError::BadCharacter('é'))
        ));
    }

    #[test]
    fn discovery() {
        let d = discover_tlsrpt(["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@b.test"]);
        assert!(matches!(d, TlsRptDiscovery::Found(_)));
        assert_eq!(
            discover_tlsrpt([
                "v=TLSRPTv1; rua=mailto:a@b.test",
                "v=TLSRPTv1;rua=mailto:c@d.test"
            ]),
            TlsRptDiscovery::Multiple(2)
        );
        assert_eq!(
            discover_tlsrpt(["v=TLSRPTv10; rua=mailto:a@b.test"]),
            TlsRptDiscovery::NoRecord
        );
        assert_eq!(
            discover_tlsrpt(Vec::<&str>::new()),
            TlsRptDiscovery::NoRecord
        );
        assert_eq!(
            discover_tlsrpt(["v=TLSRPTv1"]),
            TlsRptDiscovery::Invalid(TlsRptError::MissingRua)
        );
        let raw: Vec<&[u8]> = vec![b"\xff", b"v=TLSRPTv1;rua=mailto:x@y.test"];
        assert!(matches!(discover_tlsrpt(raw), TlsRptDiscovery::Found(_)));
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for s in [
            "v=TLSRPTv1;rua=%",
            "v=TLSRPTv1;rua=mailto:%",
            "v=TLSRPTv1;rua=mailto:%e2%28",
            "v=TLSRPTv1;rua=https://[",
            "v=TLSRPTv1;rua=https://[::1",
            "v=TLSRPTv1;rua=,,,",
            "v=TLSRPTv1;=;==;",
            "v=TLSRPTv1;rua=:",
        ] {
            let _ = parse_tlsrpt_record(s);
        }
    }
}
