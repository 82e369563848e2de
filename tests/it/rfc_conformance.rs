//! The RFC cases peers' test vectors found, end to end: published over the
//! fixture DNS and HTTPS hosts, answered through the socketmap.

use crate::harness::{self, World};
use crate::socketmap::{config_listening, lookup, Server};

/// RFC 8461 §3.2: "If any non-repeated field--i.e., all fields excepting
/// "mx"--is duplicated, all entries except for the first SHALL be ignored."
/// A domain that publishes `mode: enforce` and then `mode: testing` is
/// enforced, not left without a policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fields_keep_the_first_value() {
    let world = World::new().await;
    world.publish(
        "twice.test",
        "1",
        "version: STSv1\nmode: enforce\nmode: testing\nmx: mx.twice.test\nmax_age: 86400\nmax_age: 60\n",
    );
    world.publish(
        "same.test",
        "1",
        "version: STSv1\nversion: STSv1\nmode: enforce\nmode: enforce\nmx: mx.same.test\nmax_age: 86400\n",
    );
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    assert_eq!(
        lookup(server.addr(), "postfix", "twice.test").await,
        "OK secure match=mx.twice.test servername=hostname"
    );
    assert_eq!(
        lookup(server.addr(), "postfix", "same.test").await,
        "OK secure match=mx.same.test servername=hostname"
    );
    let _ = server.shutdown.send(true);
    let _ = server.task.await;
    let p = world
        .resolver()
        .cached("twice.test")
        .await
        .expect("store")
        .expect("stored policy");
    assert_eq!(p.policy.max_age, 86400, "the first max_age counts");
}

/// RFC 8461 §3.1: a record outside the ABNF (WSP without ';', or ';;') means
/// "senders MUST assume the recipient domain does not implement MTA-STS".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_records_outside_the_grammar_mean_no_policy() {
    let world = World::new().await;
    let body = harness::policy("enforce", &["mx.x.test"], 86400);
    for (domain, record) in [
        ("space.test", "v=STSv1; id=1 "),
        ("semis.test", "v=STSv1; id=1;;"),
        ("fine.test", "v=STSv1 ; id=1 ;"),
    ] {
        world.publish(domain, "1", &body);
        world
            .dns
            .set_txt(&format!("_mta-sts.{domain}"), &[&[record]]);
    }
    let server = Server::start(&world, config_listening(&world, &["127.0.0.1:0"])).await;
    assert!(lookup(server.addr(), "postfix", "space.test")
        .await
        .starts_with("NOTFOUND"));
    assert!(lookup(server.addr(), "postfix", "semis.test")
        .await
        .starts_with("NOTFOUND"));
    assert_eq!(world.fetches("space.test") + world.fetches("semis.test"), 0);
    assert!(lookup(server.addr(), "postfix", "fine.test")
        .await
        .starts_with("OK secure"));
}
