//! The relay as a daemon process: SIGKILL while a client floods it must not
//! lose an acknowledged message, and `mta-sts-agent queue` steers the queue.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mta_sts_agent::smtp::SmtpConn;
use tokio::net::TcpStream;

use crate::daemon::{free_port, run, text, write_file, Daemon};
use crate::harness::{eventually, policy, World};
use crate::relay::{ip, message, relay_toml, submit};
use crate::support::smtp::{SmtpOptions, SmtpServer};

pub(crate) struct Setup {
    pub(crate) world: World,
    pub(crate) mx: SmtpServer,
    pub(crate) relay: SocketAddr,
    pub(crate) config: std::path::PathBuf,
}

pub(crate) async fn setup(domain: &str, last: u8, mx_opts: SmtpOptions, extra: &str) -> Setup {
    let world = World::new().await;
    let mx_host = format!("mx1.{domain}");
    let (mx_port, mut servers) =
        SmtpServer::start_group(&world.ca, vec![(IpAddr::V4(ip(last)), mx_opts)]).await;
    let mx = servers.remove(0);
    world.dns.set_a(&mx_host, &[ip(last)]);
    world.dns.set_mx(domain, &[(10, &mx_host)]);
    world.publish(domain, "c1", &policy("enforce", &[&mx_host], 86_400));
    let relay_port = free_port();
    let text = format!(
        "{}\n[socketmap]\nlisten = [\"127.0.0.1:{}\"]\n{}",
        world.config_toml(),
        free_port(),
        relay_toml(
            mx_port,
            &format!("listen = [\"127.0.0.1:{relay_port}\"]\n{extra}")
        )
    );
    let config = write_file(world.dir.path(), "relay.toml", &text);
    Setup {
        relay: SocketAddr::from(([127, 0, 0, 1], relay_port)),
        world,
        mx,
        config,
    }
}

/// Message-IDs (the `n` of `<crash-n@client.test>`) seen at the MX, with
/// how often each arrived.
pub(crate) fn arrivals(mx: &SmtpServer) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for m in mx.messages() {
        let data = String::from_utf8_lossy(&m.data);
        if let Some(rest) = data.split("Message-ID: <crash-").nth(1) {
            if let Some(n) = rest.split('@').next().and_then(|n| n.parse().ok()) {
                *out.entry(n).or_insert(0) += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    const KILLS: usize = 4;
    const MAX_DELIVERIES: usize = 4;
    let s = setup(
        "crash.test",
        41,
        SmtpOptions::new("mx1.crash.test"),
        &format!("max_deliveries = {MAX_DELIVERIES}"),
    )
    .await;
    let log = s.world.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&s.config, s.relay, log.clone()).await;

    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for client in 0..3u64 {
        let acked = acked.clone();
        let stop = stop.clone();
        let addr = s.relay;
        flooders.push(tokio::spawn(async move {
            let mut n = client;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 3;
                let id = format!("crash-{n}");
                let msg = message(&id, "alice@sender.test", "bob@crash.test", "x\r\n");
                // A refused connection (the daemon is down) or a broken
                // session is just a message that was never acknowledged.
                let attempt = tokio::time::timeout(
                    Duration::from_secs(10),
                    try_submit(addr, "bob@crash.test", &msg),
                )
                .await;
                match attempt {
                    Ok(Some(true)) => {
                        acked.lock().unwrap_or_else(|p| p.into_inner()).insert(n);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(600 + 150 * round as u64)).await;
        daemon.kill9().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        daemon = Daemon::start(&s.config, s.relay, log.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let acked: HashSet<u64> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        acked.len() >= 20,
        "too few messages acknowledged: {}",
        acked.len()
    );

    let all_there = eventually(Duration::from_secs(60), || {
        let seen = arrivals(&s.mx);
        let missing = acked.iter().any(|n| !seen.contains_key(n));
        async move { !missing }
    })
    .await;
    let seen = arrivals(&s.mx);
    let missing: Vec<&u64> = acked.iter().filter(|n| !seen.contains_key(n)).collect();
    assert!(
        all_there,
        "{} acknowledged messages never arrived: {missing:?}; log:\n{}",
        missing.len(),
        daemon.log_text()
    );
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "acknowledged {}, arrived {} distinct, {duplicates} duplicates, {KILLS} kills",
        acked.len(),
        seen.len()
    );
    assert!(
        duplicates <= KILLS * MAX_DELIVERIES,
        "{duplicates} duplicates for {KILLS} kills of at most {MAX_DELIVERIES} deliveries in flight"
    );
    daemon.stop().await;
}

/// One submission; `Some(true)` when the relay said 250 after the data.
pub(crate) async fn try_submit(addr: SocketAddr, rcpt: &str, msg: &str) -> Option<bool> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let mut c = SmtpConn::new(tcp, Duration::from_secs(5));
    if c.read_reply().await.ok()?.code != 220 {
        return Some(false);
    }
    c.ehlo("client.test").await.ok()?;
    c.command("MAIL FROM:<alice@sender.test>").await.ok()?;
    c.command(&format!("RCPT TO:<{rcpt}>")).await.ok()?;
    if c.command("DATA").await.ok()?.code != 354 {
        return Some(false);
    }
    c.write_raw(format!("{msg}.\r\n").as_bytes()).await.ok()?;
    let ok = c.read_reply().await.ok()?.code == 250;
    c.quit().await;
    Some(ok)
}

pub(crate) fn queue_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "queue command failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("queue --json prints JSON")
}

#[tokio::test]
async fn queue_command_lists_flushes_and_deletes() {
    let s = setup(
        "held.test",
        42,
        SmtpOptions::new("mx1.held.test").data_reply("451 4.3.0 come back later"),
        "retry_schedule = [\"1h\"]",
    )
    .await;
    let log = s.world.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&s.config, s.relay, log).await;
    let cfg = s.config.to_str().expect("utf-8 path");
    for id in ["keep", "drop"] {
        let msg = message(id, "alice@sender.test", "bob@held.test", "x\r\n");
        let reply = submit(s.relay, "alice@sender.test", &["bob@held.test"], &msg).await;
        assert_eq!(reply.code, 250, "{reply}");
    }
    // Both messages tried once and their 451 recorded.
    let deferred = |list: &serde_json::Value| {
        list["queue"].as_array().is_some_and(|q| {
            q.len() == 2
                && q.iter().all(|m| {
                    m["recipients"][0]["status"] == "pending"
                        && m["recipients"][0]["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("refused the message"))
                })
        })
    };
    let mut list = serde_json::Value::Null;
    for _ in 0..60 {
        list = queue_json(&run(&["--config", cfg, "queue", "list", "--json"]).await);
        if deferred(&list) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(deferred(&list), "{list:#}");
    let queue = list["queue"].as_array().expect("queue array");
    let mx = &s.mx;
    let plain = run(&["--config", cfg, "queue", "list"]).await;
    assert!(
        text(&plain.stdout).contains("bob@held.test  pending"),
        "{}",
        text(&plain.stdout)
    );
    let ids: Vec<String> = queue
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();

    // The MX recovers; flushing one message delivers it, the other waits
    // for its hour.
    s.mx.set_options(SmtpOptions::new("mx1.held.test"));
    queue_json(&run(&["--config", cfg, "queue", "flush", &ids[0], "--json"]).await);
    assert!(
        eventually(Duration::from_secs(15), || async {
            mx.message_count() == 1
        })
        .await,
        "flushed message not delivered"
    );
    let deleted = run(&["--config", cfg, "queue", "delete", &ids[1]]).await;
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let list = queue_json(&run(&["--config", cfg, "queue", "list", "--json"]).await);
    assert!(list.get("queue").is_none(), "{list:#}");
    // One log line per delivery attempt, with everything an admin greps for.
    let log = daemon.log_text();
    let attempt = log
        .lines()
        .find(|l| l.contains("delivery attempt") && l.contains("result=deferred"))
        .unwrap_or_else(|| panic!("no delivery attempt line in:\n{log}"));
    for field in [
        "queue_id=",
        "domain=held.test",
        "mx=mx1.held.test",
        "addr=127.0.0.42:",
        "tls=TLSv1.3",
        "mode=enforce",
        "reply=451 4.3.0 come back later",
    ] {
        assert!(attempt.contains(field), "{field} missing in {attempt}");
    }
    let unknown = run(&["--config", cfg, "queue", "delete", "ABCDEF"]).await;
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no queued message ABCDEF"));
    daemon.stop().await;

    // Without a daemon the commands act on the spool.
    let offline = run(&["--config", cfg, "queue", "list"]).await;
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    assert!(text(&offline.stderr).contains("acting on the store directly"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.mx.message_count(), 1, "the deleted message was delivered");
}

#[test]
fn relay_password_prints_a_line_the_relay_accepts() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-agent"))
        .args(["--config", "/dev/null", "relay-password", "app"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret\n")
        .expect("write the password");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(line.starts_with("app:pbkdf2-sha256:600000:"), "{line}");
    let users = mta_sts_agent::relay::auth::Users::parse(&line).expect("parses back");
    assert!(users.verify("app", b"s3cret"));
    assert!(!line.contains("s3cret"));
}
