//! The persistent tier: one redb file. redb commits are atomic and durable
//! (copy-on-write B-trees, fsync on commit), so a crash leaves the last
//! committed state — never a torn policy.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{StoreError, StoredPolicy};

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies_v1");

pub struct Embedded {
    db: Database,
    path: PathBuf,
}

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what} {}: {e}", path.display()))
}

impl Embedded {
    /// Opens (or creates) `dir/policies.redb`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join("policies.redb");
        // redb caches up to 1 GiB of pages by default; policies are read
        // from disk only on a memory-tier miss, so a small cache keeps the
        // resident size proportional to the memory tier, not to the file.
        let db = Database::builder()
            .set_cache_size(4 * 1024 * 1024)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                    "{} is in use by another process (is the daemon running?)",
                    path.display()
                )),
                other => err("cannot open", &path, other),
            })?;
        // Create the table up front so readers never see "no such table".
        let txn = db
            .begin_write()
            .map_err(|e| err("cannot write", &path, e))?;
        txn.open_table(POLICIES)
            .map_err(|e| err("cannot write", &path, e))?;
        txn.commit().map_err(|e| err("cannot write", &path, e))?;
        Ok(Embedded { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, domain: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let txn = self
            .db
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
        let raw =
            serde_json::to_vec(policy).map_err(|e| err("cannot encode for", &self.path, e))?;
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
        let txn = self
            .db
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
    }

    pub fn list(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        let txn = self
            .db
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
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            StoreError(format!(
                "cannot create state directory {}: {e}; set state_dir in the config or STATE_DIRECTORY",
                dir.display()
            ))
        })
}
