//! What ships in contrib/ and how the daemon starts in production: the
//! systemd units pass `systemd-analyze verify` cleanly, socket activation
//! hands over the listener, and a root start drops to the configured user.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::daemon::{daemon_config, free_port, write_file, Daemon};
use crate::harness::{eventually, policy, World};
use crate::socketmap::lookup;

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-agent");

/// A systemd tool, or None (with a note) outside CI when it is missing.
fn systemd_tool(name: &str) -> Option<String> {
    let path = format!("/usr/bin/{name}");
    if Path::new(&path).exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} not found: apt-get install systemd");
    }
    println!("{name} not found; install systemd to run this test");
    None
}

#[test]
fn systemd_units_verify_cleanly() {
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let service = std::fs::read_to_string(root.join("mta-sts-agent.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/mta-sts-agent serve"));
    // verify checks that ExecStart exists: point it at the binary under test.
    let service = service.replace("/usr/local/bin/mta-sts-agent", BIN);
    std::fs::write(dir.path().join("mta-sts-agent.service"), service).unwrap();
    std::fs::copy(
        root.join("mta-sts-agent.socket"),
        dir.path().join("mta-sts-agent.socket"),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("mta-sts-agent.service"))
        .arg(dir.path().join("mta-sts-agent.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // verify exits 0 on unknown keys and bad values; they only show as warnings.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
    for hardening in [
        "DynamicUser=yes",
        "StateDirectory=mta-sts-agent",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(
            std::fs::read_to_string(root.join("mta-sts-agent.service"))
                .unwrap()
                .contains(hardening),
            "missing {hardening:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_uses_the_passed_listener() {
    let Some(activate) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let w = World::new().await;
    w.publish(
        "activated.test",
        "1",
        &policy("enforce", &["mx.activated.test"], 86400),
    );
    let configured = free_port();
    let passed = free_port();
    let config = write_file(w.dir.path(), "agent.toml", &daemon_config(&w, configured));
    let mut child = tokio::process::Command::new(activate)
        .arg("-l")
        .arg(format!("127.0.0.1:{passed}"))
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate");
    let addr: SocketAddr = format!("127.0.0.1:{passed}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    // The first connection starts the agent, which takes over the socket.
    assert_eq!(
        lookup(addr, "postfix", "activated.test").await,
        "OK secure match=mx.activated.test servername=hostname"
    );
    let configured_addr: SocketAddr = format!("127.0.0.1:{configured}").parse().unwrap();
    assert!(
        tokio::net::TcpStream::connect(configured_addr)
            .await
            .is_err(),
        "socketmap.listen must be ignored under socket activation"
    );
    let _ = child.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_start_drops_to_the_configured_user() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("not root: privilege dropping cannot be tested here");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let w = World::new().await;
    w.publish(
        "dropped.test",
        "1",
        &policy("enforce", &["mx.dropped.test"], 86400),
    );
    // The temp dir is root's 0700 home for the test: let nobody reach the
    // state dir (and read the CA file) inside it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&w.ca_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = format!("user = \"nobody\"\n{}", daemon_config(&w, port));
    let config = write_file(w.dir.path(), "agent.toml", &text);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    assert_eq!(
        lookup(addr, "postfix", "dropped.test").await,
        "OK secure match=mx.dropped.test servername=hostname",
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(log.contains("dropped root privileges"), "{log}");
    use std::os::unix::fs::MetadataExt;
    let store = w.state_dir().join("policies.redb");
    assert_eq!(
        std::fs::metadata(&store).unwrap().uid(),
        nobody.uid.as_raw()
    );
    assert_eq!(
        std::fs::metadata(w.state_dir()).unwrap().uid(),
        nobody.uid.as_raw()
    );
    daemon.stop().await;
}

/// The Debian package's /etc/mta-sts-agent/config.toml is the README's
/// configuration reference (contrib/deb/build cuts it out): it must parse,
/// and change nothing, so that an installed package runs on the defaults.
#[test]
fn the_packaged_config_is_the_readme_reference_at_the_defaults() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split_once("\n## Configuration\n")
        .expect("a Configuration section")
        .1;
    let block = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("a toml block in the Configuration section")
        .0;
    assert!(block.lines().count() > 20, "{block}");
    let parsed = mta_sts_agent::config::Config::parse(block, Path::new("config.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&mta_sts_agent::config::Config::default()).unwrap(),
        "the reference block sets a value other than the default"
    );
    let build =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/deb/build"))
            .unwrap();
    assert!(build.contains("/^## Configuration/") && build.contains("```toml"));
}
