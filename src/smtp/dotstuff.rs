//! The DATA writer of an SMTP client (RFC 5321 §4.5.2) as a pure,
//! incremental encoder: message octets in, wire octets out.
//!
//! The same rule as the reader ([`super::data`]), so that what we send can
//! never end early at any receiver, however lax: every bare CR and every
//! bare LF is sent as CRLF, and a `.` at the start of every line is
//! doubled. The wire then holds only CRLF line endings, and the only
//! `CRLF . CRLF` in it is the one [`DotStuffer::finish`] writes.

/// Incremental dot-stuffer; feed it the message, then [`finish`](Self::finish).
#[derive(Clone, Debug)]
pub struct DotStuffer {
    line_start: bool,
    /// A CR was the last octet; an LF next makes it a CRLF pair.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the wire form of `input` to `out` (at most twice as long).
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.line_start = false;
                }
            }
        }
    }

    /// Ends the last line if it is open, then writes the end of data.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The whole wire form of `message`, end of data included.
pub fn stuff(message: &[u8]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut out = Vec::with_capacity(message.len() + message.len() / 16 + 5);
    s.encode(message, &mut out);
    s.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::*;

    #[test]
    fn dots_are_stuffed_at_every_line_start() {
        assert_eq!(
            stuff(b".a\r\n..\r\nb.\r\n."),
            b"..a\r\n...\r\nb.\r\n..\r\n.\r\n"
        );
        assert_eq!(stuff(b""), b".\r\n");
        assert_eq!(stuff(b"x\r\n"), b"x\r\n.\r\n");
    }

    /// Bare endings in a stored message (an old spool, a bounce we wrote)
    /// must not reach a lax receiver as line endings of their own.
    #[test]
    fn bare_cr_and_lf_go_out_as_crlf_so_no_early_end_exists() {
        for variant in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
            b"\r",
            b"\n",
        ] {
            let mut msg = b"a".to_vec();
            msg.extend_from_slice(variant);
            msg.extend_from_slice(b"MAIL FROM:<evil@x.test>");
            let wire = stuff(&msg);
            let bad = wire
                .windows(2)
                .any(|w| (w[0] != b'\r' && w[1] == b'\n') || (w[0] == b'\r' && w[1] != b'\n'));
            assert!(!bad, "{variant:?}: {wire:?}");
            // The only end of data is the final one, for our own reader.
            let (_, end, _) = data::decode(&wire, usize::MAX);
            assert_eq!(end, Some(wire.len()), "{variant:?}: {wire:?}");
            let ends = wire.windows(5).filter(|w| w == b"\r\n.\r\n").count();
            assert_eq!(ends, 1, "{variant:?}: {wire:?}");
        }
    }

    #[test]
    fn round_trips_through_the_reader_in_any_split() {
        let msg = b"Subject: t\r\n\r\n.\r\n..x\r\nend";
        let mut whole = Vec::new();
        let mut s = DotStuffer::new();
        s.encode(msg, &mut whole);
        s.finish(&mut whole);
        for cut in 0..=msg.len() {
            let mut s = DotStuffer::new();
            let mut out = Vec::new();
            s.encode(&msg[..cut], &mut out);
            s.encode(&msg[cut..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
        let (content, end, _) = data::decode(&whole, usize::MAX);
        assert_eq!(end, Some(whole.len()));
        assert_eq!(content, b"Subject: t\r\n\r\n.\r\n..x\r\nend\r\n");
    }
}
