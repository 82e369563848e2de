//! One client connection: read netstring requests (pipelining allowed),
//! answer each in order, enforce the size and idle limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::MapConfig;
use crate::resolver::Resolver;

use super::netstring::{encode, Decoder};
use super::reply::{render_dane, render_with_mx};
use super::MAX_REQUEST;
use crate::config::DaneReply;
use crate::dane::precedence::socketmap_may_defer_to_dane;
use crate::dane::DomainDane;
use crate::resolver::{is_enforcing, Answer};

/// What every connection shares.
pub struct Handler {
    pub resolver: Resolver,
    pub maps: BTreeMap<String, MapConfig>,
    pub idle_timeout: Duration,
}

impl Handler {
    /// Answers one request payload (`<map> <key>`).
    pub async fn answer(&self, request: &[u8], peer: &str) -> String {
        let Ok(text) = std::str::from_utf8(request) else {
            tracing::warn!(peer, "socketmap request is not UTF-8");
            return "PERM request is not UTF-8 text".to_string();
        };
        let Some((map_name, key)) = text.split_once(' ') else {
            tracing::warn!(peer, request = %text.escape_debug(), "socketmap request without '<map> <key>'");
            return "PERM malformed request: expected '<map> <key>'".to_string();
        };
        let Some(map) = self.maps.get(map_name) else {
            let known: Vec<&str> = self.maps.keys().map(String::as_str).collect();
            tracing::warn!(peer, map = %map_name.escape_debug(), "socketmap request for an unknown map");
            return format!(
                "PERM unknown map '{}'; configured maps: {}",
                map_name.escape_debug(),
                known.join(", ")
            );
        };
        let started = std::time::Instant::now();
        let answer = self.resolver.lookup(key).await;
        let dane = match &answer {
            Ok(Answer::Policy(p))
                if map.dane != DaneReply::Off
                    && is_enforcing(p.policy.mode, map.testing_as_enforce) =>
            {
                // Never waits on DNSSEC: until the status is learned (in
                // the background) the MTA-STS answer stands, which demands
                // authenticated TLS as DANE does (issue 13).
                let status = self.resolver.dane_known(&p.domain).await;
                let fall_back = map.dane != DaneReply::DaneOnly;
                match status.as_deref() {
                    d if socketmap_may_defer_to_dane(d, fall_back) => render_dane(map),
                    Some(DomainDane::Indeterminate(why)) => {
                        tracing::debug!(peer, domain = %p.domain, reason = %why, "DANE status unknown; MTA-STS answer");
                        None
                    }
                    None => {
                        tracing::debug!(peer, domain = %p.domain, "DANE status not learned yet; MTA-STS answer");
                        None
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let reply = match dane {
            Some(r) => r,
            None => {
                let current = match &answer {
                    Ok(Answer::Policy(p))
                        if map.match_current_mx
                            && is_enforcing(p.policy.mode, map.testing_as_enforce) =>
                    {
                        self.resolver.current_mx(&p.domain).await
                    }
                    _ => None,
                };
                render_with_mx(&answer, map, current.as_deref())
            }
        };
        if reply.starts_with("TEMP") && answer.is_ok() {
            tracing::warn!(peer, key = %key.escape_debug(), reply = %reply, "lookup answered TEMP: Postfix defers this mail");
        }
        let kind = match reply.split(' ').next() {
            Some("OK") => "secure",
            Some("NOTFOUND") => "notfound",
            Some("TEMP") => "temp",
            _ => "perm",
        };
        crate::metrics::metrics().lookup_counted(map_name, kind, started.elapsed());
        tracing::debug!(peer, map = map_name, key = %key.escape_debug(), reply = %reply, "socketmap lookup");
        if let Err(e) = &answer {
            tracing::error!(peer, key = %key.escape_debug(), error = %e, "lookup failed; answered TEMP");
        }
        reply
    }
}

/// Why a connection ended, for the debug log.
#[derive(Debug)]
pub enum Closed {
    Eof,
    Idle,
    /// A request was still incomplete at its deadline.
    RequestTimeout,
    Shutdown,
    Malformed(String),
    Io(std::io::Error),
}

/// Serves one connection until EOF, idle timeout, a protocol error or shutdown.
///
/// Two clocks: the idle timer runs between requests and restarts with every
/// read; the request deadline starts with the first byte of a request and is
/// never pushed back, so a client trickling one byte at a time is cut off
/// `request_timeout` after it began, however often it sends.
pub async fn run<S>(
    mut stream: S,
    handler: Arc<Handler>,
    request_timeout: Duration,
    peer: &str,
    mut shutdown: watch::Receiver<bool>,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new(MAX_REQUEST);
    // At most one partial frame plus one read is ever held.
    let read_chunk = 4096.min(decoder.frame_limit());
    let mut buf = BytesMut::with_capacity(1024);
    // One timer per connection, pushed back after each read: cheaper than a
    // new timer around every read and write on the lookup hot path.
    let idle = tokio::time::sleep(handler.idle_timeout);
    tokio::pin!(idle);
    let request_deadline = tokio::time::sleep(request_timeout);
    tokio::pin!(request_deadline);
    let mut in_request = false;
    loop {
        // Answer every complete request already buffered (pipelining).
        loop {
            match decoder.decode(&buf) {
                Ok(Some((range, used))) => {
                    let reply = handler.answer(&buf[range], peer).await;
                    buf.advance(used);
                    in_request = false;
                    let frame = encode(reply.as_bytes());
                    tokio::select! {
                        written = stream.write_all(&frame) => {
                            if let Err(e) = written {
                                return Closed::Io(e);
                            }
                        }
                        _ = &mut idle => return Closed::Idle,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer, error = %e, "malformed socketmap request; closing the connection");
                    return Closed::Malformed(e.to_string());
                }
            }
        }
        if *shutdown.borrow() {
            return Closed::Shutdown;
        }
        if !buf.is_empty() && !in_request {
            // Bytes of the next request are here: its clock starts now.
            in_request = true;
            request_deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + request_timeout);
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(read_chunk);
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => {
                        if !buf.is_empty() {
                            tracing::warn!(peer, bytes = buf.len(), "socketmap client closed the connection in the middle of a request");
                        }
                        return Closed::Eof;
                    }
                    Ok(_) => idle
                        .as_mut()
                        .reset(tokio::time::Instant::now() + handler.idle_timeout),
                    Err(e) => return Closed::Io(e),
                }
            }
            _ = &mut request_deadline, if in_request => {
                tracing::warn!(peer, bytes = buf.len(), timeout = ?request_timeout, "socketmap request not complete within socketmap.request_timeout; closing the connection");
                return Closed::RequestTimeout;
            }
            _ = &mut idle => return Closed::Idle,
            _ = shutdown.changed() => return Closed::Shutdown,
        }
    }
}
