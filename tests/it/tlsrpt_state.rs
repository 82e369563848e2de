//! Issue 12 item 6: TLS-RPT report state is bounded and can never stop the
//! daemon. A broken report state file (garbage, truncated, oversize) is set
//! aside with a log line while the socketmap answers and the relay accepts
//! mail; the state keeps under `relay.tlsrpt.max_reports` however many
//! domains there are, and a new report writes its own file only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mta_sts_agent::config::Config;
use mta_sts_agent::policy::PolicyType;
use mta_sts_agent::relay::tlsrpt::record::{day_name, Session};
use mta_sts_agent::relay::tlsrpt::state::MAX_REPORT_FILE;
use mta_sts_agent::relay::tlsrpt::Tlsrpt;
use mta_sts_agent::relay::Relay;

use crate::daemon::{daemon_config, free_port, write_file, Daemon};
use crate::harness::{policy, World};
use crate::relay::{message, submit};
use crate::socketmap::lookup;
use crate::support::post_sink::PostSink;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_report_state_is_set_aside_and_the_daemon_serves() {
    let day = mta_sts_agent::store::unix_now() / 86_400;
    let truncated =
        format!("[{{\"day\":{day},\"domain\":\"a.test\",\"report_id\":\"x\",\"gz\":\"H4sI");
    let mut oversize = String::from("[");
    oversize.push_str(&" ".repeat(17 * 1024 * 1024));
    oversize.push(']');
    let cases: [(&str, &str, String); 4] = [
        (
            "garbage",
            "reports.json",
            "\u{0}\u{1}not json at all".to_string(),
        ),
        ("truncated", "reports.json", truncated.clone()),
        ("oversize", "reports.json", oversize),
        (
            "truncated per-report file",
            &format!("reports/{}/a.test.json", day_name(day)),
            truncated,
        ),
    ];
    for (what, name, bytes) in cases {
        let w = World::new().await;
        w.publish(
            "state.test",
            "1",
            &policy("enforce", &["mx.state.test"], 86_400),
        );
        let file = w.state_dir().join("tlsrpt").join(name);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, bytes.as_bytes()).expect("write the broken state");

        let port = free_port();
        let relay_port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let relay_addr: SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
        let text = format!(
            "{}\n[relay]\nlisten = [\"127.0.0.1:{relay_port}\"]\nhostname = \"relay.test\"\n",
            daemon_config(&w, port)
        );
        let config = write_file(w.dir.path(), "agent.toml", &text);
        let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
        assert_eq!(
            lookup(addr, "postfix", "state.test").await,
            "OK secure match=mx.state.test servername=hostname",
            "{what}: {}",
            daemon.log_text()
        );
        let msg = message("t", "alice@sender.test", "bob@dest.test", "hi\r\n");
        let reply = submit(relay_addr, "alice@sender.test", &["bob@dest.test"], &msg).await;
        assert_eq!(reply.code, 250, "{what}: {reply:?}; {}", daemon.log_text());
        let log = daemon.log_text();
        assert!(
            !file.exists(),
            "{what}: {} must be set aside",
            file.display()
        );
        let aside: Vec<PathBuf> = files(&w.state_dir().join("tlsrpt"))
            .into_iter()
            .filter(|p| {
                let s = p.display().to_string();
                s.contains("broken") || s.contains("/corrupt/")
            })
            .collect();
        assert_eq!(aside.len(), 1, "{what}: {aside:?}");
        assert!(
            log.contains("set aside") && log.contains(&file.display().to_string()),
            "{what}: {log}"
        );
        daemon.stop().await;
    }
}

fn session(domain: &str) -> Session<'_> {
    Session {
        policy_type: PolicyType::Sts,
        policy_domain: domain,
        policy_string: &[],
        mx_host: &[],
        result_type: None,
        sending_mta_ip: None,
        receiving_mx_hostname: Some("mx.cap.test"),
        receiving_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_state_stays_under_its_cap_with_many_domains() {
    let world = World::new().await;
    let sink = PostSink::start(&world.ca, &["collector.cap.test"]).await;
    world
        .dns
        .set_a("collector.cap.test", &[Ipv4Addr::LOCALHOST]);
    let url = format!("https://collector.cap.test:{}/r", sink.addr.port());
    let record = format!("v=TLSRPTv1; rua={url}");
    let domains: Vec<String> = (0..10).map(|i| format!("d{i}.cap.test")).collect();
    for d in &domains {
        world.dns.set_txt(&format!("_smtp._tls.{d}"), &[&[&record]]);
    }
    let text = format!(
        "{}\n[relay]\nhostname = \"relay.test\"\n[relay.tlsrpt]\nallow_private_destinations = true\nmax_reports = 4\n",
        world.config_toml()
    );
    let cfg = Config::parse(&text, Path::new("cap.toml")).expect("config");
    let store = mta_sts_agent::store::PolicyStore::memory_only(100);
    let resolver = mta_sts_agent::resolver::Resolver::from_config(&cfg, store).expect("resolver");
    let relay = Relay::open(&cfg, resolver).await.expect("relay");
    let tlsrpt = relay.tlsrpt.clone();
    let reports_dir = tlsrpt.dir().join("reports");
    let day = mta_sts_agent::store::unix_now() / 86_400;

    // Ten domains, the collector down: only four reports can be kept.
    for d in &domains {
        tlsrpt.record(day, &session(d));
    }
    sink.set_status(503);
    let run = tlsrpt.run_reports(day + 1, &relay.queue).await;
    assert_eq!(
        (run.generated, run.expired, run.failed),
        (4, 6, 4),
        "{run:?}"
    );
    let on_disk = files(&reports_dir);
    assert_eq!(on_disk.len(), 4, "{on_disk:?}");
    for f in &on_disk {
        assert!(std::fs::metadata(f).unwrap().len() <= MAX_REPORT_FILE);
    }

    // Delivered, they stay (done) and make room for the next day's.
    sink.set_status(200);
    let run = tlsrpt.run_reports(day + 1, &relay.queue).await;
    assert_eq!(run.posted, 4, "{run:?}");
    let inodes: Vec<(PathBuf, u64)> = files(&reports_dir)
        .into_iter()
        .map(|p| {
            let ino = std::fs::metadata(&p).unwrap().ino();
            (p, ino)
        })
        .collect();
    for d in &domains[..3] {
        tlsrpt.record(day + 1, &session(d));
    }
    let run = tlsrpt.run_reports(day + 2, &relay.queue).await;
    assert_eq!((run.generated, run.posted), (3, 3), "{run:?}");
    let after = files(&reports_dir);
    assert_eq!(after.len(), 4, "{after:?}");
    // The one report of the first day still kept was not rewritten.
    let kept: Vec<&(PathBuf, u64)> = inodes.iter().filter(|(p, _)| p.exists()).collect();
    assert_eq!(kept.len(), 1, "{inodes:?} / {after:?}");
    assert_eq!(std::fs::metadata(&kept[0].0).unwrap().ino(), kept[0].1);
    assert_eq!(sink.requests().len(), 4 + 4 + 3);

    // A restart sees the same bounded state and sends nothing again.
    let dns = mta_sts_agent::dns::Dns::from_config(&cfg).expect("dns");
    let reopened = Tlsrpt::open(&cfg, "relay.test", &dns).expect("reopen");
    let states = reopened.report_states().await;
    assert_eq!(states.len(), 4);
    assert!(states.iter().all(|s| s.done && s.gz.is_empty()));
    let run = reopened.run_reports(day + 2, &relay.queue).await;
    assert_eq!(run, Default::default());
}
