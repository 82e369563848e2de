//! Child processes with bounded output and run time. The agent runs
//! Postfix's own tools (`postconf` at start for the reply style, `postconf`
//! and `postmap` in `setup postfix`); a tool that hangs, or prints without
//! end, must cost a deadline and a few KiB, never a stuck start or
//! unbounded memory.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    /// None: ended by a signal.
    pub code: Option<i32>,
    /// At most the cap's octets, decoded lossily.
    pub stdout: String,
    pub stderr: String,
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From spawn to exit; past it the child is killed.
    pub deadline: Duration,
    pub stdout_cap: u64,
    pub stderr_cap: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run `{what}`: {error}")]
    Spawn { what: String, error: std::io::Error },
    #[error("`{what}` did not finish within {deadline:?}")]
    Deadline { what: String, deadline: Duration },
    #[error("waiting for `{what}`: {error}")]
    Wait { what: String, error: std::io::Error },
}

/// Runs `cmd` with stdin closed within `limits`; `what` names it in errors.
pub fn run(mut cmd: Command, what: &str, limits: Limits) -> Result<Output, RunError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| RunError::Spawn {
            what: what.to_string(),
            error,
        })?;
    let stdout = capped_reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        limits.stdout_cap,
    );
    let stderr = capped_reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        limits.stderr_cap,
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < limits.deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Deadline {
                    what: what.to_string(),
                    deadline: limits.deadline,
                });
            }
            Err(error) => {
                return Err(RunError::Wait {
                    what: what.to_string(),
                    error,
                })
            }
        }
    };
    Ok(Output {
        ok: status.success(),
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Keeps the first `cap` octets of a pipe, in a thread of its own so that
/// the deadline above is kept whatever the child writes; the rest is
/// drained so the child never blocks on a full pipe. The thread ends when
/// the child exits or is killed (its end of the pipe closes).
fn capped_reader(pipe: Option<Box<dyn Read + Send>>, cap: u64) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(p) = pipe {
            let mut p = p.take(cap);
            let _ = p.read_to_end(&mut out);
            let _ = std::io::copy(&mut p.into_inner(), &mut std::io::sink());
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        deadline: Duration::from_secs(5),
        stdout_cap: 16,
        stderr_cap: 8,
    };

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_is_capped_and_the_status_kept() {
        let out = run(
            sh("head -c 100000 /dev/zero; echo oops >&2; exit 3"),
            "t",
            LIMITS,
        )
        .unwrap();
        assert!(!out.ok);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout.len(), 16);
        assert_eq!(out.stderr, "oops\n");
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_deadline() {
        let t = Instant::now();
        let limits = Limits {
            deadline: Duration::from_millis(200),
            ..LIMITS
        };
        let err = run(sh("exec sleep 30"), "sleeper", limits).unwrap_err();
        assert!(matches!(err, RunError::Deadline { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run(Command::new("/nonexistent/tool"), "tool", LIMITS).unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }), "{err}");
    }
}
