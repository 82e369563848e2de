//! A policy store file that cannot be opened as a database (truncated,
//! zero-length, garbage, another program's file) must not keep the daemon
//! from starting: it is renamed aside, a fresh store is made, and every
//! domain is fetched again at its next lookup. The set-aside copies are
//! kept for inspection, a few at most, so a file that breaks at every
//! start cannot fill the disk.

use std::path::{Path, PathBuf};

use super::{unix_now, StoreError};

/// Set-aside copies kept next to the store; older ones are deleted.
pub const KEEP_SET_ASIDE: usize = 3;

const MARK: &str = ".broken-";

/// Renames `path` to `<path>.broken-<unix time>` and prunes older copies.
pub fn set_aside(path: &Path, why: &str) -> Result<PathBuf, StoreError> {
    let aside = PathBuf::from(format!("{}{MARK}{}", path.display(), unix_now()));
    std::fs::rename(path, &aside).map_err(|e| {
        StoreError::Unusable(format!(
            "{} is not a usable policy store ({why}) and cannot be set aside: {e}",
            path.display()
        ))
    })?;
    tracing::error!(store = %path.display(), set_aside = %aside.display(), reason = %why, "policy store unreadable; set aside, starting with an empty store (policies are fetched again)");
    prune(path);
    Ok(aside)
}

fn prune(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}{MARK}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut copies: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let t = n.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((t, e.path()))
        })
        .collect();
    copies.sort();
    let excess = copies.len().saturating_sub(KEEP_SET_ASIDE);
    for (_, old) in copies.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot delete an old set-aside policy store");
        }
    }
}
