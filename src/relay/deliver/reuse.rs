//! Idle SMTP sessions kept for the next message to the same destination,
//! like Postfix's connection cache (`smtp_connection_cache_time_limit`,
//! `smtp_connection_reuse_time_limit`): one handshake serves many messages.
//!
//! A session may only stand in for a new one when everything it was checked
//! against is the same, so the key holds all of it: the recipient domain,
//! every host the plan would try with its TLS rule (mode, policy id and
//! text, TLSA records), and the message's REQUIRETLS and TLS-Required: No
//! flags. A session opened for another domain, under another policy or MX
//! set, or for a message with weaker TLS demands is never taken. Sessions
//! are checked with `RSET` before reuse (done by the caller), and closed
//! with `QUIT` once idle for the cache time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::plan::{Candidate, TlsMode};
use crate::smtp::{Ehlo, SmtpConn};
use crate::sync::Recover;

/// The byte stream under a session: TCP, or TLS over it.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) type Stream = Box<dyn Io>;

/// A session that passed every check of its mode, between transactions.
pub(super) struct Open {
    pub conn: SmtpConn<Stream>,
    /// The EHLO reply after STARTTLS (or the only one, in plaintext).
    pub ehlo: Ehlo,
    /// `none`, or the TLS version.
    pub tls: String,
    pub host: String,
    pub addr: SocketAddr,
    pub mode: TlsMode,
    pub opened: Instant,
    /// Transactions run over it so far.
    pub uses: u32,
}

struct Idle {
    session: Open,
    since: Instant,
    serial: u64,
}

/// What makes two deliveries' sessions interchangeable.
pub(super) fn key(
    domain: &str,
    requiretls: bool,
    tls_optional: bool,
    plan: &[Candidate],
) -> String {
    let mut k = String::with_capacity(64 + 32 * plan.len());
    k.push_str(&domain.to_ascii_lowercase());
    k.push('\u{0}');
    k.push(if requiretls { 'R' } else { '-' });
    k.push(if tls_optional { 'O' } else { '-' });
    for c in plan {
        k.push('\u{0}');
        k.push_str(&c.host.to_ascii_lowercase());
        k.push('\u{2}');
        c.mode.reuse_key(&mut k);
    }
    k
}

#[derive(Clone)]
pub(super) struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<State>,
    idle_limit: Duration,
    reuse_limit: Duration,
    max_idle: usize,
}

#[derive(Default)]
struct State {
    by_key: HashMap<String, Vec<Idle>>,
    count: usize,
    serial: u64,
}

impl Connections {
    /// `idle_limit` zero: no session is kept. At most `max_idle` are kept.
    pub(super) fn new(idle_limit: Duration, reuse_limit: Duration, max_idle: usize) -> Connections {
        Connections {
            inner: Arc::new(Inner {
                idle: Mutex::new(State::default()),
                idle_limit,
                reuse_limit,
                max_idle,
            }),
        }
    }

    /// The most recently used idle session for `key` still within the
    /// limits; expired ones met on the way are closed.
    pub(super) fn take(&self, key: &str) -> Option<Open> {
        let me = &self.inner;
        let mut expired = Vec::new();
        let found = {
            let mut st = me.idle.locked();
            let mut found = None;
            let mut taken = 0;
            if let Some(list) = st.by_key.get_mut(key) {
                while let Some(idle) = list.pop() {
                    taken += 1;
                    if idle.since.elapsed() < me.idle_limit
                        && idle.session.opened.elapsed() < me.reuse_limit
                    {
                        found = Some(idle.session);
                        break;
                    }
                    expired.push(idle.session);
                }
                if list.is_empty() {
                    st.by_key.remove(key);
                }
            }
            st.count -= taken;
            found
        };
        for s in expired {
            self.close(s);
        }
        found
    }

    /// Keeps `session` for the next delivery with the same `key`, or closes
    /// it when caching is off, the cache is full or it is too old.
    pub(super) fn put(&self, key: String, session: Open) {
        let me = &self.inner;
        if me.idle_limit.is_zero() || session.opened.elapsed() >= me.reuse_limit {
            self.close(session);
            return;
        }
        let serial = {
            let mut st = me.idle.locked();
            if st.count >= me.max_idle {
                drop(st);
                self.close(session);
                return;
            }
            st.serial += 1;
            let serial = st.serial;
            st.count += 1;
            st.by_key.entry(key.clone()).or_default().push(Idle {
                session,
                since: Instant::now(),
                serial,
            });
            serial
        };
        // The reaper: a session still idle after the cache time is closed
        // politely, so neither side holds it open for nothing.
        let this = self.clone();
        let wait = me.idle_limit;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let stale = {
                let mut st = this.inner.idle.locked();
                let mut stale = None;
                if let Some(list) = st.by_key.get_mut(&key) {
                    if let Some(pos) = list.iter().position(|i| i.serial == serial) {
                        stale = Some(list.remove(pos).session);
                    }
                    if list.is_empty() {
                        st.by_key.remove(&key);
                    }
                }
                if stale.is_some() {
                    st.count -= 1;
                }
                stale
            };
            if let Some(s) = stale {
                this.close_now(s).await;
            }
        });
    }

    /// Idle sessions now (for tests and `/healthz`-style introspection).
    pub(super) fn idle_count(&self) -> usize {
        self.inner.idle.locked().count
    }

    fn close(&self, session: Open) {
        let this = self.clone();
        tokio::spawn(async move { this.close_now(session).await });
    }

    /// `QUIT`, bounded (2 s): a peer that does not answer is dropped.
    pub(super) async fn close_now(&self, mut session: Open) {
        session.conn.quit().await;
    }
}
