//! The smart-host relay end to end on loopback: a real SMTP client submits
//! to the relay, which delivers to in-process MX servers (with and without
//! STARTTLS, good and broken certificates) found through the fixture DNS,
//! under policies served by the fixture HTTPS hosts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mta_sts_agent::config::Config;
use mta_sts_agent::relay::{Queue, QueueView, Relay};
use mta_sts_agent::smtp::{Reply, SmtpConn};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::{eventually, policy, World};
use crate::support::smtp::{ReceivedMessage, SmtpCert, SmtpOptions, SmtpServer};

/// A relay running in this process against a world and a group of MX
/// fixtures sharing one port.
pub(crate) struct Rig {
    pub world: World,
    pub mx: Vec<SmtpServer>,
    pub mx_port: u16,
    pub addr: SocketAddr,
    pub queue: Queue,
    /// The relay's own resolver (to force a policy refresh).
    pub resolver: mta_sts_agent::resolver::Resolver,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

pub(crate) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The `[relay]` table for tests: short timeouts, a one-second retry.
pub(crate) fn relay_toml(mx_port: u16, extra: &str) -> String {
    let retry = if extra.contains("retry_schedule") {
        ""
    } else {
        "retry_schedule = [\"1s\"]"
    };
    format!(
        r#"
[relay]
hostname = "relay.test"
delivery_port = {mx_port}
{retry}
connect_timeout = "2s"
reply_timeout = "3s"
data_timeout = "3s"
{extra}
"#
    )
}

impl Rig {
    /// MX fixtures `(host name, last octet of 127.0.0.x, options)`; their
    /// A records are published. `extra` goes into `[relay]`.
    pub(crate) async fn start(hosts: Vec<(&str, u8, SmtpOptions)>, extra: &str) -> Rig {
        let world = World::new().await;
        let group = hosts
            .iter()
            .map(|(_, last, opts)| (IpAddr::V4(ip(*last)), opts.clone()))
            .collect();
        let (mx_port, mx) = SmtpServer::start_group(&world.ca, group).await;
        for (name, last, _) in &hosts {
            world.dns.set_a(name, &[ip(*last)]);
        }
        // Bounces go to the sender's domain.
        let text = format!("{}{}", world.config_toml(), relay_toml(mx_port, extra));
        let config = Config::parse(&text, std::path::Path::new("relay-test.toml"))
            .expect("relay test config");
        let resolver = world.resolver_with(&config);
        let relay = Relay::open(&config, resolver.clone())
            .await
            .expect("open the relay");
        let queue = relay.queue.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(relay.serve(vec![listener], stop_rx));
        Rig {
            world,
            mx,
            mx_port,
            addr,
            queue,
            resolver,
            stop,
            task,
        }
    }

    pub(crate) async fn wait_empty(&self, limit: Duration) -> bool {
        let q = self.queue.clone();
        eventually(limit, || {
            let q = q.clone();
            async move { q.is_empty() }
        })
        .await
    }

    /// Waits until some queued recipient's last error contains `needle`.
    pub(crate) async fn wait_reason(&self, needle: &str, limit: Duration) -> Vec<QueueView> {
        let q = self.queue.clone();
        let found = eventually(limit, || {
            let q = q.clone();
            async move {
                q.list().iter().any(|m| {
                    m.recipients
                        .iter()
                        .any(|r| r.reason.as_deref().is_some_and(|t| t.contains(needle)))
                })
            }
        })
        .await;
        let list = self.queue.list();
        assert!(
            found,
            "no queued recipient with {needle:?}; queue: {list:#?}"
        );
        list
    }
}

pub(crate) fn message(id: &str, from: &str, to: &str, body: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: relay test {id}\r\nMessage-ID: <{id}@client.test>\r\n\r\n{body}"
    )
}

/// The reports (null sender) that reached `server`.
pub(crate) fn reports(server: &SmtpServer) -> Vec<ReceivedMessage> {
    server
        .messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect()
}

/// A received message as text, for assertions.
pub(crate) fn text(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

/// Dot-stuffs a message for DATA (RFC 5321 §4.5.2).
pub(crate) fn stuffed(msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in msg.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
    }
    if !msg.ends_with("\r\n") && !msg.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Submits one message like an application would. Returns the reply that
/// ended the attempt: the one after the data, or the first refusal.
pub(crate) async fn submit(addr: SocketAddr, from: &str, rcpts: &[&str], msg: &str) -> Reply {
    submit_from(None, addr, from, rcpts, msg).await
}

pub(crate) async fn submit_from(
    local: Option<IpAddr>,
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    msg: &str,
) -> Reply {
    let tcp = match local {
        Some(ip) => {
            let s = TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::new(ip, 0)).expect("bind client address");
            s.connect(addr).await.expect("connect to the relay")
        }
        None => TcpStream::connect(addr)
            .await
            .expect("connect to the relay"),
    };
    let mut c = SmtpConn::new(tcp, Duration::from_secs(10));
    let greeting = c.read_reply().await.expect("greeting");
    if greeting.code != 220 {
        return greeting;
    }
    let ehlo = c.ehlo("client.test").await.expect("EHLO");
    assert!(ehlo.reply.is_positive(), "EHLO: {}", ehlo.reply);
    let r = c
        .command(&format!("MAIL FROM:<{from}>"))
        .await
        .expect("MAIL");
    if !r.is_positive() {
        return r;
    }
    for rcpt in rcpts {
        let r = c.command(&format!("RCPT TO:<{rcpt}>")).await.expect("RCPT");
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

pub(crate) fn publish_enforce(world: &World, domain: &str, mx: &[&str]) {
    world.publish(domain, "e1", &policy("enforce", mx, 86_400));
}

/// The MX fixture that received `id`, if any, and the messages there.
fn received_with(server: &SmtpServer, id: &str) -> usize {
    let needle = format!("<{id}@client.test>");
    server
        .messages()
        .iter()
        .filter(|m| String::from_utf8_lossy(&m.data).contains(&needle))
        .count()
}

fn saw_transaction(server: &SmtpServer) -> bool {
    server.commands().iter().any(|c| {
        let c = c.to_ascii_uppercase();
        c.starts_with("MAIL") || c.starts_with("RCPT") || c.starts_with("DATA")
    })
}

pub(crate) const LIMIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn enforce_delivers_over_validated_tls_with_exact_dot_stuffing() {
    let rig = Rig::start(
        vec![("mx1.enforce.test", 11, SmtpOptions::new("mx1.enforce.test"))],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("enforce.test", &[(10, "mx1.enforce.test")]);
    publish_enforce(&rig.world, "enforce.test", &["mx1.enforce.test"]);

    let body = ".leading dot\r\n..two dots\r\n.\r\nnot the end\r\n. \r\nlast line\r\n";
    let msg = message("good", "alice@sender.test", "bob@enforce.test", body);
    let reply = submit(rig.addr, "alice@sender.test", &["bob@enforce.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );

    let got = rig.mx[0].messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.tls, "delivered without TLS");
    assert_eq!(m.mail_from, "alice@sender.test");
    assert_eq!(m.rcpt_to, vec!["bob@enforce.test".to_string()]);
    assert_eq!(m.helo, "relay.test");
    let data = String::from_utf8_lossy(&m.data);
    assert!(
        data.starts_with("Received: from client.test (127.0.0.1)"),
        "{data}"
    );
    assert!(
        data.ends_with(&msg),
        "body changed in transit:\n{data:?}\nvs\n{msg:?}"
    );
    assert_eq!(rig.mx[0].tls_handshakes(), 1);
}

#[tokio::test]
async fn enforce_without_starttls_defers_and_never_sends_the_message() {
    let rig = Rig::start(
        vec![(
            "mx1.plain.test",
            12,
            SmtpOptions::new("mx1.plain.test").starttls(false),
        )],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("plain.test", &[(10, "mx1.plain.test")]);
    publish_enforce(&rig.world, "plain.test", &["mx1.plain.test"]);
    let msg = message("plain", "alice@sender.test", "bob@plain.test", "secret\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@plain.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");

    let list = rig.wait_reason("STARTTLS not offered", LIMIT).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].recipients[0].status, "pending");
    assert!(rig.mx[0].connections() >= 1);
    assert!(rig.mx[0].messages().is_empty());
    assert!(
        !saw_transaction(&rig.mx[0]),
        "the MX saw a transaction: {:?}",
        rig.mx[0].commands()
    );

    // Once the MX offers STARTTLS, the held message goes out at the next try.
    rig.mx[0].set_options(SmtpOptions::new("mx1.plain.test"));
    rig.queue.flush(None);
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    assert_eq!(received_with(&rig.mx[0], "plain"), 1);
    assert!(rig.mx[0].messages()[0].tls);
}

#[tokio::test]
async fn enforce_never_contacts_mx_hosts_outside_the_policy() {
    let rig = Rig::start(
        vec![
            ("mx.wild.test", 13, SmtpOptions::new("mx.wild.test")),
            // Two labels deep: `*.wild.test` does not cover it, even with a
            // valid certificate for its own name.
            ("a.b.wild.test", 14, SmtpOptions::new("a.b.wild.test")),
            ("other.test", 15, SmtpOptions::new("other.test")),
        ],
        "",
    )
    .await;
    let dns = &rig.world.dns;
    dns.set_mx(
        "wild.test",
        &[
            (5, "a.b.wild.test"),
            (7, "other.test"),
            (10, "mx.wild.test"),
        ],
    );
    publish_enforce(&rig.world, "wild.test", &["*.wild.test"]);
    let msg = message("wild", "alice@sender.test", "bob@wild.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@wild.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    assert_eq!(received_with(&rig.mx[0], "wild"), 1);
    assert_eq!(
        rig.mx[1].connections(),
        0,
        "unlisted a.b.wild.test contacted"
    );
    assert_eq!(rig.mx[2].connections(), 0, "unlisted other.test contacted");

    // No MX matches at all: held, with a reason that says so.
    dns.set_mx("wild.test", &[(5, "a.b.wild.test")]);
    let msg = message("wild2", "alice@sender.test", "bob@wild.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@wild.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("is allowed by its MTA-STS policy", LIMIT)
        .await;
    assert_eq!(rig.mx[1].connections(), 0);
}

#[tokio::test]
async fn enforce_defers_on_every_kind_of_bad_certificate() {
    let rig = Rig::start(
        vec![("mx1.badcert.test", 16, SmtpOptions::new("mx1.badcert.test"))],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("badcert.test", &[(10, "mx1.badcert.test")]);
    publish_enforce(&rig.world, "badcert.test", &["mx1.badcert.test"]);
    for (cert, words) in [
        (SmtpCert::Expired, "expired"),
        (SmtpCert::WrongName, "not valid for the name"),
        (SmtpCert::SelfSigned, "untrusted"),
    ] {
        rig.mx[0].set_options(SmtpOptions::new("mx1.badcert.test").cert(cert));
        let msg = message("bad", "alice@sender.test", "bob@badcert.test", "x\r\n");
        let reply = submit(rig.addr, "alice@sender.test", &["bob@badcert.test"], &msg).await;
        assert_eq!(reply.code, 250, "{reply}");
        let list = rig.wait_reason(words, LIMIT).await;
        assert!(rig.mx[0].tls_handshakes() >= 1, "{cert:?}: no handshake");
        assert!(rig.mx[0].messages().is_empty(), "{cert:?}: message sent");
        assert!(!saw_transaction(&rig.mx[0]), "{cert:?}: transaction");
        for m in list {
            assert!(rig.queue.delete(&m.id).await.expect("delete"));
        }
    }
}

/// The relay's policy-failure counter for (mode, result type).
fn policy_failures(mode: &str, result_type: &str) -> u64 {
    mta_sts_agent::metrics::metrics()
        .relay_policy_failures
        .get_or_create(&mta_sts_agent::metrics::PolicyFailureLabels {
            mode: mode.into(),
            result_type: result_type.into(),
        })
        .get()
}

#[tokio::test]
async fn testing_mode_delivers_and_records_the_failure() {
    let rig = Rig::start(
        vec![
            (
                "mx1.testing.test",
                17,
                SmtpOptions::new("mx1.testing.test").cert(SmtpCert::Expired),
            ),
            (
                "mx1.testing2.test",
                18,
                SmtpOptions::new("mx1.testing2.test").starttls(false),
            ),
        ],
        "",
    )
    .await;
    let w = &rig.world;
    w.dns.set_mx("testing.test", &[(10, "mx1.testing.test")]);
    w.dns.set_mx("testing2.test", &[(10, "mx1.testing2.test")]);
    for d in ["testing.test", "testing2.test"] {
        w.publish(d, "t1", &policy("testing", &[&format!("mx1.{d}")], 86_400));
    }
    let expired_before = policy_failures("testing", "certificate-expired");
    let plain_before = policy_failures("testing", "starttls-not-supported");
    let msg = message(
        "testing",
        "alice@sender.test",
        "bob@testing.test",
        "hello\r\n",
    );
    let reply = submit(
        rig.addr,
        "alice@sender.test",
        &["bob@testing.test", "carol@testing2.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    let expired = &rig.mx[0].messages();
    assert_eq!(expired.len(), 1);
    assert!(
        expired[0].tls,
        "testing mode keeps TLS when the cert is bad"
    );
    let plain = &rig.mx[1].messages();
    assert_eq!(plain.len(), 1);
    assert!(!plain[0].tls);
    assert_eq!(plain[0].rcpt_to, vec!["carol@testing2.test".to_string()]);
    assert!(policy_failures("testing", "certificate-expired") > expired_before);
    assert!(policy_failures("testing", "starttls-not-supported") > plain_before);
}

#[tokio::test]
async fn without_a_policy_tls_is_opportunistic_and_implicit_mx_works() {
    let rig = Rig::start(
        vec![
            (
                "mx1.nopolicy.test",
                19,
                SmtpOptions::new("mx1.nopolicy.test").cert(SmtpCert::SelfSigned),
            ),
            (
                "implicit.test",
                20,
                SmtpOptions::new("implicit.test").starttls(false),
            ),
        ],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("nopolicy.test", &[(10, "mx1.nopolicy.test")]);
    // implicit.test has no MX records: RFC 5321 §5.1 delivers to its A record.
    let msg = message("np", "alice@sender.test", "bob@nopolicy.test", "hi\r\n");
    let reply = submit(
        rig.addr,
        "alice@sender.test",
        &["bob@nopolicy.test", "dan@implicit.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    assert_eq!(rig.mx[0].messages().len(), 1);
    assert!(rig.mx[0].messages()[0].tls, "STARTTLS offered but not used");
    assert_eq!(rig.mx[1].messages().len(), 1);
    assert!(!rig.mx[1].messages()[0].tls);
}

#[tokio::test]
async fn temporary_failure_is_retried_until_accepted() {
    let rig = Rig::start(
        vec![(
            "mx1.retry.test",
            21,
            SmtpOptions::new("mx1.retry.test").data_reply("451 4.3.0 try again later"),
        )],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("retry.test", &[(10, "mx1.retry.test")]);
    let msg = message("retry", "alice@sender.test", "bob@retry.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@retry.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    let list = rig.wait_reason("refused the message", LIMIT).await;
    assert_eq!(list[0].recipients[0].status, "pending");
    assert!(list[0].recipients[0].next_attempt.is_some());
    rig.mx[0].set_options(SmtpOptions::new("mx1.retry.test"));
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    assert_eq!(received_with(&rig.mx[0], "retry"), 1);
}

#[tokio::test]
async fn permanent_failure_bounces_to_the_sender_with_the_remote_reply() {
    let rig = Rig::start(
        vec![
            (
                "mx1.rcpt.test",
                22,
                SmtpOptions::new("mx1.rcpt.test").reject_rcpt("nobody@rcpt.test"),
            ),
            ("mx1.other.test", 23, SmtpOptions::new("mx1.other.test")),
            ("mx1.sender.test", 24, SmtpOptions::new("mx1.sender.test")),
        ],
        "",
    )
    .await;
    let dns = &rig.world.dns;
    dns.set_mx("rcpt.test", &[(10, "mx1.rcpt.test")]);
    dns.set_mx("other.test", &[(10, "mx1.other.test")]);
    dns.set_mx("sender.test", &[(10, "mx1.sender.test")]);
    let msg = message("bounce", "alice@sender.test", "ok@rcpt.test", "hi\r\n");
    let reply = submit(
        rig.addr,
        "alice@sender.test",
        &["ok@rcpt.test", "nobody@rcpt.test", "x@other.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );

    // Delivered once per domain, only to the recipients that were accepted.
    let rcpt = rig.mx[0].messages();
    assert_eq!(rcpt.len(), 1);
    assert_eq!(rcpt[0].rcpt_to, vec!["ok@rcpt.test".to_string()]);
    assert_eq!(rig.mx[1].messages().len(), 1);

    let dsn = rig.mx[2].messages();
    assert_eq!(dsn.len(), 1, "exactly one bounce");
    assert_eq!(dsn[0].mail_from, "", "a bounce has the null sender");
    assert_eq!(dsn[0].rcpt_to, vec!["alice@sender.test".to_string()]);
    let text = String::from_utf8_lossy(&dsn[0].data);
    for needle in [
        "multipart/report; report-type=delivery-status",
        "message/delivery-status",
        "Final-Recipient: rfc822; nobody@rcpt.test",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        "Remote-MTA: dns; mx1.rcpt.test",
        "Subject: relay test bounce",
    ] {
        assert!(text.contains(needle), "bounce lacks {needle:?}:\n{text}");
    }
    assert!(!text.contains("Final-Recipient: rfc822; ok@rcpt.test"));

    // A bounce is never bounced: a null-sender message that fails just ends.
    let msg = message("bb", "", "nobody@rcpt.test", "hi\r\n");
    let reply = submit(rig.addr, "", &["nobody@rcpt.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    assert_eq!(rig.mx[2].messages().len(), 1, "a bounce was bounced");
}

#[tokio::test]
async fn null_mx_and_missing_domains_bounce_at_once() {
    let rig = Rig::start(
        vec![("mx1.sender.test", 25, SmtpOptions::new("mx1.sender.test"))],
        "",
    )
    .await;
    let dns = &rig.world.dns;
    dns.set_mx("sender.test", &[(10, "mx1.sender.test")]);
    dns.set_mx("nullmx.test", &[(0, ".")]);
    let msg = message("nullmx", "alice@sender.test", "a@nullmx.test", "hi\r\n");
    let reply = submit(
        rig.addr,
        "alice@sender.test",
        &["a@nullmx.test", "b@nonexistent.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    let dsn = rig.mx[0].messages();
    assert_eq!(dsn.len(), 1);
    let text = String::from_utf8_lossy(&dsn[0].data);
    assert!(text.contains("Status: 5.1.10"), "{text}");
    assert!(text.contains("null MX"), "{text}");
    assert!(text.contains("Status: 5.1.2"), "{text}");
}

#[tokio::test]
async fn queue_lifetime_expiry_bounces_what_is_left() {
    let rig = Rig::start(
        vec![
            (
                "mx1.slow.test",
                26,
                SmtpOptions::new("mx1.slow.test").data_reply("451 4.3.0 busy"),
            ),
            ("mx1.sender.test", 27, SmtpOptions::new("mx1.sender.test")),
        ],
        "queue_lifetime = \"3s\"",
    )
    .await;
    let dns = &rig.world.dns;
    dns.set_mx("slow.test", &[(10, "mx1.slow.test")]);
    dns.set_mx("sender.test", &[(10, "mx1.sender.test")]);
    let msg = message("life", "alice@sender.test", "bob@slow.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@slow.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    let dsn = rig.mx[1].messages();
    assert_eq!(dsn.len(), 1);
    let text = String::from_utf8_lossy(&dsn[0].data);
    assert!(text.contains("Status: 4.3.0"), "{text}");
    assert!(text.contains("queue lifetime"), "{text}");
    assert!(text.contains("451 4.3.0 busy"), "{text}");
    assert!(rig.mx[0].commands().iter().filter(|c| *c == "DATA").count() >= 2);
}

#[tokio::test]
async fn clients_outside_the_allowed_networks_cannot_relay() {
    let rig = Rig::start(
        vec![("mx1.open.test", 28, SmtpOptions::new("mx1.open.test"))],
        "allowed_networks = [\"127.0.0.1/32\"]",
    )
    .await;
    rig.world.dns.set_mx("open.test", &[(10, "mx1.open.test")]);
    let msg = message("open", "spam@evil.test", "bob@open.test", "buy\r\n");
    let reply = submit_from(
        Some(IpAddr::V4(ip(99))),
        rig.addr,
        "spam@evil.test",
        &["bob@open.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 554, "{reply}");
    assert!(
        reply.first_line().contains("relay access denied"),
        "{reply}"
    );

    // Even a client that ignores the greeting gets nothing through.
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(IpAddr::V4(ip(99)), 0))
        .expect("bind");
    let tcp = s.connect(rig.addr).await.expect("connect");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(5));
    assert_eq!(c.read_reply().await.expect("greeting").code, 554);
    for cmd in [
        "EHLO evil.test",
        "MAIL FROM:<spam@evil.test>",
        "RCPT TO:<bob@open.test>",
        "DATA",
    ] {
        let r = c.command(cmd).await.expect("reply");
        assert_eq!(r.code, 503, "{cmd}: {r}");
    }
    assert_eq!(c.command("QUIT").await.expect("QUIT").code, 221);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.queue.is_empty());
    assert_eq!(rig.mx[0].connections(), 0);

    // The allowed network still relays.
    let reply = submit(rig.addr, "alice@sender.test", &["bob@open.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
}

#[tokio::test]
async fn oversized_messages_are_refused_with_552() {
    let rig = Rig::start(
        vec![("mx1.big.test", 29, SmtpOptions::new("mx1.big.test"))],
        "max_message_size = 4096",
    )
    .await;
    let tcp = TcpStream::connect(rig.addr).await.expect("connect");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(5));
    c.read_reply().await.expect("greeting");
    let ehlo = c.ehlo("client.test").await.expect("EHLO");
    assert!(ehlo.has("SIZE"));
    assert!(ehlo.extensions.contains(&"SIZE 4096".to_string()));
    let r = c
        .command("MAIL FROM:<alice@sender.test> SIZE=5000")
        .await
        .expect("MAIL");
    assert_eq!(r.code, 552, "{r}");

    // Without SIZE the limit applies at the end of the data.
    let big = "x".repeat(70) + "\r\n";
    let msg = message("big", "alice@sender.test", "bob@big.test", &big.repeat(100));
    let reply = submit(rig.addr, "alice@sender.test", &["bob@big.test"], &msg).await;
    assert_eq!(reply.code, 552, "{reply}");
    assert!(rig.queue.is_empty());
    assert_eq!(
        std::fs::read_dir(rig.queue.spool().dir().join("incoming"))
            .expect("incoming dir")
            .count(),
        0,
        "a refused message left a spool file"
    );
}

/// The code of each reply (continuation lines of EHLO left out).
fn reply_codes(replies: &[String]) -> Vec<&str> {
    replies
        .iter()
        .filter(|l| !l.starts_with("250-"))
        .map(|l| l.get(..3).unwrap_or(l))
        .collect()
}

/// Sends raw bytes and reads the replies that arrive within a moment.
async fn raw_session(addr: SocketAddr, script: &[&[u8]]) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    for chunk in script {
        // The server may hang up mid-script; what it said is still read.
        if tcp.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tcp.shutdown().await;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn protocol_errors_get_the_right_codes() {
    let rig = Rig::start(
        vec![("mx1.proto.test", 30, SmtpOptions::new("mx1.proto.test"))],
        "",
    )
    .await;
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    let replies = raw_session(
        rig.addr,
        &[
            b"MAIL FROM:<a@sender.test>\r\n",
            b"EHLO client.test\r\n",
            b"RCPT TO:<b@proto.test>\r\n",
            b"DATA\r\n",
            b"FROB\r\n",
            b"VRFY root\r\n",
            b"MAIL FROM:a@sender.test\r\n",
            long.as_bytes(),
            b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<b@[127.0.0.1]>\r\nRCPT TO:<b@proto.test>\r\nNOOP\r\n",
            b"QUIT\r\n",
        ],
    )
    .await;
    let codes = reply_codes(&replies);
    assert_eq!(
        codes,
        [
            "220", "503", "250", "503", "503", "500", "502", "501", "500", "250", "550", "550",
            "250", "250", "221"
        ],
        "{replies:#?}"
    );
}

#[tokio::test]
async fn bare_lf_never_ends_the_data_smuggling_is_refused() {
    let rig = Rig::start(
        vec![("mx1.smuggle.test", 31, SmtpOptions::new("mx1.smuggle.test"))],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("smuggle.test", &[(10, "mx1.smuggle.test")]);
    let replies = raw_session(
        rig.addr,
        &[
            b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@smuggle.test>\r\nDATA\r\n",
            b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@smuggle.test>\r\n.\r\n",
            b"QUIT\r\n",
        ],
    )
    .await;
    let queued: Vec<&String> = replies.iter().filter(|l| l.contains("queued as")).collect();
    assert_eq!(queued.len(), 1, "{replies:#?}");
    assert!(rig.wait_empty(LIMIT).await);
    let got = rig.mx[0].messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, vec!["b@smuggle.test".to_string()]);
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains("MAIL FROM:<evil@sender.test>"), "{data}");
}

#[tokio::test]
async fn too_many_errors_end_the_session() {
    let rig = Rig::start(
        vec![("mx1.err.test", 32, SmtpOptions::new("mx1.err.test"))],
        "",
    )
    .await;
    let script = "FROB\r\n".repeat(30);
    let replies = raw_session(rig.addr, &[script.as_bytes()]).await;
    assert_eq!(replies.last().map(|l| &l[..3]), Some("421"), "{replies:#?}");
    assert!(replies.len() <= 22, "{}", replies.len());
}

#[tokio::test]
async fn queued_mail_survives_a_restart_of_the_relay() {
    let rig = Rig::start(
        vec![(
            "mx1.later.test",
            33,
            SmtpOptions::new("mx1.later.test").data_reply("451 4.3.0 not now"),
        )],
        "",
    )
    .await;
    rig.world
        .dns
        .set_mx("later.test", &[(10, "mx1.later.test")]);
    let msg = message("later", "alice@sender.test", "bob@later.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@later.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("refused the message", LIMIT).await;

    // A second relay over the same state directory (the first stopped)
    // picks the message up and delivers it once the MX accepts.
    let _ = rig.stop.send(true);
    rig.task.abort();
    rig.mx[0].set_options(SmtpOptions::new("mx1.later.test"));
    let text = format!("{}{}", rig.world.config_toml(), relay_toml(rig.mx_port, ""));
    let config = Config::parse(&text, std::path::Path::new("t.toml")).expect("config");
    // The first relay's resolver still holds the policy store open; the
    // queue is what this test is about.
    let store = mta_sts_agent::store::PolicyStore::memory_only(100);
    let resolver =
        mta_sts_agent::resolver::Resolver::from_config(&config, store).expect("resolver");
    let relay = Relay::open(&config, resolver).await.expect("reopen");
    assert_eq!(relay.queue.len(), 1);
    let queue = relay.queue.clone();
    let (_stop, rx) = watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let task = tokio::spawn(relay.serve(vec![listener], rx));
    let ok = eventually(LIMIT, || {
        let q = queue.clone();
        async move { q.is_empty() }
    })
    .await;
    task.abort();
    assert!(ok, "queue: {:#?}", queue.list());
    assert_eq!(received_with(&rig.mx[0], "later"), 1);
}

#[tokio::test]
async fn starttls_for_clients_with_the_configured_certificate() {
    let world_ca = crate::support::ca::TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The rig makes its own CA for the MX hosts; the relay's own
    // certificate comes from another, as at a real site.
    let (cert, key) = world_ca
        .issue(&["relay.test"])
        .write_pem(dir.path(), "relay");
    let extra = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        cert.display(),
        key.display()
    );
    let rig = Rig::start(
        vec![("mx1.tls.test", 34, SmtpOptions::new("mx1.tls.test"))],
        &extra,
    )
    .await;
    rig.world.dns.set_mx("tls.test", &[(10, "mx1.tls.test")]);

    let tcp = TcpStream::connect(rig.addr).await.expect("connect");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(5));
    c.read_reply().await.expect("greeting");
    assert!(c.ehlo("client.test").await.expect("EHLO").has("STARTTLS"));
    // Pipelined after STARTTLS: must be discarded, never answered.
    c.write_raw(b"STARTTLS\r\nNOOP\r\n").await.expect("write");
    assert_eq!(c.read_reply().await.expect("220").code, 220);
    let (tcp, leftover) = c.into_parts();
    assert!(leftover.is_empty(), "the server answered the injected NOOP");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(world_ca.cert_der()).expect("CA");
    let prober = mta_sts_agent::tlsprobe::TlsProber::with_roots(
        roots,
        "test CA".into(),
        Duration::from_secs(5),
    );
    let (tls, report) = prober
        .handshake(tcp, "relay.test", &[])
        .await
        .expect("handshake");
    assert_eq!(report.cert, Ok(()));
    let mut c = SmtpConn::new(tls, Duration::from_secs(5));
    let ehlo = c.ehlo("client.test").await.expect("EHLO over TLS");
    assert!(!ehlo.has("STARTTLS"));
    let msg = message("tls", "alice@sender.test", "bob@tls.test", "hi\r\n");
    assert!(c
        .command("MAIL FROM:<alice@sender.test>")
        .await
        .expect("MAIL")
        .is_positive());
    assert!(c
        .command("RCPT TO:<bob@tls.test>")
        .await
        .expect("RCPT")
        .is_positive());
    assert_eq!(c.command("DATA").await.expect("DATA").code, 354);
    c.write_raw(&stuffed(&msg)).await.expect("body");
    assert_eq!(c.read_reply().await.expect("end").code, 250);
    c.quit().await;
    assert!(rig.wait_empty(LIMIT).await);
    let data = String::from_utf8_lossy(&rig.mx[0].messages()[0].data).into_owned();
    assert!(data.contains("with ESMTPS id"), "{data}");
}

#[test]
fn relay_config_is_checked() {
    let bad = [
        (
            "[relay]\nallowed_networks = [\"10.0.0.0/33\"]",
            "relay.allowed_networks",
        ),
        ("[relay]\ntls_cert_file = \"/x.pem\"", "relay.tls_cert_file"),
        ("[relay]\nretry_schedule = []", "relay.retry_schedule"),
        ("[relay]\nmax_deliveries = 0", "relay.max_deliveries"),
        ("[relay]\nmax_message_size = 10", "relay.max_message_size"),
        (
            "[relay]\nlisten = [\"localhost:25\"]",
            "invalid socket address",
        ),
    ];
    for (text, key) in bad {
        let err = Config::parse(text, std::path::Path::new("t.toml"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let c = Config::parse("", std::path::Path::new("t.toml")).expect("defaults");
    assert!(c.relay.listen.is_empty(), "the relay is off by default");
    assert_eq!(c.relay.queue_lifetime, Duration::from_secs(5 * 86_400));
}

#[tokio::test]
async fn auth_lets_application_clients_relay_only_after_tls() {
    let relay_ca = crate::support::ca::TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = relay_ca
        .issue(&["relay.test"])
        .write_pem(dir.path(), "relay");
    let users = dir.path().join("users");
    let line = mta_sts_agent::relay::auth::password_line("app", b"correct horse", 1000)
        .expect("password line");
    std::fs::write(&users, format!("{line}\n")).expect("users file");
    let extra = format!(
        "allowed_networks = [\"127.0.0.1/32\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nauth_users_file = \"{}\"",
        cert.display(),
        key.display(),
        users.display()
    );
    let rig = Rig::start(
        vec![("mx1.auth.test", 35, SmtpOptions::new("mx1.auth.test"))],
        &extra,
    )
    .await;
    rig.world.dns.set_mx("auth.test", &[(10, "mx1.auth.test")]);
    let b64 = |s: &[u8]| mta_sts_agent::relay::auth::encode_b64(s);

    // From outside the allowed networks: served, but no relaying without AUTH,
    // and no AUTH without TLS.
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(IpAddr::V4(ip(98)), 0))
        .expect("bind");
    let tcp = s.connect(rig.addr).await.expect("connect");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(10));
    assert_eq!(c.read_reply().await.expect("greeting").code, 220);
    let ehlo = c.ehlo("app.test").await.expect("EHLO");
    assert!(!ehlo.has("AUTH"), "AUTH offered before TLS");
    let r = c
        .command("MAIL FROM:<app@sender.test>")
        .await
        .expect("MAIL");
    assert_eq!(r.code, 530, "{r}");
    let plain = b64(b"\0app\0correct horse");
    let r = c
        .command(&format!("AUTH PLAIN {plain}"))
        .await
        .expect("AUTH");
    assert_eq!(r.code, 538, "{r}");
    assert_eq!(c.command("STARTTLS").await.expect("STARTTLS").code, 220);
    let (tcp, _) = c.into_parts();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(relay_ca.cert_der()).expect("CA");
    let prober = mta_sts_agent::tlsprobe::TlsProber::with_roots(
        roots,
        "relay CA".into(),
        Duration::from_secs(5),
    );
    let (tls, _) = prober.handshake(tcp, "relay.test", &[]).await.expect("TLS");
    let mut c = SmtpConn::new(tls, Duration::from_secs(10));
    let ehlo = c.ehlo("app.test").await.expect("EHLO");
    assert!(ehlo.extensions.contains(&"AUTH PLAIN LOGIN".to_string()));
    let wrong = b64(b"\0app\0wrong");
    let r = c
        .command(&format!("AUTH PLAIN {wrong}"))
        .await
        .expect("AUTH");
    assert_eq!(r.code, 535, "{r}");
    assert_eq!(
        c.command("MAIL FROM:<app@sender.test>")
            .await
            .expect("MAIL")
            .code,
        530
    );
    // LOGIN, answered step by step.
    assert_eq!(c.command("AUTH LOGIN").await.expect("AUTH").code, 334);
    assert_eq!(c.command(&b64(b"app")).await.expect("user").code, 334);
    let r = c.command(&b64(b"correct horse")).await.expect("password");
    assert_eq!(r.code, 235, "{r}");
    assert!(c
        .command("MAIL FROM:<app@sender.test>")
        .await
        .expect("MAIL")
        .is_positive());
    assert!(c
        .command("RCPT TO:<bob@auth.test>")
        .await
        .expect("RCPT")
        .is_positive());
    assert_eq!(c.command("DATA").await.expect("DATA").code, 354);
    let msg = message("auth", "app@sender.test", "bob@auth.test", "hi\r\n");
    c.write_raw(&stuffed(&msg)).await.expect("body");
    assert_eq!(c.read_reply().await.expect("end").code, 250);
    c.quit().await;
    assert!(rig.wait_empty(LIMIT).await);
    assert_eq!(received_with(&rig.mx[0], "auth"), 1);

    // AUTH needs TLS configured: refused at start-up otherwise.
    let err = Config::parse(
        "[relay]\nauth_users_file = \"/etc/users\"",
        std::path::Path::new("t.toml"),
    )
    .expect_err("AUTH without TLS")
    .to_string();
    assert!(err.contains("relay.tls_cert_file"), "{err}");
}

#[tokio::test]
async fn ipv6_addresses_are_tried_after_ipv4_and_mx_hosts_are_bounded() {
    let rig = Rig::start(
        vec![
            (
                "busy.v6.test",
                36,
                SmtpOptions::new("busy.v6.test").greeting(421, "busy.v6.test too busy"),
            ),
            ("never.v6.test", 37, SmtpOptions::new("never.v6.test")),
        ],
        "max_mx_hosts = 2",
    )
    .await;
    let v6 = SmtpServer::start_on(
        &rig.world.ca,
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        rig.mx_port,
        SmtpOptions::new("mx6.v6.test"),
    )
    .await
    .expect("an SMTP fixture on [::1] with the group's port");
    let dns = &rig.world.dns;
    // IPv4 first: nothing listens on 127.0.0.38, so the AAAA address is next.
    dns.set_a("mx6.v6.test", &[ip(38)]);
    dns.set_aaaa("mx6.v6.test", &[std::net::Ipv6Addr::LOCALHOST]);
    dns.set_mx(
        "v6.test",
        &[
            (5, "busy.v6.test"),
            (10, "mx6.v6.test"),
            (20, "never.v6.test"),
        ],
    );
    publish_enforce(&rig.world, "v6.test", &["*.v6.test"]);
    let msg = message("v6", "alice@sender.test", "bob@v6.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@v6.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "queue: {:#?}",
        rig.queue.list()
    );
    assert_eq!(received_with(&v6, "v6"), 1);
    assert!(v6.messages()[0].tls);
    assert!(rig.mx[0].connections() >= 1, "the preferred MX was skipped");

    // With the first two hosts failing, max_mx_hosts = 2 keeps the third
    // from ever being tried.
    drop(v6);
    dns.set_aaaa("mx6.v6.test", &[]);
    let msg = message("v6b", "alice@sender.test", "bob@v6.test", "hi\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@v6.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("busy.v6.test too busy", LIMIT).await;
    assert_eq!(rig.mx[1].connections(), 0, "a third MX host was tried");
}

#[tokio::test]
async fn recipient_command_and_time_limits_hold() {
    let rig = Rig::start(
        vec![("mx1.limits.test", 39, SmtpOptions::new("mx1.limits.test"))],
        "max_recipients = 2\nmax_commands = 8\ncommand_timeout = \"1s\"",
    )
    .await;
    let replies = raw_session(
        rig.addr,
        &[b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<a@limits.test>\r\nRCPT TO:<b@limits.test>\r\nRCPT TO:<c@limits.test>\r\nRSET\r\nNOOP\r\nNOOP\r\nNOOP\r\n"],
    )
    .await;
    let codes = reply_codes(&replies);
    // The third recipient: 452 4.5.3; the ninth command: 421 and the end.
    assert_eq!(
        codes,
        ["220", "250", "250", "250", "250", "452", "250", "250", "250", "421"],
        "{replies:#?}"
    );
    assert!(replies.iter().any(|l| l.starts_with("452 4.5.3")));

    // A client that goes silent is told 421 4.4.2 and disconnected.
    use tokio::io::AsyncReadExt;
    let mut tcp = TcpStream::connect(rig.addr).await.expect("connect");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("421 4.4.2"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_overlong_data_line_refuses_the_message_but_ends_the_data() {
    let rig = Rig::start(
        vec![("mx1.long.test", 40, SmtpOptions::new("mx1.long.test"))],
        "",
    )
    .await;
    let long = format!("Subject: x\r\n\r\n{}\r\n.\r\n", "y".repeat(70_000));
    let replies = raw_session(
        rig.addr,
        &[
            b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@long.test>\r\nDATA\r\n",
            long.as_bytes(),
            b"NOOP\r\nQUIT\r\n",
        ],
    )
    .await;
    assert_eq!(
        reply_codes(&replies),
        ["220", "250", "250", "250", "354", "500", "250", "221"],
        "{replies:#?}"
    );
    assert!(rig.queue.is_empty());
}
