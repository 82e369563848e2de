//! The context every SMTP session of one relay runs in. Built once by
//! [`super::Relay::open`]; the listener hands it to each session, and
//! neither the listener nor the sessions import each other for it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::queue::Queue;
use crate::config::{IpNet, RelayConfig};

/// What every session of one relay shares: its configuration, identity,
/// client networks, queue, STARTTLS and AUTH.
pub struct RelayContext {
    pub cfg: RelayConfig,
    pub hostname: String,
    pub networks: Vec<IpNet>,
    pub queue: Queue,
    /// Present when `relay.tls_cert_file` is set: STARTTLS is offered.
    pub tls: Option<TlsAcceptor>,
    /// Present when `relay.auth_users_file` is set: AUTH after STARTTLS.
    pub users: Option<Arc<super::auth::Users>>,
    /// AUTH failure back-off and the cap on password checks at once.
    pub auth: super::auth_limit::AuthGate,
}

impl RelayContext {
    /// Whether `peer` is in a network that may relay.
    pub fn allows(&self, peer: SocketAddr) -> bool {
        self.networks.iter().any(|n| n.contains(peer.ip()))
    }
}
