//! TLS-RPT (RFC 8460) from the relay, end to end on loopback: sessions under
//! MTA-STS are counted, survive a restart, become a report that follows the
//! RFC 8460 §4.4 schema, and reach an HTTPS collector (gzip POST) and a
//! mailbox (through the relay's own queue, §5.3 headers and MIME).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use mta_sts_agent::config::Config;
use mta_sts_agent::relay::tlsrpt::Tlsrpt;
use mta_sts_agent::relay::{Queue, Relay};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::{eventually, policy, World};
use crate::relay::{ip, message, relay_toml, submit};
use crate::support::post_sink::PostSink;
use crate::support::smtp::{SmtpOptions, SmtpServer};

const LIMIT: Duration = Duration::from_secs(15);

/// A relay over the world's state directory that can be stopped and
/// started again.
struct Running {
    addr: SocketAddr,
    queue: Queue,
    tlsrpt: Tlsrpt,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn config(world: &World, mx_port: u16, extra: &str) -> Config {
    let text = format!("{}{}", world.config_toml(), relay_toml(mx_port, extra));
    Config::parse(&text, std::path::Path::new("tlsrpt-test.toml")).expect("config")
}

async fn start(world: &World, config: &Config, persistent_store: bool) -> Running {
    let resolver = if persistent_store {
        world.resolver_with(config)
    } else {
        // A stopped relay's spawned tasks may still hold the policy store
        // for a moment; what this test restarts is the TLS-RPT state.
        let store = mta_sts_agent::store::PolicyStore::memory_only(100);
        mta_sts_agent::resolver::Resolver::from_config(config, store).expect("resolver")
    };
    let relay = Relay::open(config, resolver).await.expect("open the relay");
    let queue = relay.queue.clone();
    let tlsrpt = relay.tlsrpt.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(relay.serve(vec![listener], rx));
    Running {
        addr,
        queue,
        tlsrpt,
        stop,
        task,
    }
}

impl Running {
    /// A graceful stop: the relay flushes its counts on the way out.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(LIMIT, self.task).await;
    }

    async fn wait_empty(&self) -> bool {
        let q = self.queue.clone();
        eventually(LIMIT, || {
            let q = q.clone();
            async move { q.is_empty() }
        })
        .await
    }

    async fn wait_reason(&self, needle: &str) -> bool {
        let q = self.queue.clone();
        eventually(LIMIT, || {
            let q = q.clone();
            async move {
                q.list().iter().any(|m| {
                    m.recipients
                        .iter()
                        .any(|r| r.reason.as_deref().is_some_and(|t| t.contains(needle)))
                })
            }
        })
        .await
    }
}

fn today() -> u64 {
    mta_sts_agent::store::unix_now() / 86_400
}

fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

// ---------------------------------------------------------------------------
// RFC 8460 §4.4 schema checks, written out.

const RESULT_TYPES: &[&str] = &[
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

fn only_keys(v: &Value, allowed: &[&str], what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object"));
    for k in obj.keys() {
        assert!(allowed.contains(&k.as_str()), "{what}: unknown field {k}");
    }
}

fn string<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: {key} missing or not a string"))
}

fn count(v: &Value, key: &str, what: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{what}: {key} missing or not a non-negative integer"))
}

/// RFC 3339 `full-date "T" full-time` in UTC with `Z`, as the §4.4 examples.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Validates `v` against the RFC 8460 §4.4 report schema and our date
/// range for `day` ("YYYY-MM-DD"); returns (successes, failures) summed.
fn validate(v: &Value, day: &str) -> (u64, u64) {
    only_keys(
        v,
        &[
            "organization-name",
            "date-range",
            "contact-info",
            "report-id",
            "policies",
        ],
        "report",
    );
    assert!(!string(v, "organization-name", "report").is_empty());
    assert!(!string(v, "contact-info", "report").is_empty());
    assert!(!string(v, "report-id", "report").is_empty());
    let range = v.get("date-range").expect("date-range");
    only_keys(range, &["start-datetime", "end-datetime"], "date-range");
    let start = string(range, "start-datetime", "date-range");
    let end = string(range, "end-datetime", "date-range");
    assert!(is_rfc3339_utc(start), "start-datetime {start}");
    assert!(is_rfc3339_utc(end), "end-datetime {end}");
    assert!(start < end);
    assert_eq!(start, format!("{day}T00:00:00Z"));
    assert_eq!(end, format!("{day}T23:59:59Z"));
    let policies = v
        .get("policies")
        .and_then(Value::as_array)
        .expect("policies is an array");
    assert!(!policies.is_empty(), "no policies");
    let (mut ok, mut failed) = (0, 0);
    for p in policies {
        only_keys(p, &["policy", "summary", "failure-details"], "policies[]");
        let pol = p.get("policy").expect("policy");
        only_keys(
            pol,
            &["policy-type", "policy-string", "policy-domain", "mx-host"],
            "policy",
        );
        let ty = string(pol, "policy-type", "policy");
        assert!(
            ["tlsa", "sts", "no-policy-found"].contains(&ty),
            "policy-type {ty}"
        );
        assert!(!string(pol, "policy-domain", "policy").is_empty());
        for key in ["policy-string", "mx-host"] {
            if let Some(list) = pol.get(key) {
                let list = list.as_array().expect("array of strings");
                assert!(list.iter().all(Value::is_string), "{key}: not strings");
            }
        }
        let summary = p.get("summary").expect("summary");
        only_keys(
            summary,
            &[
                "total-successful-session-count",
                "total-failure-session-count",
            ],
            "summary",
        );
        let s = count(summary, "total-successful-session-count", "summary");
        let f = count(summary, "total-failure-session-count", "summary");
        let mut sum = 0;
        if let Some(details) = p.get("failure-details") {
            for d in details.as_array().expect("failure-details is an array") {
                only_keys(
                    d,
                    &[
                        "result-type",
                        "sending-mta-ip",
                        "receiving-mx-hostname",
                        "receiving-mx-helo",
                        "receiving-ip",
                        "failed-session-count",
                        "additional-information",
                        "failure-reason-code",
                    ],
                    "failure-details[]",
                );
                let rt = string(d, "result-type", "failure-details[]");
                assert!(RESULT_TYPES.contains(&rt), "result-type {rt}");
                for key in ["sending-mta-ip", "receiving-ip"] {
                    if d.get(key).is_some() {
                        string(d, key, "failure-details[]")
                            .parse::<IpAddr>()
                            .unwrap_or_else(|_| panic!("{key} is not an IP address"));
                    }
                }
                if d.get("receiving-mx-hostname").is_some() {
                    string(d, "receiving-mx-hostname", "failure-details[]");
                }
                sum += count(d, "failed-session-count", "failure-details[]");
            }
        }
        assert_eq!(sum, f, "failure-details do not add up to the summary");
        ok += s;
        failed += f;
    }
    (ok, failed)
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn counts_survive_a_restart_and_the_report_follows_the_schema() {
    let world = World::new().await;
    let (mx_port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (IpAddr::V4(ip(41)), SmtpOptions::new("mx1.good.test")),
            (
                IpAddr::V4(ip(42)),
                SmtpOptions::new("mx1.plain.test").starttls(false),
            ),
        ],
    )
    .await;
    world.dns.set_a("mx1.good.test", &[ip(41)]);
    world.dns.set_a("mx1.plain.test", &[ip(42)]);
    world.dns.set_mx("good.test", &[(10, "mx1.good.test")]);
    world.dns.set_mx("plain.test", &[(10, "mx1.plain.test")]);
    world.publish(
        "good.test",
        "g1",
        &policy("enforce", &["mx1.good.test"], 86_400),
    );
    world.publish(
        "plain.test",
        "p1",
        &policy("enforce", &["mx1.plain.test"], 86_400),
    );
    // No policy: never counted.
    world.dns.set_mx("nopolicy.test", &[(10, "mx1.good.test")]);
    let cfg = config(&world, mx_port, "retry_schedule = [\"1h\"]");
    let day = today();

    let relay = start(&world, &cfg, true).await;
    for (id, to) in [
        ("g1", "bob@good.test"),
        ("g2", "carol@good.test"),
        ("n1", "dave@nopolicy.test"),
    ] {
        let msg = message(id, "alice@sender.test", to, "hi\r\n");
        assert_eq!(
            submit(relay.addr, "alice@sender.test", &[to], &msg)
                .await
                .code,
            250
        );
    }
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let msg = message("p1", "alice@sender.test", "bob@plain.test", "x\r\n");
    assert_eq!(
        submit(relay.addr, "alice@sender.test", &["bob@plain.test"], &msg)
            .await
            .code,
        250
    );
    assert!(relay.wait_reason("STARTTLS not offered").await);
    assert_eq!(mx[0].message_count(), 3);
    assert!(relay.tlsrpt.counts(day, "nopolicy.test").is_none());
    let good = relay
        .tlsrpt
        .counts(day, "good.test")
        .expect("good.test counted");
    assert_eq!(good.policies.len(), 1);
    assert_eq!(good.policies[0].success, 2);

    // A graceful stop flushes; a new relay over the same state reads back.
    relay.stop().await;
    let file = world.state_dir().join("tlsrpt/counts").join(format!(
        "{}.json",
        mta_sts_agent::relay::tlsrpt::record::day_name(day)
    ));
    assert!(file.exists(), "{} missing", file.display());
    let relay = start(&world, &cfg, false).await;
    let good = relay
        .tlsrpt
        .counts(day, "good.test")
        .expect("after restart");
    assert_eq!(good.policies[0].success, 2);
    assert_eq!(good.policies[0].policy_type, "sts");
    assert_eq!(good.policies[0].mx_host, vec!["mx1.good.test".to_string()]);
    assert!(good.policies[0]
        .policy_string
        .contains(&"mode: enforce".to_string()));
    let plain = relay.tlsrpt.counts(day, "plain.test").expect("plain.test");
    let p = &plain.policies[0];
    assert_eq!(p.success, 0);
    assert!(p.failure_total() >= 1);
    let f = &p.failures[0];
    assert_eq!(f.result_type, "starttls-not-supported");
    assert_eq!(f.receiving_mx_hostname.as_deref(), Some("mx1.plain.test"));
    assert_eq!(f.receiving_ip, Some(IpAddr::V4(ip(42))));
    assert!(f.sending_mta_ip.is_some());

    // The report, through the public builder for an explicit day.
    let day_name = mta_sts_agent::relay::tlsrpt::record::day_name(day);
    for domain in ["good.test", "plain.test"] {
        let report = relay.tlsrpt.report(day, domain).expect("report");
        let v = serde_json::to_value(&report).expect("json");
        let (ok, failed) = validate(&v, &day_name);
        assert_eq!(v["report-id"], format!("{day_name}_{domain}@relay.test"));
        assert_eq!(v["organization-name"], "relay.test");
        assert_eq!(v["contact-info"], "tlsrpt-noreply@relay.test");
        assert_eq!(v["policies"][0]["policy"]["policy-domain"], domain);
        if domain == "good.test" {
            assert_eq!((ok, failed), (2, 0));
        } else {
            assert_eq!(ok, 0);
            assert!(failed >= 1);
            assert_eq!(
                v["policies"][0]["failure-details"][0]["result-type"],
                "starttls-not-supported"
            );
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn daily_job_posts_and_mails_each_report_once() {
    let world = World::new().await;
    let (mx_port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (IpAddr::V4(ip(43)), SmtpOptions::new("mx1.rpt.test")),
            (IpAddr::V4(ip(44)), SmtpOptions::new("mx.reports.test")),
        ],
    )
    .await;
    world.dns.set_a("mx1.rpt.test", &[ip(43)]);
    world.dns.set_a("mx.reports.test", &[ip(44)]);
    world.dns.set_mx("rpt.test", &[(10, "mx1.rpt.test")]);
    world.dns.set_mx("silent.test", &[(10, "mx1.rpt.test")]);
    world.dns.set_mx("reports.test", &[(10, "mx.reports.test")]);
    world.publish(
        "rpt.test",
        "r1",
        &policy("enforce", &["mx1.rpt.test"], 86_400),
    );
    world.publish(
        "silent.test",
        "s1",
        &policy("testing", &["mx1.rpt.test"], 86_400),
    );
    let sink = PostSink::start(&world.ca, &["collector.reports.test"]).await;
    world
        .dns
        .set_a("collector.reports.test", &[Ipv4Addr::LOCALHOST]);
    let url = format!(
        "https://collector.reports.test:{}/v1/tlsrpt",
        sink.addr.port()
    );
    let record = format!("v=TLSRPTv1; rua={url},mailto:tls-reports@reports.test");
    world.dns.set_txt("_smtp._tls.rpt.test", &[&[&record]]);

    // The collector is on loopback.
    let cfg = config(
        &world,
        mx_port,
        "\n[relay.tlsrpt]\nallow_private_destinations = true\n",
    );
    let relay = start(&world, &cfg, true).await;
    for (id, to) in [("a", "bob@rpt.test"), ("b", "bob@silent.test")] {
        let msg = message(id, "alice@sender.test", to, "hi\r\n");
        assert_eq!(
            submit(relay.addr, "alice@sender.test", &[to], &msg)
                .await
                .code,
            250
        );
    }
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let day = today();
    let day_name = mta_sts_agent::relay::tlsrpt::record::day_name(day);
    let expected = relay.tlsrpt.report(day, "rpt.test").expect("counted");

    // The collector is down at first: the mail goes, the POST is retried.
    sink.set_status(503);
    let run = relay.tlsrpt.run_reports(day + 1, &relay.queue).await;
    assert_eq!(run.generated, 1, "{run:?}");
    assert_eq!(
        run.no_record, 1,
        "silent.test has no TLS-RPT record: {run:?}"
    );
    assert_eq!((run.mailed, run.posted, run.failed), (1, 0, 1), "{run:?}");
    assert!(relay.tlsrpt.counts(day, "silent.test").is_none());
    assert!(relay.tlsrpt.counts(day, "rpt.test").is_none());

    sink.set_status(200);
    let run = relay.tlsrpt.run_reports(day + 1, &relay.queue).await;
    assert_eq!(
        (run.generated, run.mailed, run.posted),
        (0, 0, 1),
        "{run:?}"
    );
    // A third run, and a restarted reporter over the same state: nothing.
    let run = relay.tlsrpt.run_reports(day + 1, &relay.queue).await;
    assert_eq!(run, Default::default());
    let dns = mta_sts_agent::dns::Dns::from_config(&cfg).expect("dns");
    let reopened = Tlsrpt::open(&cfg, "relay.test", &dns).expect("reopen");
    let run = reopened.run_reports(day + 1, &relay.queue).await;
    assert_eq!(run, Default::default());
    let states = reopened.report_states().await;
    assert_eq!(states.len(), 1);
    assert!(states[0].done && states[0].pending.is_empty());

    // The HTTPS collector: two POSTs (503, then 200) of the same gzip.
    let posts = sink.requests();
    assert_eq!(posts.len(), 2);
    for p in &posts {
        assert!(p.head.starts_with("POST /v1/tlsrpt HTTP/1.1"), "{}", p.head);
        assert_eq!(
            p.header("content-type").as_deref(),
            Some("application/tlsrpt+gzip")
        );
        let json: Value = serde_json::from_slice(&gunzip(&p.body)).expect("JSON");
        let (ok, failed) = validate(&json, &day_name);
        assert_eq!((ok, failed), (1, 0));
        assert_eq!(json, serde_json::to_value(&expected).expect("json"));
    }
    assert_eq!(posts[0].body, posts[1].body);

    // The mailbox, through the relay's own queue.
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let mails: Vec<_> = mx[1].messages();
    assert_eq!(mails.len(), 1, "one report mail");
    let m = &mails[0];
    assert_eq!(m.mail_from, "", "reports go with the null reverse-path");
    assert_eq!(m.rcpt_to, vec!["tls-reports@reports.test".to_string()]);
    let text = String::from_utf8(m.data.clone()).expect("ASCII mail");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body");
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let field = |name: &str| -> String {
        unfolded
            .split("\r\n")
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} field in\n{head}"))
    };
    let report_id = format!("{day_name}_rpt.test@relay.test");
    assert_eq!(
        field("Subject"),
        format!("Report Domain: rpt.test Submitter: relay.test Report-ID: <{report_id}>")
    );
    assert_eq!(field("TLS-Report-Domain"), "rpt.test");
    assert_eq!(field("TLS-Report-Submitter"), "relay.test");
    assert_eq!(field("From"), "<tlsrpt-noreply@relay.test>");
    assert_eq!(field("MIME-Version"), "1.0");
    field("Date");
    field("Message-ID");
    let ct = field("Content-Type");
    assert!(
        ct.starts_with("multipart/report; report-type=\"tlsrpt\";"),
        "{ct}"
    );
    let boundary = ct
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .expect("boundary");
    let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
    // Preamble, text part, report part, "--" epilogue.
    assert_eq!(parts.len(), 4, "{body}");
    assert!(parts[3].starts_with("--"));
    let (t_head, t_body) = parts[1]
        .trim_start_matches("\r\n")
        .split_once("\r\n\r\n")
        .expect("text part");
    assert!(t_head.contains("Content-Type: text/plain"), "{t_head}");
    assert!(t_body.contains("rpt.test"));
    let (r_head, r_body) = parts[2]
        .trim_start_matches("\r\n")
        .split_once("\r\n\r\n")
        .expect("report part");
    let r_head = r_head.replace("\r\n\t", " ");
    assert!(
        r_head.contains("Content-Type: application/tlsrpt+gzip"),
        "{r_head}"
    );
    assert!(
        r_head.contains("Content-Transfer-Encoding: base64"),
        "{r_head}"
    );
    let (begin, end) = (day * 86_400, day * 86_400 + 86_399);
    let digits: String = day_name.chars().filter(char::is_ascii_digit).collect();
    let filename = format!("relay.test!rpt.test!{begin}!{end}!{digits}.json.gz");
    assert!(
        r_head.contains(&format!(
            "Content-Disposition: attachment; filename=\"{filename}\""
        )),
        "{r_head}"
    );
    let b64: String = r_body.split_whitespace().collect();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let json: Value = serde_json::from_slice(&gunzip(&gz)).expect("JSON");
    validate(&json, &day_name);
    assert_eq!(json, serde_json::to_value(&expected).expect("json"));
    relay.stop().await;
}

/// The report mail one daily run sends to `tls-reports@reports.test` with
/// `extra` in `[relay.tlsrpt]`.
async fn one_mailed_report(extra: &str) -> Vec<u8> {
    let world = World::new().await;
    let (mx_port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (IpAddr::V4(ip(45)), SmtpOptions::new("mx1.signed.test")),
            (IpAddr::V4(ip(46)), SmtpOptions::new("mx.reports.test")),
        ],
    )
    .await;
    world.dns.set_a("mx1.signed.test", &[ip(45)]);
    world.dns.set_a("mx.reports.test", &[ip(46)]);
    world.dns.set_mx("signed.test", &[(10, "mx1.signed.test")]);
    world.dns.set_mx("reports.test", &[(10, "mx.reports.test")]);
    world.publish(
        "signed.test",
        "d1",
        &policy("enforce", &["mx1.signed.test"], 86_400),
    );
    world.dns.set_txt(
        "_smtp._tls.signed.test",
        &[&["v=TLSRPTv1; rua=mailto:tls-reports@reports.test"]],
    );
    let cfg = config(&world, mx_port, &format!("\n[relay.tlsrpt]\n{extra}\n"));
    let relay = start(&world, &cfg, true).await;
    let msg = message("d", "alice@sender.test", "bob@signed.test", "hi\r\n");
    let reply = submit(relay.addr, "alice@sender.test", &["bob@signed.test"], &msg).await;
    assert_eq!(reply.code, 250);
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let run = relay.tlsrpt.run_reports(today() + 1, &relay.queue).await;
    assert_eq!((run.generated, run.mailed), (1, 1), "{run:?}");
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let mails = mx[1].messages();
    assert_eq!(mails.len(), 1, "one report mail");
    relay.stop().await;
    mails[0].data.clone()
}

/// dkimpy's verdict on `mail` with `txt` as the key record of
/// `sel1._domainkey.example.test` (Some(false): dkimpy says the signature
/// is bad; a crash of the script fails the test); None when python3 or
/// dkimpy (with PyNaCl for Ed25519) is missing outside CI.
fn dkimpy_verifies(mail: &[u8], txt: &str) -> Option<bool> {
    const SCRIPT: &str = r#"
import sys
try:
    import dkim, nacl.signing
except ImportError as e:
    print("missing:", e)
    sys.exit(3)
name, txt = sys.argv[1], sys.argv[2].encode()
def dnsfunc(q, timeout=5):
    q = q.decode() if isinstance(q, bytes) else q
    return txt if q.rstrip(".").lower() == name else None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
try:
    ok = d.verify(dnsfunc=dnsfunc)
except dkim.DKIMException as e:
    print("FAILED:", e)
    sys.exit(1)
print("verified" if ok else "FAILED", d.domain, d.selector, d.signed_headers)
sys.exit(0 if ok else 1)
"#;
    use std::io::Write;
    let child = std::process::Command::new("python3")
        .args(["-c", SCRIPT, "sel1._domainkey.example.test", txt])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let skip = |why: String| {
        assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
        eprintln!("skipped: {why}");
        None
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return skip(format!("no python3: {e}")),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(mail)
        .expect("write the mail to python3");
    let out = child.wait_with_output().expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dkimpy: {text}");
    match out.status.code() {
        Some(0) => Some(true),
        Some(1) => Some(false),
        Some(3) => skip(format!("dkimpy or PyNaCl not installed: {text}")),
        other => panic!("the dkimpy script failed ({other:?}): {text}"),
    }
}

#[tokio::test]
async fn mailed_reports_are_dkim_signed_and_verify_with_dkimpy() {
    use mta_sts_agent::relay::dkim::DkimSigner;
    let dir = tempfile::tempdir().expect("tempdir");
    // A PEM PKCS#8 key file of `kind`; None (RSA only) without openssl.
    let make_key = |kind: &str, name: &str| -> Option<std::path::PathBuf> {
        let path = dir.path().join(name);
        if kind == "ed25519" {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
            let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk).expect("ascii"));
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            std::fs::write(&path, pem).expect("write key");
            return Some(path);
        }
        let openssl = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        match openssl {
            Ok(s) if s.success() => Some(path),
            other => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "openssl genpkey: {other:?}"
                );
                eprintln!("RSA skipped: no openssl CLI: {other:?}");
                None
            }
        }
    };
    // A bad key is a start-up error naming the file.
    {
        let world = World::new().await;
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let extra = format!(
            "\n[relay.tlsrpt]\ndkim_key_file = \"{}\"\ndkim_selector = \"sel1\"\n",
            junk.display()
        );
        let cfg = config(&world, 25, &extra);
        let dns = mta_sts_agent::dns::Dns::from_config(&cfg).expect("dns");
        let e = Tlsrpt::open(&cfg, "relay.test", &dns)
            .err()
            .expect("a junk key is refused");
        assert!(
            e.contains("relay.tlsrpt.dkim_key_file") && e.contains("junk.pem"),
            "{e}"
        );
    }
    let mut keys = Vec::new();
    for (kind, algorithm) in [("ed25519", "ed25519-sha256"), ("rsa", "rsa-sha256")] {
        if let (Some(key), Some(other)) = (
            make_key(kind, &format!("{kind}.pem")),
            make_key(kind, &format!("{kind}-other.pem")),
        ) {
            keys.push((algorithm, key, other));
        }
    }
    for (algorithm, path, other) in keys {
        let signer = DkimSigner::load(&path, "example.test", "sel1").expect("key");
        assert_eq!(signer.algorithm(), algorithm);
        let txt = signer.dns_record();
        let extra = format!(
            "report_from = \"tlsrpt@example.test\"\ndkim_key_file = \"{}\"\ndkim_selector = \"sel1\"",
            path.display()
        );
        let mail = one_mailed_report(&extra).await;
        let text = String::from_utf8(mail.clone()).expect("ASCII mail");
        let head = text.split("\r\n\r\n").next().expect("head");
        assert!(
            head.contains(&format!(
                "a={algorithm}; c=relaxed/relaxed; d=example.test; s=sel1;"
            )),
            "{head}"
        );
        assert!(
            head.contains("h=from:to:subject:date:message-id:mime-version:content-type:tls-report-domain:tls-report-submitter;"),
            "{head}"
        );
        let Some(ok) = dkimpy_verifies(&mail, &txt) else {
            return;
        };
        assert!(ok, "{algorithm}: dkimpy does not verify\n{head}");
        // A changed byte in the report breaks the signature...
        let mut tampered = mail.clone();
        let at = text.find("Report-ID").expect("subject");
        tampered[at] = b'r';
        assert_eq!(
            dkimpy_verifies(&tampered, &txt),
            Some(false),
            "{algorithm}: tampered header"
        );
        let mut tampered = mail.clone();
        let at = text.rfind("--").expect("closing boundary") - 10;
        tampered[at] ^= 1;
        assert_eq!(
            dkimpy_verifies(&tampered, &txt),
            Some(false),
            "{algorithm}: tampered body"
        );
        // ...and so does another key.
        let other = DkimSigner::load(&other, "example.test", "sel1")
            .expect("other key")
            .dns_record();
        assert_eq!(
            dkimpy_verifies(&mail, &other),
            Some(false),
            "{algorithm}: wrong key accepted"
        );
    }
}

#[tokio::test]
async fn certificate_and_mx_failures_get_their_result_types() {
    use crate::support::smtp::SmtpCert;
    let world = World::new().await;
    let (mx_port, _mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (
                IpAddr::V4(ip(45)),
                SmtpOptions::new("mx1.expired.test").cert(SmtpCert::Expired),
            ),
            (IpAddr::V4(ip(46)), SmtpOptions::new("mx1.listed.test")),
            (IpAddr::V4(ip(47)), SmtpOptions::new("rogue.other.test")),
        ],
    )
    .await;
    world.dns.set_a("mx1.expired.test", &[ip(45)]);
    world.dns.set_a("mx1.listed.test", &[ip(46)]);
    world.dns.set_a("rogue.other.test", &[ip(47)]);
    world
        .dns
        .set_mx("expired.test", &[(10, "mx1.expired.test")]);
    world.publish(
        "expired.test",
        "e1",
        &policy("testing", &["mx1.expired.test"], 86_400),
    );
    world.dns.set_mx(
        "listed.test",
        &[(5, "rogue.other.test"), (10, "mx1.listed.test")],
    );
    world.publish(
        "listed.test",
        "l1",
        &policy("enforce", &["mx1.listed.test"], 86_400),
    );
    let cfg = config(&world, mx_port, "");
    let relay = start(&world, &cfg, true).await;
    for (id, to) in [("e", "bob@expired.test"), ("l", "bob@listed.test")] {
        let msg = message(id, "alice@sender.test", to, "hi\r\n");
        assert_eq!(
            submit(relay.addr, "alice@sender.test", &[to], &msg)
                .await
                .code,
            250
        );
    }
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let day = today();
    // Testing mode: delivered anyway, the expired certificate is counted.
    let p = &relay
        .tlsrpt
        .counts(day, "expired.test")
        .expect("counted")
        .policies[0];
    assert_eq!(p.success, 0);
    assert_eq!(p.failures.len(), 1);
    assert_eq!(p.failures[0].result_type, "certificate-expired");
    assert_eq!(p.failures[0].receiving_ip, Some(IpAddr::V4(ip(45))));
    // Enforce: the unlisted MX is a validation failure (never contacted,
    // so no IP); the listed one a success.
    let p = &relay
        .tlsrpt
        .counts(day, "listed.test")
        .expect("counted")
        .policies[0];
    assert_eq!(p.success, 1);
    assert_eq!(p.failures.len(), 1);
    assert_eq!(p.failures[0].result_type, "validation-failure");
    assert_eq!(
        p.failures[0].receiving_mx_hostname.as_deref(),
        Some("rogue.other.test")
    );
    assert_eq!(p.failures[0].receiving_ip, None);
    let v = serde_json::to_value(relay.tlsrpt.report(day, "listed.test").expect("report"))
        .expect("json");
    let day_name = mta_sts_agent::relay::tlsrpt::record::day_name(day);
    assert_eq!(validate(&v, &day_name), (1, 1));
    relay.stop().await;
}

#[tokio::test]
async fn policies_that_cannot_be_had_are_reported_and_mail_still_flows() {
    use crate::support::https::Behavior;
    let world = World::new().await;
    let (mx_port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (IpAddr::V4(ip(48)), SmtpOptions::new("mx1.down.test")),
            (IpAddr::V4(ip(49)), SmtpOptions::new("mx1.broken.test")),
        ],
    )
    .await;
    for (domain, last) in [("down.test", 48), ("broken.test", 49)] {
        let host = format!("mx1.{domain}");
        world.dns.set_a(&host, &[ip(last)]);
        world.dns.set_mx(domain, &[(10, &host)]);
        world.publish(domain, "f1", &policy("enforce", &[&host], 86_400));
    }
    // A policy host answering 500, and a policy that does not parse.
    world.hosts.set(
        "mta-sts.down.test",
        Behavior::Response {
            status: 500,
            content_type: Some("text/plain".to_string()),
            extra_headers: Vec::new(),
            body: b"oops".to_vec(),
            content_length: true,
        },
    );
    world.hosts.set(
        "mta-sts.broken.test",
        Behavior::Policy("version: STSv1\nmode: enforce\n".to_string()),
    );
    let cfg = config(&world, mx_port, "");
    let relay = start(&world, &cfg, true).await;
    for (id, to) in [("d", "bob@down.test"), ("b", "bob@broken.test")] {
        let msg = message(id, "alice@sender.test", to, "hi\r\n");
        let reply = submit(relay.addr, "alice@sender.test", &[to], &msg).await;
        assert_eq!(reply.code, 250, "{reply}");
    }
    // RFC 8461 §5: without a usable policy the mail goes as without one.
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    assert_eq!(mx[0].message_count() + mx[1].message_count(), 2);
    let day = today();
    for (domain, result_type) in [
        ("down.test", "sts-policy-fetch-error"),
        ("broken.test", "sts-policy-invalid"),
    ] {
        let p = &relay.tlsrpt.counts(day, domain).expect("counted").policies[0];
        assert_eq!(p.policy_type, "sts");
        assert_eq!(p.failures.len(), 1, "{p:?}");
        assert_eq!(p.failures[0].result_type, result_type);
        let v =
            serde_json::to_value(relay.tlsrpt.report(day, domain).expect("report")).expect("json");
        let day_name = mta_sts_agent::relay::tlsrpt::record::day_name(day);
        assert_eq!(validate(&v, &day_name), (0, 1), "{v:#}");
    }
    relay.stop().await;
}

#[test]
fn tlsrpt_keys_parse_and_are_checked() {
    let cfg = Config::parse(
        "[relay.tlsrpt]\nenabled = false\norganization_name = \"Example Org\"\n\
         contact_info = \"tls@example.test\"\nreport_from = \"rpt@example.test\"\n\
         flush_interval = \"10s\"\nsend_delay = \"1h\"\nretry_days = 2\npost_timeout = \"5s\"\n",
        std::path::Path::new("t.toml"),
    )
    .expect("config");
    let t = &cfg.relay.tlsrpt;
    assert!(!t.enabled);
    assert_eq!(t.organization_name.as_deref(), Some("Example Org"));
    assert_eq!(t.flush_interval, Duration::from_secs(10));
    assert_eq!(t.send_delay, Duration::from_secs(3600));
    assert_eq!(t.retry_days, 2);
    assert!(Config::default().relay.tlsrpt.enabled);
    for bad in [
        "flush_interval = \"0s\"",
        "send_delay = \"25h\"",
        "nope = 1",
        "dkim_key_file = \"/k.pem\"",
        "dkim_selector = \"s1\"",
        "dkim_domain = \"example.test\"",
        "dkim_key_file = \"/k.pem\"\ndkim_selector = \"s1\"\ndkim_domain = \"bad domain\"",
    ] {
        let text = format!("[relay.tlsrpt]\n{bad}\n");
        assert!(
            Config::parse(&text, std::path::Path::new("t.toml")).is_err(),
            "{bad} accepted"
        );
    }
}

/// Issue 11 item 9: a `rua=` from a (forgeable) DNS answer must not aim
/// the relay's POST at the local network. By default an `https:` URI whose
/// name resolves to loopback, or that is a loopback literal, is not POSTed
/// (the collector sees nothing; the error says why); with
/// `relay.tlsrpt.allow_private_destinations = true` it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_not_posted_to_non_public_addresses_unless_allowed() {
    let world = World::new().await;
    let (mx_port, _mx) = SmtpServer::start_group(
        &world.ca,
        vec![(IpAddr::V4(ip(47)), SmtpOptions::new("mx1.ssrf.test"))],
    )
    .await;
    world.dns.set_a("mx1.ssrf.test", &[ip(47)]);
    world.dns.set_mx("ssrf.test", &[(10, "mx1.ssrf.test")]);
    world.publish(
        "ssrf.test",
        "x1",
        &policy("enforce", &["mx1.ssrf.test"], 86_400),
    );
    let sink = PostSink::start(&world.ca, &["internal.ssrf.test"]).await;
    world
        .dns
        .set_a("internal.ssrf.test", &[Ipv4Addr::LOCALHOST]);
    let by_name = format!("https://internal.ssrf.test:{}/v1/tlsrpt", sink.addr.port());
    let by_literal = format!("https://127.0.0.1:{}/v1/tlsrpt", sink.addr.port());
    let record = format!("v=TLSRPTv1; rua={by_name},{by_literal}");
    world.dns.set_txt("_smtp._tls.ssrf.test", &[&[&record]]);

    let cfg = config(&world, mx_port, "");
    assert!(
        !cfg.relay.tlsrpt.allow_private_destinations,
        "off by default"
    );
    let relay = start(&world, &cfg, true).await;
    let msg = message("s", "alice@sender.test", "bob@ssrf.test", "hi\r\n");
    let reply = submit(relay.addr, "alice@sender.test", &["bob@ssrf.test"], &msg).await;
    assert_eq!(reply.code, 250);
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let day = today();
    let run = relay.tlsrpt.run_reports(day + 1, &relay.queue).await;
    assert_eq!(
        (run.generated, run.posted, run.failed),
        (1, 0, 2),
        "{run:?}"
    );
    assert!(
        sink.requests().is_empty(),
        "nothing may reach the loopback collector"
    );
    // What the log line says, from the same client and function.
    let dns = mta_sts_agent::dns::Dns::from_config(&cfg).expect("dns");
    let client = mta_sts_agent::relay::tlsrpt::send::https_client(
        &cfg.fetch,
        &dns,
        Duration::from_secs(5),
        false,
    )
    .expect("client");
    for uri in [&by_name, &by_literal] {
        let err = mta_sts_agent::relay::tlsrpt::send::post(&client, uri, b"x", false)
            .await
            .expect_err("refused");
        assert!(
            err.contains("127.0.0.1")
                && err.contains("non-public")
                && err.contains("allow_private_destinations"),
            "{uri}: {err}"
        );
    }
    assert!(sink.requests().is_empty());
    relay.stop().await;

    // Allowed: the pending report goes to the named collector (the
    // literal fails certificate validation, as it should).
    let allowed = config(
        &world,
        mx_port,
        "\n[relay.tlsrpt]\nallow_private_destinations = true\n",
    );
    let reopened = Tlsrpt::open(&allowed, "relay.test", &dns).expect("reopen");
    let run = reopened
        .run_reports(day + 1, &relay_queue_for(&allowed).await)
        .await;
    assert_eq!(
        (run.generated, run.posted, run.failed),
        (0, 1, 1),
        "{run:?}"
    );
    let posts = sink.requests();
    assert_eq!(posts.len(), 1);
    assert!(
        posts[0].head.starts_with("POST /v1/tlsrpt HTTP/1.1"),
        "{}",
        posts[0].head
    );
}

/// A queue over the world's spool, for a reporter run without a relay.
async fn relay_queue_for(cfg: &Config) -> Queue {
    let store = mta_sts_agent::store::PolicyStore::memory_only(100);
    let resolver = mta_sts_agent::resolver::Resolver::from_config(cfg, store).expect("resolver");
    Relay::open(cfg, resolver)
        .await
        .expect("open the relay")
        .queue
}

#[tokio::test]
async fn report_mails_carry_tls_required_no_and_reach_a_domain_with_broken_tls() {
    // RFC 8460 §5.3 / RFC 8689 §4.2.2: the reporting domain's own MX has lost
    // STARTTLS under an enforce policy, which is when its reports matter.
    let world = World::new().await;
    let (mx_port, mx) = SmtpServer::start_group(
        &world.ca,
        vec![
            (IpAddr::V4(ip(47)), SmtpOptions::new("mx1.broken.test")),
            (
                IpAddr::V4(ip(48)),
                SmtpOptions::new("mx.reports.test").starttls(false),
            ),
        ],
    )
    .await;
    world.dns.set_a("mx1.broken.test", &[ip(47)]);
    world.dns.set_a("mx.reports.test", &[ip(48)]);
    world.dns.set_mx("broken.test", &[(10, "mx1.broken.test")]);
    world.dns.set_mx("reports.test", &[(10, "mx.reports.test")]);
    world.publish(
        "broken.test",
        "b1",
        &policy("enforce", &["mx1.broken.test"], 86_400),
    );
    world.publish(
        "reports.test",
        "p1",
        &policy("enforce", &["mx.reports.test"], 86_400),
    );
    world.dns.set_txt(
        "_smtp._tls.broken.test",
        &[&["v=TLSRPTv1; rua=mailto:tls-reports@reports.test"]],
    );
    let cfg = config(&world, mx_port, "");
    let relay = start(&world, &cfg, true).await;
    let msg = message("b", "alice@sender.test", "bob@broken.test", "hi\r\n");
    let reply = submit(relay.addr, "alice@sender.test", &["bob@broken.test"], &msg).await;
    assert_eq!(reply.code, 250);
    assert!(relay.wait_empty().await, "{:#?}", relay.queue.list());
    let run = relay.tlsrpt.run_reports(today() + 1, &relay.queue).await;
    assert_eq!((run.generated, run.mailed), (1, 1), "{run:?}");
    assert!(
        relay.wait_empty().await,
        "the report is held by the enforce policy: {:#?}",
        relay.queue.list()
    );
    let mails = mx[1].messages();
    assert_eq!(mails.len(), 1, "one report mail");
    assert!(!mails[0].tls, "the fixture offers no STARTTLS");
    let text = String::from_utf8_lossy(&mails[0].data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    assert!(
        head.lines().any(|l| l == "TLS-Required: No"),
        "no TLS-Required: No in\n{head}"
    );
    relay.stop().await;
}
