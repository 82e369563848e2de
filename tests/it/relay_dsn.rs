//! Delivery Status Notifications through the relay (RFC 3461, RFC 3464):
//! the parameters a client gives at MAIL and RCPT, what reaches a next hop
//! with and without DSN, and the reports the relay writes itself.

use std::net::SocketAddr;
use std::time::Duration;

use mta_sts_agent::smtp::{Reply, SmtpConn};
use tokio::net::TcpStream;

use crate::harness::eventually;
use crate::relay::{message, publish_enforce, reports, stuffed, text, Rig, LIMIT};
use crate::support::smtp::SmtpOptions;

/// One transaction with the given MAIL and RCPT lines, exactly as written.
/// Returns the EHLO keywords and the reply that ended the attempt.
pub(crate) async fn submit_lines(
    addr: SocketAddr,
    mail: &str,
    rcpts: &[&str],
    msg: &str,
) -> (Vec<String>, Reply) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(10));
    assert_eq!(c.read_reply().await.expect("greeting").code, 220);
    let ehlo = c.ehlo("client.test").await.expect("EHLO");
    let keywords = ehlo.extensions.clone();
    let r = c.command(mail).await.expect("MAIL");
    if !r.is_positive() {
        return (keywords, r);
    }
    for rcpt in rcpts {
        let r = c.command(rcpt).await.expect("RCPT");
        if !r.is_positive() {
            return (keywords, r);
        }
    }
    let r = c.command("DATA").await.expect("DATA");
    if r.code != 354 {
        return (keywords, r);
    }
    c.write_raw(&stuffed(msg)).await.expect("send the message");
    let end = c.read_reply().await.expect("reply to the end of data");
    c.quit().await;
    (keywords, end)
}

/// A rig with `dsn.test` (one MX, enforce policy, `opts`) and the sender's
/// domain `sender.test` (no policy) that receives the reports.
async fn rig(opts: SmtpOptions, extra: &str) -> Rig {
    let rig = Rig::start(
        vec![
            ("mx1.dsn.test", 51, opts),
            ("mx1.sender.test", 52, SmtpOptions::new("mx1.sender.test")),
        ],
        extra,
    )
    .await;
    rig.world.dns.set_mx("dsn.test", &[(10, "mx1.dsn.test")]);
    rig.world
        .dns
        .set_mx("sender.test", &[(10, "mx1.sender.test")]);
    publish_enforce(&rig.world, "dsn.test", &["mx1.dsn.test"]);
    rig
}

#[tokio::test]
async fn dsn_parameters_reach_a_next_hop_that_offers_dsn_byte_exact() {
    let rig = rig(SmtpOptions::new("mx1.dsn.test").dsn(true), "").await;
    let msg = message("dsn-on", "alice@sender.test", "bob@dsn.test", "hi\r\n");
    let (keywords, reply) = submit_lines(
        rig.addr,
        "MAIL FROM:<alice@sender.test> RET=HDRS ENVID=QQ+2B314159",
        &[
            "RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@dsn.test",
            "RCPT TO:<carol@dsn.test> notify=never",
            "RCPT TO:<dave@dsn.test>",
        ],
        &msg,
    )
    .await;
    assert!(keywords.iter().any(|k| k == "DSN"), "{keywords:?}");
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    let got = rig.mx[0].messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(
        m.mail_line
            .starts_with("MAIL FROM:<alice@sender.test> SIZE="),
        "{}",
        m.mail_line
    );
    assert!(
        m.mail_line
            .ends_with(" BODY=8BITMIME RET=HDRS ENVID=QQ+2B314159"),
        "{}",
        m.mail_line
    );
    assert_eq!(
        m.rcpt_lines,
        vec![
            "RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@dsn.test",
            "RCPT TO:<carol@dsn.test> NOTIFY=NEVER",
            "RCPT TO:<dave@dsn.test>",
        ]
    );
    // The next hop reports from now on: nothing from us.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(reports(&rig.mx[1]).is_empty(), "we reported a DSN hop");
}

#[tokio::test]
async fn without_dsn_at_the_next_hop_success_is_reported_as_relayed() {
    let rig = rig(SmtpOptions::new("mx1.dsn.test"), "").await;
    let msg = message("dsn-off", "alice@sender.test", "bob@dsn.test", "hi\r\n");
    let (_, reply) = submit_lines(
        rig.addr,
        "MAIL FROM:<alice@sender.test> RET=FULL ENVID=env-1",
        &[
            "RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS ORCPT=rfc822;bob@dsn.test",
            "RCPT TO:<carol@dsn.test> NOTIFY=FAILURE",
        ],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    let got = rig.mx[0].messages();
    assert_eq!(got.len(), 1);
    // Nothing the hop did not offer (the fixture would refuse it with 555).
    assert!(!got[0].mail_line.contains("RET="), "{}", got[0].mail_line);
    assert!(!got[0].mail_line.contains("ENVID="), "{}", got[0].mail_line);
    assert_eq!(
        got[0].rcpt_lines,
        vec!["RCPT TO:<bob@dsn.test>", "RCPT TO:<carol@dsn.test>"]
    );
    let ok = {
        let mx = &rig.mx[1];
        eventually(LIMIT, || async { !reports(mx).is_empty() }).await
    };
    assert!(ok, "no relayed DSN");
    let dsn = reports(&rig.mx[1]);
    assert_eq!(dsn.len(), 1, "exactly one report");
    assert_eq!(dsn[0].rcpt_to, vec!["alice@sender.test".to_string()]);
    let t = text(&dsn[0]);
    for needle in [
        "multipart/report; report-type=delivery-status",
        "Original-Envelope-Id: env-1",
        "Original-Recipient: rfc822; bob@dsn.test",
        "Final-Recipient: rfc822; bob@dsn.test",
        "Action: relayed",
        "Status: 2.0.0",
        "Remote-MTA: dns; mx1.dsn.test",
    ] {
        assert!(t.contains(needle), "report lacks {needle:?}:\n{t}");
    }
    // carol asked for failures only; RET=FULL is for failure reports.
    assert!(!t.contains("carol@dsn.test"), "{t}");
    assert!(t.contains("text/rfc822-headers"), "{t}");
}

#[tokio::test]
async fn notify_never_and_ret_decide_the_bounce() {
    let opts = SmtpOptions::new("mx1.dsn.test")
        .reject_rcpt("never@dsn.test")
        .reject_rcpt("full@dsn.test")
        .reject_rcpt("hdrs@dsn.test");
    let rig = rig(opts, "").await;
    let body = "the secret body line\r\n";
    // NOTIFY=NEVER: no report at all.
    let msg = message("never", "alice@sender.test", "never@dsn.test", body);
    let (_, reply) = submit_lines(
        rig.addr,
        "MAIL FROM:<alice@sender.test>",
        &["RCPT TO:<never@dsn.test> NOTIFY=NEVER"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(rig.wait_empty(LIMIT).await, "{:#?}", rig.queue.list());
    // RET=FULL: the whole message comes back.
    let msg = message("full", "alice@sender.test", "full@dsn.test", body);
    let (_, reply) = submit_lines(
        rig.addr,
        "MAIL FROM:<alice@sender.test> RET=FULL ENVID=full+2B1",
        &["RCPT TO:<full@dsn.test> ORCPT=rfc822;full@dsn.test"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[1];
        eventually(LIMIT, || async { reports(mx).len() == 1 }).await
    };
    assert!(ok, "no bounce for RET=FULL");
    let t = text(&reports(&rig.mx[1])[0]);
    for needle in [
        "Action: failed",
        "Status: 5.1.1",
        "Original-Envelope-Id: full+1",
        "Original-Recipient: rfc822; full@dsn.test",
        "Content-Type: message/rfc822",
        body.trim_end(),
    ] {
        assert!(t.contains(needle), "bounce lacks {needle:?}:\n{t}");
    }
    // RET=HDRS: the header section only.
    let msg = message("hdrs", "alice@sender.test", "hdrs@dsn.test", body);
    let (_, reply) = submit_lines(
        rig.addr,
        "MAIL FROM:<alice@sender.test> RET=HDRS",
        &["RCPT TO:<hdrs@dsn.test>"],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[1];
        eventually(LIMIT, || async { reports(mx).len() == 2 }).await
    };
    assert!(ok, "no bounce for RET=HDRS");
    let all = reports(&rig.mx[1]);
    let t = text(&all[1]);
    assert!(t.contains("Subject: relay test hdrs"), "{t}");
    assert!(t.contains("text/rfc822-headers"), "{t}");
    assert!(
        !t.contains(body.trim_end()),
        "RET=HDRS returned the body:\n{t}"
    );
    assert!(!t.contains("Original-Envelope-Id"), "{t}");
    // And never one for NOTIFY=NEVER, whatever came later.
    assert!(
        all.iter().all(|m| !text(m).contains("never@dsn.test")),
        "a NOTIFY=NEVER recipient was reported"
    );
}

#[tokio::test]
async fn delay_is_reported_once_when_asked_for() {
    let opts = SmtpOptions::new("mx1.dsn.test").data_reply("451 4.3.0 try later");
    let rig = rig(opts, "delay_warning_after = \"2s\"").await;
    let msg = message("delay", "alice@sender.test", "bob@dsn.test", "hi\r\n");
    let (_, reply) = submit_lines(
        rig.addr,
        "MAIL FROM:<alice@sender.test> ENVID=slow",
        &[
            "RCPT TO:<bob@dsn.test> NOTIFY=DELAY,FAILURE",
            "RCPT TO:<carol@dsn.test>",
        ],
        &msg,
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    let ok = {
        let mx = &rig.mx[1];
        eventually(LIMIT, || async { !reports(mx).is_empty() }).await
    };
    assert!(ok, "no delay DSN");
    // Further retries (one a second) do not warn again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = reports(&rig.mx[1]);
    assert_eq!(all.len(), 1, "one delay warning only");
    let t = text(&all[0]);
    for needle in [
        "Subject: Delayed Mail (still being retried)",
        "Action: delayed",
        "Final-Recipient: rfc822; bob@dsn.test",
        "Will-Retry-Until: ",
        "Original-Envelope-Id: slow",
        "Status: 4.3.0",
    ] {
        assert!(t.contains(needle), "delay DSN lacks {needle:?}:\n{t}");
    }
    // carol gave no NOTIFY: failures only.
    assert!(!t.contains("carol@dsn.test"), "{t}");
    assert_eq!(rig.queue.len(), 1, "the message is still queued");
}

#[tokio::test]
async fn bad_dsn_parameters_are_refused_with_the_rfc_codes() {
    let rig = rig(SmtpOptions::new("mx1.dsn.test"), "").await;
    let tcp = TcpStream::connect(rig.addr).await.expect("connect");
    let mut c = SmtpConn::new(tcp, Duration::from_secs(10));
    c.read_reply().await.expect("greeting");
    c.ehlo("client.test").await.expect("EHLO");
    for (line, want) in [
        ("MAIL FROM:<a@sender.test> RET=BODY", "501 5.5.4"),
        ("MAIL FROM:<a@sender.test> ENVID=a+2b", "501 5.5.4"),
        (
            &*format!("MAIL FROM:<a@sender.test> ENVID={}", "e".repeat(101)),
            "501 5.5.4",
        ),
        ("MAIL FROM:<a@sender.test> NOTIFY=NEVER", "555 5.5.4"),
        // REQUIRETLS without TLS (RFC 8689 §2 offers it on TLS only).
        ("MAIL FROM:<a@sender.test> REQUIRETLS", "530 5.7.10"),
    ] {
        let r = c.command(line).await.expect("MAIL");
        assert_eq!(
            format!("{} {}", r.code, r.lines[0].split(' ').next().unwrap_or("")),
            want,
            "{line}: {r}"
        );
    }
    let r = c
        .command("MAIL FROM:<a@sender.test> RET=FULL ENVID=x")
        .await
        .expect("MAIL");
    assert_eq!(r.code, 250, "{r}");
    for (line, want) in [
        ("RCPT TO:<b@dsn.test> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
        ("RCPT TO:<b@dsn.test> NOTIFY=ALWAYS", "501 5.5.4"),
        ("RCPT TO:<b@dsn.test> ORCPT=b@dsn.test", "501 5.5.4"),
        (
            "RCPT TO:<b@dsn.test> ORCPT=rfc822;b+2@dsn.test",
            "501 5.5.4",
        ),
        ("RCPT TO:<b@dsn.test> RET=FULL", "555 5.5.4"),
    ] {
        let r = c.command(line).await.expect("RCPT");
        assert_eq!(
            format!("{} {}", r.code, r.lines[0].split(' ').next().unwrap_or("")),
            want,
            "{line}: {r}"
        );
    }
    c.quit().await;
}
