//! A lock-free histogram for the socketmap's lookup times.

use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

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
