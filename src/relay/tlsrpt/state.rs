//! The delivery state of generated reports, on disk: one small file per
//! report, `<state_dir>/tlsrpt/reports/<YYYY-MM-DD>/<policy-domain>.json`.
//!
//! Why one file per report rather than one file for all (the former
//! `reports.json`) or a journal: every change to a report (generated, a URI
//! crossed off, done) rewrites that report's file only, so a write costs the
//! same with ten domains or ten thousand; a file that goes bad costs one
//! report, not the whole state; and old days go by removing their
//! directory. A journal would need compaction and its own recovery rules
//! for the same result.
//!
//! Bounds, whatever is on disk: a file is written only if it is at most
//! [`MAX_REPORT_FILE`] bytes and read with the same limit (so whatever was
//! written can be read back), at most `relay.tlsrpt.max_reports` reports
//! are kept (done ones make room first), and the reports' gzip bytes stay
//! on disk: memory holds only their small delivery state. A file that
//! cannot be read or parsed is moved to `tlsrpt/corrupt/` with a log line,
//! never a reason not to start.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::record::{day_name, mkdir, parse_day_name, read_bounded_to, write_atomic};
use super::ReportState;

/// Largest report file written and read (the gzip bytes, base64, plus the
/// delivery state). A day's report for one domain is a few KiB.
pub const MAX_REPORT_FILE: u64 = 1024 * 1024;
/// The single-file state of earlier versions is read (once, to convert it)
/// up to the limit those versions read it with.
const MAX_LEGACY_FILE: u64 = 16 * 1024 * 1024;

/// The report files under `<tlsrpt>/reports`.
pub struct ReportsDir {
    dir: PathBuf,
    corrupt: PathBuf,
}

/// A domain as a file name: policy domains are DNS names already; anything
/// else is refused rather than escaped, since it cannot have a report.
fn file_name(domain: &str) -> Option<String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        });
    ok.then(|| format!("{domain}.json"))
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("report state over {MAX_REPORT_FILE} bytes"),
    )
}

impl ReportsDir {
    /// `tlsrpt` is `<state_dir>/tlsrpt`. A directory that cannot be made is
    /// logged; every save then fails (and is logged) until it can.
    pub fn open(tlsrpt: &Path) -> ReportsDir {
        let dir = tlsrpt.join("reports");
        if let Err(e) = mkdir(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the TLS-RPT report directory; reports cannot be kept until this is fixed");
        }
        ReportsDir {
            dir,
            corrupt: tlsrpt.join("corrupt"),
        }
    }

    fn path(&self, day: u64, domain: &str) -> io::Result<PathBuf> {
        let name = file_name(domain)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a domain name"))?;
        Ok(self.dir.join(day_name(day)).join(name))
    }

    /// Writes one report's state (with its gzip bytes) durably.
    pub fn save(&self, r: &ReportState) -> io::Result<()> {
        let path = self.path(r.day, &r.domain)?;
        let bytes = serde_json::to_vec(r).map_err(io::Error::other)?;
        if bytes.len() as u64 > MAX_REPORT_FILE {
            return Err(too_large());
        }
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        write_atomic(&path, &bytes)
    }

    /// One report's full state, gzip bytes included.
    pub fn read(&self, day: u64, domain: &str) -> io::Result<ReportState> {
        let path = self.path(day, domain)?;
        let bytes = read_bounded_to(&path, MAX_REPORT_FILE)?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Forgets one report, and its day's directory once empty.
    pub fn remove(&self, day: u64, domain: &str) -> io::Result<()> {
        let path = self.path(day, domain)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = path.parent() {
            // Fails while other reports of that day remain: fine.
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    /// Moves a file that cannot be used to `corrupt/`, with a log line.
    fn set_aside(&self, path: &Path, why: &str) {
        let name = path
            .strip_prefix(&self.dir)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('/', "_");
        let target = self
            .corrupt
            .join(format!("{name}.{}", crate::store::unix_now()));
        let moved = mkdir(&self.corrupt).and_then(|()| fs::rename(path, &target));
        match moved {
            Ok(()) => {
                tracing::error!(file = %path.display(), moved_to = %target.display(), reason = %why, "unusable TLS-RPT report state set aside; the relay carries on without it")
            }
            Err(e) => {
                tracing::error!(file = %path.display(), reason = %why, error = %e, "unusable TLS-RPT report state ignored (cannot move it aside)")
            }
        }
    }

    /// Every report's delivery state, gzip bytes left on disk, newest days
    /// first kept when there are more than `max` (the rest stay on disk,
    /// logged). `legacy` (`reports.json`) is converted and removed.
    pub fn load(&self, legacy: &Path, max: usize) -> Vec<ReportState> {
        self.convert_legacy(legacy);
        let mut out: BTreeMap<(u64, String), ReportState> = BTreeMap::new();
        let Ok(days) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut day_dirs: Vec<(u64, PathBuf)> = days
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                parse_day_name(&name).map(|d| (d, e.path()))
            })
            .collect();
        day_dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        let mut skipped = 0usize;
        for (day, dir) in day_dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !entry.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(domain) = name.strip_suffix(".json") else {
                    // A `.tmp` of a write cut short: never acknowledged.
                    continue;
                };
                if out.len() >= max {
                    skipped += 1;
                    continue;
                }
                let parsed = read_bounded_to(&path, MAX_REPORT_FILE).and_then(|b| {
                    serde_json::from_slice::<ReportState>(&b)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                });
                match parsed {
                    Ok(mut r) if r.day == day && r.domain == domain => {
                        r.gz.clear();
                        out.insert((r.day, r.domain.clone()), r);
                    }
                    Ok(_) => self.set_aside(&path, "names another report than its file name"),
                    Err(e) => self.set_aside(&path, &e.to_string()),
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(skipped, max, dir = %self.dir.display(), "more TLS-RPT reports on disk than relay.tlsrpt.max_reports; the oldest are ignored");
        }
        out.into_values().collect()
    }

    /// Reads the single-file state of earlier versions into one file per
    /// report; a file that cannot be read is set aside.
    fn convert_legacy(&self, legacy: &Path) {
        let parsed = read_bounded_to(legacy, MAX_LEGACY_FILE).and_then(|b| {
            serde_json::from_slice::<Vec<ReportState>>(&b)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        });
        let reports = match parsed {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                let target =
                    legacy.with_extension(format!("json.broken.{}", crate::store::unix_now()));
                match fs::rename(legacy, &target) {
                    Ok(()) => {
                        tracing::error!(file = %legacy.display(), moved_to = %target.display(), error = %e, "unusable TLS-RPT report state set aside; the relay carries on without it")
                    }
                    Err(re) => {
                        tracing::error!(file = %legacy.display(), error = %e, rename_error = %re, "unusable TLS-RPT report state ignored (cannot move it aside)")
                    }
                }
                return;
            }
        };
        for r in &reports {
            match self.save(r) {
                Ok(()) => {}
                // This entry can never be a file: it is lost, not the rest.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidInput | io::ErrorKind::FileTooLarge
                    ) =>
                {
                    tracing::error!(domain = %r.domain, day = %day_name(r.day), error = %e, "TLS-RPT report state entry dropped while converting reports.json");
                }
                Err(e) => {
                    tracing::error!(domain = %r.domain, day = %day_name(r.day), error = %e, "cannot convert a TLS-RPT report state entry; keeping reports.json for the next start");
                    return;
                }
            }
        }
        match fs::remove_file(legacy) {
            Ok(()) => {
                tracing::info!(file = %legacy.display(), reports = reports.len(), "TLS-RPT report state converted to one file per report")
            }
            Err(e) => {
                tracing::warn!(file = %legacy.display(), error = %e, "cannot remove the converted TLS-RPT report state")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(day: u64, domain: &str, gz: &str) -> ReportState {
        ReportState {
            day,
            domain: domain.to_string(),
            report_id: format!("{day}_{domain}"),
            gz: gz.to_string(),
            pending: vec!["https://r.test/".to_string()],
            done: false,
        }
    }

    #[test]
    fn a_write_over_the_read_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reports = ReportsDir::open(dir.path());
        let big = "A".repeat(MAX_REPORT_FILE as usize);
        let e = reports.save(&state(5, "big.test", &big)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        reports.save(&state(5, "small.test", "H4sI")).unwrap();
        let back = reports.read(5, "small.test").unwrap();
        assert_eq!(back.gz, "H4sI");
        assert!(reports.save(&state(5, "../x", "")).is_err());
    }

    #[test]
    fn load_keeps_gzip_on_disk_and_sets_garbage_aside() {
        let dir = tempfile::tempdir().unwrap();
        let reports = ReportsDir::open(dir.path());
        reports.save(&state(5, "a.test", "H4sI")).unwrap();
        let bad = dir
            .path()
            .join("reports")
            .join(day_name(5))
            .join("b.test.json");
        fs::write(&bad, b"{\"day\": 5, \"dom").unwrap();
        let loaded = reports.load(&dir.path().join("reports.json"), 10);
        assert_eq!(loaded.len(), 1);
        assert!(loaded[0].gz.is_empty());
        assert!(!bad.exists());
        assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);
    }

    #[test]
    fn the_former_single_file_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("reports.json");
        let mut done = state(4, "done.test", "");
        done.done = true;
        done.pending.clear();
        let list = vec![state(5, "a.test", "H4sI"), done, state(5, "../bad", "")];
        fs::write(&legacy, serde_json::to_vec(&list).unwrap()).unwrap();
        let reports = ReportsDir::open(dir.path());
        let loaded = reports.load(&legacy, 10);
        assert_eq!(loaded.len(), 2);
        assert!(!legacy.exists());
        assert_eq!(reports.read(5, "a.test").unwrap().gz, "H4sI");
        assert!(reports.read(4, "done.test").unwrap().done);
    }
}
