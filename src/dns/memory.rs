//! An in-memory DNS built from zone text, so the rules that sit on DNS
//! answers are unit-tested in milliseconds (KumoMTA's `TestResolver` is the
//! model). It answers as a validating resolver would: names it was told are
//! signed come back with the AD bit, bogus ones as SERVFAIL, and a name
//! that holds no records at all (nor any below it) is NXDOMAIN.
//!
//! ```text
//! let zone = ZoneDns::from_zone("example.test. 300 IN MX 10 mx.example.test.\n");
//! let dns = Dns::new(zone.clone());      // the handle the code under test holds
//! zone.fail("_mta-sts.example.test", RecordType::TXT, Fault::ServFail);
//! assert_eq!(zone.queries("example.test", RecordType::MX), 1);
//! ```

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::proto::serialize::txt::Parser;

use super::{Answer, DnsError, DnsLookup, Lookup, Secured};
use crate::sync::Recover;

/// How a lookup of a name fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The resolver answers SERVFAIL.
    ServFail,
    /// No answer. The error comes at once; [`ZoneDns::delay`] adds the wait.
    Timeout,
}

/// CNAME chains longer than this are a loop (hickory gives up sooner).
const MAX_CNAMES: usize = 8;

#[derive(Default)]
struct Zone {
    rrsets: HashMap<(String, RecordType), (Vec<RData>, u32)>,
    signed: HashSet<String>,
    bogus: HashSet<String>,
    faults: HashMap<(String, RecordType), Fault>,
    delays: HashMap<String, Duration>,
    queries: HashMap<(String, RecordType), usize>,
}

/// Test DNS. Clones share one zone, so a test keeps one to change answers
/// and count queries while the code under test holds another in a
/// [`Dns`](super::Dns).
#[derive(Clone, Default)]
pub struct ZoneDns {
    zone: Arc<Mutex<Zone>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// RRsets of zone text (absolute names, as in a zone file), keyed by name
/// and type.
fn parse(text: &str) -> HashMap<(String, RecordType), (Vec<RData>, u32)> {
    let (_, sets) = match Parser::new(text, None, Some(Name::root())).parse() {
        Ok(parsed) => parsed,
        Err(e) => panic!("test zone does not parse: {e}\n{text}"),
    };
    let mut out: HashMap<(String, RecordType), (Vec<RData>, u32)> = HashMap::new();
    for (k, set) in sets {
        let name = key(&Name::from(k.name).to_ascii());
        let records: Vec<RData> = set
            .records_without_rrsigs()
            .map(|r| r.data.clone())
            .collect();
        out.insert((name, k.record_type), (records, set.ttl()));
    }
    out
}

impl ZoneDns {
    /// A zone from zone-file text. Panics on text that does not parse: it
    /// is the test's own.
    #[track_caller]
    pub fn from_zone(text: &str) -> ZoneDns {
        let zone = ZoneDns::default();
        zone.load(text);
        zone
    }

    fn lock(&self) -> MutexGuard<'_, Zone> {
        self.zone.locked()
    }

    /// Adds the RRsets of `text`, each replacing the RRset of the same name
    /// and type (a changed record, as a zone reload would show it).
    #[track_caller]
    pub fn load(&self, text: &str) {
        let sets = parse(text);
        self.lock().rrsets.extend(sets);
    }

    /// Removes the RRset of `name` and `rtype`.
    pub fn remove(&self, name: &str, rtype: RecordType) {
        self.lock().rrsets.remove(&(key(name), rtype));
    }

    /// Answers at `name` (records and denials) are DNSSEC-authenticated.
    pub fn sign(&self, name: &str) {
        self.lock().signed.insert(key(name));
    }

    /// Answers at `name` are bogus: the validating resolver answers
    /// SERVFAIL to every query for it.
    pub fn bogus(&self, name: &str) {
        self.lock().bogus.insert(key(name));
    }

    /// Lookups of `name` and `rtype` fail (ordinary and secure ones).
    pub fn fail(&self, name: &str, rtype: RecordType, fault: Fault) {
        self.lock().faults.insert((key(name), rtype), fault);
    }

    /// Lookups of `name` and `rtype` answer again.
    pub fn heal(&self, name: &str, rtype: RecordType) {
        self.lock().faults.remove(&(key(name), rtype));
    }

    /// Every lookup of `name` waits this long before it answers.
    pub fn delay(&self, name: &str, wait: Duration) {
        self.lock().delays.insert(key(name), wait);
    }

    /// Queries seen for `name` and `rtype` (ordinary and secure; an
    /// address lookup counts as one A and one AAAA query).
    pub fn queries(&self, name: &str, rtype: RecordType) -> usize {
        self.lock()
            .queries
            .get(&(key(name), rtype))
            .copied()
            .unwrap_or(0)
    }

    /// One query: counted, delayed, then answered from the zone.
    async fn ask(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Answer<RData>, Option<u32>, bool), DnsError> {
        let name = key(name);
        let wait = {
            let mut zone = self.lock();
            *zone.queries.entry((name.clone(), rtype)).or_default() += 1;
            zone.delays.get(&name).copied()
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        self.lock().answer(&name, rtype)
    }
}

impl Zone {
    fn exists(&self, name: &str) -> bool {
        let below = format!(".{name}");
        self.rrsets
            .keys()
            .any(|(n, _)| n == name || n.ends_with(&below))
    }

    /// The answer at `name` and whether it is authenticated, following
    /// CNAMEs as a recursive resolver does (authenticated only when every
    /// name of the chain is signed).
    fn answer(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Answer<RData>, Option<u32>, bool), DnsError> {
        let mut name = name.to_string();
        let mut secure = true;
        for _ in 0..MAX_CNAMES {
            let err = |reason: &str| DnsError {
                name: name.clone(),
                reason: reason.to_string(),
            };
            match self.faults.get(&(name.clone(), rtype)) {
                Some(Fault::ServFail) => return Err(err("answered SERVFAIL")),
                Some(Fault::Timeout) => return Err(err("request timed out")),
                None => {}
            }
            if self.bogus.contains(&name) {
                return Err(err("answered SERVFAIL (DNSSEC validation failed)"));
            }
            secure &= self.signed.contains(&name);
            if let Some((records, ttl)) = self.rrsets.get(&(name.clone(), rtype)) {
                return Ok((Answer::Records(records.clone()), Some(*ttl), secure));
            }
            match self.rrsets.get(&(name.clone(), RecordType::CNAME)) {
                Some((records, _)) => match records.first() {
                    Some(RData::CNAME(target)) => name = key(&target.0.to_ascii()),
                    _ => return Err(err("malformed CNAME in the test zone")),
                },
                None => {
                    let nxdomain = !self.exists(&name);
                    return Ok((Answer::NoRecords { nxdomain }, None, secure));
                }
            }
        }
        Err(DnsError {
            name,
            reason: "CNAME chain too long".to_string(),
        })
    }
}

impl DnsLookup for ZoneDns {
    fn describe(&self) -> &str {
        "in-memory test zone"
    }

    fn records<'a>(
        &'a self,
        name: &'a str,
        rtype: RecordType,
    ) -> Lookup<'a, (Answer<RData>, Option<Instant>)> {
        Box::pin(async move {
            let (answer, ttl, _) = self.ask(name, rtype).await?;
            let expiry = ttl.map(|t| Instant::now() + Duration::from_secs(u64::from(t)));
            Ok((answer, expiry))
        })
    }

    fn secure_lookup<'a>(&'a self, name: &'a str, rtype: RecordType) -> Lookup<'a, Secured> {
        Box::pin(async move {
            let (answer, ttl, authenticated) = self.ask(name, rtype).await?;
            Ok(Secured {
                answer,
                authenticated,
                ttl,
            })
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Answer<IpAddr>> {
        Box::pin(async move {
            let (v4, _, _) = self.ask(host, RecordType::A).await?;
            let (v6, _, _) = self.ask(host, RecordType::AAAA).await?;
            let mut ips: Vec<IpAddr> = Vec::new();
            for d in v4.records().iter().chain(v6.records()) {
                match d {
                    RData::A(a) => ips.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => ips.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
            Ok(match (ips.is_empty(), v4, v6) {
                (false, _, _) => Answer::Records(ips),
                (
                    true,
                    Answer::NoRecords { nxdomain: true },
                    Answer::NoRecords { nxdomain: true },
                ) => Answer::NoRecords { nxdomain: true },
                _ => Answer::NoRecords { nxdomain: false },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Dns, MxRecord};

    const ZONE: &str = "\
example.test. 300 IN MX 20 mx2.example.test.
example.test. 300 IN MX 10 MX1.Example.Test.
_mta-sts.example.test. 60 IN TXT \"v=STSv1; \" \"id=1\"
alias.example.test. 60 IN CNAME mx1.example.test.
mx1.example.test. 60 IN A 192.0.2.1
mx1.example.test. 60 IN AAAA 2001:db8::1
_25._tcp.mx1.example.test. 60 IN TLSA 3 1 1 0102
";

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.to_string(),
        }
    }

    #[tokio::test]
    async fn answers_are_converted_as_the_real_resolver_s_are() {
        let dns = Dns::new(ZoneDns::from_zone(ZONE));
        // RFC 5321 §5.1: preference order; names lower case, no root dot.
        assert_eq!(
            dns.mx("example.test").await.expect("mx"),
            Answer::Records(vec![mx(10, "mx1.example.test"), mx(20, "mx2.example.test")])
        );
        // RFC 8461 §3.1: the character-strings of one TXT record are joined.
        assert_eq!(
            dns.txt("_mta-sts.example.test").await.expect("txt"),
            Answer::Records(vec![b"v=STSv1; id=1".to_vec()])
        );
        let tlsa = dns.tlsa("_25._tcp.mx1.example.test").await.expect("tlsa");
        assert_eq!(tlsa.records()[0].to_string(), "3 1 1 0102");
        assert_eq!(
            dns.ips("alias.example.test")
                .await
                .expect("ips")
                .records()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn nxdomain_is_told_apart_from_a_name_without_that_type() {
        let dns = Dns::new(ZoneDns::from_zone(ZONE));
        assert_eq!(
            dns.mx("nowhere.test").await.expect("mx"),
            Answer::NoRecords { nxdomain: true }
        );
        assert_eq!(
            dns.txt("example.test").await.expect("txt"),
            Answer::NoRecords { nxdomain: false }
        );
        // An empty non-terminal exists (RFC 8020): `_tcp.mx1` has a child.
        assert_eq!(
            dns.txt("_tcp.mx1.example.test").await.expect("txt"),
            Answer::NoRecords { nxdomain: false }
        );
    }

    #[tokio::test]
    async fn signing_faults_and_counts() {
        let zone = ZoneDns::from_zone(ZONE);
        let dns = Dns::new(zone.clone());
        let (_, secure, ttl) = dns.mx_secure("example.test").await.expect("mx");
        assert!(!secure);
        assert_eq!(ttl, Some(300));
        zone.sign("example.test");
        assert!(dns.mx_secure("example.test").await.expect("mx").1);
        // A chain through an unsigned name is not authenticated.
        zone.sign("mx1.example.test");
        assert!(!dns
            .authenticated("alias.example.test", RecordType::A)
            .await
            .expect("a"));
        zone.bogus("mx2.example.test");
        assert!(dns.a("mx2.example.test").await.is_err());
        zone.fail("example.test", RecordType::MX, Fault::ServFail);
        assert!(dns.mx("example.test").await.is_err());
        zone.heal("example.test", RecordType::MX);
        assert!(dns.mx("example.test").await.is_ok());
        assert_eq!(zone.queries("EXAMPLE.test.", RecordType::MX), 4);
        zone.load("example.test. 300 IN MX 0 .\n");
        assert_eq!(
            dns.mx("example.test").await.expect("mx").records(),
            [mx(0, "")]
        );
    }
}
