//! A throw-away certificate authority, made at test time with rcgen.
//!
//! ```ignore
//! let ca = TestCa::new();
//! let leaf = ca.issue(&["mta-sts.example.test"]);
//! // trust `ca.cert_der()` (or the file from `ca.write_pem(dir)`) in the client
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A certificate chain (leaf first) and its private key, ready for rustls.
#[derive(Debug)]
pub struct Leaf {
    /// `[leaf]`: the CA certificate is not included.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Leaf {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Leaf {
    /// Writes the chain and key as PEM files `dir/<stem>.crt` and
    /// `dir/<stem>.key`, as an admin would configure them.
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let mut chain = String::new();
        for c in &self.chain {
            chain.push_str(&pem("CERTIFICATE", c.as_ref()));
        }
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, chain).expect("write the certificate");
        std::fs::write(&key, pem("PRIVATE KEY", self.key.secret_der())).expect("write the key");
        (cert, key)
    }
}

/// RFC 7468 text encoding.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A test certificate authority. Cheap to clone (the key is shared).
#[derive(Clone)]
pub struct TestCa {
    inner: Arc<CertifiedIssuer<'static, KeyPair>>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets `params` to be valid from `from_days` to `to_days` relative to now
/// (negative = in the past). rcgen does not re-export the `time` crate, so the
/// date type is never named here and no extra dependency is needed.
fn set_validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock is before 1970");
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let shift = |days: i64| {
        let span = DAY * u32::try_from(days.unsigned_abs()).expect("day offset fits in u32");
        if days < 0 {
            now - span
        } else {
            now + span
        }
    };
    params.not_before = shift(from_days);
    params.not_after = shift(to_days);
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone())
        .unwrap_or_else(|e| panic!("rcgen rejected the leaf names {names:?}: {e}"));
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "leaf".to_string()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

impl TestCa {
    /// A fresh CA (ECDSA P-256), valid from yesterday to one year from now.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("generate the test CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mta-sts-agent test CA");
        dn.push(DnType::OrganizationName, "mta-sts-agent tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, -1, 365);
        let inner = CertifiedIssuer::self_signed(params, key).expect("self-sign the test CA");
        TestCa {
            inner: Arc::new(inner),
        }
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.inner.pem()
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.inner.der().clone()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns that path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert_pem())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A leaf for `names` (DNS SANs) signed by this CA, valid from yesterday
    /// to 90 days from now. The chain is `[leaf]`.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_between(names, -1, 90)
    }

    /// Like [`issue`](Self::issue) but expired: valid from 30 days ago to
    /// yesterday.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_between(names, -30, -1)
    }

    /// A leaf for `names` valid from `from_days` to `to_days` relative to now
    /// (negative = in the past), e.g. `(-1, 7)` for one expiring in a week.
    pub fn issue_between(&self, names: &[&str], from_days: i64, to_days: i64) -> Leaf {
        let key = KeyPair::generate().expect("generate a leaf key");
        let mut params = leaf_params(names);
        set_validity(&mut params, from_days, to_days);
        let cert = params
            .signed_by(&key, &self.inner)
            .expect("sign the leaf with the test CA");
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::from(key),
        }
    }
}

/// A self-signed leaf for `names`, not signed by any test CA (valid from
/// yesterday to 90 days from now).
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("generate a self-signed key");
    let mut params = leaf_params(names);
    set_validity(&mut params, -1, 90);
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(&key)
        .expect("self-sign the leaf certificate");
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::from(key),
    }
}
