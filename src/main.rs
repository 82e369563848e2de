use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use mta_sts_agent::control::{self, Request, Response};
use mta_sts_agent::daemon::{self, LogFormat};
use mta_sts_agent::resolver::{Answer, Resolver};
use mta_sts_agent::socketmap::connection::Handler;

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
    /// Configure the local mail server to ask this agent (dry run unless
    /// --apply).
    Setup {
        #[command(subcommand)]
        what: SetupCommand,
    },
    /// Diagnose a domain's MTA-STS deployment: the same tool and options as
    /// `mta-sts-check` (see `mta-sts-agent check --help`).
    #[command(disable_help_flag = true)]
    Check {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Show, refresh or purge cached policies: through the running daemon's
    /// control socket, or directly on the store when no daemon runs.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
        /// Print the daemon's JSON response instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Print a relay.auth_users_file line for USER; the password is read
    /// from standard input (one line).
    RelayPassword { user: String },
    /// The relay queue: list, flush (retry now) or delete messages, like
    /// postqueue -p / postqueue -f / postsuper -d.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        /// Print the JSON response instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Write the man pages of both binaries into DIR (for packaging:
    /// contrib/deb/build).
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

#[derive(Subcommand)]
enum SetupCommand {
    /// Point Postfix's smtp_tls_policy_maps at this agent (the listener
    /// and map of this agent's config), with what else enforcing its
    /// answers needs; prints each change and why, then checks with
    /// `postmap -q` that the running agent answers.
    Postfix {
        /// Make the changes (after a backup of main.cf next to it).
        #[arg(long)]
        apply: bool,
        /// Postfix's configuration directory, as `postconf -c DIR` (the
        /// agent's own `-c` is its config file).
        #[arg(long, value_name = "DIR")]
        postfix_config: Option<PathBuf>,
        /// Run Postfix's tools through this command, split at spaces
        /// (e.g. "chroot /srv/postfix-root"); paths must be the same
        /// inside and out.
        #[arg(long, value_name = "COMMAND")]
        wrap: Option<String>,
        /// The domain `postmap -q` asks the running agent about.
        #[arg(long, default_value = "mta-sts-setup-check.invalid")]
        verify_domain: String,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Every queued message with its recipients' state.
    List,
    /// Try every queued message (or only ID) now.
    Flush { id: Option<String> },
    /// Remove message ID (or ALL) from the queue, without a bounce.
    Delete { id: String },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// The cached policy (and override) of DOMAIN.
    Show { domain: String },
    /// Run discovery and fetch for DOMAIN now, ignoring intervals and backoff.
    Refresh { domain: String },
    /// Forget everything cached about DOMAIN.
    Purge { domain: String },
    /// Every cached policy.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Check { args } = &cli.command {
        // Needs no daemon configuration; usage errors exit 3 like mta-sts-check.
        let argv = std::iter::once("mta-sts-agent check".into()).chain(args.iter().cloned());
        return mta_sts_agent::check::cli::main_from("mta-sts-agent check", argv);
    }
    if let Command::ManPages { dir } = &cli.command {
        return match man_pages(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mta-sts-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    daemon::init_logging(cli.log_format);
    let (config, source) = match daemon::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mta-sts-agent: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Command::Setup {
        what:
            SetupCommand::Postfix {
                apply,
                postfix_config,
                wrap,
                verify_domain,
            },
    } = &cli.command
    {
        use mta_sts_agent::setup::postfix;
        let target = postfix::Target {
            config_dir: postfix_config.clone(),
            wrap: wrap
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect(),
        };
        let opts = postfix::Options {
            apply: *apply,
            verify_domain: verify_domain.clone(),
        };
        return match postfix::run(&config, &target, &opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, e)) => {
                eprintln!("mta-sts-agent: {e}");
                ExitCode::from(code)
            }
        };
    }
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
        Command::Policy { action, json } => {
            let req = match action {
                PolicyAction::Show { domain } => Request::Show { domain },
                PolicyAction::Refresh { domain } => Request::Refresh { domain },
                PolicyAction::Purge { domain } => Request::Purge { domain },
                PolicyAction::List => Request::List,
            };
            runtime.block_on(policy_command(config, req, json))
        }
        Command::Queue { action, json } => {
            let req = match action {
                QueueAction::List => Request::QueueList,
                QueueAction::Flush { id } => Request::QueueFlush { id },
                QueueAction::Delete { id } => Request::QueueDelete { id },
            };
            runtime.block_on(policy_command(config, req, json))
        }
        Command::RelayPassword { user } => relay_password(&user),
        Command::Check { .. } => Ok(()), // handled above, before the config is loaded
        Command::Setup { .. } | Command::ManPages { .. } => Ok(()), // handled above
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

/// mta-sts-agent.1 with one page per subcommand (mta-sts-agent-serve.1,
/// …), and mta-sts-check.1, from the same clap definitions that parse the
/// command lines, so the pages cannot drift from the options.
fn man_pages(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |cmd: clap::Command| {
        clap_mangen::generate_to(cmd, dir)
            .map_err(|e| format!("cannot write man pages to {}: {e}", dir.display()))
    };
    write(Cli::command().name("mta-sts-agent"))?;
    write(
        mta_sts_agent::check::cli::CheckArgs::command()
            .name("mta-sts-check")
            .bin_name("mta-sts-check"),
    )
}

async fn query(
    config: mta_sts_agent::config::Config,
    domain: &str,
    map: &str,
) -> Result<(), String> {
    if !config.socketmap.maps.contains_key(map) {
        let known: Vec<&str> = config.socketmap.maps.keys().map(String::as_str).collect();
        return Err(format!(
            "no map named '{map}'; configured maps: {}",
            known.join(", ")
        ));
    }
    let store = daemon::open_store(&config, true)?;
    let resolver = Resolver::from_config(&config, store)?;
    // The daemon's own answer: maps adapted to the Postfix version, the MX
    // check and DANE included.
    let handler = Handler {
        resolver: resolver.clone(),
        maps: mta_sts_agent::socketmap::postfix_version::resolve(&config.socketmap)?,
        idle_timeout: config.socketmap.idle_timeout,
    };
    println!(
        "{}",
        handler
            .answer(format!("{map} {domain}").as_bytes(), "query")
            .await
    );
    let answer = resolver.lookup(domain).await;
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

fn relay_password(user: &str) -> Result<(), String> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err("empty password on standard input".to_string());
    }
    let line = mta_sts_agent::relay::auth::password_line(
        user,
        password.as_bytes(),
        mta_sts_agent::relay::auth::ITERATIONS,
    )?;
    println!("{line}");
    Ok(())
}

/// Asks the running daemon; without one, acts on the store directly with the
/// same handler, so the answer is the same either way.
async fn policy_command(
    config: mta_sts_agent::config::Config,
    req: Request,
    json: bool,
) -> Result<(), String> {
    let path = control::socket_path(&config);
    let response = match control::request(&path, &req).await {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            eprintln!(
                "no daemon at {} ({e}); acting on the store directly",
                path.display()
            );
            let store = daemon::open_store(&config, false)?;
            let resolver = Resolver::from_config(&config, store)?;
            let dir = mta_sts_agent::relay::spool_dir(&config);
            let queue = if dir.exists() {
                let spool = mta_sts_agent::relay::spool::Spool::open(&dir)
                    .map_err(|e| format!("cannot open the queue {}: {e}", dir.display()))?;
                control::QueueAccess::Offline(spool)
            } else {
                control::QueueAccess::Disabled
            };
            control::handle(&resolver, &queue, req).await
        }
        Err(e) => {
            return Err(format!(
                "cannot talk to the daemon at {}: {e} (run as the daemon's user, e.g. root)",
                path.display()
            ))
        }
    };
    print_response(&response, json)
}

fn print_response(r: &Response, json: bool) -> Result<(), String> {
    if json {
        let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        if let Some(m) = &r.message {
            println!("{m}");
        }
        let now = mta_sts_agent::store::unix_now();
        for m in &r.queue {
            let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
            println!(
                "{}  {} bytes  arrived {}s ago  from {}",
                m.id,
                m.size,
                now.saturating_sub(m.arrival),
                sender
            );
            for rc in &m.recipients {
                let next = rc
                    .next_attempt
                    .map(|t| format!("  next try in {}s", t.saturating_sub(now)))
                    .unwrap_or_default();
                println!("    {}  {}{next}", rc.address, rc.status);
                if let Some(reason) = &rc.reason {
                    println!("        {reason}");
                }
            }
        }
        if r.queue.is_empty() && r.ok && r.message.is_none() && r.policies.is_empty() {
            println!("(empty)");
        }
        for p in &r.policies {
            println!(
                "{}  mode={} id={} mx={} expires_in={}s source={}",
                p.domain,
                p.mode,
                p.id,
                p.mx.join(","),
                p.expires_at.saturating_sub(now),
                p.source
            );
            if let Some(body) = p.body.as_deref().filter(|b| !b.is_empty()) {
                for line in body.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    match &r.error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}
