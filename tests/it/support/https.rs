//! HTTPS "policy hosts": one TLS listener on 127.0.0.1 serving many virtual
//! hosts (`mta-sts.<domain>`), choosing the certificate by SNI.
//!
//! HTTP/1.1 is written by hand on the wire. Every response carries
//! `Connection: close` and the connection is closed after it. A host that was
//! never [`set`](PolicyHosts::set) (or was [`remove`](PolicyHosts::remove)d)
//! has no certificate, so the TLS handshake for it fails.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::ca::{self, TestCa};

/// Cap on the size of a request head.
const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for the TLS handshake, and separately for reading the head.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk size for [`Behavior::Huge`].
const HUGE_CHUNK: usize = 8 * 1024;
/// The SAN of the certificate served in [`CertMode::WrongName`].
pub const WRONG_NAME: &str = "wrong.invalid.test";

/// Which certificate a host presents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CertMode {
    /// Signed by the test CA, for the host's name, currently valid.
    #[default]
    Valid,
    /// Signed by the test CA, but for [`WRONG_NAME`] only.
    WrongName,
    /// Signed by the test CA, for the host's name, but expired.
    Expired,
    /// For the host's name, but self-signed (not from the test CA).
    SelfSigned,
}

/// What a host answers to any request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200, `Content-Type: text/plain; charset=utf-8`, Content-Length, body.
    Policy(String),
    /// Full control. `content_length: false` sends the body with
    /// `Transfer-Encoding: chunked` (one chunk). If `extra_headers` already
    /// has a `Content-Length` or `Transfer-Encoding` header (any case), no
    /// framing header is added and the body is written raw, so a test can
    /// send a lying length.
    Response {
        status: u16,
        content_type: Option<String>,
        extra_headers: Vec<(String, String)>,
        body: Vec<u8>,
        content_length: bool,
    },
    /// 301 with `Location`.
    Redirect(String),
    /// 200 `text/plain` with the right Content-Length, but the body is
    /// written one byte per `interval`.
    Trickle { body: Vec<u8>, interval: Duration },
    /// 200 `text/plain`, `size` bytes of `a` written in 8 KiB chunks; stops
    /// quietly when the client hangs up. `content_length: false` = chunked.
    Huge { size: usize, content_length: bool },
    /// Completes the handshake, reads the request, never answers; keeps the
    /// connection open until the client leaves.
    Hang,
}

#[derive(Default)]
struct HostsState {
    behaviors: HashMap<String, Behavior>,
    cert_modes: HashMap<String, CertMode>,
    certs: HashMap<(String, CertMode), Arc<CertifiedKey>>,
    requests: HashMap<String, usize>,
    last_heads: HashMap<String, String>,
    /// Set by [`PolicyHosts::set_lazy`]: valid certificates for hosts served
    /// that way are issued at their first handshake (for fixtures with
    /// very many hosts, as in the benchmarks).
    lazy_ca: Option<TestCa>,
    /// Every request head, in all (benchmarks read it from outside).
    total_requests: usize,
}

fn lock(state: &Mutex<HostsState>) -> MutexGuard<'_, HostsState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn host_key(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Picks the certificate by SNI; no SNI or an unserved host aborts the
/// handshake.
struct SniResolver {
    state: Arc<Mutex<HostsState>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = host_key(client_hello.server_name()?);
        let mut state = lock(&self.state);
        state.behaviors.get(&host)?;
        let mode = state.cert_modes.get(&host).copied().unwrap_or_default();
        if let Some(c) = state.certs.get(&(host.clone(), mode)) {
            return Some(c.clone());
        }
        let ca = state.lazy_ca.clone().filter(|_| mode == CertMode::Valid)?;
        let leaf = ca.issue(&[&host]);
        let key = rustls::crypto::ring::sign::any_supported_type(&leaf.key).ok()?;
        let certified = Arc::new(CertifiedKey::new(leaf.chain, key));
        state.certs.insert((host, mode), certified.clone());
        Some(certified)
    }
}

/// The HTTPS policy-host server. Stops (with all its connections) when
/// dropped.
pub struct PolicyHosts {
    /// Where the TLS listener is (127.0.0.1).
    pub addr: SocketAddr,
    state: Arc<Mutex<HostsState>>,
    ca: TestCa,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PolicyHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHosts")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for PolicyHosts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyHosts {
    /// Starts the listener on 127.0.0.1:0. Certificates are issued by `ca`.
    pub async fn start(ca: &TestCa) -> PolicyHosts {
        PolicyHosts::start_on(ca, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Like [`start`](Self::start) on a given address (e.g. 127.0.0.1:443
    /// inside a network namespace).
    pub async fn start_on(ca: &TestCa, addr: SocketAddr) -> PolicyHosts {
        let state = Arc::new(Mutex::new(HostsState::default()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver {
                state: state.clone(),
            }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the policy-host listener on {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("local address of the policy-host listener");
        let task = tokio::spawn(serve(listener, acceptor, state.clone()));
        PolicyHosts {
            addr,
            state,
            ca: ca.clone(),
            task,
        }
    }

    /// Makes sure the certificate for `(host, mode)` exists. Key generation
    /// happens outside the lock.
    fn ensure_cert(&self, host: &str, mode: CertMode) {
        if lock(&self.state)
            .certs
            .contains_key(&(host.to_string(), mode))
        {
            return;
        }
        let leaf = match mode {
            CertMode::Valid => self.ca.issue(&[host]),
            CertMode::WrongName => self.ca.issue(&[WRONG_NAME]),
            CertMode::Expired => self.ca.issue_expired(&[host]),
            CertMode::SelfSigned => ca::self_signed(&[host]),
        };
        let key = rustls::crypto::ring::sign::any_supported_type(&leaf.key)
            .expect("rustls accepts the rcgen leaf key");
        let certified = Arc::new(CertifiedKey::new(leaf.chain, key));
        lock(&self.state)
            .certs
            .entry((host.to_string(), mode))
            .or_insert(certified);
    }

    /// Serves `host` (e.g. `mta-sts.example.test`) with `behavior`,
    /// replacing any previous behavior.
    pub fn set(&self, host: &str, behavior: Behavior) {
        let host = host_key(host);
        let mode = lock(&self.state)
            .cert_modes
            .get(&host)
            .copied()
            .unwrap_or_default();
        self.ensure_cert(&host, mode);
        lock(&self.state).behaviors.insert(host, behavior);
    }

    /// Like [`set`](Self::set), but the (valid) certificate is issued at the
    /// host's first TLS handshake rather than now.
    pub fn set_lazy(&self, host: &str, behavior: Behavior) {
        let mut state = lock(&self.state);
        state.lazy_ca = Some(self.ca.clone());
        state.behaviors.insert(host_key(host), behavior);
    }

    /// Request heads received for all hosts together.
    pub fn total_requests(&self) -> usize {
        lock(&self.state).total_requests
    }

    /// Chooses the certificate `host` presents (default [`CertMode::Valid`]).
    /// May be called before or after [`set`](Self::set); it survives
    /// [`remove`](Self::remove).
    pub fn set_cert(&self, host: &str, mode: CertMode) {
        let host = host_key(host);
        self.ensure_cert(&host, mode);
        lock(&self.state).cert_modes.insert(host, mode);
    }

    /// Stops serving `host`: its TLS handshakes fail ("policy host is down").
    /// Request counts are kept.
    pub fn remove(&self, host: &str) {
        lock(&self.state).behaviors.remove(&host_key(host));
    }

    /// Number of complete HTTP request heads received with SNI `host`.
    pub fn requests(&self, host: &str) -> usize {
        lock(&self.state)
            .requests
            .get(&host_key(host))
            .copied()
            .unwrap_or(0)
    }

    /// The last raw request head received with SNI `host` (request line and
    /// headers, CRLF-separated, without the final blank line).
    pub fn last_request_head(&self, host: &str) -> Option<String> {
        lock(&self.state).last_heads.get(&host_key(host)).cloned()
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<Mutex<HostsState>>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, _)) => {
                conns.spawn(serve_conn(tcp, acceptor.clone(), state.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_conn(tcp: TcpStream, acceptor: TlsAcceptor, state: Arc<Mutex<HostsState>>) {
    let Ok(Ok(mut tls)) = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let Some(host) = tls.get_ref().1.server_name().map(host_key) else {
        return;
    };
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut tls)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::TooLarge)) => {
            let _ = write_simple(&mut tls, 431, None, &[], b"request head too large\n", true).await;
            let _ = tokio::time::timeout(IO_TIMEOUT, tls.shutdown()).await;
            return;
        }
        _ => return,
    };
    let behavior = {
        let mut st = lock(&state);
        *st.requests.entry(host.clone()).or_default() += 1;
        st.total_requests += 1;
        st.last_heads.insert(host.clone(), head);
        st.behaviors.get(&host).cloned()
    };
    // Removed between handshake and request: just hang up.
    let Some(behavior) = behavior else {
        return;
    };
    if answer(&mut tls, behavior).await.is_ok() {
        let _ = tokio::time::timeout(IO_TIMEOUT, tls.shutdown()).await;
    }
}

enum HeadError {
    TooLarge,
    Closed,
}

/// Reads up to the blank line ending the request head; returns the head
/// without that blank line. Bytes after it (a body) are ignored.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Index where the head's terminating blank line starts (CRLFCRLF, or a bare
/// LFLF from a sloppy client).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Framing of a response body.
enum Framing {
    Length(usize),
    Chunked,
    /// The caller's headers already frame the body.
    None,
}

fn head_text(
    status: u16,
    content_type: Option<&str>,
    extra_headers: &[(String, String)],
    framing: Framing,
) -> String {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match framing {
        Framing::Length(len) => head.push_str(&format!("Content-Length: {len}\r\n")),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::None => {}
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

async fn write_simple<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: Option<&str>,
    extra_headers: &[(String, String)],
    body: &[u8],
    content_length: bool,
) -> std::io::Result<()> {
    let framed_by_caller = extra_headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    let framing = if framed_by_caller {
        Framing::None
    } else if content_length {
        Framing::Length(body.len())
    } else {
        Framing::Chunked
    };
    let chunked = matches!(framing, Framing::Chunked);
    let mut out = head_text(status, content_type, extra_headers, framing).into_bytes();
    if chunked {
        if !body.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(body);
    }
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    behavior: Behavior,
) -> std::io::Result<()> {
    match behavior {
        Behavior::Policy(body) => {
            write_simple(
                stream,
                200,
                Some("text/plain; charset=utf-8"),
                &[],
                body.as_bytes(),
                true,
            )
            .await
        }
        Behavior::Response {
            status,
            content_type,
            extra_headers,
            body,
            content_length,
        } => {
            write_simple(
                stream,
                status,
                content_type.as_deref(),
                &extra_headers,
                &body,
                content_length,
            )
            .await
        }
        Behavior::Redirect(location) => {
            write_simple(
                stream,
                301,
                None,
                &[("Location".to_string(), location)],
                b"",
                true,
            )
            .await
        }
        Behavior::Trickle { body, interval } => {
            let head = head_text(200, Some("text/plain"), &[], Framing::Length(body.len()));
            stream.write_all(head.as_bytes()).await?;
            stream.flush().await?;
            for byte in body {
                tokio::time::sleep(interval).await;
                stream.write_all(&[byte]).await?;
                stream.flush().await?;
            }
            Ok(())
        }
        Behavior::Huge {
            size,
            content_length,
        } => {
            let framing = if content_length {
                Framing::Length(size)
            } else {
                Framing::Chunked
            };
            let head = head_text(200, Some("text/plain"), &[], framing);
            stream.write_all(head.as_bytes()).await?;
            let chunk = [b'a'; HUGE_CHUNK];
            let mut remaining = size;
            while remaining > 0 {
                let n = remaining.min(HUGE_CHUNK);
                if content_length {
                    stream.write_all(&chunk[..n]).await?;
                } else {
                    stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    stream.write_all(&chunk[..n]).await?;
                    stream.write_all(b"\r\n").await?;
                }
                remaining -= n;
            }
            if !content_length {
                stream.write_all(b"0\r\n\r\n").await?;
            }
            stream.flush().await
        }
        Behavior::Hang => {
            // Keep the connection open (never answer) until the client leaves.
            let mut sink = [0u8; 1024];
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => {
                        return Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}
