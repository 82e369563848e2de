//! What the store reports about itself (hits per tier, errors, hostile
//! shared entries) to whoever watches it. The store never imports the
//! metrics registry: the process that wires things up installs a watcher
//! once (see [`report_to`]), so the layering stays one-way and a store
//! without a watcher (tests, `query`) reports to nobody.

use std::sync::OnceLock;

/// The tier that answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
    /// The shared fleet store.
    Redis,
}

impl Tier {
    pub fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::Redis => "redis",
        }
    }
}

/// Receives the store's events. Called on the lookup path: implementations
/// must be cheap and must not block.
pub trait StoreEvents: Send + Sync {
    /// A read answered by `tier` (a remembered absence is no hit).
    fn cache_hit(&self, tier: Tier);
    /// A read or write of a persistent tier failed.
    fn store_error(&self);
    /// A shared entry was ignored; `reason` is a stable label.
    fn shared_rejected(&self, reason: &'static str);
}

static WATCHER: OnceLock<&'static dyn StoreEvents> = OnceLock::new();

/// Sends every store's events to `watcher` from now on. The first call
/// wins: one process has one set of metrics.
pub fn report_to(watcher: &'static dyn StoreEvents) {
    let _ = WATCHER.set(watcher);
}

struct Nobody;

impl StoreEvents for Nobody {
    fn cache_hit(&self, _: Tier) {}
    fn store_error(&self) {}
    fn shared_rejected(&self, _: &'static str) {}
}

pub(crate) fn events() -> &'static dyn StoreEvents {
    WATCHER.get().copied().unwrap_or(&Nobody)
}
