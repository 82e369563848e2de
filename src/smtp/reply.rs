//! SMTP replies (RFC 5321 §4.2): `250-first line`, …, `250 last line`.

use std::fmt;

/// Longest reply line accepted, without CRLF. RFC 5321 §4.5.3.1.5 sets 512
/// for reply lines; real servers exceed it, so we allow the text-line limit.
pub const MAX_LINE: usize = 1000;
/// Most lines accepted in one reply (an EHLO reply has one per extension).
pub const MAX_LINES: usize = 100;

/// A complete reply: the code and the text of each line (without the code and
/// separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The first line's text.
    pub fn first_line(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// The reply on one line: `250 first line / second line`.
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// A reply that breaks the grammar or the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("reply longer than {MAX_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply lines carry different codes ({0} then {1})")]
    CodeChanged(u16, u16),
}

/// One parsed line: code, whether it is the last line, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    pub last: bool,
    pub text: String,
}

/// Parses one reply line (CRLF already removed). Accepts `250` alone as a
/// last line (RFC 5321 §4.2: the text is optional).
pub fn parse_line(line: &[u8]) -> Result<ReplyLine, ReplyError> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    if line.len() > MAX_LINE {
        return Err(ReplyError::LineTooLong);
    }
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed(shown()));
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return Err(ReplyError::Malformed(shown()));
    }
    let (last, text) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyError::Malformed(shown())),
    };
    Ok(ReplyLine {
        code,
        last,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// Collects lines into a reply, enforcing [`MAX_LINES`] and one code.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyBuilder {
    /// Adds a line; returns the reply when it was the last one.
    pub fn push(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let parsed = parse_line(line)?;
        if let Some(code) = self.code {
            if code != parsed.code {
                return Err(ReplyError::CodeChanged(code, parsed.code));
            }
        }
        if self.lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.code = Some(parsed.code);
        self.lines.push(parsed.text);
        if parsed.last {
            Ok(Some(Reply {
                code: parsed.code,
                lines: std::mem::take(&mut self.lines),
            }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Result<Reply, ReplyError> {
        let mut b = ReplyBuilder::default();
        for (i, l) in lines.iter().enumerate() {
            if let Some(r) = b.push(l.as_bytes())? {
                assert_eq!(i, lines.len() - 1, "reply ended early");
                return Ok(r);
            }
        }
        panic!("reply did not end");
    }

    #[test]
    fn single_and_multi_line() {
        let r = reply(&["220 mx.example.test ESMTP"]).unwrap();
        assert_eq!((r.code, r.first_line()), (220, "mx.example.test ESMTP"));
        let r = reply(&["250-mx.example.test", "250-PIPELINING", "250 STARTTLS"]).unwrap();
        assert_eq!(r.lines, vec!["mx.example.test", "PIPELINING", "STARTTLS"]);
        assert!(r.is_positive());
        assert_eq!(reply(&["250"]).unwrap().lines, vec![""]);
    }

    #[test]
    fn malformed() {
        for bad in ["", "25", "abc hello", "250x", "099 too low", "600 too high"] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            reply(&["250-a", "251 b"]),
            Err(ReplyError::CodeChanged(250, 251))
        );
    }

    #[test]
    fn limits() {
        let long = format!("250 {}", "x".repeat(MAX_LINE));
        assert_eq!(parse_line(long.as_bytes()), Err(ReplyError::LineTooLong));
        let mut b = ReplyBuilder::default();
        let mut result = Ok(None);
        for _ in 0..=MAX_LINES {
            result = b.push(b"250-x");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReplyError::TooManyLines));
    }

    #[test]
    fn non_utf8_text_is_kept_lossily() {
        let r = parse_line(b"220 \xff\xfe").unwrap();
        assert_eq!(r.code, 220);
        assert!(r.text.contains('\u{fffd}'));
    }
}
