//! The `_mta-sts.<domain>` TXT records (`src/policy/txt.rs`, RFC 8461 §3.1):
//! unsigned DNS data an attacker may forge. The input is the RRset, one
//! record per LF-separated line (each record's strings already joined).
use mta_sts_agent::policy::txt::is_sts_record;
use mta_sts_agent::policy::{discover, parse_record, Discovery, StsRecord};

fn render(r: &StsRecord) -> String {
    let mut out = format!("v=STSv1; id={}", r.id);
    for (k, v) in &r.extensions {
        out.push_str(&format!("; {k}={v}"));
    }
    out
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let records: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let ours = records
            .iter()
            .filter(|r| std::str::from_utf8(r).is_ok_and(is_sts_record))
            .count();
        match discover(&records) {
            Discovery::Found(r) => {
                assert_eq!(ours, 1);
                assert!(!r.id.is_empty() && r.id.len() <= 32);
                assert!(r.id.bytes().all(|b| b.is_ascii_alphanumeric()));
                // The canonical form of a record parses back to it.
                let text = render(&r);
                assert!(is_sts_record(&text));
                assert_eq!(parse_record(&text).as_ref(), Ok(&r), "{text:?}");
            }
            // §3.1: more than one STSv1 record means no policy.
            Discovery::Multiple(n) => assert!(n >= 2 && n == ours),
            Discovery::NoRecord => assert_eq!(ours, 0),
            Discovery::Invalid(_) => assert_eq!(ours, 1),
        }
    });
}
