//! Several nodes sharing state through a real redis-server: a
//! `shared = true` rate holds across two nodes, a suppression made on one
//! is refused by the other, and with Redis killed both keep accepting and
//! delivering on local limits, then catch up when it is back.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::time::Duration;

use common::{free_port, wait_until, Receiver, Redis, Server};

fn node(rx_port: u16, redis: &Redis) -> Server {
    Server::start(&format!(
        "[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{rx_port}\"]\n\
         [delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\n\
         [redis]\nurl = \"{}\"\ntimeout = \"300ms\"\nnodes = 2\n\
         [[shaping]]\ndomain = \"example.test\"\nrate = \"240/min\"\nconnections = 2\nshared = true\n",
        redis.url()
    ))
}

fn health(srv: &Server) -> String {
    srv.http("GET", "/health").1
}

fn suppress(srv: &Server, args: &[&str]) {
    let (ok, out) = common::suppress_cli(srv, args);
    assert!(ok, "{out}");
}

/// The reply code to RCPT TO:<to> from a relay client.
fn rcpt(srv: &Server, to: &str) -> String {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<s@ours.test>", "250");
    c.send_str(&format!("RCPT TO:<{to}>\r\n"));
    let reply = c.reply();
    c.send_str("QUIT\r\n");
    reply[..3].to_owned()
}

fn send(srv: &Server, n: usize, tag: &str) {
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    for i in 0..n {
        let to = format!("{tag}{i}@example.test");
        c.send_message("s@ours.test", &[to.as_str()], &format!("Subject: {tag} {i}\r\n\r\nhello\r\n"));
    }
    c.cmd("QUIT", "221");
}

#[test]
fn a_shared_rate_and_suppressions_hold_across_two_nodes() {
    let redis = Redis::start();
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let (a, b) = (node(port, &redis), node(port, &redis));
    for n in [&a, &b] {
        assert!(wait_until(Duration::from_secs(10), || health(n).contains("redis: up")), "{}", health(n));
    }

    // 10 messages on each node, at the same time. Alone, each node could
    // send 4 a second (8 together); shared, the two together send 4.
    std::thread::scope(|s| {
        s.spawn(|| send(&a, 10, "a"));
        s.spawn(|| send(&b, 10, "b"));
    });
    let got = rx.wait_for(20, Duration::from_secs(30));
    assert_eq!(got.len(), 20);
    let mut at = rx.arrivals();
    at.sort();
    let span = at[19].duration_since(at[0]).unwrap();
    eprintln!("20 messages from two nodes sharing 4/s arrived over {span:?}");
    // 19 intervals of 250 ms; 8 a second would take 2.4 s.
    assert!(span >= Duration::from_millis(3_800), "20 messages in {span:?}: the rate was not shared");
    assert!(span <= Duration::from_secs(15), "{span:?}");
    assert!(redis.cli(&["KEYS", "ringpost:rate:*"]).contains("ringpost:rate:@domain:example.test"));
    // connections = 2 for both nodes together (each alone would open 2).
    let (_, most_open, _) = rx.connections();
    assert!((1..=2).contains(&most_open), "{most_open} connections open at once");
    assert!(a.metric("ringpost_redis_requests_total") > 0.0);

    // Suppressed on A: refused by B within moments; removed on B: A takes it again.
    assert_eq!(rcpt(&b, "gone@example.test"), "250");
    suppress(&a, &["add", "gone@example.test"]);
    assert!(wait_until(Duration::from_secs(5), || rcpt(&b, "gone@example.test") == "550"));
    assert_eq!(redis.cli(&["HGET", "ringpost:suppression", "gone@example.test"]).trim(), {
        let v = redis.cli(&["HGET", "ringpost:suppression", "gone@example.test"]);
        assert!(v.starts_with("manual\t"), "{v:?}");
        v.trim().to_owned()
    });
    suppress(&b, &["remove", "gone@example.test"]);
    assert!(wait_until(Duration::from_secs(5), || rcpt(&a, "gone@example.test") == "250"));
    assert_eq!(a.metric("ringpost_suppression_synced"), 1.0);
}

#[test]
fn nodes_keep_going_while_redis_is_away_and_catch_up_after() {
    let mut redis = Redis::start();
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let (a, b) = (node(port, &redis), node(port, &redis));
    for n in [&a, &b] {
        assert!(wait_until(Duration::from_secs(10), || health(n).contains("redis: up")));
    }
    // Known to both before the outage.
    suppress(&a, &["add", "before@example.test"]);
    assert!(wait_until(Duration::from_secs(5), || rcpt(&b, "before@example.test") == "550"));

    redis.kill();
    for n in [&a, &b] {
        assert!(wait_until(Duration::from_secs(10), || health(n).contains("redis: down")), "{}", health(n));
    }
    // Accepting and delivering go on, on local limits (each node half the rate).
    send(&a, 3, "a");
    send(&b, 3, "b");
    assert_eq!(rx.wait_for(6, Duration::from_secs(30)).len(), 6);
    assert_eq!(a.metric("ringpost_redis_up"), 0.0);
    // A suppression made now holds here at once and waits to be shared.
    suppress(&a, &["add", "during@example.test"]);
    assert_eq!(rcpt(&a, "during@example.test"), "550");
    assert_eq!(a.metric("ringpost_suppression_pending"), 1.0);
    assert_eq!(rcpt(&b, "during@example.test"), "250");

    // Redis comes back empty (it kept nothing): the nodes fill it again and
    // B learns what A did meanwhile; nothing known before is forgotten.
    redis.restart();
    assert!(wait_until(Duration::from_secs(15), || rcpt(&b, "during@example.test") == "550"));
    assert_eq!(rcpt(&a, "before@example.test"), "550");
    assert_eq!(rcpt(&b, "before@example.test"), "550");
    assert!(wait_until(Duration::from_secs(5), || {
        let keys = redis.cli(&["HKEYS", "ringpost:suppression"]);
        keys.contains("before@example.test") && keys.contains("during@example.test")
    }));
    assert!(wait_until(Duration::from_secs(5), || health(&a).contains("redis: up")));
    assert!(wait_until(Duration::from_secs(5), || a.metric("ringpost_suppression_pending") == 0.0));
    // And mail still flows with the shared limits back.
    send(&b, 2, "c");
    assert_eq!(rx.wait_for(8, Duration::from_secs(20)).len(), 8);
}
