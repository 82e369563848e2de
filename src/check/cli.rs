//! Command-line options and exit codes of `mta-sts-check`, shared by the
//! `mta-sts-check` binary and `mta-sts-agent check`.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use super::progress::Progress;
use super::render::{self, Style};
use super::run::{self, Options, PolicyInput, Tools};
use crate::config::Config;
use crate::dns::Dns;
use crate::fetch::Fetcher;
use crate::policy::{normalize_domain, MAX_POLICY_BYTES};
use crate::smtp::probe::SmtpProbeConfig;
use crate::tlsprobe::TlsProber;

/// Exit status when the check itself could not run.
pub const EXIT_CANNOT_RUN: u8 = 3;

const EXIT_HELP: &str = "\
Exit status:
  0  no errors and no warnings
  1  warnings only
  2  at least one error
  3  the check could not run (usage error, unreadable --policy-file,
     no working DNS resolver, no trust anchors)";

/// Checks a domain's MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) deployment.
#[derive(Debug, Parser)]
#[command(name = "mta-sts-check", version, after_help = EXIT_HELP)]
pub struct CheckArgs {
    /// The mail domain to check, e.g. example.com.
    pub domain: String,
    /// Name server to ask, as IP or IP:port; repeatable. Default: those of
    /// /etc/resolv.conf.
    #[arg(long = "dns-server", value_name = "IP[:PORT]")]
    pub dns_server: Vec<String>,
    /// PEM file of extra trust anchors, added to the system store.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Trust only --ca-file, not the system store.
    #[arg(long, requires = "ca_file")]
    pub ca_file_only: bool,
    /// Time limit of each probe (DNS query, HTTPS fetch, TLS handshake, SMTP
    /// step), e.g. 10s, 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Port of the policy host (HTTPS).
    #[arg(long, value_name = "PORT", default_value_t = 443)]
    pub https_port: u16,
    /// Port of the SMTP probes of the MX hosts.
    #[arg(long, value_name = "PORT", default_value_t = 25)]
    pub smtp_port: u16,
    /// Do not connect to the MX hosts (outbound port 25 is often blocked).
    #[arg(long)]
    pub no_smtp: bool,
    /// Print the report as JSON (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Lint this policy file (or - for standard input) instead of the
    /// published policy, including whether the current MX hosts match it.
    #[arg(long, value_name = "FILE|-")]
    pub policy_file: Option<String>,
    /// When the domain has no working MTA-STS or TLS-RPT yet, print records
    /// and a testing policy ready to publish.
    #[arg(long)]
    pub suggest: bool,
    /// Name to send in EHLO. Default: this machine's host name.
    #[arg(long, value_name = "NAME")]
    pub ehlo: Option<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// The EHLO name: the host name if it is a usable domain name.
fn default_ehlo() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    match normalize_domain(name.trim()) {
        Ok(n) => n,
        Err(_) => "localhost".to_string(),
    }
}

/// Parses `args` (the first item is the program name) and runs the check.
/// `bin_name` is how usage messages name the program.
pub fn main_from<I, T>(bin_name: &'static str, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = CheckArgs::command().name(bin_name).bin_name(bin_name);
    let matches = match command.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_CANNOT_RUN,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let args = match CheckArgs::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    ExitCode::from(main_with(args))
}

fn cannot_run(message: impl std::fmt::Display) -> u8 {
    eprintln!("mta-sts-check: {message}");
    EXIT_CANNOT_RUN
}

/// Runs the check for parsed arguments; returns the exit status.
pub fn main_with(args: CheckArgs) -> u8 {
    let domain = match normalize_domain(args.domain.trim()) {
        Ok(d) if d.contains('.') => d,
        Ok(_) => {
            return cannot_run(format!(
                "'{}' is not a domain name: a single label; give the mail domain, e.g. example.com",
                args.domain
            ))
        }
        Err(e) => {
            return cannot_run(format!(
                "'{}' is not a domain name: {e}; give the mail domain, e.g. example.com",
                args.domain
            ))
        }
    };
    let policy_input = match &args.policy_file {
        None => None,
        Some(p) if p == "-" => {
            let mut body = Vec::new();
            let limit = (MAX_POLICY_BYTES + 1) as u64;
            if let Err(e) = std::io::stdin().lock().take(limit).read_to_end(&mut body) {
                return cannot_run(format!("cannot read the policy from standard input: {e}"));
            }
            Some(PolicyInput::Stdin { body })
        }
        Some(path) => {
            let file = std::fs::File::open(path);
            let mut body = Vec::new();
            let read =
                file.and_then(|f| f.take((MAX_POLICY_BYTES + 1) as u64).read_to_end(&mut body));
            if let Err(e) = read {
                return cannot_run(format!("cannot read --policy-file {path}: {e}"));
            }
            Some(PolicyInput::File {
                path: path.clone(),
                body,
            })
        }
    };

    // One set of constructors serves daemon and check: build the daemon's
    // configuration from the options.
    let mut config = Config::default();
    config.dns.nameservers = args.dns_server.clone();
    config.dns.timeout = args.timeout.min(Duration::from_secs(5));
    config.dns.attempts = 2;
    config.fetch.port = args.https_port;
    config.fetch.timeout = args.timeout;
    config.fetch.ca_file = args.ca_file.clone();
    config.fetch.ca_file_only = args.ca_file_only;
    if let Err(e) = config.nameservers() {
        return cannot_run(format!("--dns-server: {e}"));
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return cannot_run(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let dns = match Dns::from_config(&config) {
            Ok(d) => d,
            Err(e) => return cannot_run(format!("no DNS resolver: {e}")),
        };
        // The shared constructors word errors for the daemon's config keys.
        let fetcher = match Fetcher::new(&config.fetch, &dns) {
            Ok(f) => f,
            Err(e) => return cannot_run(e.replace("fetch.ca_file", "--ca-file")),
        };
        let prober = match TlsProber::new(&config.fetch, args.timeout) {
            Ok(p) => p,
            Err(e) => return cannot_run(e),
        };
        let tools = Tools {
            dns,
            fetcher,
            prober,
        };
        let opts = Options {
            domain,
            policy_input,
            smtp: (!args.no_smtp).then(|| SmtpProbeConfig {
                port: args.smtp_port,
                timeout: args.timeout,
                ehlo_name: args.ehlo.clone().unwrap_or_else(default_ehlo),
            }),
            https_port: args.https_port,
            timeout: args.timeout,
            suggest: args.suggest,
        };
        let progress = Progress::start(std::io::stderr().is_terminal());
        let result = run::run(&opts, &tools, &progress).await;
        progress.finish();
        let report = match result {
            Ok(r) => r,
            Err(e) => return cannot_run(e),
        };
        let text = if args.json {
            let mut j = render::json(&report);
            j.push('\n');
            j
        } else {
            let stdout_tty = std::io::stdout().is_terminal();
            render::human(
                &report,
                Style {
                    color: render::want_color(stdout_tty),
                },
            )
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        report.exit_code()
    })
}
