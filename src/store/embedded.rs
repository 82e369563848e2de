//! The persistent tier: one redb file. redb commits are atomic and durable
//! (copy-on-write B-trees, fsync on commit), so a crash leaves the last
//! committed state — never a torn policy.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{StoreError, StoredPolicy};
use crate::sync::{Recover, RecoverRw};

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies_v1");

/// First and longest wait before reopening the file after an I/O error.
const MIN_REOPEN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(30);

pub struct Embedded {
    /// None while the file could not be reopened.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    health: Mutex<Health>,
}

/// redb latches: after one failed commit every later write returns
/// `PreviousIo` until the database is reopened. So an error marks the file
/// failed, and the next write after the back-off reopens it.
struct Health {
    failed: bool,
    next_reopen: Instant,
    backoff: Duration,
}

/// A read or write that failed: worth retrying.
fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl Embedded {
    /// Opens (or creates) `dir/policies.redb`. Fails if another process holds
    /// it or the directory is unusable; a file that is not a sound redb
    /// database is set aside (see [`super::recovery`]) and a fresh one made.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join("policies.redb");
        let db = match open_db(&path) {
            Err(Opening::Unsound(why)) => {
                super::recovery::set_aside(&path, &why)?;
                open_db(&path).map_err(|e| e.into_error(&path))?
            }
            other => other.map_err(|e| e.into_error(&path))?,
        };
        Ok(Embedded {
            db: RwLock::new(Some(db)),
            path,
            health: Mutex::new(Health {
                failed: false,
                next_reopen: Instant::now(),
                backoff: MIN_REOPEN_BACKOFF,
            }),
        })
    }

    /// Runs `f` on the database, reopening it first when a former error is
    /// due for a retry, and marking it failed when `f` fails.
    fn with_db<T>(
        &self,
        write: bool,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if write {
            self.reopen_if_due()?;
        }
        let result = {
            let guard = self.db.read_locked();
            match guard.as_ref() {
                Some(db) => f(db),
                None => Err(StoreError::Unavailable(format!(
                    "{} could not be reopened after an I/O error; retrying",
                    self.path.display()
                ))),
            }
        };
        if result.is_err() && write {
            self.mark_failed();
        }
        result
    }

    fn mark_failed(&self) {
        let mut h = self.health.locked();
        if !h.failed {
            h.failed = true;
            h.backoff = MIN_REOPEN_BACKOFF;
            tracing::error!(store = %self.path.display(), "policy store write failed; answering from memory and reopening the store with back-off");
        } else {
            h.backoff = (h.backoff * 2).min(MAX_REOPEN_BACKOFF);
        }
        h.next_reopen = Instant::now() + h.backoff;
    }

    /// Err while the back-off after an error runs: the caller keeps the
    /// policy in memory and does not wait on a disk that just failed.
    fn reopen_if_due(&self) -> Result<(), StoreError> {
        {
            let h = self.health.locked();
            if !h.failed {
                return Ok(());
            }
            if Instant::now() < h.next_reopen {
                return Err(StoreError::Unavailable(format!(
                    "{} failed; next attempt in {:?}",
                    self.path.display(),
                    h.next_reopen.saturating_duration_since(Instant::now())
                )));
            }
        }
        let mut guard = self.db.write_locked();
        // The old handle holds the file lock: drop it before opening again.
        guard.take();
        match open_db(&self.path) {
            Ok(db) => {
                *guard = Some(db);
                drop(guard);
                let mut h = self.health.locked();
                h.failed = false;
                h.backoff = MIN_REOPEN_BACKOFF;
                tracing::info!(store = %self.path.display(), "policy store reopened; writes resume");
                Ok(())
            }
            Err(e) => {
                drop(guard);
                let e = e.into_error(&self.path);
                self.mark_failed();
                Err(e)
            }
        }
    }

    /// True when the last write failed and the store waits for a reopen.
    pub fn failed(&self) -> bool {
        self.health.locked().failed
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, domain: &str) -> Result<Option<StoredPolicy>, StoreError> {
        self.with_db(false, |db| {
            let txn = db
                .begin_read()
                .map_err(|e| err("cannot read", &self.path, e))?;
            let table = txn
                .open_table(POLICIES)
                .map_err(|e| err("cannot read", &self.path, e))?;
            let Some(raw) = table
                .get(domain)
                .map_err(|e| err("cannot read", &self.path, e))?
            else {
                return Ok(None);
            };
            Ok(self.decode(domain, raw.value()))
        })
    }

    /// An entry that cannot be decoded is treated as absent (and logged): it
    /// is refetched, which is better than refusing to answer.
    fn decode(&self, domain: &str, raw: &[u8]) -> Option<StoredPolicy> {
        match serde_json::from_slice::<StoredPolicy>(raw) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(domain, store = %self.path.display(), error = %e, "unreadable stored policy ignored");
                None
            }
        }
    }

    pub fn put(&self, policy: &StoredPolicy) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(policy).map_err(|e| {
            StoreError::Unusable(format!("cannot encode for {}: {e}", self.path.display()))
        })?;
        self.write(|table| {
            table
                .insert(policy.domain.as_str(), raw.as_slice())
                .map(|_| ())
        })
    }

    pub fn remove(&self, domain: &str) -> Result<(), StoreError> {
        self.write(|table| table.remove(domain).map(|_| ()))
    }

    /// One durable write transaction on the policies table.
    fn write(
        &self,
        change: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let txn = db
                .begin_write()
                .map_err(|e| err("cannot write", &self.path, e))?;
            {
                let mut table = txn
                    .open_table(POLICIES)
                    .map_err(|e| err("cannot write", &self.path, e))?;
                change(&mut table).map_err(|e| err("cannot write", &self.path, e))?;
            }
            txn.commit()
                .map_err(|e| err("cannot commit to", &self.path, e))
        })
    }

    pub fn list(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        self.with_db(false, |db| {
            let txn = db
                .begin_read()
                .map_err(|e| err("cannot read", &self.path, e))?;
            let table = txn
                .open_table(POLICIES)
                .map_err(|e| err("cannot read", &self.path, e))?;
            let mut out = Vec::new();
            for item in table
                .iter()
                .map_err(|e| err("cannot read", &self.path, e))?
            {
                let (k, v) = item.map_err(|e| err("cannot read", &self.path, e))?;
                if let Some(p) = self.decode(k.value(), v.value()) {
                    out.push(p);
                }
            }
            Ok(out)
        })
    }
}

/// Why a database could not be opened.
enum Opening {
    /// The file is there but is not a sound redb database.
    Unsound(String),
    Failed(redb::DatabaseError),
}

impl Opening {
    fn into_error(self, path: &Path) -> StoreError {
        match self {
            Opening::Failed(redb::DatabaseError::DatabaseAlreadyOpen) => {
                StoreError::InUse(format!(
                    "{} is in use by another process (is the daemon running?)",
                    path.display()
                ))
            }
            Opening::Failed(e) => err("cannot open", path, e),
            // Already set aside once and still unsound: retrying the same
            // file will not make it sound.
            Opening::Unsound(why) => {
                StoreError::Unusable(format!("cannot open {}: {why}", path.display()))
            }
        }
    }
}

/// Opens `path` and makes sure the table exists, so readers never see "no
/// such table". redb checks some invariants with debug assertions, so a
/// damaged file may panic in a debug build: that is unsound too.
fn open_db(path: &Path) -> Result<Database, Opening> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // redb caches up to 1 GiB of pages by default; policies are read
        // from disk only on a memory-tier miss, so a small cache keeps the
        // resident size proportional to the memory tier, not to the file.
        let db = Database::builder()
            .set_cache_size(4 * 1024 * 1024)
            .create(path)
            .map_err(classify)?;
        let txn = db
            .begin_write()
            .map_err(|e| Opening::Failed(redb::DatabaseError::Storage(storage_of_txn(e))))?;
        txn.open_table(POLICIES)
            .map_err(|e| Opening::Unsound(e.to_string()))?;
        txn.commit()
            .map_err(|e| Opening::Failed(redb::DatabaseError::Storage(storage_of_commit(e))))?;
        Ok(db)
    }));
    attempt.unwrap_or_else(|_| Err(Opening::Unsound("redb panicked reading it".to_string())))
}

fn classify(e: redb::DatabaseError) -> Opening {
    use redb::{DatabaseError as D, StorageError as S};
    match e {
        D::UpgradeRequired(_) | D::RepairAborted => Opening::Unsound(e.to_string()),
        D::Storage(S::Corrupted(_)) => Opening::Unsound(e.to_string()),
        D::Storage(S::Io(ref io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Opening::Unsound(e.to_string())
        }
        other => Opening::Failed(other),
    }
}

fn storage_of_txn(e: redb::TransactionError) -> redb::StorageError {
    match e {
        redb::TransactionError::Storage(s) => s,
        other => redb::StorageError::Corrupted(other.to_string()),
    }
}

fn storage_of_commit(e: redb::CommitError) -> redb::StorageError {
    match e {
        redb::CommitError::Storage(s) => s,
        other => redb::StorageError::Corrupted(other.to_string()),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            StoreError::Unusable(format!(
                "cannot create state directory {}: {e}; set state_dir in the config or STATE_DIRECTORY",
                dir.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, MxPattern, Policy};
    use crate::store::PolicySource;

    fn sample(domain: &str) -> StoredPolicy {
        StoredPolicy {
            domain: domain.to_string(),
            id: "1".to_string(),
            policy: Policy {
                mode: Mode::Enforce,
                max_age: 86400,
                mx: vec![MxPattern::parse("mx.example.test").unwrap()],
            },
            body: String::new(),
            fetched_at: 1,
            source: PolicySource::Fetched,
        }
    }

    fn set_aside_copies(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("policies.redb.broken-"))
            .collect();
        v.sort();
        v
    }

    /// Zero-length, truncated and garbage files: set aside, fresh store.
    #[test]
    fn an_unusable_file_is_set_aside_and_a_fresh_store_made() {
        let good = tempfile::tempdir().unwrap();
        {
            let e = Embedded::open(good.path()).unwrap();
            for i in 0..50 {
                e.put(&sample(&format!("d{i}.test"))).unwrap();
            }
        }
        let whole = std::fs::read(good.path().join("policies.redb")).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("zero-length", Vec::new()),
            ("truncated", whole[..whole.len().min(700)].to_vec()),
            (
                "garbage",
                (0..64 * 1024u32).map(|i| (i * 7919) as u8).collect(),
            ),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("policies.redb"), &bytes).unwrap();
            let e = Embedded::open(dir.path())
                .unwrap_or_else(|err| panic!("{what}: daemon could not start: {err}"));
            assert!(e.get("d1.test").unwrap().is_none(), "{what}");
            e.put(&sample("new.test")).unwrap();
            assert!(e.get("new.test").unwrap().is_some(), "{what}");
            let aside = set_aside_copies(dir.path());
            // redb treats an empty file as a new database: nothing to set aside.
            if !bytes.is_empty() {
                assert_eq!(aside.len(), 1, "{what}: {aside:?}");
            }
        }
    }

    #[test]
    fn set_aside_copies_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for t in 0..6u64 {
            let name = format!("policies.redb.broken-{}", 1000 + t);
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("policies.redb"), b"garbage garbage").unwrap();
        Embedded::open(dir.path()).unwrap();
        let aside = set_aside_copies(dir.path());
        assert_eq!(
            aside.len(),
            crate::store::recovery::KEEP_SET_ASIDE,
            "{aside:?}"
        );
        assert!(
            !aside.iter().any(|n| n.ends_with("-1000")),
            "oldest went first"
        );
    }

    #[test]
    fn a_file_in_use_is_not_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Embedded::open(dir.path()).unwrap();
        let e = Embedded::open(dir.path()).err().expect("second open fails");
        assert!(matches!(e, StoreError::InUse(_)), "{e:?}");
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(set_aside_copies(dir.path()).is_empty());
    }
}
