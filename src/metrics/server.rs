//! The `/metrics` + `/healthz` HTTP listener. A face like the socketmap:
//! it reads the store through the resolver (the policy gauges at scrape
//! time, the health check) and hands the registry what it read.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::metrics;
use crate::resolver::Resolver;

/// Connections the metrics listener serves at once. A Prometheus scrapes one
/// at a time; more are refused at once so that a flood of idle clients costs
/// neither tasks nor the file descriptors the policy face needs.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest wait for a request head, from the connection's first moment.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a whole exchange may take, answer included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// Serves `GET /metrics` and `GET /healthz` until shutdown. Plain HTTP/1.1,
/// one request per connection, bounded head, time and connections: it is
/// meant for a Prometheus on the same host or network, not for the internet.
pub async fn serve(listener: TcpListener, resolver: Resolver, mut shutdown: watch::Receiver<bool>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut warned_full = false;
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if !warned_full {
                tracing::warn!(peer = %peer, limit = MAX_CONNECTIONS, "metrics listener full; refusing new connections until one ends");
                warned_full = true;
            }
            drop(stream);
            continue;
        };
        warned_full = false;
        let resolver = resolver.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &resolver))
                .await
                .is_err()
            {
                tracing::debug!(peer = %peer, "metrics request timed out");
            }
            drop(permit);
        });
    }
}

/// Reads a request head up to its blank line, within [`MAX_HEAD`] bytes and
/// [`HEAD_TIMEOUT`]. `Ok(None)`: the client left, too slow or too long
/// (already answered).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                respond(stream, "408 Request Timeout", "text/plain", "").await?;
                return Ok(None);
            }
        };
        if n == 0 {
            return Ok(None);
        }
        // Only the new bytes (and the three before them) can complete the
        // blank line: no re-scan of the whole head per read.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            respond(
                stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await?;
            return Ok(None);
        }
    }
}

async fn answer(mut stream: TcpStream, resolver: &Resolver) -> std::io::Result<()> {
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/metrics") => {
            let body = scrape(resolver).await;
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", "/healthz") => {
            let (status, body) = health(resolver.cached("healthz.invalid").await.map(|_| ()));
            respond(&mut stream, status, "text/plain", body).await
        }
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /metrics or /healthz\n",
            )
            .await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

/// The exposition, with the policy gauges brought up to date from the
/// store. A store that cannot be listed leaves the gauges as they were.
async fn scrape(resolver: &Resolver) -> String {
    let m = metrics();
    if let Ok(all) = resolver.store().list().await {
        m.set_policies(all.iter().map(|p| p.policy.mode));
    }
    m.render()
}

/// The `/healthz` answer for the outcome of a store read. Whoever can reach
/// the listener learns only up or down: the store error names files and
/// hosts, so it goes to the log.
fn health(store: Result<(), crate::store::StoreError>) -> (&'static str, &'static str) {
    match store {
        Ok(()) => ("200 OK", "ok\n"),
        Err(e) => {
            tracing::error!(error = %e, "health check: the policy store cannot be read");
            (
                "503 Service Unavailable",
                "policy store unavailable (see the log)\n",
            )
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_never_shows_the_store_error() {
        let e = crate::store::StoreError::Unavailable(
            "cannot read /var/lib/secret/policies.redb: I/O".into(),
        );
        let (status, body) = health(Err(e));
        assert!(status.starts_with("503"));
        assert!(!body.contains('/') && !body.contains("redb"), "{body}");
        assert_eq!(health(Ok(())), ("200 OK", "ok\n"));
    }
}
