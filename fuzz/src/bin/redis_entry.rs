//! A shared policy read from Redis (`src/store/trust.rs`): whoever can write
//! to Redis writes these bytes, so they are checked like network input
//! before any agent of the fleet uses them.
use mta_sts_agent::policy::parse_policy;
use mta_sts_agent::store::trust::{check_shared, weakens};

const KEY: &str = "a.test";
const NOW: u64 = 1_790_000_000;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(p) = check_shared(KEY, data, NOW) else {
            return;
        };
        // What is accepted is the policy of this key, parsed from its own
        // text, fetched (not an override), not from the future, not expired.
        assert_eq!(p.domain, KEY);
        let reparsed = parse_policy(p.body.as_bytes()).expect("accepted body parses");
        assert_eq!(reparsed.policy, p.policy, "accepted policy is not its text's");
        assert!(p.is_valid_at(NOW), "an expired entry was accepted");
        assert!(!p.id.is_empty() && p.id.len() <= 32);
        // Written back and read again, it is the same entry.
        let again = serde_json::to_vec(&p).expect("serialise");
        assert_eq!(check_shared(KEY, &again, NOW).as_ref(), Ok(&p));
        // A policy never weakens itself.
        assert_eq!(weakens(Some(&p), &p, NOW), None);
        let _ = weakens(None, &p, NOW);
    });
}
