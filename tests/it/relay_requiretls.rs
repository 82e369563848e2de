//! REQUIRETLS and `TLS-Required: No` through the relay (RFC 8689): offered
//! on TLS sessions only, delivered only to an MX host authenticated by
//! MTA-STS or DANE over validated TLS that offers REQUIRETLS itself, bounced
//! with RFC 8689's codes otherwise, never weaker after a restart; and the
//! header that waives a domain's policy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mta_sts_agent::smtp::{Reply, SmtpConn};
use tokio::net::TcpStream;

use crate::daemon::{free_port, write_file, Daemon};
use crate::harness::{eventually, policy, World};
use crate::relay::{ip, message, relay_toml, reports, stuffed, text, Rig, LIMIT};
use crate::support::ca::TestCa;
use crate::support::smtp::{ReceivedMessage, SmtpCert, SmtpOptions, SmtpServer};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// The relay's own certificate, from a CA of its own, and the `[relay]`
/// lines that use it.
pub(crate) struct RelayCert {
    pub ca: TestCa,
    pub extra: String,
    _dir: tempfile::TempDir,
}

pub(crate) fn relay_cert() -> RelayCert {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(&["relay.test"]).write_pem(dir.path(), "relay");
    let extra = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    RelayCert {
        ca,
        extra,
        _dir: dir,
    }
}

/// Greeting, EHLO, STARTTLS, EHLO again: the keywords before and after TLS.
pub(crate) async fn tls_client(
    addr: SocketAddr,
    ca: &TestCa,
) -> (Vec<String>, Vec<String>, SmtpConn<Tls>) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(10));
    assert_eq!(c.read_reply().await.expect("greeting").code, 220);
    let before = c.ehlo("client.test").await.expect("EHLO").extensions;
    assert_eq!(c.command("STARTTLS").await.expect("STARTTLS").code, 220);
    let (tcp, _) = c.into_parts();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).expect("CA");
    let prober = mta_sts_agent::tlsprobe::TlsProber::with_roots(
        roots,
        "relay CA".into(),
        Duration::from_secs(10),
    );
    let (tls, _) = prober
        .handshake(tcp, "relay.test", &[])
        .await
        .expect("TLS with the relay");
    let mut c = SmtpConn::new(tls, Duration::from_secs(10));
    let after = c
        .ehlo("client.test")
        .await
        .expect("EHLO over TLS")
        .extensions;
    (before, after, c)
}

/// One transaction over TLS; the reply that ended it.
pub(crate) async fn submit_tls(
    addr: SocketAddr,
    ca: &TestCa,
    mail: &str,
    rcpts: &[&str],
    msg: &str,
) -> Reply {
    let (_, _, mut c) = tls_client(addr, ca).await;
    let r = c.command(mail).await.expect("MAIL");
    if !r.is_positive() {
        return r;
    }
    for rcpt in rcpts {
        let r = c.command(rcpt).await.expect("RCPT");
        if !r.is_positive() {
            return r;
        }
    }
    let r = c.command("DATA").await.expect("DATA");
    if r.code != 354 {
        return r;
    }
    c.write_raw(&stuffed(msg)).await.expect("send the message");
    let end = c.read_reply().await.expect("reply to the end of data");
    c.quit().await;
    end
}

fn saw_mail(server: &SmtpServer) -> bool {
    server
        .commands()
        .iter()
        .any(|c| c.to_ascii_uppercase().starts_with("MAIL"))
}

/// `rt.test` with MX `mx1.rt.test` (`opts`) under a `mode` policy, and the
/// sender's domain `sender.test` whose MX offers REQUIRETLS under an
/// enforce policy, so that reports on REQUIRETLS mail can reach it.
async fn rig(mode: Option<&str>, opts: SmtpOptions, extra: &str) -> (Rig, RelayCert) {
    let cert = relay_cert();
    let rig = Rig::start(
        vec![
            ("mx1.rt.test", 61, opts),
            (
                "mx1.sender.test",
                62,
                SmtpOptions::new("mx1.sender.test").requiretls(true),
            ),
        ],
        &format!("{}{extra}", cert.extra),
    )
    .await;
    let w = &rig.world;
    w.dns.set_mx("rt.test", &[(10, "mx1.rt.test")]);
    w.dns.set_mx("sender.test", &[(10, "mx1.sender.test")]);
    if let Some(mode) = mode {
        w.publish("rt.test", "r1", &policy(mode, &["mx1.rt.test"], 86_400));
    }
    w.publish(
        "sender.test",
        "s1",
        &policy("enforce", &["mx1.sender.test"], 86_400),
    );
    (rig, cert)
}

const MAIL_RT: &str = "MAIL FROM:<alice@sender.test> REQUIRETLS";

#[tokio::test]
async fn requiretls_is_offered_on_tls_only_and_passed_on() {
    let (rig, cert) = rig(
        Some("enforce"),
        SmtpOptions::new("mx1.rt.test").requiretls(true),
        "",
    )
    .await;
    let (before, after, mut c) = tls_client(rig.addr, &cert.ca).await;
    assert!(!before.iter().any(|k| k == "REQUIRETLS"), "{before:?}");
    assert!(after.iter().any(|k| k == "REQUIRETLS"), "{after:?}");
    c.quit().await;

    let msg = message("rt-ok", "alice@sender.test", "bob@rt.test", "secret\r\n");
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        MAIL_RT,
        &["RCPT TO:<bob@rt.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    let got = rig.mx[0].messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert!(
        got[0].mail_line.ends_with(" REQUIRETLS"),
        "{}",
        got[0].mail_line
    );
}

#[tokio::test]
async fn requiretls_to_a_domain_without_policy_bounces_5_7_10() {
    let (rig, cert) = rig(None, SmtpOptions::new("mx1.rt.test").requiretls(true), "").await;
    let msg = message(
        "rt-none",
        "alice@sender.test",
        "bob@rt.test",
        "secret body line\r\n",
    );
    // RET=FULL is asked for, but RFC 8689 §5 has the report on a REQUIRETLS
    // message carry no more than its header section.
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        "MAIL FROM:<alice@sender.test> REQUIRETLS RET=FULL",
        &["RCPT TO:<bob@rt.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[1];
        eventually(LIMIT, || async { !reports(mx).is_empty() }).await
    };
    assert!(ok, "no bounce; queue: {:#?}", rig.queue.list());
    assert_eq!(
        rig.mx[0].connections(),
        0,
        "an unauthenticated MX was contacted"
    );
    let b = &reports(&rig.mx[1])[0];
    let t = text(b);
    assert!(t.contains("Status: 5.7.10"), "{t}");
    assert!(t.contains("Action: failed"), "{t}");
    assert!(t.contains("Subject: relay test rt-none"), "{t}");
    assert!(
        !t.contains("secret body line"),
        "the body of a REQUIRETLS message came back in its report: {t}"
    );
    // RFC 8689 §5: the report is protected like the message.
    assert!(b.mail_line.ends_with(" REQUIRETLS"), "{}", b.mail_line);
    assert!(b.tls);
}

#[tokio::test]
async fn requiretls_needs_requiretls_at_the_next_hop_or_bounces_5_7_30() {
    let (rig, cert) = rig(Some("enforce"), SmtpOptions::new("mx1.rt.test"), "").await;
    let msg = message("rt-hop", "alice@sender.test", "bob@rt.test", "secret\r\n");
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        MAIL_RT,
        &["RCPT TO:<bob@rt.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[1];
        eventually(LIMIT, || async { !reports(mx).is_empty() }).await
    };
    assert!(ok, "no bounce; queue: {:#?}", rig.queue.list());
    assert!(
        !saw_mail(&rig.mx[0]),
        "the message was offered to a hop without REQUIRETLS"
    );
    let t = text(&reports(&rig.mx[1])[0]);
    assert!(t.contains("Status: 5.7.30"), "{t}");
}

#[tokio::test]
async fn requiretls_treats_a_testing_policy_as_enforce() {
    // Under "testing" ordinary mail goes to this host despite its
    // certificate; REQUIRETLS mail must not.
    let opts = SmtpOptions::new("mx1.rt.test")
        .requiretls(true)
        .cert(SmtpCert::WrongName);
    let (rig, cert) = rig(Some("testing"), opts, "").await;
    let msg = message("rt-test", "alice@sender.test", "bob@rt.test", "secret\r\n");
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        MAIL_RT,
        &["RCPT TO:<bob@rt.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("MTA-STS enforce", LIMIT).await;
    assert!(
        !saw_mail(&rig.mx[0]),
        "sent over an unvalidated certificate"
    );
    // The same message without REQUIRETLS is delivered (testing mode).
    let msg = message("plain-test", "alice@sender.test", "carol@rt.test", "x\r\n");
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        "MAIL FROM:<alice@sender.test>",
        &["RCPT TO:<carol@rt.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[0];
        eventually(LIMIT, || async { mx.messages().len() == 1 }).await
    };
    assert!(ok, "testing-mode delivery did not happen");
    assert_eq!(rig.mx[0].messages()[0].rcpt_to, vec!["carol@rt.test"]);
}

#[tokio::test]
async fn tls_required_no_waives_an_enforce_policy_and_is_counted() {
    // A plaintext-only MX under enforce: only a message with the header
    // may go there.
    let (rig, cert) = rig(
        Some("enforce"),
        SmtpOptions::new("mx1.rt.test").starttls(false),
        "",
    )
    .await;
    let before = honoured();
    let msg = format!(
        "TLS-Required: No\r\n{}",
        message("rt-no", "alice@sender.test", "bob@rt.test", "report\r\n")
    );
    let reply = crate::relay::submit(rig.addr, "alice@sender.test", &["bob@rt.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[0];
        eventually(LIMIT, || async { mx.messages().len() == 1 }).await
    };
    assert!(ok, "not delivered: {:#?}", rig.queue.list());
    assert!(!rig.mx[0].messages()[0].tls);
    assert!(honoured() > before, "not counted");
    // With REQUIRETLS the header is ignored (RFC 8689 §3): held.
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        MAIL_RT,
        &["RCPT TO:<carol@rt.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("STARTTLS not offered", LIMIT).await;
    assert_eq!(rig.mx[0].messages().len(), 1);
}

#[tokio::test]
async fn tls_required_no_is_ignored_when_switched_off() {
    let (rig, _cert) = rig(
        Some("enforce"),
        SmtpOptions::new("mx1.rt.test").starttls(false),
        "honour_tls_required_no = false\n",
    )
    .await;
    let msg = format!(
        "TLS-Required: No\r\n{}",
        message("rt-off", "alice@sender.test", "bob@rt.test", "x\r\n")
    );
    let reply = crate::relay::submit(rig.addr, "alice@sender.test", &["bob@rt.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("STARTTLS not offered", LIMIT).await;
    assert!(!saw_mail(&rig.mx[0]));
}

fn honoured() -> u64 {
    mta_sts_agent::metrics::metrics()
        .relay_tls_required_no
        .get_or_create(&mta_sts_agent::metrics::ReasonLabels {
            reason: "honoured".into(),
        })
        .get()
}

/// A message spooled before the DSN and REQUIRETLS fields existed.
fn old_spool_file(state: &std::path::Path, id: &str, to: &str) -> PathBuf {
    let messages = state.join("queue").join("messages");
    std::fs::create_dir_all(&messages).expect("spool dir");
    let body = format!(
        "Received: by old.test\r\n{}",
        message("old-format", "alice@sender.test", to, "from before\r\n")
    );
    let line = format!(
        "{{\"id\":\"{id}\",\"sender\":\"alice@sender.test\",\"recipients\":[\"{to}\"],\"arrival\":{},\"client\":\"127.0.0.1 (old)\",\"smtputf8\":false,\"body_size\":{}}}",
        mta_sts_agent::store::unix_now(),
        body.len()
    );
    let path = messages.join(id);
    std::fs::write(&path, format!("{line}{}\n{body}", " ".repeat(7))).expect("old spool file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requiretls_and_dsn_survive_kill9_and_old_files_still_load() {
    let world = World::new().await;
    let cert = relay_cert();
    // Testing policy and a certificate for the wrong name: the weak path
    // ordinary mail would take.
    let weak = SmtpOptions::new("mx1.rs.test")
        .requiretls(true)
        .dsn(true)
        .cert(SmtpCert::WrongName);
    let (mx_port, mut servers) =
        SmtpServer::start_group(&world.ca, vec![(IpAddr::V4(ip(63)), weak)]).await;
    let mx = servers.remove(0);
    world.dns.set_a("mx1.rs.test", &[ip(63)]);
    world.dns.set_mx("rs.test", &[(10, "mx1.rs.test")]);
    world.publish(
        "rs.test",
        "t1",
        &policy("testing", &["mx1.rs.test"], 86_400),
    );
    let relay_port = free_port();
    let text = format!(
        "{}\n[socketmap]\nlisten = [\"127.0.0.1:{}\"]\n{}",
        world.config_toml(),
        free_port(),
        relay_toml(
            mx_port,
            &format!("listen = [\"127.0.0.1:{relay_port}\"]\n{}", cert.extra)
        )
    );
    let config = write_file(world.dir.path(), "relay.toml", &text);
    let relay = SocketAddr::from(([127, 0, 0, 1], relay_port));
    // A spool file in the format of the previous release, waiting.
    old_spool_file(&world.state_dir(), "1A2B3C4D5E6F70001", "old@rs.test");

    let log = world.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&config, relay, log.clone()).await;
    let msg = message("rt-restart", "alice@sender.test", "bob@rs.test", "x\r\n");
    let reply = submit_tls(
        relay,
        &cert.ca,
        "MAIL FROM:<alice@sender.test> REQUIRETLS RET=HDRS ENVID=e+2B1",
        &["RCPT TO:<bob@rs.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@rs.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    // The old message goes out under testing (it has no REQUIRETLS); the
    // new one is held at every attempt.
    let ok = eventually(LIMIT, || async { !mx.messages().is_empty() }).await;
    assert!(
        ok,
        "the old-format message was not delivered: {}",
        daemon.log_text()
    );
    assert_eq!(mx.messages()[0].rcpt_to, vec!["old@rs.test"]);
    // One handshake took the old message; each further one is an attempt
    // at the REQUIRETLS message, given up before MAIL.
    let held = || async { mx.tls_handshakes() >= 2 };
    assert!(
        eventually(LIMIT, held).await,
        "no attempt: {}",
        daemon.log_text()
    );
    daemon.kill9().await;

    // The spool still says REQUIRETLS, with the DSN parameters.
    let messages = world.state_dir().join("queue").join("messages");
    // (The old message may still be there, delivered but not yet removed.)
    let stored: Vec<String> = std::fs::read_dir(&messages)
        .expect("spool")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("bob@rs.test"))
        .collect();
    assert_eq!(stored.len(), 1, "the REQUIRETLS message is not queued");
    let line = stored[0].lines().next().unwrap_or("");
    for needle in [
        "\"requiretls\":true",
        "\"envid\":\"e+1\"",
        "\"ret\":\"hdrs\"",
        "\"notify\":\"SUCCESS,DELAY\"",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }

    let handshakes = mx.tls_handshakes();
    let mut daemon = Daemon::start(&config, relay, log.clone()).await;
    let retried = || async { mx.tls_handshakes() >= handshakes + 2 };
    assert!(
        eventually(LIMIT, retried).await,
        "no new attempt after the restart"
    );
    assert!(
        to_bob(&mx).is_empty(),
        "REQUIRETLS weakened after a restart"
    );

    // Once the MX is authenticated, it goes out with every parameter.
    mx.set_options(SmtpOptions::new("mx1.rs.test").requiretls(true).dsn(true));
    let ok = eventually(LIMIT, || async { to_bob(&mx).len() == 1 }).await;
    assert!(
        ok,
        "not delivered once the MX was fixed: {}",
        daemon.log_text()
    );
    let m = &to_bob(&mx)[0];
    assert!(m.tls);
    assert!(
        m.mail_line
            .ends_with(" BODY=8BITMIME REQUIRETLS RET=HDRS ENVID=e+2B1"),
        "{}",
        m.mail_line
    );
    assert_eq!(
        m.rcpt_lines,
        vec!["RCPT TO:<bob@rs.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@rs.test"]
    );
    daemon.stop().await;
}

/// What reached the MX for the REQUIRETLS recipient. (The old message may
/// arrive twice: a kill -9 between its delivery and its removal repeats it,
/// which RFC 5321 §6.1 prefers to a loss.)
fn to_bob(mx: &SmtpServer) -> Vec<ReceivedMessage> {
    mx.messages()
        .into_iter()
        .filter(|m| m.rcpt_to == ["bob@rs.test"])
        .collect()
}

#[tokio::test]
async fn requiretls_skips_an_mx_the_testing_policy_does_not_list() {
    // Under "testing" ordinary mail may go to an MX outside the policy;
    // for REQUIRETLS the policy is enforced, so only the listed host,
    // though less preferred, gets the message.
    let cert = relay_cert();
    let rig = Rig::start(
        vec![
            (
                "rogue.rt2.test",
                64,
                SmtpOptions::new("rogue.rt2.test").requiretls(true),
            ),
            (
                "mx2.rt2.test",
                65,
                SmtpOptions::new("mx2.rt2.test").requiretls(true),
            ),
        ],
        &cert.extra,
    )
    .await;
    let w = &rig.world;
    w.dns
        .set_mx("rt2.test", &[(5, "rogue.rt2.test"), (10, "mx2.rt2.test")]);
    w.publish(
        "rt2.test",
        "t2",
        &policy("testing", &["mx2.rt2.test"], 86_400),
    );
    let msg = message("rt-mx", "alice@sender.test", "bob@rt2.test", "x\r\n");
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        MAIL_RT,
        &["RCPT TO:<bob@rt2.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    assert_eq!(rig.mx[1].messages().len(), 1);
    assert!(
        rig.mx[1].messages()[0].mail_line.ends_with(" REQUIRETLS"),
        "{}",
        rig.mx[1].messages()[0].mail_line
    );
    assert_eq!(rig.mx[0].connections(), 0, "the unlisted MX was contacted");
}
