//! Prometheus metrics: the process-wide registry.
//!
//! The faces (socketmap, relay) record into it directly. The layers below
//! them (store, resolver, DANE) never import it: each defines the events it
//! reports as a trait, which [`hooks`] implements and [`report_lower_layers`]
//! installs. The `/metrics` + `/healthz` listener is in [`server`].

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::policy::{Mode, ResultType};

mod histogram;
mod hooks;
mod labels;
pub mod server;

pub use histogram::LookupHistogram;
pub use labels::{
    AttemptLabels, FetchLabels, LookupLabels, ModeLabels, PolicyFailureLabels, ReasonLabels,
    ResultLabels, TierLabels,
};
pub use server::{serve, MAX_CONNECTIONS};

/// The socketmap answers, in the order of [`Metrics::lookup_handles`].
const ANSWERS: [&str; 4] = ["secure", "notfound", "temp", "perm"];

pub struct Metrics {
    registry: Registry,
    /// Lookup counters by (map, answer), resolved once per map so the hot
    /// path neither allocates label strings nor hashes them.
    lookup_handles: std::sync::RwLock<std::collections::HashMap<String, [Counter; 4]>>,
    hits: [Counter; 3],
    pub lookups: Family<LookupLabels, Counter>,
    pub lookup_seconds: LookupHistogram,
    pub cache_hits: Family<TierLabels, Counter>,
    pub fetches: Family<FetchLabels, Counter>,
    pub discoveries: Family<ResultLabels, Counter>,
    pub store_errors: Counter,
    pub overrides_applied: Counter,
    pub dane_background_skipped: Counter,
    pub policies: Family<ModeLabels, Gauge>,
    pub relay_received: Counter,
    pub relay_sessions_refused: Counter,
    pub relay_attempts: Family<AttemptLabels, Counter>,
    pub relay_policy_failures: Family<PolicyFailureLabels, Counter>,
    pub relay_queue: Gauge,
    pub relay_spool_state_recovered: Counter,
    pub relay_spool_set_aside: Counter,
    pub relay_spool_load_errors: Counter,
    pub relay_tls_required_no: Family<ReasonLabels, Counter>,
    pub relay_dsn_sent: Family<ReasonLabels, Counter>,
    pub shared_rejected: Family<ReasonLabels, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mta_sts");
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Socketmap lookups by map and answer",
            lookups.clone(),
        );
        // 50 µs to ~3 s: cached answers are microseconds, first lookups wait
        // on DNS and HTTPS.
        let lookup_seconds = LookupHistogram::default();
        registry.register(
            "lookup_duration_seconds",
            "Time to answer a socketmap lookup",
            lookup_seconds.clone(),
        );
        let cache_hits = Family::<TierLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Policy store reads answered, by tier",
            cache_hits.clone(),
        );
        let fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "fetches",
            "HTTPS policy fetches by outcome and failure reason",
            fetches.clone(),
        );
        let discoveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "discoveries",
            "_mta-sts TXT lookups by result",
            discoveries.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Errors reading or writing the policy store",
            store_errors.clone(),
        );
        let dane_background_skipped = Counter::default();
        registry.register(
            "dane_background_skipped",
            "Background DANE lookups not started: cache.max_dane_lookups were running",
            dane_background_skipped.clone(),
        );
        let overrides_applied = Counter::default();
        registry.register(
            "overrides_applied",
            "Lookups answered by a configured override",
            overrides_applied.clone(),
        );
        let policies = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "policies",
            "Cached policies by mode (at scrape time)",
            policies.clone(),
        );
        let relay_received = Counter::default();
        registry.register(
            "relay_messages_queued",
            "Messages accepted into the relay queue (bounces included)",
            relay_received.clone(),
        );
        let relay_tls_required_no = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "relay_tls_required_no",
            "Messages received with a TLS-Required: No header field (RFC 8689 section 4.2.2), by what became of it (honoured, ignored-requiretls, ignored-disabled, ignored-untrusted)",
            relay_tls_required_no.clone(),
        );
        let relay_dsn_sent = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "relay_dsn_sent",
            "Delivery status notifications the relay queued, by action (failed, delayed, relayed)",
            relay_dsn_sent.clone(),
        );
        let relay_sessions_refused = Counter::default();
        registry.register(
            "relay_sessions_refused",
            "Relay connections refused because the client network may not relay",
            relay_sessions_refused.clone(),
        );
        let relay_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "relay_delivery_attempts",
            "Relay delivery attempts (one per MX address tried) by policy mode and result",
            relay_attempts.clone(),
        );
        let relay_policy_failures = Family::<PolicyFailureLabels, Counter>::default();
        registry.register(
            "relay_policy_failures",
            "MTA-STS checks that failed during relay delivery, by mode and RFC 8460 result type",
            relay_policy_failures.clone(),
        );
        let relay_queue = Gauge::default();
        registry.register(
            "relay_queue_messages",
            "Messages in the relay queue",
            relay_queue.clone(),
        );
        let relay_spool_state_recovered = Counter::default();
        registry.register(
            "relay_spool_state_recovered",
            "Unreadable delivery state files set aside; their recipients were recovered from the envelope and retried",
            relay_spool_state_recovered.clone(),
        );
        let relay_spool_set_aside = Counter::default();
        registry.register(
            "relay_spool_set_aside",
            "Malformed queue files moved to the spool's corrupt/ directory",
            relay_spool_set_aside.clone(),
        );
        let relay_spool_load_errors = Counter::default();
        registry.register(
            "relay_spool_load_errors",
            "Queued messages that could not be read for now (I/O error) and are retried",
            relay_spool_load_errors.clone(),
        );
        let shared_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "shared_policies_rejected",
            "Policies read from Redis and ignored (hostile or broken), by reason",
            shared_rejected.clone(),
        );
        // Known label values start at zero, so dashboards and alerts see
        // every series from the first scrape, not only after a first event.
        let _ = fetches.get_or_create(&FetchLabels {
            outcome: "ok".to_string(),
            reason: "none".to_string(),
        });
        for result in ["record", "no-record", "failure"] {
            let _ = discoveries.get_or_create(&ResultLabels {
                result: result.to_string(),
            });
        }
        for reason in [
            "honoured",
            "ignored-disabled",
            "ignored-requiretls",
            "ignored-untrusted",
        ] {
            let _ = relay_tls_required_no.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            });
        }
        for action in ["failed", "delayed", "relayed"] {
            let _ = relay_dsn_sent.get_or_create(&ReasonLabels {
                reason: action.to_string(),
            });
        }
        for mode in ["enforce", "testing", "none", "no-policy", "dane"] {
            for result in ["delivered", "deferred", "bounced", "rejected"] {
                let _ = relay_attempts.get_or_create(&AttemptLabels {
                    mode: mode.to_string(),
                    result: result.to_string(),
                });
            }
        }
        // mx-mismatch is the metrics' own name for a not-listed MX host,
        // which TLS-RPT reports as validation-failure.
        for (mode, result_type) in [
            ("enforce", ResultType::StarttlsNotSupported.as_str()),
            ("enforce", ResultType::ValidationFailure.as_str()),
            ("enforce", "mx-mismatch"),
            ("testing", ResultType::StarttlsNotSupported.as_str()),
            ("dane", ResultType::TlsaInvalid.as_str()),
        ] {
            let _ = relay_policy_failures.get_or_create(&PolicyFailureLabels {
                mode: mode.to_string(),
                result_type: result_type.to_string(),
            });
        }
        let hits = ["memory", "disk", "redis"].map(|tier| {
            cache_hits
                .get_or_create(&TierLabels {
                    tier: tier.to_string(),
                })
                .clone()
        });
        Metrics {
            registry,
            lookup_handles: Default::default(),
            hits,
            lookups,
            lookup_seconds,
            cache_hits,
            fetches,
            discoveries,
            store_errors,
            overrides_applied,
            dane_background_skipped,
            policies,
            relay_received,
            relay_sessions_refused,
            relay_attempts,
            relay_policy_failures,
            relay_queue,
            relay_spool_state_recovered,
            relay_spool_set_aside,
            relay_spool_load_errors,
            relay_tls_required_no,
            relay_dsn_sent,
            shared_rejected,
        }
    }

    pub fn shared_rejected(&self, reason: &str) {
        self.shared_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn relay_tls_required_no(&self, outcome: &str) {
        self.relay_tls_required_no
            .get_or_create(&ReasonLabels {
                reason: outcome.to_string(),
            })
            .inc();
    }

    pub fn relay_dsn_sent(&self, action: &str) {
        self.relay_dsn_sent
            .get_or_create(&ReasonLabels {
                reason: action.to_string(),
            })
            .inc();
    }

    pub fn relay_attempt(&self, mode: &str, result: &str) {
        self.relay_attempts
            .get_or_create(&AttemptLabels {
                mode: mode.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn relay_policy_failure(&self, mode: &str, result_type: &str) {
        self.relay_policy_failures
            .get_or_create(&PolicyFailureLabels {
                mode: mode.to_string(),
                result_type: result_type.to_string(),
            })
            .inc();
    }

    pub fn lookup(&self, map: &str, answer: &str, took: Duration) {
        self.lookups
            .get_or_create(&LookupLabels {
                map: map.to_string(),
                answer: answer.to_string(),
            })
            .inc();
        self.lookup_seconds.observe(took);
    }

    /// Creates the lookup series of a map at zero (called per configured map).
    pub fn init_map(&self, map: &str) {
        let handles = ANSWERS.map(|answer| {
            self.lookups
                .get_or_create(&LookupLabels {
                    map: map.to_string(),
                    answer: answer.to_string(),
                })
                .clone()
        });
        if let Ok(mut h) = self.lookup_handles.write() {
            h.insert(map.to_string(), handles);
        }
    }

    /// Counts one lookup of a configured map (see [`init_map`](Self::init_map)).
    pub fn lookup_counted(&self, map: &str, answer: &str, took: Duration) {
        let slot = ANSWERS.iter().position(|a| *a == answer).unwrap_or(3);
        let counted = self
            .lookup_handles
            .read()
            .ok()
            .and_then(|h| h.get(map).map(|c| c[slot].inc()))
            .is_some();
        if counted {
            self.lookup_seconds.observe(took);
        } else {
            self.lookup(map, answer, took);
        }
    }

    pub fn cache_hit(&self, tier: &str) {
        match tier {
            "memory" => self.hits[0].inc(),
            "disk" => self.hits[1].inc(),
            "redis" => self.hits[2].inc(),
            other => self
                .cache_hits
                .get_or_create(&TierLabels {
                    tier: other.to_string(),
                })
                .inc(),
        };
    }

    pub fn fetch(&self, error_class: Option<&str>) {
        let (outcome, reason) = match error_class {
            None => ("ok", "none"),
            Some(c) => ("error", c),
        };
        self.fetches
            .get_or_create(&FetchLabels {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn discovery(&self, result: &str) {
        self.discoveries
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Sets the policy gauges to the cached policies' `modes`. The registry
    /// cannot read the store itself (it sits above nothing): whoever serves
    /// the scrape reads the store and calls this first.
    pub fn set_policies(&self, modes: impl IntoIterator<Item = Mode>) {
        self.policies.clear();
        for mode in [Mode::Enforce, Mode::Testing, Mode::None] {
            let _ = self.policies.get_or_create(&ModeLabels {
                mode: mode.to_string(),
            });
        }
        for mode in modes {
            self.policies
                .get_or_create(&ModeLabels {
                    mode: mode.to_string(),
                })
                .inc();
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Makes the store, the resolver and DANE report to [`metrics`] from now on
/// (idempotent). Called where the process wires its store up, before any
/// lookup.
pub fn report_lower_layers() {
    let m: &'static Metrics = metrics();
    crate::store::events::report_to(m);
    crate::resolver::events::report_to(m);
    crate::dane::events::report_to(m);
}
