//! Micro-benchmarks of the hot paths: parsing what the network sends us,
//! matching MX hosts, the socketmap framing and reply, and a lookup that
//! hits the cache (the path every Postfix delivery takes once warm).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use mta_sts_agent::config::{Config, MapConfig};
use mta_sts_agent::policy::{discover, parse_policy, parse_record, MxPattern};
use mta_sts_agent::resolver::{Answer, Resolver};
use mta_sts_agent::socketmap::netstring::{decode, encode};
use mta_sts_agent::socketmap::reply::render;
use mta_sts_agent::store::{unix_now, PolicySource, PolicyStore, StoredPolicy};

const SMALL: &str = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: mx2.example.com\nmx: *.backup.example.net\nmax_age: 604800\n";

/// A policy near the 64 KiB limit: many mx lines, as a hostile or sloppy
/// host might serve.
fn large_policy() -> String {
    let mut s = String::from("version: STSv1\nmode: enforce\nmax_age: 604800\n");
    let mut i = 0;
    while s.len() < 64 * 1024 - 64 {
        s.push_str(&format!("mx: mx{i}.example.com\n"));
        i += 1;
    }
    s
}

fn parsing(c: &mut Criterion) {
    c.bench_function("txt/parse_record", |b| {
        b.iter(|| parse_record(black_box("v=STSv1; id=20240101T000000Z; ext=1")))
    });
    let records: Vec<&[u8]> = vec![b"v=spf1 -all", b"v=STSv1; id=20240101T000000Z"];
    c.bench_function("txt/discover_two_records", |b| {
        b.iter(|| discover(black_box(records.iter().copied())))
    });
    let mut g = c.benchmark_group("policy/parse");
    g.throughput(Throughput::Bytes(SMALL.len() as u64));
    g.bench_function("small", |b| {
        b.iter(|| parse_policy(black_box(SMALL.as_bytes())))
    });
    let large = large_policy();
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("64KiB", |b| {
        b.iter(|| parse_policy(black_box(large.as_bytes())))
    });
    g.finish();
}

fn matching(c: &mut Criterion) {
    let exact = MxPattern::parse("mx1.example.com").unwrap();
    let wild = MxPattern::parse("*.example.net").unwrap();
    c.bench_function("mx/match_exact", |b| {
        b.iter(|| exact.matches(black_box("MX1.Example.COM.")))
    });
    c.bench_function("mx/match_wildcard", |b| {
        b.iter(|| wild.matches(black_box("mx7.example.net")))
    });
    c.bench_function("mx/reject_two_labels_deep", |b| {
        b.iter(|| wild.matches(black_box("a.b.example.net")))
    });
}

fn stored(mode: &str) -> Arc<StoredPolicy> {
    let body = SMALL.replace("enforce", mode);
    Arc::new(StoredPolicy {
        domain: "example.com".into(),
        id: "1".into(),
        policy: parse_policy(body.as_bytes()).unwrap().policy,
        body,
        fetched_at: unix_now(),
        source: PolicySource::Fetched,
    })
}

fn socketmap(c: &mut Criterion) {
    let request = encode(b"postfix example.com");
    c.bench_function("netstring/decode", |b| {
        b.iter(|| decode(black_box(&request), 10_000))
    });
    c.bench_function("netstring/encode", |b| {
        b.iter(|| {
            encode(black_box(
                b"OK secure match=mx1.example.com:mx2.example.com servername=hostname",
            ))
        })
    });
    let map = MapConfig::default();
    let enforce = Ok(Answer::Policy(stored("enforce")));
    c.bench_function("reply/render_enforce", |b| {
        b.iter(|| render(black_box(&enforce), &map))
    });
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::default();
    // Nothing answers here: a cache hit must not need the network.
    config.dns.nameservers = vec!["127.0.0.1:9".into()];
    config.dns.timeout = Duration::from_millis(50);
    config.cache.recheck_interval = Duration::from_secs(86_400);
    config.cache.failure_backoff_min = Duration::from_secs(3600);
    config.cache.failure_backoff_max = Duration::from_secs(3600);
    let resolver = rt.block_on(async {
        let store = PolicyStore::memory_only(1000);
        store.put((*stored("enforce")).clone()).await.unwrap();
        let r = Resolver::from_config(&config, store).unwrap();
        // The first hit starts the one background re-check; let it fail
        // and back off so the measured loop is pure cache.
        r.lookup("example.com").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        r
    });
    let map = MapConfig::default();
    c.bench_function("resolver/cache_hit_lookup", |b| {
        b.to_async(&rt).iter(|| async {
            let a = resolver.lookup(black_box("example.com")).await;
            assert!(matches!(a, Ok(Answer::Policy(_))));
            a
        })
    });
    c.bench_function("resolver/cache_hit_lookup_and_reply", |b| {
        b.to_async(&rt).iter(|| async {
            let a = resolver.lookup(black_box("example.com")).await;
            render(&a, &map)
        })
    });
}

criterion_group!(benches, parsing, matching, socketmap, cache_hit);
criterion_main!(benches);
