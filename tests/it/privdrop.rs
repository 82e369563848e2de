//! Start-up as root with `user =`: the state tree is handed to that user
//! without ever following a link the user could have planted (a service
//! compromise must not become root), the whole tree is handed over (a move
//! from root to `user =` must not strand `queue/`), and a spool the user
//! cannot use is a start-up error that says how to fix it.

use std::net::SocketAddr;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::unistd::User;

use crate::daemon::{daemon_config, free_port, write_file, Daemon};
use crate::harness::World;
use crate::relay::{message, submit};

fn nobody() -> Option<User> {
    if !nix::unistd::Uid::effective().is_root() {
        println!("not root: privilege dropping cannot be tested here");
        return None;
    }
    Some(
        User::from_name("nobody")
            .ok()
            .flatten()
            .expect("user nobody"),
    )
}

fn uid(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .uid()
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Lets `nobody` reach the world's state dir and CA file (the temp dir is
/// root's 0700).
fn open_world(w: &World) {
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&w.ca_path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The tree a run as root leaves behind: every level root's, 0700.
fn root_run_tree(state: &Path) {
    for sub in [
        "queue/incoming",
        "queue/messages",
        "queue/state",
        "tlsrpt/counts",
    ] {
        mkdir(&state.join(sub));
    }
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn relay_section(port: u16) -> String {
    format!("\n[relay]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"relay.test\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_start_hands_over_the_whole_tree_and_follows_no_symlink() {
    let Some(nobody) = nobody() else { return };
    let w = World::new().await;
    open_world(&w);
    let state = w.state_dir();
    root_run_tree(&state);
    // Root-owned files outside the state dir, as a compromised service
    // user would aim at them (/etc/shadow and the like).
    let outside = w.dir.path().join("outside");
    mkdir(&outside);
    let top_target = write_file(&outside, "top", "root's\n");
    let deep_target = write_file(&outside, "deep", "root's\n");
    let dir_target = outside.join("dir");
    mkdir(&dir_target);
    let in_dir_target = write_file(&dir_target, "f", "root's\n");
    symlink(&top_target, state.join("policies.redb.evil")).unwrap();
    symlink(&deep_target, state.join("queue/state/0ABC.json")).unwrap();
    symlink(&dir_target, state.join("queue/messages/linked")).unwrap();
    // A hard link could be any file of the system: left alone as well.
    let hard_target = write_file(&outside, "hard", "root's\n");
    std::fs::hard_link(&hard_target, state.join("tlsrpt/counts/2026-01-01.json")).unwrap();

    let port = free_port();
    let relay_port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let relay_addr: SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let text = format!(
        "user = \"nobody\"\n{}{}",
        daemon_config(&w, port),
        relay_section(relay_port)
    );
    let config = write_file(w.dir.path(), "agent.toml", &text);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;

    for target in [
        &top_target,
        &deep_target,
        &dir_target,
        &in_dir_target,
        &hard_target,
    ] {
        assert_eq!(
            uid(target),
            0,
            "{} must still be root's; log:\n{}",
            target.display(),
            daemon.log_text()
        );
    }
    let me = nobody.uid.as_raw();
    for sub in [
        "",
        "queue",
        "queue/incoming",
        "queue/messages",
        "queue/state",
        "tlsrpt",
        "tlsrpt/counts",
    ] {
        assert_eq!(uid(&state.join(sub)), me, "{sub} must be the user's");
    }
    // The relay can spool under the new user: 250, not 451.
    let msg = message("p1", "alice@sender.test", "bob@dest.test", "hi\r\n");
    let reply = submit(relay_addr, "alice@sender.test", &["bob@dest.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply:?}; log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("dropped root privileges"), "{log}");
    assert!(
        log.contains("symlink") && log.contains("0ABC.json"),
        "the planted link is logged: {log}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_is_someone_elses_symlink_is_refused() {
    let Some(nobody) = nobody() else { return };
    let w = World::new().await;
    open_world(&w);
    let outside = w.dir.path().join("outside");
    mkdir(&outside);
    let target = write_file(&outside, "f", "root's\n");
    // The user's own link standing where the state dir should be.
    symlink(&outside, w.state_dir()).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &w.state_dir(),
        Some(nobody.uid),
        Some(nobody.gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let port = free_port();
    let text = format!("user = \"nobody\"\n{}", daemon_config(&w, port));
    let config = write_file(w.dir.path(), "agent.toml", &text);
    let out = crate::daemon::run(&["--config", config.to_str().unwrap(), "serve"]).await;
    let err = crate::daemon::text(&out.stderr);
    assert!(!out.status.success(), "must refuse to start: {err}");
    assert!(
        err.contains(&w.state_dir().display().to_string()) && err.contains("symlink"),
        "{err}"
    );
    assert_eq!(uid(&target), 0);
    assert_eq!(uid(&outside), 0);

    // The administrator's own (root's) link is followed.
    let real = w.dir.path().join("real-state");
    mkdir(&real);
    std::fs::remove_file(w.state_dir()).unwrap();
    symlink(&real, w.state_dir()).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    assert_eq!(uid(&real), nobody.uid.as_raw(), "{}", daemon.log_text());
    assert!(real.join("policies.redb").exists());
    assert_eq!(uid(&target), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_the_user_cannot_write_is_a_start_up_error_with_the_fix() {
    let Some(nobody) = nobody() else { return };
    let w = World::new().await;
    open_world(&w);
    let state = w.state_dir();
    root_run_tree(&state);
    // An earlier run as root queued a message; the service now starts
    // as the user directly (systemd `User=`), with the top of the tree
    // already the user's but the queue's directories still root's.
    write_file(&state.join("queue/messages"), "0ABCDEF", "queued\n");
    for p in [state.clone(), state.join("queue")] {
        std::os::unix::fs::chown(&p, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    }
    let port = free_port();
    let text = format!("{}{}", daemon_config(&w, port), relay_section(free_port()));
    let config = write_file(w.dir.path(), "agent.toml", &text);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-agent"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the daemon must not run on with a spool it cannot use")
        .expect("output");
    let err = crate::daemon::text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let queue = state.join("queue");
    assert!(err.contains(&queue.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("chown -R nobody: {}", state.display())),
        "{err}"
    );
}
