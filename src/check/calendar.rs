//! The check's UTC dates: the expiry date of a certificate and the fresh
//! policy id of `--suggest`, both from the `time` crate's calendar rather
//! than hand-made day arithmetic.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// The UTC time of `unix` seconds. Times before 1970 show as 1970-01-01,
/// as they always have (no certificate or clock of interest is older);
/// so do those past year 9999, which X.509 dates cannot express.
fn utc(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix.max(0)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `YYYY-MM-DD` of a Unix time.
pub fn iso_date(unix: i64) -> String {
    let t = utc(unix);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `YYYYMMDDhhmmss` of `now` in UTC.
pub fn timestamp_id(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let t = utc(secs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(iso_date(0), "1970-01-01");
        // 2024-02-29T23:59:59Z, a leap day, and the second after it.
        assert_eq!(iso_date(1_709_251_199), "2024-02-29");
        assert_eq!(iso_date(1_709_251_200), "2024-03-01");
        assert_eq!(iso_date(253_402_300_799), "9999-12-31");
    }

    #[test]
    fn out_of_range_times_show_the_epoch() {
        assert_eq!(iso_date(-86_400), "1970-01-01");
        assert_eq!(iso_date(i64::MAX), "1970-01-01");
    }

    #[test]
    fn timestamp_ids_are_the_utc_time_in_digits() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(timestamp_id(at(0)), "19700101000000");
        assert_eq!(timestamp_id(at(1_709_210_096)), "20240229123456");
        assert_eq!(timestamp_id(at(4_102_444_799)), "20991231235959");
    }
}
