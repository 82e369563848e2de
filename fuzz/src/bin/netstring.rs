//! Socketmap framing (`src/socketmap/netstring.rs`): what Postfix, or
//! anyone who can reach the socket, sends. The first byte picks the length
//! cap so that short inputs reach the "too long" paths too; the rest is the
//! receive buffer.
use mta_sts_agent::socketmap::netstring::{decode, encode, NetstringError};
use mta_sts_agent::socketmap::MAX_REQUEST;

/// The longest buffer that can still be the start of one netstring whose
/// payload is at most `max`: the digits of `max`, ':', payload, ','.
fn longest_undecided(max: usize) -> usize {
    max.to_string().len() + 1 + max + 1
}

fn check(buf: &[u8], max: usize) {
    match decode(buf, max) {
        Ok(Some((range, used))) => {
            assert!(
                range.start >= 2,
                "a payload needs a length and ':' before it"
            );
            assert!(range.end < used && used == range.end + 1 && used <= buf.len());
            assert!(range.len() <= max, "payload {} over cap {max}", range.len());
            assert_eq!(buf[range.start - 1], b':');
            assert_eq!(buf[range.end], b',');
            let digits = &buf[..range.start - 1];
            assert!(digits.iter().all(u8::is_ascii_digit));
            // The announced length is the payload's length.
            let announced = digits
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            assert_eq!(announced, range.len());
            // Re-encoding the payload gives a netstring that decodes to it.
            let payload = &buf[range.clone()];
            let again = encode(payload);
            let (r2, used2) = decode(&again, max)
                .expect("re-encoded payload refused")
                .expect("re-encoded payload incomplete");
            assert_eq!(&again[r2], payload);
            assert_eq!(used2, again.len());
        }
        Ok(None) => {
            // "Need more bytes" must stay bounded whatever the bytes are
            // (issue 11 item 4: a run of leading zeros was buffered without
            // limit).
            assert!(
                buf.len() <= longest_undecided(max),
                "{} bytes still undecided with a {max}-byte cap",
                buf.len()
            );
        }
        Err(NetstringError::TooLong(len, cap)) => {
            assert_eq!(cap, max);
            assert!(len > max);
        }
        // Every other refusal (bad length, missing comma, too many digits)
        // is fine: refusing is always safe.
        Err(_) => {}
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&first, buf)) = data.split_first() else {
            return;
        };
        check(buf, usize::from(first));
        check(buf, MAX_REQUEST);
    });
}
