//! Process-level wiring shared by the subcommands: config loading, logging,
//! the store, and the `serve` life cycle.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::resolver::Resolver;
use crate::store::PolicyStore;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens the store the config asks for. With `fallback_to_memory`, a store
/// held by a running daemon is replaced by a memory-only one (for `query`).
pub fn open_store(config: &Config, fallback_to_memory: bool) -> Result<PolicyStore, String> {
    if !config.cache.persistent {
        tracing::warn!("cache.persistent = false: policies are forgotten on restart, which reopens the downgrade window RFC 8461 caching exists to close");
        return Ok(PolicyStore::memory_only(config.cache.memory_entries));
    }
    let dir: PathBuf = config.state_dir();
    match PolicyStore::open(&dir, config.cache.memory_entries) {
        Ok(s) => Ok(s),
        Err(e) if fallback_to_memory => {
            tracing::warn!(error = %e, "using a temporary in-memory cache instead");
            Ok(PolicyStore::memory_only(config.cache.memory_entries))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `mta-sts-agent serve`: runs until SIGTERM or SIGINT.
pub async fn serve(config: Config, source: String) -> Result<(), String> {
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
    // Signal handlers go in before the listeners open, so a SIGTERM that
    // arrives as soon as the port answers is still a graceful stop.
    let signals = Signals::install()?;
    let listeners = crate::socketmap::bind(&config).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let sweeper = tokio::spawn(resolver.clone().run_sweeper());
    crate::socketmap::serve(listeners, resolver, &config, stop_rx).await;
    sweeper.abort();
    tracing::info!("stopped");
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
        Ok(Signals { term, int })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
