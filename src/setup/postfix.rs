//! `mta-sts-agent setup postfix`: asks the local Postfix for its settings
//! with its own tools, prints the plan of `setup::plan`, applies it with
//! `postconf -e` after a backup of main.cf, and checks with `postmap -q`
//! that Postfix reaches the running agent. Every command runs with a
//! deadline and bounded output; its stderr is shown when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::plan::{self, AgentSide, Observed, Plan};
use crate::config::Config;
use crate::process::Output;

/// Longest any one Postfix tool may take (postconf answers in
/// milliseconds; postmap waits for the agent's first lookup).
const DEADLINE: Duration = Duration::from_secs(30);
const STDOUT_CAP: u64 = 256 * 1024;
const STDERR_CAP: u64 = 16 * 1024;

/// Exit status for a refusal: nothing was changed, the admin has to act.
pub const EXIT_REFUSED: u8 = 2;

/// Which Postfix, and how to run its tools.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `-c DIR` for every Postfix tool; None: its default.
    pub config_dir: Option<PathBuf>,
    /// Words put before every Postfix tool (e.g. `chroot /srv/trixie`).
    /// Paths must be the same inside and out.
    pub wrap: Vec<String>,
}

pub struct Options {
    pub apply: bool,
    /// The domain `postmap -q` asks the agent about.
    pub verify_domain: String,
}

impl Target {
    fn command(&self, program: &str) -> Command {
        let mut words = self.wrap.iter();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(program);
                c
            }
            None => Command::new(program),
        };
        if let Some(dir) = &self.config_dir {
            cmd.arg("-c").arg(dir);
        }
        cmd
    }

    fn describe(&self, program: &str, args: &[&str]) -> String {
        let mut words: Vec<String> = self.wrap.clone();
        words.push(program.to_string());
        if let Some(dir) = &self.config_dir {
            words.push("-c".into());
            words.push(dir.display().to_string());
        }
        words.extend(args.iter().map(|a| a.to_string()));
        words.join(" ")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_bounded(cmd, &self.describe(program, args))
    }

    /// Like [`run`](Self::run), but a failure is an error with its stderr.
    fn run_ok(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self.run(program, args)?;
        if !out.ok {
            return Err(format!(
                "`{}` failed ({}): {}",
                self.describe(program, args),
                out.code
                    .map_or("killed".to_string(), |c| format!("exit {c}")),
                out.stderr.trim()
            ));
        }
        Ok(out.stdout)
    }

    /// Whether `path` is readable where this Postfix runs.
    fn readable(&self, path: &str) -> bool {
        if self.wrap.is_empty() {
            return std::fs::File::open(path).is_ok();
        }
        let mut words = self.wrap.iter();
        let Some(first) = words.next() else {
            return false;
        };
        let mut cmd = Command::new(first);
        cmd.args(words).args(["test", "-r", path]);
        run_bounded(cmd, "test -r").is_ok_and(|o| o.ok)
    }
}

/// Runs `cmd` within the bounds every Postfix tool gets here.
fn run_bounded(cmd: Command, what: &str) -> Result<Output, String> {
    let limits = crate::process::Limits {
        deadline: DEADLINE,
        stdout_cap: STDOUT_CAP,
        stderr_cap: STDERR_CAP,
    };
    crate::process::run(cmd, what, limits).map_err(|e| e.to_string())
}

/// Everything `plan` needs, from this Postfix's own tools.
fn observe(target: &Target) -> Result<Observed, String> {
    let mail_version = target
        .run_ok("postconf", &["-dh", "mail_version"])?
        .trim()
        .to_string();
    // Unknown parameters (smtp_tlsrpt_* without TLSRPT support) are left
    // out with a warning, not an error.
    let params = plan::parse_postconf(&target.run_ok("postconf", plan::PARAMS)?);
    // A service missing from master.cf is an error of postconf -F: then
    // it does not run chrooted either.
    let mut args = vec!["-F"];
    args.extend_from_slice(plan::CHROOT_FIELDS);
    let master = target
        .run("postconf", &args)
        .map(|o| plan::parse_postconf(&o.stdout))?;
    Ok(Observed {
        mail_version,
        params,
        master,
        system_ca_readable: target.readable(plan::SYSTEM_CA_FILE),
    })
}

/// `main.cf.mta-sts-agent-20261202T054500Z`: sorts by time, and says who
/// made it.
fn backup_name(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "main.cf.mta-sts-agent-{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_plan(plan: &Plan, main_cf: &Path, apply: bool) {
    println!(
        "Postfix {} ({}), smtp {}",
        plan.version,
        main_cf.display(),
        if plan.chrooted {
            "chrooted"
        } else {
            "not chrooted"
        }
    );
    if plan.changes.is_empty() {
        println!(
            "nothing to change: Postfix already asks the agent ({})",
            plan.table
        );
    } else {
        println!(
            "{} {} setting(s):",
            if apply { "changing" } else { "would change" },
            plan.changes.len()
        );
        for c in &plan.changes {
            let old = if c.old.is_empty() { "unset" } else { &c.old };
            println!("  {} = {}  (was {old}): {}", c.param, c.new, c.why);
        }
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
}

/// The whole command; Err(code, message). Refusals print their advice and
/// return [`EXIT_REFUSED`].
pub fn run(config: &Config, target: &Target, opts: &Options) -> Result<(), (u8, String)> {
    let fail = |e: String| (1u8, e);
    let agent = AgentSide::from_config(config).map_err(fail)?;
    let observed = observe(target).map_err(fail)?;
    let config_dir = match &target.config_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(
            target
                .run_ok("postconf", &["-h", "config_directory"])
                .map_err(fail)?
                .trim(),
        ),
    };
    let main_cf = config_dir.join("main.cf");
    let plan = match plan::plan(&observed, &agent) {
        Ok(p) => p,
        Err(r) => {
            println!("not changing this Postfix: {}", r.reason);
            for a in &r.advice {
                println!("  {a}");
            }
            return Err((EXIT_REFUSED, "refused; nothing was changed".into()));
        }
    };
    print_plan(&plan, &main_cf, opts.apply);
    if !plan.changes.is_empty() {
        if !opts.apply {
            println!("dry run: nothing changed; run again with --apply to make these changes");
            return Ok(());
        }
        let backup = config_dir.join(backup_name(SystemTime::now()));
        std::fs::copy(&main_cf, &backup).map_err(|e| {
            fail(format!(
                "cannot back up {} to {}: {e}; nothing was changed",
                main_cf.display(),
                backup.display()
            ))
        })?;
        println!("backup: {}", backup.display());
        let settings: Vec<String> = plan
            .changes
            .iter()
            .map(|c| format!("{} = {}", c.param, c.new))
            .collect();
        let mut args = vec!["-e"];
        args.extend(settings.iter().map(String::as_str));
        target.run_ok("postconf", &args).map_err(|e| {
            fail(format!(
                "{e}\nmain.cf may be partly changed: restore it with cp {} {}",
                backup.display(),
                main_cf.display()
            ))
        })?;
        // The proof that the changes took: a second plan finds nothing.
        let after = observe(target).map_err(fail)?;
        match plan::plan(&after, &agent) {
            Ok(p) if p.changes.is_empty() => println!("applied {} change(s)", plan.changes.len()),
            Ok(p) => {
                return Err(fail(format!(
                    "postconf -e did not take: still to change: {}",
                    p.changes
                        .iter()
                        .map(|c| c.param.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Err(r) => return Err(fail(format!("after the change: {}", r.reason))),
        }
        match target.run("postfix", &["status"]) {
            Ok(o) if o.ok => {
                target.run_ok("postfix", &["reload"]).map_err(fail)?;
                println!("postfix reload: the running Postfix uses the new settings");
            }
            _ => println!("Postfix is not running: it uses the new settings when it starts"),
        }
    } else if !opts.apply {
        println!("dry run: nothing changed");
    }
    verify(target, &plan.table, &opts.verify_domain).map_err(fail)
}

/// `postmap -q DOMAIN TABLE`: found (exit 0) or NOTFOUND (exit 1, no
/// complaint) both mean the agent answered.
fn verify(target: &Target, table: &str, domain: &str) -> Result<(), String> {
    let out = target.run("postmap", &["-q", domain, table])?;
    let complaint = out.stderr.trim();
    let again = target.describe("postmap", &["-q", domain, table]);
    if out.ok {
        println!(
            "verified: postmap -q {domain} {table} -> {}",
            out.stdout.trim()
        );
        return Ok(());
    }
    if out.code == Some(1) && complaint.is_empty() {
        println!("verified: postmap -q {domain} {table} -> not found (no MTA-STS policy for {domain}): the agent answers");
        return Ok(());
    }
    Err(format!(
        "Postfix cannot get an answer from the agent at {table}:\n  {}\n\
         Start the agent (systemctl enable --now mta-sts-agent, or mta-sts-agent serve) \
         and check again with:\n    {again}\n\
         Until it answers, Postfix defers mail whose policy lookup fails.",
        complaint.replace('\n', "\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_carry_the_utc_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_190_300); // 2026-12-02 05:45:00
        assert_eq!(backup_name(t), "main.cf.mta-sts-agent-20261202T054500Z");
        assert_eq!(
            backup_name(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "main.cf.mta-sts-agent-20000229T000000Z"
        );
    }

    #[test]
    fn commands_are_bounded_in_time() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = run_bounded(cmd, "sh").unwrap();
        assert_eq!((o.ok, o.code), (false, Some(3)));
        assert_eq!((o.stdout.trim(), o.stderr.trim()), ("out", "err"));
    }
}
