//! `https_proxy` is honoured for policy fetches (many sending sites may only
//! reach the web through a proxy). The variable is set on a child process
//! (`mta-sts-agent query`), never on the test process, whose environment all
//! tests share.

use crate::harness::{policy, World};
use crate::support::proxy::ConnectProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_fetch_goes_through_https_proxy() {
    let w = World::new().await;
    w.publish(
        "proxied.test",
        "1",
        &policy("enforce", &["mx.proxied.test"], 86400),
    );
    // The proxy knows nothing of the fixture DNS: it tunnels to the policy hosts.
    let proxy = ConnectProxy::start(w.hosts.addr).await;
    let config = w.dir.path().join("agent.toml");
    // About the proxy, not the reply style the machine's Postfix would get.
    let text = format!(
        "{}\n[socketmap]\n{}\n",
        w.config_toml(),
        crate::daemon::AS_CONFIGURED
    );
    std::fs::write(&config, text).expect("write config");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-agent"))
        .arg("--config")
        .arg(&config)
        .args(["query", "proxied.test"])
        .env("https_proxy", format!("http://{}", proxy.addr))
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .expect("run mta-sts-agent query");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        stdout.trim_end(),
        "OK secure match=mx.proxied.test servername=hostname",
        "stderr: {stderr}"
    );
    let port = w.hosts.addr.port();
    assert_eq!(
        proxy.targets(),
        vec![format!("mta-sts.proxied.test:{port}")]
    );
    assert_eq!(w.fetches("proxied.test"), 1);
}
