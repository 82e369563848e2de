//! Which reply style the Postfix asking us understands, so that every map
//! holds MX hosts to the policy (RFC 8461 §4.1: `*.example.net` is exactly
//! one label) without the administrator knowing an option.
//!
//! Postfix reads our `match=.example.net` as "any depth". Two ways close
//! that, and which one works depends on the version:
//!
//! - Postfix 3.10.5 and later: the STS attributes (`policy_type=sts`,
//!   `mx_host_pattern=…`, the map's `tlsrpt` reply). With
//!   `smtp_tls_enforce_sts_mx_patterns = yes` (its default) Postfix itself
//!   skips MX hosts outside the patterns, one label per `*.`, and never
//!   connects to them; TLS-RPT reporting comes with it. `match=` lists the
//!   admitted current MX hosts too, so that replies without the attributes
//!   (overrides, oversized policies) are exact as well.
//! - Any version: `match=` with the current MX hosts the policy admits
//!   (the map's `match_current_mx`).
//!
//! Postfix before 3.10 refuses the STS attributes and defers every enforce
//! mail ("invalid attribute name"), so a wrong guess costs mail: when the
//! version cannot be read, the style every version accepts is used.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::config::MapConfig;

/// `mail_version` of a Postfix, release numbers only (`3.10.13`,
/// `3.11-20250101` → 3.11.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PostfixVersion(pub u32, pub u32, pub u32);

/// Where `smtp_tls_enforce_sts_mx_patterns` first exists.
pub const STS_MX_PATTERNS: PostfixVersion = PostfixVersion(3, 10, 5);
/// The first Postfix that accepts the STS attributes at all.
pub const STS_ATTRIBUTES_PARSED: PostfixVersion = PostfixVersion(3, 10, 0);
/// The first Postfix that knows `servername=`.
pub const SERVERNAME: PostfixVersion = PostfixVersion(3, 4, 0);

impl PostfixVersion {
    pub fn parse(text: &str) -> Option<PostfixVersion> {
        let text = text.trim();
        let release = text.split(['-', ' ']).next()?;
        let mut parts = release.split('.');
        let mut num = |required: bool| -> Option<u32> {
            match parts.next() {
                Some(p)
                    if !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    p.parse().ok()
                }
                None if !required => Some(0),
                _ => None,
            }
        };
        let v = PostfixVersion(num(true)?, num(true)?, num(false)?);
        parts.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for PostfixVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// How the maps answer, for the log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStyle {
    /// STS attributes: Postfix ≥ 3.10.5 checks the MX hosts itself.
    StsAttributes,
    /// `match=` with the admitted current MX hosts: every version.
    CurrentMx,
}

impl std::fmt::Display for ReplyStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplyStyle::StsAttributes => {
                "STS attributes (policy_type=sts, mx_host_pattern=...) and match= with the current MX hosts the policy admits"
            }
            ReplyStyle::CurrentMx => "match= with the current MX hosts the policy admits",
        })
    }
}

/// The style for a Postfix of this version; unknown → the one every
/// version accepts.
pub fn style_for(version: Option<PostfixVersion>) -> ReplyStyle {
    match version {
        Some(v) if v >= STS_MX_PATTERNS => ReplyStyle::StsAttributes,
        _ => ReplyStyle::CurrentMx,
    }
}

/// The maps as they must answer a Postfix of `version` (None: unknown).
/// Options a known version would refuse are switched off, each with a
/// warning; the MX check is switched on in the style the version supports.
pub fn adapt_maps(
    maps: &BTreeMap<String, MapConfig>,
    version: Option<PostfixVersion>,
) -> BTreeMap<String, MapConfig> {
    let style = style_for(version);
    maps.iter()
        .map(|(name, map)| {
            let mut m = map.clone();
            match style {
                // match= from the current MX hosts as well: overrides and
                // policies too large for the attributes get none, and an
                // administrator may have set
                // smtp_tls_enforce_sts_mx_patterns = no.
                ReplyStyle::StsAttributes => {
                    m.tlsrpt = true;
                    m.match_current_mx = true;
                }
                ReplyStyle::CurrentMx => m.match_current_mx = true,
            }
            if let Some(v) = version {
                if m.tlsrpt && v < STS_ATTRIBUTES_PARSED {
                    tracing::warn!(map = %name, postfix = %v, "tlsrpt = true ignored: Postfix before 3.10 refuses the TLSRPT attributes and would defer every enforce mail");
                    m.tlsrpt = false;
                }
                if m.servername && v < SERVERNAME {
                    tracing::warn!(map = %name, postfix = %v, "servername = true ignored: Postfix before 3.4 refuses servername=");
                    m.servername = false;
                }
            }
            (name.clone(), m)
        })
        .collect()
}

/// Runs `command -dh mail_version` (the local Postfix's `postconf`) and
/// reads the version. Bounded: 4 KiB of output, `deadline` in all.
pub fn detect(command: &[String], deadline: Duration) -> Result<PostfixVersion, String> {
    let (program, args) = command
        .split_first()
        .ok_or("socketmap.postconf_command is empty")?;
    let mut cmd = Command::new(program);
    cmd.args(args).args(["-dh", "mail_version"]);
    let limits = crate::process::Limits {
        deadline,
        stdout_cap: 4096,
        stderr_cap: 1024,
    };
    let out = match crate::process::run(cmd, program, limits) {
        Ok(out) => out,
        Err(crate::process::RunError::Deadline { .. }) => {
            return Err(format!("{program} did not answer within {deadline:?}"))
        }
        Err(e) => return Err(e.to_string()),
    };
    if !out.ok {
        return Err(format!(
            "{program} -dh mail_version failed ({}): {}",
            out.code.map_or("killed".into(), |c| format!("exit {c}")),
            out.stderr.trim()
        ));
    }
    let text = out.stdout;
    PostfixVersion::parse(&text).ok_or_else(|| {
        format!(
            "{program} -dh mail_version printed {:?}, not a version",
            text.chars().take(80).collect::<String>()
        )
    })
}

/// `socketmap.postfix_version` that turns the adaptation off.
pub const AS_CONFIGURED: &str = "as-configured";

/// The version `socketmap.postfix_version` names: `auto` asks the local
/// Postfix; None (with a warning) when that fails.
pub fn configured(setting: &str, postconf: &[String]) -> Result<Option<PostfixVersion>, String> {
    if setting.trim().eq_ignore_ascii_case("auto") {
        return Ok(match detect(postconf, Duration::from_secs(5)) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the local Postfix version (socketmap.postfix_version = \"auto\"); answering in the style every Postfix accepts");
                None
            }
        });
    }
    PostfixVersion::parse(setting).map(Some).ok_or_else(|| {
        format!("socketmap.postfix_version: {setting:?} is not \"auto\", \"{AS_CONFIGURED}\" or a version like \"3.10.13\"")
    })
}

/// The maps the socketmap serves: configured, then adapted to the Postfix
/// asking. Logs which style is used.
pub fn resolve(
    config: &crate::config::SocketmapConfig,
) -> Result<BTreeMap<String, MapConfig>, String> {
    // The administrator's word: no adaptation. With neither match_current_mx
    // nor tlsrpt, Postfix then reads `*.example.net` as any depth.
    if config.postfix_version.trim() == AS_CONFIGURED {
        tracing::info!(
            setting = AS_CONFIGURED,
            "socketmap reply style: each map exactly as configured"
        );
        return Ok(config.maps.clone());
    }
    let version = configured(&config.postfix_version, &config.postconf_command)?;
    let style = style_for(version);
    match version {
        Some(v) => {
            tracing::info!(postfix = %v, setting = %config.postfix_version, style = %style, "socketmap reply style")
        }
        None => tracing::info!(postfix = "unknown", style = %style, "socketmap reply style"),
    }
    Ok(adapt_maps(&config.maps, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(
            PostfixVersion::parse("3.7.11\n"),
            Some(PostfixVersion(3, 7, 11))
        );
        assert_eq!(
            PostfixVersion::parse("3.10.13"),
            Some(PostfixVersion(3, 10, 13))
        );
        assert_eq!(
            PostfixVersion::parse("3.11-20250101"),
            Some(PostfixVersion(3, 11, 0))
        );
        assert_eq!(
            PostfixVersion::parse("3.10"),
            Some(PostfixVersion(3, 10, 0))
        );
        for bad in [
            "",
            "3",
            "x.y",
            "3.10.13.1",
            "3..1",
            "-3.1",
            "3.1a",
            "99999999.1",
        ] {
            assert_eq!(PostfixVersion::parse(bad), None, "{bad:?}");
        }
        assert!(PostfixVersion(3, 10, 13) > PostfixVersion(3, 9, 99));
        assert!(PostfixVersion(3, 10, 4) < STS_MX_PATTERNS);
    }

    #[test]
    fn style_by_version_and_unknown_is_the_safe_one() {
        assert_eq!(
            style_for(Some(PostfixVersion(3, 10, 5))),
            ReplyStyle::StsAttributes
        );
        assert_eq!(
            style_for(Some(PostfixVersion(3, 11, 7))),
            ReplyStyle::StsAttributes
        );
        assert_eq!(
            style_for(Some(PostfixVersion(3, 10, 4))),
            ReplyStyle::CurrentMx
        );
        assert_eq!(
            style_for(Some(PostfixVersion(3, 7, 11))),
            ReplyStyle::CurrentMx
        );
        assert_eq!(style_for(None), ReplyStyle::CurrentMx);
    }

    #[test]
    fn maps_never_get_what_the_version_refuses() {
        let mut maps = BTreeMap::new();
        maps.insert(
            "m".to_string(),
            MapConfig {
                tlsrpt: true,
                ..MapConfig::default()
            },
        );
        let old = adapt_maps(&maps, Some(PostfixVersion(3, 3, 0)));
        assert!(!old["m"].tlsrpt && !old["m"].servername && old["m"].match_current_mx);
        let v37 = adapt_maps(&maps, Some(PostfixVersion(3, 7, 11)));
        assert!(!v37["m"].tlsrpt && v37["m"].servername && v37["m"].match_current_mx);
        // Unknown: the administrator's explicit choice stays.
        let unknown = adapt_maps(&maps, None);
        assert!(unknown["m"].tlsrpt && unknown["m"].match_current_mx);
        let new = adapt_maps(
            &BTreeMap::from([("d".to_string(), MapConfig::default())]),
            Some(PostfixVersion(3, 10, 13)),
        );
        assert!(new["d"].tlsrpt && new["d"].match_current_mx && new["d"].servername);
    }

    #[test]
    fn detect_reads_postconf_and_bounds_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            vec![p.display().to_string()]
        };
        let ok = script("ok", r#"[ "$1 $2" = "-dh mail_version" ] && echo 3.10.13"#);
        assert_eq!(
            detect(&ok, Duration::from_secs(5)),
            Ok(PostfixVersion(3, 10, 13))
        );
        let fails = script("fails", "echo 3.10.13; exit 1");
        assert!(detect(&fails, Duration::from_secs(5)).is_err());
        let junk = script("junk", "head -c 3000 /dev/zero");
        assert!(detect(&junk, Duration::from_secs(5)).is_err());
        let slow = script("slow", "exec sleep 30");
        let t = Instant::now();
        assert!(detect(&slow, Duration::from_millis(300))
            .unwrap_err()
            .contains("did not answer"));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(detect(&["/nonexistent/postconf".into()], Duration::from_secs(1)).is_err());
        assert_eq!(configured("auto", &fails), Ok(None));
        assert_eq!(
            configured("3.7.11", &slow),
            Ok(Some(PostfixVersion(3, 7, 11)))
        );
        assert!(configured("latest", &slow).is_err());
        let mut sm = crate::config::SocketmapConfig {
            postfix_version: AS_CONFIGURED.into(),
            postconf_command: slow.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        assert!(!resolve(&sm).unwrap()["postfix"].match_current_mx);
        assert!(t.elapsed() < Duration::from_secs(1), "postconf was run");
        sm.postfix_version = "3.7.11".into();
        assert!(resolve(&sm).unwrap()["postfix"].match_current_mx);
        sm.postfix_version = "newest".into();
        assert!(resolve(&sm).is_err());
    }
}
