//! RFC 8461 §3.3 policy retrieval against real HTTPS policy hosts: every way a
//! hostile or broken host can answer is refused, within bounded time and memory.

use std::time::{Duration, Instant};

use mta_sts_agent::dns::Dns;
use mta_sts_agent::fetch::{FetchError, Fetcher};
use mta_sts_agent::policy::{Mode, PolicyErrorKind};

use crate::harness::{policy, World};
use crate::support::https::{Behavior, CertMode};

const DOMAIN: &str = "fetch.test";
const HOST: &str = "mta-sts.fetch.test";

async fn world_with(behavior: Behavior) -> World {
    let w = World::new().await;
    w.publish(DOMAIN, "1", "unused");
    w.hosts.set(HOST, behavior);
    w
}

fn fetcher(w: &World, timeout: Duration) -> Fetcher {
    let mut cfg = w.config();
    cfg.fetch.timeout = timeout;
    let dns = Dns::from_config(&cfg).expect("dns");
    Fetcher::new(&cfg.fetch, &dns).expect("fetcher")
}

fn text_plain(status: u16, body: &[u8], content_length: bool) -> Behavior {
    Behavior::Response {
        status,
        content_type: Some("text/plain".into()),
        extra_headers: vec![],
        body: body.to_vec(),
        content_length,
    }
}

#[tokio::test]
async fn good_policy_is_fetched_and_parsed() {
    let body = policy("enforce", &["mx1.fetch.test", "*.fetch.test"], 86400);
    let w = world_with(Behavior::Policy(body.clone())).await;
    let got = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .expect("fetch");
    assert_eq!(got.body, body);
    assert_eq!(got.parsed.policy.mode, Mode::Enforce);
    assert_eq!(got.parsed.policy.mx.len(), 2);
    let head = w.hosts.last_request_head(HOST).expect("request seen");
    assert!(
        head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("user-agent: mta-sts-agent/"),
        "{head}"
    );
}

#[tokio::test]
async fn media_type_parameters_and_case_are_accepted() {
    let body = policy("testing", &["mx.fetch.test"], 600);
    let w = world_with(Behavior::Response {
        status: 200,
        content_type: Some("TEXT/Plain; charset=\"utf-8\"".into()),
        extra_headers: vec![],
        body: body.into_bytes(),
        content_length: false,
    })
    .await;
    let got = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .expect("fetch");
    assert_eq!(got.parsed.policy.mode, Mode::Testing);
}

#[tokio::test]
async fn one_mebibyte_body_is_refused_with_and_without_content_length() {
    for content_length in [true, false] {
        let w = world_with(Behavior::Huge {
            size: 1 << 20,
            content_length,
        })
        .await;
        let err = fetcher(&w, Duration::from_secs(5))
            .fetch(DOMAIN)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 65536 }),
            "content_length={content_length}: {err}"
        );
    }
}

#[tokio::test]
async fn body_just_over_64k_is_refused_and_64k_accepted() {
    let mut body = policy("none", &[], 600).into_bytes();
    let pad = 65536 - body.len();
    body.extend(std::iter::repeat_n(b'\n', pad));
    let w = world_with(text_plain(200, &body, false)).await;
    fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .expect("exactly 64 KiB is fine");
    body.push(b'\n');
    w.hosts.set(HOST, text_plain(200, &body, false));
    let err = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn trickling_body_is_cut_at_the_deadline() {
    let w = world_with(Behavior::Trickle {
        body: policy("enforce", &["mx.fetch.test"], 600).into_bytes(),
        interval: Duration::from_millis(200),
    })
    .await;
    let started = Instant::now();
    let err = fetcher(&w, Duration::from_secs(1))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout(..)), "{err}");
    // The deadline covers the body: the fetch ends near 1 s, not after the
    // ~15 s the trickle would take.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn silent_host_times_out() {
    let w = world_with(Behavior::Hang).await;
    let err = fetcher(&w, Duration::from_secs(1))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout(..)), "{err}");
    assert_eq!(err.class(), "timeout");
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let w = world_with(Behavior::Redirect(
        "https://mta-sts.other.test/.well-known/mta-sts.txt".into(),
    ))
    .await;
    w.publish(
        "other.test",
        "1",
        &policy("enforce", &["mx.other.test"], 600),
    );
    let err = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    match &err {
        FetchError::Redirect { status, location } => {
            assert_eq!(*status, 301);
            assert!(location.contains("mta-sts.other.test"), "{location}");
        }
        other => panic!("expected a redirect error, got {other}"),
    }
    assert_eq!(
        w.fetches("other.test"),
        0,
        "the redirect target was contacted"
    );
}

#[tokio::test]
async fn wrong_media_type_is_refused() {
    let body = policy("enforce", &["mx.fetch.test"], 600).into_bytes();
    for ct in [Some("text/html"), Some("application/octet-stream"), None] {
        let w = world_with(Behavior::Response {
            status: 200,
            content_type: ct.map(String::from),
            extra_headers: vec![],
            body: body.clone(),
            content_length: true,
        })
        .await;
        let err = fetcher(&w, Duration::from_secs(2))
            .fetch(DOMAIN)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::ContentType(_)), "{ct:?}: {err}");
    }
}

#[tokio::test]
async fn only_status_200_is_accepted() {
    let body = policy("enforce", &["mx.fetch.test"], 600).into_bytes();
    for status in [204u16, 404, 500, 503] {
        let w = world_with(text_plain(status, &body, true)).await;
        let err = fetcher(&w, Duration::from_secs(2))
            .fetch(DOMAIN)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Status(s) if s == status),
            "{status}: {err}"
        );
    }
}

#[tokio::test]
async fn bad_certificates_are_refused() {
    let body = policy("enforce", &["mx.fetch.test"], 600);
    for (mode, expect) in [
        (CertMode::SelfSigned, "issuer"),
        (CertMode::Expired, "expired"),
        (CertMode::WrongName, "name"),
    ] {
        let w = world_with(Behavior::Policy(body.clone())).await;
        w.hosts.set_cert(HOST, mode);
        let err = fetcher(&w, Duration::from_secs(2))
            .fetch(DOMAIN)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Tls(_)), "{mode:?}: {err}");
        assert!(
            err.to_string().to_lowercase().contains(expect),
            "{mode:?}: {err}"
        );
        assert_eq!(
            w.fetches(DOMAIN),
            0,
            "{mode:?}: an HTTP request was sent over an untrusted connection"
        );
    }
}

#[tokio::test]
async fn invalid_policy_names_line_and_rule() {
    let w = world_with(Behavior::Policy(
        "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 600\n".into(),
    ))
    .await;
    let err = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    match &err {
        FetchError::Invalid(e) => {
            assert_eq!(e.line, Some(3));
            assert!(matches!(e.kind, PolicyErrorKind::BadMx { .. }));
        }
        other => panic!("expected invalid policy, got {other}"),
    }
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[tokio::test]
async fn policy_host_without_address_is_a_dns_error() {
    let w = world_with(Behavior::Policy(policy("none", &[], 60))).await;
    w.dns.remove(HOST);
    let err = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Dns(_)), "{err}");
}

#[tokio::test]
async fn refused_tls_handshake_is_a_tls_failure() {
    // The host resolves and accepts TCP, but has no certificate for the name
    // and aborts the handshake with an alert.
    let w = world_with(Behavior::Policy(policy("none", &[], 60))).await;
    w.hosts.remove(HOST);
    let err = fetcher(&w, Duration::from_secs(2))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");
    assert_eq!(err.class(), "tls");
}
