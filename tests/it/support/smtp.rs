//! SMTP servers on loopback for probe and relay tests.
//!
//! Each [`SmtpServer`] listens on one `IP:port` of 127/8 (so several MX hosts
//! can share a port on different addresses: see [`SmtpServer::start_group`])
//! and speaks enough ESMTP for a probe or a relay: a configurable greeting,
//! EHLO/HELO (advertising STARTTLS when enabled), STARTTLS with a
//! certificate from the test CA (valid, wrong name, expired or self-signed),
//! MAIL/RCPT/DATA with dot-unstuffing, RSET, NOOP, QUIT. Accepted messages are
//! recorded with their envelope; connections, TLS handshakes and messages
//! are counted.
//!
//! Every read is bounded: a command line is at most 1000 bytes with CRLF
//! (RFC 5321 §4.5.3.1.4 allows 512; we are generous), a message at most
//! [`MAX_MESSAGE`] bytes, and an idle connection is dropped after
//! [`IDLE_TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::ca::{self, TestCa};
use super::https::WRONG_NAME;

/// Longest command or text line accepted, CRLF included.
pub const MAX_LINE: usize = 1000;
/// Largest message accepted in DATA.
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// A connection silent for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which certificate STARTTLS presents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpCert {
    /// From the test CA, for the server's host name, currently valid.
    #[default]
    Valid,
    /// From the test CA, for [`WRONG_NAME`] only.
    WrongName,
    /// From the test CA, for the host name, expired.
    Expired,
    /// For the host name, self-signed.
    SelfSigned,
    /// From the test CA, for the host name, expiring in this many days.
    ExpiringIn(u32),
}

/// How a server behaves.
#[derive(Clone, Debug)]
pub struct SmtpOptions {
    /// The name the server calls itself (EHLO reply, certificate names).
    pub hostname: String,
    /// Advertise and accept STARTTLS.
    pub starttls: bool,
    pub cert: SmtpCert,
    /// Greeting code (220 normally; 554 for a server refusing service).
    pub greeting_code: u16,
    /// Greeting text after the code.
    pub banner: String,
    /// Recipients answered with `550 5.1.1` at RCPT.
    pub reject_rcpt: Vec<String>,
    /// When set, the reply to the end of data instead of `250` (e.g. a
    /// `451` for a retry test); the message is then not recorded.
    pub data_reply: Option<String>,
    /// Advertise DSN (RFC 3461). Without it, MAIL or RCPT carrying a DSN
    /// parameter is refused with 555, as a real server refuses parameters
    /// it does not offer (RFC 5321 §4.1.1.11).
    pub dsn: bool,
    /// Advertise REQUIRETLS (RFC 8689), over TLS only; without it, the
    /// parameter is refused with 555.
    pub requiretls: bool,
    /// Close the connection right after the reply to the end of data,
    /// without a word (a server that drops idle sessions, or has crashed).
    pub close_after_message: bool,
}

impl SmtpOptions {
    /// STARTTLS with a valid certificate for `hostname`, greeting `220
    /// <hostname> ESMTP test`.
    pub fn new(hostname: &str) -> SmtpOptions {
        SmtpOptions {
            hostname: hostname.to_string(),
            starttls: true,
            cert: SmtpCert::Valid,
            greeting_code: 220,
            banner: format!("{hostname} ESMTP test"),
            reject_rcpt: Vec::new(),
            data_reply: None,
            dsn: false,
            requiretls: false,
            close_after_message: false,
        }
    }

    pub fn close_after_message(mut self, on: bool) -> Self {
        self.close_after_message = on;
        self
    }

    pub fn dsn(mut self, on: bool) -> Self {
        self.dsn = on;
        self
    }

    pub fn requiretls(mut self, on: bool) -> Self {
        self.requiretls = on;
        self
    }

    pub fn data_reply(mut self, reply: &str) -> Self {
        self.data_reply = Some(reply.to_string());
        self
    }

    pub fn starttls(mut self, on: bool) -> Self {
        self.starttls = on;
        self
    }

    pub fn cert(mut self, cert: SmtpCert) -> Self {
        self.cert = cert;
        self
    }

    pub fn greeting(mut self, code: u16, banner: &str) -> Self {
        self.greeting_code = code;
        self.banner = banner.to_string();
        self
    }

    pub fn reject_rcpt(mut self, rcpt: &str) -> Self {
        self.reject_rcpt.push(rcpt.to_string());
        self
    }
}

/// One accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The reverse path, without angle brackets.
    pub mail_from: String,
    /// Accepted recipients, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as received, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
    /// Whether it arrived over TLS.
    pub tls: bool,
    /// The MAIL and accepted RCPT command lines exactly as received.
    pub mail_line: String,
    pub rcpt_lines: Vec<String>,
}

#[derive(Default)]
struct Counters {
    connections: usize,
    tls_handshakes: usize,
    /// Of those, abbreviated handshakes resuming an earlier session.
    tls_resumed: usize,
    messages: Vec<ReceivedMessage>,
    commands: Vec<String>,
}

struct Shared {
    options: Mutex<SmtpOptions>,
    counters: Mutex<Counters>,
    acceptor: Mutex<Option<TlsAcceptor>>,
    /// The leaf certificate STARTTLS presents (for TLSA records).
    cert: Mutex<Option<rustls_pki_types::CertificateDer<'static>>>,
    ca: TestCa,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn acceptor_for(
    ca: &TestCa,
    opts: &SmtpOptions,
) -> (TlsAcceptor, rustls_pki_types::CertificateDer<'static>) {
    let host = opts.hostname.as_str();
    let leaf = match opts.cert {
        SmtpCert::Valid => ca.issue(&[host]),
        SmtpCert::WrongName => ca.issue(&[WRONG_NAME]),
        SmtpCert::Expired => ca.issue_expired(&[host]),
        SmtpCert::SelfSigned => ca::self_signed(&[host]),
        SmtpCert::ExpiringIn(days) => ca.issue_between(&[host], -1, i64::from(days)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = leaf.chain[0].clone();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .expect("rustls accepts the test certificate");
    (TlsAcceptor::from(Arc::new(config)), cert)
}

/// An SMTP server fixture. Stops (with its connections) when dropped.
pub struct SmtpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start(ca: &TestCa, options: SmtpOptions) -> SmtpServer {
        SmtpServer::start_on(ca, IpAddr::V4(Ipv4Addr::LOCALHOST), 0, options)
            .await
            .expect("bind an SMTP fixture on 127.0.0.1")
    }

    /// Listens on `ip:port` (`port` 0: any free port).
    pub async fn start_on(
        ca: &TestCa,
        ip: IpAddr,
        port: u16,
        options: SmtpOptions,
    ) -> std::io::Result<SmtpServer> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
        let addr = listener.local_addr()?;
        let (acceptor, cert) = acceptor_for(ca, &options);
        let shared = Arc::new(Shared {
            options: Mutex::new(options),
            counters: Mutex::new(Counters::default()),
            acceptor: Mutex::new(Some(acceptor)),
            cert: Mutex::new(Some(cert)),
            ca: ca.clone(),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(SmtpServer { addr, shared, task })
    }

    /// One server per `(ip, options)`, all on the same port (returned), so
    /// MX hosts resolving to different 127.0.0.x addresses can be probed on
    /// one `--smtp-port`. Retries with a new port if one is taken.
    pub async fn start_group(
        ca: &TestCa,
        hosts: Vec<(IpAddr, SmtpOptions)>,
    ) -> (u16, Vec<SmtpServer>) {
        assert!(!hosts.is_empty(), "start_group needs at least one host");
        'attempt: for _ in 0..50 {
            let mut servers = Vec::new();
            let mut port = 0;
            for (ip, opts) in &hosts {
                match SmtpServer::start_on(ca, *ip, port, opts.clone()).await {
                    Ok(s) => {
                        port = s.addr.port();
                        servers.push(s);
                    }
                    Err(_) => continue 'attempt,
                }
            }
            return (port, servers);
        }
        panic!("could not bind the SMTP fixtures on one shared port");
    }

    /// Replaces the behaviour (and the certificate) for new connections.
    pub fn set_options(&self, options: SmtpOptions) {
        let (acceptor, cert) = acceptor_for(&self.shared.ca, &options);
        *lock(&self.shared.acceptor) = Some(acceptor);
        *lock(&self.shared.cert) = Some(cert);
        *lock(&self.shared.options) = options;
    }

    /// The DER of the leaf certificate STARTTLS presents now.
    pub fn certificate(&self) -> rustls_pki_types::CertificateDer<'static> {
        lock(&self.shared.cert)
            .clone()
            .expect("every fixture has a certificate")
    }

    pub fn connections(&self) -> usize {
        lock(&self.shared.counters).connections
    }

    /// Completed STARTTLS handshakes.
    pub fn tls_handshakes(&self) -> usize {
        lock(&self.shared.counters).tls_handshakes
    }

    /// Completed STARTTLS handshakes that resumed an earlier TLS session.
    pub fn tls_resumed(&self) -> usize {
        lock(&self.shared.counters).tls_resumed
    }

    pub fn message_count(&self) -> usize {
        lock(&self.shared.counters).messages.len()
    }

    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.counters).messages.clone()
    }

    /// Every command line received (verbs upper-cased as sent), in order.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.counters).commands.clone()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, _)) => {
                lock(&shared.counters).connections += 1;
                let shared = shared.clone();
                conns.spawn(async move {
                    let _ = session(tcp, shared).await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Io::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

struct Session {
    io: Io,
    buf: Vec<u8>,
}

enum Read {
    Line(Vec<u8>),
    TooLong,
    Closed,
}

impl Session {
    async fn line(&mut self) -> Read {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                if pos + 1 > MAX_LINE {
                    return Read::TooLong;
                }
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Read::Line(line);
            }
            if self.buf.len() > MAX_LINE {
                return Read::TooLong;
            }
            match tokio::time::timeout(IDLE_TIMEOUT, self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return Read::Closed,
            }
        }
    }

    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.io.write(text.as_bytes()).await
    }
}

/// Whether the parameters after the path name one of `keys`.
fn has_param(rest: &str, keys: &[&str]) -> bool {
    let params = rest.rsplit_once('>').map_or("", |(_, p)| p);
    params.split_ascii_whitespace().any(|w| {
        let key = w.split('=').next().unwrap_or("");
        keys.iter().any(|k| k.eq_ignore_ascii_case(key))
    })
}

/// `<addr>` from `MAIL FROM:<addr> params` / `RCPT TO:<addr>`.
fn path_arg(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let start = rest.find('<')?;
    let end = rest[start..].find('>')? + start;
    Some(rest[start + 1..end].to_string())
}

async fn session(tcp: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let opts = lock(&shared.options).clone();
    let mut s = Session {
        io: Io::Plain(tcp),
        buf: Vec::new(),
    };
    s.reply(&format!("{} {}\r\n", opts.greeting_code, opts.banner))
        .await?;
    let refusing = opts.greeting_code != 220;
    let mut tls = false;
    let mut helo: Option<String> = None;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut mail_line = String::new();
    let mut rcpt_lines: Vec<String> = Vec::new();
    loop {
        let line = match s.line().await {
            Read::Line(l) => l,
            Read::TooLong => {
                s.reply("500 5.5.2 line too long\r\n").await?;
                return Ok(());
            }
            Read::Closed => return Ok(()),
        };
        let text = String::from_utf8_lossy(&line).into_owned();
        lock(&shared.counters).commands.push(text.clone());
        let (verb, rest) = match text.split_once(' ') {
            Some((v, r)) => (v.to_ascii_uppercase(), r.to_string()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        if refusing && verb != "QUIT" {
            s.reply("503 5.5.1 service refused, say QUIT\r\n").await?;
            continue;
        }
        match verb.as_str() {
            "EHLO" => {
                helo = Some(rest.trim().to_string());
                mail_from = None;
                rcpt_to.clear();
                let mut r = format!(
                    "250-{}\r\n250-PIPELINING\r\n250-SIZE {MAX_MESSAGE}\r\n",
                    opts.hostname
                );
                if opts.starttls && !tls {
                    r.push_str("250-STARTTLS\r\n");
                }
                if opts.dsn {
                    r.push_str("250-DSN\r\n");
                }
                if opts.requiretls && tls {
                    r.push_str("250-REQUIRETLS\r\n");
                }
                r.push_str("250 8BITMIME\r\n");
                s.reply(&r).await?;
            }
            "HELO" => {
                helo = Some(rest.trim().to_string());
                mail_from = None;
                rcpt_to.clear();
                s.reply(&format!("250 {}\r\n", opts.hostname)).await?;
            }
            "STARTTLS" => {
                if !opts.starttls {
                    s.reply("502 5.5.1 STARTTLS not available\r\n").await?;
                    continue;
                }
                if tls {
                    s.reply("503 5.5.1 TLS already active\r\n").await?;
                    continue;
                }
                s.reply("220 2.0.0 ready to start TLS\r\n").await?;
                // Bytes pipelined after STARTTLS are discarded (RFC 3207 §4.2).
                s.buf.clear();
                let acceptor = lock(&shared.acceptor).clone();
                let Some(acceptor) = acceptor else {
                    return Ok(());
                };
                let Io::Plain(tcp) = s.io else {
                    return Ok(());
                };
                let stream = match tokio::time::timeout(IDLE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    _ => return Ok(()),
                };
                {
                    let resumed =
                        stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    let mut c = lock(&shared.counters);
                    c.tls_handshakes += 1;
                    if resumed {
                        c.tls_resumed += 1;
                    }
                }
                s.io = Io::Tls(Box::new(stream));
                tls = true;
                helo = None;
                mail_from = None;
                rcpt_to.clear();
            }
            "MAIL" => {
                if helo.is_none() {
                    s.reply("503 5.5.1 EHLO first\r\n").await?;
                } else if mail_from.is_some() {
                    s.reply("503 5.5.1 nested MAIL\r\n").await?;
                } else {
                    match rest
                        .strip_prefix("FROM:")
                        .or_else(|| rest.strip_prefix("from:"))
                        .and_then(path_arg)
                    {
                        Some(_) if has_param(&rest, &["RET", "ENVID"]) && !opts.dsn => {
                            s.reply("555 5.5.4 DSN not offered\r\n").await?;
                        }
                        Some(_)
                            if has_param(&rest, &["REQUIRETLS"]) && !(opts.requiretls && tls) =>
                        {
                            s.reply("555 5.5.4 REQUIRETLS not offered\r\n").await?;
                        }
                        Some(from) => {
                            mail_from = Some(from);
                            mail_line = text.clone();
                            rcpt_lines.clear();
                            s.reply("250 2.1.0 ok\r\n").await?;
                        }
                        None => s.reply("501 5.5.4 syntax: MAIL FROM:<address>\r\n").await?,
                    }
                }
            }
            "RCPT" => {
                if mail_from.is_none() {
                    s.reply("503 5.5.1 MAIL first\r\n").await?;
                } else {
                    match rest
                        .strip_prefix("TO:")
                        .or_else(|| rest.strip_prefix("to:"))
                        .and_then(path_arg)
                    {
                        Some(to)
                            if opts.reject_rcpt.iter().any(|r| r.eq_ignore_ascii_case(&to)) =>
                        {
                            s.reply("550 5.1.1 no such user\r\n").await?;
                        }
                        Some(_) if has_param(&rest, &["NOTIFY", "ORCPT"]) && !opts.dsn => {
                            s.reply("555 5.5.4 DSN not offered\r\n").await?;
                        }
                        Some(to) => {
                            rcpt_to.push(to);
                            rcpt_lines.push(text.clone());
                            s.reply("250 2.1.5 ok\r\n").await?;
                        }
                        None => s.reply("501 5.5.4 syntax: RCPT TO:<address>\r\n").await?,
                    }
                }
            }
            "DATA" => {
                if rcpt_to.is_empty() {
                    s.reply("503 5.5.1 RCPT first\r\n").await?;
                    continue;
                }
                s.reply("354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = Vec::new();
                let mut too_big = false;
                loop {
                    let line = match s.line().await {
                        Read::Line(l) => l,
                        Read::TooLong => {
                            s.reply("500 5.5.2 line too long\r\n").await?;
                            return Ok(());
                        }
                        Read::Closed => return Ok(()),
                    };
                    if line == b"." {
                        break;
                    }
                    let body = line.strip_prefix(b".").unwrap_or(&line);
                    if data.len() + body.len() + 2 > MAX_MESSAGE {
                        too_big = true;
                    }
                    if !too_big {
                        data.extend_from_slice(body);
                        data.extend_from_slice(b"\r\n");
                    }
                }
                if too_big {
                    s.reply("552 5.3.4 message too big\r\n").await?;
                } else if let Some(reply) = &opts.data_reply {
                    s.reply(&format!("{reply}\r\n")).await?;
                } else {
                    lock(&shared.counters).messages.push(ReceivedMessage {
                        helo: helo.clone().unwrap_or_default(),
                        mail_from: mail_from.clone().unwrap_or_default(),
                        rcpt_to: rcpt_to.clone(),
                        data,
                        tls,
                        mail_line: mail_line.clone(),
                        rcpt_lines: rcpt_lines.clone(),
                    });
                    s.reply("250 2.0.0 queued\r\n").await?;
                }
                if opts.close_after_message {
                    return Ok(());
                }
                mail_from = None;
                rcpt_to.clear();
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                s.reply("250 2.0.0 ok\r\n").await?;
            }
            "NOOP" => s.reply("250 2.0.0 ok\r\n").await?,
            "QUIT" => {
                s.reply("221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => s.reply("500 5.5.2 command not recognised\r\n").await?,
        }
    }
}
