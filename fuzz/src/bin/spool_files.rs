//! The relay spool read back from disk (`Spool::load` and `open_body` in
//! `src/relay/spool.rs`): after a crash, a full disk or a local user's
//! tampering the files hold anything. The input is the message file
//! (`messages/<id>`: envelope line, then the body), optionally followed by
//! the marker line `%%STATE%%` and the state file (`state/<id>.json`).
//! The files are real files, written to a private spool directory under
//! /dev/shm (tmpfs) when it exists.
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use mta_sts_agent::relay::spool::Spool;
use mta_sts_agent_fuzz::split_at_marker;

/// The id every seed's envelope carries.
const ID: &str = "65A1B2C3D4E5F6A7";
const STATE_MARKER: &[u8] = b"\n%%STATE%%\n";

fn spool() -> &'static (PathBuf, Spool) {
    static SPOOL: OnceLock<(PathBuf, Spool)> = OnceLock::new();
    SPOOL.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        // Keyed by the parent: under afl-fuzz that is the fork server, so
        // one run uses one directory however many children it forks, and
        // two runs at once never share one.
        let dir = base.join(format!(
            "mta-sts-fuzz-spool-{}",
            std::os::unix::process::parent_id()
        ));
        let spool = Spool::open(&dir).expect("fuzz spool directory");
        (dir, spool)
    })
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (dir, spool) = spool();
        let (message, state) = split_at_marker(data, STATE_MARKER);
        let message_path = dir.join("messages").join(ID);
        let state_path = dir.join("state").join(format!("{ID}.json"));
        std::fs::write(&message_path, message).expect("write message file");
        match state {
            Some(s) => std::fs::write(&state_path, s).expect("write state file"),
            None => {
                let _ = std::fs::remove_file(&state_path);
            }
        }
        let Ok(loaded) = spool.load(ID) else {
            return;
        };
        assert_eq!(
            loaded.envelope.id, ID,
            "envelope id must match the file name"
        );
        assert_eq!(loaded.state.rcpts.len(), loaded.envelope.recipients.len());
        assert!(
            loaded.size < message.len() as u64,
            "the envelope line is not body"
        );
        // The body the relay would send is exactly the bytes after the
        // envelope line, and as long as the size the queue reports.
        let mut body = Vec::new();
        spool
            .open_body(ID)
            .expect("a loadable message has a body")
            .read_to_end(&mut body)
            .expect("read body");
        assert_eq!(body.len() as u64, loaded.size);
        assert!(message.ends_with(&body));
    });
}
