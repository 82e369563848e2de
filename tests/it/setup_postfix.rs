//! `mta-sts-agent setup postfix` against every Postfix the machine has
//! (3.7 from the system, 3.10 and 3.11 from Debian roots), each starting
//! from that version's stock Debian main.cf in a config directory of its
//! own: the dry run changes nothing, `--apply` changes main.cf after one
//! backup, a second `--apply` finds nothing to do, and the result is a
//! Postfix that enforces the agent's answers with real mail (the fixtures of
//! `postfix_e2e`: a `*.deep.test` policy whose preferred MX is two labels
//! deep). Then the refusals: a policy table the tool did not write, and a
//! version it cannot read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mta_sts_agent::config::SocketmapConfig;
use mta_sts_agent::socketmap::postfix_version;

use crate::postfix_e2e::{
    assert_rfc_exact, available, deliver_to_deep_with, instance_settings, postfix_services_for,
    run, AGENT_PORT,
};
use crate::support::postfix::Postfix;

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-agent");

/// Makes `$3` (the test's directory) visible at the same path inside root
/// `$1`, in a mount namespace of its own, then runs the rest outside the
/// root: the agent's binary, whose Postfix tools run through
/// `--wrap "chroot ROOT"`.
const SHOW_IN_ROOT: &str = r#"set -e
root=$1 dir=$2; shift 2
case "$dir" in /tmp/*) mount -t tmpfs -o size=1m,mode=1777 tmpfs "$root/tmp" ;; esac
mkdir -p "$root$dir"
mount --bind "$dir" "$root$dir"
mount -t proc proc "$root/proc"
exec "$@""#;

/// That version's main.cf as Debian ships it.
fn stock_main_cf(pf: &Postfix) -> PathBuf {
    match &pf.root {
        Some(root) => root.join("etc/postfix/main.cf"),
        None => PathBuf::from("/usr/share/postfix/main.cf.debian"),
    }
}

/// A config directory for `pf` in `dir`: the stock main.cf, then what makes
/// it a test instance (own queue, log, listener; the test CA), written with
/// that Postfix's own `postconf -e`.
fn stock_instance(pf: &Postfix, dir: &Path, visible: &Path, ca: &Path) {
    std::fs::copy(stock_main_cf(pf), dir.join("main.cf")).unwrap();
    postfix_services_for(pf, dir);
    let mut settings: Vec<String> = instance_settings(dir).lines().map(String::from).collect();
    settings.push(format!("smtp_tls_CAfile = {}", ca.display()));
    settings.push("smtp_tls_loglevel = 1".into());
    run(pf
        .command("postconf", visible, None, None)
        .arg("-c")
        .arg(dir)
        .arg("-e")
        .args(&settings));
}

/// `mta-sts-agent setup postfix --postfix-config DIR ARGS…` for `pf`, in
/// network namespace `netns` (where the agent listens) if given.
fn setup(pf: &Postfix, visible: &Path, dir: &Path, netns: Option<&str>, args: &[&str]) -> Output {
    let agent_config = visible.join("agent.toml");
    if !agent_config.exists() {
        // The defaults: the listener and map the quick start uses.
        std::fs::write(&agent_config, "").unwrap();
    }
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            c
        }
        None => Command::new("env"),
    };
    if let Some(root) = &pf.root {
        cmd.args(["unshare", "-m", "--propagation", "private"])
            .args(["sh", "-c", SHOW_IN_ROOT, "sh"])
            .arg(root)
            .arg(visible);
    }
    cmd.arg(BIN)
        .arg("--config")
        .arg(&agent_config)
        .args(["setup", "postfix", "--postfix-config"])
        .arg(dir);
    if let Some(root) = &pf.root {
        cmd.arg("--wrap").arg(format!("chroot {}", root.display()));
    }
    cmd.args(args);
    cmd.output().expect("run mta-sts-agent setup postfix")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn backups(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("main.cf.mta-sts-agent-"))
        .collect();
    names.sort();
    names
}

/// The whole admin's path on each version: dry run, `--apply`, `--apply`
/// again, then real mail that only the policy's one-label MX gets, over
/// TLS.
#[test]
fn setup_postfix_apply_makes_every_stock_debian_postfix_enforce() {
    if !available() {
        return;
    }
    for pf in crate::support::postfix::all() {
        let postconf = match &pf.root {
            Some(root) => vec![
                "chroot".to_string(),
                root.display().to_string(),
                "/usr/sbin/postconf".to_string(),
            ],
            None => vec!["/usr/sbin/postconf".to_string()],
        };
        // The agent as `serve` runs it with the default configuration.
        let socketmap = SocketmapConfig {
            postconf_command: postconf,
            ..SocketmapConfig::default()
        };
        let map =
            postfix_version::resolve(&socketmap).expect("resolve the maps")["postfix"].clone();
        let table = format!("socketmap:inet:127.0.0.1:{AGENT_PORT}:postfix");
        let seen = deliver_to_deep_with(&pf, "postfix", map, None, &|dir, visible, ca, ns| {
            stock_instance(&pf, dir, visible, ca);
            let stock = std::fs::read(dir.join("main.cf")).unwrap();

            let dry = setup(&pf, visible, dir, Some(ns), &[]);
            let t = text(&dry);
            assert!(dry.status.success(), "{pf}: dry run: {t}");
            assert!(t.contains("would change"), "{pf}: {t}");
            assert!(
                t.contains(&format!("smtp_tls_policy_maps = {table}")),
                "{pf}: {t}"
            );
            assert!(t.contains("dry run: nothing changed"), "{pf}: {t}");
            assert_eq!(
                std::fs::read(dir.join("main.cf")).unwrap(),
                stock,
                "{pf}: the dry run changed main.cf"
            );
            assert!(backups(dir).is_empty(), "{pf}: the dry run made a backup");

            let apply = setup(
                &pf,
                visible,
                dir,
                Some(ns),
                &["--apply", "--verify-domain", "deep.test"],
            );
            let t = text(&apply);
            assert!(apply.status.success(), "{pf}: --apply: {t}");
            assert!(t.contains("applied"), "{pf}: {t}");
            // The running agent answered Postfix's own client for the
            // enforce domain.
            assert!(t.contains("verified: postmap -q deep.test"), "{pf}: {t}");
            assert!(t.contains("secure match=mx1.deep.test"), "{pf}: {t}");
            let made = backups(dir);
            assert_eq!(made.len(), 1, "{pf}: backups {made:?}");
            assert_eq!(
                std::fs::read(dir.join(&made[0])).unwrap(),
                stock,
                "{pf}: the backup is not the old main.cf"
            );
            let applied = std::fs::read(dir.join("main.cf")).unwrap();

            let again = setup(
                &pf,
                visible,
                dir,
                Some(ns),
                &["--apply", "--verify-domain", "deep.test"],
            );
            let t = text(&again);
            assert!(again.status.success(), "{pf}: second --apply: {t}");
            assert!(t.contains("nothing to change"), "{pf}: {t}");
            assert_eq!(backups(dir), made, "{pf}: the second run made a backup");
            assert_eq!(
                std::fs::read(dir.join("main.cf")).unwrap(),
                applied,
                "{pf}: the second run changed main.cf"
            );
        });
        assert_rfc_exact(&pf, &seen);
        assert_eq!(
            seen.good_tls, 1,
            "{pf}: delivered without TLS; log:\n{}",
            seen.log
        );
        if pf.at_least((3, 10, 5)) {
            assert_eq!(
                seen.deep_connections, 0,
                "{pf}: Postfix connected to the MX outside the policy; log:\n{}",
                seen.log
            );
        }
    }
}

/// An `smtp_tls_policy_maps` the tool did not write is never overwritten:
/// it says why and prints the combined value to set instead.
#[test]
fn setup_postfix_refuses_a_policy_table_it_did_not_write() {
    if !available() {
        return;
    }
    for pf in crate::support::postfix::all() {
        let tmp = tempfile::tempdir().unwrap();
        let visible = tmp.path();
        let dir = visible.join("postfix");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = visible.join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        stock_instance(&pf, &dir, visible, &ca);
        run(pf
            .command("postconf", visible, None, None)
            .arg("-c")
            .arg(&dir)
            .args(["-e", "smtp_tls_policy_maps = hash:/etc/postfix/tls_policy"]));
        let before = std::fs::read(dir.join("main.cf")).unwrap();
        let out = setup(&pf, visible, &dir, None, &["--apply"]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{pf}: {t}");
        assert!(t.contains("which this tool did not write"), "{pf}: {t}");
        assert!(
            t.contains("postconf -e 'smtp_tls_policy_maps = hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix'"),
            "{pf}: {t}"
        );
        assert_eq!(
            std::fs::read(dir.join("main.cf")).unwrap(),
            before,
            "{pf}: main.cf changed"
        );
        assert!(backups(&dir).is_empty(), "{pf}");
    }
}

/// A `postconf` whose version cannot be read (here: the system Postfix
/// behind a wrapper that garbles `mail_version`) is refused, untouched.
#[test]
fn setup_postfix_refuses_a_version_it_cannot_read() {
    if !available() {
        return;
    }
    let pf = crate::support::postfix::all()
        .into_iter()
        .find(|p| p.root.is_none())
        .expect("the system Postfix");
    let tmp = tempfile::tempdir().unwrap();
    let visible = tmp.path();
    let dir = visible.join("postfix");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = visible.join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    stock_instance(&pf, &dir, visible, &ca);
    let wrapper = visible.join("garble");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$*\" in *'-dh mail_version'*) echo 'Postfix three point seven'; exit 0 ;; esac\nexec \"$@\"\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&wrapper));
    let before = std::fs::read(dir.join("main.cf")).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg("/dev/null")
        .args(["setup", "postfix", "--apply", "--postfix-config"])
        .arg(&dir)
        .arg("--wrap")
        .arg(&wrapper)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("cannot read this Postfix's version"), "{t}");
    assert!(t.contains("Postfix three point seven"), "{t}");
    assert_eq!(std::fs::read(dir.join("main.cf")).unwrap(), before);
    assert!(backups(&dir).is_empty());
}
