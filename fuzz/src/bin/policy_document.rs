//! The policy file served at `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! (`src/policy/document.rs`, RFC 8461 §3.2): whoever answers that HTTPS
//! request writes these bytes.
use mta_sts_agent::policy::{parse_policy, Mode, MxPattern, Policy, MAX_AGE_LIMIT};

/// The policy as a canonical document: what a well-behaved server would
/// publish for it.
fn render(p: &Policy) -> String {
    let mut out = format!("version: STSv1\nmode: {}\nmax_age: {}\n", p.mode, p.max_age);
    for mx in &p.mx {
        out.push_str(&format!("mx: {mx}\n"));
    }
    out
}

fn main() {
    afl::fuzz!(|body: &[u8]| {
        let Ok(parsed) = parse_policy(body) else {
            return;
        };
        let p = &parsed.policy;
        assert!(p.max_age <= MAX_AGE_LIMIT);
        // §3.2: mx is required unless the mode is none.
        assert!(p.mode == Mode::None || !p.mx.is_empty());
        for (i, mx) in p.mx.iter().enumerate() {
            assert!(!p.mx[..i].contains(mx), "mx {mx} kept twice");
            // Patterns are stored normalised: parsing the stored form again
            // is the identity.
            let again = MxPattern::parse(&mx.to_string()).expect("stored mx pattern re-parses");
            assert_eq!(&again, mx);
            // §4.1: a wildcard matches exactly one more label, never the
            // bare domain; an exact pattern matches itself.
            if mx.is_wildcard() {
                assert!(!mx.matches(mx.domain()));
                // (A one-label-longer name must still fit in 253 octets.)
                if mx.domain().len() <= 240 {
                    assert!(mx.matches(&format!("mx1.{}", mx.domain())));
                    assert!(!mx.matches(&format!("a.b.{}", mx.domain())));
                }
            } else {
                assert!(mx.matches(mx.domain()));
                assert!(mx.matches(&format!("{}.", mx.domain().to_ascii_uppercase())));
            }
        }
        // A policy written out canonically parses back to itself.
        let text = render(p);
        let back = parse_policy(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(&back.policy, p);
        // The store keeps policies as JSON (redb and Redis): that must
        // round-trip too.
        let json = serde_json::to_vec(p).expect("policy serialises");
        let stored: Policy = serde_json::from_slice(&json).expect("stored policy reads back");
        assert_eq!(&stored, p);
    });
}
