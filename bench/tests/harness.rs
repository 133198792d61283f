//! The load harness against its own sink: counts and JSON outputs agree.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: tests

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringpost-bench");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn blast_into_sink_with_json_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sink_json = dir.path().join("sink.json");
    let blast_json = dir.path().join("blast.json");
    let mut sink = Command::new(BIN)
        .args([
            "sink",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--expect",
            "300",
            "--timeout",
            "60",
            "--json",
        ])
        .arg(&sink_json)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new(BIN)
        .args(["blast", "--target", &format!("127.0.0.1:{port}"), "--connections", "7", "--messages", "300"])
        .args(["--size", "2000", "--per-connection", "20", "--pipelining", "--json"])
        .arg(&blast_json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sink.wait().unwrap().success());
    let blast: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&blast_json).unwrap()).unwrap();
    assert_eq!(blast["accepted"], 300);
    assert_eq!(blast["errors"], 0);
    assert!(blast["rate"].as_f64().unwrap() > 0.0);
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(blast["latency_us"][p].as_u64().is_some(), "{p}");
    }
    let sink: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sink_json).unwrap()).unwrap();
    assert_eq!(sink["received"], 300);
    assert!(sink["end_to_end_us"]["p50"].as_u64().unwrap() > 0, "the timestamp header was read");
}

#[test]
fn blast_gives_up_on_a_dead_target() {
    let port = free_port();
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["blast", "--target", &format!("127.0.0.1:{port}"), "--connections", "3", "--messages", "10"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 accepted"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "bounded");
}
