use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mta_sts_agent::config::MapConfig;
use mta_sts_agent::daemon::{self, LogFormat};
use mta_sts_agent::resolver::{Answer, Resolver};
use mta_sts_agent::socketmap::reply::render;

/// sysexits.h EX_CONFIG, as mail software uses for configuration errors.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(version, about = "MTA-STS (RFC 8461) policy agent for mail servers")]
struct Cli {
    /// Config file (TOML). Default: /etc/mta-sts-agent/config.toml if it
    /// exists, else built-in defaults.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (Postfix socketmap policy server).
    Serve,
    /// Print what the daemon would answer Postfix for DOMAIN, without a
    /// running daemon.
    Query {
        domain: String,
        /// Map whose settings apply.
        #[arg(long, default_value = "postfix")]
        map: String,
    },
    /// Print the effective configuration (defaults filled in) as TOML.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::init_logging(cli.log_format);
    let (config, source) = match daemon::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mta-sts-agent: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mta-sts-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve => runtime.block_on(daemon::serve(config, source)),
        Command::Query { domain, map } => runtime.block_on(query(config, &domain, &map)),
        Command::Config => toml::to_string_pretty(&config)
            .map(|text| print!("{text}"))
            .map_err(|e| format!("cannot print the configuration: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mta-sts-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn query(
    config: mta_sts_agent::config::Config,
    domain: &str,
    map: &str,
) -> Result<(), String> {
    let map_config: MapConfig = config.socketmap.maps.get(map).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.socketmap.maps.keys().map(String::as_str).collect();
        format!(
            "no map named '{map}'; configured maps: {}",
            known.join(", ")
        )
    })?;
    let store = daemon::open_store(&config, true)?;
    let resolver = Resolver::from_config(&config, store)?;
    let answer = resolver.lookup(domain).await;
    println!("{}", render(&answer, &map_config));
    match &answer {
        Ok(Answer::Policy(p)) => {
            let mx: Vec<String> = p.policy.mx.iter().map(|m| m.to_string()).collect();
            eprintln!(
                "policy for {}: mode {}, id {}, mx {}, fetched at {} (Unix), valid for {} s more",
                p.domain,
                p.policy.mode,
                p.id,
                mx.join(" "),
                p.fetched_at,
                p.expires_at()
                    .saturating_sub(mta_sts_agent::store::unix_now())
            );
        }
        Ok(Answer::NoPolicy(why)) => eprintln!("{domain}: {why}"),
        Err(e) => eprintln!("{domain}: {e}"),
    }
    Ok(())
}
