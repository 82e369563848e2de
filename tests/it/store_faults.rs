//! The policy store on a filesystem of its own that the test fills up
//! (a tmpfs with `size=`, mounted by the test as root): lookups keep being
//! answered, a policy that cannot be written is still used (and not fetched
//! again at every lookup), and once space returns writes resume without a
//! restart and the policies kept in memory reach the disk.

use std::path::Path;
use std::time::Duration;

use mta_sts_agent::resolver::Resolver;
use mta_sts_agent::store::PolicyStore;

use crate::harness::{eventually, expect_policy, policy, World};
use crate::support::tmpfs::SmallFs;

/// A policy with a padded body, so each write needs fresh pages.
fn padded_policy(domain: &str) -> String {
    let mut body = policy("enforce", &[&format!("mx.{domain}")], 86400);
    for i in 0..200 {
        body.push_str(&format!("x-pad{i}: {}\n", "p".repeat(100)));
    }
    body
}

fn resolver_on(w: &World, state: &Path) -> Resolver {
    let mut cfg = w.config();
    cfg.state_dir = Some(state.to_path_buf());
    w.resolver_with(&cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_persistence_only_and_recovers_without_restart() {
    let w = World::new().await;
    let Some(fs) = SmallFs::mount(&w.dir.path().join("small"), "3m") else {
        return;
    };
    let state = fs.dir().join("state");
    let r = resolver_on(&w, &state);
    w.publish("kept.test", "1", &padded_policy("kept.test"));
    expect_policy(&r.lookup("kept.test").await.unwrap());

    let filler = fs.fill();
    // Fetch new domains until a write has failed for sure; each fetched
    // policy is answered all the same.
    let mut domains = Vec::new();
    for i in 0..40 {
        let d = format!("full{i}.test");
        w.publish(&d, "1", &padded_policy(&d));
        let answer = r.lookup(&d).await.unwrap();
        assert!(expect_policy(&answer).policy.allows_mx(&format!("mx.{d}")));
        domains.push(d);
        if r.store().disk_failed() {
            break;
        }
    }
    assert!(
        r.store().disk_failed(),
        "the full disk never failed a write"
    );
    // The policy that could not be written is used, from memory, without
    // being fetched again at each lookup.
    let last = domains.last().unwrap().clone();
    for _ in 0..5 {
        expect_policy(&r.lookup(&last).await.unwrap());
    }
    assert_eq!(w.fetches(&last), 1, "fetched once, used from memory");
    expect_policy(&r.lookup("kept.test").await.unwrap());

    // Space returns; the next write reopens the store, without a restart.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.publish("after.test", "1", &padded_policy("after.test"));
    expect_policy(&r.lookup("after.test").await.unwrap());
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = r.clone();
            async move {
                let _ = r.lookup("after.test").await;
                !r.store().disk_failed()
            }
        })
        .await,
        "the store did not recover"
    );

    // Everything is on disk now, the policies kept in memory included.
    drop(r);
    let mut reopened = None;
    for _ in 0..100 {
        match PolicyStore::open(&state, 100) {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let store = reopened.expect("reopen the store");
    let on_disk: Vec<String> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|p| p.domain.clone())
        .collect();
    for d in domains
        .iter()
        .chain(["kept.test".to_string(), "after.test".to_string()].iter())
    {
        assert!(on_disk.contains(d), "{d} not on disk: {on_disk:?}");
    }
}

/// A truncated or garbage `policies.redb` at start-up: the daemon starts,
/// says what it did, answers, and the broken file is kept aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_starts_over_a_broken_policy_store() {
    use crate::daemon::{daemon_config, free_port, write_file, Daemon};
    use crate::socketmap::lookup;

    let w = World::new().await;
    w.publish(
        "broken.test",
        "1",
        &policy("enforce", &["mx.broken.test"], 86400),
    );
    // A store with a policy in it, then cut short.
    {
        let r = w.resolver();
        expect_policy(&r.lookup("broken.test").await.unwrap());
    }
    let file = w.state_dir().join("policies.redb");
    // The resolver's background tasks may hold the store (and its file
    // lock) a moment after it is dropped; the daemon needs it free.
    let free = crate::harness::eventually(std::time::Duration::from_secs(10), || {
        let file = file.clone();
        async move { redb::Database::open(&file).is_ok() }
    })
    .await;
    assert!(
        free,
        "the test's own resolver still holds {}",
        file.display()
    );
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&file, &bytes).unwrap();

    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_file(w.dir.path(), "agent.toml", &daemon_config(&w, port));
    let mut daemon = Daemon::start(&config, addr, w.dir.path().join("daemon.log")).await;
    assert!(
        lookup(addr, "postfix", "broken.test")
            .await
            .starts_with("OK secure"),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(log.contains("policy store unreadable; set aside"), "{log}");
    daemon.stop().await;
    let aside: Vec<_> = std::fs::read_dir(w.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("policies.redb.broken-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the broken file is kept for inspection");
}
