//! The relay's SMTP listener: accept, check the client's network, cap the
//! connections, and run a [`Session`] per client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::queue::Queue;
use super::session::Session;
use crate::config::{IpNet, RelayConfig};

/// What every session of one relay shares.
pub struct Shared {
    pub cfg: RelayConfig,
    pub hostname: String,
    pub networks: Vec<IpNet>,
    pub queue: Queue,
    /// Present when `relay.tls_cert_file` is set: STARTTLS is offered.
    pub tls: Option<TlsAcceptor>,
    /// Present when `relay.auth_users_file` is set: AUTH after STARTTLS.
    pub users: Option<Arc<super::auth::Users>>,
}

impl Shared {
    pub fn allows(&self, peer: SocketAddr) -> bool {
        self.networks.iter().any(|n| n.contains(peer.ip()))
    }
}

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

/// Accepts clients on every listener until `shutdown`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
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

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        while sessions.try_join_next().is_some() {}
        let (mut tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "relay connection limit reached; client told to retry");
            sessions.spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    tcp.write_all(b"421 4.7.0 Too many connections, try again later\r\n"),
                )
                .await;
            });
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let allowed = shared.allows(peer);
        let session = Session::new(tcp, peer, shared.clone());
        sessions.spawn(async move {
            session.run(allowed).await;
            drop(permit);
        });
    }
    sessions.abort_all();
}
