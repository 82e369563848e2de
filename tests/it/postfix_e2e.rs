//! A real Postfix relaying to fixture MX hosts, asking our socketmap for its
//! TLS policy: every version the machine has (Debian 12's 3.7 from the
//! system, 3.10 and 3.11 from Debian roots, see `support::postfix`). Everything runs in a private network
//! namespace: Postfix resolves MX records through /etc/resolv.conf (which
//! `ip netns exec` points at the fixture DNS on 127.0.0.1:53) and delivers on
//! port 25 to fixture MX servers on their own 127.0.0.x addresses.
//!
//! The flaw being tested: Postfix reads `match=.deep.test` as "any depth",
//! so under a `*.deep.test` policy it would deliver to `a.b.deep.test`.
//! With `match_current_mx` it must refuse that MX and deliver to the
//! one-label match instead; with the STS attributes (Postfix >= 3.10.5) it
//! must not even connect to it; and with the defaults, on every version,
//! the deep MX never gets the mail.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mta_sts_agent::config::{Config, MapConfig, SocketmapConfig};
use mta_sts_agent::socketmap::postfix_version;

use crate::support::ca::TestCa;
use crate::support::dns::DnsServer;
use crate::support::https::{Behavior, PolicyHosts};
use crate::support::postfix::Postfix;
use crate::support::smtp::{SmtpOptions, SmtpServer};

/// Postfix and namespaces need root and Postfix's binaries; CI has both.
pub(crate) fn available() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let postfix = Path::new("/usr/sbin/postfix").exists();
    if root && postfix {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root and Postfix (apt-get install postfix)");
    }
    println!("skipped: needs root and Postfix");
    false
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the namespace, its resolv.conf and the Postfix instance.
pub(crate) struct Cleanup {
    pub ns: String,
    pub postfix_dir: Option<PathBuf>,
    /// Which Postfix runs `postfix_dir`, and the directory it must see
    /// (None: the system's).
    pub postfix: Option<(Postfix, PathBuf)>,
}

/// Creates network namespace `ns` with `lo` up and a resolv.conf naming
/// 127.0.0.1 (the fixture DNS). Its [`Cleanup`] removes it again.
pub(crate) fn add_netns(ns: &str) -> Cleanup {
    let cleanup = Cleanup {
        ns: ns.to_string(),
        postfix_dir: None,
        postfix: None,
    };
    run(Command::new("ip").args(["netns", "add", ns]));
    run(Command::new("ip").args(["netns", "exec", ns, "ip", "link", "set", "lo", "up"]));
    std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
    std::fs::write(
        format!("/etc/netns/{ns}/resolv.conf"),
        "nameserver 127.0.0.1\n",
    )
    .unwrap();
    cleanup
}

/// Moves the calling thread into network namespace `ns`.
pub(crate) fn enter_netns(ns: &str) {
    let netns = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open the namespace");
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = &self.postfix_dir {
            let mut stop = match &self.postfix {
                Some((pf, visible)) => pf.command("postfix", visible, None, Some(&self.ns)),
                None => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", &self.ns, "postfix"]);
                    c
                }
            };
            let _ = stop.arg("-c").arg(dir).arg("stop").output();
            // Nothing of this instance may survive the test: Postfix's
            // processes carry MAIL_CONFIG=<dir> in their environment.
            let needle = format!("MAIL_CONFIG={}", dir.display());
            if let Ok(procs) = std::fs::read_dir("/proc") {
                for p in procs.flatten() {
                    let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
                    if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.ns));
    }
}

enum Ask {
    Submit(String),
    Counts(mpsc::Sender<(usize, usize, usize, usize)>),
    Stop,
}

fn postfix_config(pf: &Postfix, dir: &Path, ca: &Path, port: u16) {
    let tls = format!(
        "smtp_tls_security_level = may
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
smtp_tls_policy_maps = socketmap:inet:127.0.0.1:{port}:exact
",
        ca = ca.display()
    );
    postfix_instance_for(pf, dir, &tls);
}

/// Writes a Postfix instance into `dir`: a main.cf for a client-only MTA
/// (`client.test`, smtpd on 127.0.0.1:25, retries within seconds) followed by
/// `extra`, a master.cf without chroot, and the queue and data directories.
/// The data directory belongs to the `postfix` user as `pf` numbers it.
pub(crate) fn postfix_instance_for(pf: &Postfix, dir: &Path, extra: &str) {
    let main_cf = format!(
        "compatibility_level = 3.6
{}{extra}",
        instance_settings(dir)
    );
    std::fs::write(dir.join("main.cf"), main_cf).unwrap();
    postfix_services_for(pf, dir);
}

/// The main.cf lines that make a test instance of `dir` (no
/// `compatibility_level`, no TLS), one `name = value` a line.
pub(crate) fn instance_settings(dir: &Path) -> String {
    format!(
        "myhostname = client.test
mydomain = client.test
myorigin = client.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
queue_directory = {dir}/queue
data_directory = {dir}/data
alias_maps =
alias_database =
smtputf8_enable = no
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
smtp_connect_timeout = 5s
",
        dir = dir.display(),
    )
}

/// master.cf without chroot, the queue and the data directory of a test
/// instance in `dir`.
pub(crate) fn postfix_services_for(pf: &Postfix, dir: &Path) {
    let services = [
        "127.0.0.1:25 inet n - n - - smtpd",
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "proxywrite unix - - n - 1 proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "local unix - n n - - local",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ];
    std::fs::write(dir.join("master.cf"), services.join("\n") + "\n").unwrap();
    // Postfix creates the queue's subdirectories itself, not the queue.
    std::fs::create_dir_all(dir.join("queue")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let (uid, gid) = pf.postfix_ids();
    run(Command::new("chown")
        .arg(format!("{uid}:{gid}"))
        .arg(dir.join("data")));
}

/// What one delivery to `user@deep.test` through `pf` did, the socketmap
/// answering with `map`.
pub(crate) struct Seen {
    pub deep_connections: usize,
    pub deep_messages: usize,
    pub good_messages: usize,
    /// Of `good_messages`, those that came over TLS.
    pub good_tls: usize,
    pub log: String,
}

/// `*.deep.test` policy; MX `a.b.deep.test` (preferred, two labels deep,
/// valid certificate for its name) and `mx1.deep.test`.
fn deliver_to_deep(postfix: &Postfix, map: MapConfig) -> Seen {
    deliver_to_deep_until(postfix, map, None)
}

/// [`deliver_to_deep`], giving up early once Postfix has deferred the mail
/// and logged `until_logged`.
fn deliver_to_deep_until(postfix: &Postfix, map: MapConfig, until_logged: Option<&str>) -> Seen {
    deliver_to_deep_with(postfix, "exact", map, until_logged, &|pf_dir, _, ca, _| {
        postfix_config(postfix, pf_dir, ca, AGENT_PORT)
    })
}

/// Where the agent of [`deliver_to_deep_with`] listens, in its namespace.
pub(crate) const AGENT_PORT: u16 = 8461;

/// [`deliver_to_deep_until`], the agent answering `map` as `map_name`;
/// `prepare(postfix_dir, test_dir, ca_file, netns)` writes the Postfix
/// instance (the agent and fixtures already answer in `netns`).
pub(crate) fn deliver_to_deep_with(
    postfix: &Postfix,
    map_name: &str,
    map: MapConfig,
    until_logged: Option<&str>,
    prepare: &dyn Fn(&Path, &Path, &Path, &str),
) -> Seen {
    // Tests run in parallel: one namespace per delivery.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run_no = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = format!("mtsts{}r{run_no}v{}", std::process::id(), postfix.tag());
    let mut cleanup = add_netns(&ns);

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let ca_path = base.join("ca.pem");
    let agent_port = AGENT_PORT;
    let map_name = map_name.to_string();

    // Fixtures and the agent live on a thread that has entered the
    // namespace; the test talks to it over channels.
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (ask_tx, ask_rx) = mpsc::channel::<Ask>();
    let ns_in = ns.clone();
    let (state_dir, ca_out) = (base.join("agent-state"), ca_path.clone());
    let fixtures = std::thread::spawn(move || {
        enter_netns(&ns_in);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            crate::support::install_crypto();
            let ca = TestCa::new();
            std::fs::write(&ca_out, ca.cert_pem()).unwrap();
            let dns = DnsServer::start_on("127.0.0.1:53".parse().unwrap()).await;
            let hosts = PolicyHosts::start_on(&ca, "127.0.0.1:443".parse().unwrap()).await;
            dns.set_txt("_mta-sts.deep.test", &[&["v=STSv1; id=1"]]);
            dns.set_a("mta-sts.deep.test", &[Ipv4Addr::LOCALHOST]);
            hosts.set(
                "mta-sts.deep.test",
                Behavior::Policy(crate::harness::policy("enforce", &["*.deep.test"], 86400)),
            );
            // The two-labels-deep MX is the preferred one.
            dns.set_mx("deep.test", &[(5, "a.b.deep.test"), (10, "mx1.deep.test")]);
            dns.set_a("a.b.deep.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
            dns.set_a("mx1.deep.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
            let deep = SmtpServer::start_on(
                &ca,
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                25,
                SmtpOptions::new("a.b.deep.test"),
            )
            .await
            .unwrap();
            let good = SmtpServer::start_on(
                &ca,
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                25,
                SmtpOptions::new("mx1.deep.test"),
            )
            .await
            .unwrap();

            let mut config = Config {
                state_dir: Some(state_dir),
                ..Config::default()
            };
            config.dns.nameservers = vec!["127.0.0.1:53".into()];
            config.fetch.ca_file = Some(ca_out.clone());
            config.fetch.ca_file_only = true;
            config.cache.mx_min_ttl = Duration::ZERO;
            config.socketmap.listen = vec![format!("127.0.0.1:{agent_port}")];
            config.socketmap.maps.insert(map_name, map);
            let store = mta_sts_agent::daemon::open_store(&config, false).unwrap();
            let resolver = mta_sts_agent::resolver::Resolver::from_config(&config, store).unwrap();
            let listeners = mta_sts_agent::socketmap::bind(&config).await.unwrap();
            let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let cfg = config.clone();
            tokio::spawn(async move {
                mta_sts_agent::socketmap::serve(listeners, resolver, &cfg, stop_rx).await
            });
            ready_tx.send(()).unwrap();

            loop {
                let ask = ask_rx.try_recv();
                match ask {
                    Ok(Ask::Submit(rcpt)) => submit(&rcpt).await,
                    Ok(Ask::Counts(reply)) => {
                        let _ = reply.send((
                            deep.connections(),
                            deep.messages().len(),
                            good.messages().len(),
                            good.messages().iter().filter(|m| m.tls).count(),
                        ));
                    }
                    Ok(Ask::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("fixtures ready");

    let pf = base.join("postfix");
    std::fs::create_dir_all(&pf).unwrap();
    prepare(&pf, &base, &ca_path, &ns);
    let resolv = base.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    cleanup.postfix_dir = Some(pf.clone());
    cleanup.postfix = Some((postfix.clone(), base.clone()));
    run(postfix
        .command("postfix", &base, Some(&resolv), Some(&ns))
        .arg("-c")
        .arg(&pf)
        .arg("start"));

    ask_tx.send(Ask::Submit("user@deep.test".into())).unwrap();
    let started = Instant::now();
    let (deep_connections, deep_messages, good_messages, good_tls) = loop {
        let (tx, rx) = mpsc::channel();
        ask_tx.send(Ask::Counts(tx)).unwrap();
        let counts = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        if counts.1 > 0 || counts.2 > 0 || started.elapsed() > Duration::from_secs(60) {
            break counts;
        }
        // A deferral is final for this test once Postfix has logged why.
        if let Some(needle) = until_logged {
            let log = std::fs::read_to_string(pf.join("maillog")).unwrap_or_default();
            if log.contains(needle) && log.contains("status=deferred") {
                break counts;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(pf.join("maillog")).unwrap_or_default();
    ask_tx.send(Ask::Stop).unwrap();
    let _ = fixtures.join();
    drop(cleanup);

    Seen {
        deep_connections,
        deep_messages,
        good_messages,
        good_tls,
        log,
    }
}

fn current_mx_map() -> MapConfig {
    MapConfig {
        testing_as_enforce: false,
        servername: true,
        match_current_mx: true,
        tlsrpt: false,
        dane: Default::default(),
    }
}

/// Every Postfix delivered to the one-label MX, never to the deep one.
pub(crate) fn assert_rfc_exact(pf: &Postfix, seen: &Seen) {
    let log = &seen.log;
    assert_eq!(
        seen.good_messages, 1,
        "{pf}: the one-label MX did not get the message; Postfix log:\n{log}"
    );
    assert_eq!(
        seen.deep_messages, 0,
        "{pf}: the two-labels-deep MX got the message; Postfix log:\n{log}"
    );
}

#[test]
fn real_postfix_refuses_a_two_labels_deep_mx_under_a_wildcard() {
    if !available() {
        return;
    }
    for pf in crate::support::postfix::all() {
        let seen = deliver_to_deep(&pf, current_mx_map());
        assert_rfc_exact(&pf, &seen);
        assert!(
            seen.deep_connections >= 1,
            "{pf}: Postfix never tried the preferred (deep) MX; log:\n{}",
            seen.log
        );
    }
}

/// The defect, live: the policy's patterns alone (`match=.deep.test`, what
/// this agent answered by default before it adapted to the Postfix version)
/// let every Postfix deliver to the two-labels-deep MX. Also shows that the
/// fixture can tell the styles apart.
#[test]
fn plain_patterns_let_every_postfix_deliver_to_the_deep_mx() {
    if !available() {
        return;
    }
    for pf in crate::support::postfix::all() {
        let seen = deliver_to_deep(&pf, MapConfig::default());
        assert_eq!(
            (seen.deep_messages, seen.good_messages),
            (1, 0),
            "{pf}: expected the deep MX to get the mail; log:\n{}",
            seen.log
        );
    }
}

/// Why the agent never sends the STS attributes to a Postfix it knows is
/// older than 3.10: Postfix refuses the whole reply and defers the mail.
#[test]
fn postfix_before_3_10_defers_mail_on_sts_attributes() {
    if !available() {
        return;
    }
    let older: Vec<Postfix> = crate::support::postfix::all()
        .into_iter()
        .filter(|pf| !pf.at_least((3, 10, 0)))
        .collect();
    for pf in older {
        let map = MapConfig {
            tlsrpt: true,
            ..MapConfig::default()
        };
        let refused = "invalid attribute name: \"policy_type\"";
        let seen = deliver_to_deep_until(&pf, map, Some(refused));
        assert_eq!(
            (seen.deep_messages, seen.good_messages),
            (0, 0),
            "{pf}: {}",
            seen.log
        );
        assert!(seen.log.contains(refused), "{pf}: {}", seen.log);
        let adapted = postfix_version::adapt_maps(
            &std::collections::BTreeMap::from([("m".to_string(), MapConfig::default())]),
            postfix_version::PostfixVersion::parse(&pf.version),
        );
        assert!(!adapted["m"].tlsrpt, "{pf}: the agent would send them");
    }
}

/// Postfix >= 3.10.5 takes our STS attributes (the `tlsrpt` reply) and
/// holds MX hosts to `mx_host_pattern` itself: the deep MX is never even
/// contacted. This is also the live check that Postfix 3.10 and 3.11 accept
/// the reply (a rejected one would defer the mail).
#[test]
fn postfix_3_10_with_sts_attributes_never_contacts_an_unlisted_mx() {
    if !available() {
        return;
    }
    let newer: Vec<Postfix> = crate::support::postfix::all()
        .into_iter()
        .filter(|pf| pf.at_least((3, 10, 5)))
        .collect();
    if newer.is_empty() {
        println!("skipped: no Postfix 3.10.5 or later (contrib/ci/postfix-roots)");
        return;
    }
    for pf in newer {
        let map = MapConfig {
            tlsrpt: true,
            ..MapConfig::default()
        };
        let seen = deliver_to_deep(&pf, map);
        assert_rfc_exact(&pf, &seen);
        assert_eq!(
            seen.deep_connections, 0,
            "{pf}: Postfix connected to an MX outside the policy; log:\n{}",
            seen.log
        );
    }
}

/// The quick start's configuration (no map option set) on every version:
/// the daemon's own choice of reply style, from that Postfix's
/// `postconf -dh mail_version`, keeps the mail away from the deep MX.
#[test]
fn every_postfix_is_rfc_exact_with_the_default_configuration() {
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
        let socketmap = SocketmapConfig {
            postconf_command: postconf,
            ..SocketmapConfig::default()
        };
        assert_eq!(socketmap.postfix_version, "auto");
        let maps = postfix_version::resolve(&socketmap).expect("resolve the maps");
        let map = maps["postfix"].clone();
        let seen = deliver_to_deep(&pf, map);
        assert_rfc_exact(&pf, &seen);
        if pf.at_least((3, 10, 5)) {
            assert_eq!(
                seen.deep_connections, 0,
                "{pf}: the default reply let Postfix connect to the deep MX; log:\n{}",
                seen.log
            );
        }
    }
}

/// Hands one message to Postfix's smtpd inside the namespace.
pub(crate) async fn submit(rcpt: &str) {
    use tokio::io::AsyncBufReadExt as _;
    use tokio::io::{AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect("127.0.0.1:25")
        .await
        .expect("connect to Postfix");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    expect(&mut lines, "220").await;
    for (cmd, code) in [
        ("EHLO submitter.test".to_string(), "250"),
        ("MAIL FROM:<sender@client.test>".to_string(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        expect(&mut lines, code).await;
    }
    w.write_all(b"Subject: depth\r\nMessage-ID: <e2e@client.test>\r\n\r\nhello\r\n.\r\n")
        .await
        .unwrap();
    expect(&mut lines, "250").await;
    w.write_all(b"QUIT\r\n").await.unwrap();
}

async fn expect(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
    code: &str,
) {
    loop {
        let l = lines.next_line().await.unwrap().expect("Postfix reply");
        assert!(l.starts_with(code), "expected {code}, got {l}");
        if l.as_bytes().get(3) == Some(&b' ') {
            return;
        }
    }
}
