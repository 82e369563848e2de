//! Every Postfix the live tests can run: the system's (Debian 12: 3.7) and
//! the Debian roots `contrib/ci/postfix-roots` makes (trixie: 3.10, sid:
//! 3.11), kept in `$MTA_STS_POSTFIX_ROOTS` (default
//! `/var/cache/mta-sts-agent-ci/roots`).
//!
//! A Postfix from a root runs as `chroot ROOT program …` in a mount
//! namespace of its own (`unshare -m`): the test's directory is bind-mounted
//! at the same path inside the root (under a tmpfs over `ROOT/tmp`, so the
//! cached root never changes) and the root's `/etc/resolv.conf` is replaced
//! by the test's. The namespace ends with its last process, so nothing is
//! left mounted whatever the test does. The network is shared: agent and
//! fixtures run outside the root.
//!
//! Under `CI` a missing version is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The suites `contrib/ci/postfix-roots` makes, and what each brings.
const ROOTS: [(&str, &str); 2] = [("trixie", "3.10"), ("sid", "3.11")];

/// Sets up the mount namespace and enters the root; `$1` root, `$2`
/// resolv.conf to use (or empty), `$3` the directory to show, then the
/// command.
const ENTER_ROOT: &str = r#"set -e
root=$1 resolv=$2 dir=$3; shift 3
case "$dir" in /tmp/*) mount -t tmpfs -o size=1m,mode=1777 tmpfs "$root/tmp" ;; esac
mkdir -p "$root$dir"
mount --bind "$dir" "$root$dir"
mount -t proc proc "$root/proc"
if [ -n "$resolv" ]; then mount --bind "$resolv" "$root/etc/resolv.conf"; fi
exec chroot "$root" "$@""#;

#[derive(Debug, Clone)]
pub struct Postfix {
    /// `mail_version`, e.g. `3.10.13`.
    pub version: String,
    /// None: the system's Postfix.
    pub root: Option<PathBuf>,
}

impl std::fmt::Display for Postfix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.root {
            Some(r) => write!(f, "Postfix {} ({})", self.version, r.display()),
            None => write!(f, "Postfix {} (system)", self.version),
        }
    }
}

pub fn roots_dir() -> PathBuf {
    std::env::var_os("MTA_STS_POSTFIX_ROOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mta-sts-agent-ci/roots"))
}

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Every Postfix the machine has, oldest first. Outside CI, a missing one is
/// reported and left out; under CI it panics.
pub fn all() -> Vec<Postfix> {
    let mut out = Vec::new();
    match system() {
        Some(p) => out.push(p),
        None if ci() => panic!("the system Postfix is missing: apt-get install postfix"),
        None => println!("skipped: the system Postfix (apt-get install postfix)"),
    }
    let dir = roots_dir();
    for (suite, wants) in ROOTS {
        let root = dir.join(suite);
        match from_root(&root) {
            Some(p) if p.version.starts_with(&format!("{wants}.")) => out.push(p),
            found => {
                let why = format!(
                    "Postfix {wants} from {} ({}): run contrib/ci/postfix-roots",
                    root.display(),
                    match found {
                        Some(p) => format!("found {} instead", p.version),
                        None => "missing or incomplete".to_string(),
                    }
                );
                if ci() {
                    panic!("{why}");
                }
                println!("skipped: {why}");
            }
        }
    }
    out
}

fn system() -> Option<Postfix> {
    if !Path::new("/usr/sbin/postfix").exists() {
        return None;
    }
    let out = Command::new("/usr/sbin/postconf")
        .args(["-dh", "mail_version"])
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !version.is_empty()).then_some(Postfix {
        version,
        root: None,
    })
}

/// A root is complete when the script wrote `.complete` (its last step).
fn from_root(root: &Path) -> Option<Postfix> {
    if !root.join("usr/sbin/postfix").exists() {
        return None;
    }
    let version = std::fs::read_to_string(root.join(".complete")).ok()?;
    let version = version.trim().to_string();
    (!version.is_empty()).then(|| Postfix {
        version,
        root: Some(root.to_path_buf()),
    })
}

impl Postfix {
    /// `(major, minor, patch)` of `mail_version`.
    pub fn number(&self) -> (u32, u32, u32) {
        let mut parts = self
            .version
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse().unwrap_or(0));
        (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    }

    pub fn at_least(&self, v: (u32, u32, u32)) -> bool {
        self.number() >= v
    }

    /// A short name for namespaces and file names: `3_10_13`.
    pub fn tag(&self) -> String {
        self.version
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    }

    /// `program args…` of this Postfix. `visible`: the test's directory,
    /// which must look the same inside the root; `resolv_conf`: the
    /// resolver file this Postfix must read (roots only; the system Postfix
    /// in a namespace gets /etc/netns/NS/resolv.conf from `ip netns exec`);
    /// `netns`: run inside that network namespace.
    pub fn command(
        &self,
        program: &str,
        visible: &Path,
        resolv_conf: Option<&Path>,
        netns: Option<&str>,
    ) -> Command {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c
            }
            None => Command::new("env"),
        };
        match &self.root {
            None => {
                cmd.arg(format!("/usr/sbin/{program}"));
            }
            Some(root) => {
                cmd.args(["unshare", "-m", "--propagation", "private"])
                    .args(["sh", "-c", ENTER_ROOT, "sh"])
                    .arg(root)
                    .arg(resolv_conf.map(Path::as_os_str).unwrap_or_default())
                    .arg(visible)
                    .arg(format!("/usr/sbin/{program}"));
            }
        }
        cmd
    }

    /// The uid and gid of the `postfix` user as this Postfix knows them
    /// (a root has its own /etc/passwd).
    pub fn postfix_ids(&self) -> (u32, u32) {
        let passwd = match &self.root {
            Some(r) => r.join("etc/passwd"),
            None => PathBuf::from("/etc/passwd"),
        };
        let text = std::fs::read_to_string(&passwd)
            .unwrap_or_else(|e| panic!("read {}: {e}", passwd.display()));
        text.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[0] == "postfix")
                    .then(|| (f[2].parse().ok(), f[3].parse().ok()))
                    .and_then(|(u, g)| Some((u?, g?)))
            })
            .unwrap_or_else(|| panic!("no postfix user in {}", passwd.display()))
    }
}
