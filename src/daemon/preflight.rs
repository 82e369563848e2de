//! Start-up check, as the user the daemon runs as, that the relay's spool
//! can be used. A spool directory it cannot read or write would otherwise
//! show up only as a 451 to every DATA, and mail queued there by an earlier
//! run (as root, say) would never be delivered, without a word.

use std::path::Path;

use nix::unistd::{access, AccessFlags};

/// Checks `state_dir`, the spool `queue` and its directories and files.
/// The error names the path and the command that fixes it.
pub fn check_spool(state_dir: &Path, queue: &Path) -> Result<(), String> {
    let rwx = AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK;
    let rw = AccessFlags::R_OK | AccessFlags::W_OK;
    let fail = |path: &Path, e: nix::Error| {
        let user = whoami();
        format!(
            "the relay queue cannot be used: {} is not readable and writable by user {user} \
             ({e}); mail queued there would never be delivered. Give the state directory to \
             that user: chown -R {user}: {} && chmod -R u+rwX {}",
            path.display(),
            state_dir.display(),
            state_dir.display()
        )
    };
    for dir in [state_dir, queue] {
        match access(dir, rwx) {
            Ok(()) => {}
            // Made by the spool on first use.
            Err(nix::Error::ENOENT) if dir == queue => return Ok(()),
            Err(e) => return Err(fail(dir, e)),
        }
    }
    for sub in ["incoming", "messages", "state", "corrupt"] {
        let dir = queue.join(sub);
        match access(&dir, rwx) {
            Ok(()) => {}
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(fail(&dir, e)),
        }
        if sub == "corrupt" {
            continue;
        }
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| fail(&dir, nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
        for entry in entries.flatten() {
            // The spool makes only plain files; a link is not ours to judge.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            match access(&path, rw) {
                Ok(()) | Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(fail(&path, e)),
            }
        }
    }
    Ok(())
}

/// The name of the effective user, for the fix in the message.
fn whoami() -> String {
    let uid = nix::unistd::Uid::effective();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}
