//! A test "world": fixture DNS, HTTPS policy hosts and a CA, plus the agent
//! configuration that points at them exactly as an admin's config would.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use mta_sts_agent::config::Config;
use mta_sts_agent::resolver::{Answer, Resolver};
use mta_sts_agent::store::PolicyStore;

use crate::support::ca::TestCa;
use crate::support::dns::DnsServer;
use crate::support::https::{Behavior, PolicyHosts};

pub struct World {
    pub dns: DnsServer,
    pub ca: TestCa,
    pub hosts: PolicyHosts,
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
}

pub fn policy(mode: &str, mx: &[&str], max_age: u32) -> String {
    let mut body = format!("version: STSv1\nmode: {mode}\n");
    for m in mx {
        body.push_str(&format!("mx: {m}\n"));
    }
    body.push_str(&format!("max_age: {max_age}\n"));
    body
}

impl World {
    pub async fn new() -> World {
        crate::support::install_crypto();
        let dns = DnsServer::start().await;
        let ca = TestCa::new();
        let hosts = PolicyHosts::start(&ca).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = ca.write_pem(dir.path());
        World {
            dns,
            ca,
            hosts,
            dir,
            ca_path,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Agent configuration as TOML, with short timeouts for tests. `extra` is
    /// appended (later keys in the same table must not repeat these).
    pub fn config_toml(&self) -> String {
        format!(
            r#"state_dir = "{state}"

[dns]
nameservers = ["{dns}"]
timeout = "1s"
attempts = 1

[fetch]
port = {port}
timeout = "2s"
ca_file = "{ca}"
ca_file_only = true

[cache]
first_lookup_deadline = "4s"
recheck_interval = "1h"
negative_ttl = "1h"
failure_backoff_min = "1h"
failure_backoff_max = "2h"
"#,
            state = self.state_dir().display(),
            dns = self.dns.addr,
            port = self.hosts.addr.port(),
            ca = self.ca_path.display(),
        )
    }

    pub fn config(&self) -> Config {
        Config::parse(&self.config_toml(), std::path::Path::new("test.toml")).expect("test config")
    }

    /// A resolver over a persistent store in the world's state dir.
    pub fn resolver_with(&self, config: &Config) -> Resolver {
        let store = PolicyStore::open(&config.state_dir(), config.cache.memory_entries)
            .expect("open store");
        Resolver::from_config(config, store).expect("resolver")
    }

    pub fn resolver(&self) -> Resolver {
        self.resolver_with(&self.config())
    }

    /// Publishes a complete MTA-STS set-up for `domain`: TXT record, policy
    /// host address and policy document.
    pub fn publish(&self, domain: &str, id: &str, body: &str) {
        self.dns.set_txt(
            &format!("_mta-sts.{domain}"),
            &[&[&format!("v=STSv1; id={id}")]],
        );
        self.dns
            .set_a(&format!("mta-sts.{domain}"), &[Ipv4Addr::LOCALHOST]);
        self.hosts.set(
            &format!("mta-sts.{domain}"),
            Behavior::Policy(body.to_string()),
        );
    }

    pub fn set_id(&self, domain: &str, id: &str) {
        self.dns.set_txt(
            &format!("_mta-sts.{domain}"),
            &[&[&format!("v=STSv1; id={id}")]],
        );
    }

    pub fn fetches(&self, domain: &str) -> usize {
        self.hosts.requests(&format!("mta-sts.{domain}"))
    }
}

/// The policy of an answer, or a panic naming what came instead.
pub fn expect_policy(answer: &Answer) -> &mta_sts_agent::store::StoredPolicy {
    match answer {
        Answer::Policy(p) => p,
        Answer::NoPolicy(why) => panic!("expected a policy, got: {why}"),
    }
}

pub fn expect_no_policy(answer: &Answer) -> &mta_sts_agent::resolver::NoPolicy {
    match answer {
        Answer::NoPolicy(why) => why,
        Answer::Policy(p) => panic!(
            "expected no policy, got {} policy id {}",
            p.policy.mode, p.id
        ),
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes. For waiting on
/// background work whose end the test cannot observe directly.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
