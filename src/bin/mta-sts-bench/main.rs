//! `mta-sts-bench`: measuring tools for socketmap servers, kept out of the
//! library and the production binary (nothing a mail server runs needs
//! them): a load generator ([`loadgen`]) and a constant-reply server
//! ([`null_server`]) that marks the ceiling any socketmap server can reach
//! on the machine. `contrib/bench/compare.sh` drives them; the integration
//! tests (`tests/it/bench.rs`) compile the same two modules.

mod loadgen;
mod null_server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Measure a socketmap server (see contrib/bench/compare.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send lookups to a socketmap server; report throughput, latency and
    /// (with --pid) the server's memory.
    Load {
        #[arg(long, default_value = "127.0.0.1:8461")]
        target: std::net::SocketAddr,
        #[arg(long, default_value = "postfix")]
        map: String,
        /// File with one domain per line (blank lines and # comments skipped).
        #[arg(long)]
        domains: Option<PathBuf>,
        /// A domain to look up (repeatable); with --domains, both are used.
        #[arg(long)]
        domain: Vec<String>,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Run this long (e.g. 10s)…
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// …or send this many lookups in all.
        #[arg(long)]
        requests: Option<u64>,
        /// Offered lookups per second (open loop); default: closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// A reply slower than this is an error.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Report this process's resident memory (the server's pid).
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Answer every lookup with one constant reply: the ceiling for any
    /// socketmap server on this machine.
    Null {
        #[arg(long, default_value = "127.0.0.1:8469")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mta-sts-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mta-sts-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(what: Command) -> Result<(), String> {
    match what {
        Command::Null { listen } => {
            let l = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!("constant-reply socketmap server on {listen}");
            null_server::serve(l).await.map_err(|e| e.to_string())
        }
        Command::Load {
            target,
            map,
            domains,
            domain,
            connections,
            duration,
            requests,
            rate,
            timeout,
            pid,
            json,
        } => {
            let mut list = domain;
            if let Some(path) = domains {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                list.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from),
                );
            }
            let opts = loadgen::LoadOptions {
                target,
                map,
                domains: list,
                connections,
                duration,
                requests,
                rate,
                timeout,
                pid,
            };
            let report = tokio::task::spawn_blocking(move || loadgen::run(opts))
                .await
                .map_err(|e| format!("load generator failed: {e}"))??;
            if json {
                let text = serde_json::to_string(&report).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                println!("{}", report.one_line());
            }
            Ok(())
        }
    }
}
