//! The answer of the AD-bit exchange (`Dns::secure_lookup` in `src/dns.rs`):
//! a UDP or TCP DNS message from the configured resolver, decoded with the
//! same hickory wire parser and mapped by the agent's MX and TLSA readers
//! (`Dns::mx_records`, `Dns::tlsa_records`). Off a hostile path these are
//! attacker bytes.
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{RData, RecordType};
use mta_sts_agent::dns::{Answer, Dns};

/// The records of one type in the answer section, as `secure_lookup`
/// selects them.
fn answers_of(msg: &Message, rtype: RecordType) -> Answer<RData> {
    let records: Vec<RData> = msg
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.clone())
        .collect();
    if records.is_empty() {
        Answer::NoRecords {
            nxdomain: msg.metadata.response_code == ResponseCode::NXDomain,
        }
    } else {
        Answer::Records(records)
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // The TCP path reads a two-byte length first (RFC 1035 §4.2.2); the
        // decoder sees at most 65535 bytes either way.
        let Ok(msg) = Message::from_vec(&data[..data.len().min(65_535)]) else {
            return;
        };
        let mx_in = msg
            .answers
            .iter()
            .filter(|r| matches!(r.data, RData::MX(_)))
            .count();
        match Dns::mx_records(answers_of(&msg, RecordType::MX)) {
            Answer::Records(mx) => {
                assert!(!mx.is_empty() && mx.len() <= mx_in);
                assert!(mx.windows(2).all(|w| w[0].preference <= w[1].preference));
                for m in &mx {
                    // What the MTA-STS pattern check and the TLSA name are
                    // built from: lower case, no trailing dot.
                    assert!(!m.exchange.ends_with('.') || m.exchange == ".");
                    assert_eq!(m.exchange, m.exchange.to_ascii_lowercase());
                    assert!(m.exchange.len() <= 255);
                }
            }
            Answer::NoRecords { .. } => {}
        }
        let tlsa_in = msg
            .answers
            .iter()
            .filter(|r| matches!(r.data, RData::TLSA(_)))
            .count();
        match Dns::tlsa_records(answers_of(&msg, RecordType::TLSA)) {
            Answer::Records(t) => {
                assert!(!t.is_empty() && t.len() <= tlsa_in);
                for r in &t {
                    assert!(r.data.len() <= 65_535);
                    let _ = r.to_string();
                }
            }
            Answer::NoRecords { .. } => {}
        }
    });
}
