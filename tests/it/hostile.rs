//! Hostile input costs nothing: every parser that reads from the network (or
//! from an admin's config file) is fed random and mutated input, and must
//! answer with a value or an error — never a panic, never an out-of-bounds
//! range — and keep its invariants. A fixed-seed generator keeps failures
//! reproducible.

use mta_sts_agent::config::Config;
use mta_sts_agent::policy::{discover, parse_policy, parse_record, Mode, MxPattern};
use mta_sts_agent::socketmap::netstring::decode;

/// xorshift64*: small, deterministic, good enough to shake parsers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// A copy of `seed` with a few bytes replaced, inserted or removed,
    /// biased towards the characters the grammars care about.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        const SPECIAL: &[u8] = b":;=,. *\r\n\t0123456789-_v";
        let mut out = seed.to_vec();
        for _ in 0..=self.below(4) {
            let pos = self.below(out.len() + 1);
            let byte = if self.below(2) == 0 {
                SPECIAL[self.below(SPECIAL.len())]
            } else {
                self.next() as u8
            };
            match self.below(3) {
                0 if pos < out.len() => out[pos] = byte,
                1 => out.insert(pos, byte),
                _ if pos < out.len() => {
                    out.remove(pos);
                }
                _ => out.push(byte),
            }
        }
        out
    }
}

const ROUNDS: usize = 20_000;

#[test]
fn policy_parser_survives_noise_and_keeps_its_invariants() {
    let mut rng = Rng(0x5eed_0001);
    let seed = b"version: STSv1\r\nmode: enforce\nmx: mx1.example.test\nmx: *.example.net\nmax_age: 604800\n";
    let mut accepted = 0;
    for i in 0..ROUNDS {
        let input = if i % 4 == 0 {
            rng.bytes(300)
        } else {
            rng.mutate(seed)
        };
        if let Ok(parsed) = parse_policy(&input) {
            accepted += 1;
            let p = parsed.policy;
            assert!(p.max_age <= 31_557_600, "{input:?}");
            if p.mode != Mode::None {
                assert!(
                    !p.mx.is_empty(),
                    "enforce/testing without mx accepted: {input:?}"
                );
            }
            for m in &p.mx {
                // Every accepted pattern round-trips and matches a host of its own.
                assert_eq!(MxPattern::parse(&m.to_string()).as_ref(), Ok(m));
                let host = if m.is_wildcard() {
                    format!("x.{}", m.domain())
                } else {
                    m.domain().to_string()
                };
                assert!(m.matches(&host), "{m} does not match {host}");
            }
        }
    }
    // The invariants above were exercised, not skipped.
    assert!(accepted > ROUNDS / 20, "only {accepted} inputs parsed");
}

#[test]
fn txt_record_parsers_survive_noise() {
    let mut rng = Rng(0x5eed_0002);
    for i in 0..ROUNDS {
        let a = if i % 3 == 0 {
            rng.bytes(120)
        } else {
            rng.mutate(b"v=STSv1; id=20240101T000000Z; x=1")
        };
        let b = rng.mutate(b"v=TLSRPTv1; rua=mailto:tls@example.test,https://r.example.test/x");
        if let Ok(text) = std::str::from_utf8(&a) {
            if let Ok(r) = parse_record(text) {
                assert!(!r.id.is_empty() && r.id.len() <= 32);
                assert!(r.id.bytes().all(|c| c.is_ascii_alphanumeric()));
            }
        }
        let _ = discover([a.clone(), b.clone(), a]);
        let _ = mta_sts_agent::policy::tlsrpt::discover_tlsrpt([b]);
    }
}

#[test]
fn netstring_decoder_never_points_outside_its_input() {
    let mut rng = Rng(0x5eed_0003);
    let mut complete = 0;
    for i in 0..ROUNDS * 5 {
        let input = match i % 3 {
            0 => rng.bytes(40),
            1 => rng.mutate(b"19:postfix example.test,"),
            _ => rng.mutate(b"10000:"),
        };
        match decode(&input, 10_000) {
            Ok(Some((range, used))) => {
                complete += 1;
                assert!(range.end < input.len() && used <= input.len() && range.start <= range.end);
                assert_eq!(input[range.end], b',');
            }
            Ok(None) => assert!(
                input.len() <= 10_000 + 7,
                "buffering without bound: {}",
                input.len()
            ),
            Err(_) => {}
        }
    }
    assert!(complete > ROUNDS / 10, "only {complete} complete frames");
}

#[test]
fn smtp_reply_parser_survives_noise() {
    use mta_sts_agent::smtp::reply::{parse_line, ReplyBuilder};
    let mut rng = Rng(0x5eed_0004);
    for i in 0..ROUNDS {
        let mut builder = ReplyBuilder::default();
        for _ in 0..=rng.below(5) {
            let line = if i % 2 == 0 {
                rng.bytes(80)
            } else {
                rng.mutate(b"250-mx.example.test Hello\r\n")
            };
            let _ = parse_line(&line);
            if builder.push(&line).is_err() {
                break;
            }
        }
    }
}

#[test]
fn config_loader_reports_errors_instead_of_panicking() {
    let mut rng = Rng(0x5eed_0005);
    let seed = b"state_dir = \"/tmp/x\"\n[dns]\nnameservers = [\"127.0.0.1:53\"]\ntimeout = \"2s\"\n[socketmap]\nlisten = [\"127.0.0.1:8461\", \"unix:/tmp/s\"]\nunix_mode = \"0660\"\n[overrides.\"a.test\"]\nmode = \"enforce\"\nmx = [\"*.a.test\"]\nreason = \"r\"\n";
    for _ in 0..ROUNDS / 4 {
        let input = rng.mutate(seed);
        let Ok(text) = String::from_utf8(input) else {
            continue;
        };
        if let Err(e) = Config::parse(&text, std::path::Path::new("fuzz.toml")) {
            assert!(!e.to_string().is_empty());
        }
    }
}
