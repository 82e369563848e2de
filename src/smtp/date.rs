//! Dates as mail and reports write them, always in UTC: RFC 5322 §3.3
//! date-times (`Date:`, `Received:`, the DSN date fields), RFC 3339
//! date-times (the TLS-RPT `date-range`) and day names `YYYY-MM-DD` (TLS-RPT
//! report ids and file names), and the check's day and `YYYYMMDDhhmmss`
//! stamps. The calendar itself is the `time` crate's, and this is its one
//! home in the tree.
//!
//! Inputs are unix seconds or day numbers (days since 1970-01-01) as `u64`,
//! so every value is on or after the epoch. Values past 9999-12-31, the last
//! day a four-digit year can name (RFC 5322 §3.3 and RFC 3339 §5.6 both
//! write four digits), are written as that day's last second.

use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::{Date, Month, OffsetDateTime};

// 9999-12-31T23:59:59Z, the last second `time` represents without its
// large-dates feature.
const LAST_SECOND: i64 = 253_402_300_799;
// Julian day number of 1970-01-01, so day numbers map onto `time`'s dates.
const EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// RFC 5322 date-time for unix seconds, in UTC:
/// `"Wed, 30 Dec 2026 04:49:06 +0000"` for 1798606146.
#[must_use]
pub fn rfc5322(unix: u64) -> String {
    // Rfc2822 refuses only years before 1900, which a u64 cannot reach.
    instant(unix).format(&Rfc2822).unwrap_or_default()
}

/// RFC 3339 date-time for unix seconds, in UTC: `"2024-10-04T00:00:00Z"`.
#[must_use]
pub fn rfc3339(unix: u64) -> String {
    // Rfc3339 refuses only offsets a UTC instant cannot have.
    instant(unix).format(&Rfc3339).unwrap_or_default()
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
#[must_use]
pub fn day_name(day: u64) -> String {
    let julian = i32::try_from(day)
        .ok()
        .and_then(|d| d.checked_add(EPOCH_JULIAN_DAY));
    let date = julian
        .and_then(|j| Date::from_julian_day(j).ok())
        .unwrap_or(Date::MAX);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The day number of a `YYYY-MM-DD` name as [`day_name`] writes it, for
/// files read back; any other spelling of a day is refused.
#[must_use]
pub fn parse_day_name(name: &str) -> Option<u64> {
    let mut parts = name.split('-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?;
    let day = u64::try_from(date.to_julian_day().checked_sub(EPOCH_JULIAN_DAY)?).ok()?;
    // "+2024-1-01" names a day too, but not as we write it.
    (day_name(day) == name).then_some(day)
}

/// `YYYY-MM-DD` of the day unix second `unix` falls on (a certificate's
/// expiry as the check shows it); before 1970 is 1970-01-01.
#[must_use]
pub fn day_of(unix: i64) -> String {
    day_name(u64::try_from(unix).unwrap_or(0) / 86_400)
}

/// `YYYYMMDDhhmmss` of unix seconds, in UTC: 14 digits that grow with time
/// (the check's suggested policy ids).
#[must_use]
pub fn compact(unix: u64) -> String {
    let t = instant(unix);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn instant(unix: u64) -> OffsetDateTime {
    let secs = i64::try_from(unix).map_or(LAST_SECOND, |s| s.min(LAST_SECOND));
    // In range by the clamp above.
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_dates() {
        assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(1_798_606_146), "Wed, 30 Dec 2026 04:49:06 +0000");
        assert_eq!(rfc5322(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 +0000");
        assert_eq!(rfc5322(951_868_799), "Tue, 29 Feb 2000 23:59:59 +0000");
        assert_eq!(rfc5322(951_868_800), "Wed, 01 Mar 2000 00:00:00 +0000");
        assert_eq!(rfc5322(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 +0000");
        assert_eq!(rfc5322(u64::MAX), "Fri, 31 Dec 9999 23:59:59 +0000");
    }

    #[test]
    fn days_of_unix_times_and_compact_stamps() {
        assert_eq!(day_of(0), "1970-01-01");
        // 2024-02-29T23:59:59Z, a leap day, and the second after it.
        assert_eq!(day_of(1_709_251_199), "2024-02-29");
        assert_eq!(day_of(1_709_251_200), "2024-03-01");
        assert_eq!(day_of(253_402_300_799), "9999-12-31");
        assert_eq!(day_of(-86_400), "1970-01-01");
        assert_eq!(compact(0), "19700101000000");
        assert_eq!(compact(1_709_251_199), "20240229235959");
        assert_eq!(compact(u64::MAX), "99991231235959");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(20_000 * 86_400), "2024-10-04T00:00:00Z");
        assert_eq!(rfc3339(20_000 * 86_400 + 86_399), "2024-10-04T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn day_names_round_trip() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(20_000), "2024-10-04");
        assert_eq!(day_name(u64::MAX), "9999-12-31");
        for d in [0, 59, 60, 365, 11_016, 20_000, 20_454, 47_000] {
            assert_eq!(parse_day_name(&day_name(d)), Some(d), "{d}");
        }
        for bad in [
            "2024-02-30",
            "x",
            "1969-12-31",
            "2024-1-01",
            "+2024-01-01",
            "2024-01-01-01",
            "2024-13-01",
        ] {
            assert_eq!(parse_day_name(bad), None, "{bad}");
        }
    }
}
