//! Process-level wiring shared by the subcommands: config loading, logging,
//! the store, and the `serve` life cycle.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::resolver::Resolver;
use crate::store::{PolicyStore, RedisTier};

mod owner;
mod preflight;

/// Loads `--config PATH`, else the default path if it exists, else defaults.
/// Returns the config and where it came from, for the start-up log.
pub fn load_config(explicit: Option<&Path>) -> Result<(Config, String), ConfigError> {
    if let Some(path) = explicit {
        return Ok((Config::load(path)?, path.display().to_string()));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    if default.exists() {
        return Ok((Config::load(default)?, DEFAULT_CONFIG_PATH.to_string()));
    }
    Ok((Config::default(), "built-in defaults".to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr (journald picks them up); `RUST_LOG` filters, default info.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: in journald or a log file they
    // break grep.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens the store the config asks for. With `fallback_to_memory`, a store
/// held by a running daemon is replaced by a memory-only one (for `query`).
pub fn open_store(config: &Config, fallback_to_memory: bool) -> Result<PolicyStore, String> {
    // The store and the resolver built over it count into the process's
    // metrics; they cannot reach the registry themselves.
    crate::metrics::report_lower_layers();
    let local = if !config.cache.persistent {
        tracing::warn!("cache.persistent = false: policies are forgotten on restart, which reopens the downgrade window RFC 8461 caching exists to close");
        PolicyStore::memory_only(config.cache.memory_entries)
    } else {
        let dir: PathBuf = config.state_dir();
        match PolicyStore::open(&dir, config.cache.memory_entries) {
            Ok(s) => s,
            Err(e) if fallback_to_memory => {
                tracing::warn!(error = %e, "using a temporary in-memory cache instead");
                PolicyStore::memory_only(config.cache.memory_entries)
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    match &config.redis.url {
        Some(url) => Ok(local.with_redis(RedisTier::new(&config.redis, url)?)),
        None => Ok(local),
    }
}

/// `mta-sts-agent serve`: runs until SIGTERM or SIGINT.
pub async fn serve(config: Config, source: String) -> Result<(), String> {
    // Signal handlers go in before the listeners open, so a SIGTERM that
    // arrives as soon as the port answers is still a graceful stop.
    let signals = Signals::install()?;
    // Every map holds MX hosts to the policy in the style the asking Postfix
    // understands; decided once, before any lookup is answered.
    let mut config = config;
    config.socketmap.maps = crate::socketmap::postfix_version::resolve(&config.socketmap)?;
    // Bind everything first (a port below 1024 or a root-owned socket
    // directory may need root), then drop privileges, then open the store
    // so that its files belong to the unprivileged user.
    let listeners = crate::socketmap::bind(&config).await?;
    let relay_listeners = crate::relay::server::bind(&config.relay).await?;
    let control_path = crate::control::socket_path(&config);
    let control = crate::control::bind(&control_path)?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (metrics.listen): {e}"))?,
        ),
        None => None,
    };
    drop_privileges(&config, &control_path)?;
    if !relay_listeners.is_empty() {
        preflight::check_spool(&config.state_dir(), &crate::relay::spool_dir(&config))?;
    }
    let store = open_store(&config, false)?;
    let resolver = Resolver::from_config(&config, store)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %source,
        store = %resolver.store().describe(),
        dns = %resolver.dns().describe(),
        trust = %resolver.fetcher().trust_description(),
        "mta-sts-agent starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let sweeper = tokio::spawn(resolver.clone().run_sweeper());
    let (relay, queue_access) = if relay_listeners.is_empty() {
        (None, crate::control::QueueAccess::Disabled)
    } else {
        let relay = crate::relay::Relay::open(&config, resolver.clone()).await?;
        let access = crate::control::QueueAccess::Live(relay.queue.clone());
        (Some(relay), access)
    };
    let relay_task = relay.map(|r| tokio::spawn(r.serve(relay_listeners, stop_rx.clone())));
    tracing::info!(path = %control_path.display(), "control socket listening (mta-sts-agent policy …)");
    let admin = tokio::spawn(crate::control::serve(
        control,
        resolver.clone(),
        queue_access,
        stop_rx.clone(),
    ));
    if let Some(l) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(listen = %addr, "metrics listening (/metrics, /healthz)");
        }
        tokio::spawn(crate::metrics::serve(l, resolver.clone(), stop_rx.clone()));
    }
    crate::socketmap::serve(listeners, resolver, &config, stop_rx).await;
    if let Some(t) = relay_task {
        let _ = t.await;
    }
    sweeper.abort();
    let _ = admin.await;
    let _ = std::fs::remove_file(&control_path);
    tracing::info!("stopped");
    Ok(())
}

/// As root with `user` configured: hands the state directory and control
/// socket to that user, then switches to it for good. As root without
/// `user`: keeps running as root, with a warning.
fn drop_privileges(config: &Config, control: &Path) -> Result<(), String> {
    use nix::unistd::{setgid, setgroups, setuid, Uid, User};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let Some(name) = &config.user else {
        tracing::warn!(
            "running as root; set `user` in the config to drop privileges after binding"
        );
        return Ok(());
    };
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        _ => return Err(format!("config key user = {name:?}: no such user")),
    };
    let dir = config.state_dir();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
    }
    // The whole tree (an earlier run as root may have made any of it),
    // following no link the service user could have planted.
    let fd = owner::open_state_dir(&dir)?;
    owner::own_tree(fd, &dir, user.uid, user.gid)?;
    owner::own_path(control, user.uid, user.gid)?;
    setgroups(&[user.gid]).map_err(|e| format!("setgroups for user {name}: {e}"))?;
    setgid(user.gid).map_err(|e| format!("setgid for user {name}: {e}"))?;
    setuid(user.uid).map_err(|e| format!("setuid to user {name}: {e}"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(
            "privileges could be regained after dropping them; refusing to run".to_string(),
        );
    }
    tracing::info!(user = %name, uid = user.uid.as_raw(), "dropped root privileges");
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
        let hup = signal(SignalKind::hangup())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        Ok(Signals { term, int, hup })
    }

    /// Returns on SIGTERM or SIGINT. SIGHUP (whose default would kill us)
    /// only logs: the configuration is read at start, and since policies
    /// persist, a restart is the reload (see the README).
    async fn wait(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::warn!("SIGHUP ignored: restart the service to apply configuration changes (cached policies survive a restart)");
                }
            }
        }
    }
}
