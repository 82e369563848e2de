//! The relay's DATA reader (`src/smtp/data.rs`) and the delivery side's
//! dot-stuffer (`src/smtp/dotstuff.rs`): what an SMTP client sends after
//! DATA, and what we send on. The first byte picks a split point, so that
//! the incremental parser is fed in two pieces as the network would; the
//! rest is the stream.
use mta_sts_agent::smtp::data::{decode, DataDecoder};
use mta_sts_agent::smtp::dotstuff::stuff;
use mta_sts_agent::smtp::headers::TlsRequiredScan;

const MAX_LINE: usize = 1000;

/// Where the one rule (only a real CRLF . CRLF ends the data, RFC 5321
/// §4.1.1.4) says the data ends: just past the first `\r\n.\r\n` of
/// `"\r\n" + input`, the leading CRLF standing for the DATA command's.
fn rule_end(input: &[u8]) -> Option<usize> {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5 - 2)
}

/// Every CR is followed by LF and every LF preceded by CR.
fn only_crlf(out: &[u8]) -> bool {
    out.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => out.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && out[i - 1] == b'\r',
        _ => true,
    })
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&first, input)) = data.split_first() else {
            return;
        };
        let (content, end, dec) = decode(input, MAX_LINE);
        assert_eq!(end, rule_end(input), "the data ended elsewhere than the rule says");
        assert!(content.len() <= 2 * input.len());
        assert!(only_crlf(&content), "stored content has a bare CR or LF");
        assert_eq!(dec.ended(), end.is_some());

        // Fed in two pieces, the parser says the same.
        let split = usize::from(first) * input.len() / 256;
        let mut two = DataDecoder::new(MAX_LINE);
        let mut out = Vec::new();
        let p = two.feed(&input[..split], &mut out);
        let end2 = if p.end {
            Some(p.consumed)
        } else {
            let q = two.feed(&input[split..], &mut out);
            q.end.then_some(split + q.consumed)
        };
        assert_eq!(end2, end, "a split moved the end of data");
        assert_eq!(out, content, "a split changed the content");
        assert_eq!(two.overlong(), dec.overlong());

        // The TLS-Required scan of the header section (RFC 8689 §4.2.2) sees
        // the same in one piece or two.
        let mut one = TlsRequiredScan::new();
        one.feed(&content);
        let cut = usize::from(first) * content.len() / 256;
        let mut halves = TlsRequiredScan::new();
        halves.feed(&content[..cut]);
        halves.feed(&content[cut..]);
        assert_eq!(one.found(), halves.found(), "a split changed the TLS-Required verdict");

        // What we send on ends only where we end it and reads back as the
        // content itself (an open last line gains its CRLF).
        let wire = stuff(&content);
        assert!(only_crlf(&wire), "the wire has a bare CR or LF");
        let (back, back_end, _) = decode(&wire, usize::MAX);
        assert_eq!(back_end, Some(wire.len()), "the wire ends early or never");
        let mut expected = content.clone();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert_eq!(back, expected, "stuffing then reading changed the content");

        // Raw input stuffed directly (a message the relay wrote itself)
        // never ends early either.
        let raw = stuff(input);
        assert_eq!(rule_end(&raw), Some(raw.len()));
    });
}
