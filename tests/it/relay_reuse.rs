//! Connection reuse and TLS session resumption in the relay (issue 13): a
//! session that took a message carries the next one to the same
//! destination, and a new connection to a known MX host resumes its TLS
//! session. Neither may ever weaken what a message is owed: a session is
//! never shared across domains, policies, MX sets or TLS demands, a dead
//! one never costs a message, and a resumed TLS session is judged on its
//! certificate exactly like a full handshake.

use std::time::Duration;

use crate::harness::{eventually, policy};
use crate::relay::{message, publish_enforce, submit, Rig, LIMIT};
use crate::relay_requiretls::{relay_cert, submit_tls};
use crate::support::smtp::{SmtpCert, SmtpOptions, SmtpServer};

fn count(server: &SmtpServer, verb: &str) -> usize {
    server
        .commands()
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(verb))
        .count()
}

/// Submits one message and waits until the relay's queue is empty again.
async fn send_and_wait(rig: &Rig, id: &str, to: &str) {
    let msg = message(id, "alice@sender.test", to, "hello\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &[to], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        rig.wait_empty(LIMIT).await,
        "not delivered: {:#?}",
        rig.queue.list()
    );
}

#[tokio::test]
async fn messages_to_one_domain_share_one_verified_session_then_it_is_closed() {
    let rig = Rig::start(
        vec![("mx1.reuse.test", 71, SmtpOptions::new("mx1.reuse.test"))],
        "connection_cache_time = \"3s\"\n",
    )
    .await;
    rig.world
        .dns
        .set_mx("reuse.test", &[(10, "mx1.reuse.test")]);
    publish_enforce(&rig.world, "reuse.test", &["mx1.reuse.test"]);
    for i in 0..4 {
        send_and_wait(&rig, &format!("r{i}"), "bob@reuse.test").await;
    }
    let mx = &rig.mx[0];
    assert_eq!(mx.message_count(), 4);
    assert!(
        mx.messages().iter().all(|m| m.tls),
        "every message over TLS"
    );
    assert_eq!(mx.connections(), 1, "commands: {:?}", mx.commands());
    assert_eq!(mx.tls_handshakes(), 1);
    // Each reuse first proves the session alive.
    assert_eq!(count(mx, "RSET"), 3, "{:?}", mx.commands());
    assert_eq!(count(mx, "QUIT"), 0, "closed too early");
    // Idle past the cache time: closed politely.
    assert!(
        eventually(Duration::from_secs(10), || async { count(mx, "QUIT") == 1 }).await,
        "the idle session was not closed: {:?}",
        mx.commands()
    );
}

#[tokio::test]
async fn sessions_are_never_shared_between_domains_on_the_same_mx() {
    let rig = Rig::start(
        vec![("mx.shared.test", 72, SmtpOptions::new("mx.shared.test"))],
        "connection_cache_time = \"30s\"\n",
    )
    .await;
    for d in ["one.test", "two.test"] {
        rig.world.dns.set_mx(d, &[(10, "mx.shared.test")]);
        publish_enforce(&rig.world, d, &["mx.shared.test"]);
    }
    send_and_wait(&rig, "d1", "bob@one.test").await;
    send_and_wait(&rig, "d2", "bob@two.test").await;
    send_and_wait(&rig, "d3", "carol@one.test").await;
    let mx = &rig.mx[0];
    assert_eq!(mx.message_count(), 3);
    // one.test's session served d1 and d3; two.test had one of its own.
    assert_eq!(mx.connections(), 2, "{:?}", mx.commands());
}

#[tokio::test]
async fn a_new_policy_never_inherits_a_session_checked_under_the_old_one() {
    let rig = Rig::start(
        vec![("mx1.change.test", 73, SmtpOptions::new("mx1.change.test"))],
        "connection_cache_time = \"30s\"\n",
    )
    .await;
    rig.world
        .dns
        .set_mx("change.test", &[(10, "mx1.change.test")]);
    rig.world.publish(
        "change.test",
        "c1",
        &policy("testing", &["mx1.change.test"], 86_400),
    );
    send_and_wait(&rig, "p1", "bob@change.test").await;
    // The domain moves to enforce: the session checked under testing is
    // not the one enforce may use.
    rig.world.publish(
        "change.test",
        "c2",
        &policy("enforce", &["mx1.change.test"], 86_400),
    );
    rig.resolver
        .refresh_now("change.test")
        .await
        .expect("refresh the policy");
    send_and_wait(&rig, "p2", "bob@change.test").await;
    let mx = &rig.mx[0];
    assert_eq!(mx.message_count(), 2);
    assert_eq!(mx.connections(), 2, "{:?}", mx.commands());
}

#[tokio::test]
async fn a_tls_required_no_session_is_never_used_for_an_enforced_message() {
    // An MX whose certificate does not match its name: only a message whose
    // sender waived the policy (RFC 8689 §4.2.2) may go there.
    let rig = Rig::start(
        vec![(
            "mx1.waive.test",
            74,
            SmtpOptions::new("mx1.waive.test").cert(SmtpCert::WrongName),
        )],
        "connection_cache_time = \"30s\"\n",
    )
    .await;
    rig.world
        .dns
        .set_mx("waive.test", &[(10, "mx1.waive.test")]);
    publish_enforce(&rig.world, "waive.test", &["mx1.waive.test"]);
    let waived = format!(
        "TLS-Required: No\r\n{}",
        message("w1", "alice@sender.test", "bob@waive.test", "x\r\n")
    );
    let reply = submit(rig.addr, "alice@sender.test", &["bob@waive.test"], &waived).await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    let mx = &rig.mx[0];
    assert_eq!(mx.message_count(), 1);
    // The same domain, the same MX, the session still open: an ordinary
    // message is held, never sent over the unverified session.
    let plain = message("w2", "alice@sender.test", "carol@waive.test", "x\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["carol@waive.test"], &plain).await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("not valid for the name", LIMIT).await;
    assert_eq!(mx.message_count(), 1, "sent over the waived session");
    assert!(mx.connections() >= 2, "{:?}", mx.commands());
}

#[tokio::test]
async fn requiretls_and_ordinary_messages_never_share_a_session() {
    let cert = relay_cert();
    let rig = Rig::start(
        vec![
            (
                "mx1.rtreuse.test",
                75,
                SmtpOptions::new("mx1.rtreuse.test").requiretls(true),
            ),
            (
                "mx1.sender.test",
                76,
                SmtpOptions::new("mx1.sender.test").requiretls(true),
            ),
        ],
        &format!("{}connection_cache_time = \"30s\"\n", cert.extra),
    )
    .await;
    let w = &rig.world;
    w.dns.set_mx("rtreuse.test", &[(10, "mx1.rtreuse.test")]);
    w.dns.set_mx("sender.test", &[(10, "mx1.sender.test")]);
    publish_enforce(w, "rtreuse.test", &["mx1.rtreuse.test"]);
    publish_enforce(w, "sender.test", &["mx1.sender.test"]);
    send_and_wait(&rig, "o1", "bob@rtreuse.test").await;
    let msg = message("q1", "alice@sender.test", "bob@rtreuse.test", "x\r\n");
    let reply = submit_tls(
        rig.addr,
        &cert.ca,
        "MAIL FROM:<alice@sender.test> REQUIRETLS",
        &["RCPT TO:<bob@rtreuse.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    let mx = &rig.mx[0];
    let msgs = mx.messages();
    assert_eq!(msgs.len(), 2);
    assert!(
        msgs[1].mail_line.contains("REQUIRETLS"),
        "{}",
        msgs[1].mail_line
    );
    assert_eq!(mx.connections(), 2, "{:?}", mx.commands());
}

#[tokio::test]
async fn a_session_the_server_dropped_costs_no_message() {
    let rig = Rig::start(
        vec![(
            "mx1.drop.test",
            77,
            SmtpOptions::new("mx1.drop.test").close_after_message(true),
        )],
        "connection_cache_time = \"30s\"\n",
    )
    .await;
    rig.world.dns.set_mx("drop.test", &[(10, "mx1.drop.test")]);
    publish_enforce(&rig.world, "drop.test", &["mx1.drop.test"]);
    for i in 0..3 {
        send_and_wait(&rig, &format!("x{i}"), "bob@drop.test").await;
    }
    let mx = &rig.mx[0];
    assert_eq!(mx.message_count(), 3, "{:?}", mx.commands());
    assert_eq!(mx.connections(), 3);
}

#[tokio::test]
async fn tls_sessions_are_resumed_and_a_resumed_session_is_still_judged() {
    // No connection reuse here: every delivery makes a new connection, and
    // the second to the same MX host resumes the TLS session.
    let rig = Rig::start(
        vec![
            ("mx1.resume.test", 78, SmtpOptions::new("mx1.resume.test")),
            (
                "mx.selfsigned.test",
                79,
                SmtpOptions::new("mx.selfsigned.test").cert(SmtpCert::SelfSigned),
            ),
        ],
        "connection_cache_time = \"0s\"\n",
    )
    .await;
    let w = &rig.world;
    w.dns.set_mx("resume.test", &[(10, "mx1.resume.test")]);
    publish_enforce(w, "resume.test", &["mx1.resume.test"]);
    send_and_wait(&rig, "t1", "bob@resume.test").await;
    send_and_wait(&rig, "t2", "bob@resume.test").await;
    let good = &rig.mx[0];
    assert_eq!(good.connections(), 2);
    assert_eq!(good.tls_handshakes(), 2);
    assert_eq!(good.tls_resumed(), 1, "the second handshake was a full one");

    // A domain without a policy delivers over the self-signed certificate
    // (opportunistic TLS), which leaves a TLS session for that host name.
    // A domain enforcing a policy for the same host then resumes it: the
    // certificate must be judged as if presented, and fail.
    let bad = &rig.mx[1];
    w.dns.set_mx("open.test", &[(10, "mx.selfsigned.test")]);
    w.dns.set_mx("strict.test", &[(10, "mx.selfsigned.test")]);
    publish_enforce(w, "strict.test", &["mx.selfsigned.test"]);
    send_and_wait(&rig, "o1", "bob@open.test").await;
    assert_eq!(bad.message_count(), 1);
    let msg = message("s1", "alice@sender.test", "bob@strict.test", "x\r\n");
    let reply = submit(rig.addr, "alice@sender.test", &["bob@strict.test"], &msg).await;
    assert_eq!(reply.code, 250, "{reply}");
    rig.wait_reason("self-signed", LIMIT).await;
    assert!(
        bad.tls_resumed() >= 1,
        "the enforced delivery did not resume"
    );
    assert_eq!(
        bad.message_count(),
        1,
        "sent over an untrusted resumed session"
    );
}

#[tokio::test]
async fn a_session_older_than_the_reuse_time_takes_no_new_message() {
    // Cached long enough to be found, but too old to be trusted with
    // another message: like Postfix's smtp_connection_reuse_time_limit.
    let rig = Rig::start(
        vec![("mx1.aged.test", 86, SmtpOptions::new("mx1.aged.test"))],
        "connection_cache_time = \"30s\"\nconnection_reuse_time = \"2s\"\n",
    )
    .await;
    rig.world.dns.set_mx("aged.test", &[(10, "mx1.aged.test")]);
    publish_enforce(&rig.world, "aged.test", &["mx1.aged.test"]);
    send_and_wait(&rig, "a1", "bob@aged.test").await;
    send_and_wait(&rig, "a2", "bob@aged.test").await;
    let mx = &rig.mx[0];
    assert_eq!(
        mx.connections(),
        1,
        "reused while young: {:?}",
        mx.commands()
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send_and_wait(&rig, "a3", "bob@aged.test").await;
    assert_eq!(mx.message_count(), 3);
    assert_eq!(
        mx.connections(),
        2,
        "an aged session was reused: {:?}",
        mx.commands()
    );
    // The aged session is closed politely, not just dropped.
    assert!(
        eventually(Duration::from_secs(10), || async { count(mx, "QUIT") >= 1 }).await,
        "the aged session was not closed: {:?}",
        mx.commands()
    );
}

#[tokio::test]
async fn no_more_sessions_sit_idle_than_there_are_delivery_slots() {
    // One delivery slot, so one idle session at most: the second domain's
    // session is closed at once instead of being cached, and the first
    // domain's stays for its next message.
    let rig = Rig::start(
        vec![("mx.capped.test", 87, SmtpOptions::new("mx.capped.test"))],
        "connection_cache_time = \"30s\"\nmax_deliveries = 1\n",
    )
    .await;
    for d in ["first.test", "second.test"] {
        rig.world.dns.set_mx(d, &[(10, "mx.capped.test")]);
        publish_enforce(&rig.world, d, &["mx.capped.test"]);
    }
    let mx = &rig.mx[0];
    send_and_wait(&rig, "c1", "bob@first.test").await;
    send_and_wait(&rig, "c2", "bob@second.test").await;
    assert!(
        eventually(Duration::from_secs(5), || async { count(mx, "QUIT") == 1 }).await,
        "the session over the cap was not closed: {:?}",
        mx.commands()
    );
    send_and_wait(&rig, "c3", "carol@first.test").await;
    send_and_wait(&rig, "c4", "carol@second.test").await;
    assert_eq!(mx.message_count(), 4);
    // first.test: one session for c1 and c3; second.test: one each for c2
    // and c4, since c2's was not kept.
    assert_eq!(mx.connections(), 3, "{:?}", mx.commands());
}
