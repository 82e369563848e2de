//! A small file system of the test's own (a tmpfs with `size=`, mounted by
//! the test as root) for the fault-injection tests: full disk, read-only
//! remount. It is unmounted on drop, even after a failed assertion.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (e.g. "2m") on `dir`. `None`, with the
    /// reason printed, where that is impossible (not root); under
    /// `CI=true`, where the test must run, a failure instead.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => {
                return Some(SmallFs {
                    dir: dir.to_path_buf(),
                })
            }
            Ok(o) => format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount(8): {e}"),
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "fault-injection test cannot run under CI (it needs root): {why}"
        );
        eprintln!("SKIPPED: fault-injection test needs a tmpfs of its own (run as root): {why}");
        None
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `mount -o remount,MODE` ("ro" or "rw").
    pub fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.dir)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "remount {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes one file until the file system is full, the last partial
    /// blocks included; returns its path (remove it to give space back).
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0u8; 512]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
