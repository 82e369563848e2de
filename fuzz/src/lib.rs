//! Helpers shared by the fuzz targets in `src/bin/`. Each target is one
//! `afl::fuzz!` closure over the real parser of the agent, asserting the
//! invariants that parser promises (not only "no panic"): a panic or a
//! failed assertion is a crash that AFL++ records.

/// Splits an input at the first `sep`: targets that need two inputs (a
/// spool message and its state file, a reply and the next line) take them
/// from one fuzz case this way, so seeds stay readable files.
pub fn split_at_marker<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (&data[..at], Some(&data[at + sep.len()..])),
        None => (data, None),
    }
}

/// True when `s` holds a byte that must never reach a log line or a reply
/// unescaped: CR, LF, NUL and the other C0 controls except TAB.
pub fn has_control(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_finds_the_first_marker() {
        assert_eq!(
            split_at_marker(b"a--b--c", b"--"),
            (&b"a"[..], Some(&b"b--c"[..]))
        );
        assert_eq!(split_at_marker(b"abc", b"--"), (&b"abc"[..], None));
    }
}
