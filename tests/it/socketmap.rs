//! The socketmap server in-process, spoken to over real sockets with raw
//! netstrings, resolving through the fixture DNS and HTTPS policy hosts.
//!
//! The client helpers here (`Server`, `ask`, `lookup`, `read_reply`) are also
//! used by the `daemon` and `postmap` tests.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use mta_sts_agent::config::{Config, MapConfig};

use crate::harness::{self, World};
use crate::support::dns::{Fault, RecordType};

/// Longest wait for one reply: a first lookup may run discovery and fetch
/// for up to `first_lookup_deadline` (4 s in the test config).
pub(crate) const REPLY_WAIT: Duration = Duration::from_secs(6);

pub(crate) const ENFORCE_REPLY: &str =
    "OK secure match=mx1.enforce.test:.mx.enforce.test servername=hostname";

/// Publishes the domains most tests use: `enforce.test`, `testing.test` and
/// `none.test`. `nothing.test` is left unpublished (NXDOMAIN).
pub(crate) fn publish_standard(world: &World) {
    world.publish(
        "enforce.test",
        "1",
        &harness::policy("enforce", &["mx1.enforce.test", "*.mx.enforce.test"], 86400),
    );
    world.publish(
        "testing.test",
        "1",
        &harness::policy("testing", &["mx1.testing.test"], 86400),
    );
    world.publish(
        "none.test",
        "1",
        &harness::policy("none", &["mx1.none.test"], 86400),
    );
}

/// The world's configuration, listening on `listen` only.
pub(crate) fn config_listening(world: &World, listen: &[&str]) -> Config {
    let mut config = world.config();
    config.socketmap.listen = listen.iter().map(|s| s.to_string()).collect();
    config
}

/// A socketmap server running in this process.
pub(crate) struct Server {
    pub addrs: Vec<SocketAddr>,
    pub shutdown: watch::Sender<bool>,
    pub task: JoinHandle<()>,
}

impl Server {
    /// Binds `config`'s listeners and serves them with a resolver over the
    /// world's fixtures and state dir.
    pub(crate) async fn start(world: &World, config: Config) -> Server {
        let listeners = mta_sts_agent::socketmap::bind(&config)
            .await
            .unwrap_or_else(|e| panic!("bind {:?}: {e}", config.socketmap.listen));
        let addrs = listeners.tcp_addrs();
        let resolver = world.resolver_with(&config);
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            mta_sts_agent::socketmap::serve(listeners, resolver, &config, rx).await;
        });
        Server {
            addrs,
            shutdown,
            task,
        }
    }

    /// The first TCP address.
    pub(crate) fn addr(&self) -> SocketAddr {
        *self.addrs.first().expect("the server has a TCP listener")
    }
}

/// Encodes one netstring.
pub(crate) fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

/// What reading one reply found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    Reply(String),
    /// EOF (or a reset) before the first byte of a reply.
    Closed,
    TimedOut,
}

impl Read {
    #[track_caller]
    pub(crate) fn reply(self) -> String {
        match self {
            Read::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Reads one netstring reply byte by byte (so nothing after it is consumed).
async fn read_netstring<S: AsyncRead + Unpin>(stream: &mut S) -> Read {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) if digits == 0 => return Read::Closed,
            Ok(0) => panic!("server closed the connection inside a reply's length"),
            Err(e) if digits == 0 && is_reset(&e) => return Read::Closed,
            Err(e) => panic!("reading a reply: {e}"),
            Ok(_) => {}
        }
        match byte[0] {
            b @ b'0'..=b'9' if digits < 7 => {
                len = len * 10 + usize::from(b - b'0');
                digits += 1;
            }
            b':' if digits > 0 => break,
            other => panic!(
                "server sent a malformed netstring: byte {:?} after {digits} digits",
                char::from(other)
            ),
        }
    }
    let mut payload = vec![0u8; len + 1];
    stream
        .read_exact(&mut payload)
        .await
        .unwrap_or_else(|e| panic!("reading a {len}-byte reply: {e}"));
    assert_eq!(payload.pop(), Some(b','), "reply netstring ends with ','");
    Read::Reply(String::from_utf8(payload).expect("reply is UTF-8"))
}

/// Reads one reply, waiting at most `limit`.
pub(crate) async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Read {
    tokio::time::timeout(limit, read_netstring(stream))
        .await
        .unwrap_or(Read::TimedOut)
}

/// Sends `<map> <key>` on `stream` and returns the reply.
pub(crate) async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    map: &str,
    key: &str,
) -> String {
    stream
        .write_all(&netstring(format!("{map} {key}").as_bytes()))
        .await
        .expect("write request");
    match read_reply(stream, REPLY_WAIT).await {
        Read::Reply(r) => r,
        other => panic!("request '{map} {key}': expected a reply, got {other:?}"),
    }
}

/// One lookup on a new TCP connection.
pub(crate) async fn lookup(addr: SocketAddr, map: &str, key: &str) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to the socketmap server at {addr}: {e}"));
    ask(&mut stream, map, key).await
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_map_to_postfix_replies() {
    let world = World::new().await;
    publish_standard(&world);
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    let mut conn = connect(server.addr()).await;

    assert_eq!(
        ask(&mut conn, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
    assert_eq!(ask(&mut conn, "postfix", "testing.test").await, "NOTFOUND ");
    assert_eq!(ask(&mut conn, "postfix", "none.test").await, "NOTFOUND ");
    assert_eq!(ask(&mut conn, "postfix", "nothing.test").await, "NOTFOUND ");
    // Postfix sends keys as it found them: case and a trailing dot do not
    // matter, and the second lookup is served from the cache.
    assert_eq!(
        ask(&mut conn, "postfix", "ENFORCE.Test.").await,
        ENFORCE_REPLY
    );
    assert_eq!(world.fetches("enforce.test"), 1);
    assert_eq!(
        world.fetches("testing.test"),
        1,
        "testing policy was fetched"
    );
    assert_eq!(
        world.dns.queries("_mta-sts.nothing.test", RecordType::TXT),
        1,
        "the unpublished domain was looked up once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_map_applies_its_own_settings() {
    let world = World::new().await;
    publish_standard(&world);
    let mut config = config_listening(&world, &["127.0.0.1:0"]);
    config.socketmap.maps.insert(
        "strict".to_string(),
        MapConfig {
            testing_as_enforce: true,
            servername: false,
            match_current_mx: false,
            tlsrpt: false,
            dane: Default::default(),
        },
    );
    let server = Server::start(&world, config).await;
    let mut conn = connect(server.addr()).await;

    assert_eq!(
        ask(&mut conn, "strict", "testing.test").await,
        "OK secure match=mx1.testing.test"
    );
    assert_eq!(ask(&mut conn, "postfix", "testing.test").await, "NOTFOUND ");
    assert_eq!(
        ask(&mut conn, "strict", "enforce.test").await,
        "OK secure match=mx1.enforce.test:.mx.enforce.test"
    );
    assert_eq!(
        ask(&mut conn, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
    // none stays none whatever the map says.
    assert_eq!(ask(&mut conn, "strict", "none.test").await, "NOTFOUND ");

    let reply = ask(&mut conn, "nomap", "other.test").await;
    assert!(reply.starts_with("PERM "), "unknown map: {reply:?}");
    assert!(
        reply.contains("nomap") && reply.contains("postfix") && reply.contains("strict"),
        "the PERM reason names the map and the configured ones: {reply:?}"
    );
    assert_eq!(
        world.dns.queries("_mta-sts.other.test", RecordType::TXT),
        0,
        "a request for an unknown map looks nothing up"
    );
    // The connection survives a PERM answer.
    assert_eq!(
        ask(&mut conn, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_not_domains_are_not_looked_up() {
    let world = World::new().await;
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    world.dns.reset_queries();
    let mut conn = connect(server.addr()).await;

    // (key, TXT names a careless server would have queried)
    let cases: &[(&str, &[&str])] = &[
        (
            "[192.0.2.1]",
            &["_mta-sts.[192.0.2.1]", "_mta-sts.192.0.2.1"],
        ),
        (
            "[mail.example.test]:587",
            &[
                "_mta-sts.[mail.example.test]:587",
                "_mta-sts.mail.example.test",
            ],
        ),
        (
            ".parent.test",
            &["_mta-sts.parent.test", "_mta-sts..parent.test"],
        ),
        ("192.0.2.1", &["_mta-sts.192.0.2.1"]),
        ("2001:db8::1", &["_mta-sts.2001:db8::1"]),
        (
            "localhost",
            &["_mta-sts.localhost", "_mta-sts.localhost.test"],
        ),
        // Single label: hickory may answer `localhost` names itself, so
        // this one proves that the server (not the DNS library) stops them.
        (
            "relayhost",
            &["_mta-sts.relayhost", "_mta-sts.relayhost.test"],
        ),
    ];
    for (key, _) in cases {
        assert_eq!(
            ask(&mut conn, "postfix", key).await,
            "NOTFOUND ",
            "key {key}"
        );
    }
    for (key, names) in cases {
        for name in *names {
            assert_eq!(
                world.dns.queries(name, RecordType::TXT),
                0,
                "key {key}: the server queried TXT {name}"
            );
        }
    }
    // Control: a real domain is looked up, so the counters above can count.
    assert_eq!(ask(&mut conn, "postfix", "nothing.test").await, "NOTFOUND ");
    assert_eq!(
        world.dns.queries("_mta-sts.nothing.test", RecordType::TXT),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_split_requests() {
    let world = World::new().await;
    publish_standard(&world);
    world.publish(
        "other.test",
        "7",
        &harness::policy("enforce", &["mx.other.test"], 86400),
    );
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    let mut conn = connect(server.addr()).await;

    let mut batch = netstring(b"postfix enforce.test");
    batch.extend(netstring(b"postfix [192.0.2.1]"));
    batch.extend(netstring(b"postfix other.test"));
    conn.write_all(&batch).await.unwrap();
    assert_eq!(
        read_reply(&mut conn, REPLY_WAIT).await.reply(),
        ENFORCE_REPLY
    );
    assert_eq!(read_reply(&mut conn, REPLY_WAIT).await.reply(), "NOTFOUND ");
    assert_eq!(
        read_reply(&mut conn, REPLY_WAIT).await.reply(),
        "OK secure match=mx.other.test servername=hostname"
    );

    // One request dribbled in over several writes, the last one also
    // carrying the start of the next request.
    let first = netstring(b"postfix other.test");
    let second = netstring(b"postfix enforce.test");
    let mut bytes = first.clone();
    bytes.extend(&second);
    let cuts = [1, 2, 3, first.len() - 1, first.len() + 4, bytes.len()];
    let mut from = 0;
    for cut in cuts {
        conn.write_all(&bytes[from..cut]).await.unwrap();
        conn.flush().await.unwrap();
        from = cut;
        if cut == first.len() - 1 {
            assert_eq!(
                read_reply(&mut conn, Duration::from_millis(200)).await,
                Read::TimedOut,
                "no reply before the request is complete"
            );
        }
    }
    assert_eq!(
        read_reply(&mut conn, REPLY_WAIT).await.reply(),
        "OK secure match=mx.other.test servername=hostname"
    );
    assert_eq!(
        read_reply(&mut conn, REPLY_WAIT).await.reply(),
        ENFORCE_REPLY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() {
    let world = World::new().await;
    publish_standard(&world);
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    let mut good = connect(server.addr()).await;
    assert_eq!(
        ask(&mut good, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );

    let cases: &[(&str, &[u8])] = &[
        ("non-digit length", b"abc:"),
        ("missing comma", b"3:abcX"),
        // Refused as soon as the length is known: the server must not wait
        // for 10001 bytes (its idle timeout is 60 s here).
        ("oversized length", b"10001:"),
        ("overflowing length", b"99999999999999999999999999:"),
        ("empty length", b":abc,"),
        ("negative length", b"-1:,"),
    ];
    for (what, bytes) in cases {
        let mut bad = connect(server.addr()).await;
        bad.write_all(bytes).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            read_reply(&mut bad, Duration::from_secs(3)).await,
            Read::Closed,
            "{what}: the connection is closed without a reply"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{what}");
        assert_eq!(
            ask(&mut good, "postfix", "enforce.test").await,
            ENFORCE_REPLY,
            "after {what}, the other connection still works"
        );
    }

    // Well framed but not '<map> <key>': a PERM answer, not a dead server.
    let mut odd = connect(server.addr()).await;
    odd.write_all(b"7:postfix,").await.unwrap();
    let reply = read_reply(&mut odd, REPLY_WAIT).await.reply();
    assert!(
        reply.starts_with("PERM "),
        "request without a space: {reply:?}"
    );
    odd.write_all(&netstring(b"postfix \xff\xfe.test"))
        .await
        .unwrap();
    let reply = read_reply(&mut odd, REPLY_WAIT).await.reply();
    assert!(reply.starts_with("PERM "), "non-UTF-8 request: {reply:?}");
    assert_eq!(
        ask(&mut good, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_do_not_block_a_lookup() {
    let world = World::new().await;
    publish_standard(&world);
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    // Warm the cache so the timed lookup below measures only the server.
    assert_eq!(
        lookup(server.addr(), "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );

    let mut idle = Vec::with_capacity(200);
    for _ in 0..200 {
        idle.push(connect(server.addr()).await);
    }
    let started = Instant::now();
    let mut conn = connect(server.addr()).await;
    conn.write_all(&netstring(b"postfix enforce.test"))
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut conn, Duration::from_secs(2)).await.reply(),
        ENFORCE_REPLY
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The idle ones were accepted and are served too.
    for stream in idle.iter_mut().step_by(50) {
        assert_eq!(ask(stream, "postfix", "enforce.test").await, ENFORCE_REPLY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_idle_timeout() {
    let world = World::new().await;
    publish_standard(&world);
    let mut config = config_listening(&world, &["127.0.0.1:0"]);
    config.socketmap.idle_timeout = Duration::from_secs(1);
    let server = Server::start(&world, config).await;

    let started = Instant::now();
    let mut silent = connect(server.addr()).await;
    assert_eq!(
        read_reply(&mut silent, Duration::from_secs(3)).await,
        Read::Closed,
        "a silent connection is closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed by the idle timer, not at once: {waited:?}"
    );

    // The timer restarts with every request: a connection that asks, then
    // falls silent, is also closed about a second later.
    let mut active = connect(server.addr()).await;
    assert_eq!(
        ask(&mut active, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        ask(&mut active, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
    let asked = Instant::now();
    assert_eq!(
        read_reply(&mut active, Duration::from_secs(3)).await,
        Read::Closed
    );
    assert!(asked.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_makes_new_clients_wait() {
    let world = World::new().await;
    publish_standard(&world);
    let mut config = config_listening(&world, &["127.0.0.1:0"]);
    config.socketmap.max_connections = 2;
    let server = Server::start(&world, config).await;

    let mut first = connect(server.addr()).await;
    let mut second = connect(server.addr()).await;
    assert_eq!(
        ask(&mut first, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
    assert_eq!(
        ask(&mut second, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );

    // The kernel completes the handshake (backlog), the server does not serve.
    let mut third = connect(server.addr()).await;
    third
        .write_all(&netstring(b"postfix enforce.test"))
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut third, Duration::from_secs(1)).await,
        Read::TimedOut,
        "a third connection is not served while two are open"
    );

    drop(first);
    assert_eq!(
        read_reply(&mut third, Duration::from_secs(3)).await.reply(),
        ENFORCE_REPLY,
        "served once a slot is free"
    );
    assert_eq!(
        ask(&mut second, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
}

/// `max_connections` caps open connections, whichever listener they came
/// through: with a cap of 1 and two listeners, one client at a time must be
/// served on either listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_is_shared_fairly_by_all_listeners() {
    let world = World::new().await;
    publish_standard(&world);
    let path = world.dir.path().join("cap.sock");
    let mut config = config_listening(
        &world,
        &["127.0.0.1:0", &format!("unix:{}", path.display())],
    );
    config.socketmap.max_connections = 1;
    let server = Server::start(&world, config).await;
    let addr = server.addr();

    // One connection at a time, each closed before the next: never more
    // than one open, so every request must be answered.
    for round in 0..2 {
        let mut tcp = connect(addr).await;
        tcp.write_all(&netstring(b"postfix enforce.test"))
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut tcp, Duration::from_secs(3)).await,
            Read::Reply(ENFORCE_REPLY.to_string()),
            "TCP client {round}, alone, is served"
        );
        drop(tcp);
    }
    for round in 0..2 {
        let mut unix = UnixStream::connect(&path).await.unwrap();
        unix.write_all(&netstring(b"postfix enforce.test"))
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut unix, Duration::from_secs(3)).await,
            Read::Reply(ENFORCE_REPLY.to_string()),
            "unix client {round}, alone, is served"
        );
        drop(unix);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_listener() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            println!("skipped: IPv6 loopback ::1 is not available here: {e}");
            return;
        }
    }
    let world = World::new().await;
    publish_standard(&world);
    let server = Server::start(&world, config_listening(&world, &["[::1]:0"])).await;
    let addr = server.addr();
    assert!(addr.is_ipv6() && addr.ip().is_loopback(), "{addr}");
    assert_eq!(lookup(addr, "postfix", "enforce.test").await, ENFORCE_REPLY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener() {
    let world = World::new().await;
    publish_standard(&world);
    let path = world.dir.path().join("sm.sock");
    // A socket file left by an earlier run.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("make a stale socket"));
    assert!(path.exists());

    let mut config = config_listening(&world, &[&format!("unix:{}", path.display())]);
    config.socketmap.unix_mode = "0660".to_string();
    let server = Server::start(&world, config).await;
    assert!(server.addrs.is_empty(), "no TCP listener");

    let meta = std::fs::metadata(&path).expect("socket file exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);

    let mut conn = UnixStream::connect(&path)
        .await
        .expect("connect to the unix socket (the stale one was replaced)");
    assert_eq!(
        ask(&mut conn, "postfix", "enforce.test").await,
        ENFORCE_REPLY
    );
    assert_eq!(ask(&mut conn, "postfix", "[192.0.2.1]").await, "NOTFOUND ");

    // A regular file in the way is never removed.
    let file = world.dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let config = config_listening(&world, &[&format!("unix:{}", file.display())]);
    let err = match mta_sts_agent::socketmap::bind(&config).await {
        Ok(_) => panic!("bind over a regular file succeeded"),
        Err(e) => e,
    };
    assert!(
        err.contains(&file.display().to_string()),
        "the error names the path: {err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_then_stops() {
    let world = World::new().await;
    publish_standard(&world);
    // Discovery of slow.test never gets a DNS answer, so its lookup runs
    // until the 1 s lookup deadline.
    world.dns.set_fault("_mta-sts.slow.test", Some(Fault::Drop));
    let mut config = config_listening(&world, &["127.0.0.1:0"]);
    config.cache.first_lookup_deadline = Duration::from_secs(1);
    let server = Server::start(&world, config).await;
    let addr = server.addr();
    assert_eq!(lookup(addr, "postfix", "enforce.test").await, ENFORCE_REPLY);

    let mut idle = connect(addr).await;
    let mut busy = connect(addr).await;
    busy.write_all(&netstring(b"postfix slow.test"))
        .await
        .unwrap();
    harness::eventually(Duration::from_secs(3), || async {
        world.dns.queries("_mta-sts.slow.test", RecordType::TXT) > 0
    })
    .await;
    assert_eq!(
        read_reply(&mut busy, Duration::from_millis(200)).await,
        Read::TimedOut,
        "the slow lookup is still running"
    );

    server.shutdown.send(true).unwrap();
    assert_eq!(
        read_reply(&mut idle, Duration::from_secs(2)).await,
        Read::Closed,
        "an idle connection is closed at shutdown"
    );
    assert_eq!(
        read_reply(&mut busy, Duration::from_secs(3)).await.reply(),
        "NOTFOUND ",
        "the request under way is answered"
    );
    assert_eq!(
        read_reply(&mut busy, Duration::from_secs(2)).await,
        Read::Closed
    );
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("serve returns after shutdown")
        .expect("serve did not panic");
    let refused = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "the port no longer accepts: {refused:?}"
    );
}
