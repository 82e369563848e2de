//! Proves the fixtures in `support` behave as documented, through real
//! clients: hickory's resolver (and raw DNS packets) for `dns`, a
//! tokio-rustls client for `https` and `ca`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use rustls::CertificateError;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use crate::support::ca::TestCa;
use crate::support::dns::{DnsServer, Fault, RecordType};
use crate::support::https::{Behavior, CertMode, PolicyHosts};

const STEP: Duration = Duration::from_secs(10);

fn resolver(dns: &DnsServer) -> TokioResolver {
    let mut server = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for conn in &mut server.connections {
        conn.port = dns.addr.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    builder.build().expect("build the hickory test resolver")
}

/// The character-strings of every TXT record in `answers`, each record joined.
fn txt_strings(answers: &[hickory_resolver::proto::rr::Record]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

async fn txt_err(resolver: &TokioResolver, name: &str) -> NetError {
    match tokio::time::timeout(STEP, resolver.txt_lookup(name))
        .await
        .expect("lookup finished in time")
    {
        Ok(lookup) => panic!("expected an error for {name}, got {:?}", lookup.answers()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn dns_txt_split_over_two_strings() {
    let dns = DnsServer::start().await;
    dns.set_txt(
        "_mta-sts.example.test",
        &[&["v=STSv1; ", "id=20240101T000000;"]],
    );
    let resolver = resolver(&dns);
    let lookup = tokio::time::timeout(STEP, resolver.txt_lookup("_MTA-STS.Example.Test."))
        .await
        .expect("lookup finished in time")
        .expect("TXT lookup succeeds");
    let txt: Vec<_> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.txt_data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(txt, vec![2], "one TXT record made of two strings");
    assert_eq!(
        txt_strings(lookup.answers()),
        vec!["v=STSv1; id=20240101T000000;".to_string()]
    );
    assert_eq!(dns.queries("_mta-sts.example.test.", RecordType::TXT), 1);

    // Zone data changes while the server runs; TTL 0 means no caching.
    dns.set_txt("_mta-sts.example.test.", &[&["v=STSv1; id=2;"]]);
    let lookup = resolver
        .txt_lookup("_mta-sts.example.test.")
        .await
        .expect("second TXT lookup succeeds");
    assert_eq!(txt_strings(lookup.answers()), vec!["v=STSv1; id=2;"]);
}

#[tokio::test]
async fn dns_nxdomain_nodata_and_faults() {
    let dns = DnsServer::start().await;
    let resolver = resolver(&dns);

    let err = txt_err(&resolver, "nothing.example.test.").await;
    assert!(err.is_nx_domain(), "unknown name is NXDOMAIN: {err:?}");

    dns.set_a("mx.example.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    let err = txt_err(&resolver, "mx.example.test.").await;
    assert!(
        err.is_no_records_found() && !err.is_nx_domain(),
        "known name, other type is NODATA: {err:?}"
    );
    let a = resolver
        .ipv4_lookup("mx.example.test.")
        .await
        .expect("A lookup succeeds");
    assert!(a
        .answers()
        .iter()
        .any(|r| matches!(&r.data, RData::A(ip) if ip.0 == Ipv4Addr::new(127, 0, 0, 2))));

    dns.set_txt("broken.example.test", &[&["v=STSv1; id=1;"]]);
    dns.set_fault("broken.example.test", Some(Fault::ServFail));
    let err = txt_err(&resolver, "broken.example.test.").await;
    assert!(
        !err.is_nx_domain() && !err.is_no_records_found(),
        "SERVFAIL is a plain error: {err:?}"
    );
    dns.set_fault("broken.example.test", Some(Fault::Refused));
    let err = txt_err(&resolver, "broken.example.test.").await;
    assert!(!err.is_nx_domain() && !err.is_no_records_found(), "{err:?}");
    dns.set_fault("broken.example.test", None);
    let ok = resolver
        .txt_lookup("broken.example.test.")
        .await
        .expect("fault cleared");
    assert_eq!(txt_strings(ok.answers()), vec!["v=STSv1; id=1;"]);

    dns.remove("mx.example.test");
    let err = txt_err(&resolver, "mx.example.test.").await;
    assert!(err.is_nx_domain(), "removed name is NXDOMAIN: {err:?}");
}

#[tokio::test]
async fn dns_cname_is_followed_and_mx_works() {
    let dns = DnsServer::start().await;
    dns.set_cname("_mta-sts.alias.test", "_mta-sts.hop.test.");
    dns.set_cname("_mta-sts.hop.test", "_mta-sts.target.test");
    dns.set_txt("_mta-sts.target.test", &[&["v=STSv1; id=cname;"]]);
    dns.set_mx(
        "alias.test",
        &[(10, "mx1.alias.test"), (20, "mx2.alias.test.")],
    );
    let resolver = resolver(&dns);

    let lookup = resolver
        .txt_lookup("_mta-sts.alias.test.")
        .await
        .expect("TXT through a CNAME chain");
    assert_eq!(txt_strings(lookup.answers()), vec!["v=STSv1; id=cname;"]);

    let mx = resolver.mx_lookup("alias.test.").await.expect("MX lookup");
    let mut got: Vec<(u16, String)> = mx
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (10, "mx1.alias.test.".to_string()),
            (20, "mx2.alias.test.".to_string())
        ]
    );
}

#[tokio::test]
async fn dns_large_answer_falls_back_to_tcp() {
    let dns = DnsServer::start().await;
    let records: Vec<String> = (0..20)
        .map(|i| format!("{i:02}{}", "x".repeat(198)))
        .collect();
    let strings: Vec<[&str; 1]> = records.iter().map(|r| [r.as_str()]).collect();
    let refs: Vec<&[&str]> = strings.iter().map(|s| &s[..]).collect();
    dns.set_txt("big.example.test", &refs);
    let resolver = resolver(&dns);

    let lookup = tokio::time::timeout(STEP, resolver.txt_lookup("big.example.test."))
        .await
        .expect("lookup finished in time")
        .expect("large TXT lookup succeeds");
    let mut got = txt_strings(lookup.answers());
    got.sort();
    assert_eq!(got, records);
    assert!(
        dns.queries("big.example.test", RecordType::TXT) >= 2,
        "truncated over UDP, retried over TCP"
    );
}

/// Sends one raw query over UDP; `None` if no answer within `wait`.
async fn raw_udp(dns: &DnsServer, query: &Message, wait: Duration) -> Option<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind client UDP socket");
    let bytes = query.to_vec().expect("encode the query");
    socket
        .send_to(&bytes, dns.addr)
        .await
        .expect("send the query");
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .expect("receive the answer");
    Some(Message::from_vec(&buf[..n]).expect("decode the answer"))
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("valid query name"),
        rtype,
    ));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        msg.set_edns(e);
    }
    msg
}

#[tokio::test]
async fn dns_wire_format_truncation_drop_and_garbage() {
    let dns = DnsServer::start().await;
    dns.set_txt("a.test", &[&["hello"]]);
    dns.set_a("b.test", &[Ipv4Addr::LOCALHOST]);
    let wait = Duration::from_secs(2);

    // Garbage is ignored and the server keeps serving.
    let junk = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind junk socket");
    junk.send_to(b"\x01\x02garbage", dns.addr)
        .await
        .expect("send junk");

    let q = query("A.test.", RecordType::TXT, None);
    let r = raw_udp(&dns, &q, wait).await.expect("an answer");
    assert_eq!(r.metadata.id, q.metadata.id);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.authoritative && r.metadata.recursion_available);
    assert!(r.metadata.recursion_desired);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.queries, q.queries, "question echoed as asked");
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 0, "default TTL is 0");

    // NODATA and NXDOMAIN carry the SOA.
    let r = raw_udp(&dns, &query("b.test.", RecordType::TXT, None), wait)
        .await
        .expect("an answer");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(
        r.authorities.first().map(|a| &a.data),
        Some(RData::SOA(_))
    ));
    dns.set_ttl(30);
    let r = raw_udp(&dns, &query("c.test.", RecordType::TXT, None), wait)
        .await
        .expect("an answer");
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    match r.authorities.first().map(|a| (a.ttl, &a.data)) {
        Some((30, RData::SOA(soa))) => assert_eq!(soa.minimum, 30),
        other => panic!("expected an SOA with TTL 30, got {other:?}"),
    }

    // 3 × 200 bytes do not fit in 512 bytes without EDNS, but fit with EDNS.
    let long = "y".repeat(200);
    dns.set_txt("d.test", &[&[&long], &[&long], &[&long]]);
    let r = raw_udp(&dns, &query("d.test.", RecordType::TXT, None), wait)
        .await
        .expect("an answer");
    assert!(r.metadata.truncation && r.answers.is_empty());
    let r = raw_udp(&dns, &query("d.test.", RecordType::TXT, Some(1232)), wait)
        .await
        .expect("an answer");
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 3);
    assert!(r.edns.is_some(), "EDNS answered with EDNS");

    dns.set_fault("a.test", Some(Fault::Drop));
    assert!(
        raw_udp(
            &dns,
            &query("a.test.", RecordType::TXT, None),
            Duration::from_millis(300)
        )
        .await
        .is_none(),
        "Fault::Drop sends nothing"
    );
    assert_eq!(dns.queries("a.test", RecordType::TXT), 2);

    // TCP: several queries on one connection.
    dns.set_fault("a.test", None);
    let mut tcp = TcpStream::connect(dns.addr).await.expect("connect TCP");
    for _ in 0..2 {
        let bytes = query("d.test.", RecordType::TXT, None)
            .to_vec()
            .expect("encode");
        let len = u16::try_from(bytes.len()).expect("small query");
        tcp.write_all(&len.to_be_bytes()).await.expect("write len");
        tcp.write_all(&bytes).await.expect("write query");
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.expect("read len");
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut buf).await.expect("read answer");
        let r = Message::from_vec(&buf).expect("decode");
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 3, "TCP is never truncated");
    }
}

fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).expect("add the test CA as a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// GETs the policy from `hosts` with SNI `sni`, trusting only `ca`; returns
/// the raw HTTP response.
async fn get_policy(hosts: &PolicyHosts, ca: &TestCa, sni: &str) -> std::io::Result<String> {
    let connector = TlsConnector::from(client_config(ca));
    let tcp = TcpStream::connect(hosts.addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("valid SNI name");
    let mut tls = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("handshake finished in time")?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {sni}\r\nUser-Agent: selftest/1\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut out = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut out))
        .await
        .expect("response finished in time")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn https_serves_policy_by_sni_and_rejects_bad_certs() {
    crate::support::install_crypto();
    let ca = TestCa::new();
    let hosts = PolicyHosts::start(&ca).await;
    let policy = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n";
    hosts.set("mta-sts.example.test", Behavior::Policy(policy.to_string()));

    let response = get_policy(&hosts, &ca, "mta-sts.example.test")
        .await
        .expect("GET over TLS succeeds");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    assert!(response.contains(&format!("Content-Length: {}\r\n", policy.len())));
    assert!(response.contains("Connection: close\r\n"));
    assert!(
        response.ends_with(&format!("\r\n\r\n{policy}")),
        "{response}"
    );
    assert_eq!(hosts.requests("mta-sts.example.test"), 1);
    let head = hosts
        .last_request_head("MTA-STS.example.test")
        .expect("request head recorded");
    assert!(head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"));
    assert!(head.contains("User-Agent: selftest/1"));

    // A host never set: no certificate, handshake fails.
    assert!(get_policy(&hosts, &ca, "mta-sts.unknown.test")
        .await
        .is_err());

    for (mode, expected) in [
        (CertMode::WrongName, CertificateError::NotValidForName),
        (CertMode::SelfSigned, CertificateError::UnknownIssuer),
        (CertMode::Expired, CertificateError::Expired),
    ] {
        hosts.set_cert("mta-sts.example.test", mode);
        let err = get_policy(&hosts, &ca, "mta-sts.example.test")
            .await
            .expect_err("a bad certificate must fail the handshake");
        let cert_err = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|e| match e {
                rustls::Error::InvalidCertificate(ce) => Some(ce.clone()),
                _ => None,
            });
        let matched = match (&cert_err, &expected) {
            (
                Some(CertificateError::NotValidForNameContext { .. }),
                CertificateError::NotValidForName,
            ) => true,
            (Some(CertificateError::ExpiredContext { .. }), CertificateError::Expired) => true,
            (Some(got), want) => got == want,
            (None, _) => false,
        };
        assert!(matched, "{mode:?}: expected {expected:?}, got {err:?}");
    }
    assert_eq!(hosts.requests("mta-sts.example.test"), 1, "no request sent");

    hosts.set_cert("mta-sts.example.test", CertMode::Valid);
    get_policy(&hosts, &ca, "mta-sts.example.test")
        .await
        .expect("valid again");
    assert_eq!(hosts.requests("mta-sts.example.test"), 2);

    hosts.remove("mta-sts.example.test");
    assert!(get_policy(&hosts, &ca, "mta-sts.example.test")
        .await
        .is_err());
}

#[tokio::test]
async fn https_behaviors() {
    crate::support::install_crypto();
    let ca = TestCa::new();
    let hosts = PolicyHosts::start(&ca).await;

    hosts.set(
        "mta-sts.redirect.test",
        Behavior::Redirect("https://elsewhere.test/".to_string()),
    );
    let r = get_policy(&hosts, &ca, "mta-sts.redirect.test")
        .await
        .expect("redirect response");
    assert!(r.starts_with("HTTP/1.1 301 "), "{r}");
    assert!(r.contains("Location: https://elsewhere.test/\r\n"));

    hosts.set(
        "mta-sts.chunked.test",
        Behavior::Response {
            status: 404,
            content_type: None,
            extra_headers: vec![("X-Test".to_string(), "1".to_string())],
            body: b"nope".to_vec(),
            content_length: false,
        },
    );
    let r = get_policy(&hosts, &ca, "mta-sts.chunked.test")
        .await
        .expect("404 response");
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
    assert!(r.contains("Transfer-Encoding: chunked\r\n") && r.contains("X-Test: 1\r\n"));
    assert!(!r.contains("Content-Type"));
    assert!(r.ends_with("\r\n\r\n4\r\nnope\r\n0\r\n\r\n"), "{r}");

    hosts.set(
        "mta-sts.huge.test",
        Behavior::Huge {
            size: 100_000,
            content_length: true,
        },
    );
    let r = get_policy(&hosts, &ca, "mta-sts.huge.test")
        .await
        .expect("huge response");
    assert!(r.contains("Content-Length: 100000\r\n"));
    assert!(r.ends_with(&"a".repeat(100_000)), "100000 bytes of body");

    hosts.set(
        "mta-sts.huge-chunked.test",
        Behavior::Huge {
            size: 20_000,
            content_length: false,
        },
    );
    let r = get_policy(&hosts, &ca, "mta-sts.huge-chunked.test")
        .await
        .expect("huge chunked response");
    assert!(r.contains("Transfer-Encoding: chunked\r\n"));
    assert!(
        r.contains("\r\n\r\n2000\r\n") && r.ends_with("\r\n0\r\n\r\n"),
        "chunk framing"
    );

    hosts.set(
        "mta-sts.trickle.test",
        Behavior::Trickle {
            body: b"abc".to_vec(),
            interval: Duration::from_millis(20),
        },
    );
    let r = get_policy(&hosts, &ca, "mta-sts.trickle.test")
        .await
        .expect("trickled response");
    assert!(
        r.contains("Content-Length: 3\r\n") && r.ends_with("\r\n\r\nabc"),
        "{r}"
    );

    hosts.set("mta-sts.hang.test", Behavior::Hang);
    let connector = TlsConnector::from(client_config(&ca));
    let tcp = TcpStream::connect(hosts.addr).await.expect("connect");
    let name = ServerName::try_from("mta-sts.hang.test").expect("valid name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: mta-sts.hang.test\r\n\r\n")
        .await
        .expect("send request");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await;
    assert!(read.is_err(), "Hang never answers");
    assert_eq!(hosts.requests("mta-sts.hang.test"), 1);

    // An oversized request head gets 431 and is not counted.
    hosts.set("mta-sts.big-head.test", Behavior::Policy("x".to_string()));
    let tcp = TcpStream::connect(hosts.addr).await.expect("connect");
    let name = ServerName::try_from("mta-sts.big-head.test").expect("valid name");
    let mut big = connector.connect(name, tcp).await.expect("handshake");
    let filler = format!("GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "f".repeat(20_000));
    big.write_all(filler.as_bytes())
        .await
        .expect("send big head");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, big.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
    assert_eq!(hosts.requests("mta-sts.big-head.test"), 0);

    // Dropping the server closes even the hanging connection.
    let addr = hosts.addr;
    drop(hosts);
    let closed = tokio::time::timeout(STEP, tls.read(&mut buf))
        .await
        .expect("hanging connection closed after drop");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "listener gone");
}

#[tokio::test]
async fn dns_server_stops_when_dropped() {
    let dns = DnsServer::start().await;
    let addr = dns.addr;
    drop(dns);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "TCP listener gone");
}

#[test]
fn ca_writes_pem() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = ca.write_pem(dir.path());
    let pem = std::fs::read_to_string(&path).expect("read ca.pem");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pem, ca.cert_pem());
    let leaf = ca.issue(&["mta-sts.example.test", "mta-sts.other.test"]);
    assert_eq!(leaf.chain.len(), 1);
    let _ = crate::support::ca::self_signed(&["x.test"]).clone();
}
