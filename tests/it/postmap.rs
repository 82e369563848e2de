//! Postfix's own socketmap client (`postmap -q`) against our server: proves
//! the wire format and reply syntax are what Postfix's `dict_sockmap` reads,
//! for every Postfix the machine has (3.7, 3.10, 3.11: `support::postfix`).
//! Whether a running Postfix accepts the value is shown with real mail in
//! `postfix_e2e.rs`.
//!
//! `postmap` does not interpret the value; the SMTP client's
//! `tls_policy_lookup_one()` does. [`postfix_policy`] re-implements that
//! parser (Postfix 3.7's, and the TLSRPT-aware one of Postfix >= 3.10) so
//! that the value Postfix received is checked the way Postfix reads it.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use mta_sts_agent::config::MapConfig;

use crate::harness::World;
use crate::socketmap::{config_listening, publish_standard, Server};
use crate::support::postfix::Postfix;

const INSTALL_HINT: &str = "postmap not found; install Postfix: echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix";

const ENFORCE_VALUE: &str = "secure match=mx1.enforce.test:.mx.enforce.test servername=hostname";

/// A Postfix config dir of our own for `postmap -c`, under the world's
/// directory (which each Postfix from a root sees at the same path).
/// main.cf is back-dated: Postfix waits ~1.5 s when main.cf is younger than
/// a second.
fn postfix_dir(world: &World) -> PathBuf {
    let dir = world.dir.path().join("postfix");
    std::fs::create_dir_all(&dir).expect("create the postfix config dir");
    let main_cf = dir.join("main.cf");
    std::fs::write(
        &main_cf,
        "compatibility_level = 3.6\nmyhostname = client.test\nmydomain = test\n",
    )
    .expect("write main.cf");
    std::fs::File::options()
        .write(true)
        .open(&main_cf)
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(3600)))
        .expect("back-date main.cf");
    dir
}

/// A running server with the `postfix` map, a `noname` map
/// (servername = false) and a `tlsrpt` map (tlsrpt = true), plus the
/// Postfix side: every Postfix version the machine has, each asked the
/// same questions, each expected to read the same values.
struct Setup {
    world: World,
    _server: Server,
    postfixes: Vec<Postfix>,
    conf: PathBuf,
    port: u16,
}

impl Setup {
    async fn new() -> Option<Setup> {
        let postfixes = crate::support::postfix::all();
        if postfixes.is_empty() {
            println!("{INSTALL_HINT}");
            return None;
        }
        let world = World::new().await;
        publish_standard(&world);
        let mut config = config_listening(&world, &["127.0.0.1:0"]);
        config.socketmap.maps.insert(
            "noname".to_string(),
            MapConfig {
                testing_as_enforce: false,
                servername: false,
                match_current_mx: false,
                tlsrpt: false,
                dane: Default::default(),
            },
        );
        config.socketmap.maps.insert(
            "tlsrpt".to_string(),
            MapConfig {
                tlsrpt: true,
                dane: Default::default(),
                ..MapConfig::default()
            },
        );
        let server = Server::start(&world, config).await;
        let port = server.addr().port();
        let conf = postfix_dir(&world);
        Some(Setup {
            world,
            _server: server,
            postfixes,
            conf,
            port,
        })
    }

    fn table(&self, map: &str) -> String {
        format!("socketmap:inet:127.0.0.1:{}:{map}", self.port)
    }

    /// `postmap -c DIR -q KEY socketmap:inet:127.0.0.1:PORT:MAP` of `pf`;
    /// with `key` `-`, the keys are read from `stdin`, one a line.
    async fn query_one(&self, pf: &Postfix, key: &str, map: &str, stdin: &str) -> Output {
        let mut cmd = Command::from(pf.command("postmap", &self.conf, None, None));
        let mut child = cmd
            .arg("-c")
            .arg(&self.conf)
            .arg("-q")
            .arg(key)
            .arg(self.table(map))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postmap");
        let mut input = child.stdin.take().expect("postmap stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("feed postmap");
        drop(input);
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{pf}: postmap -q {key} did not finish in 20 s"))
            .expect("collect postmap output")
    }

    /// [`Setup::query_one`] on every Postfix; the outputs, each with its
    /// Postfix.
    async fn query(&self, key: &str, map: &str, stdin: &str) -> Vec<(Postfix, Output)> {
        let mut out = Vec::new();
        for pf in &self.postfixes {
            out.push((pf.clone(), self.query_one(pf, key, map, stdin).await));
        }
        out
    }

    /// Expects `key` to be found with exactly `value`.
    async fn expect_found(&self, key: &str, map: &str, value: &str) {
        assert_eq!(
            self.found(key, map).await,
            value,
            "postmap -q {key} ({map})"
        );
    }

    /// The value every Postfix received for `key`, which must be found and
    /// be the same for all.
    async fn found(&self, key: &str, map: &str) -> String {
        let mut value: Option<String> = None;
        for (pf, out) in self.query(key, map, "").await {
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{pf}: postmap -q {key} ({map}): {stdout}{stderr}"
            );
            assert_eq!(stderr, "", "{pf}: postmap -q {key} ({map}) warned");
            let this = stdout
                .strip_suffix('\n')
                .unwrap_or_else(|| panic!("{pf}: postmap -q {key} ({map}): {stdout:?}"))
                .to_string();
            if let Some(v) = &value {
                assert_eq!(&this, v, "{pf} read another value than the others");
            }
            value = Some(this);
        }
        value.expect("at least one Postfix")
    }

    /// Expects `key` to be not found by every Postfix: exit 1, no output, no
    /// warning (a protocol error would be a warning and a fatal on stderr).
    async fn expect_not_found(&self, key: &str, map: &str) {
        for (pf, out) in self.query(key, map, "").await {
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(1),
                "{pf}: postmap -q {key} ({map}): {stdout}{stderr}"
            );
            assert_eq!(stdout, "", "{pf}: postmap -q {key} ({map})");
            assert_eq!(stderr, "", "{pf}: postmap -q {key} ({map}) warned");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_reads_secure_match_for_enforce() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup
        .expect_found("enforce.test", "postfix", ENFORCE_VALUE)
        .await;
    // Case does not matter.
    setup
        .expect_found("Enforce.TEST", "postfix", ENFORCE_VALUE)
        .await;
    assert_eq!(setup.world.fetches("enforce.test"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_finds_nothing_without_an_enforced_policy() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup.expect_not_found("testing.test", "postfix").await;
    setup.expect_not_found("none.test", "postfix").await;
    setup.expect_not_found("nothing.test", "postfix").await;
    setup.expect_not_found("[192.0.2.1]:25", "postfix").await;
    assert_eq!(
        setup.world.fetches("testing.test"),
        1,
        "the testing policy was fetched, just not enforced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_map_without_servername() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    setup
        .expect_found(
            "enforce.test",
            "noname",
            "secure match=mx1.enforce.test:.mx.enforce.test",
        )
        .await;
    setup.expect_not_found("testing.test", "noname").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_keys_from_stdin_and_unknown_map() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    // `-q -` reads keys from stdin and prints `key<TAB>value` for each found.
    for (pf, out) in setup
        .query(
            "-",
            "postfix",
            "testing.test\nenforce.test\n[192.0.2.1]\nnothing.test\nenforce.test\n",
        )
        .await
    {
        assert_eq!(out.status.code(), Some(0), "{pf}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("enforce.test\t{ENFORCE_VALUE}\nenforce.test\t{ENFORCE_VALUE}\n"),
            "{pf}"
        );
        assert_eq!(text(&out.stderr), "", "{pf}");
    }

    // A PERM reply reaches Postfix as a table error with our reason.
    for (pf, out) in setup.query("enforce.test", "nomap", "").await {
        let stderr = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{pf}: {stderr}");
        assert!(out.stdout.is_empty(), "{pf}");
        assert!(
            stderr.contains("permanent error") && stderr.contains("unknown map 'nomap'"),
            "{pf}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_default_reply_is_what_postfix_3_7_accepts() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    assert!(
        !MapConfig::default().tlsrpt,
        "tlsrpt must stay off by default"
    );
    for map in ["postfix", "noname"] {
        let value = setup.found("enforce.test", map).await;
        let policy = postfix_policy::parse(&value, postfix_policy::Grammar::Postfix37)
            .unwrap_or_else(|e| panic!("Postfix 3.7 would defer ({map}): {e}: {value}"));
        assert_eq!(policy.level, "secure");
        assert_eq!(policy.matches, ["mx1.enforce.test", ".mx.enforce.test"]);
        assert_eq!(policy.servername.is_some(), map == "postfix");
        assert!(
            !value.contains("policy_")
                && !value.contains("mx_host_pattern")
                && !value.contains('{'),
            "a TLSRPT attribute in the default reply: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_tlsrpt_reply_is_exactly_the_postfix_3_10_grammar() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let value = setup.found("enforce.test", "tlsrpt").await;
    let policy = postfix_policy::parse(&value, postfix_policy::Grammar::Postfix310)
        .unwrap_or_else(|e| panic!("Postfix 3.10 would defer: {e}: {value}"));
    assert_eq!(
        policy,
        postfix_policy::Policy {
            level: "secure".into(),
            matches: vec!["mx1.enforce.test".into(), ".mx.enforce.test".into()],
            servername: Some("hostname".into()),
            policy_type: Some("sts".into()),
            policy_domain: Some("enforce.test".into()),
            policy_ttl: None,
            policy_strings: crate::harness::policy(
                "enforce",
                &["mx1.enforce.test", "*.mx.enforce.test"],
                86400
            )
            .lines()
            .map(String::from)
            .collect(),
            mx_host_patterns: vec!["mx1.enforce.test".into(), "*.mx.enforce.test".into()],
            policy_failure: None,
        }
    );
    // The plain part is the default reply, unchanged, and Postfix before
    // 3.10 refuses the rest: why the option is off by default.
    assert!(
        value.starts_with(&format!("{ENFORCE_VALUE} policy_type=sts ")),
        "{value}"
    );
    assert_eq!(
        postfix_policy::parse(&value, postfix_policy::Grammar::Postfix37),
        Err("invalid attribute name: \"policy_type\"".to_string())
    );
    // Only enforced policies carry the attributes.
    setup.expect_not_found("testing.test", "tlsrpt").await;
    setup.expect_not_found("nothing.test", "tlsrpt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_tlsrpt_policy_text_cannot_inject_attributes() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let body = "version: STSv1\r\n\
                mode: enforce\r\n\
                mx: mx1.hostile.test\r\n\
                x-close: } match=.evil.test servername=evil.test {\r\n\
                x-open: { policy_failure = sts-webpki-invalid\r\n\
                x-list: a, b=c,,d mx_host_pattern=*.evil.test\r\n\
                x-tab:\ta\t\tb  \r\n\
                max_age: 86400\r\n";
    setup.world.publish("hostile.test", "1", body);
    let value = setup.found("hostile.test", "tlsrpt").await;
    let policy = postfix_policy::parse(&value, postfix_policy::Grammar::Postfix310)
        .unwrap_or_else(|e| panic!("Postfix 3.10 would defer: {e}: {value}"));
    assert_eq!(policy.matches, ["mx1.hostile.test"]);
    assert_eq!(policy.servername.as_deref(), Some("hostname"));
    assert_eq!(policy.policy_domain.as_deref(), Some("hostile.test"));
    assert_eq!(policy.mx_host_patterns, ["mx1.hostile.test"]);
    assert_eq!(policy.policy_failure, None);
    assert_eq!(
        policy.policy_strings,
        [
            "version: STSv1",
            "mode: enforce",
            "mx: mx1.hostile.test",
            "x-close: ? match=.evil.test servername=evil.test ?",
            "x-open: ? policy_failure = sts-webpki-invalid",
            "x-list: a, b=c,,d mx_host_pattern=*.evil.test",
            "x-tab: a b",
            "max_age: 86400",
        ]
    );
}

/// Postfix's reading of an `smtp_tls_policy_maps` value, re-implemented from
/// its source (github.com/vdukhovni/postfix):
///
/// - `src/smtp/smtp_tls_policy.c`, `tls_policy_lookup_one()`. Postfix 3.10+
///   splits with `mystrtokq(&policy, CHARS_COMMA_SP, CHARS_BRACE)`, unwraps
///   a token starting with `{` with `extpar(&tok, CHARS_BRACE,
///   EXTPAR_FLAG_STRIP | EXTPAR_FLAG_NORMAL_WS)`, then `split_nameval()`.
///   Before 3.10 (the 3.7 we test with is of this kind) it splits with
///   `mystrtok(&policy, "\t\n\r ,")` and knows no `{ }` and no TLSRPT names.
///   Any error makes the policy invalid: the mail is deferred.
/// - `src/util/mystrtok.c` (`mystrtokq`), `src/util/extpar.c`,
///   `src/util/balpar.c`, `src/util/split_nameval.c`.
/// - `src/smtp/smtp.h` (`EXT_*` names), `src/tls/tlsrpt_wrapper.c`
///   (`tlsrpt_policy_type_mapping`, `tlsrpt_policy_failure_mapping`),
///   `src/smtp/smtp_tlsrpt.c` (`smtp_tlsrpt_set_ext_policy()` needs both
///   lists for `sts`).
mod postfix_policy {
    /// `CHARS_COMMA_SP`
    const SEP: &str = ", \t\r\n";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Grammar {
        /// Postfix 3.4 … 3.9 (servername exists, TLSRPT does not).
        Postfix37,
        /// Postfix 3.10 and later.
        Postfix310,
    }

    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Policy {
        pub level: String,
        pub matches: Vec<String>,
        pub servername: Option<String>,
        pub policy_type: Option<String>,
        pub policy_domain: Option<String>,
        pub policy_ttl: Option<u64>,
        pub policy_strings: Vec<String>,
        pub mx_host_patterns: Vec<String>,
        pub policy_failure: Option<String>,
    }

    /// C `ISSPACE()`: ASCII `isspace()`.
    fn is_space(c: char) -> bool {
        matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
    }

    /// `mystrtok()`: the next run of non-separators.
    fn mystrtok<'a>(src: &mut &'a str, sep: &str) -> Option<&'a str> {
        let start = src.trim_start_matches(|c| sep.contains(c));
        let end = start.find(|c| sep.contains(c)).unwrap_or(start.len());
        let token = &start[..end];
        *src = start.get(end + 1..).unwrap_or("");
        (!token.is_empty()).then_some(token)
    }

    /// `mystrtokq()`: like `mystrtok()`, but no split inside balanced braces.
    fn mystrtokq<'a>(src: &mut &'a str) -> Option<&'a str> {
        let start = src.trim_start_matches(|c| SEP.contains(c));
        if start.is_empty() {
            *src = start;
            return None;
        }
        let mut level = 0usize;
        for (i, c) in start.char_indices() {
            if c == '{' {
                level += 1;
            } else if level > 0 && c == '}' {
                level -= 1;
            } else if level == 0 && SEP.contains(c) {
                *src = &start[i + c.len_utf8()..];
                return Some(&start[..i]);
            }
        }
        *src = "";
        Some(start)
    }

    /// `balpar()`: the length of the leading `{…}`, 0 if unbalanced.
    fn balpar(s: &str) -> usize {
        let mut level = 0usize;
        for (i, c) in s.char_indices() {
            if c == '{' {
                level += 1;
            } else if c == '}' {
                level -= 1;
                if level == 0 {
                    return i + 1;
                }
            }
        }
        0
    }

    /// `extpar(.., EXTPAR_FLAG_STRIP | EXTPAR_FLAG_NORMAL_WS)`. The stored
    /// source has no EXTPAR_FLAG_NORMAL_WS yet; it is modelled as "every
    /// whitespace character becomes a space". Values must not depend on
    /// whether runs are also collapsed, so a run of whitespace is an error
    /// here.
    fn extpar(tok: &str) -> Result<String, String> {
        let len = balpar(tok);
        if len == 0 {
            return Err(format!("missing '}}' in \"{tok}\""));
        }
        if len != tok.len() {
            return Err(format!("syntax error after '}}' in \"{tok}\""));
        }
        let inner: String = tok[1..len - 1]
            .chars()
            .map(|c| if is_space(c) { ' ' } else { c })
            .collect();
        let inner = inner.trim_matches(' ');
        if inner.contains("  ") {
            return Err(format!("whitespace run inside braces: \"{tok}\""));
        }
        Ok(inner.to_string())
    }

    /// `split_nameval()`: `name = value`, whitespace around both trimmed.
    fn split_nameval(buf: &str) -> Result<(String, String), String> {
        let np = buf.trim_start_matches(is_space);
        if np.is_empty() || np.starts_with('=') {
            return Err("missing attribute name".into());
        }
        let end = np.find(|c| is_space(c) || c == '=').unwrap_or(np.len());
        let Some(value) = np[end..].trim_start_matches(is_space).strip_prefix('=') else {
            return Err("missing '=' after attribute name".into());
        };
        Ok((
            np[..end].to_string(),
            value.trim_matches(is_space).to_string(),
        ))
    }

    /// `valid_hostname()`, as far as our values go.
    fn valid_hostname(name: &str) -> bool {
        name.len() <= 255
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            && !name
                .split('.')
                .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    }

    fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
        if slot.is_some() {
            return Err(format!("attribute \"{name}\" is specified multiple times"));
        }
        *slot = Some(value);
        Ok(())
    }

    /// The tokenizer of each grammar.
    fn next_token<'a>(rest: &mut &'a str, grammar: Grammar) -> Option<&'a str> {
        match grammar {
            Grammar::Postfix37 => mystrtok(rest, "\t\n\r ,"),
            Grammar::Postfix310 => mystrtokq(rest),
        }
    }

    /// `tls_policy_lookup_one()` for one lookup result. Only the attributes
    /// this agent sends (`match`, `servername` and the TLSRPT ones) are
    /// modelled; the others Postfix knows (`ciphers`, `protocols`, `exclude`,
    /// `tafile`, `connection_reuse`, …) are refused here.
    pub fn parse(value: &str, grammar: Grammar) -> Result<Policy, String> {
        let mut rest = value;
        let level = next_token(&mut rest, grammar).ok_or("invalid empty policy")?;
        let known = [
            "none",
            "may",
            "encrypt",
            "dane",
            "dane-only",
            "fingerprint",
            "verify",
            "secure",
        ];
        if !known.iter().any(|k| k.eq_ignore_ascii_case(level)) {
            return Err(format!("invalid security level \"{level}\""));
        }
        let mut p = Policy {
            level: level.to_ascii_lowercase(),
            ..Policy::default()
        };
        while let Some(tok) = next_token(&mut rest, grammar) {
            let tok = if grammar == Grammar::Postfix310 && tok.starts_with('{') {
                extpar(tok)?
            } else {
                tok.to_string()
            };
            let (name, val) = split_nameval(&tok)
                .map_err(|e| format!("malformed attribute/value pair \"{tok}\": {e}"))?;
            let tlsrpt = grammar == Grammar::Postfix310;
            match name.to_ascii_lowercase().as_str() {
                "match" => {
                    if val.is_empty() {
                        return Err("attribute \"match\" has empty value".into());
                    }
                    if !matches!(p.level.as_str(), "verify" | "secure") {
                        return Err("attribute \"match\" invalid at this level".into());
                    }
                    p.matches
                        .extend(val.split(':').filter(|m| !m.is_empty()).map(String::from));
                }
                "servername" => {
                    if !valid_hostname(&val) {
                        return Err(format!(
                            "\"servername={val}\" specifies an invalid hostname"
                        ));
                    }
                    once(&mut p.servername, &name, val)?;
                }
                "policy_ttl" if tlsrpt => {
                    let ttl = val
                        .parse::<u64>()
                        .ok()
                        .filter(|_| val.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or(format!(
                            "attribute \"{name}\" has a malformed value: \"{val}\""
                        ))?;
                    once(&mut p.policy_ttl, &name, ttl)?;
                }
                "policy_type" if tlsrpt => {
                    if !["sts", "no-policy-found"]
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&val))
                    {
                        return Err(format!(
                            "attribute \"{name}\" has an unexpected value: \"{val}\""
                        ));
                    }
                    once(&mut p.policy_type, &name, val)?;
                }
                "policy_domain" if tlsrpt => {
                    if !valid_hostname(&val) {
                        return Err(format!(
                            "attribute \"{name}\" has a malformed value: \"{val}\""
                        ));
                    }
                    once(&mut p.policy_domain, &name, val)?;
                }
                "policy_string" if tlsrpt => p.policy_strings.push(val),
                "mx_host_pattern" if tlsrpt => p.mx_host_patterns.push(val),
                "policy_failure" if tlsrpt => {
                    let valid = [
                        "sts-policy-fetch-error",
                        "sts-policy-invalid",
                        "sts-webpki-invalid",
                        "validation-failure",
                    ];
                    if !valid.iter().any(|t| t.eq_ignore_ascii_case(&val)) {
                        return Err(format!(
                            "attribute \"{name}\" has an unexpected value: \"{val}\""
                        ));
                    }
                    once(&mut p.policy_failure, &name, val)?;
                }
                _ => return Err(format!("invalid attribute name: \"{name}\"")),
            }
        }
        let external = p.policy_ttl.is_some()
            || !p.policy_strings.is_empty()
            || p.policy_domain.is_some()
            || !p.mx_host_patterns.is_empty()
            || p.policy_failure.is_some();
        if p.policy_type.is_none() && external {
            return Err(
                "built-in policy has unexpected attribute policy_ttl, policy_domain, \
                        policy_string, mx_host_pattern or policy_failure"
                    .into(),
            );
        }
        // smtp_tlsrpt_set_ext_policy() reads both lists of an sts policy
        // without a null check.
        if p.policy_type.as_deref() == Some("sts")
            && (p.policy_strings.is_empty() || p.mx_host_patterns.is_empty())
        {
            return Err("sts policy without policy_string or mx_host_pattern".into());
        }
        Ok(p)
    }

    #[test]
    fn model_follows_postfix_on_its_own_examples() {
        // smtp_tls_policy_test.c, sts_policy_smoke_test().
        let p = parse(
            "secure match=example:.example servername=example policy_ttl=123 \
             policy_type=sts policy_string=one policy_string=two policy_domain=example \
             mx_host_pattern=example mx_host_pattern=*.example",
            Grammar::Postfix310,
        )
        .unwrap();
        assert_eq!(p.policy_ttl, Some(123));
        assert_eq!(p.policy_strings, ["one", "two"]);
        assert_eq!(p.mx_host_patterns, ["example", "*.example"]);
        // TLSRPT_README's examples, comma-separated.
        let p = parse(
            "secure match=.example.com, policy_type=sts, policy_domain=example.com, \
             { policy_string = version: STSv1 }, { policy_string = mode: testing }, \
             mx_host_pattern=mx1.example.com, mx_host_pattern=mx2.example.com, \
             policy_failure=sts-webpki-invalid",
            Grammar::Postfix310,
        )
        .unwrap();
        assert_eq!(p.policy_strings, ["version: STSv1", "mode: testing"]);
        assert_eq!(p.policy_failure.as_deref(), Some("sts-webpki-invalid"));
        // What it refuses.
        for bad in [
            "secure match=a { policy_string = x } y }",
            "secure match=a { policy_string = x",
            "secure match=a policy_string=x",
            "secure match=a policy_type=dane",
            "secure match=a policy_type=sts policy_type=sts policy_string=x mx_host_pattern=a",
            "secure match=a policy_type=sts policy_string=x",
            "secure match=a policy_type=sts policy_domain=-x mx_host_pattern=a policy_string=x",
            "secure match=a policy_type=sts policy_failure=nope mx_host_pattern=a policy_string=x",
            "secure match=a {policy_string = x}y",
            "secure match=a =x",
        ] {
            assert!(parse(bad, Grammar::Postfix310).is_err(), "{bad}");
        }
        assert!(parse("secure match=a servername=hostname", Grammar::Postfix37).is_ok());
    }
}
