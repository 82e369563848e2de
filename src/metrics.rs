//! Prometheus metrics and the `/metrics` + `/healthz` HTTP listener.
//!
//! The metrics are process-wide (one daemon per process), so every layer
//! records where the event happens without threading a handle through.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::resolver::Resolver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub map: String,
    /// secure, notfound, temp or perm.
    pub answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// memory, disk or redis (the shared fleet store).
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// ok or error.
    pub outcome: String,
    /// The failure class (timeout, tls, redirect, …), "none" on success.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// record, no-record, failure.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// enforce, testing, none, no-policy or dane.
    pub mode: String,
    /// delivered, deferred, bounced or rejected.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyFailureLabels {
    /// enforce, testing, dane or requiretls.
    pub mode: String,
    /// RFC 8460 §4.3 result type, mx-mismatch, or (requiretls)
    /// no-authenticated-mx.
    pub result_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

/// Upper bounds of [`LookupHistogram`]'s buckets, in nanoseconds: 50 µs
/// times powers of 4, to about 3 s (cached answers take microseconds, first
/// lookups wait on DNS and HTTPS).
const LOOKUP_BUCKETS_NS: [u64; 9] = {
    let mut b = [50_000u64; 9];
    let mut i = 1;
    while i < 9 {
        b[i] = b[i - 1] * 4;
        i += 1;
    }
    b
};

/// The socketmap's lookup-time histogram, observed by every lookup. The
/// library's histogram takes a mutex per observation, which every socketmap
/// connection thread then queues on (issue 13); this one is a handful of
/// relaxed atomic adds, read together only when scraped.
#[derive(Debug, Default, Clone)]
pub struct LookupHistogram {
    counts: std::sync::Arc<HistogramCounts>,
}

#[derive(Debug, Default)]
struct HistogramCounts {
    /// Per bucket (not cumulative), the last one above every bound.
    buckets: [std::sync::atomic::AtomicU64; 10],
    sum_ns: std::sync::atomic::AtomicU64,
}

impl LookupHistogram {
    pub fn observe(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = LOOKUP_BUCKETS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LOOKUP_BUCKETS_NS.len());
        self.counts.buckets[i].fetch_add(1, Relaxed);
        self.counts.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Sum (seconds), count and per-bucket counts, the last at +Inf.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut buckets = Vec::with_capacity(self.counts.buckets.len());
        let mut count = 0;
        for (i, b) in self.counts.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            let bound = LOOKUP_BUCKETS_NS
                .get(i)
                .map_or(f64::MAX, |ns| *ns as f64 / 1e9);
            buckets.push((bound, n));
        }
        (
            self.counts.sum_ns.load(Relaxed) as f64 / 1e9,
            count,
            buckets,
        )
    }
}

impl TypedMetric for LookupHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LookupHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
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
        for (mode, result_type) in [
            ("enforce", "starttls-not-supported"),
            ("enforce", "validation-failure"),
            ("enforce", "mx-mismatch"),
            ("testing", "starttls-not-supported"),
            ("dane", "tlsa-invalid"),
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

    /// The text exposition, with the policy gauges brought up to date.
    pub async fn render(&self, resolver: &Resolver) -> String {
        if let Ok(all) = resolver.store().list().await {
            self.policies.clear();
            for mode in ["enforce", "testing", "none"] {
                let _ = self.policies.get_or_create(&ModeLabels {
                    mode: mode.to_string(),
                });
            }
            for p in all {
                self.policies
                    .get_or_create(&ModeLabels {
                        mode: p.policy.mode.to_string(),
                    })
                    .inc();
            }
        }
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

/// Connections the metrics listener serves at once. A Prometheus scrapes one
/// at a time; more are refused at once so that a flood of idle clients costs
/// neither tasks nor the file descriptors the policy face needs.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest wait for a request head, from the connection's first moment.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a whole exchange may take, answer included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// Serves `GET /metrics` and `GET /healthz` until shutdown. Plain HTTP/1.1,
/// one request per connection, bounded head, time and connections: it is
/// meant for a Prometheus on the same host or network, not for the internet.
pub async fn serve(listener: TcpListener, resolver: Resolver, mut shutdown: watch::Receiver<bool>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut warned_full = false;
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if !warned_full {
                tracing::warn!(peer = %peer, limit = MAX_CONNECTIONS, "metrics listener full; refusing new connections until one ends");
                warned_full = true;
            }
            drop(stream);
            continue;
        };
        warned_full = false;
        let resolver = resolver.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &resolver))
                .await
                .is_err()
            {
                tracing::debug!(peer = %peer, "metrics request timed out");
            }
            drop(permit);
        });
    }
}

/// Reads a request head up to its blank line, within [`MAX_HEAD`] bytes and
/// [`HEAD_TIMEOUT`]. `Ok(None)`: the client left, too slow or too long
/// (already answered).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                respond(stream, "408 Request Timeout", "text/plain", "").await?;
                return Ok(None);
            }
        };
        if n == 0 {
            return Ok(None);
        }
        // Only the new bytes (and the three before them) can complete the
        // blank line: no re-scan of the whole head per read.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            respond(
                stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await?;
            return Ok(None);
        }
    }
}

async fn answer(mut stream: TcpStream, resolver: &Resolver) -> std::io::Result<()> {
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/metrics") => {
            let body = metrics().render(resolver).await;
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", "/healthz") => {
            let (status, body) = health(resolver.cached("healthz.invalid").await.map(|_| ()));
            respond(&mut stream, status, "text/plain", body).await
        }
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /metrics or /healthz\n",
            )
            .await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

/// The `/healthz` answer for the outcome of a store read. Whoever can reach
/// the listener learns only up or down: the store error names files and
/// hosts, so it goes to the log.
fn health(store: Result<(), crate::store::StoreError>) -> (&'static str, &'static str) {
    match store {
        Ok(()) => ("200 OK", "ok\n"),
        Err(e) => {
            tracing::error!(error = %e, "health check: the policy store cannot be read");
            (
                "503 Service Unavailable",
                "policy store unavailable (see the log)\n",
            )
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_never_shows_the_store_error() {
        let e = crate::store::StoreError("cannot read /var/lib/secret/policies.redb: I/O".into());
        let (status, body) = health(Err(e));
        assert!(status.starts_with("503"));
        assert!(!body.contains('/') && !body.contains("redb"), "{body}");
        assert_eq!(health(Ok(())), ("200 OK", "ok\n"));
    }
}
