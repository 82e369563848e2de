//! TLS-RPT (RFC 8460) end to end through Postfix 3.10 and later: our STS
//! attributes go to Postfix, Postfix's libtlsrpt sends each TLS result to
//! `tlsrpt-collectd` (PyPI `tlsrpt-reporter`, the collector Postfix's
//! TLSRPT_README names), and the day's data that `tlsrpt-fetcher` hands to
//! `tlsrpt-reportd` for the daily report is checked field by field.
//!
//! The enforce domain `rpt.test` has a preferred MX with a self-signed
//! certificate (one failed session, `validation-failure`) and a good
//! one (one successful session).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mta_sts_agent::config::Config;

use crate::postfix_e2e::{add_netns, available, enter_netns, postfix_instance_for, run, submit};
use crate::support::ca::TestCa;
use crate::support::dns::DnsServer;
use crate::support::https::{Behavior, PolicyHosts};
use crate::support::postfix::Postfix;
use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};

const POLICY: &str =
    "version: STSv1\nmode: enforce\nmx: mx1.rpt.test\nmx: mx2.rpt.test\nmax_age: 86400\n";

/// The collector's tools; None (or a panic under CI) without them.
fn collector() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    match (
        find("tlsrpt-collectd"),
        find("tlsrpt-fetcher"),
        find("tlsrpt-reportd"),
    ) {
        (Some(c), Some(f), Some(r)) => Some((c, f, r)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("tlsrpt-collectd missing: python3 -m pip install tlsrpt-reporter")
        }
        _ => {
            println!("skipped: python3 -m pip install tlsrpt-reporter");
            None
        }
    }
}

struct Collectd(Child);

impl Drop for Collectd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn postfix_reports_sts_sessions_to_the_tlsrpt_collector() {
    if !available() {
        return;
    }
    let Some((collectd, fetcher, reportd)) = collector() else {
        return;
    };
    let newer: Vec<Postfix> = crate::support::postfix::all()
        .into_iter()
        .filter(|pf| pf.at_least((3, 10, 5)))
        .collect();
    if newer.is_empty() {
        println!("skipped: no Postfix 3.10.5 or later (contrib/ci/postfix-roots)");
    }
    for pf in newer {
        report_through(&pf, &collectd, &fetcher, &reportd);
    }
}

fn report_through(postfix: &Postfix, collectd: &Path, fetcher: &Path, reportd: &Path) {
    let day_at_start = chrono_free_utc_day();
    let ns = format!("mtstsrpt{}v{}", std::process::id(), postfix.tag());
    let mut cleanup = add_netns(&ns);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    // Postfix's smtp process, no longer root, sends to the collector's socket.
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ca_path = base.join("ca.pem");
    let socket = base.join("tlsrpt.sock");
    let storage = format!("sqlite://{}", base.join("collectd.sqlite").display());
    let _collector = Collectd(
        Command::new(collectd)
            .arg("--storage")
            .arg(&storage)
            .arg("--socketname")
            .arg(&socket)
            .args(["--socketmode", "0666", "--max_uncommited_datagrams", "1"])
            .args(["--sockettimeout", "1", "--log_level", "debug"])
            .arg("--logfilename")
            .arg(base.join("collectd.log"))
            .arg("--pidfilename")
            .arg(base.join("collectd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tlsrpt-collectd"),
    );
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no collector socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<(usize, usize, usize)>();
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
            dns.set_txt("_mta-sts.rpt.test", &[&["v=STSv1; id=1"]]);
            dns.set_txt(
                "_smtp._tls.rpt.test",
                &[&["v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test"]],
            );
            dns.set_a("mta-sts.rpt.test", &[Ipv4Addr::LOCALHOST]);
            hosts.set("mta-sts.rpt.test", Behavior::Policy(POLICY.to_string()));
            dns.set_mx("rpt.test", &[(5, "mx2.rpt.test"), (10, "mx1.rpt.test")]);
            dns.set_a("mx2.rpt.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
            dns.set_a("mx1.rpt.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
            let bad = SmtpServer::start_on(
                &ca,
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                25,
                SmtpOptions::new("mx2.rpt.test").cert(SmtpCert::SelfSigned),
            )
            .await
            .unwrap();
            let good = SmtpServer::start_on(
                &ca,
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                25,
                SmtpOptions::new("mx1.rpt.test"),
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
            config.socketmap.listen = vec!["127.0.0.1:8461".into()];
            // What the daemon answers Postfix >= 3.10.5 by default.
            let maps = mta_sts_agent::socketmap::postfix_version::adapt_maps(
                &config.socketmap.maps,
                mta_sts_agent::socketmap::postfix_version::PostfixVersion::parse("3.10.5"),
            );
            assert!(maps["postfix"].tlsrpt);
            config.socketmap.maps = maps;
            let store = mta_sts_agent::daemon::open_store(&config, false).unwrap();
            let resolver = mta_sts_agent::resolver::Resolver::from_config(&config, store).unwrap();
            let listeners = mta_sts_agent::socketmap::bind(&config).await.unwrap();
            let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let cfg = config.clone();
            tokio::spawn(async move {
                mta_sts_agent::socketmap::serve(listeners, resolver, &cfg, stop_rx).await
            });
            ready_tx.send(()).unwrap();
            while go_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            submit("user@rpt.test").await;
            let started = Instant::now();
            while good.message_count() == 0 && started.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = done_tx.send((bad.connections(), bad.message_count(), good.message_count()));
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("fixtures ready");

    let pf = base.join("postfix");
    std::fs::create_dir_all(&pf).unwrap();
    let extra = format!(
        "smtp_tls_security_level = may
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix
smtp_tlsrpt_enable = yes
smtp_tlsrpt_socket_name = {socket}
",
        ca = ca_path.display(),
        socket = socket.display()
    );
    postfix_instance_for(postfix, &pf, &extra);
    let resolv = base.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    cleanup.postfix_dir = Some(pf.clone());
    cleanup.postfix = Some((postfix.clone(), base.clone()));
    run(postfix
        .command("postfix", &base, Some(&resolv), Some(&ns))
        .arg("-c")
        .arg(&pf)
        .arg("start"));
    go_tx.send(()).unwrap();
    let (bad_conns, bad_msgs, good_msgs) = done_rx
        .recv_timeout(Duration::from_secs(90))
        .expect("delivery finished");
    let log = std::fs::read_to_string(pf.join("maillog")).unwrap_or_default();
    assert_eq!((bad_msgs, good_msgs), (0, 1), "{postfix}: {log}");
    assert!(
        bad_conns >= 1,
        "{postfix}: the bad MX was never tried: {log}"
    );

    // The collector commits within a second; the day is UTC. At midnight it
    // moves the day away by itself: no day to look at then.
    let day = chrono_free_utc_day();
    if day != day_at_start {
        println!("{postfix}: midnight UTC passed during the delivery; nothing to compare");
        return;
    }
    let started = Instant::now();
    // The fetcher reads the collector's finished day (`<db>.yesterday`, what
    // reportd gets after midnight UTC); today's is shown to it the same way.
    let view = base.join("today.sqlite");
    let view_storage = format!("sqlite://{}", view.display());
    let details = loop {
        std::fs::copy(
            base.join("collectd.sqlite"),
            base.join("today.sqlite.yesterday"),
        )
        .expect("copy the collector's database");
        let out = Command::new(fetcher)
            .arg("--storage")
            .arg(&view_storage)
            .arg("--logfilename")
            .arg(base.join("fetcher.log"))
            .arg(&day)
            .arg("rpt.test")
            .output()
            .expect("run tlsrpt-fetcher");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = text.find('{').map(|i| text[i..].to_string());
        let parsed: Option<serde_json::Value> = json.and_then(|j| serde_json::from_str(&j).ok());
        let total: u64 = parsed
            .as_ref()
            .and_then(|v| v["policies"].as_object())
            .map(|p| {
                p.values()
                    .flat_map(|by_policy| {
                        by_policy.as_object().into_iter().flat_map(|m| m.values())
                    })
                    .map(|v| v["cntrtotal"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if total >= 2 || started.elapsed() > Duration::from_secs(20) {
            break parsed.unwrap_or_else(|| {
                panic!(
                    "{postfix}: fetcher printed {text:?}; collector log: {}; Postfix log: {log}",
                    std::fs::read_to_string(base.join("collectd.log")).unwrap_or_default()
                )
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let collector_log = std::fs::read_to_string(base.join("collectd.log")).unwrap_or_default();
    drop(cleanup);
    let _ = fixtures.join();

    assert_eq!(details["d"], "rpt.test", "{details:#}");
    let records = details["policies"].as_object().expect("policies");
    assert_eq!(
        records.len(),
        1,
        "{postfix}: {details:#}\ncollector log:\n{collector_log}\nPostfix log:\n{log}"
    );
    let (record, policies) = records.iter().next().unwrap();
    assert_eq!(record, "v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test");
    let policies = policies.as_object().expect("policies of the record");
    assert_eq!(policies.len(), 1, "one policy: {details:#}");
    let (policy, counts) = policies.iter().next().unwrap();
    let policy: serde_json::Value = serde_json::from_str(policy).expect("policy JSON");
    // The reporter's own mapping (tlsrpt.py): 2 is "sts".
    assert_eq!(policy["policy-type"], 2, "{policy:#}");
    assert_eq!(policy["policy-domain"], "rpt.test", "{policy:#}");
    let strings: Vec<&str> = policy["policy-string"]
        .as_array()
        .expect("policy-string")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(strings, POLICY.lines().collect::<Vec<_>>(), "{policy:#}");
    let mx: Vec<&str> = policy["mx-host"]
        .as_array()
        .expect("mx-host")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(mx, ["mx1.rpt.test", "mx2.rpt.test"], "{policy:#}");
    assert_eq!(counts["cntrtotal"], 2, "{counts:#}");
    assert_eq!(counts["cntrfailure"], 1, "{counts:#}");
    let failures = counts["failures"].as_object().expect("failures");
    assert_eq!(failures.len(), 1, "{counts:#}");
    let (failure, n) = failures.iter().next().unwrap();
    assert_eq!(n, 1);
    let failure: serde_json::Value = serde_json::from_str(failure).expect("failure JSON");
    // 205: "validation-failure" in the reporter's mapping (tlsrpt.py), the
    // RFC 8460 §4.3.2 result type Postfix gives a self-signed certificate.
    assert_eq!(failure["c"], 205, "{failure:#}");
    assert_eq!(failure["f"], "self-signed_certificate", "{failure:#}");
    assert_eq!(failure["n"], "mx2.rpt.test", "{failure:#}");
    assert_eq!(failure["r"], "127.0.0.3", "{failure:#}");

    let report = daily_report(&base, fetcher, reportd, &day);
    check_daily_report(postfix, &report);
}

/// The RFC 8460 report `tlsrpt-reportd` makes of the collector's data.
/// reportd reports on yesterday (UTC) once the collector has finished that
/// day; rather than wait for midnight, a copy of today's data is filed
/// under yesterday's date, which is exactly what the collector's own
/// rollover does to it at midnight (tlsrpt.py, `switch_to_next_day`).
fn daily_report(base: &Path, fetcher: &Path, reportd: &Path, today: &str) -> serde_json::Value {
    let rolled = base.join("rolled.sqlite");
    std::fs::copy(
        base.join("collectd.sqlite"),
        base.join("rolled.sqlite.yesterday"),
    )
    .expect("copy the collector's database");
    let shift = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, datetime\n\
             today = datetime.date.fromisoformat(sys.argv[2])\n\
             y = (today - datetime.timedelta(days=1)).isoformat()\n\
             db = sqlite3.connect(sys.argv[1])\n\
             db.execute('UPDATE finalresults SET day=?', (y,))\n\
             db.execute('UPDATE failures SET day=?', (y,))\n\
             db.execute('INSERT INTO daystatus(daycomplete) VALUES(?)', (y,))\n\
             db.commit()\n",
        )
        .arg(base.join("rolled.sqlite.yesterday"))
        .arg(today)
        .status()
        .expect("run python3");
    assert!(shift.success(), "could not roll the collector's day over");
    let out = base.join("reports");
    std::fs::create_dir_all(&out).unwrap();
    let fetcher_cmd = format!(
        "{} --storage sqlite://{} --logfilename {}",
        fetcher.display(),
        rolled.display(),
        base.join("fetcher-reportd.log").display()
    );
    let mut daemon = Collectd(
        Command::new(reportd)
            .arg("--dbname")
            .arg(base.join("reportd.sqlite"))
            .arg("--fetchers")
            .arg(&fetcher_cmd)
            .arg("--debug_send_file_dest")
            .arg(&out)
            .arg("--sendmail_script")
            .arg(format!("cat > {}", base.join("report.eml").display()))
            .args(["--spread_out_delivery", "1", "--interval_main_loop", "1"])
            .args(["--min_wait_delivery", "0", "--max_wait_delivery", "1"])
            .args(["--min_wait_domainlist", "0", "--max_wait_domainlist", "1"])
            .args([
                "--min_wait_domaindetails",
                "0",
                "--max_wait_domaindetails",
                "1",
            ])
            .args(["--organization_name", "Sender Test Org"])
            .args(["--contact_info", "postmaster@sender.test"])
            .args(["--sender_address", "tlsrpt@sender.test"])
            .arg("--logfilename")
            .arg(base.join("reportd.log"))
            .arg("--pidfilename")
            .arg(base.join("reportd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tlsrpt-reportd"),
    );
    // The report as it goes to the rua= destination (reportd also saves
    // the mail it builds around it, under a THE_EMAIL_TO_ name).
    let wanted = out.join("testreport-rpt.test-1-mailto:tlsrpt@rpt.test.json");
    let started = Instant::now();
    while !wanted.exists() {
        if started.elapsed() > Duration::from_secs(30) {
            panic!(
                "tlsrpt-reportd made no report; its log:\n{}",
                std::fs::read_to_string(base.join("reportd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Written in one go, but give the file a moment to be complete.
    let text = loop {
        let text = std::fs::read_to_string(&wanted).unwrap_or_default();
        if serde_json::from_str::<serde_json::Value>(&text).is_ok()
            || started.elapsed() > Duration::from_secs(30)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mail = loop {
        let mail = std::fs::read_to_string(base.join("report.eml")).unwrap_or_default();
        if mail.contains("tlsrpt+gzip") || started.elapsed() > Duration::from_secs(30) {
            break mail;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    // RFC 8460 §5.3: the mail is a multipart/report of type tlsrpt with
    // the gzip report attached.
    assert!(
        mail.contains("multipart/report") && mail.contains("report-type=\"tlsrpt\""),
        "{mail}"
    );
    assert!(mail.contains("application/tlsrpt+gzip"), "{mail}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}"))
}

/// The daily report, field by field (RFC 8460 §4.3, §4.4).
fn check_daily_report(postfix: &Postfix, report: &serde_json::Value) {
    let r = report;
    assert_eq!(
        r["organization-name"], "Sender Test Org",
        "{postfix}: {r:#}"
    );
    assert_eq!(r["contact-info"], "postmaster@sender.test", "{r:#}");
    assert!(
        r["report-id"].as_str().is_some_and(|id| !id.is_empty()),
        "{r:#}"
    );
    let start = r["date-range"]["start-datetime"].as_str().expect("start");
    let end = r["date-range"]["end-datetime"].as_str().expect("end");
    assert!(
        start.ends_with("T00:00:00Z") && end.ends_with("T23:59:59Z"),
        "{r:#}"
    );
    assert_eq!(start[..10], end[..10], "one UTC day: {r:#}");
    let policies = r["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{r:#}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{r:#}");
    assert_eq!(p["policy"]["policy-domain"], "rpt.test", "{r:#}");
    let strings: Vec<&str> = p["policy"]["policy-string"]
        .as_array()
        .expect("policy-string")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(strings, POLICY.lines().collect::<Vec<_>>(), "{r:#}");
    assert_eq!(
        p["policy"]["mx-host"],
        serde_json::json!(["mx1.rpt.test", "mx2.rpt.test"]),
        "{r:#}"
    );
    assert_eq!(p["summary"]["total-successful-session-count"], 1, "{r:#}");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{r:#}");
    let details = p["failure-details"].as_array().expect("failure-details");
    assert_eq!(details.len(), 1, "{r:#}");
    let d = &details[0];
    assert_eq!(d["result-type"], "validation-failure", "{r:#}");
    assert_eq!(d["receiving-mx-hostname"], "mx2.rpt.test", "{r:#}");
    assert_eq!(d["receiving-ip"], "127.0.0.3", "{r:#}");
    assert_eq!(d["failed-session-count"], 1, "{r:#}");
}

/// Today's date in UTC, `YYYY-MM-DD`, as the collector files it.
fn chrono_free_utc_day() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
