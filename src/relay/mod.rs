//! The smart-host relay: a small MTA for clients that cannot ask a policy
//! server. It accepts mail from trusted networks ([`server`], [`session`],
//! [`command`]), keeps it in a durable spool ([`spool`]), and delivers it
//! per recipient domain ([`queue`], [`deliver`]) under the domain's MTA-STS
//! policy from the shared [`Resolver`](crate::resolver::Resolver). Failed
//! recipients are reported to the sender with an RFC 3464 bounce ([`dsn`]).
//! Sessions under MTA-STS are counted for RFC 8460 reports ([`tlsrpt`]).

pub mod auth;
pub mod auth_limit;
pub mod client_limit;
pub mod command;
pub mod context;
pub mod deliver;
pub mod dkim;
pub mod dsn;
pub mod queue;
pub mod server;
pub mod session;
pub mod spool;
pub mod spool_limits;
pub mod tlsrpt;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::resolver::Resolver;
use crate::tlsprobe::TlsProber;

pub use queue::{Queue, QueueView};

/// Where the queue lives: `<state_dir>/queue`.
pub fn spool_dir(config: &Config) -> std::path::PathBuf {
    config.state_dir().join("queue")
}

/// The relay's name: `relay.hostname`, else the system host name.
pub fn hostname(config: &Config) -> String {
    if let Some(h) = &config.relay.hostname {
        return h.clone();
    }
    // gethostname(2) is what /proc/sys/kernel/hostname shows, without
    // needing /proc mounted (a chroot, a minimal container).
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A running relay's parts, built once the store is open.
pub struct Relay {
    pub queue: Queue,
    pub tlsrpt: tlsrpt::Tlsrpt,
    shared: Arc<context::RelayContext>,
}

impl Relay {
    /// Opens the spool and loads the queue.
    pub async fn open(config: &Config, resolver: Resolver) -> Result<Relay, String> {
        let dir = spool_dir(config);
        let spool = spool::Spool::open(&dir)
            .map_err(|e| format!("cannot open the relay queue {}: {e}", dir.display()))?;
        // rustls's own default size; a session is a few hundred bytes.
        let tls = TlsProber::new(&config.fetch, config.relay.connect_timeout)?
            .with_session_resumption(256)?;
        let hostname = hostname(config);
        let tlsrpt = tlsrpt::Tlsrpt::open(config, &hostname, resolver.dns())?;
        let deliverer = deliver::Deliverer::new(
            resolver,
            tls,
            config.relay.clone(),
            hostname.clone(),
            spool.clone(),
            tlsrpt.clone(),
        );
        let queue = Queue::open(spool, deliverer, config.relay.clone(), hostname.clone())
            .await
            .map_err(|e| format!("cannot read the relay queue {}: {e}", dir.display()))?;
        let shared = Arc::new(context::RelayContext {
            cfg: config.relay.clone(),
            hostname,
            networks: config.relay_networks().map_err(|e| e.to_string())?,
            queue: queue.clone(),
            tls: server::tls_acceptor(&config.relay)?,
            users: match &config.relay.auth_users_file {
                Some(path) => Some(Arc::new(auth::Users::load(path)?)),
                None => None,
            },
            auth: auth_limit::AuthGate::new(
                config.relay.auth_max_failures,
                config.relay.auth_backoff,
                config.relay.auth_max_parallel,
            ),
        });
        Ok(Relay {
            queue,
            tlsrpt,
            shared,
        })
    }

    /// The users of `relay.auth_users_file`, if set: their PBKDF2 counters
    /// show what AUTH costs.
    pub fn auth_users(&self) -> Option<Arc<auth::Users>> {
        self.shared.users.clone()
    }

    /// Runs the queue and the listeners until `shutdown`.
    pub async fn serve(self, listeners: Vec<TcpListener>, shutdown: watch::Receiver<bool>) {
        let runner = tokio::spawn(self.queue.clone().run(shutdown.clone()));
        let reports = tokio::spawn(self.tlsrpt.run(self.queue.clone(), shutdown.clone()));
        server::serve(listeners, self.shared, shutdown).await;
        let _ = runner.await;
        let _ = reports.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_the_configured_one_else_the_kernels() {
        let mut config = Config::default();
        // The name the kernel shows in /proc is the one gethostname(2)
        // returns; where /proc is not mounted there is nothing to compare.
        if let Ok(proc) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let want = Some(proc.trim())
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost");
            assert_eq!(hostname(&config), want);
        }
        config.relay.hostname = Some("relay.example.test".into());
        assert_eq!(hostname(&config), "relay.example.test");
    }
}
