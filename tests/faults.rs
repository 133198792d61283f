//! Fault tests: kill -9 under load, and a full spool disk.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // reason: tests wait on real time and processes, and fail loudly

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, queue_id, Client, Receiver, Server};

/// Clients that send messages in a loop on reused connections and record every
/// id the server acknowledged with 250, until the server goes away. Set
/// `killing` before killing the server: a client that fails before that
/// (a refused message, a bad reply) fails the test when joined; one that
/// fails after it lost its connection to the kill, as expected.
fn load(
    srv: &Server,
    clients: usize,
    body_len: usize,
    pause: Duration,
    acked: Arc<Mutex<Vec<String>>>,
    killing: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Result<(), String>>> {
    (0..clients)
        .map(|n| {
            let addr = srv.addr();
            let acked = acked.clone();
            let killing = killing.clone();
            std::thread::spawn(move || {
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut c = Client::connect(addr);
                    c.expect("220");
                    c.cmd("EHLO load.test", "250");
                    let mut i = 0u64;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !killing.load(Ordering::SeqCst) && Instant::now() < deadline {
                        c.cmd(&format!("MAIL FROM:<c{n}-{i}@x.test>"), "250");
                        c.cmd("RCPT TO:<r@example.net>", "250");
                        c.cmd("DATA", "354");
                        c.send_str(&format!("Subject: {n}-{i}\r\n\r\n{}\r\n.\r\n", "x".repeat(body_len)));
                        let r = c.expect("250");
                        acked.lock().unwrap().push(queue_id(&r).expect("queue id").to_owned());
                        i += 1;
                        std::thread::sleep(pause);
                    }
                }));
                match attempt {
                    Ok(()) => Ok(()),
                    // The connection died under kill -9: expected.
                    Err(_) if killing.load(Ordering::SeqCst) => Ok(()),
                    Err(e) => Err(e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()),
                }
            })
        })
        .collect()
}

/// Kills the server (after telling the load it is coming) and checks that
/// no client failed before.
fn kill_under_load(
    srv: Server,
    killing: &AtomicBool,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
) {
    killing.store(true, Ordering::SeqCst);
    srv.kill9();
    for t in threads {
        if let Err(e) = t.join().unwrap() {
            panic!("a load client failed before the kill: {e}");
        }
    }
}

#[test]
fn kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = "[spool]\nsegment_size = 1048576\n";
    let mut all_acked: Vec<String> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..4 {
        let srv = Server::start_in(&dir, extra);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let killing = Arc::new(AtomicBool::new(false));
        let threads = load(&srv, 8, 700, Duration::ZERO, acked.clone(), killing.clone());
        // Let some messages through, then kill at a random moment.
        let started = common::wait_until(Duration::from_secs(10), || acked.lock().unwrap().len() >= 50);
        assert!(started, "round {round}: the load runs");
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        kill_under_load(srv, &killing, threads);
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= 50, "round {round}: load ran ({} acked)", acked.len());
        all_acked.extend(acked);

        let srv = Server::start_in(&dir, extra);
        let missing: Vec<&String> =
            all_acked.iter().filter(|id| srv.http("GET", &format!("/queue/{id}")).0 != 200).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged messages lost: {missing:?}",
            missing.len()
        );
        let queued = srv.queued_messages();
        assert!(
            queued >= all_acked.len() as u64,
            "round {round}: {queued} queued < {} acked",
            all_acked.len()
        );
        srv.kill9();
    }
}

/// kill -9 while messages are delivered and dead segments are recycled
/// (renamed and overwritten): after each restart every acknowledged message is
/// delivered or still queued, and in the end every one is delivered. A record
/// revived from a recycled file's earlier life would show up as a delivered
/// message delivered again; only the few in flight at a kill may be.
#[test]
fn kill_9_while_segments_are_recycled_loses_nothing() {
    let port = free_port();
    let rx = Receiver::start("127.0.0.1", port, &[]);
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = format!(
        "[spool]\nsegment_size = 1048576\n[[route]]\ndomain = \"*\"\nto = [\"127.0.0.1:{port}\"]\n\
[delivery]\ndns_servers = [\"127.0.0.1:9\"]\nretry = [\"1s\"]\ndestination_backoff = \"1s\"\n"
    );
    let delivered_ids = |rx: &Receiver| -> Vec<String> {
        rx.messages()
            .iter()
            .filter_map(|m| m.split(" id ").nth(1).map(|rest| rest.chars().take(16).collect()))
            .collect()
    };
    let mut all_acked: Vec<String> = Vec::new();
    let mut recycled = 0.0;
    let mut rng = fastrand::Rng::with_seed(0x2ec7);
    let rounds = 3;
    for round in 0..rounds {
        let srv = Server::start_in(&dir, &extra);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let killing = Arc::new(AtomicBool::new(false));
        // 30 kB messages at about the rate the receiver takes them, so that
        // segments die while new ones are started: 500 to 800 messages (some
        // 10 segments per worker) a round, then a kill in the middle of it.
        let threads = load(&srv, 2, 30_000, Duration::from_millis(8), acked.clone(), killing.clone());
        let goal = 500 + rng.usize(0..300);
        let reached = common::wait_until(Duration::from_secs(20), || acked.lock().unwrap().len() >= goal);
        assert!(reached, "round {round}: {} of {goal} acknowledged", acked.lock().unwrap().len());
        recycled += srv.metric("ringpost_spool_segments_recycled_total");
        kill_under_load(srv, &killing, threads);
        all_acked.extend(acked.lock().unwrap().iter().cloned());

        let srv = Server::start_in(&dir, &extra);
        // Queued first: a message may be delivered between the two looks.
        let not_queued: Vec<&String> =
            all_acked.iter().filter(|id| srv.http("GET", &format!("/queue/{id}")).0 != 200).collect();
        let delivered: std::collections::HashSet<String> = delivered_ids(&rx).into_iter().collect();
        let missing: Vec<&&String> = not_queued.iter().filter(|id| !delivered.contains(**id)).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged, neither queued nor delivered: {missing:?}");
        if round + 1 == rounds {
            assert!(
                common::wait_until(Duration::from_secs(90), || srv.queued_messages() == 0),
                "the queue drains: {} left",
                srv.queued_messages()
            );
            recycled += srv.metric("ringpost_spool_segments_recycled_total");
        }
        srv.kill9();
    }
    let delivered = delivered_ids(&rx);
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    for id in &all_acked {
        assert!(unique.binary_search(id).is_ok(), "{id} acknowledged but never delivered");
    }
    let again = delivered.len() - unique.len();
    eprintln!(
        "{} acknowledged, {} delivered ({again} again), {recycled} segments recycled",
        all_acked.len(),
        delivered.len()
    );
    assert!(recycled >= 4.0, "the load recycled segments ({recycled})");
    assert!(
        again <= 100 * rounds,
        "{again} deliveries repeated over {rounds} kills ({} messages): more than were in flight",
        unique.len()
    );
}

/// A small tmpfs for the spool; unmounted on drop.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let path = tempfile::tempdir().unwrap().keep().join("spoolfs");
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { path },
            Ok(o) => panic!(
                "mounting a tmpfs needs root (CI runs as root): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run mount: {e}"),
        }
    }

    /// Fills the filesystem with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.path.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .output();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn message(c: &mut Client, i: usize) -> String {
    c.cmd(&format!("MAIL FROM:<s{i}@x.test>"), "250");
    c.cmd("RCPT TO:<r@example.net>", "250");
    c.cmd("DATA", "354");
    c.send_str(&format!("Subject: {i}\r\n\r\n{}\r\n.\r\n", "y".repeat(20_000)));
    c.reply()
}

#[test]
fn full_disk_gives_452_and_recovers_by_itself() {
    let fs = Tmpfs::mount("8m");
    let dir = tempfile::tempdir().unwrap().keep();
    let extra = format!("[spool]\ndir = \"{}\"\nsegment_size = 1048576\n", fs.path.join("spool").display());
    let srv = Server::start_in(&dir, &extra);
    let mut c = srv.client();
    c.expect("220");
    c.cmd("EHLO c.test", "250");
    let mut acked = Vec::new();
    for i in 0..5 {
        let r = message(&mut c, i);
        acked.push(queue_id(&r).expect("250 before the disk fills").to_owned());
    }
    let filler = fs.fill();
    let mut refused = 0;
    for i in 5..15 {
        let r = message(&mut c, i);
        if r.starts_with("452 4.3.1") {
            refused += 1;
        } else {
            assert!(r.starts_with("250"), "only 250 or 452 while full: {r}");
            acked.push(queue_id(&r).unwrap().to_owned());
        }
    }
    assert!(refused >= 8, "a full disk refuses with 452 4.3.1 ({refused} of 10)");
    // Other sessions are still served while the disk is full.
    let mut other = srv.client();
    other.expect("220");
    other.cmd("NOOP", "250");
    std::fs::remove_file(&filler).unwrap();
    for i in 15..20 {
        let r = message(&mut c, i);
        acked.push(queue_id(&r).unwrap_or_else(|| panic!("space is back: 250, got {r}")).to_owned());
    }
    let failures = srv.metric("ringpost_spool_failures_total");
    assert!(failures >= f64::from(refused), "every 452 counted: {failures} < {refused}");
    srv.kill9();
    let srv = Server::start_in(&dir, &extra);
    for id in &acked {
        assert_eq!(srv.http("GET", &format!("/queue/{id}")).0, 200, "{id} survived");
    }
    assert_eq!(srv.queued_messages(), acked.len() as u64, "nothing refused was kept");
    assert_eq!(srv.stop().code(), Some(0));
}
