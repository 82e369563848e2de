//! What `mta-sts-agent setup postfix` would change in a Postfix's main.cf,
//! and why: pure, from what `postconf` printed and the agent's own
//! configuration to a list of changes (or a polite refusal). The commands
//! that gather the input and apply the result are in `setup::postfix`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Config, DaneReply, ListenAddr};
use crate::socketmap::postfix_version::{self, PostfixVersion, ReplyStyle};

/// The oldest Postfix this tool configures: `servername=` (which the
/// agent's answers carry) exists from 3.4, and the live tests cover 3.7 to
/// 3.11. Older ones are configured by hand (README, Postfix section).
pub const MIN_VERSION: PostfixVersion = PostfixVersion(3, 4, 0);

/// Where TLS-RPT attributes are understood at all.
const TLSRPT_VERSION: PostfixVersion = PostfixVersion(3, 10, 0);

/// Debian's (and most distributions') bundle of the system's trusted CAs,
/// from the ca-certificates package.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The main.cf parameters read with `postconf NAME…` (a Postfix without
/// TLSRPT support leaves the `smtp_tlsrpt_*` ones out, with a warning).
pub const PARAMS: &[&str] = &[
    "smtp_tls_policy_maps",
    "smtp_tls_security_level",
    "smtp_tls_CAfile",
    "smtp_tls_CApath",
    "smtp_dns_support_level",
    "smtp_tlsrpt_enable",
    "smtp_tlsrpt_socket_name",
    "queue_directory",
];

/// The master.cf fields read with `postconf -F`: both services that run
/// the smtp(8) client in a stock master.cf.
pub const CHROOT_FIELDS: &[&str] = &["smtp/unix/chroot", "relay/unix/chroot"];

/// What was found out about the Postfix to configure.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `postconf -dh mail_version`, as printed.
    pub mail_version: String,
    /// `postconf PARAMS…` (see [`parse_postconf`]).
    pub params: BTreeMap<String, String>,
    /// `postconf -F CHROOT_FIELDS…`.
    pub master: BTreeMap<String, String>,
    /// Whether [`SYSTEM_CA_FILE`] is readable where Postfix runs.
    pub system_ca_readable: bool,
}

/// What the agent's configuration says Postfix must use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSide {
    /// A TCP listener Postfix can connect to (a wildcard bind address is
    /// reached on loopback).
    pub tcp: Option<SocketAddr>,
    /// A unix listener, when there is no TCP one.
    pub unix: Option<String>,
    /// The map whose answers Postfix gets.
    pub map: String,
    /// Whether that map may answer `dane-only`/`dane`, or leaves DANE to
    /// Postfix (`notfound`): all of them need DNSSEC lookups in Postfix.
    pub dane: bool,
    /// `socketmap.postfix_version` as configured.
    pub postfix_version: String,
}

impl AgentSide {
    pub fn from_config(config: &Config) -> Result<AgentSide, String> {
        let addrs = config.listen_addrs().map_err(|e| e.to_string())?;
        let tcp = addrs.iter().find_map(|a| match a {
            ListenAddr::Tcp(s) => Some(reachable(*s)),
            ListenAddr::Unix(_) => None,
        });
        let unix = addrs.iter().find_map(|a| match a {
            ListenAddr::Unix(p) => Some(p.display().to_string()),
            ListenAddr::Tcp(_) => None,
        });
        // Postfix's documented table name is "postfix" (the default map);
        // with other maps only, the first one.
        let map = if config.socketmap.maps.contains_key("postfix") {
            "postfix".to_string()
        } else {
            config
                .socketmap
                .maps
                .keys()
                .next()
                .cloned()
                .ok_or("the agent's configuration defines no socketmap map")?
        };
        let dane = config.socketmap.maps[&map].dane != DaneReply::Off;
        Ok(AgentSide {
            tcp,
            unix,
            map,
            dane,
            postfix_version: config.socketmap.postfix_version.clone(),
        })
    }
}

/// A wildcard bind address is reached on the loopback address of its family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// One main.cf setting to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub param: String,
    pub old: String,
    pub new: String,
    pub why: String,
}

/// What to do: the changes (none: the Postfix is set up), the lookup
/// table to verify with, and notes that change nothing.
#[derive(Debug, Clone)]
pub struct Plan {
    pub version: PostfixVersion,
    pub chrooted: bool,
    pub table: String,
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
}

/// Why this tool will not touch the Postfix, and what the admin can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub advice: Vec<String>,
}

/// Reads `name = value` lines as `postconf` prints them (an empty value is
/// printed as `name =`). Other lines are ignored.
pub fn parse_postconf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let name = name.trim();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/');
            valid.then(|| (name.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The Postfix lookup table naming the agent's listener and map.
pub fn table(agent: &AgentSide) -> Option<String> {
    if let Some(addr) = agent.tcp {
        return Some(match addr {
            SocketAddr::V4(a) => format!("socketmap:inet:{}:{}:{}", a.ip(), a.port(), agent.map),
            SocketAddr::V6(a) => format!("socketmap:inet:[{}]:{}:{}", a.ip(), a.port(), agent.map),
        });
    }
    agent
        .unix
        .as_ref()
        .map(|p| format!("socketmap:unix:{p}:{}", agent.map))
}

/// Postfix separates the tables of a list by commas and/or whitespace.
fn tables_of(value: &str) -> Vec<&str> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect()
}

fn param<'a>(obs: &'a Observed, name: &str) -> &'a str {
    obs.params.get(name).map(String::as_str).unwrap_or("")
}

/// A master.cf chroot field: `y`, or `-`/unset, which is "no" since
/// Postfix 3.0.
fn chrooted(obs: &Observed) -> bool {
    CHROOT_FIELDS
        .iter()
        .any(|f| obs.master.get(*f).is_some_and(|v| v == "y"))
}

/// The changes that make this Postfix ask the agent and enforce its
/// answers, or why not.
pub fn plan(obs: &Observed, agent: &AgentSide) -> Result<Plan, Refusal> {
    let version = PostfixVersion::parse(&obs.mail_version).ok_or_else(|| Refusal {
        reason: format!(
            "cannot read this Postfix's version: `postconf -dh mail_version` printed {:?}",
            obs.mail_version.chars().take(80).collect::<String>()
        ),
        advice: vec![
            "Check that the postconf run is the Postfix you mean (see --wrap and --postfix-config).".into(),
            "Or configure it by hand as the README's Postfix section describes.".into(),
        ],
    })?;
    if version < MIN_VERSION {
        return Err(Refusal {
            reason: format!("Postfix {version} is older than {MIN_VERSION}, the oldest this tool sets up"),
            advice: vec![
                "Upgrade Postfix, or configure it by hand as the README's Postfix section describes".into(),
                "(with `servername = false` on the map: Postfix before 3.4 refuses servername=).".into(),
            ],
        });
    }
    let chrooted = chrooted(obs);
    // A chrooted smtp(8) sees only the queue directory, and names a socket
    // there relative to it (contrib/postfix/README.md).
    let queue = param(obs, "queue_directory").trim_end_matches('/');
    let in_chroot = agent.unix.as_deref().and_then(|p| {
        p.strip_prefix(queue)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|rest| !queue.is_empty() && !rest.is_empty())
    });
    if chrooted && agent.tcp.is_none() && in_chroot.is_none() {
        return Err(Refusal {
            reason: format!(
                "smtp runs chrooted (master.cf), and the agent listens only on the unix socket {}, which the chrooted smtp(8) client cannot reach",
                agent.unix.as_deref().unwrap_or("(none)")
            ),
            advice: vec![
                "Add a TCP listener to the agent's config, e.g. socketmap.listen = [\"127.0.0.1:8461\"], restart it and run this again.".into(),
                format!("Or put the socket inside the chroot, e.g. socketmap.listen = [\"unix:{queue}/private/mta-sts\"] with unix_group = \"postfix\" and unix_mode = \"0660\"."),
            ],
        });
    }
    let relative = match (chrooted, agent.tcp, in_chroot) {
        (true, None, Some(rest)) => Some(format!("socketmap:unix:{rest}:{}", agent.map)),
        _ => None,
    };
    let table = relative.or_else(|| table(agent)).ok_or_else(|| Refusal {
        reason: "the agent's configuration has no socketmap listener (socketmap.listen is empty)"
            .into(),
        advice: vec![
            "Set socketmap.listen = [\"127.0.0.1:8461\"] in the agent's config and run this again."
                .into(),
        ],
    })?;
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let mut change = |param: &str, old: &str, new: &str, why: String| {
        changes.push(Change {
            param: param.into(),
            old: old.into(),
            new: new.into(),
            why,
        })
    };

    let maps = param(obs, "smtp_tls_policy_maps");
    if maps.is_empty() {
        change(
            "smtp_tls_policy_maps",
            maps,
            &table,
            format!("Postfix asks the agent for each destination's MTA-STS policy (RFC 8461 §5); listener and map `{}` from the agent's config", agent.map),
        );
    } else if !tables_of(maps).contains(&table.as_str()) {
        // The admin's own tables come first: Postfix uses the first table
        // that answers, and their explicit entries are deliberate.
        return Err(Refusal {
            reason: format!("smtp_tls_policy_maps is already set to `{maps}`, which this tool did not write; it is never overwritten"),
            advice: vec![
                "To keep your tables and add the agent's (yours first, so that their entries win), run:".into(),
                format!("    postconf -e 'smtp_tls_policy_maps = {maps}, {table}'"),
                "then run this again.".into(),
            ],
        });
    }

    let level = param(obs, "smtp_tls_security_level");
    if level.is_empty() || level == "none" {
        change(
            "smtp_tls_security_level",
            level,
            "may",
            "destinations without an MTA-STS policy then still get TLS when their MX offers it, instead of plaintext (the agent answers only for enforce domains)".into(),
        );
    }

    let ca_file = param(obs, "smtp_tls_CAfile");
    let ca_path = param(obs, "smtp_tls_CApath");
    if ca_file.is_empty() {
        let why = if !ca_path.is_empty() && chrooted {
            Some(format!("smtp runs chrooted (master.cf) and reads smtp_tls_CApath = {ca_path} from inside the chroot, where it is missing, so every `secure` certificate check would fail; smtp_tls_CAfile is loaded before the chroot (postconf(5))"))
        } else if ca_path.is_empty() {
            Some("`secure` answers need trusted CAs to check MX certificates (RFC 8461 §4.2: valid for WebPKI), and none are configured".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            if !obs.system_ca_readable {
                return Err(Refusal {
                    reason: format!("{why}, and the system CA bundle {SYSTEM_CA_FILE} is not readable"),
                    advice: vec![
                        "Install the ca-certificates package (apt-get install ca-certificates), or set smtp_tls_CAfile to your CA bundle, and run this again.".into(),
                    ],
                });
            }
            change("smtp_tls_CAfile", ca_file, SYSTEM_CA_FILE, why);
        }
    }

    let dns = param(obs, "smtp_dns_support_level");
    if agent.dane && dns != "dnssec" {
        if dns == "disabled" {
            return Err(Refusal {
                reason: "smtp_dns_support_level = disabled: Postfix looks up no MX records, so neither MTA-STS nor DANE can apply".into(),
                advice: vec!["Set smtp_dns_support_level = dnssec (or remove it), then run this again.".into()],
            });
        }
        change(
            "smtp_dns_support_level",
            dns,
            "dnssec",
            format!("the agent answers `dane-only` where an enforce domain's MX hosts have DNSSEC-valid TLSA records (RFC 8461 §2: DANE takes precedence); without DNSSEC lookups Postfix finds no TLSA record and defers that mail (map `{}`: dane)", agent.map),
        );
        notes.push("DANE needs a validating resolver (Unbound, BIND) in /etc/resolv.conf, for Postfix and the agent alike: see the README, \"DANE takes precedence\"".into());
    }

    if version >= TLSRPT_VERSION {
        match obs.params.get("smtp_tlsrpt_enable").map(String::as_str) {
            None => notes.push(format!("TLS-RPT: Postfix {version} here is built without TLSRPT support (no smtp_tlsrpt_enable); nothing to set")),
            Some("yes") if param(obs, "smtp_tlsrpt_socket_name").is_empty() => notes.push(
                "TLS-RPT: smtp_tlsrpt_enable = yes but smtp_tlsrpt_socket_name is empty: set it to your collector's socket (contrib/postfix/tlsrpt.md)".into(),
            ),
            Some("yes") => {}
            Some(_) => notes.push(format!("TLS-RPT: Postfix {version} can report on MTA-STS deliveries; not switched on, since it needs a running collector: see contrib/postfix/tlsrpt.md (smtp_tlsrpt_enable, smtp_tlsrpt_socket_name)")),
        }
    }

    let setting = agent.postfix_version.trim();
    if setting == postfix_version::AS_CONFIGURED {
        notes.push("the agent's socketmap.postfix_version = \"as-configured\": its answers follow the map options only, which may let Postfix accept MX hosts more than one label under a policy's wildcard".into());
    } else if let Some(v) = PostfixVersion::parse(setting).filter(|v| *v != version) {
        notes.push(format!("the agent's socketmap.postfix_version = \"{v}\", but this Postfix is {version}: set it to \"{version}\" (or \"auto\")"));
    } else {
        let how = match postfix_version::style_for(Some(version)) {
            ReplyStyle::StsAttributes => {
                "the STS attributes: Postfix itself never connects to an MX host outside the policy"
            }
            ReplyStyle::CurrentMx => "match= with the current MX hosts the policy admits",
        };
        notes.push(format!("the agent answers Postfix {version} with {how}"));
    }

    Ok(Plan {
        version,
        chrooted,
        table,
        changes,
        notes,
    })
}

/// Applies `changes` to `obs` as `postconf -e` would: what the next run
/// finds.
pub fn applied(obs: &Observed, changes: &[Change]) -> Observed {
    let mut next = obs.clone();
    for c in changes {
        next.params.insert(c.param.clone(), c.new.clone());
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentSide {
        AgentSide::from_config(&Config::default()).unwrap()
    }

    /// Debian 12's stock main.cf (main.cf.debian): no TLS settings, and
    /// master.cf with a chrooted smtp.
    fn stock(version: &str) -> Observed {
        let printed = "smtp_tls_policy_maps =\nsmtp_tls_security_level =\nsmtp_tls_CAfile =\nsmtp_tls_CApath =\nsmtp_dns_support_level =\n";
        Observed {
            mail_version: version.into(),
            params: parse_postconf(printed),
            master: parse_postconf("smtp/unix/chroot = y\nrelay/unix/chroot = y\n"),
            system_ca_readable: true,
        }
    }

    fn params(plan: &Plan) -> Vec<(&str, &str)> {
        plan.changes
            .iter()
            .map(|c| (c.param.as_str(), c.new.as_str()))
            .collect()
    }

    #[test]
    fn the_agent_side_comes_from_its_config() {
        let a = agent();
        assert_eq!(table(&a).unwrap(), "socketmap:inet:127.0.0.1:8461:postfix");
        assert!(a.dane);
        let mut c = Config::default();
        c.socketmap.listen = vec!["0.0.0.0:9000".into(), "unix:/run/m.sock".into()];
        c.socketmap.maps.clear();
        c.socketmap.maps.insert(
            "sts".into(),
            crate::config::MapConfig {
                dane: DaneReply::Off,
                ..Default::default()
            },
        );
        let a = AgentSide::from_config(&c).unwrap();
        assert_eq!(table(&a).unwrap(), "socketmap:inet:127.0.0.1:9000:sts");
        assert!(!a.dane);
        c.socketmap.listen = vec!["[::]:8461".into()];
        let a = AgentSide::from_config(&c).unwrap();
        assert_eq!(table(&a).unwrap(), "socketmap:inet:[::1]:8461:sts");
        c.socketmap.listen = vec!["unix:/run/m.sock".into()];
        let a = AgentSide::from_config(&c).unwrap();
        assert_eq!(table(&a).unwrap(), "socketmap:unix:/run/m.sock:sts");
    }

    #[test]
    fn a_stock_debian_postfix_gets_every_setting_then_nothing() {
        for version in ["3.7.11", "3.10.13", "3.11.7"] {
            let obs = stock(version);
            let p = plan(&obs, &agent()).unwrap();
            assert!(p.chrooted);
            assert_eq!(
                params(&p),
                [
                    (
                        "smtp_tls_policy_maps",
                        "socketmap:inet:127.0.0.1:8461:postfix"
                    ),
                    ("smtp_tls_security_level", "may"),
                    ("smtp_tls_CAfile", SYSTEM_CA_FILE),
                    ("smtp_dns_support_level", "dnssec"),
                ],
                "{version}"
            );
            assert!(p.changes.iter().all(|c| !c.why.is_empty()));
            let again = plan(&applied(&obs, &p.changes), &agent()).unwrap();
            assert!(again.changes.is_empty(), "{version}: {:?}", again.changes);
        }
    }

    #[test]
    fn a_ca_path_is_enough_only_outside_the_chroot() {
        let mut obs = stock("3.7.11");
        obs.params
            .insert("smtp_tls_CApath".into(), "/etc/ssl/certs".into());
        let p = plan(&obs, &agent()).unwrap();
        let ca = p
            .changes
            .iter()
            .find(|c| c.param == "smtp_tls_CAfile")
            .expect("CAfile for the chroot");
        assert!(ca.why.contains("chroot"), "{}", ca.why);
        obs.master = parse_postconf("smtp/unix/chroot = n\nrelay/unix/chroot = -\n");
        let p = plan(&obs, &agent()).unwrap();
        assert!(!p.chrooted);
        assert!(p.changes.iter().all(|c| c.param != "smtp_tls_CAfile"));
        // An admin's CA file is kept, chroot or not.
        obs.master = parse_postconf("smtp/unix/chroot = y\n");
        obs.params
            .insert("smtp_tls_CAfile".into(), "/etc/postfix/ca.pem".into());
        let p = plan(&obs, &agent()).unwrap();
        assert!(p.changes.iter().all(|c| c.param != "smtp_tls_CAfile"));
    }

    #[test]
    fn no_system_ca_bundle_is_a_refusal() {
        let mut obs = stock("3.7.11");
        obs.system_ca_readable = false;
        let r = plan(&obs, &agent()).unwrap_err();
        assert!(r.reason.contains(SYSTEM_CA_FILE), "{r:?}");
        assert!(r.advice.concat().contains("ca-certificates"));
    }

    #[test]
    fn a_foreign_policy_table_is_never_overwritten() {
        let mut obs = stock("3.10.13");
        obs.params.insert(
            "smtp_tls_policy_maps".into(),
            "hash:/etc/postfix/tls_policy".into(),
        );
        let r = plan(&obs, &agent()).unwrap_err();
        assert!(r.reason.contains("hash:/etc/postfix/tls_policy"), "{r:?}");
        let combined = "hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix";
        assert!(r.advice.concat().contains(combined), "{r:?}");
        // The combined value is then accepted as set up.
        obs.params
            .insert("smtp_tls_policy_maps".into(), combined.into());
        let p = plan(&obs, &agent()).unwrap();
        assert!(p.changes.iter().all(|c| c.param != "smtp_tls_policy_maps"));
    }

    #[test]
    fn versions_it_cannot_read_or_support_are_refused() {
        for bad in [
            "",
            "three",
            "3.x",
            "postconf: fatal: open /etc/postfix/main.cf",
        ] {
            let r = plan(&stock(bad), &agent()).unwrap_err();
            assert!(r.reason.contains("cannot read"), "{bad:?}: {r:?}");
        }
        let r = plan(&stock("3.3.2"), &agent()).unwrap_err();
        assert!(r.reason.contains("older than 3.4.0"), "{r:?}");
        assert!(plan(&stock("3.4.0"), &agent()).is_ok());
    }

    #[test]
    fn a_unix_socket_outside_the_chroot_is_refused() {
        let mut c = Config::default();
        c.socketmap.listen = vec!["unix:/run/mta-sts.sock".into()];
        let a = AgentSide::from_config(&c).unwrap();
        let mut obs = stock("3.7.11");
        obs.params
            .insert("queue_directory".into(), "/var/spool/postfix".into());
        let r = plan(&obs, &a).unwrap_err();
        assert!(r.reason.contains("chroot"), "{r:?}");
        // Inside the queue directory it is reachable, named relative to it.
        c.socketmap.listen = vec!["unix:/var/spool/postfix/private/mta-sts".into()];
        let inside = AgentSide::from_config(&c).unwrap();
        let p = plan(&obs, &inside).unwrap();
        assert_eq!(p.table, "socketmap:unix:private/mta-sts:postfix");
        let mut obs = stock("3.7.11");
        obs.master.clear();
        let p = plan(&obs, &a).unwrap();
        assert_eq!(p.table, "socketmap:unix:/run/mta-sts.sock:postfix");
    }

    #[test]
    fn stricter_settings_of_the_admin_are_kept() {
        let mut obs = stock("3.7.11");
        obs.params
            .insert("smtp_tls_security_level".into(), "dane".into());
        obs.params
            .insert("smtp_dns_support_level".into(), "dnssec".into());
        let p = plan(&obs, &agent()).unwrap();
        assert!(p
            .changes
            .iter()
            .all(|c| c.param != "smtp_tls_security_level" && c.param != "smtp_dns_support_level"));
        obs.params
            .insert("smtp_dns_support_level".into(), "disabled".into());
        assert!(plan(&obs, &agent()).is_err());
    }

    #[test]
    fn tlsrpt_is_only_noted_and_only_from_3_10() {
        let mut obs = stock("3.10.13");
        obs.params.insert("smtp_tlsrpt_enable".into(), "no".into());
        let p = plan(&obs, &agent()).unwrap();
        assert!(p
            .changes
            .iter()
            .all(|c| !c.param.starts_with("smtp_tlsrpt")));
        assert!(
            p.notes.iter().any(|n| n.contains("tlsrpt.md")),
            "{:?}",
            p.notes
        );
        let p = plan(&stock("3.7.11"), &agent()).unwrap();
        assert!(
            p.notes.iter().all(|n| !n.contains("TLS-RPT")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn postconf_output_parses() {
        let m = parse_postconf(
            "smtp_tls_policy_maps = hash:/a, socketmap:inet:127.0.0.1:8461:postfix\nsmtp_tls_CAfile =\nsmtp/unix/chroot = y\npostconf: warning: x: unknown parameter\n",
        );
        assert_eq!(m["smtp_tls_CAfile"], "");
        assert_eq!(m["smtp/unix/chroot"], "y");
        assert_eq!(m.len(), 3, "{m:?}");
    }
}
