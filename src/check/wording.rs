//! Small pieces of the report's wording shared by the catalogue, the
//! sections and the verdict: counts with the right noun, record text safe
//! to quote, and how far away a certificate's expiry is.

use crate::smtp::date::day_of;
use crate::tlsprobe::LeafInfo;

pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// DNS and HTTP text as it can be quoted in one line: invalid UTF-8
/// replaced, and cut at 200 bytes so a hostile record cannot flood the
/// report.
pub fn lossy(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &text[..cut])
    } else {
        text.into_owned()
    }
}

/// "expires in 90 days (2027-02-21)", "expired 3 days ago (…)", …
pub fn expiry_phrase(leaf: &LeafInfo) -> String {
    let date = day_of(leaf.not_after);
    let days = leaf.days_left.unsigned_abs() as usize;
    match (leaf.seconds_left < 0, days) {
        (true, 0) => format!("expired less than a day ago ({date})"),
        (true, d) => format!("expired {} ago ({date})", plural(d, "day", "days")),
        (false, 0) => format!("expires within a day ({date})"),
        (false, d) => format!("expires in {} ({date})", plural(d, "day", "days")),
    }
}
