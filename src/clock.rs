//! Wall-clock seconds, for what is stored or compared across restarts
//! (policy ages, spool arrival times, certificate validity). A clock set
//! before 1970 reads as 0 rather than failing: every caller treats time as
//! "at least this old", so the error only makes things look older.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
