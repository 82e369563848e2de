//! Handing the state tree to the service user, as root, before dropping
//! privileges.
//!
//! Everything under `state_dir` may have been written by the service user,
//! so a compromised service can plant links there and wait for the next
//! start as root: a `chown` that follows them gives it any file of the
//! system. Hence, and only through file descriptors so that nothing can be
//! swapped between a check and a use:
//! - the path to the state dir is resolved one component at a time and a
//!   symlink on it is followed only when root owns it (the user cannot
//!   have made or changed it);
//! - inside, a symlink is never followed nor descended into, and a regular
//!   file with more than one link is left alone (the other name could be
//!   `/etc/shadow`); both are logged;
//! - the whole tree is handed over, not just its top level, so that moving
//!   from root to `user =` does not leave `queue/` unwritable.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, Gid, Uid};

/// Deeper than anything the daemon makes (`queue/messages/<id>` is 3).
const MAX_DEPTH: usize = 16;
/// Symlinks followed on the way to the state dir, as the kernel's ELOOP.
const MAX_LINKS: usize = 40;

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Opens `path` as a directory, following only root-owned symlinks.
pub fn open_state_dir(path: &Path) -> Result<OwnedFd, String> {
    let shown = path.display();
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("state directory {shown}: cannot resolve: {e}"))?
            .join(path)
    };
    let mut todo: VecDeque<OsString> = components(&abs);
    let root = openat(
        AT_FDCWD,
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open /: {e}"))?;
    let mut stack: Vec<OwnedFd> = vec![root];
    let mut walked = PathBuf::from("/");
    let mut links = 0usize;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
                walked.pop();
            }
            continue;
        }
        let Some(cur) = stack.last() else {
            return Err(format!("state directory {shown}: cannot resolve"));
        };
        let here = walked.join(&name);
        let fd = openat(
            cur,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            format!(
                "state directory {shown}: cannot open {}: {e}",
                here.display()
            )
        })?;
        let st = fstat(&fd).map_err(|e| {
            format!(
                "state directory {shown}: cannot stat {}: {e}",
                here.display()
            )
        })?;
        if kind(&st) == SFlag::S_IFDIR {
            stack.push(fd);
            walked = here;
        } else if kind(&st) == SFlag::S_IFLNK {
            if st.st_uid != 0 {
                return Err(format!(
                    "state directory {shown}: {} is a symlink owned by uid {}, not root; \
                     whoever owns it could aim the start-up chown at any file. Replace it \
                     with a directory (or a link made by root)",
                    here.display(),
                    st.st_uid
                ));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("state directory {shown}: too many symlinks"));
            }
            // The link this fd holds, not whatever the name means now.
            let target = readlinkat(&fd, "").map_err(|e| {
                format!(
                    "state directory {shown}: cannot read link {}: {e}",
                    here.display()
                )
            })?;
            let target = PathBuf::from(target);
            if target.is_absolute() {
                stack.truncate(1);
                walked = PathBuf::from("/");
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
        } else {
            return Err(format!(
                "state directory {shown}: {} is not a directory",
                here.display()
            ));
        }
    }
    let Some(last) = stack.last() else {
        return Err(format!("state directory {shown}: cannot resolve"));
    };
    openat(
        last,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("state directory {shown}: cannot open: {e}"))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Gives the directory `dir` (shown as `shown` in logs) and everything
/// under it to `uid:gid`, following no link. Entries it leaves alone are
/// logged; an error is returned only when the tree cannot be walked.
pub fn own_tree(dir: OwnedFd, shown: &Path, uid: Uid, gid: Gid) -> Result<(), String> {
    own_dir(dir, shown, uid, gid, 0)
}

fn own_dir(dir: OwnedFd, shown: &Path, uid: Uid, gid: Gid, depth: usize) -> Result<(), String> {
    fchown(&dir, Some(uid), Some(gid))
        .map_err(|e| format!("cannot give {} to uid {uid}: {e}", shown.display()))?;
    for name in list(&dir).map_err(|e| format!("cannot list {}: {e}", shown.display()))? {
        let path = shown.join(&name);
        // O_PATH pins the inode: what is checked below is what is chowned.
        let fd = match openat(
            &dir,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        let st = fstat(&fd).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        let k = kind(&st);
        if k == SFlag::S_IFDIR {
            if depth >= MAX_DEPTH {
                tracing::warn!(path = %path.display(), "state directory nested too deep; left to its owner");
                continue;
            }
            let sub = openat(
                &fd,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            own_dir(sub, &path, uid, gid, depth + 1)?;
        } else if k == SFlag::S_IFLNK {
            tracing::warn!(path = %path.display(), "symlink in the state directory left alone: it is never followed, and the daemon never makes one");
        } else if k == SFlag::S_IFREG && st.st_nlink > 1 {
            tracing::warn!(path = %path.display(), links = st.st_nlink, "file with several hard links in the state directory left alone: its other name could be any file of the system");
        } else if k == SFlag::S_IFREG || k == SFlag::S_IFSOCK || k == SFlag::S_IFIFO {
            fchownat(&fd, "", Some(uid), Some(gid), AtFlags::AT_EMPTY_PATH)
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", path.display()))?;
        } else {
            tracing::warn!(path = %path.display(), "device node in the state directory left alone");
        }
    }
    Ok(())
}

fn list(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let fd = dir.try_clone().map_err(|_| Errno::EMFILE)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// Gives one path (the control socket) to `uid:gid` without following a
/// link at its end.
pub fn own_path(path: &Path, uid: Uid, gid: Gid) -> Result<(), String> {
    match fchownat(
        AT_FDCWD,
        path,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("cannot give {} to uid {uid}: {e}", path.display())),
    }
}
