//! The one typed configuration, loaded from TOML. Every key has a default, so an
//! empty file (or none) is a working configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{normalize_domain, Mode, MxPattern, Policy, MAX_AGE_LIMIT};

/// Where `serve` looks for a config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mta-sts-agent/config.toml";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the persistent policy store. Default: `$STATE_DIRECTORY`
    /// (systemd), else `/var/lib/mta-sts-agent` as root, else
    /// `$XDG_STATE_HOME/mta-sts-agent` or `~/.local/state/mta-sts-agent`.
    pub state_dir: Option<PathBuf>,
    /// When started as root: the user to become after binding the listeners.
    pub user: Option<String>,
    /// The admin control socket (`mta-sts-agent policy …`). Default:
    /// `<state_dir>/control.sock`.
    pub control_socket: Option<PathBuf>,
    pub dns: DnsConfig,
    pub fetch: FetchConfig,
    pub cache: CacheConfig,
    pub socketmap: SocketmapConfig,
    pub metrics: MetricsConfig,
    pub redis: RedisConfig,
    pub relay: RelayConfig,
    /// Per-domain overrides: `[overrides."example.com"]`. Applied by every
    /// face, before any cache or network work.
    pub overrides: BTreeMap<String, OverrideConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:port` for `GET /metrics` (Prometheus) and `GET /healthz`. Off
    /// when unset.
    pub listen: Option<SocketAddr>,
}

/// The smart-host relay: an SMTP listener for trusted local clients, a
/// durable queue, and delivery to each recipient domain's MX hosts under
/// its MTA-STS policy. Off until `listen` names an address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `IP:port` addresses to accept mail on, e.g. `["127.0.0.1:10025"]`.
    /// Empty: the relay is off.
    pub listen: Vec<SocketAddr>,
    /// Our name in the greeting, EHLO, Received: headers and bounces.
    /// Default: the system host name.
    pub hostname: Option<String>,
    /// Client networks allowed to relay (CIDR). Anyone else is refused at
    /// the greeting: never an open relay.
    pub allowed_networks: Vec<String>,
    pub max_connections: usize,
    /// Connections one client address may hold at once, so that one host
    /// cannot take every slot (Postfix's smtpd_client_connection_count_limit).
    pub max_connections_per_client: usize,
    /// Largest message accepted (SIZE, RFC 1870), in bytes.
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Commands per session before the server hangs up.
    pub max_commands: usize,
    /// A deadline for each whole command line, which a client sending one
    /// byte at a time cannot reset, and the longest silence within DATA
    /// (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// The whole DATA phase, from `354` to the final dot, must end within
    /// this, however the client trickles its bytes.
    #[serde(with = "humantime_serde")]
    pub data_deadline: Duration,
    /// PEM certificate chain and key for STARTTLS towards clients. Both or
    /// neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Users who may relay from anywhere after STARTTLS and AUTH (PLAIN or
    /// LOGIN): lines made by `mta-sts-agent relay-password USER`. Unset:
    /// no AUTH, only `allowed_networks` may relay.
    pub auth_users_file: Option<PathBuf>,
    /// Failed AUTH attempts from one client address before it must wait.
    pub auth_max_failures: u32,
    /// The first wait after `auth_max_failures`; it doubles with each
    /// further failure, up to an hour.
    #[serde(with = "humantime_serde")]
    pub auth_backoff: Duration,
    /// Password checks (PBKDF2, CPU-heavy) running at once; more wait.
    pub auth_max_parallel: usize,
    /// Waits between delivery attempts of one domain; the last repeats.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// How long a message may stay queued before its sender gets a bounce.
    #[serde(with = "humantime_serde")]
    pub queue_lifetime: Duration,
    /// A sender who asked for NOTIFY=DELAY (RFC 3461 §4.1) gets one delay
    /// DSN once its message has waited this long. `0s`: never.
    #[serde(with = "humantime_serde")]
    pub delay_warning_after: Duration,
    /// Honour a `TLS-Required: No` header field (RFC 8689 §4.2.2) from clients
    /// that may relay (allowed network or AUTH): such a message is
    /// delivered without the recipient domain's MTA-STS or DANE
    /// requirements. Off: the header is relayed but changes nothing.
    pub honour_tls_required_no: bool,
    /// Deliveries running at once.
    pub max_deliveries: usize,
    /// Port of the remote MX hosts; only tests change it.
    pub delivery_port: u16,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for each remote reply (RFC 5321 §4.5.3.2: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub reply_timeout: Duration,
    /// Longest wait for the reply to the end of data (§4.5.3.2.6: 10 minutes).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// MX hosts tried per delivery, in preference order.
    pub max_mx_hosts: usize,
    /// Addresses tried per MX host.
    pub max_addresses_per_host: usize,
    /// How long a session stays open after a delivery, waiting for the
    /// next message to the same destination (Postfix's
    /// `smtp_connection_cache_time_limit`). "0s": one session per delivery.
    #[serde(with = "humantime_serde")]
    pub connection_cache_time: Duration,
    /// A session is not used for new deliveries once it is this old
    /// (Postfix's `smtp_connection_reuse_time_limit`).
    #[serde(with = "humantime_serde")]
    pub connection_reuse_time: Duration,
    /// TLS-RPT (RFC 8460) aggregate reports about deliveries under
    /// MTA-STS: `[relay.tlsrpt]`.
    pub tlsrpt: TlsRptConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        RelayConfig {
            listen: Vec::new(),
            hostname: None,
            allowed_networks: vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
            max_connections: 100,
            max_connections_per_client: 50,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_commands: 10_000,
            command_timeout: m(5),
            data_deadline: m(20),
            tls_cert_file: None,
            tls_key_file: None,
            auth_users_file: None,
            auth_max_failures: 5,
            auth_backoff: m(1),
            auth_max_parallel: 2,
            retry_schedule: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            queue_lifetime: Duration::from_secs(5 * 86_400),
            delay_warning_after: m(240),
            honour_tls_required_no: true,
            max_deliveries: 20,
            delivery_port: 25,
            connect_timeout: Duration::from_secs(30),
            reply_timeout: m(5),
            data_timeout: m(10),
            max_mx_hosts: 5,
            max_addresses_per_host: 2,
            connection_cache_time: Duration::from_secs(2),
            connection_reuse_time: m(5),
            tlsrpt: TlsRptConfig::default(),
        }
    }
}

/// `[relay.tlsrpt]`: the relay counts every delivery session under an
/// MTA-STS policy per policy domain and UTC day, and once a day sends each
/// domain that publishes `_smtp._tls` an RFC 8460 aggregate report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsRptConfig {
    /// Record sessions and send reports.
    pub enabled: bool,
    /// `organization-name` of the reports. Default: the relay's host name.
    pub organization_name: Option<String>,
    /// `contact-info` of the reports. Default: `report_from`.
    pub contact_info: Option<String>,
    /// `From:` of mailed reports. Default: `tlsrpt-noreply@<hostname>`.
    pub report_from: Option<String>,
    /// How often counts are written to `<state_dir>/tlsrpt/`; a crash loses
    /// at most this much of the counts.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long after 00:00 UTC the previous day's reports go out.
    #[serde(with = "humantime_serde")]
    pub send_delay: Duration,
    /// Days a report whose `https:` POST failed is retried (once a day)
    /// before it is dropped.
    pub retry_days: u64,
    /// Deadline of one report POST, connection included.
    #[serde(with = "humantime_serde")]
    pub post_timeout: Duration,
    /// PEM PKCS#8 private key (RSA 2048-4096 bits, or Ed25519) that
    /// DKIM-signs mailed reports (RFC 8460 §5.3). Unset: not signed.
    pub dkim_key_file: Option<PathBuf>,
    /// `d=` of the signature. Default: the domain of `report_from`.
    pub dkim_domain: Option<String>,
    /// `s=` of the signature: the key is published as a TXT record at
    /// `<selector>._domainkey.<dkim_domain>`.
    pub dkim_selector: Option<String>,
    /// POST reports to loopback, private (RFC 1918, ULA), link-local,
    /// CGNAT and other non-public addresses. Off: a forged `rua=` cannot
    /// aim the relay at internal services.
    pub allow_private_destinations: bool,
    /// Reports kept in `<state_dir>/tlsrpt/reports/` (delivered ones for
    /// 60 days, to never send one twice; they make room first). When all
    /// are undelivered, a new day's counts are dropped with a log line.
    pub max_reports: usize,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: true,
            organization_name: None,
            contact_info: None,
            report_from: None,
            flush_interval: Duration::from_secs(60),
            send_delay: Duration::from_secs(600),
            retry_days: 3,
            post_timeout: Duration::from_secs(30),
            dkim_key_file: None,
            dkim_domain: None,
            dkim_selector: None,
            allow_private_destinations: false,
            max_reports: 10_000,
        }
    }
}

/// A list of durations written as humantime strings: `["1m", "5m"]`.
mod duration_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| humantime::parse_duration(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// An IP network in CIDR form. The containment arithmetic is the ipnet
/// crate's; what this type adds is the spelling `relay.allowed_networks`
/// accepts and the IPv4-mapped rule of [`IpNet::contains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// `address/prefix`, or a bare address for that one host; spaces
    /// around either half are allowed.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = ip.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        IpNet::new(addr, prefix)
    }

    /// None when `prefix` is longer than the address.
    pub fn new(addr: std::net::IpAddr, prefix: u8) -> Option<IpNet> {
        ipnet::IpNet::new(addr, prefix).ok().map(IpNet)
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        // An IPv4 network never contains an IPv6 address, nor the reverse.
        self.0.contains(&ip)
    }
}

/// The shared store for a fleet of agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user][:password@]host:port/db`, or `rediss://` for TLS.
    /// Unset: no shared store.
    pub url: Option<String>,
    /// Longest a lookup waits on Redis before answering from local tiers.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub key_prefix: String,
    /// How long one agent may hold a domain's fetch lock. Must be longer
    /// than fetch.timeout.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// PEM CA certificate(s) that sign a `rediss://` server's certificate,
    /// instead of the system store (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            timeout: Duration::from_millis(250),
            key_prefix: "mta-sts:".to_string(),
            lock_ttl: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// An administrator's decision about one domain, replacing what the domain
/// publishes: tolerate a broken policy (`mode = "none"`) or pin one
/// (`mode = "enforce"` with `mx`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    pub mode: Mode,
    #[serde(default)]
    pub mx: Vec<String>,
    /// Why: logged whenever the override is applied, shown by `policy show`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `IP` or `IP:port`. Empty: those of /etc/resolv.conf.
    pub nameservers: Vec<String>,
    /// Time allowed for one query attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Port of the policy host; RFC 8461 uses 443. Only tests and odd
    /// set-ups change it.
    pub port: u16,
    /// Deadline for one whole fetch: connect, TLS, headers and body.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra PEM file of trust anchors added to the system store.
    pub ca_file: Option<PathBuf>,
    /// Use only `ca_file`, not the system store.
    pub ca_file_only: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            port: 443,
            timeout: Duration::from_secs(20),
            ca_file: None,
            ca_file_only: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep policies on disk so a restart never forgets them. Turning this off
    /// reopens the downgrade window after every restart.
    pub persistent: bool,
    /// Policies (and per-domain states) kept in memory in front of the
    /// persistent store: the hot set. Policies beyond it stay on disk and are
    /// read from there (no network) when asked for. About 1.3 KB each.
    pub memory_entries: u64,
    /// How long the first lookup of an unknown domain waits for discovery and
    /// fetch before answering "no policy" (the fetch goes on in the background).
    #[serde(with = "humantime_serde")]
    pub first_lookup_deadline: Duration,
    /// A lookup that hits a cached policy re-checks the TXT id in the background
    /// at most this often.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
    /// A cached policy is refetched (renewing its max_age) when it is this old,
    /// or half its max_age if that is shorter.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often the background sweep looks for policies due for refresh.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How long "this domain publishes no policy" is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// First wait after a failed discovery or fetch; doubles on each further
    /// failure up to `failure_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub failure_backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub failure_backoff_max: Duration,
    /// For maps with `match_current_mx`: a domain's MX set is kept for its
    /// DNS TTL, but at least this long and at most an hour.
    #[serde(with = "humantime_serde")]
    pub mx_min_ttl: Duration,
    /// Discoveries (TXT lookup and policy fetch) that lookups may run at
    /// once, over all domains. Past it a lookup of an unknown domain answers
    /// "no policy" at once and starts none, so a flood of distinct keys
    /// cannot pile up DNS and HTTPS work.
    pub max_discoveries: usize,
    /// Background DANE lookups (DNSSEC MX and TLSA of one domain) running
    /// at once, over all domains. The socketmap never waits for them; past
    /// the cap a lookup keeps its MTA-STS answer and a later one tries.
    pub max_dane_lookups: usize,
}

/// `cache.max_dane_lookups` when the configuration does not say. Defined
/// here, where every layer can read it, rather than in `dane`, which the
/// configuration must not import.
pub const DEFAULT_MAX_DANE_LOOKUPS: usize = 64;

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            persistent: true,
            memory_entries: 10_000,
            first_lookup_deadline: Duration::from_secs(5),
            recheck_interval: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(86_400),
            sweep_interval: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(600),
            failure_backoff_min: Duration::from_secs(60),
            failure_backoff_max: Duration::from_secs(3600),
            mx_min_ttl: Duration::from_secs(30),
            max_discoveries: 64,
            max_dane_lookups: DEFAULT_MAX_DANE_LOOKUPS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketmapConfig {
    /// `IP:port` for TCP (IPv4 or `[IPv6]:port`) or `unix:/path` for a unix
    /// socket. Empty disables the socketmap server.
    pub listen: Vec<String>,
    /// Owner, group (names or numbers) and octal mode of unix sockets.
    pub unix_owner: Option<String>,
    pub unix_group: Option<String>,
    pub unix_mode: String,
    pub max_connections: usize,
    /// Close a connection that sends nothing for this long. Postfix itself
    /// drops idle socketmap connections after 10 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest time from the first byte of a request to its last. Unlike the
    /// idle timeout it is never pushed back, so a client that trickles bytes
    /// cannot hold a connection; Postfix sends a whole request at once.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Maps by name (`socketmap:inet:127.0.0.1:8461:NAME` in Postfix).
    pub maps: BTreeMap<String, MapConfig>,
    /// The Postfix that asks: `auto` (read the local one's version with
    /// `postconf -dh mail_version` at start) or its version, e.g.
    /// `3.7.11`, for a Postfix on another host. Picks how every map holds
    /// MX hosts to the policy (see `socketmap::postfix_version`).
    pub postfix_version: String,
    /// How `auto` runs `postconf` (add `-c DIR` for another instance, or a
    /// chroot/container wrapper).
    pub postconf_command: Vec<String>,
}

impl Default for SocketmapConfig {
    fn default() -> Self {
        let mut maps = BTreeMap::new();
        maps.insert("postfix".to_string(), MapConfig::default());
        SocketmapConfig {
            listen: vec!["127.0.0.1:8461".to_string()],
            unix_owner: None,
            unix_group: None,
            unix_mode: "0666".to_string(),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            maps,
            postfix_version: "auto".to_string(),
            postconf_command: vec!["postconf".to_string()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    /// Answer `testing` policies as if they were `enforce`.
    pub testing_as_enforce: bool,
    /// Append `servername=hostname` (needs Postfix 3.4 or later).
    pub servername: bool,
    /// Answer `match=` with the domain's current MX hosts that the policy
    /// admits, instead of the policy's patterns. Postfix reads a pattern
    /// `.example.net` as "any depth"; RFC 8461's `*.example.net` is exactly
    /// one label, and this holds Postfix to it on every version.
    pub match_current_mx: bool,
    /// Postfix >= 3.10 only: append Postfix's TLSRPT attributes
    /// (`policy_type=sts policy_domain=… mx_host_pattern=…
    /// { policy_string = … }`, Postfix's TLSRPT_README) to enforce replies,
    /// so that a Postfix built with TLSRPT support reports on MTA-STS
    /// deliveries. Off by default: Postfix before 3.10 rejects these
    /// attributes as invalid and defers the mail.
    pub tlsrpt: bool,
    /// What an enforce domain whose MX hosts have DNSSEC-authenticated,
    /// usable TLSA records is answered (RFC 8461 §2: DANE takes
    /// precedence): `dane-only` (default), `dane`, `notfound` (leave it to
    /// Postfix's own DANE) or `off` (always the MTA-STS answer).
    pub dane: DaneReply,
}

/// See [`MapConfig::dane`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaneReply {
    #[default]
    DaneOnly,
    Dane,
    Notfound,
    Off,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            testing_as_enforce: false,
            servername: true,
            match_current_mx: false,
            tlsrpt: false,
            dane: DaneReply::DaneOnly,
        }
    }
}

/// A listener address from `socketmap.listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A configuration error, worded so that the admin knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}\n(see the Configuration section of the README for every key and its default)")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key} = {value:?}: {problem}")]
    Invalid {
        key: String,
        value: String,
        problem: String,
    },
}

fn invalid(key: &str, value: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.into(),
        problem: problem.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses, modes, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addrs()?;
        self.nameservers()?;
        self.unix_mode()?;
        if self.dns.attempts == 0 {
            return Err(invalid("dns.attempts", "0", "must be at least 1"));
        }
        if self.socketmap.max_connections == 0 {
            return Err(invalid(
                "socketmap.max_connections",
                "0",
                "must be at least 1",
            ));
        }
        if self.cache.max_discoveries == 0 {
            return Err(invalid(
                "cache.max_discoveries",
                "0",
                "must be at least 1 (0 would never discover a policy)",
            ));
        }
        if self.cache.max_dane_lookups == 0 {
            return Err(invalid(
                "cache.max_dane_lookups",
                "0",
                "must be at least 1 (0 would never learn a domain's DANE status)",
            ));
        }
        if self.socketmap.request_timeout.is_zero() {
            return Err(invalid(
                "socketmap.request_timeout",
                "0s",
                "must be more than 0 (it cuts off every request)",
            ));
        }
        if self.socketmap.maps.is_empty() {
            return Err(invalid(
                "socketmap.maps",
                "{}",
                "define at least one map, e.g. [socketmap.maps.postfix]",
            ));
        }
        for name in self.socketmap.maps.keys() {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                return Err(invalid(
                    "socketmap.maps",
                    name.as_str(),
                    "a map name may not be empty or contain spaces or ':'",
                ));
            }
        }
        if self.cache.failure_backoff_min > self.cache.failure_backoff_max {
            return Err(invalid(
                "cache.failure_backoff_min",
                humantime::format_duration(self.cache.failure_backoff_min).to_string(),
                "must not be longer than cache.failure_backoff_max",
            ));
        }
        self.override_policies()?;
        if self.redis.url.is_some() && self.redis.lock_ttl <= self.fetch.timeout {
            return Err(invalid(
                "redis.lock_ttl",
                humantime::format_duration(self.redis.lock_ttl).to_string(),
                "must be longer than fetch.timeout, or two agents may fetch at once",
            ));
        }
        self.relay_networks()?;
        self.relay_checks()?;
        if self.cache.memory_entries == 0 {
            return Err(invalid("cache.memory_entries", "0", "must be at least 1"));
        }
        Ok(())
    }

    /// The overrides as policies, keyed by normalised domain.
    pub fn relay_networks(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.relay
            .allowed_networks
            .iter()
            .map(|s| {
                IpNet::parse(s).ok_or_else(|| {
                    invalid(
                        "relay.allowed_networks",
                        s.as_str(),
                        "expected an address or CIDR network, e.g. \"127.0.0.0/8\" or \"::1/128\"",
                    )
                })
            })
            .collect()
    }

    fn relay_checks(&self) -> Result<(), ConfigError> {
        let r = &self.relay;
        for (key, value) in [
            ("relay.max_connections", r.max_connections),
            (
                "relay.max_connections_per_client",
                r.max_connections_per_client,
            ),
            ("relay.auth_max_failures", r.auth_max_failures as usize),
            ("relay.auth_max_parallel", r.auth_max_parallel),
            ("relay.max_recipients", r.max_recipients),
            ("relay.max_commands", r.max_commands),
            ("relay.max_deliveries", r.max_deliveries),
            ("relay.max_mx_hosts", r.max_mx_hosts),
            ("relay.max_addresses_per_host", r.max_addresses_per_host),
        ] {
            if value == 0 {
                return Err(invalid(key, "0", "must be at least 1"));
            }
        }
        // A message the relay accepts must load back after a restart: its
        // envelope and delivery state have read limits (issue 12 item 2).
        let storable = crate::limits::MAX_STORABLE_RECIPIENTS;
        if r.max_recipients > storable {
            return Err(invalid(
                "relay.max_recipients",
                r.max_recipients.to_string(),
                format!(
                    "at most {storable}: the queue stores an envelope of up to {} octets and a delivery state of up to {} octets per message",
                    crate::limits::MAX_ENVELOPE,
                    crate::limits::MAX_STATE
                ),
            ));
        }
        if r.max_message_size < 1024 {
            return Err(invalid(
                "relay.max_message_size",
                r.max_message_size.to_string(),
                "must be at least 1024 bytes",
            ));
        }
        if r.retry_schedule.is_empty() || r.retry_schedule.iter().any(|d| d.is_zero()) {
            return Err(invalid(
                "relay.retry_schedule",
                format!("{:?}", r.retry_schedule),
                "give at least one wait, none of them zero, e.g. [\"1m\", \"5m\", \"30m\"]",
            ));
        }
        for (key, value) in [
            ("relay.command_timeout", r.command_timeout),
            ("relay.data_deadline", r.data_deadline),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "0s", "must be at least 1s"));
            }
        }
        if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
            return Err(invalid(
                "relay.tls_cert_file",
                format!("{:?}", r.tls_cert_file),
                "set both relay.tls_cert_file and relay.tls_key_file, or neither",
            ));
        }
        if r.auth_users_file.is_some() && r.tls_cert_file.is_none() {
            return Err(invalid(
                "relay.auth_users_file",
                format!("{:?}", r.auth_users_file),
                "AUTH is offered only over TLS: set relay.tls_cert_file and relay.tls_key_file too",
            ));
        }
        if r.tlsrpt.flush_interval.is_zero() {
            return Err(invalid(
                "relay.tlsrpt.flush_interval",
                "0s",
                "must be at least 1s",
            ));
        }
        if r.tlsrpt.send_delay >= Duration::from_secs(86_400) {
            return Err(invalid(
                "relay.tlsrpt.send_delay",
                humantime::format_duration(r.tlsrpt.send_delay).to_string(),
                "must be less than a day",
            ));
        }
        if r.tlsrpt.dkim_key_file.is_some() != r.tlsrpt.dkim_selector.is_some() {
            return Err(invalid(
                "relay.tlsrpt.dkim_key_file",
                format!("{:?}", r.tlsrpt.dkim_key_file),
                "set both relay.tlsrpt.dkim_key_file and relay.tlsrpt.dkim_selector, or neither",
            ));
        }
        if r.tlsrpt.dkim_domain.is_some() && r.tlsrpt.dkim_key_file.is_none() {
            return Err(invalid(
                "relay.tlsrpt.dkim_domain",
                format!("{:?}", r.tlsrpt.dkim_domain),
                "only used with relay.tlsrpt.dkim_key_file and relay.tlsrpt.dkim_selector",
            ));
        }
        if let Some(d) = &r.tlsrpt.dkim_domain {
            normalize_domain(d).map_err(|e| {
                invalid(
                    "relay.tlsrpt.dkim_domain",
                    d.as_str(),
                    format!("not a domain name: {e}"),
                )
            })?;
        }
        if let Some(h) = &r.hostname {
            normalize_domain(h).map_err(|e| {
                invalid(
                    "relay.hostname",
                    h.as_str(),
                    format!("not a host name: {e}"),
                )
            })?;
        }
        Ok(())
    }

    pub fn override_policies(&self) -> Result<BTreeMap<String, (Policy, String)>, ConfigError> {
        let mut out = BTreeMap::new();
        for (domain, o) in &self.overrides {
            let key = format!("overrides.\"{domain}\"");
            let norm = normalize_domain(domain)
                .map_err(|e| invalid(&key, domain.as_str(), format!("not a domain name: {e}")))?;
            if o.reason.trim().is_empty() {
                return Err(invalid(
                    &format!("{key}.reason"),
                    "",
                    "say why the override exists; it is logged when applied",
                ));
            }
            let mut mx = Vec::new();
            for m in &o.mx {
                let p = MxPattern::parse(m)
                    .map_err(|e| invalid(&format!("{key}.mx"), m.as_str(), e.to_string()))?;
                if !mx.contains(&p) {
                    mx.push(p);
                }
            }
            if o.mode != Mode::None && mx.is_empty() {
                return Err(invalid(
                    &format!("{key}.mx"),
                    "[]",
                    format!("mode {} needs at least one mx pattern", o.mode),
                ));
            }
            let policy = Policy {
                mode: o.mode,
                max_age: MAX_AGE_LIMIT,
                mx,
            };
            if out
                .insert(norm.clone(), (policy, o.reason.clone()))
                .is_some()
            {
                return Err(invalid(
                    &key,
                    domain.as_str(),
                    format!("{norm} has two overrides"),
                ));
            }
        }
        Ok(out)
    }

    pub fn listen_addrs(&self) -> Result<Vec<ListenAddr>, ConfigError> {
        self.socketmap
            .listen
            .iter()
            .map(|s| {
                if let Some(path) = s.strip_prefix("unix:") {
                    if path.is_empty() {
                        return Err(invalid("socketmap.listen", s.as_str(), "unix: needs a path"));
                    }
                    Ok(ListenAddr::Unix(PathBuf::from(path)))
                } else {
                    s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
                        invalid(
                            "socketmap.listen",
                            s.as_str(),
                            "expected IP:port (e.g. \"127.0.0.1:8461\", \"[::1]:8461\") or unix:/path",
                        )
                    })
                }
            })
            .collect()
    }

    pub fn nameservers(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.dns
            .nameservers
            .iter()
            .map(|s| {
                if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                    return Ok(SocketAddr::new(ip, 53));
                }
                s.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "dns.nameservers",
                        s.as_str(),
                        "expected an IP address or IP:port, e.g. \"127.0.0.1\" or \"[::1]:53\"",
                    )
                })
            })
            .collect()
    }

    pub fn unix_mode(&self) -> Result<u32, ConfigError> {
        let m = &self.socketmap.unix_mode;
        u32::from_str_radix(m, 8)
            .ok()
            .filter(|v| *v <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "socketmap.unix_mode",
                    m.as_str(),
                    "expected octal like \"0660\"",
                )
            })
    }

    /// The state directory this process will use (see `state_dir`).
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if let Ok(dirs) = std::env::var("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated; the first is ours.
            if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
                return PathBuf::from(first);
            }
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/mta-sts-agent");
        }
        if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("mta-sts-agent");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/state/mta-sts-agent");
        }
        PathBuf::from("mta-sts-agent-state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.listen_addrs().unwrap(),
            vec![ListenAddr::Tcp("127.0.0.1:8461".parse().unwrap())]
        );
        assert!(c.cache.persistent);
        assert!(c.socketmap.maps.contains_key("postfix"));
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
state_dir = "/tmp/x"
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
timeout = "2s"
[fetch]
port = 8443
ca_file = "/tmp/ca.pem"
[cache]
recheck_interval = "5m"
[socketmap]
listen = ["[::1]:8461", "unix:/run/mta-sts.sock"]
unix_mode = "0660"
[socketmap.maps.strict]
testing_as_enforce = true
servername = false
"#,
        )
        .unwrap();
        assert_eq!(c.nameservers().unwrap()[1], "[::1]:53".parse().unwrap());
        assert_eq!(c.cache.recheck_interval, Duration::from_secs(300));
        assert_eq!(c.unix_mode().unwrap(), 0o660);
        assert!(c.socketmap.maps["strict"].testing_as_enforce);
        assert!(!c.socketmap.maps.contains_key("postfix"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("[cache]\nrecheck_intervall = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/test.toml"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("recheck_intervall"), "{e}");
        assert!(
            e.contains("recheck_interval"),
            "suggests the right key: {e}"
        );
    }

    #[test]
    fn bad_values_say_what_to_write() {
        let e = parse("[socketmap]\nlisten = [\"localhost\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("socketmap.listen") && e.contains("IP:port"),
            "{e}"
        );
        let e = parse("[dns]\nnameservers = [\"dns.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns.nameservers"), "{e}");
        let e = parse("[dns]\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("[socketmap]\nunix_mode = \"rw\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("octal"), "{e}");
        let e = parse("[cache]\nfailure_backoff_min = \"2h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("failure_backoff_max"), "{e}");
    }

    #[test]
    fn overrides_are_validated() {
        let c = parse(
            "[overrides.\"Broken.Test\"]\nmode = \"none\"\nreason = \"cert expired, ticket 42\"\n\n[overrides.\"pinned.test\"]\nmode = \"enforce\"\nmx = [\"*.pinned.test\"]\nreason = \"pinned\"\n",
        )
        .unwrap();
        let o = c.override_policies().unwrap();
        assert_eq!(o["broken.test"].0.mode, Mode::None);
        assert!(o["pinned.test"].0.allows_mx("mx.pinned.test"));
        let e = parse("[overrides.\"a.test\"]\nmode = \"enforce\"\nreason = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overrides.\"a.test\".mx"), "{e}");
        let e = parse("[overrides.\"a.test\"]\nmode = \"none\"\nreason = \" \"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reason"), "{e}");
        let e = parse(
            "[overrides.\"a.test\"]\nmode = \"enforce\"\nmx = [\"1.2.3.4\"]\nreason = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("1.2.3.4"), "{e}");
        let e = parse("[overrides.\"a.test\"]\nmode = \"strict\"\nreason = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn relay_dsn_and_requiretls_keys() {
        let d = RelayConfig::default();
        assert_eq!(d.delay_warning_after, Duration::from_secs(4 * 3600));
        assert!(d.honour_tls_required_no);
        let c = parse("[relay]\ndelay_warning_after = \"0s\"\nhonour_tls_required_no = false\n")
            .unwrap();
        assert_eq!(c.relay.delay_warning_after, Duration::ZERO);
        assert!(!c.relay.honour_tls_required_no);
    }

    /// Issue 12 item 2: more recipients than a queued message can hold
    /// (and still be read back after a restart) is a config error.
    #[test]
    fn max_recipients_is_bounded_by_what_the_spool_stores() {
        let max = crate::limits::MAX_STORABLE_RECIPIENTS;
        assert!(parse(&format!("[relay]\nmax_recipients = {max}\n")).is_ok());
        let e = parse(&format!("[relay]\nmax_recipients = {}\n", max + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.max_recipients"), "{e}");
        assert!(e.contains(&format!("at most {max}")), "{e}");
        assert!(e.contains("1048576 octets"), "{e}");
        assert!(parse("[relay]\nmax_recipients = 100000\n").is_err());
    }

    #[test]
    fn state_dir_explicit_wins() {
        let c = parse("state_dir = \"/srv/sts\"\n").unwrap();
        assert_eq!(c.state_dir(), PathBuf::from("/srv/sts"));
    }

    #[test]
    fn ip_networks_parse_and_contain() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let net = |s: &str| IpNet::parse(s).unwrap_or_else(|| panic!("{s}"));
        assert!(net("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        // Host bits in the network are ignored, as before.
        assert!(net(" 10.1.2.3 / 8 ").contains(ip("10.9.9.9")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        // A dual-stack socket's IPv4-mapped peer is the IPv4 address.
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("::/0").contains(ip("::ffff:127.0.0.1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(IpNet::parse(bad), None, "{bad}");
        }
    }
}
