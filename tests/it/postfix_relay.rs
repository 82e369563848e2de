//! A real Postfix (each version the machine has: Debian 12's 3.7, and 3.10
//! and 3.11 from Debian roots) as the upstream MTA of our relay, set up
//! with the lines of `contrib/postfix/relayhost.cf.snippet` as shipped. In
//! a private network namespace: Postfix takes a message on 127.0.0.1:25 and
//! hands it to our relay on 127.0.0.1:10025 (running in this process, on a
//! thread inside the namespace), which delivers it over validated TLS to the
//! fixture MX that the recipient domain's enforce policy admits, on port 25.
//!
//! The Postfix configuration also carries a `smtp_tls_policy_maps` socketmap
//! that nobody answers, before the snippet, as an admin who first used
//! `main.cf.snippet` would have: the snippet must switch it off, or Postfix
//! would defer at the first hop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mta_sts_agent::config::Config;
use mta_sts_agent::relay::Relay;

use crate::harness::{eventually, policy, World};
use crate::postfix_e2e::{add_netns, available, enter_netns, postfix_instance_for, run};
use crate::relay::{message, relay_toml};
use crate::support::postfix::Postfix;
use crate::support::smtp::{ReceivedMessage, SmtpOptions, SmtpServer};

const DOMAIN: &str = "enforce.test";
const RCPT: &str = "user@enforce.test";
const SENDER: &str = "sender@client.test";

/// What the fixture thread saw once the message arrived (or time ran out).
struct Outcome {
    delivered: Vec<ReceivedMessage>,
    rogue_connections: usize,
    queue_empty: bool,
    submit_reply: (u16, String),
}

#[test]
fn postfix_relayhost_snippet_hands_mail_to_the_relay_which_enforces_mta_sts() {
    if !available() {
        return;
    }
    for pf in crate::support::postfix::all() {
        relay_through(&pf);
    }
}

fn relay_through(postfix: &Postfix) {
    let started = Instant::now();
    let snippet_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/postfix/relayhost.cf.snippet");
    let snippet = std::fs::read_to_string(&snippet_path).expect("read relayhost.cf.snippet");
    assert!(
        snippet
            .lines()
            .any(|l| l.trim() == "relayhost = [127.0.0.1]:10025"),
        "the snippet no longer points at [127.0.0.1]:10025; update this test"
    );

    let ns = format!("mtstsrelay{}v{}", std::process::id(), postfix.tag());
    let mut cleanup = add_netns(&ns);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();

    // The world (DNS, policy hosts, CA), the MX fixtures and the relay live
    // on a thread inside the namespace.
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let ns_in = ns.clone();
    let fixtures = std::thread::spawn(move || -> Outcome {
        enter_netns(&ns_in);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let world = World::new().await;
            let good = mx_on(&world, 2, "mx1.enforce.test", true).await;
            // Preferred, with a valid certificate, but not in the policy:
            // only the relay's MTA-STS check keeps mail away from it.
            let rogue = mx_on(&world, 3, "rogue.enforce.test", false).await;
            world
                .dns
                .set_a("mx1.enforce.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
            world
                .dns
                .set_a("rogue.enforce.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
            world.dns.set_mx(
                DOMAIN,
                &[(5, "rogue.enforce.test"), (10, "mx1.enforce.test")],
            );
            world.publish(
                DOMAIN,
                "pf1",
                &policy("enforce", &["mx1.enforce.test"], 86_400),
            );

            let text = format!(
                "{}{}",
                world.config_toml(),
                relay_toml(25, "listen = [\"127.0.0.1:10025\"]")
            );
            let config = Config::parse(&text, Path::new("postfix-relay.toml")).expect("config");
            let resolver = world.resolver_with(&config);
            let relay = Relay::open(&config, resolver)
                .await
                .expect("open the relay");
            let queue = relay.queue.clone();
            let listeners = mta_sts_agent::relay::server::bind(&config.relay)
                .await
                .expect("bind the relay on 127.0.0.1:10025");
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let relay_task = tokio::spawn(relay.serve(listeners, stop_rx));
            ready_tx.send(()).unwrap();

            // Once Postfix is up, submit to its smtpd like any client would.
            loop {
                match go_rx.try_recv() {
                    Ok(()) => break,
                    Err(mpsc::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(mpsc::TryRecvError::Disconnected) => panic!("the test gave up"),
                }
            }
            let postfix = SocketAddr::from(([127, 0, 0, 1], 25));
            let msg = message("pf-relay", SENDER, RCPT, "hello through two MTAs\r\n");
            // What `sendmail -N success,delay -R hdrs -V pf+env` asks for,
            // given to Postfix's smtpd: its smtp client passes the DSN
            // parameters on to our relay, which passes them on again.
            let (_, reply) = crate::relay_dsn::submit_lines(
                postfix,
                &format!("MAIL FROM:<{SENDER}> RET=HDRS ENVID=pf+2Benv"),
                &[&format!(
                    "RCPT TO:<{RCPT}> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;{RCPT}"
                )],
                &msg,
            )
            .await;
            let submit_reply = (reply.code, reply.to_string());
            if reply.code == 250 {
                eventually(Duration::from_secs(60), || {
                    let n = good.message_count();
                    async move { n > 0 }
                })
                .await;
            }
            let q = queue.clone();
            let queue_empty = eventually(Duration::from_secs(5), || {
                let q = q.clone();
                async move { q.is_empty() }
            })
            .await;
            let outcome = Outcome {
                delivered: good.messages(),
                rogue_connections: rogue.connections(),
                queue_empty,
                submit_reply,
            };
            let _ = stop_tx.send(true);
            relay_task.abort();
            outcome
        })
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        drop(cleanup);
        match fixtures.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => panic!("the fixtures never became ready"),
        }
    }

    let pf = base.join("postfix");
    std::fs::create_dir_all(&pf).unwrap();
    let main_cf = format!(
        "smtp_tls_security_level = may
# As left by main.cf.snippet; nothing answers on this port.
smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix
# contrib/postfix/relayhost.cf.snippet as shipped:
{snippet}"
    );
    postfix_instance_for(postfix, &pf, &main_cf);
    let resolv = base.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    cleanup.postfix_dir = Some(pf.clone());
    cleanup.postfix = Some((postfix.clone(), base.clone()));
    run(postfix
        .command("postfix", &base, Some(&resolv), Some(&ns))
        .arg("-c")
        .arg(&pf)
        .arg("start"));
    go_tx.send(()).unwrap();

    let outcome = fixtures.join();
    let log = std::fs::read_to_string(pf.join("maillog")).unwrap_or_default();
    drop(cleanup);
    let outcome = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    println!("{postfix} → relay → MX took {:?}", started.elapsed());

    assert_eq!(
        outcome.submit_reply.0, 250,
        "Postfix refused the message: {}; log:\n{log}",
        outcome.submit_reply.1
    );
    assert_eq!(
        outcome.delivered.len(),
        1,
        "the policy's MX did not get exactly one message; Postfix log:\n{log}"
    );
    let m = &outcome.delivered[0];
    assert!(m.tls, "the relay delivered without TLS");
    assert_eq!(m.helo, "relay.test", "not delivered by our relay");
    assert_eq!(m.mail_from, SENDER);
    assert_eq!(m.rcpt_to, vec![RCPT.to_string()]);
    // RFC 3461 end to end: Postfix → our relay → the MX, byte for byte.
    assert!(
        m.mail_line.ends_with(" RET=HDRS ENVID=pf+2Benv"),
        "{postfix}: {}",
        m.mail_line
    );
    assert_eq!(
        m.rcpt_lines,
        vec![format!(
            "RCPT TO:<{RCPT}> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;{RCPT}"
        )],
        "{postfix}"
    );
    let data = String::from_utf8_lossy(&m.data);
    assert!(data.contains("hello through two MTAs"), "{data}");
    // Newest first: our relay's Received, then Postfix's.
    let received: Vec<String> = headers(&data)
        .into_iter()
        .filter(|h| h.to_ascii_lowercase().starts_with("received:"))
        .collect();
    assert!(received.len() >= 2, "Received chain: {received:#?}");
    assert!(
        received[0].contains("by relay.test (mta-sts-agent)")
            && received[0].contains("(127.0.0.1)"),
        "first Received is not our relay's: {received:#?}"
    );
    assert!(
        received[1].contains("by client.test (Postfix)"),
        "second Received is not Postfix's: {received:#?}"
    );
    assert_eq!(
        outcome.rogue_connections, 0,
        "the relay contacted an MX host outside the policy"
    );
    assert!(outcome.queue_empty, "the relay still holds the message");
    assert!(
        log.contains("relay=127.0.0.1[127.0.0.1]:10025") && log.contains("status=sent"),
        "Postfix did not log the hand-over to the relay:\n{log}"
    );
    // Postfix warns that the snippet overrides the socketmap; any other
    // mention of it would be a lookup.
    let lookups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("socketmap") && !l.contains("overriding earlier entry"))
        .collect();
    assert!(
        lookups.is_empty(),
        "Postfix still used the socketmap: {lookups:#?}"
    );
}

/// An MX fixture with a certificate from the world's CA on 127.0.0.`last`:25.
async fn mx_on(world: &World, last: u8, name: &str, dsn: bool) -> SmtpServer {
    SmtpServer::start_on(
        &world.ca,
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        25,
        SmtpOptions::new(name).dsn(dsn),
    )
    .await
    .unwrap_or_else(|e| panic!("MX fixture on 127.0.0.{last}:25: {e}"))
}

/// The header fields of a message, continuation lines unfolded.
fn headers(data: &str) -> Vec<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        match out.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}
