//! N warm socketmap lookups through one connection, in one thread, for
//! instruction counts (issue 13): `valgrind --tool=callgrind` on two runs
//! with different N gives the cost of one lookup as the difference over the
//! difference in N, stable on a noisy machine where wall time is not.
//!
//!     cargo build --release --example warm_lookup
//!     valgrind --tool=callgrind target/release/examples/warm_lookup 1000
//!     valgrind --tool=callgrind target/release/examples/warm_lookup 11000
//!
//! The lookup is the one every Postfix delivery makes once warm: a cached
//! enforce policy, its DANE status known (here: unknown, kept), the map's
//! defaults, netstring in and out, metrics and tracing as in the daemon.
//! Nothing answers on the configured name server, so no lookup can reach
//! the network unnoticed: a background re-check fails and backs off.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mta_sts_agent::config::Config;
use mta_sts_agent::policy::parse_policy;
use mta_sts_agent::resolver::Resolver;
use mta_sts_agent::socketmap::connection::{self, Handler};
use mta_sts_agent::store::{unix_now, PolicySource, PolicyStore, StoredPolicy};

const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: mx2.example.com\nmx: *.backup.example.net\nmax_age: 604800\n";

fn main() -> Result<(), String> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|e| format!("N: {e}"))?,
        None => 10_000,
    };
    // As the daemon logs by default: debug lines are filtered, not written.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| "crypto provider already installed")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(n))
}

async fn run(n: usize) -> Result<(), String> {
    let mut config = Config::default();
    config.dns.nameservers = vec!["127.0.0.1:9".into()];
    config.dns.timeout = Duration::from_millis(50);
    config.dns.attempts = 1;
    config.cache.recheck_interval = Duration::from_secs(86_400);
    config.cache.failure_backoff_min = Duration::from_secs(3600);
    config.cache.failure_backoff_max = Duration::from_secs(3600);
    config.cache.mx_min_ttl = Duration::from_secs(3600);
    let store = PolicyStore::memory_only(1000);
    let policy = parse_policy(POLICY.as_bytes())
        .map_err(|e| e.to_string())?
        .policy;
    store
        .put(StoredPolicy {
            domain: "example.com".into(),
            id: "1".into(),
            policy,
            body: POLICY.into(),
            fetched_at: unix_now(),
            source: PolicySource::Fetched,
        })
        .await
        .map_err(|e| e.to_string())?;
    let resolver = Resolver::from_config(&config, store)?;
    // As the daemon does at start: the map's counters exist before lookups.
    for map in config.socketmap.maps.keys() {
        mta_sts_agent::metrics::metrics().init_map(map);
    }
    let handler = Arc::new(Handler {
        resolver,
        maps: config.socketmap.maps.clone(),
        idle_timeout: Duration::from_secs(3600),
    });
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(async move {
        connection::run(server, handler, Duration::from_secs(3600), "bench", stop).await
    });
    let request = b"19:postfix example.com,";
    let mut reply = vec![0u8; 4096];
    // Warm up: the first lookups start the background re-check and DANE
    // lookup, which fail against the silent name server and are kept.
    ask(&mut client, request, &mut reply).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = ask(&mut client, request, &mut reply).await?;
    let first = String::from_utf8_lossy(&reply[..first]).into_owned();
    for _ in 0..n {
        ask(&mut client, request, &mut reply).await?;
    }
    drop(client);
    let _ = serving.await;
    eprintln!("{n} lookups, each answered: {first}");
    Ok(())
}

/// One request and its whole reply (a netstring) on the connection; the
/// reply's length in `reply`.
async fn ask(
    client: &mut tokio::io::DuplexStream,
    request: &[u8],
    reply: &mut [u8],
) -> Result<usize, String> {
    client.write_all(request).await.map_err(|e| e.to_string())?;
    let mut got = 0;
    loop {
        let n = client
            .read(&mut reply[got..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        got += n;
        if reply[..got].ends_with(b",") {
            if let Some(colon) = reply[..got].iter().position(|b| *b == b':') {
                let len: usize = std::str::from_utf8(&reply[..colon])
                    .map_err(|e| e.to_string())?
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?;
                if got == colon + 1 + len + 1 {
                    return Ok(got);
                }
            }
        }
        if got == reply.len() {
            return Err("reply too long".into());
        }
    }
}
