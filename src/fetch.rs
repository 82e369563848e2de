//! HTTPS retrieval of a policy document (RFC 8461 §3.3), with hard bounds on
//! time and size so that a hostile policy host costs nothing.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::FetchConfig;
use crate::dns::Dns;
use crate::policy::{parse_policy, ParsedPolicy, PolicyError, MAX_POLICY_BYTES};

/// Installs ring as rustls' process-wide provider. reqwest is built without a
/// provider of its own (one TLS stack, no aws-lc), so every binary needs this
/// before the first client is built; calling it again is harmless.
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why a policy could not be fetched. One variant per failure class, so logs,
/// metrics and the check tool can say exactly what went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("policy host {host} did not answer within {0:?}", host = .1)]
    Timeout(Duration, String),
    #[error("cannot resolve policy host: {0}")]
    Dns(String),
    #[error("cannot connect to policy host: {0}")]
    Connect(String),
    #[error("TLS with the policy host failed: {0}")]
    Tls(String),
    #[error("policy host answered {status} redirecting to {location}; RFC 8461 §3.3 forbids following redirects")]
    Redirect { status: u16, location: String },
    #[error("policy host answered HTTP {0}; only 200 is accepted (RFC 8461 §3.3)")]
    Status(u16),
    #[error("policy is served as {0:?}; RFC 8461 §3.3 requires text/plain")]
    ContentType(Option<String>),
    #[error("policy body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the policy body failed: {0}")]
    Body(String),
    #[error("policy is invalid: {0}")]
    Invalid(PolicyError),
}

impl FetchError {
    /// A short stable name for the failure class (logs, metrics, JSON).
    pub fn class(&self) -> &'static str {
        match self {
            FetchError::Timeout(..) => "timeout",
            FetchError::Dns(_) => "dns",
            FetchError::Connect(_) => "connect",
            FetchError::Tls(_) => "tls",
            FetchError::Redirect { .. } => "redirect",
            FetchError::Status(_) => "status",
            FetchError::ContentType(_) => "content-type",
            FetchError::TooLarge { .. } => "too-large",
            FetchError::Body(_) => "body",
            FetchError::Invalid(_) => "invalid-policy",
        }
    }
}

/// What one fetch saw on the wire, for diagnosis: [`Fetcher::fetch`] is
/// [`Fetcher::fetch_report`] without these details, so the check and the
/// resolver can never disagree about a policy.
#[derive(Debug, Clone)]
pub struct FetchReport {
    pub url: String,
    /// The HTTP status, when a response head arrived.
    pub status: Option<u16>,
    /// The Content-Type header, when a response head arrived and had one.
    pub content_type: Option<String>,
    /// The body of a response that was read completely but is not a valid
    /// policy (a valid one is in `result`), so errors can quote the line.
    pub body: Option<Vec<u8>>,
    pub elapsed: Duration,
    pub result: Result<FetchedPolicy, FetchError>,
}

/// The details gathered while a fetch runs (kept when it times out).
#[derive(Debug, Default)]
struct Trace {
    status: Option<u16>,
    content_type: Option<String>,
    body: Option<Vec<u8>>,
}

/// A fetched, validated policy and the exact text it came from.
#[derive(Debug, Clone)]
pub struct FetchedPolicy {
    pub body: String,
    pub parsed: ParsedPolicy,
}

/// A policy fetch in flight; boxed so that [`PolicyFetch`] can be a trait
/// object.
pub type Fetching<'a> =
    Pin<Box<dyn Future<Output = Result<FetchedPolicy, FetchError>> + Send + 'a>>;

/// Where the resolver gets policies from: [`Fetcher`] over HTTPS, an
/// in-memory one in unit tests (so RFC 8461 §5's caching rules are tested
/// without a web server).
pub trait PolicyFetch: Send + Sync + 'static {
    /// Fetches and validates the policy of `domain` (already normalised).
    fn fetch<'a>(&'a self, domain: &'a str) -> Fetching<'a>;
    /// Where the policy of `domain` is fetched from (§3.3), for logs.
    fn url(&self, domain: &str) -> String;
    /// The deadline of one whole fetch.
    fn timeout(&self) -> Duration;
    /// Where the trust anchors came from, for the start-up log line.
    fn trust_description(&self) -> &str;
}

impl PolicyFetch for Fetcher {
    fn fetch<'a>(&'a self, domain: &'a str) -> Fetching<'a> {
        Box::pin(Fetcher::fetch(self, domain))
    }

    fn url(&self, domain: &str) -> String {
        Fetcher::url(self, domain)
    }

    fn timeout(&self) -> Duration {
        Fetcher::timeout(self)
    }

    fn trust_description(&self) -> &str {
        Fetcher::trust_description(self)
    }
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    port: u16,
    timeout: Duration,
    trust: Arc<str>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fetcher(port {}, {})", self.port, self.trust)
    }
}

/// Loads the trust anchors: the system store (which honours `SSL_CERT_FILE`
/// and `SSL_CERT_DIR`) plus an optional extra PEM file. Returns the store and
/// a description of where it came from. The policy fetcher and the TLS probes
/// of the check ([`crate::tlsprobe`]) both build on this, so they trust the
/// same CAs.
pub fn trust_roots(config: &FetchConfig) -> Result<(RootCertStore, String), String> {
    let mut roots = RootCertStore::empty();
    let mut parts = Vec::new();
    if !config.ca_file_only {
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        let source = match (
            std::env::var("SSL_CERT_FILE"),
            std::env::var("SSL_CERT_DIR"),
        ) {
            (Ok(f), _) => format!("SSL_CERT_FILE={f}"),
            (_, Ok(d)) => format!("SSL_CERT_DIR={d}"),
            _ => "system store".to_string(),
        };
        parts.push(format!("{added} CAs from the {source}"));
    }
    if let Some(path) = &config.ca_file {
        let added = add_pem_file(&mut roots, path)?;
        parts.push(format!("{added} CAs from {}", path.display()));
    }
    if roots.is_empty() {
        return Err(
            "no trust anchors: the system store is empty or unreadable and fetch.ca_file adds none; \
             install ca-certificates or set fetch.ca_file"
                .to_string(),
        );
    }
    Ok((roots, parts.join(" + ")))
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("fetch.ca_file {}: {e}", path.display()))?;
    let mut n = 0;
    for cert in iter {
        let cert = cert.map_err(|e| format!("fetch.ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("fetch.ca_file {}: {e}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "fetch.ca_file {}: no PEM certificates in it",
            path.display()
        ));
    }
    Ok(n)
}

/// Walks an error's source chain into one line, so the rustls reason (for
/// example "certificate not valid for name") reaches the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if s.is::<T>() {
            return true;
        }
        // io::Error::source() skips the error it wraps (hyper hands rustls
        // failures up that way); look at the wrapped error directly.
        let wrapped = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if wrapped.is_some_and(has_source::<T>) {
            return true;
        }
        cur = s.source();
    }
    false
}

/// The HTTPS client both the policy fetch and the TLS-RPT upload use: the
/// given trust anchors over rustls, HTTP/1.1 only, names resolved by
/// `resolver` (our DNS, never the system's), no redirects (RFC 8461 §3.3:
/// "HTTP 3xx redirects MUST NOT be followed"; a report is not re-sent
/// somewhere its record did not name), and one deadline for the whole
/// exchange, body included.
pub fn https_client_builder<R: reqwest::dns::Resolve + 'static>(
    roots: rustls::RootCertStore,
    resolver: R,
    timeout: Duration,
) -> reqwest::ClientBuilder {
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(resolver))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .http1_only()
        .user_agent(concat!("mta-sts-agent/", env!("CARGO_PKG_VERSION")))
}

impl Fetcher {
    pub fn new(config: &FetchConfig, dns: &Dns) -> Result<Fetcher, String> {
        init_crypto();
        let (roots, trust) = trust_roots(config)?;
        let client = https_client_builder(roots, dns.clone(), config.timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTPS client: {}", chain(&e)))?;
        Ok(Fetcher {
            client,
            port: config.port,
            timeout: config.timeout,
            trust: trust.into(),
        })
    }

    /// Where the trust anchors came from, for the start-up log line (a changed
    /// CA bundle is a classic cause of sudden delivery failures).
    pub fn trust_description(&self) -> &str {
        &self.trust
    }

    /// The deadline of one whole fetch.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn url(&self, domain: &str) -> String {
        if self.port == 443 {
            format!("https://mta-sts.{domain}/.well-known/mta-sts.txt")
        } else {
            format!(
                "https://mta-sts.{domain}:{}/.well-known/mta-sts.txt",
                self.port
            )
        }
    }

    /// Fetches and validates the policy of `domain` (already normalised).
    /// The whole exchange, body included, is bounded by the configured
    /// deadline, so a trickling host cannot hold a task past it.
    pub async fn fetch(&self, domain: &str) -> Result<FetchedPolicy, FetchError> {
        self.fetch_report(domain).await.result
    }

    /// [`fetch`](Self::fetch) plus what was seen on the way: status,
    /// Content-Type, body and time taken.
    pub async fn fetch_report(&self, domain: &str) -> FetchReport {
        let host = format!("mta-sts.{domain}");
        let started = std::time::Instant::now();
        let mut trace = Trace::default();
        let result =
            match tokio::time::timeout(self.timeout, self.fetch_inner(domain, &mut trace)).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout(self.timeout, host)),
            };
        FetchReport {
            url: self.url(domain),
            status: trace.status,
            content_type: trace.content_type,
            body: trace.body,
            elapsed: started.elapsed(),
            result,
        }
    }

    async fn fetch_inner(
        &self,
        domain: &str,
        trace: &mut Trace,
    ) -> Result<FetchedPolicy, FetchError> {
        let url = self.url(domain);
        let mut response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| self.map_send_error(&e, domain))?;

        let status = response.status();
        trace.status = Some(status.as_u16());
        trace.content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location header)")
                .to_string();
            return Err(FetchError::Redirect {
                status: status.as_u16(),
                location,
            });
        }
        if status != reqwest::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        if !is_text_plain(trace.content_type.as_deref()) {
            return Err(FetchError::ContentType(trace.content_type.clone()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_POLICY_BYTES as u64)
        {
            return Err(FetchError::TooLarge {
                limit: MAX_POLICY_BYTES,
            });
        }
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            if e.is_timeout() {
                FetchError::Timeout(self.timeout, format!("mta-sts.{domain}"))
            } else {
                FetchError::Body(chain(&e))
            }
        })? {
            if body.len() + chunk.len() > MAX_POLICY_BYTES {
                return Err(FetchError::TooLarge {
                    limit: MAX_POLICY_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let parsed = match parse_policy(&body) {
            Ok(parsed) => parsed,
            Err(e) => {
                trace.body = Some(body);
                return Err(FetchError::Invalid(e));
            }
        };
        // parse_policy has checked UTF-8 already.
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok(FetchedPolicy { body, parsed })
    }

    fn map_send_error(&self, e: &reqwest::Error, domain: &str) -> FetchError {
        let text = chain(e);
        if e.is_timeout() {
            FetchError::Timeout(self.timeout, format!("mta-sts.{domain}"))
        } else if has_source::<rustls::Error>(e) || text.contains("certificate") {
            FetchError::Tls(text)
        } else if has_source::<crate::dns::DnsError>(e) || text.contains("no A or AAAA records") {
            FetchError::Dns(text)
        } else {
            FetchError::Connect(text)
        }
    }
}

/// §3.3: the media type must be text/plain; parameters such as charset and
/// any letter case are allowed.
pub fn is_text_plain(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("text/plain")
}

/// Policies served from memory, for unit tests of what is built on fetches.
#[cfg(test)]
pub mod memory {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::Duration;

    use super::{FetchError, FetchedPolicy, Fetching, PolicyFetch};
    use crate::policy::parse_policy;
    use crate::sync::Recover;

    #[derive(Default)]
    struct Served {
        bodies: HashMap<String, Result<String, FetchError>>,
        fetches: HashMap<String, usize>,
        delay: Option<Duration>,
    }

    /// Clones share what is served, so a test changes a policy or counts
    /// fetches while the resolver holds another clone.
    #[derive(Clone, Default)]
    pub struct MemoryFetch {
        served: Arc<Mutex<Served>>,
    }

    impl MemoryFetch {
        fn lock(&self) -> MutexGuard<'_, Served> {
            self.served.locked()
        }

        /// `domain`'s policy host serves `body` (validated as a fetched one is).
        pub fn serve(&self, domain: &str, body: &str) {
            self.lock()
                .bodies
                .insert(domain.to_string(), Ok(body.to_string()));
        }

        /// Fetching `domain`'s policy fails with `error`.
        pub fn fail(&self, domain: &str, error: FetchError) {
            self.lock().bodies.insert(domain.to_string(), Err(error));
        }

        /// Every fetch waits this long first.
        pub fn delay(&self, wait: Duration) {
            self.lock().delay = Some(wait);
        }

        /// Fetches of `domain` so far.
        pub fn fetches(&self, domain: &str) -> usize {
            self.lock().fetches.get(domain).copied().unwrap_or(0)
        }
    }

    impl PolicyFetch for MemoryFetch {
        fn fetch<'a>(&'a self, domain: &'a str) -> Fetching<'a> {
            Box::pin(async move {
                let (served, delay) = {
                    let mut s = self.lock();
                    *s.fetches.entry(domain.to_string()).or_default() += 1;
                    (s.bodies.get(domain).cloned(), s.delay)
                };
                if let Some(wait) = delay {
                    tokio::time::sleep(wait).await;
                }
                let body = match served {
                    Some(served) => served?,
                    None => return Err(FetchError::Status(404)),
                };
                let parsed = parse_policy(body.as_bytes()).map_err(FetchError::Invalid)?;
                Ok(FetchedPolicy { body, parsed })
            })
        }

        fn url(&self, domain: &str) -> String {
            format!("https://mta-sts.{domain}/.well-known/mta-sts.txt")
        }

        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }

        fn trust_description(&self) -> &str {
            "in-memory policies"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_rules() {
        assert!(is_text_plain(Some("text/plain")));
        assert!(is_text_plain(Some("Text/Plain; charset=utf-8")));
        assert!(is_text_plain(Some(" text/plain ;charset=\"us-ascii\"")));
        assert!(!is_text_plain(Some("text/html")));
        assert!(!is_text_plain(Some("text/plainx")));
        assert!(!is_text_plain(Some("application/octet-stream")));
        assert!(!is_text_plain(None));
    }
}
