//! Netstrings (`<length>:<bytes>,`), the framing of the socketmap protocol.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetstringError {
    #[error("length prefix is not a decimal number")]
    BadLength,
    #[error("announced length {0} exceeds the {1}-byte limit")]
    TooLong(usize, usize),
    #[error("payload is not followed by ','")]
    MissingComma,
}

/// Looks for one complete netstring at the start of `buf`. Returns the
/// payload's range and the bytes consumed, `None` when more input is needed,
/// or an error as soon as the input can no longer become a valid netstring
/// (so an oversized length is refused before its payload is buffered).
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Range<usize>, usize)>, NetstringError> {
    let mut len: usize = 0;
    let mut digits = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                len = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(b - b'0')))
                    .ok_or(NetstringError::TooLong(usize::MAX, max))?;
                if len > max {
                    return Err(NetstringError::TooLong(len, max));
                }
            }
            b':' if digits > 0 => {
                let start = i + 1;
                let end = start + len;
                if buf.len() <= end {
                    return Ok(None);
                }
                if buf[end] != b',' {
                    return Err(NetstringError::MissingComma);
                }
                return Ok(Some((start..end, end + 1)));
            }
            _ => return Err(NetstringError::BadLength),
        }
    }
    Ok(None)
}

pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let enc = encode(b"postfix example.com");
        assert_eq!(enc, b"19:postfix example.com,");
        let (range, used) = decode(&enc, 100).unwrap().unwrap();
        assert_eq!(&enc[range], b"postfix example.com");
        assert_eq!(used, enc.len());
        assert_eq!(encode(b""), b"0:,");
        assert_eq!(decode(b"0:,", 10).unwrap().unwrap(), (2..2, 3));
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in [&b""[..], b"1", b"12", b"5:", b"5:abc", b"5:abcde"] {
            assert_eq!(decode(partial, 100), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn pipelined_requests_are_split() {
        let mut buf = encode(b"m a.test");
        buf.extend(encode(b"m b.test"));
        let (r1, used) = decode(&buf, 100).unwrap().unwrap();
        assert_eq!(&buf[r1], b"m a.test");
        let (r2, _) = decode(&buf[used..], 100).unwrap().unwrap();
        assert_eq!(&buf[used..][r2], b"m b.test");
    }

    #[test]
    fn malformed_input_is_refused_early() {
        assert_eq!(decode(b"x", 100), Err(NetstringError::BadLength));
        assert_eq!(decode(b":abc,", 100), Err(NetstringError::BadLength));
        assert_eq!(decode(b"-1:", 100), Err(NetstringError::BadLength));
        assert_eq!(decode(b"3:abcd", 100), Err(NetstringError::MissingComma));
        assert_eq!(
            decode(b"10001", 10_000),
            Err(NetstringError::TooLong(10_001, 10_000))
        );
        assert!(matches!(
            decode(b"99999999999999999999999999", 10_000),
            Err(NetstringError::TooLong(..))
        ));
    }
}
