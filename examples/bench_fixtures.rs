//! Fixture DNS and HTTPS policy hosts for `contrib/bench/compare.sh`: the
//! same fixtures as the integration tests, bound to real ports (53, 443)
//! inside the benchmark's network namespace, so that both daemons under test
//! find them through their ordinary system configuration.
//!
//! Domains: `d0.bench.test` … (`--domains`), `r0.bench.test` … (`--extra`,
//! for memory measurements) and `herd.bench.test`, each with an enforce
//! policy. Writes the test CA to `--ca-out` and, every 200 ms, the HTTPS
//! request counts to `--stats` as `total <n>` / `herd <n>` lines, and the
//! DNS queries received as `dns <n>` / `dns_dnssec <n>` (those with the DO
//! bit, i.e. DANE lookups).
//!
//! With `--relay-certs DIR` (for `contrib/bench/relay.sh`) it also publishes
//! two destinations: `sink.test` (MX `mx.sink.test`, 127.0.0.2, no policy)
//! and `tls.test` (MX `mx.tls.test`, 127.0.0.3, an enforce policy for that
//! host), and writes a certificate for `mx.tls.test` from the test CA to
//! `DIR/mx.tls.test.crt` and `.key`.

#[allow(unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use support::ca::TestCa;
use support::dns::DnsServer;
use support::https::{Behavior, PolicyHosts};

struct Args {
    dns: SocketAddr,
    https: SocketAddr,
    domains: usize,
    extra: usize,
    ca_out: PathBuf,
    stats: PathBuf,
    relay_certs: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        dns: "127.0.0.1:53".parse().map_err(|e| format!("{e}"))?,
        https: "127.0.0.1:443".parse().map_err(|e| format!("{e}"))?,
        domains: 1000,
        extra: 0,
        ca_out: PathBuf::from("ca.pem"),
        stats: PathBuf::from("fixture-stats"),
        relay_certs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--dns" => a.dns = value.parse().map_err(|e| bad(&e))?,
            "--https" => a.https = value.parse().map_err(|e| bad(&e))?,
            "--domains" => a.domains = value.parse().map_err(|e| bad(&e))?,
            "--extra" => a.extra = value.parse().map_err(|e| bad(&e))?,
            "--ca-out" => a.ca_out = PathBuf::from(value),
            "--stats" => a.stats = PathBuf::from(value),
            "--relay-certs" => a.relay_certs = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_fixtures: {e}");
            std::process::exit(2);
        }
    };
    support::install_crypto();
    let ca = TestCa::new();
    std::fs::write(&a.ca_out, ca.cert_pem()).expect("write the CA file");
    let dns = DnsServer::start_on(a.dns).await;
    let hosts = PolicyHosts::start_on(&ca, a.https).await;
    let names = (0..a.domains)
        .map(|i| format!("d{i}.bench.test"))
        .chain((0..a.extra).map(|i| format!("r{i}.bench.test")))
        .chain(std::iter::once("herd.bench.test".to_string()));
    let mut n = 0;
    for domain in names {
        dns.set_txt(&format!("_mta-sts.{domain}"), &[&["v=STSv1; id=1"]]);
        dns.set_a(&format!("mta-sts.{domain}"), &[Ipv4Addr::LOCALHOST]);
        // An MX the policy admits: with match_current_mx (on for a local
        // Postfix 3.7) a domain without one is answered TEMP, not measured.
        dns.set_mx(&domain, &[(10, &format!("mx.{domain}"))]);
        let policy = format!("version: STSv1\nmode: enforce\nmx: *.{domain}\nmax_age: 86400\n");
        hosts.set_lazy(&format!("mta-sts.{domain}"), Behavior::Policy(policy));
        n += 1;
    }
    if let Some(dir) = &a.relay_certs {
        dns.set_mx("sink.test", &[(10, "mx.sink.test")]);
        dns.set_a("mx.sink.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
        dns.set_mx("tls.test", &[(10, "mx.tls.test")]);
        dns.set_a("mx.tls.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
        dns.set_txt("_mta-sts.tls.test", &[&["v=STSv1; id=1"]]);
        dns.set_a("mta-sts.tls.test", &[Ipv4Addr::LOCALHOST]);
        let policy = "version: STSv1\nmode: enforce\nmx: mx.tls.test\nmax_age: 86400\n";
        hosts.set("mta-sts.tls.test", Behavior::Policy(policy.to_string()));
        ca.issue(&["mx.tls.test"]).write_pem(dir, "mx.tls.test");
    }
    eprintln!(
        "bench_fixtures: {n} domains; DNS on {}, HTTPS on {}",
        a.dns, a.https
    );
    loop {
        let (queries, dnssec) = dns.total_queries();
        let stats = format!(
            "total {}\nherd {}\ndns {queries}\ndns_dnssec {dnssec}\n",
            hosts.total_requests(),
            hosts.requests("mta-sts.herd.bench.test")
        );
        let tmp = a.stats.with_extension("tmp");
        if std::fs::write(&tmp, stats).is_ok() {
            let _ = std::fs::rename(&tmp, &a.stats);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
