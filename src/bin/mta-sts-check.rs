//! `mta-sts-check DOMAIN`: diagnose a domain's MTA-STS deployment. The same
//! tool is `mta-sts-agent check`; see `mta_sts_agent::check`.

use std::process::ExitCode;

fn main() -> ExitCode {
    mta_sts_agent::check::cli::main_from("mta-sts-check", std::env::args_os())
}
