//! A streaming look at a message's header section as the relay receives
//! it: whether it carries `TLS-Required: No` (RFC 8689 §4.2.2). Pure, fed the
//! CRLF lines [`crate::smtp::data`] produces, in pieces of any size, with
//! bounded memory: a field longer than [`MAX_FIELD`] cannot be this one
//! (the whole field is 16 octets) and is not kept.

/// Longest header field (unfolded, CRLFs included) that is looked at.
pub const MAX_FIELD: usize = 1000;

#[derive(Debug, Default)]
pub struct TlsRequiredScan {
    /// The field being read, while it is short enough to matter.
    field: Vec<u8>,
    /// The field being read got too long: not kept.
    overlong: bool,
    /// The line being read, up to [`MAX_FIELD`] octets.
    line: Vec<u8>,
    line_overlong: bool,
    /// The header section has ended.
    done: bool,
    found: bool,
}

impl TlsRequiredScan {
    #[must_use]
    pub fn new() -> TlsRequiredScan {
        TlsRequiredScan::default()
    }

    /// Feeds the next piece of the message.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    self.push_line_piece(&bytes[..p]);
                    bytes = &bytes[p + 1..];
                    self.end_line();
                }
                None => {
                    self.push_line_piece(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Whether the header section had `TLS-Required: No`. A message that
    /// ends inside its header section counts what was seen.
    #[must_use]
    pub fn found(&mut self) -> bool {
        if !self.done {
            self.finish_field();
        }
        self.found
    }

    fn push_line_piece(&mut self, piece: &[u8]) {
        if self.line.len() + piece.len() > MAX_FIELD {
            self.line_overlong = true;
            // The first octet is all that decides folding.
            if self.line.is_empty() {
                self.line.extend(piece.iter().take(1));
            }
        } else {
            self.line.extend_from_slice(piece);
        }
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        let overlong = std::mem::replace(&mut self.line_overlong, false);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        // RFC 5322 §2.1: the empty line ends the header section.
        if line.is_empty() && !overlong {
            self.finish_field();
            self.done = true;
            return;
        }
        // RFC 5322 §2.2.3: a line starting with WSP continues the field.
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if overlong || self.field.len() + line.len() > MAX_FIELD {
                self.overlong = true;
            } else {
                self.field.extend_from_slice(&line);
            }
            return;
        }
        self.finish_field();
        if overlong {
            self.overlong = true;
        } else {
            self.field = line;
        }
    }

    fn finish_field(&mut self) {
        let field = std::mem::take(&mut self.field);
        if std::mem::replace(&mut self.overlong, false) {
            return;
        }
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return;
        };
        let (name, value) = (&field[..colon], &field[colon + 1..]);
        // RFC 8689 §3: `TLS-Required: No`, the only value it defines;
        // field names are case-insensitive (RFC 5322 §1.2.2), and the
        // value is compared the same way, as a mail administrator expects.
        let value: Vec<u8> = value
            .iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t'))
            .collect();
        if name.eq_ignore_ascii_case(b"TLS-Required") && value.eq_ignore_ascii_case(b"No") {
            self.found = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(msg: &[u8], piece: usize) -> bool {
        let mut s = TlsRequiredScan::new();
        for chunk in msg.chunks(piece.max(1)) {
            s.feed(chunk);
        }
        s.found()
    }

    #[test]
    fn finds_the_field_in_the_header_section_only() {
        let yes: &[&[u8]] = &[
            b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n",
            b"tls-required:no\r\n\r\n",
            b"TLS-Required:\r\n  No\r\nX: y\r\n\r\n",
            b"Subject: x\r\nTLS-Required: NO\r\n",
        ];
        for msg in yes {
            for piece in [1, 2, 3, 7, 1000] {
                assert!(
                    scan(msg, piece),
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(msg)
                );
            }
        }
        let no: &[&[u8]] = &[
            b"Subject: x\r\n\r\nTLS-Required: No\r\n",
            b"TLS-Required: Yes\r\n\r\n",
            b"TLS-Required: No thanks\r\n\r\n",
            b"X-TLS-Required: No\r\n\r\n",
            b"Subject: TLS-Required: No\r\n\r\n",
            b" TLS-Required: No\r\n\r\n",
        ];
        for msg in no {
            for piece in [1, 5, 1000] {
                assert!(!scan(msg, piece), "{:?}", String::from_utf8_lossy(msg));
            }
        }
    }

    #[test]
    fn long_fields_are_bounded_and_skipped() {
        let mut msg = b"X-Long: ".to_vec();
        msg.extend(std::iter::repeat_n(b'a', 100_000));
        msg.extend_from_slice(b"\r\nTLS-Required: No\r\n\r\n");
        assert!(scan(&msg, 4096));
        let mut folded = b"TLS-Required: No\r\n".to_vec();
        folded.extend(std::iter::repeat_n(b' ', 5000));
        folded.extend_from_slice(b"\r\n\r\n");
        assert!(!scan(&folded, 100));
    }
}
