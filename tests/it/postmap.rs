//! Postfix's own socketmap client (`postmap -q`) against our server: proves
//! the wire format and reply syntax are what Postfix's `dict_sockmap` reads.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use mta_sts_agent::config::MapConfig;

use crate::harness::World;
use crate::socketmap::{config_listening, publish_standard, Server};

const INSTALL_HINT: &str = "postmap not found; install Postfix: echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix";

const ENFORCE_VALUE: &str = "secure match=mx1.enforce.test:.mx.enforce.test servername=hostname";

/// `/usr/sbin/postmap`, else `postmap` on PATH. Without it: a panic under CI,
/// else a note and `None` (the test returns early).
fn postmap() -> Option<PathBuf> {
    let fixed = Path::new("/usr/sbin/postmap");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("postmap"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("postmap not found: apt-get install postfix");
        }
        println!("{INSTALL_HINT}");
    }
    found
}

/// A Postfix config dir of our own for `postmap -c`. main.cf is back-dated:
/// Postfix waits ~1.5 s when main.cf is younger than a second.
fn postfix_dir(world: &World) -> PathBuf {
    let dir = world.dir.path().join("postfix");
    std::fs::create_dir_all(&dir).expect("create the postfix config dir");
    let main_cf = dir.join("main.cf");
    std::fs::write(
        &main_cf,
        "compatibility_level = 3.6\nmyhostname = client.test\nmydomain = test\n",
    )
    .expect("write main.cf");
    std::fs::File::options()
        .write(true)
        .open(&main_cf)
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(3600)))
        .expect("back-date main.cf");
    dir
}

/// A running server with the `postfix` map and a `noname` map
/// (servername = false), plus the Postfix side.
struct Setup {
    world: World,
    _server: Server,
    postmap: PathBuf,
    conf: PathBuf,
    port: u16,
}

impl Setup {
    async fn new() -> Option<Setup> {
        let postmap = postmap()?;
        let world = World::new().await;
        publish_standard(&world);
        let mut config = config_listening(&world, &["127.0.0.1:0"]);
        config.socketmap.maps.insert(
            "noname".to_string(),
            MapConfig {
                testing_as_enforce: false,
                servername: false,
                match_current_mx: false,
            },
        );
        let server = Server::start(&world, config).await;
        let port = server.addr().port();
        let conf = postfix_dir(&world);
        Some(Setup {
            world,
            _server: server,
            postmap,
            conf,
            port,
        })
    }

    fn table(&self, map: &str) -> String {
        format!("socketmap:inet:127.0.0.1:{}:{map}", self.port)
    }

    /// `postmap -c DIR -q KEY socketmap:inet:127.0.0.1:PORT:MAP`; with `key`
    /// `-`, the keys are read from `stdin`, one a line.
    async fn query(&self, key: &str, map: &str, stdin: &str) -> Output {
        let mut child = Command::new(&self.postmap)
            .arg("-c")
            .arg(&self.conf)
            .arg("-q")
            .arg(key)
            .arg(self.table(map))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postmap");
        let mut input = child.stdin.take().expect("postmap stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("feed postmap");
        drop(input);
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("postmap -q {key} did not finish in 20 s"))
            .expect("collect postmap output")
    }

    /// Expects `key` to be found with exactly `value`.
    async fn expect_found(&self, key: &str, map: &str, value: &str) {
        let out = self.query(key, map, "").await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(0),
            "postmap -q {key} ({map}): {stdout}{stderr}"
        );
        assert_eq!(stdout, format!("{value}\n"), "postmap -q {key} ({map})");
        assert_eq!(stderr, "", "postmap -q {key} ({map}) warned");
    }

    /// Expects `key` to be not found: exit 1, no output, no warning (a
    /// protocol error would be a warning and a fatal on stderr).
    async fn expect_not_found(&self, key: &str, map: &str) {
        let out = self.query(key, map, "").await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(1),
            "postmap -q {key} ({map}): {stdout}{stderr}"
        );
        assert_eq!(stdout, "", "postmap -q {key} ({map})");
        assert_eq!(stderr, "", "postmap -q {key} ({map}) warned");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_reads_secure_match_for_enforce() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup
        .expect_found("enforce.test", "postfix", ENFORCE_VALUE)
        .await;
    // Case does not matter.
    setup
        .expect_found("Enforce.TEST", "postfix", ENFORCE_VALUE)
        .await;
    assert_eq!(setup.world.fetches("enforce.test"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_finds_nothing_without_an_enforced_policy() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup.expect_not_found("testing.test", "postfix").await;
    setup.expect_not_found("none.test", "postfix").await;
    setup.expect_not_found("nothing.test", "postfix").await;
    setup.expect_not_found("[192.0.2.1]:25", "postfix").await;
    assert_eq!(
        setup.world.fetches("testing.test"),
        1,
        "the testing policy was fetched, just not enforced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_map_without_servername() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup
        .expect_found(
            "enforce.test",
            "noname",
            "secure match=mx1.enforce.test:.mx.enforce.test",
        )
        .await;
    setup.expect_not_found("testing.test", "noname").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_keys_from_stdin_and_unknown_map() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    // `-q -` reads keys from stdin and prints `key<TAB>value` for each found.
    let out = setup
        .query(
            "-",
            "postfix",
            "testing.test\nenforce.test\n[192.0.2.1]\nnothing.test\nenforce.test\n",
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("enforce.test\t{ENFORCE_VALUE}\nenforce.test\t{ENFORCE_VALUE}\n")
    );
    assert_eq!(text(&out.stderr), "");

    // A PERM reply reaches Postfix as a table error with our reason.
    let out = setup.query("enforce.test", "nomap", "").await;
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("permanent error") && stderr.contains("unknown map 'nomap'"),
        "{stderr}"
    );
}
