//! RFC 3461 §4 "xtext": the encoding of the DSN parameters ENVID and
//! ORCPT. Pure and linear in its input; the callers bound the length.
//!
//! ```text
//! xtext   = *( xchar / hexchar )
//! xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
//!           except for "+" and "="
//! hexchar = ASCII "+" immediately followed by two upper case
//!           hexadecimal digits
//! ```

/// Decodes `s`, or `None` when it is not xtext. What it decodes to must be
/// printable ASCII (space included): RFC 3461 §4.2 and §4.4 say both
/// parameters carry US-ASCII text, and a decoded control character could
/// only ever be used to break the DSN header fields the value ends up in.
#[must_use]
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                let hi = hex_upper(*bytes.get(i + 1)?)?;
                let lo = hex_upper(*bytes.get(i + 2)?)?;
                let c = hi * 16 + lo;
                if !(32..=126).contains(&c) {
                    return None;
                }
                out.push(char::from(c));
                i += 3;
            }
            33..=126 if b != b'=' => {
                out.push(char::from(b));
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Encodes `s` as xtext: `+`, `=`, space and anything outside 33..=126 as
/// `+XX`. Non-ASCII text is encoded octet by octet, which [`decode`]
/// refuses: callers only encode what `decode` produced.
#[must_use]
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// RFC 3461 §4: only upper-case hex digits.
fn hex_upper(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["a@b.test", "a+b=c@d.test", "with space", "", "~!"] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s), "{s}");
        }
        assert_eq!(encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
    }

    #[test]
    fn refuses_what_is_not_xtext() {
        for bad in [
            "a=b", "a+", "a+2", "a+2b", "a+GG", "a b", "é", "+0A", "+7F", "+00", "a\tb",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
