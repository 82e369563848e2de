//! SMTP AUTH (RFC 4954) for application clients outside the trusted
//! networks: PLAIN (RFC 4616) and LOGIN, offered only after STARTTLS.
//!
//! Passwords are never stored: `relay.auth_users_file` holds one line per
//! user, `user:pbkdf2-sha256:ITERATIONS:SALT:HASH` (salt and hash in
//! base64), as printed by `mta-sts-agent relay-password USER`. PBKDF2
//! comes from ring, already in the tree for rustls, and its verify is
//! constant-time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::pbkdf2;

/// Iterations for new password lines (OWASP's 2023 figure for
/// PBKDF2-HMAC-SHA256).
pub const ITERATIONS: u32 = 600_000;
/// Longest users file read.
const MAX_FILE: u64 = 4 * 1024 * 1024;

struct Credential {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// The users allowed to authenticate.
pub struct Users {
    creds: HashMap<String, Credential>,
    /// Checked for unknown user names, so that they cost what a known one
    /// does and the timing does not tell which names exist.
    dummy: Credential,
    runs: AtomicU64,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.creds.len())
            .finish()
    }
}

impl Users {
    /// Reads the users file; every malformed line is an error naming it.
    pub fn load(path: &Path) -> Result<Users, String> {
        use std::io::Read;
        let what =
            |e: &dyn std::fmt::Display| format!("relay.auth_users_file {}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| what(&e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = file.metadata() {
                if meta.permissions().mode() & 0o007 != 0 {
                    tracing::warn!(path = %path.display(), "relay.auth_users_file is readable by other users; chmod 0640 or stricter");
                }
            }
        }
        let mut text = String::new();
        file.take(MAX_FILE)
            .read_to_string(&mut text)
            .map_err(|e| what(&e))?;
        Users::parse(&text).map_err(|e| what(&e))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let mut creds = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 1);
            let parts: Vec<&str> = line.split(':').collect();
            let [user, scheme, iterations, salt, hash] = parts.as_slice() else {
                return Err(bad(
                    "expected user:pbkdf2-sha256:ITERATIONS:SALT:HASH (make lines with `mta-sts-agent relay-password USER`)",
                ));
            };
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            if *scheme != "pbkdf2-sha256" {
                return Err(bad("only pbkdf2-sha256 is supported"));
            }
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| bad("iterations must be a positive number"))?;
            let salt = STANDARD
                .decode(salt)
                .map_err(|_| bad("salt is not base64"))?;
            let hash = STANDARD
                .decode(hash)
                .map_err(|_| bad("hash is not base64"))?;
            if hash.len() != 32 {
                return Err(bad("hash must be 32 bytes (SHA-256)"));
            }
            if creds
                .insert(
                    user.to_string(),
                    Credential {
                        iterations,
                        salt,
                        hash,
                    },
                )
                .is_some()
            {
                return Err(bad(&format!("user {user} appears twice")));
            }
        }
        // The most iterations of the file: an unknown name never costs
        // less than a known one.
        let iterations = creds
            .values()
            .map(|c| c.iterations)
            .max()
            .or(NonZeroU32::new(ITERATIONS))
            .unwrap_or(NonZeroU32::MIN);
        let dummy = Credential {
            iterations,
            salt: b"mta-sts-agent unknown user".to_vec(),
            hash: vec![0; 32],
        };
        Ok(Users {
            creds,
            dummy,
            runs: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.creds.is_empty()
    }

    /// True when `password` is `user`'s. CPU-heavy: call off the async
    /// threads. An unknown user costs the same PBKDF2 run as a known one.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let known = self.creds.get(user);
        let c = known.unwrap_or(&self.dummy);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let matches = pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            c.iterations,
            &c.salt,
            password,
            &c.hash,
        )
        .is_ok();
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
        known.is_some() && matches
    }

    /// PBKDF2 runs so far (known and unknown users alike).
    pub fn pbkdf2_runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// The most PBKDF2 runs that were ever in progress at once.
    pub fn peak_parallel_runs(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A users-file line for `user` with a fresh random salt.
pub fn password_line(user: &str, password: &[u8], iterations: u32) -> Result<String, String> {
    use ring::rand::SecureRandom;
    if user.is_empty() || user.contains([':', '\n', '\r']) {
        return Err("a user name may not be empty or contain ':' or line breaks".to_string());
    }
    let iterations =
        NonZeroU32::new(iterations).ok_or_else(|| "iterations must be positive".to_string())?;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness available".to_string())?;
    let mut hash = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password,
        &mut hash,
    );
    Ok(format!(
        "{user}:pbkdf2-sha256:{iterations}:{}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    ))
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`, base64. The authorization
/// identity, when given, must be the user itself (we act for nobody else).
pub fn decode_plain(b64: &str) -> Option<(String, Vec<u8>)> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let pass = parts.next()?.to_vec();
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user, pass))
}

/// One base64 line of the LOGIN exchange.
pub fn decode_b64(b64: &str) -> Option<Vec<u8>> {
    STANDARD.decode(b64.trim()).ok()
}

pub fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trip() {
        let line = password_line("app", b"s3cret", 1000).unwrap();
        let users = Users::parse(&format!("# apps\n\n{line}\n")).unwrap();
        assert!(users.verify("app", b"s3cret"));
        assert!(!users.verify("app", b"s3cret "));
        assert!(!users.verify("other", b"s3cret"));
        assert_eq!(
            users.pbkdf2_runs(),
            3,
            "an unknown user costs a PBKDF2 run too"
        );
    }

    #[test]
    fn unknown_users_cost_the_most_iterations_of_the_file() {
        let a = password_line("a", b"p", 1000).unwrap();
        let b = password_line("b", b"p", 3000).unwrap();
        let users = Users::parse(&format!("{a}\n{b}\n")).unwrap();
        assert_eq!(users.dummy.iterations.get(), 3000);
        let empty = Users::parse("").unwrap();
        assert_eq!(empty.dummy.iterations.get(), ITERATIONS);
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, words) in [
            ("app:x", "line 1: expected"),
            ("app:md5:1:AA==:AA==", "only pbkdf2-sha256"),
            ("app:pbkdf2-sha256:0:AA==:AA==", "iterations"),
            ("app:pbkdf2-sha256:1:!!:AA==", "salt"),
            ("app:pbkdf2-sha256:1:AA==:AA==", "32 bytes"),
            (":pbkdf2-sha256:1:AA==:AA==", "empty user"),
        ] {
            let err = Users::parse(text).err().unwrap_or_default();
            assert!(err.contains(words), "{text}: {err}");
        }
        let line = password_line("a", b"p", 1).unwrap();
        let err = Users::parse(&format!("{line}\n{line}")).err().unwrap();
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");
        assert!(password_line("a:b", b"p", 1).is_err());
    }

    #[test]
    fn plain_responses() {
        let enc = |s: &[u8]| STANDARD.encode(s);
        assert_eq!(
            decode_plain(&enc(b"\0app\0pw")),
            Some(("app".to_string(), b"pw".to_vec()))
        );
        assert_eq!(
            decode_plain(&enc(b"app\0app\0pw")),
            Some(("app".to_string(), b"pw".to_vec()))
        );
        assert_eq!(decode_plain(&enc(b"boss\0app\0pw")), None);
        assert_eq!(decode_plain(&enc(b"app\0pw")), None);
        assert_eq!(decode_plain(&enc(b"\0\0pw")), None);
        assert_eq!(decode_plain("not base64!"), None);
    }
}
