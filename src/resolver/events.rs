//! What the resolver reports (discoveries, fetches, overrides) to whoever
//! watches it. Like the store (see [`crate::store::events`]), the resolver
//! never imports the metrics registry: the daemon installs a watcher once.

use std::sync::OnceLock;

/// How a `_mta-sts` TXT discovery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryResult {
    Record,
    NoRecord,
    Failure,
    /// Not started: `cache.max_discoveries` were running.
    Skipped,
}

impl DiscoveryResult {
    pub fn label(self) -> &'static str {
        match self {
            DiscoveryResult::Record => "record",
            DiscoveryResult::NoRecord => "no-record",
            DiscoveryResult::Failure => "failure",
            DiscoveryResult::Skipped => "skipped",
        }
    }
}

/// Receives the resolver's events. Called on the lookup path: cheap, never
/// blocking.
pub trait ResolverEvents: Send + Sync {
    fn discovery(&self, result: DiscoveryResult);
    /// A policy fetch: `None` when it succeeded, else the failure class
    /// ([`crate::fetch::FetchError::class`]).
    fn fetch(&self, error_class: Option<&'static str>);
    /// A lookup answered by a configured override.
    fn override_applied(&self);
}

static WATCHER: OnceLock<&'static dyn ResolverEvents> = OnceLock::new();

/// Sends every resolver's events to `watcher` from now on; the first call
/// wins.
pub fn report_to(watcher: &'static dyn ResolverEvents) {
    let _ = WATCHER.set(watcher);
}

struct Nobody;

impl ResolverEvents for Nobody {
    fn discovery(&self, _: DiscoveryResult) {}
    fn fetch(&self, _: Option<&'static str>) {}
    fn override_applied(&self) {}
}

pub(crate) fn events() -> &'static dyn ResolverEvents {
    WATCHER.get().copied().unwrap_or(&Nobody)
}
