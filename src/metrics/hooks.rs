//! The registry as the watcher of the layers below the faces: each of them
//! defines the events it reports, and these impls turn them into counters.

use super::Metrics;
use crate::dane::events::DaneEvents;
use crate::resolver::events::{DiscoveryResult, ResolverEvents};
use crate::store::events::{StoreEvents, Tier};

impl StoreEvents for Metrics {
    fn cache_hit(&self, tier: Tier) {
        Metrics::cache_hit(self, tier.label());
    }

    fn store_error(&self) {
        self.store_errors.inc();
    }

    fn shared_rejected(&self, reason: &'static str) {
        Metrics::shared_rejected(self, reason);
    }
}

impl ResolverEvents for Metrics {
    fn discovery(&self, result: DiscoveryResult) {
        Metrics::discovery(self, result.label());
    }

    fn fetch(&self, error_class: Option<&'static str>) {
        Metrics::fetch(self, error_class);
    }

    fn override_applied(&self) {
        self.overrides_applied.inc();
    }
}

impl DaneEvents for Metrics {
    fn background_skipped(&self) {
        self.dane_background_skipped.inc();
    }
}
