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

#[test]
fn compare_settles_on_the_sink_and_measures_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let count = dir.path().join("count");
    let json = dir.path().join("compare.json");
    let mut sink = Command::new(BIN)
        .args(["sink", "--listen", &format!("127.0.0.1:{port}"), "--timeout", "60", "--count-file"])
        .arg(&count)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Two targets that are both the sink itself: what "a" accepts has reached
    // the sink at once, so its end-to-end rate is measured.
    let target = format!("127.0.0.1:{port}");
    let out = Command::new(BIN)
        .args(["compare", "--rounds", "2", "--messages", "200", "--connections", "4"])
        .args(["--target", &format!("a={target}"), "--target", &format!("b={target}")])
        .args(["--delivers", "a", "--sink-count"])
        .arg(&count)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    sink.kill().unwrap();
    let _ = sink.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("end to end msg/s"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("| b |") && l.contains("| - | - |")), "{table}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["targets"][0]["end_to_end_rate_median"].as_f64().unwrap() > 0.0);
    assert!(v["targets"][1]["end_to_end_rate_median"].is_null());
    // The sink counted every message of the four runs.
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "800");
}

#[test]
fn paced_blast_keeps_to_its_rate() {
    let port = free_port();
    let mut sink = Command::new(BIN)
        .args(["sink", "--listen", &format!("127.0.0.1:{port}"), "--timeout", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new(BIN)
        .args(["blast", "--target", &format!("127.0.0.1:{port}"), "--connections", "4"])
        .args(["--messages", "100", "--rate", "200"])
        .output()
        .unwrap();
    sink.kill().unwrap();
    let _ = sink.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    // 100 messages at 200/s start over 0.5 s: not much faster, whatever the sink can do.
    let secs: f64 = line.split(" in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(secs >= 0.45, "{line}");
    assert!(line.contains("end of data to 250 p50"), "{line}");
}
