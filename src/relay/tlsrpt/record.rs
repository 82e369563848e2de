//! The counts behind TLS-RPT reports: per UTC day and policy domain, per
//! policy (type and text), the successful sessions and the failed ones
//! grouped by (result type, sending IP, MX host name, MX IP).
//!
//! Counts live in memory (a mutex around a small map, so the delivery path
//! pays one lock and a few comparisons) and are written to
//! `<state_dir>/tlsrpt/counts/<YYYY-MM-DD>.json` every
//! `relay.tlsrpt.flush_interval` and at shutdown, each file replaced
//! atomically (write, fsync, rename, fsync directory). A crash loses at most
//! the counts of the last interval; a restart loads the files back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyType, ResultType};

/// Longest counts file read back, and written: a day's counts that would
/// not fit stay in memory (logged) rather than become an unreadable file.
const MAX_FILE: u64 = 16 * 1024 * 1024;

// Caps on one day's counts, so that neither memory nor the day's file grows
// with whatever the DNS answers or recipients bring. Past them the session
// is still counted where it can be (see `Book::add`), never a panic or an
// unbounded list.
/// Policy domains counted per day.
pub const MAX_DOMAINS_PER_DAY: usize = 5_000;
/// Policies of one domain on one day (a policy changed during the day).
pub const MAX_POLICIES_PER_DOMAIN: usize = 4;
/// Failure groups (result type, IPs, MX) per policy.
pub const MAX_FAILURE_GROUPS: usize = 64;

/// One failure group of RFC 8460 §4.4 `failure-details`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FailureCount {
    pub result_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    pub count: u64,
}

/// The counts of one policy of one domain on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// `sts` (or `tlsa`, once DANE records sessions).
    pub policy_type: String,
    /// The policy text, one entry per line (`policy-string`).
    pub policy_string: Vec<String>,
    /// The policy's `mx:` patterns (`mx-host`).
    pub mx_host: Vec<String>,
    pub success: u64,
    pub failures: Vec<FailureCount>,
    /// Failures past [`MAX_FAILURE_GROUPS`]: in the total, without details
    /// (RFC 8460 §4.4 `failure-details` need not list every session).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other_failures: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PolicyCounts {
    pub fn failure_total(&self) -> u64 {
        self.failures
            .iter()
            .fold(self.other_failures, |n, f| n.saturating_add(f.count))
    }
}

/// Everything recorded for one policy domain on one day. A policy that
/// changed during the day gives a second entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainDay {
    pub policies: Vec<PolicyCounts>,
}

/// What a session under a policy came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session<'a> {
    pub policy_type: PolicyType,
    pub policy_domain: &'a str,
    pub policy_string: &'a [String],
    pub mx_host: &'a [String],
    /// None: TLS was negotiated and validated under the policy.
    pub result_type: Option<ResultType>,
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: Option<&'a str>,
    pub receiving_ip: Option<IpAddr>,
}

/// Counts of every day not yet reported, and which days changed since the
/// last flush.
#[derive(Debug, Default)]
pub struct Book {
    pub days: BTreeMap<u64, BTreeMap<String, DomainDay>>,
    pub dirty: BTreeSet<u64>,
    /// Days whose domain cap was hit (logged once).
    pub full: BTreeSet<u64>,
}

impl Book {
    pub fn add(&mut self, day: u64, s: &Session<'_>) {
        let map = self.days.entry(day).or_default();
        if !map.contains_key(s.policy_domain) && map.len() >= MAX_DOMAINS_PER_DAY {
            if self.full.insert(day) {
                tracing::warn!(day = %day_name(day), max = MAX_DOMAINS_PER_DAY, domain = %s.policy_domain, "TLS-RPT: too many policy domains today; sessions of further domains are not counted");
            }
            return;
        }
        let domain = map.entry(s.policy_domain.to_string()).or_default();
        let i = match domain.policies.iter().position(|p| {
            p.policy_type == s.policy_type.as_str()
                && p.policy_string == s.policy_string
                && p.mx_host == s.mx_host
        }) {
            Some(i) => i,
            // The latest policy takes the last slot: its sessions still
            // count, under a slightly wrong policy text.
            None if domain.policies.len() >= MAX_POLICIES_PER_DOMAIN => domain.policies.len() - 1,
            None => {
                domain.policies.push(PolicyCounts {
                    policy_type: s.policy_type.as_str().to_string(),
                    policy_string: s.policy_string.to_vec(),
                    mx_host: s.mx_host.to_vec(),
                    success: 0,
                    failures: Vec::new(),
                    other_failures: 0,
                });
                domain.policies.len() - 1
            }
        };
        let Some(p) = domain.policies.get_mut(i) else {
            return;
        };
        match s.result_type {
            None => p.success = p.success.saturating_add(1),
            Some(rt) => {
                let full = p.failures.len() >= MAX_FAILURE_GROUPS;
                let found = p.failures.iter_mut().find(|f| {
                    f.result_type == rt.as_str()
                        && f.sending_mta_ip == s.sending_mta_ip
                        && f.receiving_mx_hostname.as_deref() == s.receiving_mx_hostname
                        && f.receiving_ip == s.receiving_ip
                });
                match found {
                    Some(f) => f.count = f.count.saturating_add(1),
                    None if full => p.other_failures = p.other_failures.saturating_add(1),
                    None => p.failures.push(FailureCount {
                        result_type: rt.as_str().to_string(),
                        sending_mta_ip: s.sending_mta_ip,
                        receiving_mx_hostname: s.receiving_mx_hostname.map(str::to_string),
                        receiving_ip: s.receiving_ip,
                        count: 1,
                    }),
                }
            }
        }
        self.dirty.insert(day);
    }

    /// Takes what a flush must write: (day, that day's counts) per changed
    /// day; an empty map means the file goes.
    pub fn take_dirty(&mut self) -> Vec<(u64, BTreeMap<String, DomainDay>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|d| (d, self.days.get(&d).cloned().unwrap_or_default()))
            .collect()
    }

    /// Forgets `domain` on `day` (reported or dropped).
    pub fn remove(&mut self, day: u64, domain: &str) {
        if let Some(map) = self.days.get_mut(&day) {
            if map.remove(domain).is_some() {
                self.dirty.insert(day);
            }
            if map.is_empty() {
                self.days.remove(&day);
            }
        }
    }
}

// Day names are part of the file names and report ids; the calendar
// behind them is shared with the mail dates.
pub use crate::smtp::date::{day_name, parse_day_name};

pub(crate) fn mkdir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Replaces `path` with `bytes` atomically and durably: temporary file,
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Reads a file of at most [`MAX_FILE`] bytes.
pub(crate) fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    read_bounded_to(path, MAX_FILE)
}

/// Reads a file of at most `max` bytes; a longer one is an error, whatever
/// it holds (it is never read past `max + 1` bytes).
pub(crate) fn read_bounded_to(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("file over {max} bytes"),
        ));
    }
    Ok(buf)
}

/// The counts files under `dir` (`<dir>/<YYYY-MM-DD>.json`).
pub struct CountsDir {
    dir: PathBuf,
}

impl CountsDir {
    pub fn open(dir: &Path) -> io::Result<CountsDir> {
        mkdir(dir)?;
        Ok(CountsDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The counts directory even when it cannot be made now: counting goes
    /// on in memory and every flush says why it cannot write.
    pub fn open_or_log(dir: &Path) -> CountsDir {
        CountsDir::open(dir).unwrap_or_else(|e| {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the TLS-RPT counts directory; counting in memory only until it can be written");
            CountsDir {
                dir: dir.to_path_buf(),
            }
        })
    }

    fn path(&self, day: u64) -> PathBuf {
        self.dir.join(format!("{}.json", day_name(day)))
    }

    /// Every day's counts on disk. Unreadable files are renamed
    /// `*.corrupt` and logged, so one bad file does not stop the relay.
    pub fn load(&self) -> BTreeMap<u64, BTreeMap<String, DomainDay>> {
        let mut out = BTreeMap::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(day) = name.strip_suffix(".json").and_then(parse_day_name) else {
                continue;
            };
            let path = entry.path();
            let parsed = read_bounded(&path).and_then(|b| {
                serde_json::from_slice::<BTreeMap<String, DomainDay>>(&b).map_err(io::Error::other)
            });
            match parsed {
                Ok(map) => {
                    out.insert(day, map);
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable TLS-RPT counts file set aside");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        out
    }

    /// Writes (or, for an empty map, removes) one day's file.
    pub fn store(&self, day: u64, map: &BTreeMap<String, DomainDay>) -> io::Result<()> {
        let path = self.path(day);
        if map.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => File::open(&self.dir)?.sync_all(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        let bytes = serde_json::to_vec(map).map_err(io::Error::other)?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("{}: counts over {MAX_FILE} bytes", path.display()),
            ));
        }
        write_atomic(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session<'a>(rt: Option<ResultType>, lines: &'a [String]) -> Session<'a> {
        Session {
            policy_type: PolicyType::Sts,
            policy_domain: "example.test",
            policy_string: lines,
            mx_host: &[],
            result_type: rt,
            sending_mta_ip: None,
            receiving_mx_hostname: Some("mx.example.test"),
            receiving_ip: Some(IpAddr::from([127, 0, 0, 1])),
        }
    }

    #[test]
    fn groups_by_policy_and_failure() {
        let a = vec!["version: STSv1".to_string(), "mode: enforce".to_string()];
        let b = vec!["version: STSv1".to_string(), "mode: testing".to_string()];
        let mut book = Book::default();
        book.add(5, &session(None, &a));
        book.add(5, &session(None, &a));
        book.add(5, &session(Some(ResultType::CertificateExpired), &a));
        book.add(5, &session(Some(ResultType::CertificateExpired), &a));
        book.add(5, &session(Some(ResultType::StarttlsNotSupported), &a));
        book.add(5, &session(None, &b));
        let d = &book.days[&5]["example.test"];
        assert_eq!(d.policies.len(), 2);
        assert_eq!(d.policies[0].success, 2);
        assert_eq!(d.policies[0].failures.len(), 2);
        assert_eq!(d.policies[0].failure_total(), 3);
        assert_eq!(d.policies[1].success, 1);
        assert_eq!(book.take_dirty().len(), 1);
        book.remove(5, "example.test");
        assert!(book.days.is_empty());
        assert_eq!(book.take_dirty(), vec![(5, BTreeMap::new())]);
    }

    #[test]
    fn a_day_stays_bounded_and_totals_stay_right() {
        let mut book = Book::default();
        let lines: Vec<Vec<String>> = (0..10).map(|i| vec![format!("mode: v{i}")]).collect();
        let names: Vec<String> = (0..200).map(|i| format!("mx{i}.example.test")).collect();
        for l in &lines {
            for n in &names {
                let mut s = session(Some(ResultType::ValidationFailure), l);
                s.receiving_mx_hostname = Some(n);
                book.add(5, &s);
            }
        }
        let d = &book.days[&5]["example.test"];
        assert_eq!(d.policies.len(), MAX_POLICIES_PER_DOMAIN);
        let total: u64 = d.policies.iter().map(|p| p.failure_total()).sum();
        assert_eq!(total, 10 * 200, "every failure counted");
        assert!(d
            .policies
            .iter()
            .all(|p| p.failures.len() <= MAX_FAILURE_GROUPS));
        let domains: Vec<String> = (0..MAX_DOMAINS_PER_DAY + 10)
            .map(|i| format!("d{i}.test"))
            .collect();
        let one = vec!["mode: enforce".to_string()];
        for d in &domains {
            let mut s = session(None, &one);
            s.policy_domain = d;
            book.add(6, &s);
        }
        assert_eq!(book.days[&6].len(), MAX_DOMAINS_PER_DAY);
        assert!(book.full.contains(&6));
    }
}
