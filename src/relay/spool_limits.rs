//! How much the spool stores per message, and the one number each file is
//! both written and read back with. A limit that differed between the
//! writer and the reader would let an acknowledged message become
//! unloadable after a restart, so every limit here is a single constant
//! used on both sides, and what is stored is bounded before it is written.

#[cfg(test)]
use crate::limits::encoded;
use crate::limits::ENVELOPE_FIXED;
pub use crate::limits::{MAX_ENVELOPE, MAX_STATE, MAX_STORABLE_RECIPIENTS, MAX_SUMMARY};

/// `text` cut to at most [`MAX_SUMMARY`] octets at a character boundary,
/// control characters (CR, LF, TAB, NUL…) turned into spaces so that a
/// hostile reply can neither grow under JSON escaping nor break a log or
/// DSN line.
pub fn summary(text: &str) -> String {
    const CUT: &str = " [...]";
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    if text.len() <= MAX_SUMMARY {
        return clean(text);
    }
    let mut end = MAX_SUMMARY - CUT.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = clean(&text[..end]);
    out.push_str(CUT);
    out
}

/// What the envelope line of a transaction will need, counted while the
/// client gives its recipients, so that RCPT can refuse with `452` the
/// recipient that would make the envelope too long to store (the limit is
/// [`MAX_ENVELOPE`], the same number [`Spool::create`] enforces).
///
/// [`Spool::create`]: super::spool::Spool::create
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeBudget {
    used: usize,
}

impl EnvelopeBudget {
    pub fn new(sender: &str) -> EnvelopeBudget {
        EnvelopeBudget {
            used: ENVELOPE_FIXED + json_len(sender),
        }
    }

    /// Counts `rcpt` in, or says `false` (and counts nothing) when the
    /// envelope would no longer fit.
    /// `params`: the recipient's DSN parameters as they are stored (an
    /// ORCPT may be 500 octets, more than the address itself), so that a
    /// client using them gets its `452` here rather than a spool file too
    /// long to read back.
    pub fn add(&mut self, rcpt: &str, params: &super::command::RcptParams) -> bool {
        let stored = if params.is_empty() {
            // `{}` still takes a place once any recipient has parameters.
            3
        } else {
            serde_json::to_string(params).map_or(usize::MAX / 4, |j| j.len() + 1)
        };
        let next = self.used + json_len(rcpt) + 1 + stored;
        if next > MAX_ENVELOPE {
            return false;
        }
        self.used = next;
        true
    }
}

/// Length of `s` as a JSON string, as serde_json writes it.
fn json_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_bounded_and_single_line() {
        let long = "451-4.3.0 x\r\n".repeat(10_000);
        let s = summary(&long);
        assert!(s.len() <= MAX_SUMMARY, "{}", s.len());
        assert!(!s.contains('\r') && !s.contains('\n'));
        assert!(s.ends_with("[...]"));
        assert_eq!(summary("250 ok"), "250 ok");
        // A multi-byte character at the cut is not split.
        let wide = "é".repeat(MAX_SUMMARY);
        assert!(summary(&wide).len() <= MAX_SUMMARY);
        let worst = serde_json::to_string(&summary(&"\"\\".repeat(1000))).unwrap();
        assert!(worst.len() <= encoded(MAX_SUMMARY));
    }

    #[test]
    fn json_len_matches_serde() {
        for s in ["", "a@b.test", "\"q\\uo\"@x.test", "ü@é.test", "\u{1}\t\n"] {
            assert_eq!(
                json_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn storable_recipients_cover_the_default() {
        assert!(MAX_STORABLE_RECIPIENTS >= crate::config::RelayConfig::default().max_recipients);
        // The number in the README's config reference.
        assert_eq!(MAX_STORABLE_RECIPIENTS, 1252);
    }

    #[test]
    fn budget_refuses_the_recipient_that_does_not_fit() {
        let mut b = EnvelopeBudget::new("a@x.test");
        let rcpt = format!("{}@{}.test", "l".repeat(64), "d".repeat(180));
        let mut n = 0;
        let none = super::super::command::RcptParams::default();
        while b.add(&rcpt, &none) {
            n += 1;
        }
        let per = json_len(&rcpt) + 1 + 3;
        assert_eq!(
            n,
            (MAX_ENVELOPE - ENVELOPE_FIXED - json_len("a@x.test")) / per
        );
        // A refused recipient is not counted: a shorter one may still fit.
        let before = b;
        assert!(!b.add(&rcpt, &none));
        assert_eq!(b, before);
    }
}
