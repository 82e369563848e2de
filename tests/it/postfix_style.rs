//! The daemon (the real binary, default maps) picks its reply style from the
//! version of the Postfix it serves, read with `postconf -dh mail_version`:
//! for each Postfix the machine has, and for none at all.

use std::net::SocketAddr;

use crate::daemon::{free_port, write_file, Daemon};
use crate::harness::{policy, World};
use crate::socketmap::lookup;
use crate::support::postfix::Postfix;

/// The reply for `enforce.test` of a daemon whose `auto` detection runs
/// `postconf`, and its log.
async fn reply_with_postconf(postconf: &[String]) -> (String, String) {
    let world = World::new().await;
    world.publish(
        "enforce.test",
        "1",
        &policy("enforce", &["mx1.enforce.test", "*.mx.enforce.test"], 86400),
    );
    world.dns.set_mx(
        "enforce.test",
        &[(10, "a.b.mx.enforce.test"), (20, "mx1.enforce.test")],
    );
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let command: Vec<String> = postconf.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "{}\n[socketmap]\nlisten = [\"127.0.0.1:{port}\"]\npostconf_command = [{}]\n",
        world.config_toml(),
        command.join(", ")
    );
    let config = write_file(world.dir.path(), "agent.toml", &text);
    let mut daemon = Daemon::start(&config, addr, world.dir.path().join("serve.log")).await;
    let reply = lookup(addr, "postfix", "enforce.test").await;
    let log = daemon.log_text();
    daemon.stop().await;
    (reply, log)
}

fn postconf_of(pf: &Postfix) -> Vec<String> {
    match &pf.root {
        Some(root) => vec![
            "chroot".into(),
            root.display().to_string(),
            "/usr/sbin/postconf".into(),
        ],
        None => vec!["/usr/sbin/postconf".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_answers_each_postfix_version_in_a_style_it_enforces() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: chroot needs root");
        return;
    }
    for pf in crate::support::postfix::all() {
        let (reply, log) = reply_with_postconf(&postconf_of(&pf)).await;
        assert!(
            log.contains(&format!("postfix={}", pf.version)),
            "{pf}: the style choice is not logged: {log}"
        );
        if pf.at_least((3, 10, 5)) {
            // Postfix itself holds the MX hosts to these patterns, and the
            // deep one is not in match= either.
            assert!(
                reply.starts_with(
                    "OK secure match=mx1.enforce.test servername=hostname \
                     policy_type=sts policy_domain=enforce.test \
                     mx_host_pattern=mx1.enforce.test mx_host_pattern=*.mx.enforce.test "
                ),
                "{pf}: {reply}"
            );
        } else {
            // The deep MX host is left out of match= (RFC 8461 §4.1).
            assert_eq!(
                reply, "OK secure match=mx1.enforce.test servername=hostname",
                "{pf}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_without_a_readable_postfix_version_uses_the_style_every_version_accepts() {
    let (reply, log) = reply_with_postconf(&["/nonexistent/postconf".to_string()]).await;
    assert_eq!(
        reply,
        "OK secure match=mx1.enforce.test servername=hostname"
    );
    assert!(
        log.contains("cannot read the local Postfix version")
            && log.contains("socketmap reply style"),
        "{log}"
    );
    // Even a Postfix 3.7 parses it: no TLSRPT attribute.
    assert!(!reply.contains("policy_"), "{reply}");
}
