//! A real DNSSEC set-up on loopback: zones signed at test time with
//! `ldns-signzone`, served by NSD, and Unbound as the validating resolver
//! the agent is pointed at (with the zones' DS records as trust anchors),
//! exactly as a site runs a local validating resolver for Postfix's DANE.
//!
//! Debian packages: unbound, nsd, ldnsutils (CI installs them).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How a zone is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed, with a trust anchor: answers validate (AD bit).
    Secure,
    /// Unsigned and declared insecure: answers never carry AD.
    Insecure,
    /// Signed, then one record's data changed after signing: that RRset is
    /// bogus (the resolver answers SERVFAIL for it).
    Tampered { from: String, to: String },
}

#[derive(Clone, Debug)]
pub struct ZoneSpec {
    /// e.g. `dane.test`
    pub name: String,
    /// Zone-file lines relative to the zone, e.g. `@ IN MX 10 mx1`.
    pub records: Vec<String>,
    pub signing: Signing,
}

/// NSD and Unbound processes; killed when dropped.
pub struct SignedDns {
    /// Where the validating resolver listens (UDP and TCP).
    pub addr: SocketAddr,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const TOOLS: [&str; 4] = [
    "/usr/sbin/unbound",
    "/usr/sbin/nsd",
    "/usr/bin/ldns-signzone",
    "/usr/bin/ldns-keygen",
];

/// True when Unbound, NSD and ldns are installed; under CI their absence
/// is a failure.
pub fn available() -> bool {
    if TOOLS.iter().all(|t| Path::new(t).exists()) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "DNSSEC tests need unbound, nsd and ldnsutils (apt-get install unbound nsd ldnsutils)"
        );
    }
    println!("skipped: needs unbound, nsd and ldnsutils");
    false
}

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    // Free for TCP and, in practice, UDP on loopback.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl SignedDns {
    pub async fn start(zones: &[ZoneSpec]) -> SignedDns {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (auth_port, resolver_port) = (free_port(), free_port());
        let mut anchors = Vec::new();
        let mut insecure = Vec::new();
        let mut nsd_zones = String::new();
        let mut stubs = String::new();
        for z in zones {
            let mut text = format!(
                "$ORIGIN {n}.\n$TTL 300\n@ IN SOA ns.{n}. admin.{n}. 1 3600 600 86400 300\n@ IN NS ns.{n}.\nns IN A 127.0.0.1\n",
                n = z.name
            );
            for r in &z.records {
                text.push_str(r);
                text.push('\n');
            }
            let file = format!("{}.zone", z.name);
            std::fs::write(d.join(&file), text).expect("write zone");
            let served = match &z.signing {
                Signing::Insecure => {
                    insecure.push(z.name.clone());
                    file
                }
                Signing::Secure | Signing::Tampered { .. } => {
                    let ksk = run(d, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", &z.name]);
                    let zsk = run(d, "ldns-keygen", &["-a", "ECDSAP256SHA256", &z.name]);
                    run(d, "ldns-signzone", &[&file, &ksk, &zsk]);
                    let ds = std::fs::read_to_string(d.join(format!("{ksk}.ds"))).expect("DS");
                    anchors.push(ds.trim().to_string());
                    let signed = format!("{file}.signed");
                    if let Signing::Tampered { from, to } = &z.signing {
                        let path = d.join(&signed);
                        let text = std::fs::read_to_string(&path).expect("signed zone");
                        assert!(
                            text.contains(from.as_str()),
                            "{from} not in the signed zone"
                        );
                        std::fs::write(&path, text.replace(from.as_str(), to)).expect("tamper");
                    }
                    signed
                }
            };
            nsd_zones.push_str(&format!(
                "zone:\n  name: \"{}\"\n  zonefile: \"{served}\"\n",
                z.name
            ));
            stubs.push_str(&format!(
                "stub-zone:\n  name: \"{}\"\n  stub-addr: 127.0.0.1@{auth_port}\n",
                z.name
            ));
        }
        let dp = d.display();
        let nsd_conf = format!(
            "server:\n  ip-address: 127.0.0.1@{auth_port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{dp}\"\n  database: \"\"\n  zonelistfile: \"{dp}/zone.list\"\n  xfrdfile: \"{dp}/xfrd.state\"\n  pidfile: \"{dp}/nsd.pid\"\n  logfile: \"{dp}/nsd.log\"\n  xfrdir: \"{dp}\"\n  server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\n{nsd_zones}"
        );
        std::fs::write(d.join("nsd.conf"), nsd_conf).expect("nsd.conf");
        let mut unbound_conf = format!(
            "server:\n  interface: 127.0.0.1@{resolver_port}\n  port: {resolver_port}\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dp}\"\n  pidfile: \"{dp}/unbound.pid\"\n  use-syslog: no\n  logfile: \"{dp}/unbound.log\"\n  verbosity: 1\n  do-not-query-localhost: no\n  module-config: \"validator iterator\"\n  qname-minimisation: no\n  access-control: 127.0.0.0/8 allow\n  local-zone: \"test.\" nodefault\n  val-log-level: 2\n"
        );
        for a in &anchors {
            unbound_conf.push_str(&format!("  trust-anchor: \"{a}\"\n"));
        }
        for z in &insecure {
            unbound_conf.push_str(&format!("  domain-insecure: \"{z}\"\n"));
        }
        unbound_conf.push_str("remote-control:\n  control-enable: no\n");
        unbound_conf.push_str(&stubs);
        std::fs::write(d.join("unbound.conf"), unbound_conf).expect("unbound.conf");

        let spawn = |cmd: &str, conf: &str| {
            Command::new(cmd)
                .args(["-d", "-c", conf])
                .current_dir(d)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{cmd}: {e}"))
        };
        let children = vec![
            spawn("/usr/sbin/nsd", "nsd.conf"),
            spawn("/usr/sbin/unbound", "unbound.conf"),
        ];
        let addr = SocketAddr::from(([127, 0, 0, 1], resolver_port));
        let auth = SocketAddr::from(([127, 0, 0, 1], auth_port));
        let mut ready = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && tokio::net::TcpStream::connect(auth).await.is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
        assert!(
            ready,
            "NSD or Unbound did not start:\n{}\n{}",
            log("nsd.log"),
            log("unbound.log")
        );
        SignedDns {
            addr,
            children,
            _dir: dir,
        }
    }
}

/// The active attacker of RFC 8461 §10 on the path between the agent and
/// its validating resolver: every query is passed on to `upstream` (over
/// the transport it came on) except those the attacker forges, answered
/// with records of its own and without the AD bit (it cannot sign for the
/// victim), and the DNSSEC queries (DO bit set) it drops, so that the
/// client times out on exactly those. Stops when dropped.
pub struct OnPath {
    pub addr: SocketAddr,
    rules: std::sync::Arc<std::sync::Mutex<Rules>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Rules {
    forged: std::collections::HashMap<(String, RecordType), Vec<RData>>,
    /// Forged for plain queries only; DNSSEC queries pass.
    forged_plain: std::collections::HashMap<(String, RecordType), Vec<RData>>,
    drop_dnssec: std::collections::HashSet<(String, RecordType)>,
    /// Queries seen, by (name, type, DO bit).
    seen: std::collections::HashMap<(String, RecordType, bool), usize>,
}

use hickory_resolver::proto::op::{Message, MessageType};
use hickory_resolver::proto::rr::rdata::MX;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

fn name_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Drop for OnPath {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const ON_PATH_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

impl OnPath {
    /// Listens on 127.0.0.1 (UDP and TCP, one port) in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> OnPath {
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind UDP");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let rules = std::sync::Arc::new(std::sync::Mutex::new(Rules::default()));
        let udp = std::sync::Arc::new(udp);
        let (r1, r2) = (rules.clone(), rules.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_535];
                loop {
                    let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    let packet = buf[..len].to_vec();
                    let (udp, rules) = (udp.clone(), r1.clone());
                    tokio::spawn(async move {
                        if let Some(reply) = answer(&rules, &packet, upstream, true).await {
                            let _ = udp.send_to(&reply, peer).await;
                        }
                    });
                }
            }),
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = tcp.accept().await else {
                        continue;
                    };
                    let rules = r2.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        loop {
                            let mut len = [0u8; 2];
                            if stream.read_exact(&mut len).await.is_err() {
                                return;
                            }
                            let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if stream.read_exact(&mut packet).await.is_err() {
                                return;
                            }
                            let Some(reply) = answer(&rules, &packet, upstream, false).await else {
                                continue;
                            };
                            let Ok(n) = u16::try_from(reply.len()) else {
                                return;
                            };
                            let mut framed = n.to_be_bytes().to_vec();
                            framed.extend_from_slice(&reply);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }),
        ];
        OnPath { addr, rules, tasks }
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers MX queries for `domain` (with or without DO) with these
    /// records, unsigned.
    pub fn forge_mx(&self, domain: &str, mx: &[(u16, &str)]) {
        let data = mx_data(mx);
        self.rules()
            .forged
            .insert((name_key(domain), RecordType::MX), data);
    }

    /// Like [`forge_mx`](Self::forge_mx), for plain queries only (no DO
    /// bit): DNSSEC queries get the true, signed answer.
    pub fn forge_mx_plain(&self, domain: &str, mx: &[(u16, &str)]) {
        let data = mx_data(mx);
        self.rules()
            .forged_plain
            .insert((name_key(domain), RecordType::MX), data);
    }

    /// Drops every DNSSEC query (DO bit set) for `(name, rtype)`.
    pub fn drop_dnssec(&self, name: &str, rtype: RecordType) {
        self.rules().drop_dnssec.insert((name_key(name), rtype));
    }

    /// Queries that arrived for `(name, rtype)`; `dnssec`: those with DO.
    pub fn queries(&self, name: &str, rtype: RecordType, dnssec: bool) -> usize {
        self.rules()
            .seen
            .get(&(name_key(name), rtype, dnssec))
            .copied()
            .unwrap_or(0)
    }
}

fn mx_data(mx: &[(u16, &str)]) -> Vec<RData> {
    mx.iter()
        .map(|(pref, host)| {
            let name = Name::from_ascii(format!("{}.", name_key(host))).expect("MX host name");
            RData::MX(MX::new(*pref, name))
        })
        .collect()
}

/// The attacker's reply to one query packet; `None`: say nothing.
async fn answer(
    rules: &std::sync::Mutex<Rules>,
    packet: &[u8],
    upstream: SocketAddr,
    udp: bool,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    if request.metadata.message_type != MessageType::Query || request.queries.len() != 1 {
        return None;
    }
    let q = &request.queries[0];
    let k = (name_key(&q.name().to_ascii()), q.query_type());
    let dnssec = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    let forged = {
        let mut r = rules.lock().unwrap_or_else(|p| p.into_inner());
        *r.seen.entry((k.0.clone(), k.1, dnssec)).or_default() += 1;
        if dnssec && r.drop_dnssec.contains(&k) {
            return None;
        }
        let plain = if dnssec { None } else { r.forged_plain.get(&k) };
        plain.or_else(|| r.forged.get(&k)).cloned()
    };
    if let Some(data) = forged {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authentic_data = false;
        response.add_queries(request.queries.iter().cloned());
        if let Some(edns) = &request.edns {
            let mut e = hickory_resolver::proto::op::Edns::new();
            e.set_max_payload(edns.max_payload().max(512));
            response.set_edns(e);
        }
        response.add_answers(
            data.into_iter()
                .map(|d| Record::from_rdata(q.name().clone(), 60, d)),
        );
        return response.to_vec().ok();
    }
    tokio::time::timeout(ON_PATH_UPSTREAM_TIMEOUT, forward(packet, upstream, udp))
        .await
        .ok()
        .flatten()
}

async fn forward(packet: &[u8], upstream: SocketAddr, udp: bool) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if udp {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
        s.send_to(packet, upstream).await.ok()?;
        let mut buf = vec![0u8; 65_535];
        let n = s.recv(&mut buf).await.ok()?;
        buf.truncate(n);
        return Some(buf);
    }
    let mut s = tokio::net::TcpStream::connect(upstream).await.ok()?;
    let n = u16::try_from(packet.len()).ok()?;
    let mut framed = n.to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    s.write_all(&framed).await.ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply).await.ok()?;
    Some(reply)
}
