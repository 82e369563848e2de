//! `mta-sts-check` (and `mta-sts-agent check`) run as real binaries against
//! loopback deployments: fixture DNS, HTTPS policy hosts with a test CA and
//! SMTP servers on 127.0.0.x. One good deployment, then one broken thing at a
//! time; every case is checked in both output forms (human and JSON), with
//! its severity, code, a message that says what to fix, and the exit code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{policy, World};
use crate::support::https::{Behavior, CertMode};
use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};

const CHECK: &str = env!("CARGO_BIN_EXE_mta-sts-check");
const AGENT: &str = env!("CARGO_BIN_EXE_mta-sts-agent");

/// Forwards TCP from `[::1]:port` to `127.0.0.1:port`, so the IPv4-only
/// policy-host fixture is also reachable over IPv6.
struct V6Forwarder {
    task: JoinHandle<()>,
}

impl Drop for V6Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl V6Forwarder {
    async fn start(port: u16) -> V6Forwarder {
        let listener = TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port))
            .await
            .expect("bind [::1] on the policy-host port");
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut out) =
                        TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                            .await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        V6Forwarder { task }
    }
}

struct Deployment {
    w: World,
    domain: String,
    smtp_port: u16,
    /// `[mx1, mx2]`.
    smtp: Vec<SmtpServer>,
    _v6: V6Forwarder,
}

fn mx1(domain: &str) -> String {
    format!("mx1.{domain}")
}

fn mx2(domain: &str) -> String {
    format!("mx2.{domain}")
}

impl Deployment {
    /// Everything right: one STSv1 TXT record (DNSSEC-signed), a dual-stack
    /// policy host with a valid certificate serving an enforce policy that
    /// lists both MX hosts, two MX hosts with STARTTLS and valid certificates
    /// (the first with a signed TLSA record), CAA, and TLS-RPT.
    async fn good(domain: &str) -> Deployment {
        let w = World::new().await;
        let host = format!("mta-sts.{domain}");
        w.publish(
            domain,
            "20240101",
            &policy("enforce", &[&mx1(domain), &mx2(domain)], 604_800),
        );
        w.dns.set_aaaa(&host, &[Ipv6Addr::LOCALHOST]);
        w.dns.set_authentic(&format!("_mta-sts.{domain}"), true);
        w.dns.set_caa_issue(domain, &[Some("ca.test")]);
        w.dns
            .set_mx(domain, &[(10, &mx1(domain)), (20, &mx2(domain))]);
        let ip1 = Ipv4Addr::new(127, 0, 0, 2);
        let ip2 = Ipv4Addr::new(127, 0, 0, 3);
        w.dns.set_a(&mx1(domain), &[ip1]);
        w.dns.set_a(&mx2(domain), &[ip2]);
        let tlsa = format!("_25._tcp.{}", mx1(domain));
        w.dns.set_tlsa(&tlsa, &[(3, 1, 1, &[0xab; 32])]);
        w.dns.set_authentic(&tlsa, true);
        // A DANE deployment signs the MX RRset too (RFC 7672 §2.2): TLSA
        // of a host from an unsigned MX answer is not DANE.
        w.dns.set_authentic(domain, true);
        w.dns.set_txt(
            &format!("_smtp._tls.{domain}"),
            &[&[&format!(
                "v=TLSRPTv1; rua=mailto:tlsrpt@{domain},https://report.{domain}/tlsrpt"
            )]],
        );
        let (smtp_port, smtp) = SmtpServer::start_group(
            &w.ca,
            vec![
                (IpAddr::V4(ip1), SmtpOptions::new(&mx1(domain))),
                (IpAddr::V4(ip2), SmtpOptions::new(&mx2(domain))),
            ],
        )
        .await;
        let v6 = V6Forwarder::start(w.hosts.addr.port()).await;
        Deployment {
            w,
            domain: domain.to_string(),
            smtp_port,
            smtp,
            _v6: v6,
        }
    }

    fn host(&self) -> String {
        format!("mta-sts.{}", self.domain)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--dns-server".into(),
            self.w.dns.addr.to_string(),
            "--https-port".into(),
            self.w.hosts.addr.port().to_string(),
            "--smtp-port".into(),
            self.smtp_port.to_string(),
            "--ca-file".into(),
            self.w.ca_path.display().to_string(),
            "--ca-file-only".into(),
            "--timeout".into(),
            "3s".into(),
            "--ehlo".into(),
            "check.test".into(),
        ]
    }

    /// Runs the check in both forms with `extra` options.
    async fn check(&self, extra: &[&str]) -> Run {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.domain.clone());
        Run::both(CHECK, &[], &args, None).await
    }
}

/// One check, run once for human output and once with `--json`.
struct Run {
    code: i32,
    human: String,
    json: Value,
}

async fn exec(
    bin: &str,
    pre: &[&str],
    args: &[String],
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(pre)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run the check binary");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the check finishes within 60 s")
        .expect("wait for the check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Run {
    async fn both(bin: &str, pre: &[&str], args: &[String], stdin: Option<&[u8]>) -> Run {
        let (code, human, stderr) = exec(bin, pre, args, stdin).await;
        let mut json_args = args.to_vec();
        json_args.insert(0, "--json".into());
        let (jcode, jout, jerr) = exec(bin, pre, &json_args, stdin).await;
        assert_eq!(
            code, jcode,
            "human and JSON runs disagree on the exit code\n{human}\n{stderr}\n{jout}\n{jerr}"
        );
        let json: Value = serde_json::from_str(&jout)
            .unwrap_or_else(|e| panic!("JSON output does not parse: {e}\n{jout}\n{jerr}"));
        assert_eq!(json["exit_code"], code, "JSON exit_code field\n{jout}");
        assert!(
            !human.contains('\x1b'),
            "no colour without a terminal:\n{human}"
        );
        // `CHECK_PRINT=1 cargo test --test it check -- --nocapture` shows every report.
        if std::env::var_os("CHECK_PRINT").is_some() {
            eprintln!("===== exit {code}\n{human}\n{jout}");
        }
        let run = Run { code, human, json };
        run.assert_same_findings();
        run
    }

    fn findings(&self) -> &Vec<Value> {
        self.json["findings"].as_array().expect("findings array")
    }

    fn codes(&self) -> Vec<String> {
        self.findings()
            .iter()
            .map(|f| f["code"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Every JSON finding appears in the human report with its mark and code.
    fn assert_same_findings(&self) {
        for f in self.findings() {
            let mark = match f["severity"].as_str().unwrap_or("") {
                "ok" => "✓",
                "info" => "•",
                "warning" => "⚠",
                "error" => "✗",
                other => panic!("unknown severity {other}"),
            };
            let line = format!(
                "{mark} {} [{}]",
                f["message"].as_str().unwrap_or(""),
                f["code"].as_str().unwrap_or("")
            );
            assert!(
                self.human.contains(&line),
                "human output lacks the finding {line:?}:\n{}",
                self.human
            );
        }
        let verdict = self.json["verdict"].as_str().expect("verdict");
        assert!(
            self.human.contains(verdict),
            "verdict missing from human output"
        );
    }

    /// The finding with `code` (and `host`, if given); panics listing all codes.
    fn finding(&self, code: &str, host: Option<&str>) -> &Value {
        self.findings()
            .iter()
            .find(|f| f["code"] == code && host.is_none_or(|h| f["host"] == h))
            .unwrap_or_else(|| {
                panic!(
                    "no finding {code} (host {host:?}); codes: {:?}\n{}",
                    self.codes(),
                    self.human
                )
            })
    }

    /// Asserts a finding's severity and that its message says each of `says`.
    fn expect(&self, code: &str, host: Option<&str>, severity: &str, says: &[&str]) {
        let f = self.finding(code, host);
        assert_eq!(f["severity"], severity, "severity of {code}: {f}");
        let msg = f["message"].as_str().unwrap_or("");
        for s in says {
            assert!(msg.contains(s), "message of {code} should say {s:?}: {msg}");
        }
    }

    fn expect_exit(&self, code: i32) {
        assert_eq!(
            self.code,
            code,
            "exit code; findings {:?}\n{}",
            self.codes(),
            self.human
        );
    }

    fn lacks(&self, code: &str) {
        assert!(
            !self.codes().iter().any(|c| c == code),
            "unexpected finding {code}:\n{}",
            self.human
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_deployment_passes_field_by_field() {
    let d = Deployment::good("good.test").await;
    let r = d.check(&[]).await;
    r.expect_exit(0);
    let j = &r.json;
    assert_eq!(j["schema"], "mta-sts-check/1");
    assert_eq!(j["domain"], "good.test");
    assert_eq!(j["source"], "published");
    assert_eq!(j["source_path"], Value::Null);
    assert_eq!(
        j["sections"],
        serde_json::json!(["txt", "policy", "mx", "tlsrpt"])
    );
    assert_eq!(j["summary"]["error"], 0);
    assert_eq!(j["summary"]["warning"], 0);
    assert_eq!(
        j["verdict"],
        "good.test: enforce policy valid; 2/2 MX hosts accept validated TLS"
    );
    assert_eq!(
        j["policy"],
        serde_json::json!({
            "id": "20240101",
            "mode": "enforce",
            "max_age": 604800,
            "mx": ["mx1.good.test", "mx2.good.test"],
        })
    );
    assert_eq!(j["smtp_probed"], true);
    assert_eq!(
        j["tlsrpt_rua"],
        serde_json::json!(["mailto:tlsrpt@good.test", "https://report.good.test/tlsrpt"])
    );
    assert_eq!(j["suggestion"], Value::Null);

    let hosts = j["mx_hosts"].as_array().expect("mx_hosts");
    assert_eq!(hosts.len(), 2);
    for (i, (name, ip, pref)) in [
        ("mx1.good.test", "127.0.0.2", 10),
        ("mx2.good.test", "127.0.0.3", 20),
    ]
    .into_iter()
    .enumerate()
    {
        let h = &hosts[i];
        assert_eq!(h["host"], name);
        assert_eq!(h["preference"], pref);
        assert_eq!(h["addresses"], serde_json::json!([ip]));
        assert_eq!(h["matches_policy"], true);
        assert_eq!(h["validated_tls"], true);
        let s = &h["smtp"];
        assert_eq!(s["address"], format!("{ip}:{}", d.smtp_port));
        assert_eq!(s["banner"], format!("220 {name} ESMTP test"));
        assert_eq!(s["starttls"], true);
        assert_eq!(s["tls_version"], "TLSv1.3");
        assert!(
            s["cipher"]
                .as_str()
                .is_some_and(|c| c.starts_with("TLS13_")),
            "{s}"
        );
        assert_eq!(s["cert_valid"], true);
        let days = s["cert_days_left"].as_i64().expect("days");
        assert!((88..=90).contains(&days), "{days}");
        assert_eq!(s["error"], Value::Null);
    }
    assert_eq!(
        hosts[0]["tlsa"],
        serde_json::json!([format!("3 1 1 {}", "ab".repeat(32))])
    );
    assert_eq!(hosts[1]["tlsa"], serde_json::json!([]));

    let expected: Vec<(&str, &str, Option<&str>, &str)> = vec![
        ("txt", "ok", None, "txt-valid"),
        ("txt", "info", None, "txt-dnssec"),
        ("policy", "ok", None, "host-addresses"),
        ("policy", "info", None, "caa-restricted"),
        ("policy", "ok", None, "policy-tls"),
        ("policy", "ok", None, "policy-cert-valid"),
        ("policy", "ok", None, "policy-fetched"),
        ("policy", "ok", None, "policy-valid"),
        ("policy", "ok", None, "policy-mode-enforce"),
        ("mx", "ok", None, "mx-records"),
        ("mx", "ok", Some("mx1.good.test"), "mx-matches"),
        ("mx", "ok", Some("mx1.good.test"), "mx-addresses"),
        ("mx", "info", Some("mx1.good.test"), "mx-no-ipv6"),
        ("mx", "info", Some("mx1.good.test"), "dane-tlsa"),
        ("mx", "ok", Some("mx1.good.test"), "smtp-banner"),
        ("mx", "ok", Some("mx1.good.test"), "smtp-starttls"),
        ("mx", "ok", Some("mx1.good.test"), "smtp-tls"),
        ("mx", "ok", Some("mx1.good.test"), "smtp-cert-valid"),
        ("mx", "ok", Some("mx2.good.test"), "mx-matches"),
        ("mx", "ok", Some("mx2.good.test"), "mx-addresses"),
        ("mx", "info", Some("mx2.good.test"), "mx-no-ipv6"),
        ("mx", "ok", Some("mx2.good.test"), "smtp-banner"),
        ("mx", "ok", Some("mx2.good.test"), "smtp-starttls"),
        ("mx", "ok", Some("mx2.good.test"), "smtp-tls"),
        ("mx", "ok", Some("mx2.good.test"), "smtp-cert-valid"),
        ("tlsrpt", "ok", None, "tlsrpt-valid"),
    ];
    let got: Vec<(String, String, Option<String>, String)> = r
        .findings()
        .iter()
        .map(|f| {
            (
                f["section"].as_str().unwrap_or("").to_string(),
                f["severity"].as_str().unwrap_or("").to_string(),
                f["host"].as_str().map(String::from),
                f["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, Option<String>, String)> = expected
        .iter()
        .map(|(s, v, h, c)| {
            (
                s.to_string(),
                v.to_string(),
                h.map(String::from),
                c.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want, "\n{}", r.human);
    let count = |sev: &str| expected.iter().filter(|e| e.1 == sev).count();
    assert_eq!(j["summary"]["ok"], count("ok"));
    assert_eq!(j["summary"]["info"], count("info"));

    // Specific messages.
    r.expect("txt-valid", None, "ok", &["id 20240101"]);
    r.expect("host-addresses", None, "ok", &["A 127.0.0.1", "AAAA ::1"]);
    r.expect("caa-restricted", None, "info", &["ca.test"]);
    r.expect("policy-tls", None, "ok", &["TLSv1.3"]);
    r.expect(
        "policy-cert-valid",
        None,
        "ok",
        &["valid for mta-sts.good.test", "expires in"],
    );
    r.expect("policy-fetched", None, "ok", &["HTTP 200", "text/plain"]);
    r.expect(
        "dane-tlsa",
        Some("mx1.good.test"),
        "info",
        &["DANE", "instead of MTA-STS"],
    );

    // The human report has the sections in order and the verdict.
    let order = [
        "1. _mta-sts.good.test TXT record",
        "2. Policy host mta-sts.good.test",
        "3. MX hosts of good.test",
        "4. TLS-RPT (_smtp._tls.good.test)",
        "5. Verdict",
    ];
    let mut at = 0;
    for heading in order {
        let pos = r.human[at..]
            .find(heading)
            .unwrap_or_else(|| panic!("{heading} missing or out of order:\n{}", r.human));
        at += pos;
    }
    assert!(
        r.human.contains("  mx1.good.test (preference 10)"),
        "{}",
        r.human
    );

    // Each MX host was probed twice (human and JSON) with one TLS handshake each.
    assert_eq!(d.smtp[0].tls_handshakes(), 2);
    assert_eq!(d.smtp[1].tls_handshakes(), 2);
    assert_eq!(d.smtp[0].message_count(), 0, "the probe sends no mail");
    assert!(d.smtp[0]
        .commands()
        .contains(&"EHLO check.test".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_subcommand_is_the_same_tool() {
    let d = Deployment::good("agent.test").await;
    let mut args = d.args();
    args.push(d.domain.clone());
    let via_agent = Run::both(AGENT, &["check"], &args, None).await;
    via_agent.expect_exit(0);
    let direct = d.check(&[]).await;
    assert_eq!(via_agent.codes(), direct.codes());
    assert_eq!(via_agent.json["verdict"], direct.json["verdict"]);
}

// ---------------------------------------------------------------------------
// Broken deployments: section 1.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_txt_record() {
    let d = Deployment::good("notxt.test").await;
    d.w.dns.set_txt("_mta-sts.notxt.test", &[]);
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "txt-missing",
        None,
        "error",
        &["_mta-sts.notxt.test", "publish", "v=STSv1"],
    );
    assert_eq!(r.json["policy"]["id"], Value::Null);
    assert!(
        r.json["verdict"]
            .as_str()
            .is_some_and(|v| v.contains("not announced")),
        "{}",
        r.json["verdict"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_record_at_mta_sts_name() {
    let d = Deployment::good("spf.test").await;
    d.w.dns.set_txt("_mta-sts.spf.test", &[&["v=spf1 mx -all"]]);
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect("txt-spf", None, "warning", &["SPF", "remove it"]);
    r.expect("txt-missing", None, "error", &["SPF", "publish"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sts_records() {
    let d = Deployment::good("two.test").await;
    d.w.dns.set_txt(
        "_mta-sts.two.test",
        &[&["v=STSv1; id=1"], &["v=STSv1; id=2"]],
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "txt-multiple",
        None,
        "error",
        &["2 STSv1 records", "keep exactly one"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_id() {
    let d = Deployment::good("badid.test").await;
    d.w.dns
        .set_txt("_mta-sts.badid.test", &[&["v=STSv1; id=2024-01-01"]]);
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "txt-invalid",
        None,
        "error",
        &["2024-01-01", "letters or digits"],
    );
}

/// RFC 8461 §3.1's grammar has no whitespace without a ';' and no empty
/// field: strict senders (this agent too) see no policy; the owner is told
/// and shown the record rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_record_outside_the_grammar() {
    let d = Deployment::good("grammar.test").await;
    for (record, fixed) in [
        ("v=STSv1; id=20240101 ", "v=STSv1; id=20240101"),
        ("v=STSv1; id=20240101;;", "v=STSv1; id=20240101"),
    ] {
        d.w.dns.set_txt("_mta-sts.grammar.test", &[&[record]]);
        let r = d.check(&[]).await;
        r.expect_exit(2);
        r.expect(
            "txt-grammar",
            None,
            "error",
            &[
                record,
                "RFC 8461 §3.1",
                "see no MTA-STS policy",
                &format!("publish it as \"{fixed}\""),
            ],
        );
        r.lacks("txt-valid");
    }
}

// ---------------------------------------------------------------------------
// Section 2: the policy host and the policy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_nxdomain() {
    let d = Deployment::good("nohost.test").await;
    d.w.dns.remove(&d.host());
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "host-missing",
        None,
        "error",
        &["NXDOMAIN", "publish A and AAAA"],
    );
    assert_eq!(r.json["policy"], Value::Null);
    // Without a policy, MX TLS problems would only be warnings; these are fine.
    assert_eq!(r.json["mx_hosts"][0]["matches_policy"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_redirect() {
    let d = Deployment::good("redirect.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Redirect("https://www.redirect.test/mta-sts.txt".into()),
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-redirect",
        None,
        "error",
        &[
            "https://www.redirect.test/mta-sts.txt",
            "never follow redirects",
            "status 200",
        ],
    );
    assert!(r.json["verdict"]
        .as_str()
        .is_some_and(|v| v.contains("no valid policy could be fetched")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_not_found() {
    let d = Deployment::good("404.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Response {
            status: 404,
            content_type: Some("text/html".into()),
            extra_headers: vec![],
            body: b"not found".to_vec(),
            content_length: true,
        },
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-http-status",
        None,
        "error",
        &["HTTP 404", "/.well-known/mta-sts.txt"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_wrong_content_type() {
    let d = Deployment::good("ctype.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Response {
            status: 200,
            content_type: Some("text/html; charset=utf-8".into()),
            extra_headers: vec![],
            body: policy("enforce", &["mx1.ctype.test"], 604_800).into_bytes(),
            content_length: true,
        },
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-content-type",
        None,
        "error",
        &["text/html", "text/plain"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_expired_certificate() {
    let d = Deployment::good("expired.test").await;
    d.w.hosts.set_cert(&d.host(), CertMode::Expired);
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-cert-expired",
        None,
        "error",
        &["expired", "ago", "renew"],
    );
    r.expect("policy-not-fetched", None, "info", &["TLS problem above"]);
    // The handshake itself worked: version and cipher are still reported.
    r.expect("policy-tls", None, "ok", &["TLSv1.3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_wrong_name_certificate() {
    let d = Deployment::good("wrongname.test").await;
    d.w.hosts.set_cert(&d.host(), CertMode::WrongName);
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-cert-wrong-name",
        None,
        "error",
        &[
            "not valid for mta-sts.wrongname.test",
            "wrong.invalid.test",
            "subjectAltName",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_self_signed_certificate() {
    let d = Deployment::good("selfsigned.test").await;
    d.w.hosts.set_cert(&d.host(), CertMode::SelfSigned);
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-cert-untrusted",
        None,
        "error",
        &["self-signed", "public CA"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_syntax_error_names_the_line() {
    let d = Deployment::good("syntax.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Policy(
            "version: STSv1\nmode: enforced\nmx: mx1.syntax.test\nmax_age: 86400\n".into(),
        ),
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "policy-syntax",
        None,
        "error",
        &[
            "line 2",
            "enforced",
            "the line reads \"mode: enforced\"",
            "correct it",
        ],
    );
}

/// RFC 8461 §3.2: a repeated `mode` is not fatal, the first one counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_mode_keeps_the_first_and_is_a_warning() {
    let d = Deployment::good("twice.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Policy(
            "version: STSv1\nmode: enforce\nmode: testing\nmx: mx1.twice.test\nmx: mx2.twice.test\nmax_age: 604800\n"
                .into(),
        ),
    );
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect("policy-valid", None, "ok", &["mode enforce"]);
    r.expect(
        "policy-duplicate-field",
        None,
        "warning",
        &[
            "line 3",
            "'mode'",
            "first on line 2",
            "RFC 8461 §3.2",
            "delete line 3",
            "testing",
        ],
    );
    r.lacks("policy-unknown-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_max_age_is_a_warning() {
    let d = Deployment::good("short.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Policy(policy(
            "enforce",
            &["mx1.short.test", "mx2.short.test"],
            3600,
        )),
    );
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect("policy-max-age-short", None, "warning", &["3600", "604800"]);
    assert!(r.json["verdict"]
        .as_str()
        .is_some_and(|v| v.contains("0 errors, 1 warning (first: policy-max-age-short)")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_and_none_modes_are_explained() {
    let d = Deployment::good("modes.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Policy(policy("testing", &["mx1.modes.test"], 604_800)),
    );
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect("policy-mode-testing", None, "info", &["only report"]);
    // Under testing a mismatching MX host is a warning, not an error.
    r.expect(
        "mx-not-in-policy",
        Some("mx2.modes.test"),
        "warning",
        &["mx: mx2.modes.test"],
    );

    d.w.hosts
        .set(&d.host(), Behavior::Policy(policy("none", &[], 604_800)));
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect(
        "policy-mode-none",
        None,
        "warning",
        &["no policy", "testing or enforce"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_without_ipv6() {
    let d = Deployment::good("v4only.test").await;
    d.w.dns.set_aaaa(&d.host(), &[]);
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect("host-no-ipv6", None, "warning", &["no AAAA", "IPv6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_ipv6_unreachable() {
    let d = Deployment::good("v6down.test").await;
    // An AAAA record pointing where nothing listens on the port.
    d.w.dns.set_aaaa(&d.host(), &["::2".parse().expect("ip")]);
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect("host-ipv6-unreachable", None, "warning", &["IPv6", "::2"]);
}

// ---------------------------------------------------------------------------
// Section 3: MX hosts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_not_in_enforce_policy() {
    let d = Deployment::good("mismatch.test").await;
    d.w.hosts.set(
        &d.host(),
        Behavior::Policy(policy("enforce", &["mx1.mismatch.test"], 604_800)),
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "mx-not-in-policy",
        Some("mx2.mismatch.test"),
        "error",
        &[
            "not matched",
            "will not deliver",
            "mx: mx2.mismatch.test",
            "new id",
        ],
    );
    assert_eq!(r.json["mx_hosts"][1]["matches_policy"], false);
    assert_eq!(r.json["mx_hosts"][0]["matches_policy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_without_starttls() {
    let d = Deployment::good("nostarttls.test").await;
    d.smtp[1].set_options(SmtpOptions::new("mx2.nostarttls.test").starttls(false));
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "smtp-no-starttls",
        Some("mx2.nostarttls.test"),
        "error",
        &["does not offer STARTTLS", "enable STARTTLS"],
    );
    assert_eq!(r.json["mx_hosts"][1]["smtp"]["starttls"], false);
    assert!(r.json["verdict"]
        .as_str()
        .is_some_and(|v| v.contains("1/2 MX hosts accept validated TLS")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_with_expired_certificate() {
    let d = Deployment::good("mxexpired.test").await;
    d.smtp[0].set_options(SmtpOptions::new("mx1.mxexpired.test").cert(SmtpCert::Expired));
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "smtp-cert-expired",
        Some("mx1.mxexpired.test"),
        "error",
        &["expired", "renew"],
    );
    assert_eq!(r.json["mx_hosts"][0]["smtp"]["cert_valid"], false);
    assert!(r.json["mx_hosts"][0]["smtp"]["cert_days_left"]
        .as_i64()
        .is_some_and(|d| d < 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_certificate_expiring_soon_is_a_warning() {
    let d = Deployment::good("soon.test").await;
    d.smtp[0].set_options(SmtpOptions::new("mx1.soon.test").cert(SmtpCert::ExpiringIn(5)));
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect(
        "smtp-cert-expiring",
        Some("mx1.soon.test"),
        "warning",
        &["expires in 5 days", "renew"],
    );
    assert_eq!(r.json["mx_hosts"][0]["smtp"]["cert_days_left"], 5);
    assert_eq!(r.json["mx_hosts"][0]["validated_tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_with_wrong_name_certificate() {
    let d = Deployment::good("mxname.test").await;
    d.smtp[1].set_options(SmtpOptions::new("mx2.mxname.test").cert(SmtpCert::WrongName));
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "smtp-cert-wrong-name",
        Some("mx2.mxname.test"),
        "error",
        &["not valid for mx2.mxname.test", "wrong.invalid.test"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_with_self_signed_certificate_and_no_policy_is_a_warning() {
    let d = Deployment::good("mxself.test").await;
    // No MTA-STS at all: the domain promises nothing, so bad MX TLS only warns.
    d.w.dns.set_txt("_mta-sts.mxself.test", &[]);
    d.w.dns.remove(&d.host());
    d.smtp[0].set_options(SmtpOptions::new("mx1.mxself.test").cert(SmtpCert::SelfSigned));
    let r = d.check(&[]).await;
    r.expect_exit(2); // txt-missing
    r.expect("host-skipped", None, "info", &["does not exist"]);
    r.expect(
        "smtp-cert-untrusted",
        Some("mx1.mxself.test"),
        "warning",
        &["self-signed"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_refusing_service() {
    let d = Deployment::good("refuse.test").await;
    d.smtp[0].set_options(SmtpOptions::new("mx1.refuse.test").greeting(554, "no service here"));
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "smtp-banner-failed",
        Some("mx1.refuse.test"),
        "error",
        &["554 no service here", "220"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_with_mta_sts() {
    let d = Deployment::good("nullmx.test").await;
    d.w.dns.set_mx("nullmx.test", &[(0, ".")]);
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect(
        "mx-null",
        None,
        "warning",
        &["RFC 7505", "accepts no mail", "remove the MTA-STS"],
    );
    assert_eq!(r.json["mx_hosts"], serde_json::json!([]));
    assert!(r.json["verdict"]
        .as_str()
        .is_some_and(|v| v.contains("null MX")));
}

// ---------------------------------------------------------------------------
// Section 4: TLS-RPT.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tlsrpt_record() {
    let d = Deployment::good("norpt.test").await;
    d.w.dns.set_txt("_smtp._tls.norpt.test", &[]);
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect(
        "tlsrpt-missing",
        None,
        "warning",
        &["never hear", "v=TLSRPTv1; rua=mailto:tlsrpt@norpt.test"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rua() {
    let d = Deployment::good("badrua.test").await;
    d.w.dns.set_txt(
        "_smtp._tls.badrua.test",
        &[&["v=TLSRPTv1; rua=tlsrpt@badrua.test"]],
    );
    let r = d.check(&[]).await;
    r.expect_exit(2);
    r.expect(
        "tlsrpt-bad-rua",
        None,
        "error",
        &[
            "tlsrpt@badrua.test",
            "no URI scheme",
            "no report can be delivered",
            "mailto:",
        ],
    );
    r.lacks("tlsrpt-valid");
}

/// RFC 8460 §3: two rua fields are grammatical; reports go to all URIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rua_fields_are_accepted_with_a_warning() {
    let d = Deployment::good("tworua.test").await;
    d.w.dns.set_txt(
        "_smtp._tls.tworua.test",
        &[&["v=TLSRPTv1; rua=mailto:a@tworua.test; rua=https://report.tworua.test/tlsrpt"]],
    );
    let r = d.check(&[]).await;
    r.expect_exit(1);
    r.expect(
        "tlsrpt-valid",
        None,
        "ok",
        &["mailto:a@tworua.test, https://report.tworua.test/tlsrpt"],
    );
    r.expect(
        "tlsrpt-rua-fields",
        None,
        "warning",
        &[
            "2 rua= fields",
            "RFC 8460 §3",
            "rua=mailto:a@tworua.test,https://report.tworua.test/tlsrpt",
        ],
    );
    r.lacks("tlsrpt-invalid");
}

// ---------------------------------------------------------------------------
// Options.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_smtp_skips_the_probes() {
    let d = Deployment::good("nosmtp.test").await;
    let r = d.check(&["--no-smtp"]).await;
    r.expect_exit(0);
    r.expect("smtp-skipped", None, "info", &["--no-smtp"]);
    assert_eq!(r.json["smtp_probed"], false);
    assert_eq!(r.json["mx_hosts"][0]["smtp"], Value::Null);
    assert_eq!(
        r.json["verdict"],
        "nosmtp.test: enforce policy valid; 2/2 MX hosts match the policy (SMTP not probed)"
    );
    assert_eq!(d.smtp[0].connections(), 0);
    assert_eq!(d.smtp[1].connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_file_from_stdin_is_linted_against_current_mx() {
    let d = Deployment::good("lint.test").await;
    // Nothing published yet: the owner lints before publishing.
    d.w.dns.set_txt("_mta-sts.lint.test", &[]);
    d.w.dns.remove(&d.host());
    let mut args = d.args();
    args.extend([
        "--no-smtp".into(),
        "--policy-file".into(),
        "-".into(),
        d.domain.clone(),
    ]);
    let body = policy("enforce", &["mx1.lint.test", "mx2.lint.test"], 604_800);
    let r = Run::both(CHECK, &[], &args, Some(body.as_bytes())).await;
    r.expect_exit(0);
    assert_eq!(r.json["source"], "stdin");
    assert_eq!(r.json["sections"], serde_json::json!(["policy", "mx"]));
    r.expect("policy-valid", None, "ok", &["mode enforce"]);
    r.expect(
        "mx-matches",
        Some("mx2.lint.test"),
        "ok",
        &["mx2.lint.test"],
    );
    r.lacks("txt-missing");
    assert!(
        r.human.contains("Policy from standard input"),
        "{}",
        r.human
    );
    assert_eq!(
        r.json["verdict"],
        "lint.test: policy file valid (enforce mode); 2/2 MX hosts match the policy (SMTP not probed)"
    );

    // A policy that misses an MX host, from a file.
    let path = d.w.dir.path().join("draft.txt");
    std::fs::write(&path, policy("enforce", &["mx1.lint.test"], 604_800)).expect("write");
    let r = d
        .check(&[
            "--no-smtp",
            "--policy-file",
            path.to_str().expect("utf-8 path"),
        ])
        .await;
    r.expect_exit(2);
    assert_eq!(r.json["source"], "file");
    assert_eq!(r.json["source_path"], path.to_str().expect("utf-8 path"));
    r.expect(
        "mx-not-in-policy",
        Some("mx2.lint.test"),
        "error",
        &["mx: mx2.lint.test"],
    );

    // A syntax error, from a file.
    std::fs::write(
        &path,
        "version: STSv1\nmode: enforce\nmx: *.*.lint.test\nmax_age: 86400\n",
    )
    .expect("write");
    let r = d
        .check(&[
            "--no-smtp",
            "--policy-file",
            path.to_str().expect("utf-8 path"),
        ])
        .await;
    r.expect_exit(2);
    r.expect(
        "policy-syntax",
        None,
        "error",
        &["line 3", "wildcard", "before publishing"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggest_prints_a_publishable_start_and_it_passes() {
    let d = Deployment::good("fresh.test").await;
    // A domain with MX hosts and nothing else.
    d.w.dns.set_txt("_mta-sts.fresh.test", &[]);
    d.w.dns.set_txt("_smtp._tls.fresh.test", &[]);
    d.w.hosts.remove(&d.host());
    let r = d.check(&["--suggest"]).await;
    r.expect_exit(2);
    let s = &r.json["suggestion"];
    let txt = s["txt_record"].as_str().expect("txt_record");
    let prefix = "_mta-sts.fresh.test. IN TXT \"v=STSv1; id=";
    assert!(txt.starts_with(prefix) && txt.ends_with('"'), "{txt}");
    let id = &txt[prefix.len()..txt.len() - 1];
    assert!(
        id.len() == 14 && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    assert_eq!(
        s["policy"],
        "version: STSv1\nmode: testing\nmx: *.fresh.test\nmax_age: 86400\n"
    );
    assert_eq!(
        s["tlsrpt_record"],
        "_smtp._tls.fresh.test. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@fresh.test\""
    );
    assert!(r.human.contains("Suggested starting point for fresh.test"));
    assert!(r.human.contains("    mode: testing"));

    // Publish exactly what was suggested: the domain then passes.
    d.w.set_id("fresh.test", id);
    d.w.hosts.set(
        &d.host(),
        Behavior::Policy(s["policy"].as_str().expect("policy").to_string()),
    );
    d.w.dns.set_txt(
        "_smtp._tls.fresh.test",
        &[&["v=TLSRPTv1; rua=mailto:tlsrpt@fresh.test"]],
    );
    let r = d.check(&["--suggest"]).await;
    r.expect_exit(0);
    r.expect("policy-mode-testing", None, "info", &["enforce"]);
    assert_eq!(r.json["suggestion"], Value::Null);
    assert!(r.human.contains("Nothing to suggest"), "{}", r.human);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_3() {
    let w = World::new().await;
    let dns = w.dns.addr.to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["not_a_domain!".into()], "is not a domain name"),
        (vec!["localhost".into()], "single label"),
        (
            vec![
                "--policy-file".into(),
                "/nonexistent/policy.txt".into(),
                "x.test".into(),
            ],
            "cannot read --policy-file",
        ),
        (
            vec!["--dns-server".into(), "nonsense".into(), "x.test".into()],
            "--dns-server",
        ),
        (
            vec!["--timeout".into(), "0s".into(), "x.test".into()],
            "more than zero",
        ),
        (vec!["--bogus".into(), "x.test".into()], "--bogus"),
        (vec![], "DOMAIN"),
        (
            vec![
                "--ca-file".into(),
                "/nonexistent/ca.pem".into(),
                "--dns-server".into(),
                dns,
                "x.test".into(),
            ],
            "ca.pem",
        ),
    ];
    for (args, says) in cases {
        for bin in [CHECK, AGENT] {
            let pre: &[&str] = if bin == AGENT { &["check"] } else { &[] };
            let (code, stdout, stderr) = exec(bin, pre, &args, None).await;
            assert_eq!(code, 3, "{bin} {args:?}: {stdout}{stderr}");
            assert!(
                stderr.contains(says),
                "{bin} {args:?} should say {says:?}: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_resolver_exits_3() {
    // A UDP and TCP port with nothing behind it.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port();
    drop(socket);
    let args: Vec<String> = vec![
        "--dns-server".into(),
        format!("127.0.0.1:{port}"),
        "--timeout".into(),
        "1s".into(),
        "--no-smtp".into(),
        "dead.test".into(),
    ];
    let (code, stdout, stderr) = exec(CHECK, &[], &args, None).await;
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stderr.contains("DNS resolver does not answer"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Failures of the network rather than of the data: every probe has a limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_servfail_is_an_error_not_a_crash() {
    let d = Deployment::good("servfail.test").await;
    d.w.dns.set_fault(
        "_mta-sts.servfail.test",
        Some(crate::support::dns::Fault::ServFail),
    );
    let r = d.check(&["--no-smtp"]).await;
    r.expect_exit(2);
    r.expect(
        "txt-lookup-failed",
        None,
        "error",
        &["_mta-sts.servfail.test", "fix the DNS servers"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_policy_host_times_out() {
    let d = Deployment::good("hang.test").await;
    d.w.hosts.set(&d.host(), Behavior::Hang);
    let started = std::time::Instant::now();
    let r = d.check(&["--no-smtp"]).await;
    r.expect_exit(2);
    r.expect("policy-timeout", None, "error", &["did not answer", "3s"]);
    // Two runs (human and JSON), each bounded by the 3 s fetch limit.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_mx_times_out() {
    let d = Deployment::good("silent.test").await;
    // A server on mx2's port that accepts and never says a word.
    let ip = Ipv4Addr::new(127, 0, 0, 4);
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), d.smtp_port))
        .await
        .expect("bind the silent server");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    d.w.dns.set_a("mx2.silent.test", &[ip]);
    let r = d.check(&[]).await;
    hold.abort();
    r.expect_exit(2);
    r.expect(
        "smtp-banner-failed",
        Some("mx2.silent.test"),
        "error",
        &["no reply within 3s", "220"],
    );
    assert!(r.json["mx_hosts"][1]["smtp"]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("banner:")));
}

// ---------------------------------------------------------------------------
// The SMTP fixture itself, driven by the library's SMTP client, as a relay
// would use both.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_fixture_takes_mail_over_starttls() {
    use mta_sts_agent::smtp::SmtpConn;
    use mta_sts_agent::tlsprobe::TlsProber;

    crate::support::install_crypto();
    let ca = crate::support::ca::TestCa::new();
    let server = SmtpServer::start(
        &ca,
        SmtpOptions::new("mx.fixture.test").reject_rcpt("nobody@fixture.test"),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).expect("add the test CA");
    let prober = TlsProber::with_roots(roots, "test CA".into(), std::time::Duration::from_secs(5));
    let timeout = std::time::Duration::from_secs(5);

    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut c = SmtpConn::new(tcp, timeout);
    assert_eq!(c.read_reply().await.expect("greeting").code, 220);
    let ehlo = c.ehlo("client.test").await.expect("ehlo");
    assert!(ehlo.has("STARTTLS") && ehlo.has("SIZE"), "{ehlo:?}");
    assert_eq!(c.command("STARTTLS").await.expect("starttls").code, 220);
    assert!(!c.has_buffered());
    let (tcp, _) = c.into_parts();
    let (tls, report) = prober
        .handshake(tcp, "mx.fixture.test", &[])
        .await
        .expect("handshake");
    assert_eq!(report.cert, Ok(()));
    let mut c = SmtpConn::new(tls, timeout);
    let ehlo = c.ehlo("client.test").await.expect("ehlo over TLS");
    assert!(!ehlo.has("STARTTLS"), "no STARTTLS offered twice");
    assert!(c
        .command("MAIL FROM:<a@client.test>")
        .await
        .expect("mail")
        .is_positive());
    assert!(c
        .command("RCPT TO:<b@fixture.test>")
        .await
        .expect("rcpt")
        .is_positive());
    assert_eq!(
        c.command("RCPT TO:<nobody@fixture.test>")
            .await
            .expect("rcpt")
            .code,
        550
    );
    assert_eq!(c.command("DATA").await.expect("data").code, 354);
    c.write_raw(b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
        .await
        .expect("body");
    assert!(c.read_reply().await.expect("queued").is_positive());
    assert!(c.command("NOOP").await.expect("noop").is_positive());
    assert!(c.command("RSET").await.expect("rset").is_positive());
    c.quit().await;

    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].helo, "client.test");
    assert_eq!(got[0].mail_from, "a@client.test");
    assert_eq!(got[0].rcpt_to, vec!["b@fixture.test".to_string()]);
    assert_eq!(got[0].data, b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
    assert!(got[0].tls);
    assert_eq!(server.connections(), 1);
    assert_eq!(server.tls_handshakes(), 1);
    assert_eq!(server.message_count(), 1);
}
