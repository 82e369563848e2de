//! The DATA reader of an SMTP server (RFC 5321 §4.1.1.4, §4.5.2) as a pure,
//! incremental parser: bytes in, message content and the end of data out.
//! No I/O, no allocation beyond the caller's output buffer, a constant
//! amount of state whatever the input, so any split of any bytes is safe.
//!
//! The one rule, chosen so that nothing can end a message early (the SMTP
//! smuggling class, CVE-2023-51764 and kin):
//!
//! - Only `CRLF . CRLF` ends the data, where the first CRLF is a real CR LF
//!   pair ending the previous line (or the start of the data). This is
//!   what RFC 5321 §4.1.1.4 specifies and what Postfix's
//!   `smtpd_forbid_bare_newline = normalize` enforces (Postfix leaves a
//!   bare CR alone; we treat it like a bare LF, so that no receiver that
//!   splits lines at CR can be smuggled to either).
//! - A bare LF and a bare CR each end a content line and are stored as
//!   CRLF, but a line they end never makes the next line an end of data:
//!   `\n.\n`, `\n.\r\n`, `\r.\r\n`, `\r\n.\r`, `\r\n.\n` are all content.
//!   A lone `.` line that is not the end is kept as `.` (the outbound
//!   writer stuffs it again).
//! - An over-long line is counted, never truncated: its ending is parsed
//!   exactly like any other, so it cannot swallow or fake an end. The
//!   caller refuses the message at its end ([`DataDecoder::overlong`]).
//!
//! Stored content thus has only CRLF line endings, with dot-stuffing
//! removed (RFC 5321 §4.5.2: a leading `.` followed by more is deleted).

/// Where the parser is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line; `real` when the previous line ended in a
    /// CR LF pair (or this is the first line of the data).
    LineStart { real: bool },
    /// A `.` was the first octet of the line.
    Dot { real: bool },
    /// `.` then CR at the start of a line.
    DotCr { real: bool },
    /// Inside a line.
    InLine,
    /// A CR inside a line; an LF next makes a real line ending.
    Cr,
    /// The end of data was seen; nothing more is consumed.
    Ended,
}

/// What one [`DataDecoder::feed`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Input octets used. Less than the input only when `end` is true: the
    /// rest (pipelined commands, RFC 2920) belongs to the command reader.
    pub consumed: usize,
    /// The end-of-data line was read.
    pub end: bool,
}

/// Incremental DATA reader; see the module documentation for the rule.
#[derive(Clone, Debug)]
pub struct DataDecoder {
    state: State,
    line_len: usize,
    max_line: usize,
    overlong: bool,
    bare_endings: u64,
}

impl DataDecoder {
    /// `max_line`: the longest line, its CRLF included, before the message
    /// counts as [`overlong`](DataDecoder::overlong).
    pub fn new(max_line: usize) -> DataDecoder {
        DataDecoder {
            state: State::LineStart { real: true },
            line_len: 0,
            max_line,
            overlong: false,
            bare_endings: 0,
        }
    }

    /// Some line was longer than `max_line`.
    pub fn overlong(&self) -> bool {
        self.overlong
    }

    /// Bare CRs and bare LFs seen (each stored as CRLF).
    pub fn bare_endings(&self) -> u64 {
        self.bare_endings
    }

    /// The end of data has been read.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Parses `input`, appending the message content to `out` (at most
    /// twice `input.len()` octets: a bare CR becomes CRLF).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::InLine {
                // The common case: copy the run up to the next CR or LF.
                let rest = &input[i..];
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(rest.len());
                out.extend_from_slice(&rest[..run]);
                self.grow(run);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            match self.step(b, out) {
                Step::Next => i += 1,
                Step::Again => {}
                Step::End => {
                    return Progress {
                        consumed: i + 1,
                        end: true,
                    }
                }
            }
        }
        Progress {
            consumed: input.len(),
            end: self.state == State::Ended,
        }
    }

    fn grow(&mut self, n: usize) {
        self.line_len = self.line_len.saturating_add(n);
        if self.line_len.saturating_add(2) > self.max_line {
            self.overlong = true;
        }
    }

    /// A line ended; `real` for a CR LF pair.
    fn line_end(&mut self, real: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        if !real {
            self.bare_endings += 1;
        }
        self.line_len = 0;
        self.state = State::LineStart { real };
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Step {
        match self.state {
            State::Ended => return Step::End,
            State::LineStart { real } => match b {
                b'.' => {
                    self.grow(1);
                    self.state = State::Dot { real };
                }
                b'\r' => self.state = State::Cr,
                b'\n' => self.line_end(false, out),
                _ => {
                    out.push(b);
                    self.grow(1);
                    self.state = State::InLine;
                }
            },
            State::Dot { real } => match b {
                b'\r' => self.state = State::DotCr { real },
                b'\n' => {
                    out.push(b'.');
                    self.line_end(false, out);
                }
                _ => {
                    // RFC 5321 §4.5.2: the stuffed dot goes, the octet stays
                    // (it is processed as the line's next octet).
                    self.state = State::InLine;
                    return Step::Again;
                }
            },
            State::DotCr { real } => {
                if b == b'\n' {
                    if real {
                        self.state = State::Ended;
                        return Step::End;
                    }
                    // `.` after a bare line ending: content, not the end.
                    out.push(b'.');
                    self.line_end(true, out);
                } else {
                    out.push(b'.');
                    self.line_end(false, out);
                    return Step::Again;
                }
            }
            State::InLine => match b {
                b'\r' => self.state = State::Cr,
                b'\n' => self.line_end(false, out),
                _ => {
                    out.push(b);
                    self.grow(1);
                }
            },
            State::Cr => {
                if b == b'\n' {
                    self.line_end(true, out);
                } else {
                    self.line_end(false, out);
                    return Step::Again;
                }
            }
        }
        Step::Next
    }
}

enum Step {
    /// The octet was used.
    Next,
    /// The state changed without using the octet: look at it again.
    Again,
    /// The octet ended the data.
    End,
}

/// Decodes a whole DATA stream at once: the content, and where the end of
/// data was (the offset just past it), if it was seen.
pub fn decode(input: &[u8], max_line: usize) -> (Vec<u8>, Option<usize>, DataDecoder) {
    let mut dec = DataDecoder::new(max_line);
    let mut out = Vec::with_capacity(input.len());
    let p = dec.feed(input, &mut out);
    (out, p.end.then_some(p.consumed), dec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1000;

    fn content(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let (out, end, _) = decode(input, MAX);
        (out, end)
    }

    /// Every split of the input into two feeds gives the same result as
    /// one feed: the parser keeps no state it cannot carry across reads.
    fn same_when_split(input: &[u8]) {
        let whole = content(input);
        for cut in 0..=input.len() {
            let mut dec = DataDecoder::new(MAX);
            let mut out = Vec::new();
            let a = dec.feed(&input[..cut], &mut out);
            let end = if a.end {
                Some(a.consumed)
            } else {
                let b = dec.feed(&input[cut..], &mut out);
                b.end.then_some(cut + b.consumed)
            };
            assert_eq!((out, end), whole, "cut at {cut} of {input:?}");
        }
    }

    #[test]
    fn crlf_dot_crlf_ends_and_the_rest_is_left_for_commands() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (out, end) = content(input);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(end, Some(input.len() - 6));
        same_when_split(input);
        // An empty message: the data starts at a line start.
        assert_eq!(content(b".\r\n"), (Vec::new(), Some(3)));
    }

    #[test]
    fn stuffed_dots_are_removed_and_a_lone_content_dot_kept() {
        let (out, end) = content(b"..x\r\n...\r\n.y\r\n.\r\n");
        assert_eq!(out, b".x\r\n..\r\ny\r\n");
        assert_eq!(end, Some(17));
    }

    /// The published smuggling variants (SEC Consult 2023): none ends the
    /// data; what follows stays content, with its ending made CRLF.
    #[test]
    fn no_smuggling_variant_ends_the_data() {
        let forged = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\n";
        for variant in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
            b"\r.\r",
            b"\n.\r",
            b"\r.\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(variant);
            input.extend_from_slice(forged);
            let (out, end, dec) = decode(&input, MAX);
            assert_eq!(end, None, "{variant:?} ended the data");
            assert!(dec.bare_endings() >= 1, "{variant:?}");
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.contains("\r\n.\r\nMAIL FROM:<evil@x.test>\r\n"),
                "{variant:?}: {text:?}"
            );
            assert!(!out
                .windows(2)
                .any(|w| (w[0] != b'\r' && w[1] == b'\n') || (w[0] == b'\r' && w[1] != b'\n')));
            // The real end still works after it.
            input.extend_from_slice(b"\r\n.\r\n");
            let (_, end, _) = decode(&input, MAX);
            assert_eq!(end, Some(input.len()), "{variant:?}");
            same_when_split(&input);
        }
    }

    #[test]
    fn an_overlong_line_keeps_its_ending_and_cannot_hide_or_fake_an_end() {
        for variant in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
        ] {
            let mut input = b"x".repeat(5000);
            input.extend_from_slice(variant);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\n");
            let (_, end, dec) = decode(&input, MAX);
            assert_eq!(end, None, "{variant:?}");
            assert!(dec.overlong());
            input.extend_from_slice(b".\r\n");
            let (_, end, _) = decode(&input, MAX);
            assert_eq!(end, Some(input.len()), "{variant:?}");
        }
        // An over-long line ended by a real CRLF is followed by a real end.
        let mut input = b"y".repeat(5000);
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, end, dec) = decode(&input, MAX);
        assert_eq!(end, Some(input.len()));
        assert!(dec.overlong());
        assert_eq!(out.len(), 5002);
        // Exactly at the bound is fine.
        let mut input = b"z".repeat(MAX - 2);
        input.extend_from_slice(b"\r\n.\r\n");
        assert!(!decode(&input, MAX).2.overlong());
    }

    /// A model of the rule: the data ends just after the first `CRLF . CRLF`
    /// of the stream (with a CRLF before its first octet), nowhere else,
    /// and the content never holds a bare CR or LF. Checked on many
    /// pseudo-random streams of the octets that matter, in random splits.
    #[test]
    fn the_end_is_exactly_the_first_crlf_dot_crlf_in_random_streams() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| [b'\r', b'\n', b'.', b'a'][(next() % 4) as usize])
                .collect();
            let mut framed = b"\r\n".to_vec();
            framed.extend_from_slice(&input);
            let model = framed
                .windows(5)
                .position(|w| w == b"\r\n.\r\n")
                .map(|p| p + 3);
            let mut dec = DataDecoder::new(8);
            let mut out = Vec::new();
            let cut = (next() as usize) % (len + 1);
            let a = dec.feed(&input[..cut], &mut out);
            let end = if a.end {
                Some(a.consumed)
            } else {
                let b = dec.feed(&input[cut..], &mut out);
                assert!(b.end || b.consumed == len - cut);
                b.end.then_some(cut + b.consumed)
            };
            assert_eq!(end, model, "{input:?} cut at {cut}");
            let bare = out
                .windows(2)
                .any(|w| (w[0] != b'\r' && w[1] == b'\n') || (w[0] == b'\r' && w[1] != b'\n'));
            assert!(
                !bare && out.last() != Some(&b'\r'),
                "{input:?} gave {out:?}"
            );
            assert!(out.len() <= 2 * len);
        }
    }

    #[test]
    fn bare_endings_become_crlf() {
        let (out, end) = content(b"a\nb\rc\r\r\n\n.\r\n");
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\n\r\n.\r\n");
        assert_eq!(end, None);
        same_when_split(b"a\nb\rc\r\r\n\n.\r\n.\r\n");
    }
}
