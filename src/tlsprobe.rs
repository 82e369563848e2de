//! A TLS handshake that reports what it saw: protocol version, cipher suite,
//! whether the certificate chain is valid for the name, and the leaf
//! certificate's names and expiry.
//!
//! It trusts exactly the anchors of the policy fetcher
//! ([`crate::fetch::trust_roots`]), so "the check says the certificate is
//! valid" means "the daemon's fetch accepts it". Unlike the fetcher it
//! finishes the handshake even when the certificate is bad (the verdict is
//! recorded, not enforced), so a diagnosis can still show the version, the
//! cipher and the dates; nothing but an optional `QUIT` is ever sent over a
//! connection whose certificate failed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::FetchConfig;
use crate::sync::Recover;

/// Why a certificate is not acceptable for the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    Expired,
    NotYetValid,
    /// The chain is fine but the certificate does not cover the name.
    NameMismatch,
    /// Self-signed, or issued by a CA not in the trust store.
    Untrusted,
    Other(String),
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertProblem::Expired => f.write_str("certificate has expired"),
            CertProblem::NotYetValid => f.write_str("certificate is not valid yet"),
            CertProblem::NameMismatch => f.write_str("certificate is not valid for the name"),
            CertProblem::Untrusted => {
                f.write_str("certificate is self-signed or from an untrusted CA")
            }
            CertProblem::Other(e) => write!(f, "certificate rejected: {e}"),
        }
    }
}

fn classify_cert_error(e: &rustls::Error) -> CertProblem {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertProblem::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertProblem::NotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertProblem::NameMismatch
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                CertProblem::Untrusted
            }
            other => CertProblem::Other(format!("{other:?}")),
        },
        other => CertProblem::Other(other.to_string()),
    }
}

/// The leaf certificate as parsed by x509-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names of the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Seconds from now until `not_after` (negative once expired).
    pub seconds_left: i64,
    /// [`days_until`] `not_after`: rounded days, negative once expired.
    pub days_left: i64,
}

/// Days until `not_after`, rounded to the nearest day (negative once
/// expired), so a report does not flip between 89 and 90 within a second.
pub fn days_until(not_after: i64, now: i64) -> i64 {
    (not_after - now + 43_200).div_euclid(86_400)
}

/// Parses the leaf certificate. `None` for DER x509-parser cannot read.
pub fn leaf_info(der: &[u8], now: i64) -> Option<LeafInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(LeafInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_names,
        not_before: validity.not_before.timestamp(),
        not_after,
        seconds_left: not_after - now,
        days_left: days_until(not_after, now),
    })
}

/// What a completed handshake showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReport {
    /// The name checked (and sent as SNI).
    pub server_name: String,
    /// `TLSv1.2`, `TLSv1.3`.
    pub version: String,
    /// True for TLS 1.2 and later (this probe cannot negotiate anything older;
    /// an older server fails with [`TlsProbeError::TooOld`]).
    pub version_ok: bool,
    pub cipher: String,
    /// `Ok` when the chain is valid for `server_name` under the trust store.
    pub cert: Result<(), CertProblem>,
    pub leaf: Option<LeafInfo>,
    /// The session was resumed (no certificate was sent; `cert` is the
    /// verdict on the chain of the session resumed, checked again now).
    pub resumed: bool,
}

/// Why no handshake completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server offers no TLS version this probe accepts (1.2 or 1.3).
    #[error("server supports no TLS version from 1.2 up ({0})")]
    TooOld(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("'{0}' is not a valid TLS server name")]
    BadName(String),
}

/// Accepts any certificate in the handshake and leaves the verdict to
/// [`TlsProber::handshake`], which judges the chain afterwards; the
/// handshake signatures, the proof that the peer holds the certificate's
/// key, are checked as ever. Two uses:
/// - `outcome: Some`: the verdict of the real verifier is recorded here as
///   the handshake goes (the diagnosis, a configuration per handshake);
/// - `outcome: None`: nothing is recorded; the caller verifies the chain
///   from `peer_certificates()`, which rustls also hands back for a
///   resumed session (see [`TlsProber::with_session_resumption`]).
#[derive(Debug)]
struct AfterHandshake {
    inner: Arc<WebPkiServerVerifier>,
    outcome: Option<Mutex<Option<Result<(), CertProblem>>>>,
}

impl ServerCertVerifier for AfterHandshake {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(slot) = &self.outcome {
            let verdict = self
                .inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .map_err(|e| classify_cert_error(&e));
            *slot.locked() = Some(verdict);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Clone)]
struct Resuming {
    config: Arc<rustls::ClientConfig>,
    webpki: Arc<WebPkiServerVerifier>,
}

/// Runs diagnostic TLS handshakes against one trust store.
#[derive(Clone)]
pub struct TlsProber {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    timeout: Duration,
    trust: Arc<str>,
    /// One client configuration for every handshake, keeping TLS sessions
    /// for resumption (the relay's MX connections); `None`: every handshake
    /// is a full one with a configuration of its own (the diagnosis).
    resuming: Option<Resuming>,
}

impl std::fmt::Debug for TlsProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsProber({}, timeout {:?})", self.trust, self.timeout)
    }
}

fn classify_handshake_error(e: &std::io::Error) -> TlsProbeError {
    let text = e.to_string();
    if let Some(
        rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
        | rustls::Error::PeerIncompatible(_),
    ) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        return TlsProbeError::TooOld(text);
    }
    TlsProbeError::Handshake(text)
}

impl TlsProber {
    /// Uses the fetcher's trust anchors (system store and/or `ca_file`).
    pub fn new(config: &FetchConfig, timeout: Duration) -> Result<TlsProber, String> {
        crate::fetch::init_crypto();
        let (roots, trust) = crate::fetch::trust_roots(config)?;
        Ok(TlsProber::with_roots(roots, trust, timeout))
    }

    pub fn with_roots(roots: RootCertStore, trust: String, timeout: Duration) -> TlsProber {
        TlsProber {
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            timeout,
            trust: trust.into(),
            resuming: None,
        }
    }

    /// Keeps up to `entries` TLS sessions (RFC 8446 §2.2 tickets, RFC 5077
    /// for TLS 1.2) keyed by server name, so a new connection to an MX host
    /// skips the full handshake. rustls resumes only under the very
    /// verifier that made the session, so this prober then uses one
    /// configuration for all handshakes, whose verifier defers the
    /// certificate verdict to [`handshake`](Self::handshake): there the
    /// chain is checked for the name asked for, now, whether it was just
    /// presented or comes from the session resumed (rustls hands it back).
    /// A resumed session thus gets exactly the verdict of a full one, under
    /// every policy; DANE callers check that chain against the current
    /// TLSA records as always. Without ALPN only (the relay's case).
    pub fn with_session_resumption(mut self, entries: usize) -> Result<TlsProber, String> {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| format!("no usable trust anchors: {e}"))?;
        let deferred = Arc::new(AfterHandshake {
            inner: webpki.clone(),
            outcome: None,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(deferred)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(entries),
        ));
        self.resuming = Some(Resuming {
            config: Arc::new(config),
            webpki,
        });
        Ok(self)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where the trust anchors came from.
    pub fn trust_description(&self) -> &str {
        &self.trust
    }

    /// Runs a TLS handshake over `stream` for `server_name` (also the SNI),
    /// bounded by the probe timeout. Returns the TLS stream, so the caller
    /// may finish its protocol politely, and the report.
    pub async fn handshake<S>(
        &self,
        stream: S,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> Result<(TlsStream<S>, TlsReport), TlsProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsProbeError::BadName(server_name.to_string()))?;
        let checked_name = name.clone();
        // Per call: a verifier that records its verdict for this handshake.
        // Resuming: the shared configuration, the verdict made below.
        let (config, recording, webpki) = match &self.resuming {
            Some(r) if alpn.is_empty() => (r.config.clone(), None, r.webpki.clone()),
            _ => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    self.roots.clone(),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| TlsProbeError::Handshake(format!("no usable trust anchors: {e}")))?;
                let recording = Arc::new(AfterHandshake {
                    inner: inner.clone(),
                    outcome: Some(Mutex::new(None)),
                });
                let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsProbeError::Handshake(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(recording.clone())
                    .with_no_client_auth();
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                config.resumption = rustls::client::Resumption::disabled();
                (Arc::new(config), Some(recording), inner)
            }
        };
        let connector = TlsConnector::from(config);
        let tls = match tokio::time::timeout(self.timeout, connector.connect(name, stream)).await {
            Err(_) => return Err(TlsProbeError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(classify_handshake_error(&e)),
            Ok(Ok(tls)) => tls,
        };
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version();
        let version_text = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let version_ok = matches!(
            version,
            Some(rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3)
        );
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_else(|| "unknown".to_string());
        let leaf = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|der| leaf_info(der, crate::clock::unix_now() as i64));
        let recorded =
            recording.and_then(|r| r.outcome.as_ref().and_then(|slot| slot.locked().clone()));
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let cert = match (recorded, conn.peer_certificates()) {
            (Some(verdict), _) => verdict,
            // The deferred verdict: the chain presented now, or the one of
            // the session resumed (rustls: "resumption is a continuation of
            // the previous session"; ours is not a continuation of trust).
            (None, Some([end_entity, intermediates @ ..])) => webpki
                .verify_server_cert(
                    end_entity,
                    intermediates,
                    &checked_name,
                    &[],
                    UnixTime::now(),
                )
                .map(|_| ())
                .map_err(|e| classify_cert_error(&e)),
            (None, _) => Err(CertProblem::Other("no certificate was presented".into())),
        };
        let report = TlsReport {
            server_name: server_name.to_string(),
            version: version_text,
            version_ok,
            cipher,
            cert,
            leaf,
            resumed,
        };
        Ok((tls, report))
    }

    /// Connects to `addr` and runs [`handshake`](Self::handshake); connect
    /// and handshake each bounded by the probe timeout.
    pub async fn probe_tcp(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> Result<TlsReport, TlsProbeError> {
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(TlsProbeError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(TlsProbeError::Connect(format!("{addr}: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        let (mut tls, report) = self.handshake(tcp, server_name, alpn).await?;
        // Polite close; never wait long for it.
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncWriteExt::shutdown(&mut tls),
        )
        .await;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_errors_are_classified() {
        let e = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            classify_cert_error(&e(CertificateError::Expired)),
            CertProblem::Expired
        );
        assert_eq!(
            classify_cert_error(&e(CertificateError::NotValidForName)),
            CertProblem::NameMismatch
        );
        assert_eq!(
            classify_cert_error(&e(CertificateError::UnknownIssuer)),
            CertProblem::Untrusted
        );
        assert!(matches!(
            classify_cert_error(&rustls::Error::General("x".into())),
            CertProblem::Other(_)
        ));
    }

    #[test]
    fn old_protocol_alert_is_too_old() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
        );
        assert!(matches!(
            classify_handshake_error(&io),
            TlsProbeError::TooOld(_)
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "eof");
        assert!(matches!(
            classify_handshake_error(&io),
            TlsProbeError::Handshake(_)
        ));
    }

    #[test]
    fn days_until_expiry() {
        assert_eq!(days_until(90 * 86_400, 0), 90);
        assert_eq!(days_until(90 * 86_400, 1), 90);
        assert_eq!(days_until(90 * 86_400, -1), 90);
        assert_eq!(days_until(86_400, 86_400), 0);
        assert_eq!(days_until(0, 86_400), -1);
        assert_eq!(days_until(0, 86_401), -1);
        assert_eq!(days_until(0, 86_399), -1);
        assert_eq!(days_until(0, 3 * 86_400), -3);
    }

    #[test]
    fn garbage_der_is_not_a_leaf() {
        assert_eq!(leaf_info(b"\x30\x03\x02\x01", 0), None);
        assert_eq!(leaf_info(&[], 0), None);
    }
}
