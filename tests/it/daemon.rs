//! The real `mta-sts-agent` binary: `serve` as a child process (restarts,
//! signals, crash safety of the store), `query`, `config` and config errors.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use mta_sts_agent::config::Config;

use crate::harness::{self, World};
use crate::socketmap::{lookup, ENFORCE_REPLY};
use crate::support::dns::{Fault, RecordType};

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-agent");

/// sysexits.h EX_CONFIG.
const EX_CONFIG: i32 = 78;

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The world's config with the socketmap on `127.0.0.1:port`.
/// These tests are about the daemon, not the reply style it picks from the
/// machine's Postfix (tests/it/postfix_style.rs): maps answer as configured.
pub(crate) const AS_CONFIGURED: &str = "postfix_version = \"as-configured\"";

pub(crate) fn daemon_config(world: &World, port: u16) -> String {
    format!(
        "{}\n[socketmap]\nlisten = [\"127.0.0.1:{port}\"]\n{AS_CONFIGURED}\n",
        world.config_toml()
    )
}

/// A `serve` child process, killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `mta-sts-agent --config CONFIG serve` (stdout and stderr to
    /// `log`) and waits until `addr` accepts connections.
    pub(crate) async fn start(config: &Path, addr: SocketAddr, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).expect("create the daemon log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mta-sts-agent serve");
        let mut daemon = Daemon { child, log };
        let child = &mut daemon.child;
        let ready = harness::eventually(Duration::from_secs(10), || {
            let exited = child.try_wait().ok().flatten().is_some();
            async move { exited || TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!(
                "the daemon exited ({status}) before listening on {addr}; log:\n{}",
                daemon.log_text()
            );
        }
        assert!(
            ready,
            "the daemon is not listening on {addr} after 10 s; log:\n{}",
            daemon.log_text()
        );
        daemon
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (a name for kill(1), e.g. `TERM`) to the daemon.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the daemon is running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the daemon"),
            Err(_) => panic!(
                "the daemon still runs {limit:?} after being told to stop; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// SIGTERM, then expect a clean exit 0 within a few seconds.
    pub(crate) async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "exit status after SIGTERM: {status}; log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs the binary to completion (at most 20 s).
pub(crate) async fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mta-sts-agent");
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("mta-sts-agent {args:?} did not finish in 20 s"))
        .expect("collect the output")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

/// Fetches an enforce policy through a first daemon, stops it, takes the
/// policy host down and makes discovery fail, and expects a second daemon on
/// the same state dir to still answer with the policy.
async fn policy_survives_restart(stop: Stop) {
    let world = World::new().await;
    world.publish(
        "enforce.test",
        "1",
        &harness::policy("enforce", &["mx1.enforce.test", "*.mx.enforce.test"], 86400),
    );
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write_file(world.dir.path(), "agent.toml", &daemon_config(&world, port));

    let mut first = Daemon::start(&config, addr, world.dir.path().join("run1.log")).await;
    assert_eq!(
        lookup(addr, "postfix", "enforce.test").await,
        ENFORCE_REPLY,
        "log:\n{}",
        first.log_text()
    );
    assert_eq!(world.fetches("enforce.test"), 1);
    match stop {
        Stop::Term => first.stop().await,
        Stop::Kill => {
            first.signal("KILL");
            let status = first.wait_exit(Duration::from_secs(5)).await;
            assert_eq!(status.signal(), Some(9), "{status}");
        }
    }
    drop(first);

    world.hosts.remove("mta-sts.enforce.test");
    world
        .dns
        .set_fault("_mta-sts.enforce.test", Some(Fault::ServFail));
    world.dns.reset_queries();

    let mut second = Daemon::start(&config, addr, world.dir.path().join("run2.log")).await;
    assert_eq!(
        lookup(addr, "postfix", "enforce.test").await,
        ENFORCE_REPLY,
        "after {stop:?} and restart; log:\n{}",
        second.log_text()
    );
    // The lookup started a background re-check; it fails (SERVFAIL) and the
    // cached policy stays.
    assert!(
        harness::eventually(Duration::from_secs(5), || async {
            world.dns.queries("_mta-sts.enforce.test", RecordType::TXT) > 0
        })
        .await,
        "the restarted daemon re-checks the TXT record"
    );
    assert!(
        harness::eventually(Duration::from_secs(5), || async {
            second
                .log_text()
                .contains("refresh failed; keeping cached policy")
        })
        .await,
        "log:\n{}",
        second.log_text()
    );
    assert_eq!(
        lookup(addr, "postfix", "enforce.test").await,
        ENFORCE_REPLY,
        "still enforced after the failed re-check"
    );
    assert_eq!(
        world.fetches("enforce.test"),
        1,
        "the policy host got no new request"
    );
    for rtype in [RecordType::A, RecordType::AAAA] {
        assert_eq!(
            world.dns.queries("mta-sts.enforce.test", rtype),
            0,
            "no fetch was attempted ({rtype})"
        );
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_survives_sigterm_restart_while_host_is_down() {
    policy_survives_restart(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_survives_sigkill_restart_while_host_is_down() {
    policy_survives_restart(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_prints_what_the_daemon_answers() {
    let world = World::new().await;
    world.publish(
        "enforce.test",
        "1",
        &harness::policy("enforce", &["mx1.enforce.test", "*.mx.enforce.test"], 86400),
    );
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write_file(world.dir.path(), "agent.toml", &daemon_config(&world, port));
    let config_arg = config.to_str().unwrap();

    // No daemon is running.
    let out = run(&["--config", config_arg, "query", "enforce.test"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{ENFORCE_REPLY}\n"));
    assert!(
        text(&out.stderr).contains("mode enforce"),
        "stderr explains the policy: {}",
        text(&out.stderr)
    );
    assert_eq!(world.fetches("enforce.test"), 1);

    let out = run(&["--config", config_arg, "query", "nothing.test"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "NOTFOUND \n");

    let out = run(&[
        "--config",
        config_arg,
        "query",
        "--map",
        "nomap",
        "enforce.test",
    ])
    .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no map named 'nomap'"),
        "{}",
        text(&out.stderr)
    );

    // The daemon gives the same answer, from the policy `query` stored.
    let mut daemon = Daemon::start(&config, addr, world.dir.path().join("serve.log")).await;
    assert_eq!(lookup(addr, "postfix", "enforce.test").await, ENFORCE_REPLY);
    assert_eq!(lookup(addr, "postfix", "nothing.test").await, "NOTFOUND ");
    assert_eq!(world.fetches("enforce.test"), 1, "served from the store");

    // With the daemon holding the store, `query` still answers (from a
    // temporary in-memory cache).
    let out = run(&["--config", config_arg, "query", "enforce.test"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{ENFORCE_REPLY}\n"));
    daemon.stop().await;
}

#[tokio::test]
async fn bad_config_exits_78_with_a_useful_message() {
    let dir = tempfile::tempdir().unwrap();

    let typo = write_file(
        dir.path(),
        "typo.toml",
        "[cache]\nrecheck_intervall = \"1h\"\n",
    );
    for command in [&["serve"][..], &["query", "example.test"], &["config"]] {
        let mut args = vec!["--config", typo.to_str().unwrap()];
        args.extend_from_slice(command);
        let out = run(&args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{command:?}: {stderr}");
        assert!(
            stderr.contains(&typo.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(stderr.contains("line 2"), "names the line: {stderr}");
        assert!(
            stderr.contains("recheck_intervall"),
            "names the key: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{command:?}: nothing on stdout");
    }

    let listen = write_file(
        dir.path(),
        "listen.toml",
        "[socketmap]\nlisten = [\"localhost:8461\"]\n",
    );
    let out = run(&["--config", listen.to_str().unwrap(), "serve"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains("socketmap.listen"), "{stderr}");
    assert!(stderr.contains("localhost:8461"), "{stderr}");

    let missing = dir.path().join("missing.toml");
    let out = run(&["--config", missing.to_str().unwrap(), "serve"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_defaults_answers_non_domains() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write_file(
        dir.path(),
        "minimal.toml",
        &format!(
            "state_dir = \"{}\"\n[socketmap]\nlisten = [\"127.0.0.1:{port}\"]\n",
            dir.path().join("state").display()
        ),
    );
    let mut daemon = Daemon::start(&config, addr, dir.path().join("serve.log")).await;
    for key in ["[192.0.2.1]", "[192.0.2.1]:25", "localhost"] {
        assert_eq!(
            lookup(addr, "postfix", key).await,
            "NOTFOUND ",
            "key {key}; log:\n{}",
            daemon.log_text()
        );
    }
    daemon.stop().await;
    assert!(
        dir.path().join("state").is_dir(),
        "the state dir was created"
    );
}

#[tokio::test]
async fn config_prints_toml_that_parses_back() {
    let world = World::new().await;
    let empty = write_file(world.dir.path(), "empty.toml", "");
    let out = run(&["--config", empty.to_str().unwrap(), "config"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("listen = [\"127.0.0.1:8461\"]"),
        "{printed}"
    );
    let parsed = Config::parse(&printed, Path::new("printed.toml"))
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&Config::default()).unwrap(),
        "an empty file prints the defaults"
    );

    // A config with every section set survives the round trip unchanged.
    let full_text = format!(
        "{}\n[socketmap]\nlisten = [\"[::1]:8461\", \"unix:/run/sm.sock\"]\nunix_mode = \"0660\"\nidle_timeout = \"10s\"\n[socketmap.maps.strict]\ntesting_as_enforce = true\nservername = false\n",
        world.config_toml()
    );
    let full = write_file(world.dir.path(), "full.toml", &full_text);
    let out = run(&["--config", full.to_str().unwrap(), "config"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let parsed = Config::parse(&printed, Path::new("printed.toml"))
        .unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
    let original = Config::parse(&full_text, Path::new("full.toml")).unwrap();
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&original).unwrap(),
        "{printed}"
    );
}
