//! Domain-name normalisation shared by policy patterns, MX hosts and lookup keys.

use std::fmt;

/// Why a string is not a usable DNS host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainError {
    Empty,
    TooLong(usize),
    EmptyLabel,
    LabelTooLong(String),
    BadCharacter(String),
    HyphenAtEdge(String),
    NumericTld,
    Idna(String),
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainError::Empty => write!(f, "empty name"),
            DomainError::TooLong(n) => write!(f, "name is {n} bytes long, the limit is 253"),
            DomainError::EmptyLabel => write!(f, "empty label (two dots in a row?)"),
            DomainError::LabelTooLong(l) => write!(f, "label '{l}' is longer than 63 bytes"),
            DomainError::BadCharacter(l) => {
                write!(
                    f,
                    "label '{l}' has a character other than letters, digits and '-'"
                )
            }
            DomainError::HyphenAtEdge(l) => write!(f, "label '{l}' starts or ends with '-'"),
            DomainError::NumericTld => {
                write!(
                    f,
                    "the last label is numeric: this is an IP address, not a host name"
                )
            }
            DomainError::Idna(e) => write!(f, "not a valid internationalised name: {e}"),
        }
    }
}

impl std::error::Error for DomainError {}

/// Returns the canonical form used for every comparison: A-labels (RFC 8461 §4.1
/// compares IDNs in A-label form), lower case, no trailing dot. Rejects anything
/// that is not a letters-digits-hyphen host name, including IP addresses.
pub fn normalize_domain(input: &str) -> Result<String, DomainError> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(DomainError::Empty);
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|e| DomainError::Idna(e.to_string()))?
    };
    if ascii.len() > 253 {
        return Err(DomainError::TooLong(ascii.len()));
    }
    let mut last = "";
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(DomainError::LabelTooLong(label.to_string()));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(DomainError::BadCharacter(label.to_string()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::HyphenAtEdge(label.to_string()));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::NumericTld);
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_and_strips_trailing_dot() {
        assert_eq!(
            normalize_domain("MX1.Example.COM.").unwrap(),
            "mx1.example.com"
        );
    }

    #[test]
    fn converts_idn_to_a_labels() {
        assert_eq!(
            normalize_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_domain("XN--BCHER-KVA.example").unwrap(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn rejects_non_host_names() {
        assert_eq!(normalize_domain(""), Err(DomainError::Empty));
        assert_eq!(normalize_domain("."), Err(DomainError::Empty));
        assert_eq!(normalize_domain("a..b"), Err(DomainError::EmptyLabel));
        assert_eq!(normalize_domain("192.0.2.1"), Err(DomainError::NumericTld));
        assert!(matches!(
            normalize_domain("[192.0.2.1]"),
            Err(DomainError::BadCharacter(_))
        ));
        assert!(matches!(
            normalize_domain("a_b.test"),
            Err(DomainError::BadCharacter(_))
        ));
        assert!(matches!(
            normalize_domain("-a.test"),
            Err(DomainError::HyphenAtEdge(_))
        ));
        assert!(matches!(
            normalize_domain(&"a".repeat(64)),
            Err(DomainError::LabelTooLong(_))
        ));
        let long = vec!["abcdefghij"; 30].join(".");
        assert!(matches!(
            normalize_domain(&long),
            Err(DomainError::TooLong(_))
        ));
    }
}
