//! Turning `redis.url` into a client: credentials from the URL (Redis 6
//! ACL users or `requirepass`), TLS for `rediss://` with rustls, and a word
//! in the log when the fleet's policies would cross a network in clear.

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::redis::redact;
use crate::config::RedisConfig;

pub(super) fn client(cfg: &RedisConfig, url: &str) -> Result<redis::Client, String> {
    let shown = redact(url);
    let info = url
        .into_connection_info()
        .map_err(|e| format!("redis.url {shown:?}: {e}"))?;
    let (host, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, _) => (Some(host.as_str()), false),
        ConnectionAddr::TcpTls { host, .. } => (Some(host.as_str()), true),
        _ => (None, false),
    };
    if let (Some(host), false) = (host, tls) {
        if !is_loopback(host) {
            tracing::warn!(redis = %shown, "redis.url is not rediss://: whoever is on the network path can read and rewrite the fleet's policies (see README, locking Redis down)");
        }
    }
    if info.redis_settings().password().is_none() && host.is_some_and(|h| !is_loopback(h)) {
        tracing::warn!(redis = %shown, "redis.url has no password: any client that reaches Redis can write policies (see README, locking Redis down)");
    }
    match (&cfg.ca_file, tls) {
        (Some(path), true) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("redis.ca_file {}: {e}", path.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| format!("redis.ca_file {}: {e}", path.display()))
        }
        (Some(_), false) => Err(format!(
            "redis.ca_file is set but redis.url {shown:?} is not rediss://; TLS would not be used"
        )),
        (None, _) => redis::Client::open(info).map_err(|e| format!("redis.url {shown:?}: {e}")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("redis.example.test"));
    }

    #[test]
    fn a_ca_file_without_tls_is_refused() {
        let cfg = RedisConfig {
            ca_file: Some("/nonexistent.pem".into()),
            ..RedisConfig::default()
        };
        let e = client(&cfg, "redis://127.0.0.1:6379/0").unwrap_err();
        assert!(e.contains("not rediss://"), "{e}");
    }

    #[test]
    fn credentials_and_tls_urls_parse() {
        let cfg = RedisConfig::default();
        assert!(client(&cfg, "redis://fleet:secret@127.0.0.1:6379/0").is_ok());
        assert!(client(&cfg, "rediss://fleet:secret@redis.example.test:6380/0").is_ok());
        assert!(client(&cfg, "nonsense").is_err());
    }
}
