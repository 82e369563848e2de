//! The relay's client-facing session under attack, on real sockets: SMTP
//! smuggling in and out (the published variants, with and without an
//! over-long line), slots held by trickling, refused or greedy clients, and
//! AUTH guessing (timing, rate, CPU).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mta_sts_agent::config::Config;
use mta_sts_agent::relay::auth::Users;
use mta_sts_agent::relay::{Queue, Relay};
use mta_sts_agent::smtp::SmtpConn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::{eventually, World};
use crate::relay::{ip, relay_toml};
use crate::support::ca::TestCa;
use crate::support::smtp::{SmtpOptions, SmtpServer};

const LIMIT: Duration = Duration::from_secs(15);

/// The published smuggling variants (SEC Consult, December 2023).
const VARIANTS: [&[u8]; 5] = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n"];

/// A forged second transaction, ended by a real end of data.
const FORGED: &[u8] = b"MAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@smuggle.test>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n.\r\n";

struct SRig {
    world: World,
    mx: Vec<SmtpServer>,
    addr: SocketAddr,
    queue: Queue,
    users: Option<Arc<Users>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for SRig {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

impl SRig {
    /// MX fixtures on `127.0.0.x`, or none and `port` as the delivery
    /// port; `extra` goes into `[relay]`.
    async fn start(hosts: Vec<(&str, u8)>, port: Option<u16>, extra: &str) -> SRig {
        let world = World::new().await;
        let group = hosts
            .iter()
            .map(|(name, last)| (IpAddr::V4(ip(*last)), SmtpOptions::new(name)))
            .collect();
        let (mx_port, mx) = if hosts.is_empty() {
            (port.unwrap_or(25), Vec::new())
        } else {
            SmtpServer::start_group(&world.ca, group).await
        };
        for (name, last) in &hosts {
            world.dns.set_a(name, &[ip(*last)]);
        }
        let text = format!("{}{}", world.config_toml(), relay_toml(mx_port, extra));
        let config = Config::parse(&text, std::path::Path::new("relay-session-test.toml"))
            .expect("relay test config");
        let resolver = world.resolver_with(&config);
        let relay = Relay::open(&config, resolver)
            .await
            .expect("open the relay");
        let queue = relay.queue.clone();
        let users = relay.auth_users();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(relay.serve(vec![listener], stop_rx));
        SRig {
            world,
            mx,
            addr,
            queue,
            users,
            stop,
            task,
        }
    }

    async fn wait_empty(&self) -> bool {
        let q = self.queue.clone();
        eventually(LIMIT, || {
            let q = q.clone();
            async move { q.is_empty() }
        })
        .await
    }
}

async fn connect_from(local: Option<IpAddr>, addr: SocketAddr) -> TcpStream {
    match local {
        Some(ip) => {
            let s = TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::new(ip, 0)).expect("bind client address");
            s.connect(addr).await.expect("connect to the relay")
        }
        None => TcpStream::connect(addr)
            .await
            .expect("connect to the relay"),
    }
}

/// Sends raw chunks, then reads every reply until the server hangs up.
async fn raw(addr: SocketAddr, script: &[&[u8]]) -> Vec<String> {
    let mut tcp = connect_from(None, addr).await;
    for chunk in script {
        if tcp.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with("250-"))
        .map(str::to_string)
        .collect()
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies.iter().map(|l| l.get(..3).unwrap_or(l)).collect()
}

const OPEN: &[u8] =
    b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@smuggle.test>\r\nDATA\r\n";

/// RFC 5321 §4.1.1.4: only CRLF.CRLF ends the data. Each variant stays in
/// the one message, which the MX receives byte for byte as the rule says
/// (every ending CRLF, the lone dot kept); the forged transaction is never
/// queued.
#[tokio::test]
async fn no_smuggling_variant_ends_the_data_and_one_message_arrives_byte_exact() {
    let rig = SRig::start(vec![("mx1.smuggle.test", 71)], None, "").await;
    rig.world
        .dns
        .set_mx("smuggle.test", &[(10, "mx1.smuggle.test")]);
    for (i, variant) in VARIANTS.iter().enumerate() {
        let mut body = format!("Subject: v{i}\r\n\r\nbody").into_bytes();
        body.extend_from_slice(variant);
        body.extend_from_slice(FORGED);
        let replies = raw(rig.addr, &[OPEN, &body, b"QUIT\r\n"]).await;
        assert_eq!(
            codes(&replies),
            ["220", "250", "250", "250", "354", "250", "221"],
            "variant {variant:?}: {replies:#?}"
        );
    }
    assert!(rig.wait_empty().await, "queue: {:#?}", rig.queue.list());
    let got = rig.mx[0].messages();
    assert_eq!(got.len(), VARIANTS.len(), "{got:#?}");
    for (i, variant) in VARIANTS.iter().enumerate() {
        let expected = format!(
            "Subject: v{i}\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@smuggle.test>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n"
        );
        let m = got
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("Subject: v{i}\r\n")))
            .unwrap_or_else(|| panic!("variant {variant:?} never arrived"));
        assert_eq!(m.rcpt_to, vec!["b@smuggle.test".to_string()]);
        assert_eq!(m.mail_from, "a@sender.test");
        assert!(
            m.data.ends_with(expected.as_bytes()),
            "variant {variant:?}: {:?}",
            String::from_utf8_lossy(&m.data)
        );
        let trace = &m.data[..m.data.len() - expected.len()];
        let trace = String::from_utf8_lossy(trace);
        assert!(trace.starts_with("Received: from c.test"), "{trace:?}");
        assert!(!trace.contains("Subject"), "{trace:?}");
    }
    assert!(got
        .iter()
        .all(|m| !m.rcpt_to.iter().any(|r| r.contains("victim"))));
}

/// An over-long line keeps its ending: whatever follows it, the data ends
/// only at a real CRLF.CRLF, the message is refused there (500), and the
/// session stays in step (the forged commands are never read as commands).
#[tokio::test]
async fn an_overlong_line_followed_by_any_variant_never_ends_the_data_early() {
    let rig = SRig::start(vec![("mx1.smuggle.test", 72)], None, "").await;
    rig.world
        .dns
        .set_mx("smuggle.test", &[(10, "mx1.smuggle.test")]);
    for variant in VARIANTS {
        let mut body = b"Subject: long\r\n\r\n".to_vec();
        body.extend_from_slice(&b"y".repeat(70_000));
        body.extend_from_slice(variant);
        body.extend_from_slice(FORGED);
        let replies = raw(rig.addr, &[OPEN, &body, b"QUIT\r\n"]).await;
        assert_eq!(
            codes(&replies),
            ["220", "250", "250", "250", "354", "500", "221"],
            "variant {variant:?}: {replies:#?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rig.queue.is_empty(), "queued: {:#?}", rig.queue.list());
    assert!(rig.mx[0].messages().is_empty());
}

/// A minimal MX that records the raw octets of each DATA phase.
async fn raw_mx(listener: TcpListener, seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    async fn line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = buf.drain(..=pos).collect();
                return Some(String::from_utf8_lossy(&l).trim_end().to_string());
            }
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    ) -> Option<()> {
        let mut buf = Vec::new();
        s.write_all(b"220 mx.raw.test\r\n").await.ok()?;
        loop {
            let l = line(&mut s, &mut buf).await?;
            let verb = l.get(..4).unwrap_or("").to_ascii_uppercase();
            match verb.as_str() {
                "DATA" => {
                    s.write_all(b"354 go\r\n").await.ok()?;
                    let mut chunk = [0u8; 4096];
                    while !buf.ends_with(b"\r\n.\r\n") {
                        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                            .await
                            .ok()?
                            .ok()?;
                        if n == 0 || buf.len() > 1 << 20 {
                            return None;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    seen.lock().ok()?.push(std::mem::take(&mut buf));
                    s.write_all(b"250 ok\r\n").await.ok()?;
                }
                "QUIT" => {
                    s.write_all(b"221 bye\r\n").await.ok()?;
                    return Some(());
                }
                _ => s.write_all(b"250 ok\r\n").await.ok()?,
            }
        }
    }
    while let Ok((tcp, _)) = listener.accept().await {
        tokio::spawn(serve(tcp, seen.clone()));
    }
}

/// Output side of the rule: a stored message with bare CR and LF (an old
/// spool, a message the relay wrote itself) goes out with only CRLF line
/// endings and stuffed dots, so no receiver, however lax, sees an end of
/// data before the real one.
#[tokio::test]
async fn outbound_data_has_only_crlf_and_a_single_end_of_data() {
    let listener = TcpListener::bind((ip(73), 0)).await.expect("bind raw MX");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mx = tokio::spawn(raw_mx(listener, seen.clone()));
    let rig = SRig::start(vec![], Some(port), "").await;
    rig.world.dns.set_mx("raw.test", &[(10, "mx.raw.test")]);
    rig.world.dns.set_a("mx.raw.test", &[ip(73)]);
    let mut body = b"Subject: out\r\n\r\na".to_vec();
    for v in VARIANTS {
        body.extend_from_slice(v);
        body.extend_from_slice(b"MAIL FROM:<evil@sender.test>\r\n");
    }
    body.extend_from_slice(b"last\rline\n.");
    let envelope = mta_sts_agent::relay::spool::Envelope {
        id: String::new(),
        sender: "a@sender.test".to_string(),
        recipients: vec!["b@raw.test".to_string()],
        arrival: mta_sts_agent::store::unix_now(),
        client: "test".to_string(),
        smtputf8: false,
        ..Default::default()
    };
    let mut writer = rig.queue.spool().create(envelope).expect("spool file");
    writer.write(&body).expect("write");
    let msg = writer.commit().expect("commit");
    rig.queue.accept(msg);
    let got = eventually(LIMIT, || {
        let seen = seen.clone();
        async move { seen.lock().map(|s| !s.is_empty()).unwrap_or(false) }
    })
    .await;
    assert!(got, "nothing delivered; queue: {:#?}", rig.queue.list());
    let wire = seen.lock().expect("seen")[0].clone();
    mx.abort();
    for (i, w) in wire.windows(2).enumerate() {
        let bare_lf = w[1] == b'\n' && w[0] != b'\r';
        let bare_cr = w[0] == b'\r' && w[1] != b'\n';
        assert!(
            !bare_lf && !bare_cr,
            "bare line ending at {i}: {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
    if wire.first() == Some(&b'\n') {
        panic!("bare LF at the start");
    }
    let ends = wire.windows(5).filter(|w| w == b"\r\n.\r\n").count();
    assert_eq!(ends, 1, "{:?}", String::from_utf8_lossy(&wire));
    assert!(
        wire.ends_with(b"\r\nlast\r\nline\r\n..\r\n.\r\n"),
        "{:?}",
        String::from_utf8_lossy(&wire)
    );
}

/// Reads until `needle` arrives or the server hangs up; returns what came
/// and when.
async fn read_until(tcp: &mut TcpStream, needle: &str, limit: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + limit;
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(end, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `text` one byte every 300 ms (each byte well within the timeout)
/// until the server hangs up; returns what the server said and how long
/// the trickle lasted.
async fn trickle(tcp: &mut TcpStream, text: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for &b in text.iter().cycle().take(100) {
        if tcp.write_all(&[b]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&got).contains("421") {
            break;
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Item 5: `command_timeout` is a deadline for the whole line and
/// `data_deadline` for the whole DATA phase; a byte now and then resets
/// neither.
#[tokio::test]
async fn a_trickling_client_is_cut_at_the_deadline() {
    let rig = SRig::start(
        vec![("mx1.slow.test", 74)],
        None,
        "command_timeout = \"2s\"\ndata_deadline = \"3s\"",
    )
    .await;
    let mut tcp = connect_from(None, rig.addr).await;
    assert!(read_until(&mut tcp, "220 ", LIMIT).await.contains("220 "));
    let (said, took) = trickle(&mut tcp, b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP").await;
    assert!(said.contains("421 4.4.2"), "{said:?} after {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "the command deadline took {took:?}"
    );

    let mut tcp = connect_from(None, rig.addr).await;
    tcp.write_all(b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@slow.test>\r\nDATA\r\n")
        .await
        .expect("write");
    assert!(read_until(&mut tcp, "354 ", LIMIT).await.contains("354 "));
    let (said, took) = trickle(&mut tcp, b"slow data\r\n").await;
    assert!(said.contains("421 4.4.2"), "{said:?} after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "the data deadline took {took:?}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "cut before the deadline: {took:?}"
    );
    assert!(rig.queue.is_empty());
}

/// Refused clients are refused before they take a session slot: a crowd of
/// them does not lock an allowed client out.
#[tokio::test]
async fn many_refused_clients_do_not_lock_out_an_allowed_one() {
    let rig = SRig::start(
        vec![("mx1.crowd.test", 75)],
        None,
        "allowed_networks = [\"127.0.0.1/32\"]\nmax_connections = 2",
    )
    .await;
    rig.world
        .dns
        .set_mx("crowd.test", &[(10, "mx1.crowd.test")]);
    let mut crowd = Vec::new();
    for _ in 0..8 {
        let mut tcp = connect_from(Some(IpAddr::V4(ip(99))), rig.addr).await;
        let said = read_until(&mut tcp, "\r\n", LIMIT).await;
        assert!(said.starts_with("554"), "{said:?}");
        crowd.push(tcp);
    }
    let msg = crate::relay::message("crowd", "alice@sender.test", "bob@crowd.test", "hi\r\n");
    let reply =
        crate::relay::submit(rig.addr, "alice@sender.test", &["bob@crowd.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    drop(crowd);
}

/// One address holds at most `max_connections_per_client` sessions; other
/// clients still get in.
#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let rig = SRig::start(
        vec![("mx1.greedy.test", 76)],
        None,
        "max_connections = 4\nmax_connections_per_client = 2",
    )
    .await;
    rig.world
        .dns
        .set_mx("greedy.test", &[(10, "mx1.greedy.test")]);
    let greedy = IpAddr::V4(ip(1));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = connect_from(Some(greedy), rig.addr).await;
        assert!(read_until(&mut tcp, "\r\n", LIMIT).await.starts_with("220"));
        held.push(tcp);
    }
    for _ in 0..3 {
        let mut tcp = connect_from(Some(greedy), rig.addr).await;
        let said = read_until(&mut tcp, "\r\n", LIMIT).await;
        assert!(said.starts_with("421 4.7.0"), "{said:?}");
    }
    let msg = crate::relay::message("greedy", "alice@sender.test", "bob@greedy.test", "hi\r\n");
    let reply = crate::relay::submit_from(
        Some(IpAddr::V4(ip(2))),
        rig.addr,
        "alice@sender.test",
        &["bob@greedy.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    // A slot given back is usable again by the same address.
    drop(held.pop());
    let addr = rig.addr;
    let ok = eventually(LIMIT, || async move {
        let mut tcp = connect_from(Some(greedy), addr).await;
        read_until(&mut tcp, "\r\n", Duration::from_secs(2))
            .await
            .starts_with("220")
    })
    .await;
    assert!(ok);
}

/// An AUTH rig: TLS, a users file with `app` (password "correct horse").
async fn auth_rig(extra: &str, iterations: u32) -> (SRig, TestCa, tempfile::TempDir) {
    let relay_ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = relay_ca
        .issue(&["relay.test"])
        .write_pem(dir.path(), "relay");
    let users = dir.path().join("users");
    let line = mta_sts_agent::relay::auth::password_line("app", b"correct horse", iterations)
        .expect("password line");
    std::fs::write(&users, format!("{line}\n")).expect("users file");
    let extra = format!(
        "allowed_networks = [\"127.0.0.1/32\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nauth_users_file = \"{}\"\n{extra}",
        cert.display(),
        key.display(),
        users.display()
    );
    let rig = SRig::start(vec![("mx1.auth.test", 77)], None, &extra).await;
    (rig, relay_ca, dir)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A client from `local`, after EHLO, STARTTLS and EHLO again.
async fn tls_client(rig: &SRig, ca: &TestCa, local: IpAddr) -> SmtpConn<Tls> {
    let tcp = connect_from(Some(local), rig.addr).await;
    let mut c = SmtpConn::new(tcp, Duration::from_secs(30));
    assert_eq!(c.read_reply().await.expect("greeting").code, 220);
    c.ehlo("app.test").await.expect("EHLO");
    assert_eq!(c.command("STARTTLS").await.expect("STARTTLS").code, 220);
    let (tcp, _) = c.into_parts();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).expect("CA");
    let prober = mta_sts_agent::tlsprobe::TlsProber::with_roots(
        roots,
        "relay CA".into(),
        Duration::from_secs(10),
    );
    let (tls, _) = prober.handshake(tcp, "relay.test", &[]).await.expect("TLS");
    let mut c = SmtpConn::new(tls, Duration::from_secs(30));
    c.ehlo("app.test").await.expect("EHLO over TLS");
    c
}

fn plain(user: &str, pass: &str) -> String {
    let raw = format!("\0{user}\0{pass}");
    format!(
        "AUTH PLAIN {}",
        mta_sts_agent::relay::auth::encode_b64(raw.as_bytes())
    )
}

/// Item 6: an unknown user costs the same PBKDF2 run as a known one (so
/// timing tells nothing), and an address over the failure limit is held
/// back, without any PBKDF2 work, until its back-off is over.
#[tokio::test]
async fn auth_unknown_users_cost_pbkdf2_and_failing_addresses_back_off() {
    let (rig, ca, _dir) = auth_rig("auth_max_failures = 2\nauth_backoff = \"3s\"", 1000).await;
    let users = rig.users.clone().expect("users");
    let guesser = IpAddr::V4(ip(97));
    let mut c = tls_client(&rig, &ca, guesser).await;
    let r = c.command(&plain("nobody", "guess")).await.expect("AUTH");
    assert_eq!(r.code, 535, "{r}");
    assert_eq!(
        users.pbkdf2_runs(),
        1,
        "an unknown user returned without the PBKDF2 work"
    );
    let r = c.command(&plain("app", "guess")).await.expect("AUTH");
    assert_eq!(r.code, 535, "{r}");
    assert_eq!(users.pbkdf2_runs(), 2);
    // Over the limit: refused at once, even with the right password, and
    // at no CPU cost.
    let r = c
        .command(&plain("app", "correct horse"))
        .await
        .expect("AUTH");
    assert_eq!(r.code, 454, "{r}");
    assert_eq!(users.pbkdf2_runs(), 2);
    // Another address is not held back.
    let mut other = tls_client(&rig, &ca, IpAddr::V4(ip(96))).await;
    let r = other
        .command(&plain("app", "correct horse"))
        .await
        .expect("AUTH");
    assert_eq!(r.code, 235, "{r}");
    // After the back-off the guesser's address may try again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = c
        .command(&plain("app", "correct horse"))
        .await
        .expect("AUTH");
    assert_eq!(r.code, 235, "{r}");
}

/// Item 6: at most `auth_max_parallel` password checks run at once, however
/// many clients authenticate together.
#[tokio::test]
async fn auth_password_checks_are_capped() {
    let (rig, ca, _dir) = auth_rig("auth_max_parallel = 1", 30_000).await;
    let users = rig.users.clone().expect("users");
    let mut clients = Vec::new();
    for n in 0..5u8 {
        clients.push(tls_client(&rig, &ca, IpAddr::V4(ip(90 + n))).await);
    }
    let all = clients.into_iter().map(|mut c| async move {
        c.command(&plain("app", "correct horse"))
            .await
            .map(|r| r.code)
            .unwrap_or(0)
    });
    let codes = futures_join_all(all).await;
    assert_eq!(codes, vec![235; 5]);
    assert_eq!(users.pbkdf2_runs(), 5);
    assert_eq!(users.peak_parallel_runs(), 1);
}

/// Runs every future at once and collects their outputs in order.
async fn futures_join_all<F: std::future::Future<Output = u16> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or(0));
    }
    out
}

/// With AUTH on, clients outside `allowed_networks` may connect, but they
/// hold at most half the session slots: an attacker with many addresses
/// cannot lock the local clients out.
#[tokio::test]
async fn outside_clients_never_take_the_slots_of_allowed_ones() {
    let (rig, _ca, _dir) = auth_rig("max_connections = 4", 1000).await;
    rig.world.dns.set_mx("auth.test", &[(10, "mx1.auth.test")]);
    let mut held = Vec::new();
    let mut greeted = 0;
    for last in 90..94 {
        let mut tcp = connect_from(Some(IpAddr::V4(ip(last))), rig.addr).await;
        let said = read_until(&mut tcp, "\r\n", LIMIT).await;
        if said.starts_with("220") {
            greeted += 1;
        } else {
            assert!(said.starts_with("421 4.7.0"), "{said:?}");
        }
        held.push(tcp);
    }
    assert_eq!(
        greeted,
        mta_sts_agent::relay::server::outside_slots(4),
        "outside clients got more than their share of the slots"
    );
    let msg = crate::relay::message("outside", "alice@sender.test", "bob@auth.test", "hi\r\n");
    let reply = crate::relay::submit(rig.addr, "alice@sender.test", &["bob@auth.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    drop(held);
}

/// RFC 8689 §4.2.2 from a client outside `allowed_networks` that
/// authenticated: `TLS-Required: No` is honoured for it too, so an AUTH
/// user's report reaches a domain whose enforce policy its MX now fails.
#[tokio::test]
async fn tls_required_no_is_honoured_for_an_authenticated_client() {
    let (rig, ca, _dir) = auth_rig("", 1000).await;
    rig.world.dns.set_mx("auth.test", &[(10, "mx1.auth.test")]);
    rig.world.publish(
        "auth.test",
        "a1",
        &crate::harness::policy("enforce", &["mx1.auth.test"], 86_400),
    );
    rig.mx[0].set_options(SmtpOptions::new("mx1.auth.test").starttls(false));
    let mut c = tls_client(&rig, &ca, IpAddr::V4(ip(89))).await;
    let r = c
        .command(&plain("app", "correct horse"))
        .await
        .expect("AUTH");
    assert_eq!(r.code, 235, "{r}");
    for (line, code) in [
        ("MAIL FROM:<app@sender.test>", 250),
        ("RCPT TO:<bob@auth.test>", 250),
        ("DATA", 354),
    ] {
        assert_eq!(c.command(line).await.expect(line).code, code, "{line}");
    }
    c.write_raw(b"TLS-Required: No\r\nSubject: tls report\r\n\r\nbroken\r\n.\r\n")
        .await
        .expect("data");
    assert_eq!(c.read_reply().await.expect("end of data").code, 250);
    assert!(rig.wait_empty().await, "{:#?}", rig.queue.list());
    let got = rig.mx[0].messages();
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls, "the fixture offers no STARTTLS");
}
