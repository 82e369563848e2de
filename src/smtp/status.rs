//! Enhanced mail system status codes (RFC 3463, `class.subject.detail`),
//! the ones the relay puts in its replies and reports, by meaning.
//!
//! One name per code the relay uses, so that the same situation gets the
//! same code wherever it is answered (the SMTP server, the delivery side,
//! the bounces). The class is part of the name where the relay uses a
//! code in both classes. Codes registered after RFC 3463 (in the IANA
//! registry RFC 5248 set up) name the RFC that defines them. The codes
//! other servers reply with are read by [`enhanced_status`].

/// 2.0.0: other or undefined status, here success with nothing more to say
/// (RFC 3463 §3.1, X.0.0).
pub const OK: &str = "2.0.0";
/// 2.1.0: other address status, here the sender is accepted (RFC 3463
/// §3.2, X.1.0).
pub const SENDER_OK: &str = "2.1.0";
/// 2.1.5: destination address valid (RFC 3463 §3.2, X.1.5).
pub const DESTINATION_OK: &str = "2.1.5";
/// 2.7.0: other or undefined security status, here authentication
/// succeeded (RFC 3463 §3.8, X.7.0; RFC 4954 §6).
pub const SECURITY_OK: &str = "2.7.0";

/// 4.0.0: other or undefined status, transient (RFC 3463 §3.1, X.0.0).
pub const TEMP_OTHER: &str = "4.0.0";
/// 5.0.0: other or undefined status, permanent (RFC 3463 §3.1, X.0.0).
pub const PERM_OTHER: &str = "5.0.0";

/// 5.1.1: bad destination mailbox address (RFC 3463 §3.2, X.1.1).
pub const BAD_MAILBOX: &str = "5.1.1";
/// 5.1.2: bad destination system address (RFC 3463 §3.2, X.1.2).
pub const BAD_SYSTEM: &str = "5.1.2";
/// 5.1.3: bad destination mailbox address syntax (RFC 3463 §3.2, X.1.3).
pub const BAD_ADDRESS_SYNTAX: &str = "5.1.3";
/// 5.1.10: recipient address has null MX (RFC 7505 §4.2, X.1.10).
pub const NULL_MX: &str = "5.1.10";

/// 4.3.0: other or undefined mail system status, transient (RFC 3463
/// §3.4, X.3.0).
pub const TEMP_MAIL_SYSTEM: &str = "4.3.0";
/// 5.3.0: other or undefined mail system status, permanent (RFC 3463
/// §3.4, X.3.0).
pub const PERM_MAIL_SYSTEM: &str = "5.3.0";
/// 4.3.1: mail system full (RFC 3463 §3.4, X.3.1).
pub const SYSTEM_FULL: &str = "4.3.1";
/// 5.3.4: message too big for system (RFC 3463 §3.4, X.3.4).
pub const MESSAGE_TOO_BIG: &str = "5.3.4";

/// 4.4.1: no answer from host (RFC 3463 §3.5, X.4.1).
pub const NO_ANSWER: &str = "4.4.1";
/// 4.4.2: bad connection (RFC 3463 §3.5, X.4.2).
pub const BAD_CONNECTION: &str = "4.4.2";
/// 4.4.3: directory server failure, such as a failed DNS lookup (RFC 3463
/// §3.5, X.4.3).
pub const DIRECTORY_FAILURE: &str = "4.4.3";
/// 4.4.7: delivery time expired (RFC 3463 §3.5, X.4.7).
pub const EXPIRED: &str = "4.4.7";

/// 5.5.1: invalid command (RFC 3463 §3.6, X.5.1).
pub const INVALID_COMMAND: &str = "5.5.1";
/// 5.5.2: syntax error (RFC 3463 §3.6, X.5.2).
pub const SYNTAX_ERROR: &str = "5.5.2";
/// 4.5.3: too many recipients (RFC 3463 §3.6, X.5.3).
pub const TOO_MANY_RECIPIENTS: &str = "4.5.3";
/// 5.5.4: invalid command arguments (RFC 3463 §3.6, X.5.4).
pub const INVALID_ARGUMENTS: &str = "5.5.4";

/// 5.6.7: non-ASCII addresses not permitted for that sender or recipient
/// (RFC 6531 §3.5, X.6.7).
pub const NON_ASCII_ADDRESS: &str = "5.6.7";

/// 4.7.0: other or undefined security status, transient (RFC 3463 §3.8,
/// X.7.0).
pub const TEMP_SECURITY: &str = "4.7.0";
/// 5.7.0: other or undefined security status, permanent (RFC 3463 §3.8,
/// X.7.0).
pub const PERM_SECURITY: &str = "5.7.0";
/// 5.7.1: delivery not authorized, message refused (RFC 3463 §3.8, X.7.1).
pub const NOT_AUTHORIZED: &str = "5.7.1";
/// 4.7.5: cryptographic failure (RFC 3463 §3.8, X.7.5).
pub const CRYPTO_FAILURE: &str = "4.7.5";
/// 5.7.8: authentication credentials invalid (RFC 4954 §6, X.7.8).
pub const AUTH_INVALID: &str = "5.7.8";
/// 4.7.10: encryption needed, transient (registered by RFC 5248, X.7.10).
pub const TEMP_ENCRYPTION_NEEDED: &str = "4.7.10";
/// 5.7.10: encryption needed, permanent (registered by RFC 5248, X.7.10).
pub const PERM_ENCRYPTION_NEEDED: &str = "5.7.10";
/// 5.7.11: encryption required for requested authentication mechanism
/// (RFC 4954 §6, X.7.11).
pub const ENCRYPTION_REQUIRED_FOR_MECHANISM: &str = "5.7.11";
/// 5.7.30: REQUIRETLS support required (RFC 8689 §5, X.7.30).
pub const REQUIRETLS_NEEDED: &str = "5.7.30";

/// The enhanced status code (class.subject.detail) at the start of an SMTP
/// reply text such as "5.1.1 no such user", if any.
#[must_use]
pub fn enhanced_status(reply_text: &str) -> Option<String> {
    let code = reply_text.split_ascii_whitespace().next()?;
    is_status_code(code).then(|| code.to_string())
}

/// A well-formed code: RFC 3463 §2 class 2, 4 or 5, subject and detail of
/// 1 to 3 digits each.
#[must_use]
pub fn is_status_code(code: &str) -> bool {
    let mut it = code.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return false;
    };
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit());
    matches!(class, "2" | "4" | "5") && digits(subject) && digits(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_codes() {
        assert_eq!(enhanced_status("5.1.1 x").as_deref(), Some("5.1.1"));
        assert_eq!(enhanced_status("4.7.0").as_deref(), Some("4.7.0"));
        assert_eq!(
            enhanced_status("5.7.26 unauthenticated").as_deref(),
            Some("5.7.26")
        );
        assert_eq!(enhanced_status("2.0.0 ok").as_deref(), Some("2.0.0"));
        assert_eq!(enhanced_status("250 ok"), None);
        assert_eq!(enhanced_status("5.1"), None);
        assert_eq!(enhanced_status("6.1.1 x"), None);
        assert_eq!(enhanced_status("5.1234.1 x"), None);
        assert_eq!(enhanced_status("5.1.1.1 x"), None);
        assert_eq!(enhanced_status("5..1 x"), None);
        assert_eq!(enhanced_status("5.1.1, x"), None);
        assert_eq!(enhanced_status(""), None);
    }
}
