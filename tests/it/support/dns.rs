//! An in-process authoritative DNS server on loopback, speaking real DNS on
//! the wire over UDP and TCP on the same port of 127.0.0.1.
//!
//! The zone data can be changed while the server runs. Names are
//! case-insensitive and may be given with or without a trailing dot.
//!
//! Answer rules, in order, for a query `(name, type)`:
//! 1. a [`Fault`] set for `name` is applied (any type);
//! 2. records of `type` at `name` → NOERROR with them;
//! 3. a CNAME at `name` → the CNAME record, then the chain is followed inside
//!    the fixture data (up to 8 hops), appending the target's records of
//!    `type` (NXDOMAIN if the chain ends at a name with no records at all;
//!    the chain stops, NOERROR, at a target that has a fault set);
//! 4. other records at `name` → NOERROR with an empty answer (NODATA);
//! 5. otherwise NXDOMAIN.
//!
//! NODATA and NXDOMAIN carry an SOA for `test.` in the authority section,
//! with its TTL and `minimum` both set to the current TTL (default 0, so
//! resolvers do not cache between test steps).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, SOA, TLSA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub use hickory_resolver::proto::rr::RecordType;

/// How many CNAME hops the server follows inside its own data.
const MAX_CNAME_HOPS: usize = 8;
/// EDNS payload size the server advertises in its responses.
const SERVER_EDNS_PAYLOAD: u16 = 1232;
/// A TCP connection with no new query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure to inject for every query of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Answer with RCODE SERVFAIL.
    ServFail,
    /// Answer with RCODE REFUSED.
    Refused,
    /// Send no answer at all: the client times out.
    Drop,
}

#[derive(Debug, Default)]
struct Zone {
    /// name key → type → record data.
    records: HashMap<String, HashMap<RecordType, Vec<RData>>>,
    faults: HashMap<String, Fault>,
    queries: HashMap<(String, RecordType), usize>,
    /// Names whose answers carry the AD (authenticated data) bit.
    authentic: HashSet<String>,
    ttl: u32,
    /// Queries with the DO bit (DNSSEC lookups), by name and type.
    dnssec_queries: HashMap<(String, RecordType), usize>,
    /// Answers to queries with the DO bit are held back this long: a slow
    /// validating resolver, or an attacker on the path delaying them.
    dnssec_delay: Duration,
}

/// The authoritative test DNS server. Stops when dropped.
pub struct DnsServer {
    /// UDP and TCP listen here (127.0.0.1, same port).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock(zone: &Mutex<Zone>) -> MutexGuard<'_, Zone> {
    // A panicking test thread must not take the fixture down with it.
    zone.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The lookup key of a name: ASCII (punycode) form, lower case, no trailing dot.
fn key(name: &str) -> String {
    let ascii = Name::from_utf8(name)
        .map(|n| n.to_ascii())
        .unwrap_or_else(|_| name.to_string());
    ascii.trim_end_matches('.').to_ascii_lowercase()
}

fn key_of(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// A fully qualified [`Name`] for `name`.
fn fqdn(name: &str) -> Name {
    let k = key(name);
    Name::from_ascii(format!("{k}."))
        .unwrap_or_else(|e| panic!("invalid DNS name {name:?} for the test DNS server: {e}"))
}

impl DnsServer {
    /// Binds UDP on 127.0.0.1:0, then TCP on the same port (retrying with a
    /// new port if that one is taken for TCP), and starts serving.
    pub async fn start() -> DnsServer {
        let (udp, tcp) = bind_pair().await;
        DnsServer::serve(udp, tcp)
    }

    /// Serves UDP and TCP on a given address (e.g. 127.0.0.1:53 inside a
    /// network namespace).
    pub async fn start_on(addr: SocketAddr) -> DnsServer {
        let udp = UdpSocket::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind DNS UDP on {addr}: {e}"));
        let tcp = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind DNS TCP on {addr}: {e}"));
        DnsServer::serve(udp, tcp)
    }

    fn serve(udp: UdpSocket, tcp: TcpListener) -> DnsServer {
        let addr = udp
            .local_addr()
            .expect("local address of the DNS UDP socket");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, zone.clone())),
            tokio::spawn(serve_tcp(tcp, zone.clone())),
        ];
        DnsServer { addr, zone, tasks }
    }

    fn set_rrset(&self, name: &str, rtype: RecordType, data: Vec<RData>) {
        let mut zone = lock(&self.zone);
        let k = key(name);
        if data.is_empty() {
            if let Some(types) = zone.records.get_mut(&k) {
                types.remove(&rtype);
                if types.is_empty() {
                    zone.records.remove(&k);
                }
            }
        } else {
            zone.records.entry(k).or_default().insert(rtype, data);
        }
    }

    /// Replaces all TXT records at `name`. Each inner slice is the list of
    /// character-strings of one TXT record (so one record may be split over
    /// several strings). An empty `records` removes the TXT records.
    pub fn set_txt(&self, name: &str, records: &[&[&str]]) {
        let data = records
            .iter()
            .map(|strings| RData::TXT(TXT::new(strings.iter().map(|s| s.to_string()).collect())))
            .collect();
        self.set_rrset(name, RecordType::TXT, data);
    }

    /// Replaces all A records at `name`.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        let data = ips.iter().map(|ip| RData::A(A(*ip))).collect();
        self.set_rrset(name, RecordType::A, data);
    }

    /// Replaces all AAAA records at `name`.
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr]) {
        let data = ips.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect();
        self.set_rrset(name, RecordType::AAAA, data);
    }

    /// Replaces all MX records at `name`; each entry is `(preference, exchange)`.
    pub fn set_mx(&self, name: &str, mx: &[(u16, &str)]) {
        let data = mx
            .iter()
            .map(|(pref, exchange)| RData::MX(MX::new(*pref, fqdn(exchange))))
            .collect();
        self.set_rrset(name, RecordType::MX, data);
    }

    /// Replaces all CAA records at `name` with one `issue` record per CA
    /// domain (e.g. `letsencrypt.org`); `";"` (no CA) is written as `None`.
    pub fn set_caa_issue(&self, name: &str, cas: &[Option<&str>]) {
        let data = cas
            .iter()
            .map(|ca| RData::CAA(CAA::new_issue(false, ca.map(fqdn), Vec::new())))
            .collect();
        self.set_rrset(name, RecordType::CAA, data);
    }

    /// Replaces all TLSA records at `name` (e.g. `_25._tcp.mx.example.test`);
    /// each entry is `(usage, selector, matching, data)`.
    pub fn set_tlsa(&self, name: &str, records: &[(u8, u8, u8, &[u8])]) {
        let data = records
            .iter()
            .map(|(u, s, m, d)| {
                RData::TLSA(TLSA::new(
                    CertUsage::from(*u),
                    Selector::from(*s),
                    Matching::from(*m),
                    d.to_vec(),
                ))
            })
            .collect();
        self.set_rrset(name, RecordType::TLSA, data);
    }

    /// Marks answers for `name` (any type) as DNSSEC-authenticated (AD bit
    /// set), as a validating resolver would for a signed zone.
    pub fn set_authentic(&self, name: &str, authentic: bool) {
        let mut zone = lock(&self.zone);
        if authentic {
            zone.authentic.insert(key(name));
        } else {
            zone.authentic.remove(&key(name));
        }
    }

    /// Sets the CNAME at `name` to `target`. Other record types at `name` are
    /// left alone (records of the asked type win over the CNAME).
    pub fn set_cname(&self, name: &str, target: &str) {
        self.set_rrset(
            name,
            RecordType::CNAME,
            vec![RData::CNAME(CNAME(fqdn(target)))],
        );
    }

    /// Removes every record at `name` (faults stay). The name is then
    /// NXDOMAIN.
    pub fn remove(&self, name: &str) {
        lock(&self.zone).records.remove(&key(name));
    }

    /// Removes the records of one type at `name`.
    pub fn remove_type(&self, name: &str, rtype: RecordType) {
        self.set_rrset(name, rtype, Vec::new());
    }

    /// Queries for `name` (any type) get `fault`; `None` clears it.
    pub fn set_fault(&self, name: &str, fault: Option<Fault>) {
        let mut zone = lock(&self.zone);
        match fault {
            Some(f) => {
                zone.faults.insert(key(name), f);
            }
            None => {
                zone.faults.remove(&key(name));
            }
        }
    }

    /// TTL of answers and of the negative-caching SOA. Default 0.
    pub fn set_ttl(&self, ttl: u32) {
        lock(&self.zone).ttl = ttl;
    }

    /// How many queries for `(name, rtype)` arrived, UDP and TCP together
    /// (a truncated UDP answer retried over TCP counts twice).
    pub fn queries(&self, name: &str, rtype: RecordType) -> usize {
        lock(&self.zone)
            .queries
            .get(&(key(name), rtype))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets all query counts.
    pub fn reset_queries(&self) {
        let mut zone = lock(&self.zone);
        zone.queries.clear();
        zone.dnssec_queries.clear();
    }

    /// Of [`queries`](Self::queries), those with the DO bit set.
    pub fn dnssec_queries(&self, name: &str, rtype: RecordType) -> usize {
        lock(&self.zone)
            .dnssec_queries
            .get(&(key(name), rtype))
            .copied()
            .unwrap_or(0)
    }

    /// Every query that arrived, any name and type: `(all, with DO)`.
    pub fn total_queries(&self) -> (usize, usize) {
        let zone = lock(&self.zone);
        (
            zone.queries.values().sum(),
            zone.dnssec_queries.values().sum(),
        )
    }

    /// Holds back the answer to every query with the DO bit for `delay`
    /// (zero: answer at once). Other queries are answered at once.
    pub fn set_dnssec_delay(&self, delay: Duration) {
        lock(&self.zone).dnssec_delay = delay;
    }
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the test DNS UDP socket on 127.0.0.1");
        let port = udp
            .local_addr()
            .expect("local address of the DNS UDP socket")
            .port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("could not bind UDP and TCP on the same loopback port: {last_err:?}");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(_) => {
                // Transient (e.g. ICMP-reported errors): keep serving.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        match respond(&zone, &buf[..len], true) {
            Some((response, delay)) if delay.is_zero() => {
                let _ = socket.send_to(&response, peer).await;
            }
            Some((response, delay)) => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&response, peer).await;
                });
            }
            None => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                conns.spawn(serve_tcp_conn(stream, zone.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some((response, delay)) = respond(&zone, &packet, false) else {
            continue; // malformed, or Fault::Drop: say nothing
        };
        tokio::time::sleep(delay).await;
        let Ok(response_len) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&response_len.to_be_bytes());
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The SOA put in the authority section of negative answers.
fn negative_soa(ttl: u32) -> Record {
    let soa = SOA::new(
        fqdn("ns.test"),
        fqdn("hostmaster.test"),
        1,
        3600,
        600,
        86_400,
        ttl,
    );
    Record::from_rdata(fqdn("test"), ttl, RData::SOA(soa))
}

/// Answers a query from the zone data: (rcode, answers, negative?).
fn lookup(zone: &Zone, qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>, bool) {
    let ttl = zone.ttl;
    let mut answers = Vec::new();
    let mut owner = qname.clone();
    for hop in 0..=MAX_CNAME_HOPS {
        let k = key_of(&owner);
        if hop > 0 && zone.faults.contains_key(&k) {
            // Let the client query the faulty target itself.
            return (ResponseCode::NoError, answers, false);
        }
        let Some(types) = zone.records.get(&k) else {
            return (ResponseCode::NXDomain, answers, true);
        };
        if let Some(data) = types.get(&qtype) {
            answers.extend(
                data.iter()
                    .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata.clone())),
            );
            return (ResponseCode::NoError, answers, false);
        }
        let target = types
            .get(&RecordType::CNAME)
            .and_then(|data| data.first())
            .and_then(|rdata| match rdata {
                RData::CNAME(CNAME(target)) => Some(target.clone()),
                _ => None,
            });
        match target {
            Some(target) => {
                answers.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                owner = target;
            }
            None => return (ResponseCode::NoError, answers, true),
        }
    }
    // Chain too long: hand back what we have.
    (ResponseCode::NoError, answers, false)
}

/// Builds the wire response for one query packet and how long to hold it
/// back; `None` = send nothing.
fn respond(zone: &Mutex<Zone>, packet: &[u8], udp: bool) -> Option<(Vec<u8>, Duration)> {
    let request = Message::from_vec(packet).ok()?;
    let dnssec = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    let mut delay = Duration::ZERO;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(SERVER_EDNS_PAYLOAD);
        response.set_edns(edns);
    }

    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
    } else if request.queries.len() != 1 {
        response.metadata.response_code = ResponseCode::FormErr;
    } else {
        let query = &request.queries[0];
        let qname = query.name();
        let qtype = query.query_type();
        let k = key_of(qname);
        let mut zone = lock(zone);
        *zone.queries.entry((k.clone(), qtype)).or_default() += 1;
        if dnssec {
            *zone.dnssec_queries.entry((k.clone(), qtype)).or_default() += 1;
            delay = zone.dnssec_delay;
        }
        match zone.faults.get(&k) {
            Some(Fault::Drop) => return None,
            Some(Fault::ServFail) => {
                response.metadata.authoritative = false;
                response.metadata.response_code = ResponseCode::ServFail;
            }
            Some(Fault::Refused) => {
                response.metadata.authoritative = false;
                response.metadata.response_code = ResponseCode::Refused;
            }
            None => {
                let (rcode, answers, negative) = lookup(&zone, qname, qtype);
                response.metadata.response_code = rcode;
                response.metadata.authentic_data = zone.authentic.contains(&k);
                response.add_answers(answers);
                if negative {
                    response.add_authority(negative_soa(zone.ttl));
                }
            }
        }
    }

    let bytes = response.to_vec().ok()?;
    let limit = usize::from(request.max_payload());
    if udp && bytes.len() > limit {
        // Too big for the client's UDP buffer: TC bit, no records, so the
        // client retries over TCP.
        return response.truncate().to_vec().ok().map(|b| (b, delay));
    }
    Some((bytes, delay))
}
