//! DKIM signatures (RFC 6376) for the messages the relay writes itself:
//! TLS-RPT reports (RFC 8460 §5.3 asks that mailed reports be signed).
//!
//! `rsa-sha256` (RSA keys, 2048 to 4096 bits: what ring signs with) and
//! `ed25519-sha256` (RFC 8463), relaxed/relaxed canonicalization, a SHA-256
//! body hash of the whole body (no `l=`), a `t=` timestamp.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};

/// Header fields signed when present, in this order; `from` is always
/// signed (a message without one is refused).
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "tls-report-domain",
    "tls-report-submitter",
];

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A DKIM signer: one private key, its signing domain (`d=`) and selector
/// (`s=`).
pub struct DkimSigner {
    key: Key,
    domain: String,
    selector: String,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("algorithm", &self.algorithm())
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish()
    }
}

impl DkimSigner {
    /// Loads a PEM PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`), RSA
    /// or Ed25519. Errors name the file.
    pub fn load(path: &Path, domain: &str, selector: &str) -> Result<DkimSigner, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let what = |e: String| format!("DKIM key file {}: {e}", path.display());
        let der = PrivateKeyDer::from_pem_file(path).map_err(|e| what(e.to_string()))?;
        match der {
            PrivateKeyDer::Pkcs8(k) => {
                Self::from_pkcs8(k.secret_pkcs8_der(), domain, selector).map_err(what)
            }
            PrivateKeyDer::Pkcs1(_) => Err(what(
                "a PKCS#1 \"RSA PRIVATE KEY\"; convert it to PKCS#8 with \
                 `openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW`"
                    .into(),
            )),
            _ => Err(what(
                "not a PKCS#8 RSA or Ed25519 private key (\"BEGIN PRIVATE KEY\")".into(),
            )),
        }
    }

    /// A signer from a DER PKCS#8 private key, RSA or Ed25519.
    pub fn from_pkcs8(der: &[u8], domain: &str, selector: &str) -> Result<DkimSigner, String> {
        if !valid_selector(selector) {
            return Err(format!(
                "DKIM selector {selector:?} is not a DNS label sequence"
            ));
        }
        if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
            return Err(format!("DKIM domain {domain:?} is not usable in d="));
        }
        let key = match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Ok(k) => Key::Ed25519(k),
            Err(ed) => match RsaKeyPair::from_pkcs8(der) {
                // ring takes RSA keys of 2048 to 4096 bits only: at least
                // the size RFC 8301 §3.2 recommends (its floor is 1024), so
                // no size check of our own can ever fire.
                Ok(k) => Key::Rsa(k),
                Err(rsa) => {
                    return Err(format!(
                        "neither an Ed25519 key ({ed}) nor an RSA key ring can sign with \
                         ({rsa}; RSA keys must be 2048 to 4096 bits)"
                    ))
                }
            },
        };
        Ok(DkimSigner {
            key,
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_ascii_lowercase(),
        })
    }

    /// `rsa-sha256` or `ed25519-sha256`.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Where the public key is published: `<selector>._domainkey.<domain>`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish at [`dns_name`](Self::dns_name):
    /// `v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo>` or
    /// `v=DKIM1; k=ed25519; p=<raw 32-byte key>` (RFC 8463 §4.2).
    pub fn dns_record(&self) -> String {
        match &self.key {
            Key::Rsa(k) => format!(
                "v=DKIM1; k=rsa; p={}",
                STANDARD.encode(rsa_spki(k.public().as_ref()))
            ),
            Key::Ed25519(k) => format!(
                "v=DKIM1; k=ed25519; p={}",
                STANDARD.encode(k.public_key().as_ref())
            ),
        }
    }

    /// The `DKIM-Signature:` header field (folded, CRLF-terminated) to put
    /// in front of `message` (header, empty line, body; CRLF line ends),
    /// signed at `now` (Unix seconds).
    pub fn sign(&self, message: &[u8], now: u64) -> Result<String, String> {
        let (fields, body) = split_message(message)?;
        let bh = STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            &relaxed_body(body),
        ));
        let mut names = Vec::new();
        let mut data = Vec::new();
        for name in SIGNED_HEADERS {
            // RFC 6376 §5.4.2: the last instance is signed first.
            if let Some(f) = fields
                .iter()
                .rev()
                .find(|f| field_name(f).eq_ignore_ascii_case(name))
            {
                names.push(*name);
                data.extend_from_slice(relaxed_header(f).as_bytes());
            } else if *name == "from" {
                return Err("the message has no From: field to sign".into());
            }
        }
        let mut field = format!(
            "DKIM-Signature: v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={}; h={};\r\n\tbh={};\r\n\tb=",
            self.algorithm(),
            self.domain,
            self.selector,
            now,
            names.join(":"),
            bh
        );
        // §3.7: the signature field itself, `b=` empty, no trailing CRLF.
        let own = relaxed_header(&field);
        data.extend_from_slice(own.trim_end_matches("\r\n").as_bytes());
        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    &data,
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_string())?;
                sig
            }
            // RFC 8463 §3: PureEdDSA over the SHA-256 hash.
            Key::Ed25519(k) => k
                .sign(ring::digest::digest(&ring::digest::SHA256, &data).as_ref())
                .as_ref()
                .to_vec(),
        };
        let b = STANDARD.encode(signature);
        for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                field.push_str("\r\n\t");
            }
            field.push_str(&String::from_utf8_lossy(chunk));
        }
        field.push_str("\r\n");
        Ok(field)
    }
}

/// A selector is one or more DNS labels (RFC 6376 §3.1).
fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// DER SubjectPublicKeyInfo around a PKCS#1 RSAPublicKey.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    let algorithm: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = algorithm.to_vec();
    inner.extend(tlv(0x03, &bits));
    tlv(0x30, &inner)
}

/// The header fields (each with its folding, without the final CRLF) and
/// the body.
fn split_message(message: &[u8]) -> Result<(Vec<String>, &[u8]), String> {
    let (head, body) = match find(message, b"\r\n\r\n") {
        Some(i) => (&message[..i + 2], &message[i + 4..]),
        None if message.ends_with(b"\r\n") => (message, &message[message.len()..]),
        None => return Err("the message has no header/body separator".into()),
    };
    let head = std::str::from_utf8(head).map_err(|_| "the message header is not UTF-8")?;
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match fields.last_mut() {
                Some(f) => {
                    f.push_str("\r\n");
                    f.push_str(line);
                }
                None => return Err("the message starts with a continuation line".into()),
            }
        } else if line.contains(':') {
            fields.push(line.to_string());
        } else {
            return Err(format!("not a header field: {line:?}"));
        }
    }
    Ok((fields, body))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn field_name(field: &str) -> &str {
    field
        .split(':')
        .next()
        .unwrap_or("")
        .trim_end_matches([' ', '\t'])
}

/// RFC 6376 §3.4.2: name lowercased, unfolded, whitespace runs reduced to
/// one space, none at the end of the value or around the colon; CRLF-ended.
pub fn relaxed_header(field: &str) -> String {
    let (name, value) = field.split_once(':').unwrap_or((field, ""));
    let name = name.trim_end_matches([' ', '\t']).to_ascii_lowercase();
    let unfolded = value.replace(['\r', '\n'], "");
    let mut out = String::with_capacity(name.len() + unfolded.len() + 3);
    out.push_str(&name);
    out.push(':');
    let mut space = false;
    for c in unfolded.trim_matches([' ', '\t']).chars() {
        if c == ' ' || c == '\t' {
            space = true;
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out.push_str("\r\n");
    out
}

/// RFC 6376 §3.4.4: whitespace runs reduced to one space, none at line
/// ends, no empty lines at the end; a non-empty body ends with CRLF.
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match find(rest, b"\r\n") {
            Some(i) => (&rest[..i], &rest[i + 2..]),
            None => (rest, &rest[rest.len()..]),
        };
        let mut out = Vec::with_capacity(line.len());
        let mut space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                space = true;
            } else {
                if space {
                    out.push(b' ');
                    space = false;
                }
                out.push(b);
            }
        }
        lines.push(out);
        rest = next;
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = Vec::with_capacity(body.len());
    for l in lines {
        out.extend_from_slice(&l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ED25519, RSA_PKCS1_2048_8192_SHA256};

    // RFC 6376 §3.4.5.
    #[test]
    fn relaxed_canonicalization_rfc6376_example() {
        let message = "A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        let (fields, body) = split_message(message.as_bytes()).expect("split");
        let head: String = fields.iter().map(|f| relaxed_header(f)).collect();
        assert_eq!(head, "a:X\r\nb:Y Z\r\n");
        assert_eq!(relaxed_body(body), b" C\r\nD E\r\n");
    }

    #[test]
    fn relaxed_body_edge_cases() {
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"x"), b"x\r\n");
        assert_eq!(relaxed_body(b"a  b \t\r\n \r\n"), b"a b\r\n");
    }

    const MESSAGE: &str = "From: <rpt@example.test>\r\nTo: <tls@receiver.test>\r\n\
        Subject: Report Domain: receiver.test\r\n Submitter: relay.example.test\r\n\
        Received: not signed\r\nTLS-Report-Domain: receiver.test\r\n\r\nbody  line \r\n\r\n";

    /// Checks `field` + MESSAGE as a verifier would: tags, body hash, and
    /// the signature with `verify(data, sig)`.
    fn check(field: &str, verify: impl Fn(&[u8], &[u8]) -> bool) {
        assert!(field.starts_with("DKIM-Signature: v=1; a="), "{field}");
        assert!(field.ends_with("\r\n") && !field.ends_with("\r\n\r\n"));
        let value = field["DKIM-Signature:".len()..].replace(['\r', '\n', '\t', ' '], "");
        let tag = |name: &str| -> String {
            value
                .split(';')
                .find_map(|t| t.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {field}"))
                .to_string()
        };
        assert_eq!(tag("c"), "relaxed/relaxed");
        assert_eq!(tag("d"), "example.test");
        assert_eq!(tag("s"), "sel1");
        assert_eq!(tag("t"), "1700000000");
        assert_eq!(tag("h"), "from:to:subject:tls-report-domain");
        let bh = STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            b"body line\r\n",
        ));
        assert_eq!(tag("bh"), bh);
        let sig = STANDARD.decode(tag("b")).expect("b= base64");
        let mut data = String::new();
        data.push_str("from:<rpt@example.test>\r\nto:<tls@receiver.test>\r\n");
        data.push_str("subject:Report Domain: receiver.test Submitter: relay.example.test\r\n");
        data.push_str("tls-report-domain:receiver.test\r\n");
        let unsigned = &field[..field.rfind("\tb=").expect("b= last") + 3];
        data.push_str(relaxed_header(unsigned).trim_end_matches("\r\n"));
        assert!(verify(data.as_bytes(), &sig), "signature does not verify");
        // A changed body or header breaks it.
        let mut bad = data.clone().into_bytes();
        bad[6] ^= 1;
        assert!(!verify(&bad, &sig));
    }

    #[test]
    fn ed25519_round_trip() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let signer =
            DkimSigner::from_pkcs8(pkcs8.as_ref(), "Example.TEST", "sel1").expect("signer");
        assert_eq!(signer.algorithm(), "ed25519-sha256");
        assert_eq!(signer.dns_name(), "sel1._domainkey.example.test");
        let public = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .expect("key")
            .public_key()
            .as_ref()
            .to_vec();
        assert_eq!(
            signer.dns_record(),
            format!("v=DKIM1; k=ed25519; p={}", STANDARD.encode(&public))
        );
        let field = signer
            .sign(MESSAGE.as_bytes(), 1_700_000_000)
            .expect("sign");
        assert!(field.contains("a=ed25519-sha256;"), "{field}");
        check(&field, |data, sig| {
            let digest = ring::digest::digest(&ring::digest::SHA256, data);
            UnparsedPublicKey::new(&ED25519, &public)
                .verify(digest.as_ref(), sig)
                .is_ok()
        });
    }

    /// A fresh 2048-bit RSA PKCS#8 key from the openssl CLI (ring cannot
    /// generate RSA keys); None when openssl is missing outside CI.
    fn openssl_rsa_key(dir: &Path) -> Option<std::path::PathBuf> {
        let path = dir.join("rsa.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(path),
            other => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "openssl genpkey: {other:?}"
                );
                eprintln!("skipped: no openssl CLI to generate an RSA key");
                None
            }
        }
    }

    #[test]
    fn rsa_round_trip_and_file_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(path) = openssl_rsa_key(dir.path()) else {
            return;
        };
        let signer = DkimSigner::load(&path, "example.test", "sel1").expect("signer");
        assert_eq!(signer.algorithm(), "rsa-sha256");
        let pem = std::fs::read(&path).expect("read");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
            .map(|k: rustls_pki_types::PrivatePkcs8KeyDer<'_>| k.secret_pkcs8_der().to_vec())
            .expect("pkcs8");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("rsa");
        let public = pair.public().as_ref().to_vec();
        let record = signer.dns_record();
        assert!(record.starts_with("v=DKIM1; k=rsa; p=MII"), "{record}");
        let field = signer
            .sign(MESSAGE.as_bytes(), 1_700_000_000)
            .expect("sign");
        assert!(field.contains("a=rsa-sha256;"), "{field}");
        check(&field, |data, sig| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(data, sig)
                .is_ok()
        });

        // Errors name the file.
        let missing = dir.path().join("missing.pem");
        let e = DkimSigner::load(&missing, "example.test", "s").unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key\n").expect("write");
        let e = DkimSigner::load(&junk, "example.test", "s").unwrap_err();
        assert!(e.contains("junk.pem"), "{e}");
        assert!(DkimSigner::load(&path, "example.test", "bad selector").is_err());
        assert!(
            signer.sign(b"To: x\r\n\r\nbody\r\n", 1).is_err(),
            "no From:"
        );
    }
}
