//! Steering the agent: per-domain overrides from config, and
//! `mta-sts-agent policy show|refresh|purge|list` against a running daemon
//! (control socket) and without one (directly on the store).

use std::net::SocketAddr;

use mta_sts_agent::policy::Mode;
use mta_sts_agent::resolver::Answer;
use mta_sts_agent::store::PolicySource;

use crate::daemon::{daemon_config, free_port, run, text, write_file, Daemon};
use crate::harness::{policy, World};
use crate::socketmap::{config_listening, lookup, Server};
use crate::support::dns::RecordType;

const OVERRIDES: &str = r#"
[overrides."tolerated.test"]
mode = "none"
reason = "their MX certificate expired; tolerated until fixed, ticket 4711"

[overrides."pinned.test"]
mode = "enforce"
mx = ["mx1.pinned.test", "*.backup.pinned.test"]
reason = "pinned after a downgrade attack"
"#;

fn world_config_with_overrides(w: &World) -> mta_sts_agent::config::Config {
    let text = format!("{}{OVERRIDES}", w.config_toml());
    mta_sts_agent::config::Config::parse(&text, std::path::Path::new("test.toml")).expect("config")
}

#[tokio::test]
async fn overrides_replace_what_the_domain_publishes() {
    let w = World::new().await;
    w.publish(
        "tolerated.test",
        "1",
        &policy("enforce", &["mx.tolerated.test"], 86400),
    );
    let r = w.resolver_with(&world_config_with_overrides(&w));

    let Answer::Policy(p) = r.lookup("Tolerated.test.").await.unwrap() else {
        panic!("an override is a policy");
    };
    assert_eq!(p.policy.mode, Mode::None);
    assert!(
        matches!(&p.source, PolicySource::Override { reason } if reason.contains("ticket 4711"))
    );
    // Overridden domains cause no discovery at all.
    assert_eq!(w.dns.queries("_mta-sts.tolerated.test", RecordType::TXT), 0);
    assert_eq!(w.fetches("tolerated.test"), 0);

    let Answer::Policy(p) = r.lookup("pinned.test").await.unwrap() else {
        panic!("pinned domain without a published policy still has one");
    };
    assert_eq!(p.policy.mode, Mode::Enforce);
    assert!(p.policy.allows_mx("b1.backup.pinned.test"));
    assert!(!p.policy.allows_mx("mx2.pinned.test"));
}

#[tokio::test]
async fn overrides_reach_postfix_through_the_socketmap() {
    let w = World::new().await;
    w.publish(
        "tolerated.test",
        "1",
        &policy("enforce", &["mx.tolerated.test"], 86400),
    );
    let mut config = world_config_with_overrides(&w);
    config.socketmap = config_listening(&w, &["127.0.0.1:0"]).socketmap;
    let server = Server::start(&w, config).await;
    assert_eq!(
        lookup(server.addr(), "postfix", "tolerated.test").await,
        "NOTFOUND "
    );
    assert_eq!(
        lookup(server.addr(), "postfix", "pinned.test").await,
        "OK secure match=mx1.pinned.test:.backup.pinned.test servername=hostname"
    );
}

#[tokio::test]
async fn query_command_applies_overrides_and_logs_the_reason() {
    let w = World::new().await;
    let config = write_file(
        w.dir.path(),
        "agent.toml",
        &format!(
            "{}{OVERRIDES}\n[socketmap]\n{}\n",
            w.config_toml(),
            crate::daemon::AS_CONFIGURED
        ),
    );
    let out = run(&["--config", config.to_str().unwrap(), "query", "pinned.test"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim_end(),
        "OK secure match=mx1.pinned.test:.backup.pinned.test servername=hostname"
    );
    assert!(
        text(&out.stderr).contains("pinned after a downgrade attack"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn invalid_override_is_a_config_error() {
    let w = World::new().await;
    let config = write_file(
        w.dir.path(),
        "agent.toml",
        "[overrides.\"x.test\"]\nmode = \"enforce\"\nreason = \"no mx given\"\n",
    );
    let out = run(&["--config", config.to_str().unwrap(), "query", "x.test"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("overrides.\"x.test\".mx"),
        "{}",
        text(&out.stderr)
    );
}

async fn policy_cmd(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap(), "policy"];
    all.extend_from_slice(args);
    let out = run(&all).await;
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_commands_steer_the_running_daemon() {
    let w = World::new().await;
    w.publish(
        "steer.test",
        "1",
        &policy("enforce", &["mx1.steer.test"], 86400),
    );
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_file(w.dir.path(), "agent.toml", &daemon_config(&w, port));
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;

    assert!(lookup(addr, "postfix", "steer.test")
        .await
        .starts_with("OK secure match=mx1.steer.test"));

    let (ok, out, err) = policy_cmd(&config, &["show", "steer.test"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("steer.test  mode=enforce id=1 mx=mx1.steer.test"),
        "{out}"
    );
    assert!(
        out.contains("    mode: enforce"),
        "the policy text is shown: {out}"
    );
    assert!(
        !err.contains("acting on the store directly"),
        "went through the daemon: {err}"
    );

    let (ok, out, _) = policy_cmd(&config, &["list"]).await;
    assert!(ok);
    assert!(out.contains("steer.test  mode=enforce"), "{out}");

    // A new policy is published; the daemon would notice within
    // recheck_interval (1 h here). An operator forces it now.
    w.publish(
        "steer.test",
        "2",
        &policy("enforce", &["mx2.steer.test"], 86400),
    );
    let (ok, out, err) = policy_cmd(&config, &["refresh", "steer.test"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("id=2"), "{out}");
    assert_eq!(
        lookup(addr, "postfix", "steer.test").await,
        "OK secure match=mx2.steer.test servername=hostname",
        "the daemon answers with the refreshed policy"
    );

    let (ok, out, _) = policy_cmd(&config, &["--json", "show", "steer.test"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["policies"][0]["id"], "2");
    assert_eq!(v["policies"][0]["mode"], "enforce");

    let (ok, out, _) = policy_cmd(&config, &["purge", "steer.test"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = policy_cmd(&config, &["show", "steer.test"]).await;
    assert!(ok);
    assert!(out.contains("no cached policy for steer.test"), "{out}");
    assert!(
        daemon.log_text().contains("policy purged by administrator"),
        "{}",
        daemon.log_text()
    );
    daemon.stop().await;

    // Without a daemon the commands act on the store directly.
    assert!(lookup_fails(addr).await, "the daemon is gone");
    let (ok, out, err) = policy_cmd(&config, &["refresh", "steer.test"]).await;
    assert!(ok, "{err}");
    assert!(err.contains("acting on the store directly"), "{err}");
    assert!(out.contains("id=2"), "{out}");
    let (ok, out, _) = policy_cmd(&config, &["list"]).await;
    assert!(ok);
    assert!(out.contains("steer.test  mode=enforce id=2"), "{out}");
}

async fn lookup_fails(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn control_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new().await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_file(w.dir.path(), "agent.toml", &daemon_config(&w, port));
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    let sock = w.state_dir().join("control.sock");
    let mode = std::fs::metadata(&sock)
        .expect("control socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(w.state_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "state dir is private: {:o}", dir_mode);
    daemon.stop().await;
    assert!(!sock.exists(), "the control socket is removed on exit");
}

/// `GET path` over plain HTTP/1.1; returns (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_string(&mut raw),
    )
    .await
    .expect("metrics answered in time")
    .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of one sample line, e.g. `mta_sts_lookups_total{answer="secure",map="postfix"}`.
fn sample(body: &str, name_and_labels: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_lookups() {
    let w = World::new().await;
    w.publish(
        "counted.test",
        "1",
        &policy("enforce", &["mx.counted.test"], 86400),
    );
    w.publish(
        "trial.test",
        "1",
        &policy("testing", &["mx.trial.test"], 86400),
    );
    let port = free_port();
    let mport = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let text_cfg = format!(
        "{}\n[metrics]\nlisten = \"{maddr}\"\n",
        daemon_config(&w, port)
    );
    let config = write_file(w.dir.path(), "agent.toml", &text_cfg);
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;

    let (status, body) = http_get(maddr, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");

    assert!(lookup(addr, "postfix", "counted.test")
        .await
        .starts_with("OK secure"));
    assert_eq!(lookup(addr, "postfix", "trial.test").await, "NOTFOUND ");
    assert_eq!(lookup(addr, "postfix", "nopolicy.test").await, "NOTFOUND ");
    let (status, before) = http_get(maddr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let secure = r#"mta_sts_lookups_total{map="postfix",answer="secure"}"#;
    let notfound = r#"mta_sts_lookups_total{map="postfix",answer="notfound"}"#;
    assert_eq!(sample(&before, secure), 1.0, "{before}");
    assert_eq!(sample(&before, notfound), 2.0, "{before}");
    assert_eq!(
        sample(
            &before,
            r#"mta_sts_fetches_total{outcome="ok",reason="none"}"#
        ),
        2.0,
        "{before}"
    );
    assert_eq!(
        sample(&before, r#"mta_sts_discoveries_total{result="no-record"}"#),
        1.0,
        "{before}"
    );
    assert_eq!(
        sample(&before, r#"mta_sts_policies{mode="enforce"}"#),
        1.0,
        "{before}"
    );
    assert_eq!(
        sample(&before, r#"mta_sts_policies{mode="testing"}"#),
        1.0,
        "{before}"
    );
    assert_eq!(
        sample(&before, "mta_sts_lookup_duration_seconds_count"),
        3.0,
        "{before}"
    );

    // A cached lookup moves the lookup counter and the memory-tier hits.
    assert!(lookup(addr, "postfix", "counted.test")
        .await
        .starts_with("OK secure"));
    let (_, after) = http_get(maddr, "/metrics").await;
    assert_eq!(sample(&after, secure), 2.0, "{after}");
    let hits = r#"mta_sts_cache_hits_total{tier="memory"}"#;
    assert!(sample(&after, hits) > sample(&before, hits), "{after}");
    assert_eq!(
        sample(
            &after,
            r#"mta_sts_fetches_total{outcome="ok",reason="none"}"#
        ),
        2.0
    );

    let (status, _) = http_get(maddr, "/nope").await;
    assert!(status.contains("404"), "{status}");
    daemon.stop().await;
}

/// Every metric the Grafana dashboard queries is one the daemon exports.
#[tokio::test]
async fn grafana_dashboard_uses_exported_metrics() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/mta-sts-agent.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
            .expect("valid JSON");
    // A freshly started daemon, before any lookup: every series the
    // dashboard needs is already there.
    let w = World::new().await;
    let port = free_port();
    let maddr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text_cfg = format!(
        "{}\n[metrics]\nlisten = \"{maddr}\"\n",
        daemon_config(&w, port)
    );
    let config = write_file(w.dir.path(), "agent.toml", &text_cfg);
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    let (_, exposition) = http_get(maddr, "/metrics").await;
    daemon.stop().await;
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("mta_sts_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    exposition.contains(&format!("# TYPE {base} "))
                        && exposition.contains(&format!("\n{name}")),
                    "dashboard panel {:?} queries {name}, which is not exported:\n{exposition}",
                    panel["title"]
                );
                checked += 1;
                rest = &rest[i + name.len()..];
            }
        }
    }
    assert!(checked >= 8, "only {checked} metric references found");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let w = World::new().await;
    w.publish(
        "jsonlog.test",
        "1",
        &policy("enforce", &["mx.jsonlog.test"], 86400),
    );
    let config = write_file(w.dir.path(), "agent.toml", &w.config_toml());
    let out = run(&[
        "--log-format",
        "json",
        "--config",
        config.to_str().unwrap(),
        "query",
        "jsonlog.test",
    ])
    .await;
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    let mut fetched = false;
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "policy fetched" {
            assert_eq!(v["fields"]["domain"], "jsonlog.test");
            assert_eq!(v["level"], "INFO");
            fetched = true;
        }
    }
    assert!(fetched, "no JSON 'policy fetched' line in:\n{stderr}");
}
