//! What the DANE lookups report to whoever watches them. Like the store
//! (see [`crate::store::events`]), DANE never imports the metrics registry:
//! the daemon installs a watcher once.

use std::sync::OnceLock;

/// Receives the DANE lookups' events: cheap, never blocking.
pub trait DaneEvents: Send + Sync {
    /// A background lookup was not started: every slot was taken.
    fn background_skipped(&self);
}

static WATCHER: OnceLock<&'static dyn DaneEvents> = OnceLock::new();

/// Sends DANE's events to `watcher` from now on; the first call wins.
pub fn report_to(watcher: &'static dyn DaneEvents) {
    let _ = WATCHER.set(watcher);
}

struct Nobody;

impl DaneEvents for Nobody {
    fn background_skipped(&self) {}
}

pub(crate) fn events() -> &'static dyn DaneEvents {
    WATCHER.get().copied().unwrap_or(&Nobody)
}
