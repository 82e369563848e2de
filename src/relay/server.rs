//! The relay's SMTP listener: accept, check the client's network, cap the
//! connections (in all and per client address), and run a [`Session`] per
//! client. Clients that will be refused are refused before they can take a
//! session slot.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::client_limit::ClientLimit;
use super::context::RelayContext;
use super::session::Session;
use crate::config::RelayConfig;
use crate::smtp::status::{NOT_AUTHORIZED, TEMP_SECURITY};

/// Binds every `relay.listen` address (before privileges are dropped).
pub async fn bind(cfg: &RelayConfig) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for addr in &cfg.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (relay.listen): {e}"))?;
        out.push(l);
    }
    Ok(out)
}

/// Loads the STARTTLS certificate and key for clients.
pub fn tls_acceptor(cfg: &RelayConfig) -> Result<Option<TlsAcceptor>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("relay.tls_cert_file {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("relay.tls_cert_file {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "relay.tls_cert_file {}: no certificate found",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("relay.tls_key_file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("relay.tls_cert_file / relay.tls_key_file: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The slots every listener shares.
#[derive(Clone)]
struct Slots {
    /// Sessions that may relay (or authenticate).
    sessions: Arc<Semaphore>,
    /// Clients being refused: their own pool, so that however many come
    /// they never take a session slot from an allowed client.
    refusals: Arc<Semaphore>,
    /// Of the session slots, those clients outside `allowed_networks`
    /// (who must AUTH) may hold: never all of them, so however many
    /// addresses an attacker has, local clients still find a free slot.
    outside: Arc<Semaphore>,
    per_client: ClientLimit,
}

/// Session slots open to clients outside `allowed_networks`: half of
/// `max_connections`, at least one.
pub fn outside_slots(max_connections: usize) -> usize {
    (max_connections / 2).max(1)
}

/// Accepts clients on every listener until `shutdown`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    shared: Arc<RelayContext>,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Slots {
        sessions: Arc::new(Semaphore::new(shared.cfg.max_connections)),
        refusals: Arc::new(Semaphore::new(shared.cfg.max_connections)),
        outside: Arc::new(Semaphore::new(outside_slots(shared.cfg.max_connections))),
        per_client: ClientLimit::new(shared.cfg.max_connections_per_client),
    };
    let mut tasks = JoinSet::new();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(listen = %addr, "relay listening (SMTP)");
        }
        tasks.spawn(accept_loop(
            l,
            shared.clone(),
            slots.clone(),
            shutdown.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

/// Says `reply` and hangs up, never waiting more than two seconds.
fn turn_away(sessions: &mut JoinSet<()>, mut tcp: TcpStream, reply: String) {
    sessions.spawn(async move {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tcp.write_all(reply.as_bytes()),
        )
        .await;
    });
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<RelayContext>,
    slots: Slots,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        while sessions.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let allowed = shared.allows(peer);
        // The network check comes before any session slot is taken: with
        // AUTH off, a client outside allowed_networks can only be refused.
        if !allowed && shared.users.is_none() {
            tracing::warn!(peer = %peer, "relay access denied: client not in relay.allowed_networks");
            crate::metrics::metrics().relay_sessions_refused.inc();
            match slots.refusals.clone().try_acquire_owned() {
                Ok(permit) => {
                    let session = Session::new(tcp, peer, shared.clone());
                    sessions.spawn(async move {
                        session.refused().await;
                        drop(permit);
                    });
                }
                Err(_) => turn_away(
                    &mut sessions,
                    tcp,
                    format!("554 {NOT_AUTHORIZED} relay access denied\r\n"),
                ),
            }
            continue;
        }
        let Some(client) = slots.per_client.try_acquire(peer.ip()) else {
            tracing::warn!(peer = %peer, limit = shared.cfg.max_connections_per_client, "relay.max_connections_per_client reached for this address; client told to retry");
            turn_away(
                &mut sessions,
                tcp,
                format!("421 {TEMP_SECURITY} Too many connections from your address, try again later\r\n"),
            );
            continue;
        };
        let outside = if allowed {
            None
        } else {
            let Ok(permit) = slots.outside.clone().try_acquire_owned() else {
                tracing::warn!(peer = %peer, limit = outside_slots(shared.cfg.max_connections), "relay slots for clients outside allowed_networks are all taken; client told to retry");
                turn_away(
                    &mut sessions,
                    tcp,
                    format!("421 {TEMP_SECURITY} Too many connections, try again later\r\n"),
                );
                continue;
            };
            Some(permit)
        };
        let Ok(permit) = slots.sessions.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "relay connection limit reached; client told to retry");
            turn_away(
                &mut sessions,
                tcp,
                format!("421 {TEMP_SECURITY} Too many connections, try again later\r\n"),
            );
            continue;
        };
        let session = Session::new(tcp, peer, shared.clone());
        sessions.spawn(async move {
            session.run(allowed).await;
            drop(permit);
            drop(outside);
            drop(client);
        });
    }
    sessions.abort_all();
}
