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
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::command::{RcptParams, Ret};
pub use super::spool_limits::{summary, MAX_ENVELOPE, MAX_STATE};
use crate::smtp::status::{PERM_MAIL_SYSTEM, SYSTEM_FULL, TEMP_MAIL_SYSTEM};

/// Who sent a message to whom, as the client gave it in MAIL and RCPT.
///
/// Every field added after the first release has a serde default, so a
/// message spooled by an older version loads as one without it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `RET=` (RFC 3461 §4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID=`, decoded (RFC 3461 §4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// `NOTIFY=` and `ORCPT=` per recipient, same order as `recipients`;
    /// empty when no recipient had any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rcpt_params: Vec<RcptParams>,
    /// `MAIL FROM ... REQUIRETLS` (RFC 8689 §4.1): delivered only under its
    /// rules, on every attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// A `TLS-Required: No` header field honoured at receipt (RFC 8689
    /// §4.2.2): the recipient domain's MTA-STS or DANE policy is not enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_optional: bool,
}

impl Envelope {
    /// The DSN parameters of recipient `i` (none for an old spool file).
    pub fn rcpt_params(&self, i: usize) -> RcptParams {
        self.rcpt_params.get(i).cloned().unwrap_or_default()
    }
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
    /// Delivered to a next hop that does not offer DSN while the sender
    /// asked for NOTIFY=SUCCESS: a "relayed" DSN is owed (RFC 3461 §5.2.2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
}

impl RcptState {
    pub fn pending() -> RcptState {
        RcptState {
            status: RcptStatus::Pending,
            reply: None,
            mx: None,
            reason: None,
            code: None,
            relayed: false,
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
    /// The delay DSN (RFC 3461 §4.1 DELAY) has been queued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
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
            delay_warned: false,
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

/// The answer to a client whose message could not be queued because of
/// `e`: nothing was stored, so always a temporary failure. A full disk or
/// quota is RFC 5321 §4.2.3's `452` "insufficient system storage" (RFC 3463
/// X.3.1 "mail system full"); anything else a local error.
pub fn refusal(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT) => {
            format!("452 {SYSTEM_FULL} Insufficient system storage, try again later")
        }
        _ => format!("451 {TEMP_MAIL_SYSTEM} Local error: cannot queue messages now"),
    }
}

/// Why a message could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The message file is gone (removed meanwhile).
    Gone,
    /// The file is provably not what this spool writes (no complete
    /// envelope line, not JSON, wrong id): it may be set aside.
    Malformed(String),
    /// Reading failed (EIO, EMFILE, ENOMEM…): says nothing about the file,
    /// so it stays where it is and is tried again later.
    Io(io::Error),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Gone => f.write_str("no such queued message"),
            LoadError::Malformed(why) => write!(f, "malformed: {why}"),
            LoadError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

impl From<io::Error> for LoadError {
    fn from(e: io::Error) -> LoadError {
        if e.kind() == io::ErrorKind::NotFound {
            LoadError::Gone
        } else {
            LoadError::Io(e)
        }
    }
}

/// What [`Spool::load_all`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every message that could be read, oldest first.
    pub messages: Vec<Spooled>,
    /// Messages that could not be read for now (an I/O error, not a
    /// malformed file): still on disk, to be loaded again later.
    pub retry: Vec<String>,
}

impl Spool {
    /// Opens (creating) the spool under `dir` and clears `incoming/`:
    /// anything there was never acknowledged.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        for sub in ["incoming", "messages", "state"] {
            mkdir(&dir.join(sub))?;
        }
        let incoming = dir.join("incoming");
        for e in read_dir(&incoming)? {
            let _ = fs::remove_file(e.path());
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

    /// Starts a new message. The envelope's `id` is replaced by the new id,
    /// one that no message in `incoming/` or `messages/` has.
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
                    // O_EXCL covers `incoming/` only; a queued message may
                    // hold the id (a clock stepped back). The rename at
                    // commit refuses to replace it too, but catching it here
                    // lets the id be regenerated before anything is written.
                    match fs::symlink_metadata(self.message_path(&id)) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        other => {
                            let _ = fs::remove_file(&path);
                            other?;
                            continue;
                        }
                    }
                    envelope.id = id;
                    let mut writer = SpoolWriter {
                        spool: self.clone(),
                        envelope,
                        path,
                        file: None,
                        size: 0,
                        placed: false,
                        line_len: 0,
                    };
                    let mut line =
                        serde_json::to_vec(&writer.envelope).map_err(io::Error::other)?;
                    // Room for the body size, written in place at commit.
                    line.resize(line.len() + SEAL_ROOM, b' ');
                    line.push(b'\n');
                    writer.line_len = line.len();
                    if line.len() > MAX_ENVELOPE {
                        // The reader would refuse it after a restart.
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "envelope of {} octets is longer than the {MAX_ENVELOPE} the spool stores",
                                line.len()
                            ),
                        ));
                    }
                    let mut file = io::BufWriter::with_capacity(64 * 1024, file);
                    file.write_all(&line)?;
                    writer.file = Some(file);
                    return Ok(writer);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not find a free queue id"))
    }

    /// Every queued message, oldest first. A provably malformed message
    /// file is moved to `corrupt/` with a log line, never deleted; a state
    /// file that cannot be parsed is moved there too and its recipients are
    /// recovered from the envelope. A message that cannot be read for now
    /// is left in place and listed in [`Loaded::retry`]. A spool directory
    /// that cannot be listed is an error: ignoring it would strand its mail.
    pub fn load_all(&self) -> io::Result<Loaded> {
        let mut out = Loaded::default();
        let mut ids: Vec<String> = read_dir(&self.dir.join("messages"))?
            .into_iter()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        for id in ids {
            match self.load(&id) {
                Ok(s) => out.messages.push(s),
                Err(LoadError::Gone) => {}
                Err(LoadError::Malformed(why)) => self.set_aside(&id, &why),
                Err(LoadError::Io(e)) => {
                    crate::metrics::metrics().relay_spool_load_errors.inc();
                    tracing::error!(queue_id = %id, error = %e, "cannot read a queued message; left in place and tried again later");
                    out.retry.push(id);
                }
            }
        }
        // State files whose message is gone: a removal cut short. Only a
        // message known to be absent loses its state.
        for e in read_dir(&self.dir.join("state"))? {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.trim_end_matches(".json").trim_end_matches(".tmp");
            if matches!(fs::symlink_metadata(self.message_path(id)), Err(e) if e.kind() == io::ErrorKind::NotFound)
            {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(out)
    }

    /// Moves a malformed message (and its state) to `corrupt/`, never over
    /// a file already there.
    pub fn set_aside(&self, id: &str, why: &str) {
        crate::metrics::metrics().relay_spool_set_aside.inc();
        let corrupt = self.dir.join("corrupt");
        let moved = mkdir(&corrupt)
            .and_then(|()| move_aside(&self.message_path(id), &corrupt, id))
            .map(|to| to.display().to_string());
        if valid_id(id) {
            let _ = move_aside(&self.state_path(id), &corrupt, &format!("{id}.json"));
        }
        match moved {
            Ok(to) => {
                tracing::error!(queue_id = %id, reason = %why, moved_to = %to, "malformed queue file set aside; its recipients cannot be recovered, inspect it by hand")
            }
            Err(e) => {
                tracing::error!(queue_id = %id, reason = %why, error = %e, "malformed queue file could not be set aside")
            }
        }
    }

    /// One message's envelope, state and size. A state file that is
    /// malformed is set aside and the recipients start again from the
    /// envelope, all pending: some may get the message twice, none loses it.
    pub fn load(&self, id: &str) -> Result<Spooled, LoadError> {
        if !valid_id(id) {
            return Err(LoadError::Malformed(format!("{id:?} is not a queue id")));
        }
        let file = File::open(self.message_path(id))?;
        let total = file.metadata()?.len();
        let mut reader = BufReader::new(file.take(MAX_ENVELOPE as u64));
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(LoadError::Malformed(
                "envelope line missing, cut short or too long".into(),
            ));
        }
        let envelope: Envelope = serde_json::from_slice(&line)
            .map_err(|e| LoadError::Malformed(format!("bad envelope: {e}")))?;
        if envelope.id != id {
            return Err(LoadError::Malformed(
                "envelope id does not match the file name".into(),
            ));
        }
        let seal: Seal = serde_json::from_slice(&line).unwrap_or_default();
        let size = total.saturating_sub(line.len() as u64);
        let mut state = match self.read_state(id, &envelope)? {
            Ok(state) => state,
            Err(why) => {
                let corrupt = self.dir.join("corrupt");
                mkdir(&corrupt)?;
                let to = move_aside(&self.state_path(id), &corrupt, &format!("{id}.json"))?;
                crate::metrics::metrics().relay_spool_state_recovered.inc();
                tracing::error!(
                    queue_id = %id,
                    reason = %why,
                    moved_to = %to.display(),
                    recipients = envelope.recipients.len(),
                    "unreadable delivery state set aside; every recipient recovered from the envelope and retried (some may receive the message twice)"
                );
                QueueState::new(&envelope)
            }
        };
        if let Some(sealed) = seal.body_size.filter(|&n| n != size) {
            self.damaged_body(id, sealed, size, &mut state)?;
        }
        Ok(Spooled {
            size,
            envelope,
            state,
        })
    }

    /// The body is not the length it had when the client heard `250`
    /// (cut by a disk fault or by hand): sending it would deliver a
    /// different message. A copy goes to `corrupt/` and every pending
    /// recipient fails, so that the sender gets a bounce and can send the
    /// message again: reported, never silently lost or mangled.
    fn damaged_body(
        &self,
        id: &str,
        sealed: u64,
        found: u64,
        state: &mut QueueState,
    ) -> Result<(), LoadError> {
        let corrupt = self.dir.join("corrupt");
        mkdir(&corrupt)?;
        match fs::hard_link(self.message_path(id), corrupt.join(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(LoadError::Io(e)),
        }
        let reason = format!(
            "the queued copy of the message was damaged ({found} of {sealed} octets left); please send it again"
        );
        let mut failed = 0;
        for st in &mut state.rcpts {
            if st.status == RcptStatus::Pending {
                st.status = RcptStatus::Failed;
                st.reason = Some(reason.clone());
                st.code = Some(PERM_MAIL_SYSTEM.to_string());
                failed += 1;
            }
        }
        crate::metrics::metrics().relay_spool_set_aside.inc();
        tracing::error!(
            queue_id = %id,
            expected = sealed,
            found,
            bounced = failed,
            copy = %corrupt.join(id).display(),
            "message file damaged; a copy is kept in corrupt/ and its pending recipients are bounced to the sender"
        );
        Ok(())
    }

    /// The saved state of `id`: `Ok(Err(why))` when the file is malformed.
    fn read_state(
        &self,
        id: &str,
        envelope: &Envelope,
    ) -> Result<Result<QueueState, String>, LoadError> {
        let f = match File::open(self.state_path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Ok(QueueState::new(envelope)))
            }
            Err(e) => return Err(LoadError::Io(e)),
        };
        let mut text = Vec::new();
        f.take(MAX_STATE as u64 + 1)
            .read_to_end(&mut text)
            .map_err(LoadError::Io)?;
        if text.len() > MAX_STATE {
            return Ok(Err(format!("longer than {MAX_STATE} octets")));
        }
        let state: QueueState = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("bad state file: {e}"))),
        };
        if state.rcpts.len() != envelope.recipients.len() {
            return Ok(Err("state does not match the envelope".into()));
        }
        Ok(Ok(state))
    }

    /// The message body of `id`, positioned after the envelope line.
    pub fn open_body(&self, id: &str) -> io::Result<BufReader<File>> {
        let file = File::open(self.message_path(id))?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_ENVELOPE as u64)
            .read_until(b'\n', &mut line)?;
        let offset = line.len() as u64;
        let mut file = reader.into_inner();
        file.seek(SeekFrom::Start(offset))?;
        Ok(BufReader::with_capacity(64 * 1024, file))
    }

    /// Replaces the state of `id` atomically and durably. What is written
    /// is bounded ([`summary`] per field) and never longer than
    /// [`MAX_STATE`], the limit it is read back with.
    pub fn save_state(&self, id: &str, state: &QueueState) -> io::Result<()> {
        let path = self.state_path(id);
        let tmp = self.dir.join("state").join(format!("{id}.json.tmp"));
        let text = serde_json::to_vec(&state.bounded()).map_err(io::Error::other)?;
        if text.len() > MAX_STATE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "state of {} octets is longer than the {MAX_STATE} the spool reads back",
                    text.len()
                ),
            ));
        }
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

impl QueueState {
    /// A copy with every stored text cut to a [`summary`].
    fn bounded(&self) -> QueueState {
        let cut = |s: &Option<String>| s.as_deref().map(summary);
        QueueState {
            rcpts: self
                .rcpts
                .iter()
                .map(|r| RcptState {
                    status: r.status,
                    reply: cut(&r.reply),
                    mx: cut(&r.mx),
                    reason: cut(&r.reason),
                    code: cut(&r.code),
                    relayed: r.relayed,
                })
                .collect(),
            domains: self.domains.clone(),
            delay_warned: self.delay_warned,
        }
    }
}

/// Every entry of `dir`; an error listing it (or any entry) is returned,
/// never skipped.
fn read_dir(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let annotate = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    fs::read_dir(dir)
        .map_err(annotate)?
        .map(|e| e.map_err(annotate))
        .collect()
}

/// Renames `from` to `dir/name`, or `dir/name.N` when that is taken.
fn move_aside(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..100 {
        let to = match n {
            0 => dir.join(name),
            n => dir.join(format!("{name}.{n}")),
        };
        match rename_noreplace(from, &to) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => return other.map(|()| to),
        }
    }
    Err(io::Error::other(format!(
        "{}: too many files of that name already set aside",
        dir.join(name).display()
    )))
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // A file system without the flag: link + unlink below.
            Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    // link(2) never replaces either; a crash between the two leaves the
    // file under both names, and `incoming/` is cleared at the next start.
    fs::hard_link(from, to)?;
    let _ = fs::remove_file(from);
    Ok(())
}

/// A message being received. Dropped without [`commit`](Self::commit), it
/// leaves nothing behind.
pub struct SpoolWriter {
    spool: Spool,
    envelope: Envelope,
    path: PathBuf,
    file: Option<io::BufWriter<File>>,
    size: u64,
    /// Renamed into `messages/`: no longer ours to clean up on drop.
    placed: bool,
    /// Length of the envelope line, room for the seal included.
    line_len: usize,
}

/// Spaces after the envelope JSON, replaced at commit by `,"body_size":N`
/// (at most 33 octets); JSON allows the whitespace that remains.
/// 64 leaves room for `,"tls_optional":true` too, which only the data
/// phase can know.
const SEAL_ROOM: usize = 64;

/// What the commit adds to the envelope line.
#[derive(Debug, Default, Deserialize)]
struct Seal {
    /// Octets after the envelope line; absent in files written before it.
    #[serde(default)]
    body_size: Option<u64>,
}

/// The envelope line with the body size, exactly `len` octets long.
fn sealed_line(envelope: &Envelope, size: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut value = serde_json::to_value(envelope).map_err(io::Error::other)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("body_size".into(), size.into());
    }
    let mut line = serde_json::to_vec(&value).map_err(io::Error::other)?;
    if line.len() + 1 > len {
        return Err(io::Error::other(
            "no room for the body size in the envelope line",
        ));
    }
    line.resize(len - 1, b' ');
    line.push(b'\n');
    Ok(line)
}

impl SpoolWriter {
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Marks the message as carrying an honoured `TLS-Required: No`: known
    /// only after the data, written with the seal at commit.
    pub fn set_tls_optional(&mut self) {
        self.envelope.tls_optional = true;
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

    /// Makes the message durable. `Ok` means the message is in `messages/`
    /// and durable: only then may the client be told `250`. `Err` means
    /// it is not queued: the client is told `451` and sends it again.
    ///
    /// Each step, and what its failure leaves on disk:
    /// 1. fsync of the file: nothing in `messages/`; the file in
    ///    `incoming/` is removed (drop), or cleared at the next start.
    /// 2. rename into `messages/`, never replacing a queued message of the
    ///    same id (issue 12 item 4): as 1.
    /// 3. fsync of `messages/`: the rename may or may not survive a power
    ///    loss, so the message is unlinked again (and the directory fsynced
    ///    once more) before `451`: while the daemon runs, disk and answer
    ///    agree. If even the unlink fails, the message stays and is delivered
    ///    after the next restart while the client's retry makes a second
    ///    copy: a duplicate, logged, never a loss. A power loss after a
    ///    successful unlink whose fsync failed may bring the file back: the
    ///    same duplicate, which RFC 5321 §6.1 prefers to a loss.
    pub fn commit(mut self) -> io::Result<Spooled> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("spool file already closed"))?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        // The body size goes into the envelope line before the fsync, so a
        // message cut short later is told apart from the one acknowledged.
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&sealed_line(&self.envelope, self.size, self.line_len)?, 0)?;
        }
        fault("commit.sync_file")?;
        file.sync_all()?;
        drop(file);
        let target = self.spool.message_path(&self.envelope.id);
        if let Err(e) = rename_noreplace(&self.path, &target) {
            if e.kind() == io::ErrorKind::AlreadyExists {
                tracing::error!(queue_id = %self.envelope.id, "queue id already taken in messages/; the queued message is kept and this one refused");
            }
            return Err(e);
        }
        self.placed = true;
        let messages = self.spool.dir.join("messages");
        let synced = fault("commit.sync_dir").and_then(|()| sync_dir(&messages));
        if let Err(e) = synced {
            let id = &self.envelope.id;
            match fs::remove_file(&target) {
                Ok(()) => {
                    let _ = sync_dir(&messages);
                }
                Err(e2) => tracing::error!(
                    queue_id = %id,
                    error = %e2,
                    "cannot take back a message whose commit failed; it stays queued and the client's retry will make a duplicate"
                ),
            }
            return Err(e);
        }
        Ok(Spooled {
            state: QueueState::new(&self.envelope),
            envelope: self.envelope.clone(),
            size: self.size,
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.placed {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Fault injection for the unit tests: a real file system rarely fails
/// exactly at one step of a commit on demand.
#[cfg(test)]
fn fault(point: &str) -> io::Result<()> {
    FAULT.with(|f| match f.borrow().as_deref() {
        Some(p) if p == point => Err(io::Error::other(format!("injected fault at {point}"))),
        _ => Ok(()),
    })
}

#[cfg(not(test))]
#[inline]
fn fault(_point: &str) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
thread_local! {
    static FAULT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_SUMMARY_FOR_TEST: usize = 300;

    fn load_all_messages(spool: &Spool) -> Vec<Spooled> {
        spool.load_all().unwrap().messages
    }

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            id: String::new(),
            sender: "a@x.test".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            arrival: 1,
            client: "127.0.0.1".into(),
            smtputf8: false,
            ..Envelope::default()
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
        let all = load_all_messages(&Spool::open(dir.path()).unwrap());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, state);
        assert_eq!(all[0].envelope.recipients.len(), 2);

        spool.remove(&id).unwrap();
        assert!(load_all_messages(&spool).is_empty());
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
        assert!(load_all_messages(&spool).is_empty());
    }

    #[test]
    fn corrupt_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::write(dir.path().join("messages/ABC"), b"not json\n").unwrap();
        fs::write(dir.path().join("state/DEF.json"), b"{}").unwrap();
        assert!(load_all_messages(&spool).is_empty());
        assert!(dir.path().join("corrupt/ABC").exists());
        assert!(!dir.path().join("state/DEF.json").exists());
    }

    fn committed(spool: &Spool, rcpts: &[&str]) -> Spooled {
        let mut w = spool.create(envelope(rcpts)).unwrap();
        w.write(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        w.commit().unwrap()
    }

    /// Issue 12 item 1: a remote MX answering with 100 lines of 1000
    /// octets must not make the state file too long to read back.
    #[test]
    fn long_remote_replies_keep_the_state_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let rcpts: Vec<String> = (0..25).map(|i| format!("r{i}@y.test")).collect();
        let refs: Vec<&str> = rcpts.iter().map(|s| s.as_str()).collect();
        let msg = committed(&spool, &refs);
        let id = msg.envelope.id.clone();
        let reply = format!("451 {}", "x".repeat(990)).repeat(100);
        let mut state = msg.state.clone();
        for st in &mut state.rcpts {
            st.reply = Some(reply.clone());
            st.reason = Some(format!("all MX hosts failed: {reply}; {reply}"));
        }
        state.rcpts[0].status = RcptStatus::Delivered;
        spool.save_state(&id, &state).unwrap();
        let all = load_all_messages(&spool);
        assert_eq!(all.len(), 1, "message not loaded back");
        assert_eq!(all[0].state.rcpts[0].status, RcptStatus::Delivered);
        assert!(all[0].state.rcpts[1..]
            .iter()
            .all(|r| r.status == RcptStatus::Pending));
        let kept = all[0].state.rcpts[1].reply.as_deref().unwrap();
        assert!(kept.starts_with("451 xxx") && kept.len() <= MAX_SUMMARY_FOR_TEST);
        assert!(!dir.path().join("corrupt").exists());
    }

    /// A state file that cannot be parsed loses the delivery progress, not
    /// the recipients: they are recovered from the envelope.
    #[test]
    fn unreadable_state_recovers_recipients_from_the_envelope() {
        for garbage in [&b""[..], b"{\"rcpts\":[{\"sta", b"\x00\xffnot json"] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            let msg = committed(&spool, &["b@y.test", "c@z.test"]);
            let id = msg.envelope.id.clone();
            fs::write(dir.path().join(format!("state/{id}.json")), garbage).unwrap();
            let all = load_all_messages(&spool);
            assert_eq!(all.len(), 1, "message dropped for {garbage:?}");
            assert_eq!(all[0].state, QueueState::new(&msg.envelope));
            assert!(dir.path().join(format!("messages/{id}")).exists());
            let aside: Vec<_> = fs::read_dir(dir.path().join("corrupt"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                aside.iter().any(|n| n.starts_with(&format!("{id}.json"))),
                "bad state not kept for inspection: {aside:?}"
            );
        }
    }

    /// Issue 12 item 3: an I/O error while loading (here EISDIR: the state
    /// path is a directory) is not proof of a malformed file.
    #[test]
    fn read_errors_do_not_set_a_message_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let msg = committed(&spool, &["b@y.test"]);
        let id = msg.envelope.id.clone();
        let state = dir.path().join(format!("state/{id}.json"));
        fs::create_dir(&state).unwrap();
        let _ = load_all_messages(&spool);
        assert!(
            dir.path().join(format!("messages/{id}")).exists(),
            "message set aside"
        );
        assert!(state.is_dir());
        fs::remove_dir(&state).unwrap();
        let all = load_all_messages(&spool);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].envelope.id, id);
    }

    /// Issue 12 item 4: the last step of a commit never replaces a queued
    /// message that has the same id.
    #[test]
    fn commit_never_replaces_a_queued_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(envelope(&["b@y.test"])).unwrap();
        w.write(b"second").unwrap();
        let target = dir.path().join("messages").join(w.id());
        fs::write(&target, b"the message queued first").unwrap();
        assert!(w.commit().is_err(), "commit replaced a queued message");
        assert_eq!(fs::read(&target).unwrap(), b"the message queued first");
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
    }

    /// A message file cut short after its `250` (envelope intact) is
    /// neither delivered mangled nor dropped: its recipients fail, so the
    /// sender gets a bounce, and a copy stays in `corrupt/`.
    #[test]
    fn truncated_body_bounces_instead_of_sending_a_mangled_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let msg = committed(&spool, &["b@y.test", "c@z.test"]);
        let id = msg.envelope.id.clone();
        let intact = load_all_messages(&spool);
        assert_eq!(
            intact[0].state, msg.state,
            "an intact message loads unchanged"
        );
        let path = dir.path().join("messages").join(&id);
        let len = fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let all = load_all_messages(&spool);
        assert_eq!(all.len(), 1);
        for st in &all[0].state.rcpts {
            assert_eq!(st.status, RcptStatus::Failed);
            assert!(st.reason.as_deref().unwrap().contains("damaged"), "{st:?}");
        }
        assert!(dir.path().join("corrupt").join(&id).exists());
    }

    /// Issue 12 item 5: when the directory fsync after the rename fails,
    /// the client hears 451, so the message must not stay queued on disk.
    #[test]
    fn failed_directory_sync_takes_the_message_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(envelope(&["b@y.test"])).unwrap();
        w.write(b"body\r\n").unwrap();
        FAULT.with(|f| *f.borrow_mut() = Some("commit.sync_dir".into()));
        let result = w.commit();
        FAULT.with(|f| *f.borrow_mut() = None);
        assert!(result.is_err());
        assert!(
            load_all_messages(&spool).is_empty(),
            "a 451 message is still queued"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
    }

    /// A failed file fsync (step 1) leaves nothing in `incoming/` either.
    #[test]
    fn failed_file_sync_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.create(envelope(&["b@y.test"])).unwrap();
        w.write(b"body\r\n").unwrap();
        FAULT.with(|f| *f.borrow_mut() = Some("commit.sync_file".into()));
        let result = w.commit();
        FAULT.with(|f| *f.borrow_mut() = None);
        assert!(result.is_err());
        assert!(load_all_messages(&spool).is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
    }

    /// Issue 12 item 8: a spool directory that cannot be listed is an
    /// error, not an empty queue.
    #[test]
    fn unlistable_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::remove_dir(dir.path().join("messages")).unwrap();
        fs::write(dir.path().join("messages"), b"not a directory").unwrap();
        let err = spool.load_all().unwrap_err();
        assert!(err.to_string().contains("messages"), "{err}");
    }

    /// The envelope a commit writes is one the loader reads back; a longer
    /// one is refused before the client hears 250.
    #[test]
    fn envelope_too_long_to_load_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let rcpt = format!("{}@y.test", "r".repeat(240));
        let rcpts: Vec<&str> = (0..5000).map(|_| rcpt.as_str()).collect();
        assert!(spool.create(envelope(&rcpts)).is_err());
        assert_eq!(
            fs::read_dir(dir.path().join("incoming")).unwrap().count(),
            0
        );
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
