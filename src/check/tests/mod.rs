//! Unit tests of the check's sections and verdict on the in-memory DNS
//! (`dns::memory::ZoneDns`) and policy host (`fetch::memory::MemoryFetch`):
//! no sockets, so each finding's rule is pinned down in milliseconds. The
//! integration tests (tests/it/check.rs) keep the real servers and the
//! rendered output.

use super::findings::{Finding, Findings, Severity};
use crate::dns::memory::ZoneDns;
use crate::dns::Dns;

mod mx;
mod policy;
mod smtp;
mod tlsrpt;
mod txt;
mod verdict;

/// A zone and the handle the code under test holds.
fn zone(text: &str) -> (ZoneDns, Dns) {
    let zone = ZoneDns::from_zone(text);
    let dns = Dns::new(zone.clone());
    (zone, dns)
}

/// Zone text with one TXT record at `owner` per entry of `txt`.
fn txt_records(owner: &str, txt: &[&str]) -> String {
    txt.iter()
        .map(|t| format!("{owner}. 300 IN TXT \"{t}\"\n"))
        .collect()
}

fn codes(f: &Findings) -> Vec<&'static str> {
    f.list().iter().map(|x| x.code).collect()
}

/// The one finding with `code`.
#[track_caller]
fn only<'a>(f: &'a Findings, code: &str) -> &'a Finding {
    let found: Vec<&Finding> = f.list().iter().filter(|x| x.code == code).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!("expected one {code}, got {:?}", codes(f)),
    }
}

#[track_caller]
fn severity(f: &Findings, code: &str) -> Severity {
    only(f, code).severity
}
