//! The queue on disk. A message is one file, `messages/<id>`: a JSON
//! envelope line, then the message exactly as it will be sent. It is
//! written under `incoming/`, fsynced, renamed into `messages/` and the
//! directory fsynced before the client hears `250`, so an acknowledged
//! message survives a crash or power loss. The file never changes after
//! that; delivery progress lives in `state/<id>.json`, replaced atomically
//! (write, fsync, rename, fsync directory) after every attempt.
//!
//! Removal deletes the message before its state: a crash in between leaves
//! only an orphan state file, never a message that looks undelivered.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest envelope line read back (1000 recipients of 256 octets fit).
const MAX_ENVELOPE: u64 = 1024 * 1024;
/// Longest state file read back.
const MAX_STATE: u64 = 4 * 1024 * 1024;

/// Who sent a message to whom, as the client gave it in MAIL and RCPT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// The reverse path; empty for a bounce (null sender).
    pub sender: String,
    pub recipients: Vec<String>,
    /// Unix seconds when the message was accepted.
    pub arrival: u64,
    /// The client's address and EHLO name, for logs.
    pub client: String,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    Pending,
    Delivered,
    Failed,
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptState {
    pub status: RcptStatus,
    /// The remote server's reply on one line, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The MX host that gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    /// Our explanation (for the queue listing and bounces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Enhanced status code for a bounce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl RcptState {
    pub fn pending() -> RcptState {
        RcptState {
            status: RcptStatus::Pending,
            reply: None,
            mx: None,
            reason: None,
            code: None,
        }
    }
}

/// Retry bookkeeping of one recipient domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSchedule {
    pub attempts: u32,
    /// Unix seconds; 0 means now.
    pub next_attempt: u64,
}

/// Delivery progress of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// One per envelope recipient, same order.
    pub rcpts: Vec<RcptState>,
    pub domains: BTreeMap<String, DomainSchedule>,
}

impl QueueState {
    pub fn new(envelope: &Envelope) -> QueueState {
        QueueState {
            rcpts: envelope
                .recipients
                .iter()
                .map(|_| RcptState::pending())
                .collect(),
            domains: BTreeMap::new(),
        }
    }
}

/// A message read back from the spool.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub envelope: Envelope,
    pub state: QueueState,
    /// Size of the message body in bytes.
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

fn mkdir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// A queue id: time-ordered, unique across restarts (time in µs plus
/// random bits; creation with O_EXCL catches the rest), safe in file
/// names.
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now.as_nanos());
    let random = h.finish() & 0xFFFF;
    format!(
        "{:X}{:05X}{:04X}",
        now.as_secs(),
        now.subsec_micros(),
        random
    )
}

/// Queue ids are ours: hex digits only. Anything else (from the admin
/// command line) must not become a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Spool {
    /// Opens (creating) the spool under `dir` and clears `incoming/`:
    /// anything there was never acknowledged.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        for sub in ["incoming", "messages", "state"] {
            mkdir(&dir.join(sub))?;
        }
        if let Ok(entries) = fs::read_dir(dir.join("incoming")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn message_path(&self, id: &str) -> PathBuf {
        self.dir.join("messages").join(id)
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir.join("state").join(format!("{id}.json"))
    }

    /// Starts a new message. The envelope's `id` is replaced by the new id.
    pub fn create(&self, mut envelope: Envelope) -> io::Result<SpoolWriter> {
        for _ in 0..16 {
            let id = new_id();
            let path = self.dir.join("incoming").join(&id);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    envelope.id = id;
                    let mut line = serde_json::to_vec(&envelope).map_err(io::Error::other)?;
                    line.push(b'\n');
                    let mut file = io::BufWriter::with_capacity(64 * 1024, file);
                    file.write_all(&line)?;
                    return Ok(SpoolWriter {
                        spool: self.clone(),
                        envelope,
                        path,
                        file: Some(file),
                        size: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not find a free queue id"))
    }

    /// Every queued message, oldest first. Unreadable files are moved to
    /// `corrupt/` with a log line, never deleted and never fatal.
    pub fn load_all(&self) -> Vec<Spooled> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(self.dir.join("messages")) else {
            return out;
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        for id in ids {
            match self.load(&id) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "unreadable queue file moved to corrupt/; inspect it by hand");
                    let corrupt = self.dir.join("corrupt");
                    let _ = mkdir(&corrupt);
                    let _ = fs::rename(self.message_path(&id), corrupt.join(&id));
                    let _ = fs::remove_file(self.state_path(&id));
                }
            }
        }
        // State files whose message is gone: a removal cut short.
        if let Ok(entries) = fs::read_dir(self.dir.join("state")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.trim_end_matches(".json").trim_end_matches(".tmp");
                if !self.message_path(id).exists() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        out
    }

    /// One message's envelope, state and size.
    pub fn load(&self, id: &str) -> io::Result<Spooled> {
        if !valid_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{id:?} is not a queue id"),
            ));
        }
        let file = File::open(self.message_path(id))?;
        let total = file.metadata()?.len();
        let mut reader = BufReader::new(file.take(MAX_ENVELOPE));
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(io::Error::other("envelope line missing or too long"));
        }
        let envelope: Envelope = serde_json::from_slice(&line)
            .map_err(|e| io::Error::other(format!("bad envelope: {e}")))?;
        if envelope.id != id {
            return Err(io::Error::other("envelope id does not match the file name"));
        }
        let state = match File::open(self.state_path(id)) {
            Ok(f) => {
                let mut text = Vec::new();
                f.take(MAX_STATE).read_to_end(&mut text)?;
                let state: QueueState = serde_json::from_slice(&text)
                    .map_err(|e| io::Error::other(format!("bad state file: {e}")))?;
                if state.rcpts.len() != envelope.recipients.len() {
                    return Err(io::Error::other("state does not match the envelope"));
                }
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => QueueState::new(&envelope),
            Err(e) => return Err(e),
        };
        Ok(Spooled {
            size: total.saturating_sub(line.len() as u64),
            envelope,
            state,
        })
    }

    /// The message body of `id`, positioned after the envelope line.
    pub fn open_body(&self, id: &str) -> io::Result<BufReader<File>> {
        let file = File::open(self.message_path(id))?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_ENVELOPE)
            .read_until(b'\n', &mut line)?;
        let offset = line.len() as u64;
        let mut file = reader.into_inner();
        file.seek(SeekFrom::Start(offset))?;
        Ok(BufReader::with_capacity(64 * 1024, file))
    }

    /// Replaces the state of `id` atomically and durably.
    pub fn save_state(&self, id: &str, state: &QueueState) -> io::Result<()> {
        let path = self.state_path(id);
        let tmp = self.dir.join("state").join(format!("{id}.json.tmp"));
        let text = serde_json::to_vec(state).map_err(io::Error::other)?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir.join("state"))
    }

    /// Removes `id`: message first (see the module notes), then state.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.message_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sync_dir(&self.dir.join("messages"))?;
        match fs::remove_file(self.state_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A message being received. Dropped without [`commit`](Self::commit), it
/// leaves nothing behind.
pub struct SpoolWriter {
    spool: Spool,
    envelope: Envelope,
    path: PathBuf,
    file: Option<io::BufWriter<File>>,
    size: u64,
}

impl SpoolWriter {
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool file already closed"))?;
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Makes the message durable: fsync of the file, rename into
    /// `messages/`, fsync of the directory. Only after this returns `Ok`
    /// may the client be told `250`.
    pub fn commit(mut self) -> io::Result<Spooled> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("spool file already closed"))?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let target = self.spool.message_path(&self.envelope.id);
        fs::rename(&self.path, &target)?;
        sync_dir(&self.spool.dir.join("messages"))?;
        Ok(Spooled {
            state: QueueState::new(&self.envelope),
            envelope: self.envelope.clone(),
            size: self.size,
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            id: String::new(),
            sender: "a@x.test".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            arrival: 1,
            client: "127.0.0.1".into(),
            smtputf8: false,
        }
    }

    #[test]
    fn commit_load_state_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(envelope(&["b@y.test", "c@z.test"])).unwrap();
        w.write(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        let id = w.id().to_string();
        assert!(valid_id(&id));
        let s = w.commit().unwrap();
        assert_eq!(s.size, 21);
        let mut body = String::new();
        spool
            .open_body(&id)
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "Subject: hi\r\n\r\nbody\r\n");

        let mut state = s.state.clone();
        state.rcpts[0].status = RcptStatus::Delivered;
        spool.save_state(&id, &state).unwrap();
        let all = Spool::open(dir.path()).unwrap().load_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, state);
        assert_eq!(all[0].envelope.recipients.len(), 2);

        spool.remove(&id).unwrap();
        assert!(spool.load_all().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("state")).unwrap().count(), 0);
    }

    #[test]
    fn uncommitted_message_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(envelope(&["b@y.test"])).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
        assert!(spool.load_all().is_empty());
    }

    #[test]
    fn corrupt_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::write(dir.path().join("messages/ABC"), b"not json\n").unwrap();
        fs::write(dir.path().join("state/DEF.json"), b"{}").unwrap();
        assert!(spool.load_all().is_empty());
        assert!(dir.path().join("corrupt/ABC").exists());
        assert!(!dir.path().join("state/DEF.json").exists());
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("19A2B3C4D"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.load("../x").is_err());
    }
}
