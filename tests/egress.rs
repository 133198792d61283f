//! Egress sources, pools and tenants: which local address and EHLO name a
//! message leaves with, as the receiver sees them (its peer address and
//! EHLO). Sources are 127.0.0.x addresses.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{free_port, run_briefly, wait_until, Receiver, Server, BIN};

const SOURCES: &str = "[[source]]\nname = \"ip2\"\naddress = \"127.0.0.2\"\nehlo = \"mta2.example.com\"\n\
[[source]]\nname = \"ip3\"\naddress = \"127.0.0.3\"\nehlo = \"mta3.example.com\"\n\
[[source]]\nname = \"ip4\"\naddress = \"127.0.0.4\"\nehlo = \"mta4.example.com\"\n";

fn routed(port: u16, extra: &str) -> String {
    format!(
        "threads = 1\n{SOURCES}{extra}[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n"
    )
}

/// (peer address, EHLO name) of a received message.
fn origin(m: &str) -> (String, String) {
    let field = |name: &str| {
        m.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
    };
    (field("X-Peer:"), field("X-Helo:"))
}

fn send_all(srv: &Server, n: usize, headers: &str) {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    for i in 0..n {
        c.send_message("s@example.com", &["r@y.test"], &format!("{headers}Subject: {i}\r\n\r\nbody\r\n"));
    }
    c.cmd("QUIT", "221");
}

fn count(messages: &[String]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for m in messages {
        *out.entry(origin(m)).or_default() += 1;
    }
    out
}

fn pair(ip: &str, ehlo: &str, n: usize) -> ((String, String), usize) {
    ((ip.to_owned(), ehlo.to_owned()), n)
}

/// X-Tenant picks the tenant's pool; the pool's sources take turns by
/// weight, each with its own address and EHLO name; X-Tenant and
/// X-Campaign do not reach the recipient; mail with no tenant leaves from
/// the default pool.
#[test]
fn tenants_pick_pools_and_pools_rotate_by_weight() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let extra = "[[pool]]\nname = \"marketing\"\nsources = [{ name = \"ip2\", weight = 2 }, \"ip3\"]\n\
                 [[pool]]\nname = \"transactional\"\nsources = [\"ip4\"]\n\
                 [[tenant]]\nname = \"acme\"\npool = \"marketing\"\n";
    let srv = Server::start(&format!("{}pool = \"transactional\"\n", routed(port, extra)));
    send_all(&srv, 6, "X-Tenant: acme\r\nX-Campaign: spring\r\n");
    send_all(&srv, 2, "");
    let got = rx.wait_for(8, Duration::from_secs(20));
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|m| !m.contains("X-Tenant") && !m.contains("X-Campaign")), "{}", got[0]);
    let want = BTreeMap::from([
        pair("127.0.0.2", "mta2.example.com", 4),
        pair("127.0.0.3", "mta3.example.com", 2),
        pair("127.0.0.4", "mta4.example.com", 2),
    ]);
    assert_eq!(count(&got), want);
}

/// An authenticated user's tenant is theirs whatever the headers say
/// (swaks, AUTH PLAIN); the tenant is stored with the message, so mail
/// queued before a restart leaves through its pool after it.
#[test]
fn user_tenants_and_tenants_survive_a_restart() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let hash = ringpost::auth::hash("secret").unwrap();
    let extra = format!(
        "[[pool]]\nname = \"p3\"\nsources = [\"ip3\"]\n[[pool]]\nname = \"p4\"\nsources = [\"ip4\"]\n\
         [[tenant]]\nname = \"bigco\"\npool = \"p3\"\n[[tenant]]\nname = \"other\"\npool = \"p4\"\n\
         [[user]]\naddress = \"alice@example.com\"\npassword = \"{hash}\"\ntenant = \"bigco\"\n\
         [relay]\nrelay_networks = []\n"
    );
    let dir = tempfile::tempdir().unwrap().keep();
    let held = format!("{}hold = true\n", routed(port, &extra));
    let srv = Server::start_in(&dir, &held);
    let data = dir.join("m.eml");
    std::fs::write(&data, "From: alice@example.com\r\nX-Tenant: other\r\nSubject: s\r\n\r\nbody\r\n")
        .unwrap();
    for _ in 0..2 {
        common::swaks_auth(srv.addr(), "alice@example.com", "secret", "r@y.test", &data);
    }
    assert_eq!(srv.queued_messages(), 2);
    assert_eq!(srv.stop().code(), Some(0));
    let srv = Server::start_with_config(&dir, &{
        let path = dir.join("after.toml");
        std::fs::write(&path, common::config_text(&dir, &routed(port, &extra))).unwrap();
        path
    });
    let got = rx.wait_for(2, Duration::from_secs(20));
    assert_eq!(count(&got), BTreeMap::from([pair("127.0.0.3", "mta3.example.com", 2)]));
    assert!(wait_until(Duration::from_secs(5), || srv.queued_messages() == 0));
}

/// Warm-up: a source with `max_per_day` takes that many, then the pool's
/// other sources take the rest; a pool whose sources are all spent defers
/// the mail (it stays queued).
#[test]
fn daily_caps_overflow_to_the_next_source() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let capped =
        "[[source]]\nname = \"new\"\naddress = \"127.0.0.5\"\nehlo = \"new.example.com\"\nmax_per_day = 2\n\
                  [[pool]]\nname = \"warm\"\nsources = [\"new\", \"ip2\"]\n\
                  [[pool]]\nname = \"only\"\nsources = [\"new\"]\n\
                  [[tenant]]\nname = \"a\"\npool = \"warm\"\n[[tenant]]\nname = \"b\"\npool = \"only\"\n";
    let srv = Server::start(&routed(port, capped));
    send_all(&srv, 6, "X-Tenant: a\r\n");
    let got = rx.wait_for(6, Duration::from_secs(20));
    assert_eq!(
        count(&got),
        BTreeMap::from([pair("127.0.0.2", "mta2.example.com", 4), pair("127.0.0.5", "new.example.com", 2)])
    );
    send_all(&srv, 1, "X-Tenant: b\r\n");
    assert!(wait_until(Duration::from_secs(5), || srv.metric("ringpost_deferred_total") >= 1.0));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.messages().len(), 6, "nothing more went out");
    assert_eq!(srv.queued_messages(), 1);
}

/// A source address this host does not have is a config error at startup.
#[test]
fn a_source_that_cannot_be_bound_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = common::config_text(
        dir.path(),
        "[[source]]\nname = \"far\"\naddress = \"192.0.2.10\"\n[[pool]]\nname = \"p\"\nsources = [\"far\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    let out = run_briefly(Command::new(BIN).args(["serve", "--config"]).arg(&path));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("source[0] far: cannot bind 192.0.2.10"), "{err}");
    // And names that point nowhere, with their line.
    for (extra, want) in [
        ("[[pool]]\nname = \"p\"\nsources = [\"nope\"]\n", "pool[0].sources: no [[source]] named \"nope\""),
        ("[[tenant]]\nname = \"t\"\npool = \"nope\"\n", "tenant[0].pool: no [[pool]] named \"nope\""),
    ] {
        std::fs::write(&path, common::config_text(dir.path(), extra)).unwrap();
        let out = run_briefly(Command::new(BIN).args(["serve", "--config"]).arg(&path));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want) && err.contains("line "), "{err}");
    }
}

/// SIGHUP: a tenant moved to another pool sends from it at once; a source
/// that cannot be bound makes the reload fail, and the pools in force stay.
#[test]
fn pools_follow_reloads() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let tenant = |pool: &str| {
        format!("[[pool]]\nname = \"p2\"\nsources = [\"ip2\"]\n[[pool]]\nname = \"p3\"\nsources = [\"ip3\"]\n[[tenant]]\nname = \"t\"\npool = \"{pool}\"\n")
    };
    let srv = Server::start(&routed(port, &tenant("p2")));
    send_all(&srv, 1, "X-Tenant: t\r\n");
    assert_eq!(origin(&rx.wait_for(1, Duration::from_secs(20))[0]).0, "127.0.0.2");
    srv.reload(&routed(port, &tenant("p3")), false);
    send_all(&srv, 1, "X-Tenant: t\r\n");
    assert_eq!(origin(&rx.wait_for(2, Duration::from_secs(20))[1]).0, "127.0.0.3");
    let far = "[[source]]\nname = \"far\"\naddress = \"192.0.2.10\"\n";
    srv.reload(&routed(port, &format!("{far}{}", tenant("p2"))), true);
    send_all(&srv, 1, "X-Tenant: t\r\n");
    assert_eq!(origin(&rx.wait_for(3, Duration::from_secs(20))[2]).0, "127.0.0.3", "the old pools stay");
}

/// With several sources a destination may refuse one and take another, so
/// mail to a destination found down is not parked on its domain (as it is
/// with one address, tests/delivery.rs): each message keeps its own
/// attempts.
#[test]
fn with_several_sources_no_mail_waits_on_a_down_domain() {
    let port = free_port(); // nobody listens: every attempt is refused
    let srv = Server::start(&format!(
        "{}[[pool]]\nname = \"p\"\nsources = [\"ip2\", \"ip3\"]\n",
        routed(port, "")
            .replace("[delivery]\n", "[delivery]\npool = \"p\"\nretry = [\"1h\"]\n")
            .replace("retry = [\"1s\"]\n", "destination_backoff = \"1h\"\n")
    ));
    send_all(&srv, 6, "");
    // Every one of them tried (refused, or failed at once while its
    // source's destination backs off), none parked.
    assert!(
        wait_until(Duration::from_secs(10), || srv.metric("ringpost_deferred_total") == 6.0),
        "deferred {}",
        srv.metric("ringpost_deferred_total")
    );
    assert_eq!(srv.metric("ringpost_queue_parked_messages"), 0.0);
}
