//! What `setup postfix` reads from Postfix's tools (`src/setup/plan.rs`):
//! the output of `postconf`, `postconf -F` and `postconf -dh
//! mail_version`, which a broken or foreign Postfix may print in any shape.
//! The input's first line is the version, the rest the `name = value`
//! output (used for main.cf and master.cf alike).
use mta_sts_agent::config::Config;
use mta_sts_agent::setup::plan::{applied, parse_postconf, plan, AgentSide, Observed};

fn main() {
    let agent = AgentSide::from_config(&Config::default()).expect("the default config");
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let (version, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let params = parse_postconf(rest);
        for (name, value) in &params {
            assert!(!name.is_empty() && !name.contains(['=', '\n', ' ']), "{name:?}");
            assert!(!value.contains('\n') && value.trim() == value, "{value:?}");
        }
        let obs = Observed {
            mail_version: version.to_string(),
            master: params.clone(),
            params,
            system_ca_readable: data.len() % 2 == 0,
        };
        if let Ok(p) = plan(&obs, &agent) {
            for c in &p.changes {
                assert!(!c.why.is_empty() && !c.new.is_empty());
                assert!(!c.new.contains('\n'));
            }
            // Idempotent: once applied, nothing is left to change.
            let again = plan(&applied(&obs, &p.changes), &agent).expect("still accepted");
            assert!(again.changes.is_empty(), "{:?}", again.changes);
        }
    });
}
