//! Netstrings (`<length>:<bytes>,`), the framing of the socketmap protocol.
//!
//! The decoder is incremental: it remembers how far it has scanned, so a
//! request that arrives one byte at a time costs one pass over its bytes, not
//! one pass per read. Its byte cap holds whatever the bytes are: the length
//! prefix may have no more digits than the limit itself (Postfix's
//! `dict_sockmap.c` sends at most 10 000 bytes, so at most 5 digits), which
//! also bounds a run of leading zeros that would never exceed the limit.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetstringError {
    #[error("length prefix is not a decimal number")]
    BadLength,
    #[error("announced length {0} exceeds the {1}-byte limit")]
    TooLong(usize, usize),
    #[error("length prefix has more than {0} digits")]
    TooManyDigits(usize),
    #[error("payload is not followed by ','")]
    MissingComma,
}

/// Decimal digits of `n` (at least 1): the longest length prefix a frame
/// within the limit needs.
fn digits_of(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the length prefix: its value and digit count so far.
    Length { len: usize, digits: usize },
    /// Prefix read; the payload starts at `start` and is `len` bytes long.
    Payload { start: usize, len: usize },
}

/// Incremental decoder for one stream of netstrings. Feed it the same
/// buffer, grown by each read; after a frame is returned, drop its `used`
/// bytes from the front of the buffer before the next call.
#[derive(Debug, Clone)]
pub struct Decoder {
    max: usize,
    max_digits: usize,
    state: State,
    /// Bytes of the buffer already looked at.
    scanned: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max,
            max_digits: digits_of(max),
            state: State::Length { len: 0, digits: 0 },
            scanned: 0,
        }
    }

    /// The most bytes one frame can occupy: prefix, ':', payload, ','.
    pub fn frame_limit(&self) -> usize {
        self.max_digits + 1 + self.max + 1
    }

    /// Looks for the end of the current frame in `buf`. Returns the payload's
    /// range and the bytes consumed, `None` when more input is needed, or an
    /// error as soon as the input can no longer become a valid netstring
    /// (so an oversized length is refused before its payload is buffered).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Range<usize>, usize)>, NetstringError> {
        loop {
            match self.state {
                State::Length { len, digits } => {
                    let Some(&b) = buf.get(self.scanned) else {
                        return Ok(None);
                    };
                    match b {
                        b'0'..=b'9' => {
                            let len = len
                                .checked_mul(10)
                                .and_then(|l| l.checked_add(usize::from(b - b'0')))
                                .ok_or(NetstringError::TooLong(usize::MAX, self.max))?;
                            if len > self.max {
                                return Err(NetstringError::TooLong(len, self.max));
                            }
                            if digits + 1 > self.max_digits {
                                return Err(NetstringError::TooManyDigits(self.max_digits));
                            }
                            self.state = State::Length {
                                len,
                                digits: digits + 1,
                            };
                            self.scanned += 1;
                        }
                        b':' if digits > 0 => {
                            self.scanned += 1;
                            self.state = State::Payload {
                                start: self.scanned,
                                len,
                            };
                        }
                        _ => return Err(NetstringError::BadLength),
                    }
                }
                State::Payload { start, len } => {
                    let end = start + len;
                    if buf.len() <= end {
                        // Nothing to re-scan in a payload: only its end matters.
                        self.scanned = buf.len();
                        return Ok(None);
                    }
                    if buf[end] != b',' {
                        return Err(NetstringError::MissingComma);
                    }
                    self.state = State::Length { len: 0, digits: 0 };
                    self.scanned = 0;
                    return Ok(Some((start..end, end + 1)));
                }
            }
        }
    }
}

/// One-shot form of [`Decoder::decode`]: looks for one complete netstring at
/// the start of `buf`.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Range<usize>, usize)>, NetstringError> {
    Decoder::new(max).decode(buf)
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
    fn leading_zeros_are_capped_like_any_digit() {
        // Issue 11 item 4: zeros never exceed the limit, so only a digit cap
        // stops them. 10 000 has 5 digits; the sixth byte is refused.
        assert_eq!(decode(b"00000", 10_000), Ok(None));
        assert_eq!(
            decode(b"000000", 10_000),
            Err(NetstringError::TooManyDigits(5))
        );
        assert_eq!(
            decode(&[b'0'; 1 << 20], 10_000),
            Err(NetstringError::TooManyDigits(5))
        );
        assert_eq!(decode(b"00003:abc,", 10_000), Ok(Some((6..9, 10))));
        assert_eq!(Decoder::new(10_000).frame_limit(), 10_007);
    }

    #[test]
    fn byte_by_byte_feeding_matches_one_shot() {
        let mut frames = encode(b"postfix a.test");
        frames.extend(encode(b""));
        frames.extend(encode(&[b'x'; 10_000]));
        let mut d = Decoder::new(10_000);
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        for &b in &frames {
            buf.push(b);
            if let Some((range, used)) = d.decode(&buf).unwrap() {
                assert_eq!(Ok(Some((range.clone(), used))), decode(&buf, 10_000));
                got.push(buf[range].to_vec());
                buf.drain(..used);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(
            got,
            vec![b"postfix a.test".to_vec(), Vec::new(), vec![b'x'; 10_000]]
        );
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
