//! An HTTPS POST sink: one TLS listener on 127.0.0.1 with a certificate
//! from the test CA for the given names, which records every request (head
//! and `Content-Length` body) and answers with a configurable status. For
//! TLS-RPT report delivery (RFC 8460 §5.4).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::ca::TestCa;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One request received.
#[derive(Debug, Clone)]
pub struct Posted {
    /// Request line and headers, CRLF-separated.
    pub head: String,
    pub body: Vec<u8>,
}

impl Posted {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Posted>,
    status: u16,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct PostSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for PostSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostSink {
    pub async fn start(ca: &TestCa, names: &[&str]) -> PostSink {
        let leaf = ca.issue(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .expect("certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the POST sink");
        let addr = listener.local_addr().expect("POST sink address");
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            status: 200,
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IO_TIMEOUT, serve(tcp, acceptor, st)).await;
                });
            }
        });
        PostSink { addr, state, task }
    }

    /// The status every later request gets (default 200).
    pub fn set_status(&self, status: u16) {
        lock(&self.state).status = status;
    }

    pub fn requests(&self) -> Vec<Posted> {
        lock(&self.state).requests.clone()
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(());
        }
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end + 4..].to_vec();
    let posted = Posted {
        head,
        body: Vec::new(),
    };
    let len: usize = posted
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    while body.len() < len {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let status = {
        let mut st = lock(&state);
        st.requests.push(Posted { body, ..posted });
        st.status
    };
    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    tls.write_all(answer.as_bytes()).await?;
    tls.flush().await?;
    let _ = tls.shutdown().await;
    Ok(())
}
