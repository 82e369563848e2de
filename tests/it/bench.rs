//! The load generator counts correctly: what it reports is what the real
//! daemon saw, errors are errors, and open loop never offers more than asked.

use std::net::SocketAddr;
use std::time::Duration;

// The measuring tools are the mta-sts-bench binary's own modules, not
// library API: the test compiles the same files.
// The one-line summary only the binary prints is unused here.
#[allow(dead_code)]
#[path = "../../src/bin/mta-sts-bench/loadgen.rs"]
mod loadgen;
#[path = "../../src/bin/mta-sts-bench/null_server.rs"]
mod null_server;

use crate::daemon::{daemon_config, free_port, write_file, Daemon};
use crate::harness::{policy, World};
use crate::socketmap::lookup;

fn opts(target: SocketAddr, domains: &[&str]) -> loadgen::LoadOptions {
    loadgen::LoadOptions {
        target,
        map: "postfix".into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        connections: 4,
        duration: None,
        requests: None,
        rate: None,
        timeout: Duration::from_secs(5),
        pid: None,
    }
}

async fn run(o: loadgen::LoadOptions) -> loadgen::Report {
    tokio::task::spawn_blocking(move || loadgen::run(o))
        .await
        .unwrap()
        .expect("load run")
}

/// `name{labels} value` from a Prometheus exposition.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_the_daemon_saw() {
    let w = World::new().await;
    w.publish(
        "load1.test",
        "1",
        &policy("enforce", &["mx.load1.test"], 86400),
    );
    w.publish(
        "load2.test",
        "1",
        &policy("testing", &["mx.load2.test"], 86400),
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        "{}\n[metrics]\nlisten = \"{maddr}\"\n",
        daemon_config(&w, port)
    );
    let config = write_file(w.dir.path(), "agent.toml", &cfg);
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    // Warm both domains so the run is pure cache.
    assert!(lookup(addr, "postfix", "load1.test")
        .await
        .starts_with("OK"));
    assert_eq!(lookup(addr, "postfix", "load2.test").await, "NOTFOUND ");

    let mut o = opts(addr, &["load1.test", "load2.test"]);
    o.requests = Some(1000);
    o.pid = daemon_pid(&daemon);
    let report = run(o).await;
    assert_eq!(report.lookups, 1000);
    assert_eq!(report.errors, 0);
    let ok = *report.replies.get("OK").unwrap_or(&0);
    let notfound = *report.replies.get("NOTFOUND").unwrap_or(&0);
    assert_eq!(ok + notfound, 1000, "{:?}", report.replies);
    assert!(
        ok >= 400 && notfound >= 400,
        "both domains are used: {:?}",
        report.replies
    );
    assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
    assert!(report.rss_kib.is_some_and(|r| r > 0), "{report:?}");

    let m = scrape(maddr).await;
    let secure = r#"mta_sts_lookups_total{map="postfix",answer="secure"}"#;
    let notfound_series = r#"mta_sts_lookups_total{map="postfix",answer="notfound"}"#;
    // Exactly what the generator counted, plus the two warm-up lookups.
    assert_eq!(sample(&m, secure), ok as f64 + 1.0, "{m}");
    assert_eq!(sample(&m, notfound_series), notfound as f64 + 1.0, "{m}");
    daemon.stop().await;
}

fn daemon_pid(d: &Daemon) -> Option<u32> {
    d.pid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_not_hidden() {
    // Nothing listens on this port.
    let target: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut o = opts(target, &["a.test"]);
    o.requests = Some(5);
    o.connections = 1;
    let report = run(o).await;
    assert_eq!(report.lookups, 0);
    assert_eq!(report.errors, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_server_and_open_loop_pacing() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let server = tokio::spawn(null_server::serve(l));

    let mut o = opts(target, &["a.test"]);
    o.duration = Some(Duration::from_millis(300));
    let closed = run(o).await;
    assert!(closed.lookups > 0);
    assert_eq!(closed.errors, 0);
    assert_eq!(closed.replies.len(), 1, "{:?}", closed.replies);
    assert_eq!(closed.replies.get("OK"), Some(&closed.lookups));

    // Open loop offers at most rate x the time it ran (plus one per
    // connection): the run ends a little after its nominal second on a
    // loaded machine, and the bound follows the measured time.
    let mut o = opts(target, &["a.test"]);
    o.duration = Some(Duration::from_secs(1));
    o.rate = Some(400.0);
    o.connections = 2;
    let open = run(o).await;
    let offered = (400.0 * open.seconds.max(1.0)).ceil() as u64 + 2;
    assert!(open.lookups >= 1 && open.lookups <= offered, "{open:?}");
    assert_eq!(open.errors, 0);
    server.abort();
}
